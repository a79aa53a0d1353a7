"""Attacks on the native lane (:mod:`ww.p2p.lane`, the door in :mod:`ww.p2p.admission`,
:class:`ww.p2p.protocol.Dialer` and :class:`ww.p2p.protocol.Exports` on the lane).

Real parts: the C connection of the extension at both ends over real TCP sockets on
127.0.0.1, real Cap'n Proto, real `ww run` hosts.  The test's lane listeners are
tests/p2p/test_lane.py's (the host's admission stood in for by its DoNothingTicket).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.p2p.test_lane import Echo, Listener, RecordingDialer, run, until
from ww.core.addrs import P2PError
from ww.p2p import lane
from ww.p2p.protocol import MAX_DIALED, MAX_INBOUND_PER_PEER, Exports
from ww.schema import load

_cell = load("cell")


def test_a_dialer_keeps_no_lane_to_a_peer_it_got_nothing_from() -> None:
    """A server that takes the lane and then serves nothing (its `/ww/0.1.0` stream closed at
    once: a ww host whose per-peer bound is full, or one that wants our fds) made the Dialer
    keep each lane connection for good, one per address dialed, past MAX_DIALED: a cell
    dialing such addresses held a connection (a socket and the C connection's buffers) for
    each, for the host's life.  A failed dial now keeps nothing."""

    async def main() -> None:
        def acceptor(seed: bytes) -> Any:
            return lambda sock, ip, ticket: lane.serve(
                sock, seed, ip, ticket, lambda stream, peer: stream.close()
            )

        count = MAX_DIALED + 8
        listeners = [Listener(acceptor) for _ in range(count)]
        dialer = RecordingDialer()
        try:
            for listener in listeners:
                with pytest.raises(P2PError):
                    await dialer.dial(listener.addr)
            assert not dialer._lanes
            # every server sees its connection end: nothing is kept open at the dialer
            await until(
                lambda: all(
                    t.events == ["handshaken", "ended"] for li in listeners for t in li.tickets
                )
            )
            assert dialer.py_dials == []  # (the lane was taken each time)
        finally:
            dialer.close_all()
            for listener in listeners:
                listener.close()

    run(main)


def _exporter() -> tuple[Exports, Listener]:
    """A lane listener serving an Echo export through Exports (on the running loop)."""
    exports = Exports()
    exports.set(Echo())

    def acceptor(seed: bytes) -> Any:
        return lambda sock, ip, ticket: lane.serve(
            sock, seed, ip, ticket, exports.serve_lane_stream
        )

    return exports, Listener(acceptor)


def test_a_cancelled_dial_does_not_take_down_another_dial_of_the_same_address() -> None:
    """Two dials of one address share its lane connection (being dialed); the first one's
    caller gives up (cancelled): the second still gets the export (a failed dial lets the
    lane go only once no other dial of the address is under way)."""

    async def main() -> None:
        exports, listener = _exporter()
        dialer = RecordingDialer()
        try:
            first = asyncio.ensure_future(dialer.dial(listener.addr))
            second = asyncio.ensure_future(dialer.dial(listener.addr))
            await asyncio.sleep(0)  # both under way, on the one lane being dialed
            first.cancel()
            service = (await second).cast_as(_cell.Service)
            assert (await service.call("echo", ["still", "here"])).result == "still here"
            with pytest.raises(asyncio.CancelledError):
                await first
        finally:
            dialer.close_all()
            exports.close_all()
            listener.close()

    run(main)


def test_dials_of_one_address_at_once_past_the_servers_per_peer_bound_all_work() -> None:
    """More dials of one address at once than the server serves one peer: they share the one
    connection being made (each its own stream, the server's per-peer bound would close the
    ninth and later), and every capability they got goes on working."""

    async def main() -> None:
        exports, listener = _exporter()
        dialer = RecordingDialer()
        try:
            dials = [
                asyncio.ensure_future(dialer.dial(listener.addr))
                for _ in range(MAX_INBOUND_PER_PEER + 2)
            ]
            outcomes = await asyncio.gather(*dials, return_exceptions=True)
            got = [o for o in outcomes if not isinstance(o, BaseException)]
            assert len(got) == MAX_INBOUND_PER_PEER + 2, outcomes
            for capability in got:
                service = capability.cast_as(_cell.Service)
                assert (await service.call("echo", ["ok"])).result == "ok"
        finally:
            dialer.close_all()
            exports.close_all()
            listener.close()

    run(main)


def test_a_stream_opening_flood_is_refused_in_c_and_another_peer_is_served(monkeypatch) -> None:
    """A peer opens 100,000 streams on one lane connection as fast as it can (bare SYNs).
    Each used to be made a LaneStream in Python (`_new_stream`) and then reset by the
    lane's bounds, on the thread that serves the cell's fd 3 (benchmarks/lane_flood.py).
    Now conn.c's bucket (64 at once, 256 a second) and ``max_inbound`` reset them in C:
    Python sees a bounded few, the flooding connection fails once it is far past the rate,
    and an honest peer's call on another connection is answered."""
    seen: list[int] = []
    new_stream = lane.LaneConn._new_stream

    def counted(self: lane.LaneConn, sid: int) -> Any:
        seen.append(sid)
        return new_stream(self, sid)

    monkeypatch.setattr(lane.LaneConn, "_new_stream", counted)

    async def main() -> None:
        from ww.core.identity import PrivateKey
        from ww.p2p import _native

        exports, listener = _exporter()
        dialer = RecordingDialer()
        attacker = await lane.dial(listener.addr, PrivateKey.generate().seed)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            opened = 0
            for _ in range(100_000):  # (bounded: one SYN a turn at least)
                if opened >= 100_000 or attacker.closed.done():
                    break
                try:
                    _native.Conn.open(attacker)
                    opened += 1
                except ConnectionError:  # its C holds 1024 streams: the RSTs free them
                    attacker.flush()
                    await asyncio.sleep(0.001)
                    continue
                if opened % 256 == 0:
                    attacker.flush()
                    await asyncio.sleep(0)
            elapsed = loop.time() - start
            assert len(seen) <= 64 + 256 * elapsed + 64, (len(seen), opened, elapsed)
            await until(lambda: attacker.closed.done())  # the server failed it
            service = (await dialer.dial(listener.addr)).cast_as(_cell.Service)
            assert (await service.call("echo", ["still", "served"])).result == "still served"
        finally:
            attacker.close()
            dialer.close_all()
            exports.close_all()
            listener.close()

    run(main)
