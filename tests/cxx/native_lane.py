"""The extension's two ends for tests/cxx/test_native_p2p.py's lane and back-pressure tests,
each run as a process of its own (benchmarks/p2p_native.py's ExtConn, its handshake given the
``lane`` flag of ``Conn.start_handshake``):

    native_lane.py host LANE            listen on 127.0.0.1; print the address, then one line
                                        of JSON per handshake ({"lane": ...} or {"error": ...});
                                        echo and ping served; stops at end of file on stdin
    native_lane.py dial ADDR LANE PROTO dial with the lane flag, echo 32 random bytes on PROTO
                                        (the echo or the ping protocol); print {"lane": ...}
    native_lane.py pushback ADDR SIZE   dial (lane), pause an echo stream's reading, write SIZE
                                        bytes on it, watch the bytes held in C, echo on a second
                                        stream meanwhile, then resume; print what was seen
    native_lane.py unsent SIZE          both ends in this process over a socket pair: write
                                        twice SIZE bytes to a stream whose reader never takes
                                        them, then let it read; print the writer's
                                        get_write_buffer_size() along the way
    native_lane.py pingflood COUNT      a lane host and a peer that sends it COUNT Yamux pings
                                        and reads nothing, in this process over TCP; while the
                                        host's reading is paused another connection echoes,
                                        then the peer reads and echoes on the flooded one
    native_lane.py bulkboth SIZE N      both ends in this process over a socket pair, each
                                        echoing what the other sends on N streams of its own,
                                        SIZE bytes each in one write; print what came back
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import sys
import termios
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "benchmarks"))
from p2p_native import (  # noqa: E402
    ECHO,
    PING,
    EchoReader,
    dial,
    echo_handler,
    load_ext,
    ms_line,
)

WINDOW = 256 * 1024  # conn.c's YAMUX_WINDOW
LIMIT = 300  # seconds: only stops a hang


def lane_conn(lane: bool) -> Any:
    """ExtConn whose handshake proposes (dialer) or accepts (listener) the lane."""
    ext_conn = load_ext()

    class LaneConn(ext_conn):  # type: ignore[misc,valid-type]
        def start_handshake(self, seed: bytes, expect: bytes | None) -> None:
            super().start_handshake(seed, expect, lane=lane)

    return LaneConn


async def host(lane: bool) -> None:
    from ww.core.identity import PrivateKey

    loop = asyncio.get_running_loop()
    make = lane_conn(lane)
    seed = os.urandom(32)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    handlers = {ECHO: echo_handler, PING: echo_handler}

    async def one(sock: socket.socket) -> None:
        conn = make(sock, False, handlers)
        try:
            await conn.handshake(seed, None)
            print(json.dumps({"lane": conn.lane}), flush=True)
            await conn.closed
        except ConnectionError as e:
            print(json.dumps({"error": str(e)}), flush=True)
        finally:
            conn.close()

    async def serve() -> None:
        held = set()  # the connections' tasks, until each ends
        while True:
            sock, _ = await loop.sock_accept(listener)
            held.add(task := asyncio.ensure_future(one(sock)))
            task.add_done_callback(held.discard)

    port = listener.getsockname()[1]
    print(f"/ip4/127.0.0.1/tcp/{port}/p2p/{PrivateKey(seed).peer_id}", flush=True)
    serving = asyncio.ensure_future(serve())
    await loop.run_in_executor(None, sys.stdin.read)
    serving.cancel()


async def echo_once(conn: Any, proto: str) -> None:
    stream = conn.open(proto)
    await asyncio.wait_for(stream.negotiated, LIMIT)
    reader = EchoReader(32)
    stream.connect(reader)
    message = os.urandom(32)
    reader.waiter = asyncio.get_running_loop().create_future()
    stream.write(message)
    await asyncio.wait_for(reader.waiter, LIMIT)
    if reader.got != message:
        raise SystemExit("echo: wrong bytes back")
    stream.reset()


async def dial_once(addr: str, lane: bool, proto: str) -> dict[str, Any]:
    conn = await dial(lane_conn(lane), addr)
    try:
        await echo_once(conn, proto)
        return {"lane": conn.lane}
    finally:
        conn.close()


class Paused(asyncio.BufferedProtocol):
    """Reads nothing until resumed: pauses its transport as soon as it has it."""

    def __init__(self, size: int) -> None:
        self.size, self.got, self.lost = size, bytearray(), False
        self.buf = bytearray(65536)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        transport.pause_reading()

    def get_buffer(self, _hint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, n: int) -> None:
        self.got += self.buf[:n]
        if len(self.got) >= self.size and not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> None: ...

    def connection_lost(self, _exc: Any) -> None:
        self.lost = True
        if not self.done.done():
            self.done.set_exception(ConnectionError("stream lost"))


async def wait_held(stream: Any, reader: Paused, conn: Any) -> int:
    """Until (bounded) the peer filled the window we gave, or the stream or connection was
    lost: the most bytes held in C seen."""
    held_max = 0
    for _ in range(LIMIT * 100):
        held_max = max(held_max, stream.held)
        # (the window less the few bytes of multistream, not credited back yet)
        if held_max >= WINDOW - 1024 or reader.lost or conn.closed.done():
            break
        await asyncio.sleep(0.01)  # polls the count: no event says "the window is full"
    return held_max


async def closed_while_full(conn: Any, size: int) -> bool:
    """A stream closed while it holds its full window: what it held is credited back, so
    the echoing peer sends the rest (dropped here), closes its side, and the C connection
    lets the stream go.  False if it still holds it after a minute (it takes well under a
    second)."""
    conn.flush()  # the resets queued before: sent, those streams let go
    before = conn.open_streams
    stream = conn.open(ECHO)
    await asyncio.wait_for(stream.negotiated, LIMIT)
    reader = Paused(size)
    stream.connect(reader)
    stream.write(os.urandom(size))
    await wait_held(stream, reader, conn)
    stream.close()
    for _ in range(60 * 100):
        if conn.open_streams <= before:
            return True
        await asyncio.sleep(0.01)  # polls the count: conn.c tells nobody it let a stream go
    return False


async def pushback(addr: str, size: int) -> dict[str, Any]:
    """The echo host sends back what it gets, as fast as our window lets it."""
    conn = await dial(lane_conn(True), addr)
    try:
        stream = conn.open(ECHO)
        await asyncio.wait_for(stream.negotiated, LIMIT)
        reader = Paused(size)
        stream.connect(reader)
        data = os.urandom(size)
        stream.write(data)
        held_max = await wait_held(stream, reader, conn)
        # another stream on the same connection still flows meanwhile (a round trip, during
        # which more of the echo could come if the peer were not pushed back)
        await echo_once(conn, ECHO)
        await echo_once(conn, ECHO)
        held_max = max(held_max, stream.held)
        lost_while_paused = reader.lost
        stream.resume_reading()
        try:
            await asyncio.wait_for(reader.done, LIMIT)
        except ConnectionError:
            pass
        stream.reset()
        return {
            "closed_full_let_go": await closed_while_full(conn, 1 << 20),
            "held_max": held_max,
            "lost_while_paused": lost_while_paused,
            "intact": bytes(reader.got) == data,
            "got": len(reader.got),
            "conn_failed": conn.closed.done(),
        }
    finally:
        conn.close()


SINK = "/ww-test/sink/1.0.0"  # a stream whose reader takes nothing until resumed


async def pair(handlers: dict[str, Any]) -> tuple[Any, Any]:
    """A lane dialer and a lane listener (serving ``handlers``), both of the extension and
    on this loop, over a socket pair, handshaken."""
    make = lane_conn(True)
    a, b = socket.socketpair()
    dialer, listener = make(a, True, {}), make(b, False, handlers)
    await asyncio.wait_for(
        asyncio.gather(
            dialer.handshake(os.urandom(32), None), listener.handshake(os.urandom(32), None)
        ),
        LIMIT,
    )
    return dialer, listener


async def unsent(size: int) -> dict[str, Any]:
    """A peer that gives no send window back (its reader paused, credit only for what it
    takes): what the writer's stream says it has not handed to the socket, after writes and
    flushes, then while the peer reads."""
    readers: list[Paused] = []

    def sink(stream: Any) -> None:
        readers.append(Paused(2 * size))
        stream.connect(readers[-1])

    dialer, listener = await pair({SINK: sink})
    try:
        stream = dialer.open(SINK)
        await asyncio.wait_for(stream.negotiated, LIMIT)
        data = os.urandom(2 * size)
        got: dict[str, Any] = {
            "negotiation": len(ms_line("/multistream/1.0.0") + ms_line(SINK)),
            "window": WINDOW,
            "before": stream.get_write_buffer_size(),
        }
        stream.write(data[:size])
        got["written"] = stream.get_write_buffer_size()  # not framed yet: all of it
        dialer.flush()
        got["flushed"] = stream.get_write_buffer_size()  # less what the window took
        stream.write(data[size:])
        dialer.flush()
        got["flushed_again"] = stream.get_write_buffer_size()  # no window: all of it waits
        got["conn_unsent"] = dialer.get_write_buffer_size()
        # the peer reads: its credit comes back at half the window, and the rest goes
        listener.streams[stream.sid].resume_reading()
        samples = [got["flushed_again"]]
        for _ in range(LIMIT * 1000):
            if samples[-1] == 0 or dialer.closed.done():
                break
            await asyncio.sleep(0.001)  # polls the size: no event says "the window came"
            if (now := stream.get_write_buffer_size()) != samples[-1]:
                samples.append(now)
        await asyncio.wait_for(readers[0].done, LIMIT)
        got["samples"] = samples
        got["intact"] = bytes(readers[0].got) == data
        return got
    finally:
        dialer.close()
        listener.close()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def unread(sock: socket.socket) -> int:
    """Bytes in the socket's receive queue."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4), "little")


