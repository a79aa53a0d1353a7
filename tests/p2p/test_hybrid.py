"""A libp2p peer's connection served by the native connection, its other protocols by
py-libp2p (:mod:`ww.p2p.hybrid`).

A real host (:class:`ww.p2p.host.Node` in this process, its py-libp2p on its own thread,
with protocols of the test's own as py-libp2p handlers), its door handing connections
that propose ``/noise`` to an :class:`ww.p2p.protocol.Exports` lane acceptor on this
thread's asyncio loop (as a `ww run` host's cell loop), and a real dialer proposing
``/noise`` alone (ww's C connection, :func:`ww.p2p.lane.dial` with ``lane=False``, as
kubo's and js-libp2p's first write) over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import capnp
import pytest
import trio

from tests.conftest import HANG
from ww.core.identity import Identity, PrivateKey
from ww.p2p import hybrid, lane
from ww.p2p.host import Node
from ww.p2p.protocol import Exports

pytest.importorskip("libp2p")

from libp2p.network.stream.exceptions import StreamEOF, StreamReset  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402

ECHO = "/test/echo/1.0.0"  # echoes until the peer's end, then closes
HOLD = "/test/hold/1.0.0"  # reads nothing until released, then reads all and reports it
RESET = "/test/reset/1.0.0"  # reads 5 bytes and resets
WAIT = "/test/wait/1.0.0"  # reads until the stream ends, and says how
PUSH = "/test/push/1.0.0"  # (the dialer's) what the host sends on a stream it opens
IDENTIFY = "/ipfs/id/1.0.0"
MIB = 1024 * 1024


class Handlers:
    """py-libp2p handlers of the test's protocols (on the libp2p thread), and what they saw."""

    def __init__(self) -> None:
        self.released = trio.Event()
        self.held: list[tuple[int, str]] = []  # (bytes read, their sha256) after release
        self.ends: list[str] = []  # how WAIT's streams ended

    def table(self) -> dict[str, Callable[[Any], Any]]:
        return {ECHO: self.echo, HOLD: self.hold, RESET: self.reset, WAIT: self.wait}

    async def echo(self, stream: Any) -> None:
        try:
            while True:
                await stream.write(await stream.read(65536))
        except StreamEOF:
            await stream.close()

    async def hold(self, stream: Any) -> None:
        await self.released.wait()
        digest, n = hashlib.sha256(), 0
        try:
            while True:
                data = await stream.read(65536)
                digest.update(data)
                n += len(data)
        except StreamEOF:
            self.held.append((n, digest.hexdigest()))
            await stream.close()

    async def reset(self, stream: Any) -> None:
        data = b""
        while len(data) < 5:
            data += await stream.read(5 - len(data))
        await stream.reset()

    async def wait(self, stream: Any) -> None:
        try:
            while True:
                await stream.read(65536)
        except StreamEOF:
            self.ends.append("eof")
        except StreamReset:
            self.ends.append("reset")


class Collect(asyncio.BufferedProtocol):
    """The dialer's end of a stream: what came, and how it ended."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.buf = bytearray(65536)
        self.eof = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, _transport: Any) -> None: ...

    def get_buffer(self, _hint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, n: int) -> None:
        self.data += self.buf[:n]

    def eof_received(self) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def connection_lost(self, exc: Any) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def until(check: Callable[[], bool]) -> None:
    """Wait (a look each loop turn, bounded against a hang only) until ``check()``."""
    async with asyncio.timeout(HANG):
        while not check():
            await asyncio.sleep(0.01)


def on_libp2p(node: Node, fn: Callable[..., Any], *args: Any) -> Any:
    """``await fn(*args)`` on the node's thread, awaited here."""
    return asyncio.wrap_future(node.submit(fn, *args))


@contextlib.asynccontextmanager
async def served(handlers: Handlers) -> AsyncIterator[Node]:
    """A host whose door hands `/noise` connections to this loop (an Echo exported)."""
    from tests.p2p.test_lane import Echo

    node = Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.1/tcp/0"], announce=False, warn=lambda m: None,
                handlers=handlers.table())
    await asyncio.get_running_loop().run_in_executor(None, node.start)
    exports = Exports()
    exports.set(Echo())
    node.serve_lane(exports.lane_acceptor(node.identity.private_key.seed, node.rest()))
    try:
        yield node
    finally:
        await on_libp2p(node, _release, handlers)
        exports.close_all()
        await asyncio.get_running_loop().run_in_executor(None, node.stop)


