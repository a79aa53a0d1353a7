"""A libp2p connection served by the native connection, its other protocols by py-libp2p.

A connection a libp2p peer that is not ww dials (it proposes ``/noise``: kubo, js-libp2p)
is handed by the host's admission to the native connection (:func:`ww.p2p.lane.serve`) on
the cell's asyncio loop, as with ``--inbound calls``: `/ww/0.1.0` and ping are served
there, in C.  Here every other protocol of that connection goes on to py-libp2p, so the
peer loses nothing (identify, Bitswap, the DHT, ...):

- the connection is given to py-libp2p's swarm as a muxed connection of its own
  (:class:`BridgedConn`, on the libp2p thread), so that the host's protocols open streams
  to the peer on it (Bitswap's answers, identify) and the swarm hands it the peer's;
- each such stream is a socket pair: the loop copies between the native stream and one end
  (:class:`_Pair`), py-libp2p reads and writes the other (:class:`BridgedStream`); only
  sockets cross between the threads, as the splice's do.  Flow control is the sockets':
  the loop stops reading the native stream (so no Yamux credit goes back and the peer
  waits) while the socket's buffer is full, and stops reading the socket while the native
  stream holds more than its high-water mark unsent;
- an inbound stream whose first proposal is not served natively is handed over with what
  multistream-select has read of it replayed (the header and the proposal, and the bytes
  after them), and py-libp2p negotiates it again from the start: its answer to the header
  (which the native side has sent already) is dropped on the way out.  So the host's own
  negotiation and admission's stream bounds hold these streams as any py-libp2p stream.

Bounds, besides admission's: at most :data:`MAX_BRIDGED` streams bridged at once in all
(each two descriptors: fewer if the process may not open that many, :func:`descriptors`),
as many of one address as admission lets it open (``_max_streams``); a newcomer past the
bound in all takes the place of the oldest stream of the address holding the most, if that
one holds at least 2 more than the newcomer's (as admission's streams are shared), else it
is reset; :data:`ACCEPT_QUEUE` of a connection's streams waiting for the swarm, more reset.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import threading
from collections.abc import Callable
from typing import Any

import trio

from ww.core import bridge
from ww.p2p import _native, lane

__all__ = ["ACCEPT_QUEUE", "MAX_BRIDGED", "BridgedConn", "BridgedStream", "Bridges"]

MAX_BRIDGED = 1024  # streams bridged at once, all connections (two descriptors each)
ACCEPT_QUEUE = 16  # a connection's inbound streams handed over, not yet taken by the swarm
# Each socket of a pair buffers this much, send and receive (the kernel's memory, not the
# process's).  With 32 KiB, and 16 KiB reads of the pair, kubo fetched from a host through
# the bridge at about three quarters of py-libp2p's own rate (64 MiB, 3 runs: 34 against
# 44 MiB/s median, benchmarks/bridge_bitswap.py); with these, as fast (46 against 48).
PAIR_BUFFER = 128 * 1024
LANE_READ = 16 * 1024  # the most one read of the native stream hands the pair at once
SOCK_READ = 64 * 1024  # the most one read of the pair hands the native stream at once
SOCK_HIGH = 16 * 1024  # unsent to the pair past this: the native stream is not read
NATIVE_HIGH = 64 * 1024  # unsent to the peer past this: the pair is not read
STREAM_READ = 64 * 1024  # the most one read of a BridgedStream (py-libp2p's) returns
# (so a bridged stream holds in the host, besides its Yamux window of what came unread,
# at most SOCK_HIGH + LANE_READ one way and NATIVE_HIGH + SOCK_READ the other, 160 KiB,
# and the pair's kernel buffers)
_HEADER = lane.ms_line("/multistream/1.0.0")


FD_RESERVE = 512  # descriptors left to all else (admission's 128 connections take 256)
FD_WANTED = 1 << 16  # the soft limit raised to (at most the hard one), as Go's runtime does


def descriptors() -> int:
    """How many streams may be bridged at once: :data:`MAX_BRIDGED`, or fewer if the
    process may not open two descriptors for each beside :data:`FD_RESERVE` (its soft
    limit of open files is first raised towards :data:`FD_WANTED`, within the hard one: a
    soft limit of 1024 is common, and 1024 pairs took all of it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_WANTED if hard == resource.RLIM_INFINITY else min(FD_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_BRIDGED
    return max(0, min(MAX_BRIDGED, (soft - FD_RESERVE) // 2))


class Bridges:
    """The streams bridged now (any connection), against their bounds (the module's)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = descriptors() if limit is None else limit
        self.pairs: dict[_Pair, None] = {}  # (the loop's)
        self.by_ip: dict[str, dict[_Pair, None]] = {}  # of each counted address, oldest first
        # (the loop's) every read's of either end, copied out at once
        self.lane_buf = bytearray(LANE_READ)
        self.sock_buf = bytearray(SOCK_READ)
        self.refused = 0  # streams reset at a bound (the loop's and the libp2p thread's)
        self.evicted = 0  # bridged streams reset to give their place to a newcomer

    def room(self, ip: str) -> bool:
        """Whether a new stream of ``ip`` may be bridged, the oldest of the address holding
        the most reset for it if all places are taken (the module's bounds)."""
        from ww.p2p.admission import _max_streams

        held = len(self.by_ip.get(ip, ()))
        if held >= _max_streams(ip):
            return False
        if len(self.pairs) < self.limit:
            return True
        heaviest = max(self.by_ip, key=lambda a: len(self.by_ip[a]), default=None)
        if heaviest is None or len(self.by_ip[heaviest]) < held + 2:
            return False
        self.evicted += 1
        next(iter(self.by_ip[heaviest]))._end(reset=True)
        return True

    def add(self, pair: _Pair) -> None:
        self.pairs[pair] = None
        self.by_ip.setdefault(pair.ip, {})[pair] = None

    def discard(self, pair: _Pair) -> None:
        self.pairs.pop(pair, None)
        held = self.by_ip.get(pair.ip)
        if held is not None:
            held.pop(pair, None)
            if not held:
                del self.by_ip[pair.ip]


class _Pair:
    """On the loop: one native stream copied to and from a socket whose other end is
    py-libp2p's.  ``swallow``: bytes py-libp2p writes first that are not sent (its answer to
    a header the native side answered already)."""

    def __init__(self, stream: Any, bridges: Bridges, ip: str, swallow: bytes = b"") -> None:
        self.stream = stream
        self.bridges = bridges
        self.ip = ip  # the peer's address as admission counts it
        self.swallow = swallow
        self.sock: Any = None  # the asyncio transport of our socket
        self.lane_eof = False  # the peer closed its side
        self.sock_eof = False  # py-libp2p closed its side
        self.reset = False  # the stream was reset (either side), or its connection went
        self.done = False

    # -- the native stream's protocol (asyncio's BufferedProtocol calls)
    def connection_made(self, _transport: Any) -> None: ...

    def get_buffer(self, _hint: int) -> memoryview:
        return memoryview(self.bridges.lane_buf)

    def buffer_updated(self, n: int) -> None:
        if self.sock is not None and not self.done:
            self.sock.write(bytes(self.bridges.lane_buf[:n]))

    def eof_received(self) -> None:
        self.lane_eof = True
        if self.sock is not None and not self.done:
            self.sock.write_eof()
        self._maybe_done()

    def connection_lost(self, _exc: Any) -> None:
        if not self.done:  # reset by the peer, or the connection went
            self._end(reset=True)

    def pause_writing(self) -> None:
        if self.sock is not None:
            self.sock.pause_reading()

    def resume_writing(self) -> None:
        if self.sock is not None and not self.done:
            self.sock.resume_reading()

    # -- our socket's side
    def from_py(self, data: bytes) -> None:
        if self.swallow:
            n = min(len(self.swallow), len(data))
            if data[:n] != self.swallow[:n]:
                self._end(reset=True)
                return
            self.swallow, data = self.swallow[n:], data[n:]
            if not data:
                return
        self.stream.write(data)

    def py_eof(self) -> None:
        self.sock_eof = True
        self.stream.write_eof()
        self._maybe_done()

    def py_lost(self) -> None:
        if not self.done:
            self._end(reset=True)

    def _maybe_done(self) -> None:
        if self.lane_eof and self.sock_eof and not self.done:
            self._end(reset=False)

    def _end(self, reset: bool) -> None:
        self.done = True
        self.reset = reset
        self.bridges.discard(self)
        if reset:
            self.stream.reset()
            if self.sock is not None:
                self.sock.abort()
        else:
            self.stream._lost()  # (both FINs are sent: nothing more to send)
            if self.sock is not None:
                self.sock.close()


class _SockSide(asyncio.BufferedProtocol):
    """Our socket's protocol: what py-libp2p writes goes to the native stream."""

    def __init__(self, pair: _Pair) -> None:
        self.pair = pair

    def connection_made(self, transport: Any) -> None:
        transport.set_write_buffer_limits(high=SOCK_HIGH)
        self.pair.sock = transport

    def get_buffer(self, _hint: int) -> memoryview:
        return memoryview(self.pair.bridges.sock_buf)

    def buffer_updated(self, n: int) -> None:
        if not self.pair.done:
            self.pair.from_py(bytes(self.pair.bridges.sock_buf[:n]))

    def eof_received(self) -> bool:
        if not self.pair.done:
            self.pair.py_eof()
        return True

    def connection_lost(self, _exc: Any) -> None:
        self.pair.py_lost()

    def pause_writing(self) -> None:
        self.pair.stream.pause_reading()

    def resume_writing(self) -> None:
        if not self.pair.done:
            self.pair.stream.resume_reading()


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    try:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PAIR_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PAIR_BUFFER)
            s.setblocking(False)
    except OSError:
        a.close()
        b.close()
        raise
    return a, b


async def _bridge(stream: Any, bridges: Bridges, ip: str, replay: bytes,
                  swallow: bytes) -> tuple[socket.socket, _Pair] | None:
    """On the loop: ``stream`` (a native stream, negotiated or raw) bridged to a socket pair;
    py-libp2p's end and the pair, or None (the bound is reached, no descriptor is left, or
    the stream went meanwhile: reset)."""
    try:
        if not bridges.room(ip):
            raise OSError("bound")
        ours, theirs = _socketpair()
    except OSError:  # the bound, or no descriptor left (EMFILE): nothing is held
        bridges.refused += 1
        stream.reset()
        return None
    pair = _Pair(stream, bridges, ip, swallow)
    bridges.add(pair)
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: _SockSide(pair), ours)
    except BaseException:
        bridges.discard(pair)
        ours.close()
        theirs.close()
        stream.reset()
        raise
    if replay:
        pair.sock.write(replay)
    stream.set_write_buffer_limits(high=NATIVE_HIGH)
    stream.connect(pair)
    if pair.done:  # lost before it was handed over
        theirs.close()
        return None
    return theirs, pair


# -- the libp2p thread ----------------------------------------------------------------------

class BridgedStream:
    """py-libp2p's side of a bridged stream (an ``IMuxedStream``), on the libp2p thread."""

    def __init__(self, conn: BridgedConn, sock: socket.socket, pair: _Pair) -> None:
        self.muxed_conn = conn
        self.pair = pair  # the loop's: only its ``reset`` is read here
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.read_closed = False
        self.write_closed = False
        self.is_reset = False

    async def read(self, n: int | None = None) -> bytes:
        from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamReset

        if self.is_reset:
            raise MuxedStreamReset("stream reset")
        if self.read_closed:
            raise MuxedStreamEOF("stream closed for reading")
        size = STREAM_READ if n is None or n < 0 else min(n, STREAM_READ)
        try:
            data = await self.sock.recv(size)
        except (OSError, trio.ClosedResourceError):  # (reset here meanwhile: closed)
            data = b""
            self.is_reset = True
        if not data:
            self.read_closed = True
            if self.write_closed:
                self.sock.close()
            if self.is_reset or self.pair.reset:
                self.is_reset = True
                raise MuxedStreamReset("stream reset")
            raise MuxedStreamEOF("stream closed by the peer")
        return data

    async def write(self, data: bytes) -> None:
        from libp2p.stream_muxer.exceptions import MuxedStreamClosed, MuxedStreamReset

        if self.is_reset:
            raise MuxedStreamReset("stream reset")
        if self.write_closed:
            raise MuxedStreamClosed("stream closed for writing")
        view = memoryview(data)
        try:
            while view:
                sent = await self.sock.send(view)
                view = view[sent:]
        except (OSError, trio.ClosedResourceError):
            self.is_reset = True
            raise MuxedStreamReset("stream reset") from None

    async def close(self) -> None:
        if self.write_closed or self.is_reset:
            return
        self.write_closed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self.read_closed:
            self.sock.close()

    async def reset(self) -> None:
        if not self.is_reset:
            self.is_reset = True
            bridge.call_in_loop(self.muxed_conn.loop, self.pair.py_lost)
            self.sock.close()

    async def linger(self, seconds: float) -> None:
        """After its handler has returned (admission's ``_linger``): what the peer still
        sends is dropped until it closes its side, within ``seconds``, and ours is closed
        (if the handler did not); else the stream is reset."""
        from libp2p.stream_muxer.exceptions import MuxedStreamError

        with trio.move_on_after(seconds):
            try:
                while True:
                    await self.read()
            except MuxedStreamError:  # its end (or a reset)
                pass
            await self.close()
            return
        await self.reset()

    def set_deadline(self, ttl: int) -> None:
        """(py-libp2p's Yamux ignores it too)"""

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.muxed_conn.get_remote_address()

    async def __aenter__(self) -> BridgedStream:
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.close()


class BridgedConn:
    """py-libp2p's side of a native connection (an ``IMuxedConn``), on the libp2p thread.
    Made on the loop (:func:`attach`); its streams are made on the loop and handed over."""

    def __init__(self, conn: Any, ip: str, port: int, bridges: Bridges, token: Any) -> None:
        from libp2p.peer.id import ID

        self.lane_conn = conn
        self.loop: asyncio.AbstractEventLoop = conn.loop
        self.peer_id = ID.from_base58(conn.peer_id)
        self.ip = ip
        self.port = port
        self.bridges = bridges
        self.token = token  # the libp2p thread's
        self.counted_ip = ip  # as admission counts the address (Rest sets it)
        self.event_started = trio.Event()  # (set on the libp2p thread, by start)
        self._closed = False
        self._accepted: trio.MemorySendChannel[tuple[socket.socket, _Pair]]
        self._accept: trio.MemoryReceiveChannel[tuple[socket.socket, _Pair]]
        self._accepted, self._accept = trio.open_memory_channel(ACCEPT_QUEUE)

    @property
    def is_initiator(self) -> bool:
        return False

    @property
    def is_established(self) -> bool:
        return not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        self.event_started.set()

    async def close(self) -> None:
        self._mark_closed()
        bridge.call_in_loop(self.loop, self.lane_conn.close)

    def _mark_closed(self) -> None:
        """(the libp2p thread) The connection is gone: the swarm's accept ends."""
        if not self._closed:
            self._closed = True
            self._accepted.close()

    def get_remote_address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def get_transport_addresses(self) -> list[Any]:
        import multiaddr

        kind = "ip6" if ":" in self.ip else "ip4"
        return [multiaddr.Multiaddr(f"/{kind}/{self.ip}/tcp/{self.port}")]

    def get_connection_type(self) -> Any:
        from libp2p.abc import ConnectionType

        return ConnectionType.DIRECT

    async def accept_stream(self) -> BridgedStream:
        from libp2p.stream_muxer.exceptions import MuxedConnUnavailable

        try:
            sock, pair = await self._accept.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MuxedConnUnavailable("connection closed") from None
        return BridgedStream(self, sock, pair)

    def _hand(self, sock: socket.socket, pair: _Pair) -> None:
        """(the libp2p thread) An inbound stream for the swarm; reset if the queue is full."""
        try:
            if self._closed:
                raise trio.ClosedResourceError
            self._accepted.send_nowait((sock, pair))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.bridges.refused += 1
            sock.close()
            bridge.call_in_loop(self.loop, pair.py_lost)

    async def open_stream(self) -> BridgedStream:
        from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamReset

        if self._closed:
            raise MuxedConnUnavailable("connection closed")
        got = await _on_loop(self.loop, self._open_on_loop)
        if got is None and not self._closed:
            raise MuxedStreamReset("no place for another bridged stream")
        if got is None:
            raise MuxedConnUnavailable("connection closed")
        return BridgedStream(self, *got)

    async def _open_on_loop(self) -> tuple[socket.socket, _Pair] | None:
        conn = self.lane_conn
        if conn.freed or conn.closed.done():
            return None
        try:
            sid = _native.Conn.open(conn)  # the C's own: a raw stream, nothing proposed
        except ConnectionError:
            return None
        stream = conn.streams[sid] = lane.LaneStream(conn, sid, True)
        stream._done()  # not negotiated here: py-libp2p negotiates on it
        return await _bridge(stream, self.bridges, self.counted_ip, b"", b"")


def _drop(loop: asyncio.AbstractEventLoop, got: tuple[socket.socket, _Pair]) -> None:
    """A bridged stream nobody takes: reset."""
    got[0].close()
    bridge.call_in_loop(loop, got[1].py_lost)


async def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> Any:
    """(the libp2p thread) ``await fn()`` on the asyncio ``loop``; its result (a socket, or
    None).  Cancelled, the socket it makes after all is closed (by whichever side sees it
    last)."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    lock = threading.Lock()
    state: dict[str, Any] = {"abandoned": False}

    async def run() -> None:
        try:
            result = await fn()
        except Exception:
            result = None
        with lock:
            if state["abandoned"]:
                if result is not None:
                    _drop(loop, result)
                return
            state["result"] = result
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    if not bridge.start_in_loop(loop, run):
        return None
    try:
        await done.wait()
    except BaseException:
        with lock:
            state["abandoned"] = True
            result = state.pop("result", None)
        if result is not None:
            _drop(loop, result)
        raise
    return state.get("result")


# -- the loop: a served connection's other protocols ------------------------------------------

class Rest:
    """On the loop: what py-libp2p serves of one native connection (:func:`lane.serve`'s
    ``rest``).  ``register(muxed)`` (from the loop, must not block) gives the swarm the
    connection's :class:`BridgedConn`."""

    def __init__(self, conn: Any, ip: str, ticket: Any, bridges: Bridges,
                 register: Callable[[BridgedConn], None]) -> None:
        from ww.p2p.admission import MAX_STREAMS_PER_CONN

        peer = conn.sock.getpeername()
        self.muxed = BridgedConn(conn, str(peer[0]), int(peer[1]), bridges, ticket._token)
        self.muxed.counted_ip = ip
        self.conn = conn
        self.bridges = bridges
        self._tasks: set[asyncio.Task[None]] = set()
        conn.max_inbound = MAX_STREAMS_PER_CONN  # (admission's stream bounds hold them)
        conn.bridge = self.inbound
        conn.closed.add_done_callback(self._closed)
        register(self.muxed)

    def _closed(self, _future: Any) -> None:
        _to_libp2p(self.muxed, self.muxed._mark_closed)

    def inbound(self, stream: Any, proposal: str) -> None:
        """(Negotiation's) ``stream`` proposed ``proposal``, not served here: bridged, the
        header and the proposal replayed for py-libp2p, its own header not sent."""
        task = asyncio.ensure_future(self._inbound(stream, proposal))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _inbound(self, stream: Any, proposal: str) -> None:
        got = await _bridge(stream, self.bridges, self.muxed.counted_ip,
                            _HEADER + lane.ms_line(proposal), _HEADER)
        if got is not None and not _to_libp2p(self.muxed, self.muxed._hand, *got):
            _drop(self.muxed.loop, got)


def _to_libp2p(muxed: BridgedConn, fn: Callable[..., None], *args: Any) -> bool:
    """From the loop: ``fn(*args)`` soon on the libp2p thread; False if it has stopped."""
    try:
        muxed.token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        return False
    return True