def unsent_in_kernel(sock: socket.socket) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4), "little")


async def pingflood(count: int) -> dict[str, Any]:
    """A lane host (echo served); a peer that sends it ``count`` Yamux pings and reads
    nothing (its receive buffer made small, its reader removed), as fast as its socket takes
    them.  Once the host has read all it will (reading paused, or every ping read): the most
    the host's out buffer held after each of its reads, its growth in memory, a second
    connection's echo meanwhile; then the peer reads and echoes on the flooded connection
    (which comes after every ping's answer)."""
    loop = asyncio.get_running_loop()
    base = lane_conn(True)

    class Host(base):  # type: ignore[misc,valid-type]
        out_max = 0

        def readable(self) -> None:
            super().readable()
            self.out_max = max(self.out_max, self.get_write_buffer_size())

    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    seed = os.urandom(32)
    hosts: list[Any] = []

    async def accept() -> None:
        sock, _ = await loop.sock_accept(listener)
        hosts.append(Host(sock, False, {ECHO: echo_handler}))
        await hosts[-1].handshake(seed, None)

    async def connect(small: bool) -> Any:
        sock = socket.socket()
        if small:  # the peer's kernel takes little of the host's answers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, listener.getsockname())
        conn = base(sock, True, {})
        await asyncio.gather(conn.handshake(os.urandom(32), None), accept())
        return conn

    def paused(conn: Any) -> bool:
        return not getattr(conn, "reading", True)  # (an extension that never pauses: reading)

    peer = await connect(small=True)
    host = hosts[0]
    try:
        loop.remove_reader(peer.sock.fileno())  # the peer reads nothing from here on
        rss_before = rss_kib()
        sent = 0
        for _ in range(LIMIT * 1000):
            while sent < count and peer.get_write_buffer_size() < 1 << 16:
                peer.ping(sent)
                sent += 1
            peer.flush()
            if paused(host) and (sent == count or peer.get_write_buffer_size() >= 1 << 16):
                break  # the host stopped reading, and the peer sent all or is held back
            if (
                sent == count
                and not peer.get_write_buffer_size()
                and not unsent_in_kernel(peer.sock)
                and not unread(host.sock)
            ):
                break  # the host read every ping
            if host.closed.done() or peer.closed.done():
                break
            await asyncio.sleep(0.001)  # polls: no event says "the peer's socket took more"
        got: dict[str, Any] = {
            "sent": sent,
            "host_paused": paused(host),
            "host_out_max": host.out_max,
            "host_out_now": host.get_write_buffer_size(),
            "rss_growth_kib": rss_kib() - rss_before,
        }
        other = await connect(small=False)  # another connection to the same host meanwhile
        await echo_once(other, ECHO)
        other.close()
        got["other_echoed"] = True
        got["host_still_paused"] = paused(host)
        # the peer reads again: the host's answers go, it reads the rest of the pings
        loop.add_reader(peer.sock.fileno(), peer.readable)
        peer.readable()
        while sent < count:
            while sent < count and peer.get_write_buffer_size() < 1 << 16:
                peer.ping(sent)
                sent += 1
            peer.flush()
            await asyncio.sleep(0.001)  # polls, as above
        await echo_once(peer, ECHO)  # answered after every ping's answer
        got["flooded_echoed"] = True
        got["host_reading"] = not paused(host)
        got["failed"] = host.closed.done() or peer.closed.done()
        return got
    finally:
        peer.close()
        for h in hosts:
            h.close()
        listener.close()