async def dial(node: Node, source: str = "127.0.0.1") -> lane.LaneConn:
    """A connection to ``node`` proposing ``/noise`` alone, from the local address
    ``source``; its ``me`` is the dialer's id."""
    seed = PrivateKey.generate().seed
    if source == "127.0.0.1":
        conn = await lane.dial(node.addrs[0], seed, timeout=HANG, lane=False)
    else:  # (lane.dial binds no source: its steps here, from another loopback address)
        family, host, port, peer, key = lane.endpoint(node.addrs[0])
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        conn = lane.LaneConn(sock, True)
        await conn.handshake(seed, key, timeout=HANG)
        conn.peer_id = peer
    conn.me = PrivateKey(seed).peer_id  # type: ignore[attr-defined]
    asked = conn.identify_asked = asyncio.Event()  # type: ignore[attr-defined]

    def identify(stream: lane.LaneStream) -> None:  # the host identifies every new peer
        stream.reset()
        asked.set()

    conn.handlers[IDENTIFY] = identify
    return conn


async def joined(node: Node, peer: str) -> None:
    """Until the host's swarm holds a connection to ``peer`` (it joins once its handshake
    is done, on the libp2p thread)."""
    async def holds() -> bool:
        return bool(node.host.get_network().get_connections(ID.from_base58(peer)))

    async with asyncio.timeout(HANG):
        while not await on_libp2p(node, holds):
            await asyncio.sleep(0.01)


async def opened(conn: lane.LaneConn, proto: str) -> tuple[lane.LaneStream, Collect]:
    stream = conn.open(proto)
    async with asyncio.timeout(HANG):
        await stream.negotiated
    collect = Collect()
    stream.connect(collect)
    return stream, collect


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(capnp.run(asyncio.wait_for(main(), 4 * HANG)))


