"""Attacks on the native lane (:mod:`ww.p2p.lane`, the door in :mod:`ww.p2p.admission`,
:class:`ww.p2p.protocol.Dialer` and :class:`ww.p2p.protocol.Exports` on the lane).

Real parts: the C connection of the extension at both ends over real TCP sockets on
127.0.0.1, real Cap'n Proto, real `ww run` hosts.  The test's lane listeners are
tests/p2p/test_lane.py's (the host's admission stood in for by its DoNothingTicket).
"""

from __future__ import annotations

import asyncio
import socket
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


class _Kept(asyncio.BufferedProtocol):
    """A stream's protocol that keeps what comes (echoing it with ``echo``) and closes its
    side when the peer closes its own (``write_eof``: a half-close, so the Python stream
    stays in ``conn.streams`` while the C lets the stream go, closed both ways)."""

    def __init__(self, echo: bool) -> None:
        self.echo, self.got, self.eof = echo, bytearray(), False
        self.buf = bytearray(1 << 16)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, _hint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, n: int) -> None:
        self.got += self.buf[:n]
        if self.echo:
            self.transport.write(bytes(self.buf[:n]))

    def eof_received(self) -> None:
        self.eof = True
        self.transport.write_eof()

    def connection_lost(self, _exc: Any) -> None: ...


KEPT = "/ww-test/kept/1.0.0"


class _Later(_Kept):
    """:class:`_Kept` echoing a loop turn later, as pycapnp answers a call (its writes come
    from the loop's callbacks, not from inside ``buffer_updated``)."""

    def buffer_updated(self, n: int) -> None:
        data = bytes(self.buf[:n])
        self.got += data
        asyncio.get_running_loop().call_soon(self.transport.write, data)


async def _raw_pair(
    echo: bool, kind: type[_Kept] = _Kept
) -> tuple[Any, lane.LaneConn, list[_Kept]]:
    """A raw peer (tests/p2p/raw_lane.py) and the lane listener it is connected to (a
    LaneConn on this loop serving :data:`KEPT` with ``kind`` protocols), handshaken; the
    protocols KEPT got."""
    from tests.p2p.raw_lane import RawPeer
    from ww.core.identity import PrivateKey

    loop = asyncio.get_running_loop()
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    kept: list[_Kept] = []

    def on_kept(stream: lane.LaneStream) -> None:
        kept.append(kind(echo))
        stream.connect(kept[-1])

    async def accept() -> lane.LaneConn:
        sock, _ = await loop.sock_accept(server)
        conn = lane.LaneConn(sock, False, {KEPT: on_kept})
        await conn.handshake(PrivateKey.generate().seed, None, lane=True)
        return conn

    try:
        peer, conn = await asyncio.gather(RawPeer.connect(server.getsockname()[1]), accept())
    finally:
        server.close()
    return peer, conn, kept


async def _open_kept(peer: Any, sid: int, then: bytes = b"") -> bytes:
    """Open stream ``sid`` on KEPT (SYN, multistream-select, ``then``): the listener's
    answer (its multistream lines) once its ACK came."""
    from tests.p2p.raw_lane import ACK, DATA, SYN, WINDOW, frame

    neg = lane.ms_line("/multistream/1.0.0") + lane.ms_line(KEPT)
    await peer.send(frame(WINDOW, SYN, sid), frame(DATA, 0, sid, body=neg + then))
    answer, acked = b"", False
    for _ in range(100):  # (bounded: the ACK and two lines, a frame each at most)
        if acked and len(answer) >= len(neg):
            break
        kind, flags, got_sid, _, body = await peer.frame()
        if got_sid == sid:
            acked = acked or bool(flags & ACK)
            answer += body
    return answer


