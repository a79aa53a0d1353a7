"""What one remote address, or a few, may take of what the host shares among all peers: its
inbound streams (ww.p2p.admission.MAX_STREAMS_PER_IP), its places among the inbound
connections (ww.p2p.admission.MAX_INBOUND, shared out when full), and that simultaneous
opens and IPv4 peers on an IPv6 socket are counted right.

Real hosts (:class:`ww.p2p.host.Node` in this process, so that the bounds can be made small
and the counts looked at) and real libp2p connections of fresh peer ids
(:mod:`tests.p2p.sybils`) from loopback addresses 127.0.0.2, 127.0.0.3, ... (each counted
as a remote address) and 127.0.0.1 (counted as one address too, under its larger bounds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from tests.conftest import HANG
from tests.p2p.sybils import connect
from tests.p2p.test_stream_memory import HOLD, _hold, _on_host, _open
from ww.core.identity import Identity, PrivateKey
from ww.p2p import admission
from ww.p2p.host import Node

pytest.importorskip("libp2p")


@pytest.fixture
def start() -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(listen: str = "/ip4/127.0.0.1/tcp/0") -> Node:
        node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[listen],
                    handlers={HOLD: _hold}, serve_ww=False, announce=False,
                    warn=lambda message: None)
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


async def _reset(stream: Any) -> bool:
    """Whether the host has reset ``stream`` (a read fails, nothing was sent back)."""
    try:
        await stream.read(1)
    except Exception:
        return True
    return False


def _small(monkeypatch: pytest.MonkeyPatch, **bounds: float) -> None:
    """Make admission's ``bounds`` small for the test (set even where the code lacks them)."""
    for name, value in bounds.items():
        monkeypatch.setattr(admission, name, value, raising=False)


async def _attempt(server: Node, nursery: trio.Nursery, source: str) -> Any:
    """A new identity's connection to ``server`` from ``source``, or None if refused."""
    try:
        return await connect(server.addrs[0], nursery, source=source)
    except Exception:
        return None


async def _fill(server: Node, nursery: trio.Nursery,
                counts: dict[str, int]) -> dict[str, list[Any]]:
    """New identities' connections to ``server``: ``counts[ip]`` from each ``ip``, in turn."""
    return {ip: [await connect(server.addrs[0], nursery, source=ip) for _ in range(n)]
            for ip, n in counts.items()}


async def _held(server: Node, n: int) -> dict[str, Any]:
    """``server``'s counts once it holds ``n`` set-up connections (it holds one once it has
    added it to its swarm, which may come after the peer's side of the handshake is done),
    or once HANG has passed."""
    deadline = time.monotonic() + HANG
    counts = await trio.to_thread.run_sync(_on_host, server, _counts)
    while sum(counts["held"].values()) < n and time.monotonic() < deadline:
        await trio.sleep(0.02)
        counts = await trio.to_thread.run_sync(_on_host, server, _counts)
    return counts


def _counts(host: Any) -> dict[str, Any]:
    a = host.get_network().admission
    held = getattr(a, "held", {})  # getattr: what the host before these bounds lacked
    return {"handshakes": a.handshakes, "inbound": a.inbound, "per_ip": dict(a.per_ip),
            "streams": len(a.streams), "ip_streams": dict(getattr(a, "ip_streams", {})),
            "all_streams": a.all_streams, "held": {ip: len(c) for ip, c in held.items()},
            "evicted": len(getattr(a, "evicted", ())),
            "ip_held": {ip: len(s) for ip, s in getattr(a, "ip_held", {}).items()},
            "dropped": len(getattr(a, "dropped", ()))}


