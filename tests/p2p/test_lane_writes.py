"""A writer that outruns the peer's Yamux window on a native lane stream waits; nothing fails.

A lane stream is an asyncio transport (ext.c): its protocol is told ``pause_writing`` once
more than the high-water mark (1 MiB) it wrote is unsent, and ``resume_writing`` once the
peer's window let it down to the low one.  Before, nothing paused a writer: pycapnp wrote
every pipelined call at once into the stream's buffers, a `/ww/0.1.0` stream dialed with
:meth:`ww.p2p.lane.LaneConn.open_ww` (a cell's ``P2P.dial``, `ww call`) was cut by its own
host's answer budget once 32 MiB waited, a plain pycapnp client met ``MemoryError: stream
buffer limit`` at 64 MiB and hung, and a writer spread over loop turns failed the whole
connection ("stream buffer limit").

Real parts: the extension's C connection at both ends over TCP on 127.0.0.1, real pycapnp,
and a real `ww run --with-p2p` host whose cell is slow to answer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import capnp

from tests.conftest import HANG
from tests.p2p.conftest import EXPORTER, LOOPBACK
from tests.p2p.test_lane import Listener, RecordingDialer, run, until
from ww.core.addrs import PROTOCOL_ID
from ww.core.identity import PrivateKey
from ww.p2p import bounds, lane
from ww.p2p.protocol import Exports
from ww.schema import load

_cell = load("cell")

MiB = 1 << 20
HIGH = MiB  # ext.c's WRITE_HIGH: a writer is paused past it
WINDOW = 256 << 10  # conn.c's YAMUX_WINDOW


class Held(_cell.Service.Server):  # type: ignore[name-defined,misc]
    """``call(method, [arg])`` answers the length of ``arg`` once ``gate`` is open (a cell
    slow to answer: its host reads no more than MAX_CALLS of a stream's calls meanwhile)."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()

    async def call(self, method: str, args: Any, **kwargs: Any) -> str:
        self.calls += 1
        await self.gate.wait()
        return str(sum(len(a) for a in args))


def _only_stream(conn: lane.LaneConn) -> Any:
    (stream,) = conn.streams.values()
    return stream


def test_calls_pipelined_past_the_window_on_a_dialed_stream_wait_and_are_all_answered() -> None:
    """The Dialer's path (a cell's ``P2P.dial``): 48 calls of 1 MiB pipelined to a service
    that holds them, so its host takes MAX_CALLS and stops reading.  The dialed stream's
    writer is paused with at most the high-water mark and one call unsent (it was cut off by
    its own host's answer budget at 32 MiB, every call failing); once the service answers,
    every call is answered, and the connection never failed."""
    n, arg = 48, "x" * MiB

    async def main() -> None:
        held = Held()
        exports = Exports()
        exports.set(held)
        listener = Listener(exports.lane_acceptor)
        dialer = RecordingDialer()
        try:
            service = (await dialer.dial(listener.addr)).cast_as(_cell.Service)
            conn = dialer._lanes[listener.addr].result()
            stream = _only_stream(conn)
            calls = [asyncio.ensure_future(service.call("m", [arg])) for _ in range(n)]
            await until(
                lambda: any(c.done() for c in calls)
                or (held.calls >= bounds.MAX_CALLS and getattr(stream, "writing_paused", False))
            )
            assert not any(c.done() for c in calls)  # none failed
            assert stream.writing_paused
            assert stream.get_write_buffer_size() <= HIGH + len(arg) + 4096
            held.gate.set()
            async with asyncio.timeout(HANG):
                results = await asyncio.gather(*calls)
            assert [r.result for r in results] == [str(len(arg))] * n
            assert not stream.writing_paused and stream.get_write_buffer_size() == 0
            assert stream.protocol.violation is None and conn.failure == ""
        finally:
            dialer.close_all()
            exports.close_all()
            listener.close()

    run(main)


# The EXPORTER cell with a slow method: ``slow ARG`` answers ARG's length after a moment.
SLOW_EXPORTER = EXPORTER.replace(
    '        if method == "upper":',
    '        if method == "slow":\n'
    "            await asyncio.sleep(0.02)\n"
    "            return str(len(args[0]))\n"
    '        if method == "upper":',
)
assert SLOW_EXPORTER != EXPORTER


def test_a_plain_pycapnp_client_pipelining_past_the_buffer_limit_waits(start_host, cell_file):
    """A pycapnp client straight on a lane stream (no bounds: ``lane.capnp_stream``)
    pipelines 80 calls of 1 MiB, more than a stream's 64 MiB buffer, to a real `ww run`
    host whose cell is slow to answer.  It is paused as a socket's writer is, and every
    call is answered (it met ``MemoryError: stream buffer limit`` in its write and hung)."""
    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, cell_file(SLOW_EXPORTER, "slow.py"))
    n, arg = 80, "y" * MiB

    async def main() -> None:
        conn = await lane.dial(b.addr, PrivateKey.generate().seed, timeout=HANG)
        try:
            stream = conn.open(PROTOCOL_ID)
            async with asyncio.timeout(HANG):
                await stream.negotiated
            client = capnp.TwoPartyClient(lane.capnp_stream(stream))
            gateway = client.bootstrap().cast_as(_cell.Gateway)
            service = (await gateway.service()).service.as_interface(_cell.Service)
            calls = [asyncio.ensure_future(service.call("slow", [arg])) for _ in range(n)]
            await until(
                lambda: getattr(stream, "writing_paused", False)
                or stream.get_write_buffer_size() > 2 * HIGH + len(arg)
                or any(c.done() for c in calls)
            )
            assert stream.get_write_buffer_size() <= HIGH + len(arg) + 4096
            async with asyncio.timeout(HANG):
                results = await asyncio.gather(*calls)
            assert [r.result for r in results] == [str(len(arg))] * n
            assert (await service.call("echo", ["after"])).result == "after"
            assert conn.failure == ""
        finally:
            conn.close()

    run(main)
    status, err = b.stop()
    assert status == 0, err


