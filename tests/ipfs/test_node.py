"""EmbeddedNode as a CoreAPI backend: identity, offline network calls, repository location."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ww.ipfs.api import CoreAPI, IpfsError
from ww.ipfs.node import EmbeddedNode, default_repo_path


def test_embedded_node_has_every_coreapi_method_with_the_same_parameters() -> None:
    for name, member in inspect.getmembers(CoreAPI, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(EmbeddedNode, name)
        assert list(inspect.signature(ours).parameters) == list(
            inspect.signature(member).parameters
        ), name


def test_id_is_a_stable_ed25519_peer_id_stored_in_the_repository(tmp_path: Path) -> None:
    first = EmbeddedNode(tmp_path / "repo").id()
    assert first.id.startswith("12D3KooW") and first.addresses == []
    assert EmbeddedNode(tmp_path / "repo").id() == first
    assert EmbeddedNode(tmp_path / "other").id().id != first.id


def test_a_node_off_the_network_has_no_peers_and_a_failed_dial_is_one_line(
    node: EmbeddedNode,
) -> None:
    pytest.importorskip("libp2p")
    assert node.peers() == [] and node.id().addresses == []
    with pytest.raises(IpfsError, match="cannot connect") as err:
        node.connect(  # loopback port 1: nobody listens (tests/ipfs/test_bitswap.py: more)
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJWEKvSFbben74C7H4YtKjhPMTDxd7gP7zxWSUEeF27st"
        )
    assert "\n" not in str(err.value)
    assert node.peers() == []
    node.close()


def test_repository_defaults_to_ww_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WW_HOME", str(tmp_path / "home"))
    assert default_repo_path() == tmp_path / "home"
    with EmbeddedNode() as node:
        cid = node.add_stream([b"hi\n"])
    assert EmbeddedNode(tmp_path / "home").pins() == [cid]
    monkeypatch.delenv("WW_HOME")
    assert default_repo_path() == Path("~/.ww").expanduser()


def test_a_repository_of_another_format_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "version").write_text("7\n")
    with pytest.raises(IpfsError, match="version '7' repository"):
        EmbeddedNode(tmp_path / "repo")


def test_a_repository_that_cannot_be_created_gives_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(IpfsError) as info:
        EmbeddedNode(tmp_path / "file" / "repo")
    assert "cannot open the repository" in str(info.value) and "\n" not in str(info.value)


def test_a_node_given_no_libp2p_host_stays_offline(tmp_path: Path) -> None:
    """ww.ipfs never makes a libp2p host itself: without ``host`` or ``new_host`` a connect
    or listen is one line, and nothing is started."""
    node = EmbeddedNode(tmp_path / "repo")
    peer = node.id().id
    with pytest.raises(IpfsError, match="no libp2p host") as err:
        node.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{peer}")
    assert "\n" not in str(err.value)
    with pytest.raises(IpfsError, match="no libp2p host"):
        node.listen(["/ip4/127.0.0.1/tcp/0"])
    assert node.peers() == [] and node.id().addresses == []