def test_a_stream_id_used_before_is_refused_and_its_bytes_reach_no_old_stream() -> None:
    """A peer opens stream 1, both sides close it (the protocol half-closes back on the
    peer's FIN, so Python still holds the stream while the C let it go), then the peer opens
    stream 1 again with bytes on it.  The C took the second SYN as a new stream, and the
    extension handed its bytes to the old stream's protocol (it finds streams by id), as if
    the first stream had gone on.  Yamux ids are not reused (go-yamux refuses a SYN for an
    id it holds, failing the session); conn.c now keeps the highest id the peer opened and
    which of the 63 of its ids below it were opened too, and fails the connection on a SYN
    for any id it cannot tell is new."""
    from tests.p2p.raw_lane import DATA, FIN, PING, SYN, WINDOW, frame

    async def main() -> None:
        peer, conn, kept = await _raw_pair(echo=False)
        pong: asyncio.Future[Any] | None = None
        try:
            neg = lane.ms_line("/multistream/1.0.0") + lane.ms_line(KEPT)
            assert await _open_kept(peer, 1, b"first") == neg
            await peer.send(frame(DATA, FIN, 1))
            for _ in range(100):  # its protocol's FIN back
                kind, flags, sid, _, _ = await peer.frame()
                if sid == 1 and flags & FIN:
                    break
            assert (bytes(kept[0].got), kept[0].eof) == (b"first", True)
            assert 1 in conn.streams and conn.open_streams == 0  # Python holds it, C does not

            async def ping_answered() -> None:
                for _ in range(100):
                    if (await peer.frame())[0] == PING:
                        return

            # the same id again, bytes on it, and a ping after them
            await peer.send(
                frame(WINDOW, SYN, 1), frame(DATA, 0, 1, body=b"second"), frame(PING, SYN, 0, 7)
            )
            pong = asyncio.ensure_future(ping_answered())
            await asyncio.wait([pong, conn.closed], return_when=asyncio.FIRST_COMPLETED)
            assert bytes(kept[0].got) == b"first", "the new stream's bytes reached the old one"
            assert len(kept) == 1
            assert conn.closed.done() and "used before" in conn.failure, conn.failure
        finally:
            if pong is not None:
                pong.cancel()
            peer.close()
            conn.close()

    run(main)


def test_a_flood_of_frames_is_parsed_a_budget_at_a_time_and_nothing_is_lost() -> None:
    """One write of 4000 SYNs (each refused in C: the bucket lets 64 through), with a
    stream's bytes spread among them and a ping last.  One ``Conn.readable`` call parsed all
    that one read brought (256 KiB: 8700 SYNs, 13-35 ms of the loop), and every other
    callback of the loop waited.  Now a call parses at most ``PARSE_BUDGET`` frames and the
    rest goes on in a call scheduled with ``call_soon``: a callback that reschedules itself
    each loop turn sees at most one budget of SYNs refused between two of its turns.  The
    stream's bytes come back whole and in order, the ping is answered, with nothing more
    from the socket to wake the reader."""
    from tests.p2p.raw_lane import ACK, DATA, PING, SYN, WINDOW, frame
    from ww.p2p._native import _ext

    budget = 128  # conn.c's PARSE_BUDGET (the module's checked below)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer, conn, kept = await _raw_pair(echo=True)
        ticking = True
        try:
            await _open_kept(peer, 1)
            payload = bytes(range(256)) * 40  # 10 KiB: 40 frames of 256 bytes
            frames = []
            for i in range(4000):
                frames.append(frame(WINDOW, SYN, 3 + 2 * i))
                if i % 100 == 99:
                    k = i // 100
                    frames.append(frame(DATA, 0, 1, body=payload[256 * k : 256 * (k + 1)]))
            frames.append(frame(PING, SYN, 0, 99))
            refused = [conn.refused_in_c]
            between: list[int] = []

            def tick() -> None:
                between.append(conn.refused_in_c - refused[0])
                refused[0] = conn.refused_in_c
                if ticking:
                    loop.call_soon(tick)

            tick()
            await peer.send(*frames)
            echoed, pong = b"", False
            for _ in range(20_000):  # (bounded: the flood's RSTs and ACKs, the echo, the pong)
                if pong and len(echoed) >= len(payload):
                    break
                kind, flags, sid, length, body = await peer.frame()
                if sid == 1 and kind == DATA:
                    echoed += body
                pong = pong or (kind == PING and bool(flags & ACK) and length == 99)
            ticking = False
            assert max(between) <= budget, max(between)
            assert sum(between) > 3000  # (the flood was refused while the callback ticked)
            assert echoed == payload and pong
            assert _ext.PARSE_BUDGET == budget
            assert conn.most_parsed <= budget and conn.reads_cut > 0
            assert not conn.closed.done(), conn.failure
        finally:
            ticking = False
            peer.close()
            conn.close()

    run(main)


async def _end_within_a_continuation(peer: Any, conn: lane.LaneConn) -> None:
    """The peer opens stream 1 on KEPT, then sends one byte on it and 200 pings at once and
    ends its side: the listener's first ``readable`` call parses a budget (the byte, and 127
    pings), the continuation the rest and the end of file; the connection ends."""
    from tests.p2p.raw_lane import DATA, PING, SYN, frame

    await _open_kept(peer, 1)
    pings = [frame(PING, SYN, 0, i) for i in range(200)]
    await peer.send(frame(DATA, 0, 1, body=b"x"), *pings)
    peer.sock.shutdown(socket.SHUT_WR)
    await conn.closed
    assert conn.failure == "closed by the peer" and conn.reads_cut > 0  # its orderly end, cut once