SINK = "/test/sink/1.0.0"


class Deaf(asyncio.BufferedProtocol):
    """Takes a stream and never reads it."""

    def __init__(self) -> None:
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.pause_reading()

    def get_buffer(self, _hint: int) -> bytearray:
        return bytearray(65536)

    def buffer_updated(self, n: int) -> None: ...

    def eof_received(self) -> None: ...


class Heedless(asyncio.BufferedProtocol):
    """Writes whatever it is told to, paused or not; notes what it was told."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.paused = 0
        self.resumed = 0
        self.lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def get_buffer(self, _hint: int) -> bytearray:
        return bytearray(65536)

    def buffer_updated(self, n: int) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: Any) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _close_all(conn: lane.LaneConn, listener: Listener, served: list[Any]) -> None:
    """Close the test's connection, the listener's, and the listener."""
    conn.close()
    for c in served:
        if isinstance(c, lane.LaneConn):
            c.close()
    listener.close()


def test_a_writer_that_does_not_wait_loses_its_stream_not_the_connection() -> None:
    """A protocol that goes on writing though told to wait (1 MiB a loop turn to a peer
    that reads nothing) is reset once 64 MiB of it are unsent: its protocol is told, and the
    connection and its other streams go on (the whole connection failed, "stream buffer
    limit").  The reading side held no more than the window of it meanwhile."""
    served: list[Any] = []

    def acceptor(seed: bytes) -> Callable[[socket.socket, str, Any], Any]:
        async def accept(sock: socket.socket, ip: str, ticket: Any) -> None:
            def sink(stream: lane.LaneStream) -> None:
                served.append(stream)
                stream.connect(Deaf())

            conn = lane.LaneConn(sock, False, {SINK: sink})
            served.append(conn)
            await conn.handshake(seed, None, lane=True)

        return accept

    async def main() -> None:
        listener = Listener(acceptor)
        conn = await lane.dial(listener.addr, PrivateKey.generate().seed, timeout=HANG)
        try:
            stream = conn.open(SINK)
            async with asyncio.timeout(HANG):
                await stream.negotiated
            writer = Heedless()
            stream.connect(writer)
            chunk = bytes(MiB)
            for _ in range(100):  # bounded: 100 MiB, past the 64 MiB a stream may hold
                if writer.lost.done():
                    break
                stream.write(chunk)
                await asyncio.sleep(0)  # a loop turn: the bytes go to the connection
            async with asyncio.timeout(HANG):
                exc = await writer.lost
            assert isinstance(exc, ConnectionResetError), exc
            assert writer.paused == 1
            assert writer.resumed == 0  # (it was: its unsent bytes dropped with the stream)
            assert conn.failure == "" and not conn.closed.done()
            deaf = next(s for s in served if isinstance(s, lane.LaneStream))
            assert deaf.held <= WINDOW
            ping = conn.open(lane.PING)  # another stream of the connection is served
            async with asyncio.timeout(HANG):
                await ping.negotiated
            echoed = bytearray()

            class Echo(Heedless):
                def get_buffer(self, _hint: int) -> bytearray:
                    self.buf = bytearray(64)
                    return self.buf

                def buffer_updated(self, n: int) -> None:
                    echoed.extend(self.buf[:n])

            ping.connect(Echo())
            ping.write(b"p" * lane.PING_SIZE)
            await until(lambda: len(echoed) >= lane.PING_SIZE or conn.closed.done())
            assert bytes(echoed) == b"p" * lane.PING_SIZE
        finally:
            _close_all(conn, listener, served)

    run(main)


class _Silent(asyncio.BufferedProtocol):
    """Takes a stream, reads nothing (its peer's window is never given back), keeps it."""

    def __init__(self, into: list[Any]) -> None:
        self.into = into

    def connection_made(self, transport: Any) -> None:
        transport.pause_reading()
        self.into.append(transport)

    def get_buffer(self, _hint: int) -> bytearray:
        return bytearray(65536)

    def buffer_updated(self, n: int) -> None: ...

    def eof_received(self) -> None: ...


def test_a_dialed_peer_cannot_pin_the_node_budget_with_calls_while_its_dialer_is_paused() -> None:
    """A cell dials a peer and sends it 2 MiB; the peer takes only its first window, so the
    dialed stream is paused (pycapnp waits), and sends 6 calls of 7.5 MiB to the dialer
    (pipelined on a bootstrap: the dialer answers each with an exception at once).  Their
    bytes stayed counted in the node's 32 MiB budget until their answers left pycapnp,
    which the pause held back: the node read nothing more on any stream, and an honest
    caller of the node's own export waited until the dialed stream's clock cut it (about
    12.5 s; as long as the peer liked, taking 100 KiB/s).  Now a paused dialed stream
    reads no new call of its peer's: the budget stays free, and the honest call is
    answered while the dialed stream is still paused and alive."""
    from tests.p2p.deaf_peer import bootstrap, pipelined_call

    evil: list[Any] = []

    def acceptor(seed: bytes) -> Callable[[socket.socket, str, Any], Any]:
        async def accept(sock: socket.socket, ip: str, ticket: Any) -> None:
            conn = lane.LaneConn(sock, False, {PROTOCOL_ID: lambda s: s.connect(_Silent(evil))})
            evil.append(conn)
            await conn.handshake(seed, None, lane=True)

        return accept

    big = "z" * (7 * MiB + MiB // 2)

    async def main() -> None:
        listener = Listener(acceptor)
        held = Held()
        held.gate.set()
        exports = Exports()
        exports.set(held)
        honest = Listener(exports.lane_acceptor)
        caller = RecordingDialer()
        conn = await lane.dial(listener.addr, PrivateKey.generate().seed, timeout=HANG)
        try:
            client = capnp.TwoPartyClient(await conn.open_ww())
            gateway = client.bootstrap().cast_as(_cell.Gateway)
            service = gateway.service().service.cast_as(_cell.Service)
            sent = asyncio.ensure_future(service.call("m", ["a" * (2 * MiB)]))
            stream = _only_stream(conn)
            await until(lambda: stream.writing_paused or sent.done())
            assert stream.writing_paused
            peer_stream = next(s for s in evil if isinstance(s, lane.LaneStream))
            frames = [bootstrap(0)]
            for q in range(1, 7):
                params, m = pipelined_call(q, _cell.Service, "call", 0, method="m")
                params.init("args", 1)[0] = big
                frames.append(m.to_bytes())
            peer_stream.write(b"".join(frames))
            budget = bounds.loop_budget()
            proto = stream.protocol
            # the dialer read what it will: the node's budget is full (the calls held, their
            # answers behind the pause), or it holds the next call back while paused
            await until(
                lambda: proto.violation is not None
                or not proto._reading
                and (
                    budget.used >= budget.total
                    or getattr(proto, "_write_paused", False)
                    and bounds.starts_call(proto.state.buf)
                )
            )
            assert budget.used < 2 * MiB, (budget.used, proto.state.held)
            far = (await caller.dial(honest.addr)).cast_as(_cell.Service)
            answer = asyncio.ensure_future(far.call("m", ["ok"]))
            await until(lambda: answer.done() or proto.violation is not None)
            assert answer.done() and (await answer).result == "2", proto.violation
            assert proto.violation is None and stream.writing_paused
            sent.cancel()
        finally:
            caller.close_all()
            exports.close_all()
            honest.close()
            _close_all(conn, listener, evil)

    run(main)


def _rss_mib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) >> 10 for line in f if line.startswith("VmRSS"))