def test_one_address_takes_no_more_than_its_share_of_the_streams(start, monkeypatch) -> None:
    """The host-wide cap made 12 and the per-address 4.  127.0.0.1 (held to its own, larger
    MAX_STREAMS_PER_LOOPBACK) holds 5 streams; then 127.0.0.2 opens 8 on two connections: 4
    are held and 4 reset.  Before, nothing bounded an address but the host-wide cap:
    127.0.0.2 took the 7 left (8 connections x 256 streams of one address could take all
    1024), and a peer from 127.0.0.3 had its stream reset.  Now 127.0.0.3 is served."""
    monkeypatch.setattr(admission, "MAX_INBOUND_STREAMS", 12, raising=False)
    monkeypatch.setattr(admission, "MAX_STREAMS_PER_IP", 4, raising=False)
    server = start()

    async def main() -> tuple[int, int, bool]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                local = await connect(server.addrs[0], nursery)
                held_local = sum([await _open(local) is not None for _ in range(5)])
                held = 0
                for _ in range(2):
                    conn = await connect(server.addrs[0], nursery, source="127.0.0.2")
                    for _ in range(4):
                        held += await _open(conn) is not None
                other = await connect(server.addrs[0], nursery, source="127.0.0.3")
                served = await _open(other) is not None
            nursery.cancel_scope.cancel()
        return held_local, held, served

    assert trio.run(main) == (5, 4, True)