async def bulkboth(size: int, streams: int) -> dict[str, Any]:
    """Both ends write a lot at once: each opens ``streams`` echo streams to the other and
    writes ``size`` bytes on each in one write, so both out buffers are busy with data and
    with echoes; all of it must come back (reading paused on neither side for good)."""
    a, b = await pair({ECHO: echo_handler})
    b.handlers = {ECHO: echo_handler}  # (pair() gave only the listener handlers)
    a.handlers = {ECHO: echo_handler}
    try:
        loop = asyncio.get_running_loop()
        sent, readers = [], []
        for conn in (a, b):
            for _ in range(streams):
                stream = conn.open(ECHO)
                await asyncio.wait_for(stream.negotiated, LIMIT)
                reader = EchoReader(size)
                reader.waiter = loop.create_future()
                stream.connect(reader)
                readers.append(reader)
        for reader, conn in zip(readers, [a] * streams + [b] * streams, strict=True):
            data = os.urandom(size)
            sent.append(data)
            reader_stream = next(
                s for s in conn.streams.values() if getattr(s, "protocol", None) is reader
            )
            reader_stream.write(data)
        await asyncio.wait_for(asyncio.gather(*(r.waiter for r in readers)), LIMIT)
        return {
            "intact": all(bytes(r.got) == d for r, d in zip(readers, sent, strict=True)),
            "failed": a.closed.done() or b.closed.done(),
        }
    finally:
        a.close()
        b.close()


def main() -> None:
    role, args = sys.argv[1], sys.argv[2:]
    try:
        if role == "host":
            asyncio.run(host(args[0] == "1"))
            return
        if role == "dial":
            got = asyncio.run(dial_once(args[0], args[1] == "1", args[2]))
        elif role == "pushback":
            got = asyncio.run(pushback(args[0], int(args[1])))
        elif role == "unsent":
            got = asyncio.run(unsent(int(args[0])))
        elif role == "bulkboth":
            got = asyncio.run(bulkboth(int(args[0]), int(args[1])))
        elif role == "pingflood":
            got = asyncio.run(pingflood(int(args[0])))
        else:
            raise SystemExit(f"unknown role {role!r}")
    except ConnectionError as e:
        print(f"native: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(got))


if __name__ == "__main__":
    main()