class _Taker(asyncio.BufferedProtocol):
    """Reads once resumed, until it has taken ``upto`` bytes; then nothing more."""

    def __init__(self, upto: int) -> None:
        self.upto, self.got, self.transport = upto, 0, None
        self.buf = bytearray(65536)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.pause_reading()

    def get_buffer(self, _hint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, n: int) -> None:
        self.got += n
        if self.got >= self.upto:
            self.transport.pause_reading()

    def eof_received(self) -> None: ...


def test_a_stream_taken_down_to_a_little_unsent_gives_its_buffer_back() -> None:
    """A served stream's writer (the host's answers are not paused) puts 30 MiB on a stream
    whose peer takes nothing, then the peer takes all of it but 1 MiB, and stops.  The
    stream held 700 KiB unsent (what the node's answer budget counts) and kept the 32 MiB
    its buffer grew to: 4 such streams, +123 MiB resident, 3 MiB unsent.  Now a buffer
    holding a quarter of its size or less gives the rest back: 3 streams grow the process
    by less than one did."""
    total = 30 * MiB
    served: list[Any] = []

    def acceptor(seed: bytes) -> Callable[[socket.socket, str, Any], Any]:
        async def accept(sock: socket.socket, ip: str, ticket: Any) -> None:
            def sink(stream: lane.LaneStream) -> None:
                stream.connect(Heedless())
                served.append(stream)

            conn = lane.LaneConn(sock, False, {SINK: sink})
            served.append(conn)
            await conn.handshake(seed, None, lane=True)

        return accept

    async def fill_and_take(conn: lane.LaneConn, n: int) -> None:
        """The n-th stream: 30 MiB written, all but 1 MiB of it taken."""
        stream = conn.open(SINK)
        async with asyncio.timeout(HANG):
            await stream.negotiated
        taker = _Taker(total - MiB)
        stream.connect(taker)
        await until(lambda: sum(isinstance(s, lane.LaneStream) for s in served) >= n)
        writer = [s for s in served if isinstance(s, lane.LaneStream)][-1]
        for _ in range(30):
            writer.write(bytes(MiB))
        await asyncio.sleep(0)  # a loop turn: the 30 MiB go to the connection
        taker.transport.resume_reading()
        await until(lambda: taker.got >= total - MiB)
        await until(lambda: writer.get_write_buffer_size() < MiB)
        assert writer.get_write_buffer_size() > 0

    async def main() -> None:
        listener = Listener(acceptor)
        conn = await lane.dial(listener.addr, PrivateKey.generate().seed, timeout=HANG)
        try:
            base = _rss_mib()
            for n in range(1, 4):
                await fill_and_take(conn, n)
            grown = _rss_mib() - base
            assert grown < 24, f"+{grown} MiB resident for 3 streams holding under 3 MiB"
        finally:
            _close_all(conn, listener, served)

    run(main)