def test_a_full_host_shares_its_places_among_addresses(start, monkeypatch) -> None:
    """MAX_INBOUND made 6, MAX_PER_IP 3: 127.0.0.2 and 127.0.0.3 hold 3 connections each,
    the host is full (before: every other address was refused for as long as they stayed).
    127.0.0.4 connects: 127.0.0.2 (holding the most, first) gives up its oldest idle
    connection (the oldest of all has a stream open: spared); again: 127.0.0.3 gives up its
    oldest.  A third from 127.0.0.4 is refused (2 each now), and so is 127.0.0.2 coming
    back for its place: the places are shared, not taken back and forth."""
    _small(monkeypatch, MAX_INBOUND=6, MAX_PER_IP=3, EVICT_GRACE=0.0)
    server = start()

    async def main() -> tuple[list[list[bool]], list[bool], dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                full = await _fill(server, nursery, {"127.0.0.2": 3, "127.0.0.3": 3})
                assert await _open(full["127.0.0.2"][0]) is not None  # in use
                newcomers = [await _attempt(server, nursery, "127.0.0.4") for _ in range(2)]
                if None not in newcomers:  # (else the assertions below fail)
                    for gone in (full["127.0.0.2"][1], full["127.0.0.3"][0]):
                        await gone.event_shutting_down.wait()  # the host hung up
                later = [await _attempt(server, nursery, ip) for ip in ("127.0.0.4", "127.0.0.2")]
                alive = [[not c.event_shutting_down.is_set() for c in conns]
                         for conns in full.values()]
                alive.append([c is not None and not c.event_shutting_down.is_set()
                              for c in newcomers])
                counts = await trio.to_thread.run_sync(_on_host, server, _counts)
            nursery.cancel_scope.cancel()
        return alive, [c is not None for c in later], counts

    alive, later, counts = trio.run(main)
    assert alive == [[True, False, True], [False, True, True], [True, True]]
    assert later == [False, False]
    assert (counts["inbound"], counts["held"]) == (6, {"127.0.0.2": 2, "127.0.0.3": 2,
                                                       "127.0.0.4": 2})


def test_127_0_0_1_gives_its_places_to_newcomers_as_any_address(start, monkeypatch) -> None:
    """MAX_INBOUND made 6, MAX_PER_LOOPBACK 4, MAX_PER_IP 2: 127.0.0.1 (a local process, or
    remote peers through a local proxy) holds 4 connections, the oldest with a stream open,
    and 127.0.0.2 holds 2: the host is full.  Before, 127.0.0.1 was never counted nor
    trimmed: a newcomer from 127.0.0.3 took 127.0.0.2's place, and 127.0.0.1 alone could
    hold every place, unevicted (measured: 128 of 150 connections of one key).  Now 127.0.0.2
    coming again is refused (at its own bound: it may not grow past it at 127.0.0.1's
    expense), and two newcomers from 127.0.0.3 each take the place of one of 127.0.0.1's
    idle connections, oldest first; a third from 127.0.0.3 is refused (at its bound), and so
    is 127.0.0.1 coming back (2 each now)."""
    _small(monkeypatch, MAX_INBOUND=6, MAX_PER_LOOPBACK=4, MAX_PER_IP=2, EVICT_GRACE=0.0)
    server = start()

    async def main() -> tuple[list[list[bool]], list[bool], dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                full = await _fill(server, nursery, {"127.0.0.1": 4, "127.0.0.2": 2})
                assert await _open(full["127.0.0.1"][0]) is not None  # in use
                let_in = [await _attempt(server, nursery, "127.0.0.2")]
                let_in += [await _attempt(server, nursery, "127.0.0.3") for _ in range(2)]
                if None not in let_in[1:]:  # (else the assertions below fail)
                    for gone in full["127.0.0.1"][1:3]:
                        await gone.event_shutting_down.wait()  # the host hung up
                let_in += [await _attempt(server, nursery, ip) for ip in ("127.0.0.3", "127.0.0.1")]
                alive = [[not c.event_shutting_down.is_set() for c in conns]
                         for conns in full.values()]
                counts = await _held(server, 6 if None not in let_in[1:3] else 0)
            nursery.cancel_scope.cancel()
        return alive, [c is not None for c in let_in], counts

    alive, let_in, counts = trio.run(main)
    assert let_in == [False, True, True, False, False]
    assert alive == [[True, False, False, True], [True, True]]
    assert (counts["inbound"], counts["held"]) == (6, {"127.0.0.1": 2, "127.0.0.2": 2,
                                                       "127.0.0.3": 2})


def test_an_address_keeps_its_last_set_up_connection_whatever_it_has_in_handshake(
        start, monkeypatch) -> None:
    """(review) MAX_INBOUND made 2: 127.0.0.2 holds one set-up connection and one bare TCP
    connection in its handshake (held there: HANDSHAKE_TIMEOUT made longer than the test), so
    the host is full.  127.0.0.3 connects.  Before, trimming counted 127.0.0.2's connections
    set up or not (2, at least 2 more than 127.0.0.3's 0): its only set-up connection was
    closed for the newcomer.  Now it counts what an address has set up: an address keeps its
    last one, and the newcomer is refused."""
    monkeypatch.setattr(admission, "MAX_INBOUND", 2, raising=False)
    monkeypatch.setattr(admission, "MAX_PER_IP", 3, raising=False)
    monkeypatch.setattr(admission, "EVICT_GRACE", 0.0, raising=False)
    monkeypatch.setattr(admission, "HANDSHAKE_TIMEOUT", 10 * HANG, raising=False)
    server = start()
    port = int(server.addrs[0].split("/tcp/")[1].split("/")[0])

    async def main() -> tuple[bool, bool, dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                set_up = await connect(server.addrs[0], nursery, source="127.0.0.2")
                # The dialer is set up before the host (Noise's last message is the
                # dialer's): the bare connection waits until the host holds the first
                # (before, on a busy machine, the host counted both in handshake).
                while (await trio.to_thread.run_sync(_on_host, server, _counts)
                       )["held"] != {"127.0.0.2": 1}:  # bounded by fail_after
                    await trio.sleep(0.02)
                bare = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
                while (await trio.to_thread.run_sync(_on_host, server, _counts)
                       )["handshakes"] < 1:  # bounded by fail_after
                    await trio.sleep(0.02)
                try:
                    await connect(server.addrs[0], nursery, source="127.0.0.3")
                    newcomer = True
                except Exception:
                    newcomer = False
                counts = await trio.to_thread.run_sync(_on_host, server, _counts)
                alive = not set_up.event_shutting_down.is_set()
                await bare.aclose()
            nursery.cancel_scope.cancel()
        return newcomer, alive, counts

    newcomer, alive, counts = trio.run(main)
    assert (newcomer, alive) == (False, True)
    assert counts["held"] == {"127.0.0.2": 1}


def test_ipv4_peers_of_a_dual_stack_listener_are_counted_by_their_ipv4_address(
        start, monkeypatch) -> None:
    """A host listening on an IPv6 socket that takes IPv4 too (bound to ::ffff:127.0.0.1,
    the loopback share of a dual-stack ::) sees IPv4 peers as ::ffff:a.b.c.d.  Counted as
    IPv6 /56, every IPv4 peer would share one place of MAX_PER_IP (and ::ffff:127.0.0.1
    would be held to MAX_PER_IP).  Before, none was counted at all: py-libp2p gives no remote
    address for an IPv6 socket, so MAX_PER_IP (made 1 here) held no IPv6 peer.  Now each is
    counted by its IPv4 address, 127.0.0.1 under its own MAX_PER_LOOPBACK."""
    monkeypatch.setattr(admission, "MAX_PER_IP", 1, raising=False)
    server = start("/ip6/::ffff:127.0.0.1/tcp/0")
    port = server.addrs[0].split("/tcp/")[1].split("/")[0]
    peer = server.addrs[0].split("/p2p/")[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"

    async def main() -> tuple[list[bool], dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                let_in = []
                for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3", None, None):
                    try:
                        await connect(addr, nursery, source=source)
                        let_in.append(True)
                    except Exception:
                        let_in.append(False)
                counts = await _held(server, 4)
            nursery.cancel_scope.cancel()
        return let_in, counts

    assert server.addrs[0].startswith("/ip6/")
    let_in, counts = trio.run(main)
    assert let_in == [True, False, True, True, True]
    assert counts["per_ip"] == {"127.0.0.1": 2, "127.0.0.2": 1, "127.0.0.3": 1}
    assert counts["held"] == {"127.0.0.1": 2, "127.0.0.2": 1, "127.0.0.3": 1}


def test_a_simultaneous_open_leaves_nothing_counted(start) -> None:
    """Two hosts dial each other at the same time, open a stream each way, and the one
    goes: our own dial is never counted, the other's is counted once, and every count
    is back at zero on both sides afterwards."""
    a, b = start(), start()

    async def dial(node: Node, other: Node) -> None:
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        info = info_from_p2p_addr(Multiaddr(other.addrs[0]))
        await node.dial(info)
        stream = await node.host.new_stream(info.peer_id, [HOLD])
        await stream.write(b"!")

    for end in [a.submit(dial, a, b), b.submit(dial, b, a)]:
        end.result(HANG)
    during = [_on_host(node, _counts)["inbound"] for node in (a, b)]
    assert during in ([1, 1], [1, 0], [0, 1]), during  # our own dial never counted
    b.stop()
    zero = {"handshakes": 0, "inbound": 0, "per_ip": {}, "streams": 0, "ip_streams": {},
            "all_streams": 0, "held": {}, "evicted": 0, "ip_held": {}, "dropped": 0}
    deadline = time.monotonic() + HANG
    while _on_host(a, _counts) != zero and time.monotonic() < deadline:
        time.sleep(0.05)  # until a has seen b go
    assert _on_host(a, _counts) == zero


def test_a_host_full_of_streams_shares_them_among_addresses(start, monkeypatch) -> None:
    """MAX_INBOUND_STREAMS made 8, MAX_STREAMS_PER_IP 4: 127.0.0.2 and 127.0.0.3 hold 4
    streams each, never closing them, and the host is full.  Before, every other peer had
    each stream reset for as long as they stayed (8 addresses x 128 take all 1024, where it
    takes 128 addresses to fill the connections): a peer from 127.0.0.4 could not open one.
    Now its stream is served, and 127.0.0.2 (holding the most, first) has its oldest reset;
    a second from 127.0.0.4 takes 127.0.0.3's oldest; a third is reset (2 fewer than nobody),
    and 127.0.0.2 opening again is reset too: the streams are shared, not taken back and
    forth.  Every count is back at zero once all have gone."""
    monkeypatch.setattr(admission, "MAX_INBOUND_STREAMS", 8, raising=False)
    monkeypatch.setattr(admission, "MAX_STREAMS_PER_IP", 4, raising=False)
    server = start()

    async def main() -> tuple[list[list[bool]], list[bool], list[bool], dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                held = {}
                for ip in ("127.0.0.2", "127.0.0.3"):
                    conn = await connect(server.addrs[0], nursery, source=ip)
                    held[ip] = [await _open(conn) for _ in range(4)]
                newcomer = await connect(server.addrs[0], nursery, source="127.0.0.4")
                served = [await _open(newcomer) is not None for _ in range(2)]
                if all(served):  # (else the assertions below fail)
                    served += [await _reset(held[ip][0]) for ip in ("127.0.0.2", "127.0.0.3")]
                later = [await _open(newcomer) is not None,
                         await _open(held["127.0.0.2"][1].conn) is not None]
                alive = [[not (s.reset_received or s.closed) for s in streams[1:]]
                         for streams in held.values()]
                for conn in [newcomer] + [streams[1].conn for streams in held.values()]:
                    await conn.close()
            nursery.cancel_scope.cancel()
        zero = {"streams": 0, "ip_streams": {}, "all_streams": 0, "ip_held": {}, "dropped": 0}
        deadline = time.monotonic() + HANG
        counts = await trio.to_thread.run_sync(_on_host, server, _counts)
        while {k: counts[k] for k in zero} != zero and time.monotonic() < deadline:
            await trio.sleep(0.05)  # until the host has seen them go
            counts = await trio.to_thread.run_sync(_on_host, server, _counts)
        return alive, served, later, {k: counts[k] for k in zero}

    alive, served, later, counts = trio.run(main)
    assert served == [True, True, True, True]
    assert later == [False, False]
    assert alive == [[True, True, True], [True, True, True]]
    assert counts == {"streams": 0, "ip_streams": {}, "all_streams": 0, "ip_held": {},
                      "dropped": 0}


def test_a_host_full_of_streams_takes_them_from_127_0_0_1_too(start, monkeypatch) -> None:
    """MAX_INBOUND_STREAMS made 8, MAX_STREAMS_PER_LOOPBACK 6, MAX_STREAMS_PER_IP 2: one
    connection from 127.0.0.1 opens 7 streams and holds them: 6 are held, the 7th reset
    (before, 127.0.0.1 was not counted: all 7, and it could hold every stream of the host).
    127.0.0.2 opens 2: the host is full.  A peer from 127.0.0.3 opens 2 streams: both are
    served, each taking the place of one of 127.0.0.1's, oldest first (before: reset, as
    127.0.0.1 never gave a place up); its third is reset (at its own bound)."""
    _small(monkeypatch, MAX_INBOUND_STREAMS=8, MAX_STREAMS_PER_LOOPBACK=6, MAX_STREAMS_PER_IP=2)
    server = start()

    async def main() -> tuple[list[bool], list[bool], list[bool], dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                local = await connect(server.addrs[0], nursery)
                held = [await _open(local) for _ in range(7)]
                other = await connect(server.addrs[0], nursery, source="127.0.0.2")
                held += [await _open(other) for _ in range(2)]
                newcomer = await connect(server.addrs[0], nursery, source="127.0.0.3")
                served = [await _open(newcomer) is not None for _ in range(3)]
                gone = []
                if served[:2] == [True, True]:  # (else the assertions below fail)
                    gone = [await _reset(stream) for stream in held[:2]]
                alive = [s is not None and not (s.reset_received or s.closed)
                         for s in held[2:]]
                counts = await trio.to_thread.run_sync(_on_host, server, _counts)
            nursery.cancel_scope.cancel()
        return served, gone, alive, counts

    served, gone, alive, counts = trio.run(main)
    assert served == [True, True, False]
    assert gone == [True, True]
    assert alive == [True, True, True, True, False, True, True]
    assert counts["ip_streams"] == {"127.0.0.1": 4, "127.0.0.2": 2, "127.0.0.3": 2}


class _Peername:
    """A stand-in for py-libp2p's TCP stream, holding only the peer name its socket gives:
    no link-local or global IPv6 address is reachable on this machine (only ::1)."""

    def __init__(self, address: tuple) -> None:
        self.stream = self
        self.socket = self
        self._address = address

    def getpeername(self) -> tuple:
        return self._address


@pytest.mark.parametrize("a, b, same", [
    (("2001:db8:1:1::1", 1, 0, 0), ("2001:db8:1:2::9", 1, 0, 0), True),  # one global /56
    (("2001:db8:1:1::1", 1, 0, 0), ("2001:db8:2:1::1", 1, 0, 0), False),
    (("fe80::1", 1, 0, 2), ("fe80::2", 1, 0, 2), False),  # two LAN peers, link-local
    (("fe80::1%eth0", 1, 0, 2), ("fe80::1", 1, 0, 2), True),
    (("fd00:1::1", 1, 0, 0), ("fd00:1::2", 1, 0, 0), False),  # unique local: one site
    (("::ffff:192.0.2.1", 1, 0, 0), ("192.0.2.1", 1), True),
])
def test_lan_ipv6_peers_are_counted_each_as_itself_global_ones_by_their_56(a, b, same):
    """Link-local and unique local IPv6 addresses are a LAN's: grouped by /56, every peer
    of the LAN (fe80::/64) counted as one address, 8 connections for all of them."""
    assert (admission._remote_ip(_Peername(a)) == admission._remote_ip(_Peername(b))) is same
