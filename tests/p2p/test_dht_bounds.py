"""What a DHT peer says is checked, and a query is bounded: ww.p2p.routing against a peer of
ours that lies (tests/p2p/dht_liar.py), all in a network namespace the test creates, so that
nothing could reach beyond it even if an address were dialled that should not be."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.p2p.kubo_dht import script_in_namespace
from ww.cli.main import run_cli

ROOT = Path(__file__).resolve().parents[2]
CID_TEXT = "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"


def test_dht_replies_are_checked_and_queries_bounded(tmp_path: Path) -> None:
    out = script_in_namespace(tmp_path, "tests/p2p/dht_liar.py")
    liar = out["liar"].split("/p2p/")[0]

    lies = out["addresses"]
    # public, documentation, DNS, IPv6 global and UDP addresses dropped, both for closer and
    # provider peers (5 each); the ids that are no peer id dropped with their peers.  The
    # provider left with no address is looked up (FIND_NODE, to the liar again, whose second
    # reply is the same: 10 more dropped)
    assert lies["stats"]["dropped_addrs"] == 20
    # only the honest provider, at its loopback address, is returned
    assert lies["providers"] == [{"id": out["honest"], "addrs": ["/ip4/127.0.0.1/tcp/9"]}]
    # nothing was dialled but the liar itself (the closer peers had no address left, or no id)
    assert lies["dialled"] == [liar]
    assert lies["stats"]["rpcs"] == 2

    flood = out["flood"]  # 40 new closer peers a reply: the query stops at its bound
    assert flood["stats"]["rpcs"] == out["flood_bound"]
    assert flood["providers"] == []

    huge = out["huge"]  # a 10 MiB length prefix: refused before reading, the query ends
    assert {k: huge["stats"][k] for k in ("rpcs", "failed", "dropped_addrs")} == {
        "rpcs": 1, "failed": 1, "dropped_addrs": 0}

    other = out["other_key"]  # a reply about another key: nothing in it is taken
    # (the asker is still connected to the liar from the phases before: nothing is dialled)
    assert other["providers"] == [] and other["dialled"] == []
    assert {k: other["stats"][k] for k in ("rpcs", "wrong_reply", "dropped_addrs")} == {
        "rpcs": 1, "wrong_reply": 1, "dropped_addrs": 0}

    me = out["self"]  # the asker named as closer peer and provider: never dialled nor found
    assert me["providers"] == [] and me["dialled"] == []
    assert me["stats"]["rpcs"] == 1

    many = out["many"]  # 200 providers of 25 addresses: the first 40 looked at, 20 kept,
    # each with the first 16 addresses less the malformed one
    assert len(many["providers"]) == 20
    assert all(p["addrs"] == [f"/ip4/127.0.0.1/tcp/{port}" for port in range(1, 16)]
               for p in many["providers"])
    assert many["stats"]["dropped_addrs"] == 40 and many["stats"]["rpcs"] == 1


PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@pytest.mark.parametrize("command", [["import", "/ipfs/" + CID_TEXT, "-o", "x"],
                                     ["run", "--jail", "none", "/bin/true"]])
@pytest.mark.parametrize("flags", [["--bootstrap", f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}"],
                                   ["--routing", "dht"]])
def test_routing_flags_with_a_kubo_node_are_a_usage_error(command, flags, tmp_path,
                                                           monkeypatch, capsys) -> None:
    """A kubo node (--ipfs) routes on its own: --bootstrap or --routing dht with it would be
    silently unused, so it is refused before anything is contacted."""
    monkeypatch.chdir(tmp_path)
    status = run_cli([command[0], "--ipfs", "/ip4/127.0.0.1/tcp/1/http", *flags, *command[1:]])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bootstrap and --routing are for the embedded node" \
        in err, err
    assert not (tmp_path / "x").exists()


def test_announcements_waiting_in_the_background_are_bounded() -> None:
    """Dht.provide_soon (what `ww daemon` announces after an add) queues at most
    MAX_PENDING_PROVIDES CIDs and counts the rest as dropped.  The host listens nowhere and
    knows no peer: nothing is dialled."""
    import hashlib

    from ww.core.cid import CID, RAW
    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node
    from ww.p2p.routing import MAX_PENDING_PROVIDES, Dht

    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[], serve_ww=False,
                announce=False, warn=lambda message: None)
    node.start()
    try:
        dht = Dht(node)
        cids = [str(CID.v1(RAW, b"\x12\x20" + hashlib.sha256(b"%d" % i).digest()))
                for i in range(MAX_PENDING_PROVIDES + 10)]
        assert dht.provide_soon(cids) == MAX_PENDING_PROVIDES
        assert dht.stats["dropped_provides"] == 10
    finally:
        node.stop()