def test_a_peer_that_ends_within_a_budgets_continuation_leaves_no_reader_behind() -> None:
    """:func:`_end_within_a_continuation`, the byte handed to a protocol that answers a loop
    turn later, as pycapnp does.  The answer's flush, queued before the end and run after
    it, saw the reader removed for the continuation and added it again: the loop spun on the
    socket at its end (``readable`` each turn, until someone closes the connection: a
    Dialer's lane stays until its address is dialed again).  Nothing is watched once the
    end was told."""
    from tests.p2p.raw_lane import DATA

    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer, conn, kept = await _raw_pair(echo=True, kind=_Later)
        fd = conn.sock.fileno()
        try:
            await _end_within_a_continuation(peer, conn)
            for _ in range(1000):  # (bounded: the pongs, then the echo: its flush ran)
                kind, _, sid, _, body = await peer.frame()
                if sid == 1 and kind == DATA and body == b"x":
                    break
            assert kept[0].got == b"x"
            assert not loop.remove_reader(fd), "a reader was added again after the end"
            assert not loop.remove_writer(fd)
        finally:
            peer.close()
            conn.close()

    run(main)


def test_a_closed_lane_connection_leaves_nothing_watching_its_fd() -> None:
    """The same end, the connection then closed as ``lane.serve`` closes it.  The loop went
    on watching the closed fd, so the next socket given that number was never polled: an
    honest peer's handshake on it timed out (the next connection a ww host accepts, or a
    lane dial).  Now ``close()`` leaves nothing watching it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer, conn, _ = await _raw_pair(echo=True, kind=_Later)
        fd = conn.sock.fileno()
        try:
            await _end_within_a_continuation(peer, conn)
        finally:
            peer.close()
            conn.close()
        assert not loop.remove_reader(fd) and not loop.remove_writer(fd)

    run(main)


def test_noise_messages_instead_of_the_muxers_lines_fail_the_handshake_unparsed() -> None:
    """Past its last Noise handshake message, a dialer sends empty transport messages where
    multistream's ``/yamux/1.0.0`` lines belong.  The listener's handshake step decrypted
    every message the socket had, in one call, while the lines were short: a peer that kept
    sending held the step, and the loop with it (the cell's fd 3, every other connection,
    the handshake's own deadline), for as long as it sent (200 000 messages in one
    call; PARSE_BUDGET does not reach the handshake).  Now the step decrypts one message at a
    time while the lines are short, at most HS_MUX_MSGS (32) before the muxer is agreed: past
    them the handshake fails.  A dialer that sends 200 Yamux pings right after its lines, in
    the same write, is served: what follows the lines waits for ``readable``'s budget."""
    import struct

    from tests.p2p.raw_lane import ACK, PING, SYN, RawPeer, frame
    from ww.core.identity import PrivateKey

    async def pair(before: int, after: list[bytes]) -> tuple[Any, Any]:
        """A raw dialer sending ``before`` empty Noise messages, its muxer lines, and the
        frames ``after`` (each its own message) in one write; the listener's connection, or
        why its handshake failed."""
        loop = asyncio.get_running_loop()
        server = socket.create_server(("127.0.0.1", 0))
        server.setblocking(False)

        class Dialer(RawPeer):
            async def _send_plain(self, plain: bytes) -> None:  # (only the lines, here)
                out = [struct.pack(">H", 16) + self.noise.encrypt(b"") for _ in range(before)]
                out += [self._sealed(plain), *(self._sealed(f) for f in after)]  # (in order)
                await loop.sock_sendall(self.sock, b"".join(out))

        async def accept() -> lane.LaneConn:
            sock, _ = await loop.sock_accept(server)
            conn = lane.LaneConn(sock, False)
            try:
                await conn.handshake(PrivateKey.generate().seed, None, lane=True)
            except ConnectionError:
                conn.close()
                raise
            return conn

        try:
            dialer, conn = await asyncio.gather(
                Dialer.connect(server.getsockname()[1]), accept(), return_exceptions=True
            )
        finally:
            server.close()
        return dialer, conn

    async def main() -> None:
        peer, conn = await pair(before=1000, after=[])
        try:
            assert isinstance(conn, ConnectionError), conn
            assert "too many Noise messages" in str(conn)
        finally:
            for end in (peer, conn):
                if not isinstance(end, BaseException):
                    end.close()
        peer, conn = await pair(before=0, after=[frame(PING, SYN, 0, i) for i in range(200)])
        try:
            assert isinstance(conn, lane.LaneConn), conn
            answered = set()
            for _ in range(200):  # (bounded: one pong a frame)
                kind, flags, _, length, _ = await peer.frame()
                if kind == PING and flags & ACK:
                    answered.add(length)
            assert answered == set(range(200)) and not conn.closed.done()
        finally:
            for end in (peer, conn):
                if not isinstance(end, BaseException):
                    end.close()

    run(main)