def test_a_stream_of_a_py_libp2p_protocol_carries_megabytes_both_ways_and_ends_cleanly() -> None:
    """Echo 4 MiB through the bridge: every byte back in order, the dialer's end of stream
    reaches the handler and the handler's close reaches the dialer; the pair is let go."""
    data = bytes(range(256)) * (4 * MIB // 256)

    async def main() -> None:
        async with served(Handlers()) as node:
            conn = await dial(node)
            try:
                stream, got = await opened(conn, ECHO)
                stream.write(data)
                stream.write_eof()
                async with asyncio.timeout(HANG):
                    await got.eof
                assert bytes(got.data) == data
                await until(lambda: not node._bridges.pairs)
            finally:
                conn.close()

    run(main)


def test_the_host_opens_streams_to_the_peer_on_the_connection_the_peer_dialed() -> None:
    """The swarm knows the native connection: a stream the host's py-libp2p opens to the
    peer goes on it (the dialer listens nowhere: no other way to reach it), negotiated by
    py-libp2p on a raw native stream."""

    async def main() -> None:
        async with served(Handlers()) as node:
            conn = await dial(node)
            pushed: asyncio.Queue[Collect] = asyncio.Queue()

            def take(stream: lane.LaneStream) -> None:
                collect = Collect()
                stream.connect(collect)
                pushed.put_nowait(collect)

            conn.handlers[PUSH] = take
            try:
                async def push() -> None:
                    stream = await node.host.new_stream(ID.from_base58(conn.me), [PUSH])
                    await stream.write(b"from the host")
                    await stream.close()

                await joined(node, conn.me)
                await on_libp2p(node, push)
                got = await asyncio.wait_for(pushed.get(), HANG)
                async with asyncio.timeout(HANG):
                    await got.eof
                assert bytes(got.data) == b"from the host"
            finally:
                conn.close()

    run(main)


def test_a_reset_crosses_the_bridge_either_way() -> None:
    """The handler's reset reaches the dialer's stream (lost, no end of stream), and the
    dialer's reset reaches the handler (StreamReset, not an end of stream); an end of
    stream is told as one."""
    handlers = Handlers()

    async def main() -> None:
        async with served(handlers) as node:
            conn = await dial(node)
            try:
                stream, got = await opened(conn, RESET)
                stream.write(b"12345")
                async with asyncio.timeout(HANG):
                    await got.lost
                assert not got.eof.done()
                stream, got = await opened(conn, WAIT)
                stream.write(b"something")
                stream.reset()
                stream, got = await opened(conn, WAIT)
                stream.write(b"something")
                stream.write_eof()
                await until(lambda: len(handlers.ends) == 2)
                assert sorted(handlers.ends) == ["eof", "reset"]
                await until(lambda: not node._bridges.pairs)
            finally:
                conn.close()

    run(main)


def test_a_handler_that_does_not_read_holds_back_the_peer() -> None:
    """A py-libp2p handler that reads nothing: the bridge stops reading the native stream
    once its socket pair is full, so no Yamux credit goes back and the peer's writes wait
    in the peer (here 16 MiB written: all but the window and the pair's buffers, under
    2 MiB, still the dialer's to send); released, the handler reads every byte in order."""
    handlers = Handlers()
    data = hashlib.sha256(b"seed").digest() * (16 * MIB // 32)

    async def main() -> None:
        async with served(handlers) as node:
            conn = await dial(node)
            try:
                stream, _got = await opened(conn, HOLD)
                stream.write(data)
                stream.write_eof()
                await until(lambda: len(node._bridges.pairs) == 1)
                (pair,) = node._bridges.pairs
                # the socket pair is full (the handler reads nothing), so the bridge has
                # stopped reading the native stream: the peer gets no more credit
                await until(lambda: pair.sock is not None and pair.sock.get_write_buffer_size()
                            > pair.sock.get_write_buffer_limits()[1])
                unsent = stream.get_write_buffer_size()
                assert unsent >= len(data) - 2 * MIB, unsent
                await on_libp2p(node, _release, handlers)
                await until(lambda: bool(handlers.held))
                assert handlers.held == [(len(data), hashlib.sha256(data).hexdigest())]
            finally:
                conn.close()

    run(main)


async def _release(handlers: Handlers) -> None:
    handlers.released.set()


def test_streams_past_the_bridges_bound_are_reset(monkeypatch) -> None:
    """At most MAX_BRIDGED streams are bridged at once (each two descriptors): those past
    it are reset unanswered, and counted."""
    monkeypatch.setattr(hybrid, "MAX_BRIDGED", 3)

    async def main() -> None:
        async with served(Handlers()) as node:
            conn = await dial(node)
            try:
                async with asyncio.timeout(HANG):  # (the host's identify holds a place)
                    await conn.identify_asked.wait()
                await until(lambda: not node._bridges.pairs)
                streams = [conn.open(HOLD) for _ in range(5)]
                async with asyncio.timeout(HANG):
                    results = await asyncio.gather(*(s.negotiated for s in streams),
                                                   return_exceptions=True)
                assert sum(r == HOLD for r in results) == 3, results
                assert sum(isinstance(r, ConnectionError) for r in results) == 2, results
                assert node._bridges.refused == 2
            finally:
                conn.close()

    run(main)


def test_an_address_holding_every_bridged_place_gives_one_up_to_a_newcomer(
        monkeypatch) -> None:
    """All MAX_BRIDGED places taken by one address (127.0.0.2's streams of a protocol whose
    handler never ends): a stream from another address (127.0.0.3) takes the place of the
    oldest of them (reset) and is served; a further stream of the address holding them all
    is reset instead (it would hold no fewer than the others).  Before, the newcomer was
    reset: 6 addresses filled the 1024 places and shut every other peer's Bitswap and
    identify out (found by attack)."""
    monkeypatch.setattr(hybrid, "MAX_BRIDGED", 4)

    async def main() -> None:
        async with served(Handlers()) as node:
            hog = await dial(node, "127.0.0.2")
            newcomer = await dial(node, "127.0.0.3")
            try:
                for conn in (hog, newcomer):  # (the host's identify holds a place a while)
                    async with asyncio.timeout(HANG):
                        await conn.identify_asked.wait()
                await until(lambda: not node._bridges.pairs)
                held = [await opened(hog, HOLD) for _ in range(4)]
                stream, got = await opened(newcomer, ECHO)
                async with asyncio.timeout(HANG):
                    await held[0][1].lost  # the oldest gave its place
                stream.write(b"served")  # (echoed; the stream stays open, its place held)
                await until(lambda: bytes(got.data) == b"served")
                assert not any(h[1].lost.done() for h in held[1:])
                one_more = hog.open(HOLD)
                with pytest.raises(ConnectionError):
                    async with asyncio.timeout(HANG):
                        await one_more.negotiated
                assert (node._bridges.evicted, node._bridges.refused) == (1, 1)
            finally:
                hog.close()
                newcomer.close()

    run(main)


def test_the_connection_leaves_the_swarm_and_admission_when_it_ends() -> None:
    """The dialer closes: the swarm lets the connection go, admission forgets its address,
    and every bridged stream goes with it."""

    async def main() -> None:
        async with served(Handlers()) as node:
            conn = await dial(node)
            await joined(node, conn.me)
            await opened(conn, HOLD)
            await until(lambda: len(node._bridges.pairs) == 1)
            conn.close()

            async def gone() -> bool:
                network = node.host.get_network()
                return (not network.get_connections(ID.from_base58(conn.me))
                        and not any(isinstance(c, hybrid.BridgedConn)
                                    for c in network.admission.ip_of))

            async with asyncio.timeout(HANG):
                while not await on_libp2p(node, gone):
                    await asyncio.sleep(0.01)
            await until(lambda: not node._bridges.pairs)

    run(main)


def test_a_stream_bridged_when_no_descriptor_is_left_is_reset_and_holds_nothing() -> None:
    """The process is out of file descriptors (EMFILE: many peers' streams, a low soft
    limit) when a stream is to be bridged: it is reset and counted as refused, and holds no
    place of MAX_BRIDGED (it held one for good, and its native stream stayed open,
    unanswered); once descriptors are free again streams are bridged as before."""
    import os
    import resource

    async def main() -> None:
        async with served(Handlers()) as node:
            conn = await dial(node)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            filler: list[int] = []
            try:
                async with asyncio.timeout(HANG):  # (the host's identify holds a place)
                    await conn.identify_asked.wait()
                await until(lambda: not node._bridges.pairs)
                highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
                resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
                with contextlib.suppress(OSError):
                    while True:  # every descriptor taken
                        filler.append(os.open(os.devnull, os.O_RDONLY))
                starved = conn.open(ECHO)
                await until(lambda: bool(node._bridges.refused or node._bridges.pairs))
                for fd in filler:
                    os.close(fd)
                filler.clear()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                assert not node._bridges.pairs
                assert node._bridges.refused == 1
                async with asyncio.timeout(HANG):
                    with pytest.raises(ConnectionError):
                        await starved.negotiated
                stream, got = await opened(conn, ECHO)
                stream.write(b"again")
                stream.write_eof()
                async with asyncio.timeout(HANG):
                    await got.eof
                assert bytes(got.data) == b"again"
                await until(lambda: not node._bridges.pairs)
            finally:
                for fd in filler:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                conn.close()

    run(main)


@pytest.mark.parametrize("soft, hard, places, raised", [
    (1024, 1024, (1024 - hybrid.FD_RESERVE) // 2, 1024),  # a common default: 256 places
    (1024, 4096, hybrid.MAX_BRIDGED, 4096),  # the soft limit raised: every place
    (600, 600, (600 - hybrid.FD_RESERVE) // 2, 600)])
def test_the_bridged_places_fit_the_descriptors_the_process_may_open(
        soft, hard, places, raised) -> None:
    """Two descriptors a bridged stream: the places are what the soft limit of open files
    leaves beside FD_RESERVE, once that limit is raised as far as the hard one allows.
    Before, 1024 places (2048 descriptors) under a soft limit of 1024: 3 connections
    holding 497 streams made every accept of the host fail (found by attack).  (In a child
    process: a hard limit lowered cannot be raised again.)"""
    import subprocess
    import sys

    code = ("import resource\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
            "from ww.p2p import hybrid\n"
            "print(hybrid.descriptors(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=HANG, check=True).stdout.split()
    assert [int(n) for n in out] == [places, raised]
