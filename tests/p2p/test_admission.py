"""How many connections, and streams, remote peers can make a `ww run` host hold.

Real hosts (`ww run --with-p2p --listen` on 127.0.0.1, a cell exporting a `Service`), real
TCP sockets that never start their handshake, and real libp2p connections of as many peer
ids as a test likes (:mod:`tests.p2p.sybils`: a new key each).  The outcome checked is the
host's own (its open file descriptors, what it refuses) and that a well-behaved peer is
still served.
"""

from __future__ import annotations

import os
import selectors
import socket
import time

import pytest
import trio

from tests.conftest import HANG
from tests.p2p.conftest import ww_call
from tests.p2p.sybils import connect, filling
from ww.p2p.admission import (
    MAX_HANDSHAKES,
    MAX_INBOUND,
    MAX_NEGOTIATING,
    MAX_PER_IP,
    MAX_PER_LOOPBACK,
    MAX_STREAMS_PER_CONN,
)

pytest.importorskip("libp2p")

FD_SLACK = 16  # the host's own other descriptors may come and go (a log, a pipe)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _port(addr: str) -> int:
    return int(addr.split("/tcp/")[1].split("/")[0])


def _call(node, addr: str, word: str) -> str:
    """``echo word`` through ``node``'s py-libp2p host (not the native lane, which `ww call`
    dials: the connection whose admission these tests check is py-libp2p's, kept by
    ``node`` between calls)."""
    import asyncio

    from ww.core.bridge import run_capnp
    from ww.p2p.protocol import Dialer
    from ww.schema import load

    async def call() -> str:
        dialer = Dialer(node, lane=False)
        try:
            service = (await dialer.dial(addr)).cast_as(load("cell").Service)
            return str((await service.call("echo", [word])).result)
        finally:
            dialer.close_all()

    return run_capnp(asyncio.wait_for(call(), HANG))


@pytest.fixture
def peer():
    """A well-behaved libp2p node of our own, as `ww call` makes one."""
    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node

    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[], serve_ww=False,
                announce=False, warn=lambda message: None)
    node.start()
    yield node
    node.stop()


def test_connections_that_never_start_their_handshake_are_bounded(exporter) -> None:
    """300 TCP connections that send nothing: the old host accepted 250 of them, a socket
    and a task each, and held them 10 s (then the next 250...).  Now at most
    MAX_HANDSHAKES are held at a time (the rest are closed as they are accepted), and once
    they are gone a well-behaved caller is served."""
    host = exporter()
    pid = host.proc.pid
    before = peak = _fds(pid)
    socks = [socket.create_connection(("127.0.0.1", _port(host.addr)), timeout=HANG)
             for _ in range(300)]
    try:
        with selectors.DefaultSelector() as waiting:
            for sock in socks:
                waiting.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + HANG
            while waiting.get_map() and time.monotonic() < deadline:
                peak = max(peak, _fds(pid))
                for key, _ in waiting.select(timeout=0.2):  # ready: the host hung up
                    waiting.unregister(key.fileobj)
            assert not waiting.get_map(), "the host kept connections that never spoke"
    finally:
        for sock in socks:
            sock.close()
    assert peak <= before + MAX_HANDSHAKES + FD_SLACK, (before, peak)
    r = ww_call(host.addr, "echo", "still", "here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr


def test_connections_that_came_and_went_do_not_shut_the_door(exporter) -> None:
    """260 peer ids connect and hang up, 4 at a time: py-libp2p 0.8.1 gave an inbound slot
    back only when the host stopped, so after 250 such connections over its life it refused
    every peer.  Now each slot is given back with its connection."""
    host = exporter()

    async def come_and_go() -> None:
        conn = await connect(host.addr, nursery)
        await conn.close()

    async def main() -> None:
        nonlocal nursery
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                for _ in range(65):
                    async with trio.open_nursery() as batch:
                        for _ in range(4):
                            batch.start_soon(come_and_go)
            nursery.cancel_scope.cancel()

    nursery: trio.Nursery
    trio.run(main)
    r = ww_call(host.addr, "echo", "still", "here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr


def test_peer_ids_past_the_cap_are_refused_and_a_connection_there_keeps_working(
        exporter, peer) -> None:
    """A well-behaved peer connects (from 127.0.0.1) and calls; then new peer ids connect
    until 20 past MAX_INBOUND, and hold on: 127.0.0.1 up to its MAX_PER_LOOPBACK, the rest
    from 127.0.0.2, ... MAX_PER_IP each; the 21 past the cap from 127.0.0.1, 127.0.0.2 and
    127.0.0.3, each at its own bound (so none takes another's place).  The old host took all of
    them (each some 0.06 MiB, more with streams; 250, then 300 in all).  Now the newcomers
    past the cap are refused at accept, the ones in keep their connections, and the first
    peer's connection still serves it."""
    host = exporter()
    assert _call(peer, host.addr, "before") == "before"
    sources = filling(MAX_INBOUND - 1, taken=1) + ["127.0.0.1", "127.0.0.2", "127.0.0.3"] * 7

    async def main() -> tuple[int, int, int, str]:
        held, refused = [], 0
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                for source in sources:
                    try:
                        held.append(await connect(host.addr, nursery, source=source))
                    except Exception:
                        refused += 1
            answer = await trio.to_thread.run_sync(_call, peer, host.addr, "after")
            alive = sum(not conn.event_shutting_down.is_set() for conn in held)
            nursery.cancel_scope.cancel()
        return len(held), refused, alive, answer

    held, refused, alive, answer = trio.run(main)
    assert (held, refused) == (MAX_INBOUND - 1, 21)  # the first peer holds one place
    assert alive == held
    assert answer == "after"


@pytest.mark.parametrize("source, bound", [("127.0.0.2", MAX_PER_IP),
                                           ("127.0.0.1", MAX_PER_LOOPBACK)])
def test_connections_from_one_address_are_bounded(exporter, source, bound) -> None:
    """MAX_PER_IP + 2 peer ids from 127.0.0.2: the last two are refused, and a peer from
    another address (127.0.0.3) is still let in.  Likewise MAX_PER_LOOPBACK + 2 from
    127.0.0.1 (a local process, or remote peers through a local proxy): before, 127.0.0.1
    was not counted, and took every one, up to all MAX_INBOUND places."""
    host = exporter()

    async def main() -> tuple[int, int, bool]:
        held, refused = 0, 0
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                for _ in range(bound + 2):
                    try:
                        await connect(host.addr, nursery, source=source)
                        held += 1
                    except Exception:
                        refused += 1
                other = await connect(host.addr, nursery, source="127.0.0.3")
            nursery.cancel_scope.cancel()
        return held, refused, other.is_established

    assert trio.run(main) == (bound, 2, True)


def test_streams_that_never_name_a_protocol_are_bounded_per_connection(exporter) -> None:
    """One connection opens MAX_NEGOTIATING + 36 streams and never names a protocol.
    py-libp2p's Yamux sets no limit: the old host negotiated every one until its 10 s
    timeout, so the first streams to end were the first opened.  Now the streams past the
    cap are reset as they arrive, while the others are still within their 10 s: the first
    36 to end are the newest."""
    host = exporter()
    extra = 36

    async def main() -> list[int]:
        ended: list[int] = []
        all_ended = trio.Event()
        total = MAX_NEGOTIATING + extra

        async def watch(i: int, stream) -> None:
            try:
                while await stream.read(4096):
                    pass
            except Exception:
                pass
            ended.append(i)
            if len(ended) == total:
                all_ended.set()

        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                conn = await connect(host.addr, nursery)
                for i in range(total):
                    nursery.start_soon(watch, i, await conn.open_stream())
                await all_ended.wait()  # the host's negotiation timeout ends the others
            nursery.cancel_scope.cancel()
        return ended

    ended = trio.run(main)
    assert sorted(ended[:extra]) == list(range(MAX_NEGOTIATING,
                                               MAX_NEGOTIATING + extra)), ended


def test_a_peer_that_sends_past_its_receive_window_is_cut_off(exporter) -> None:
    """A peer negotiates identify (whose handler answers and returns, never to read the
    stream again), then ignores the Yamux receive window and sends 64 MiB.  py-libp2p 0.8.1
    only logged a warning and buffered it all, for as long as the connection stayed (found
    by attack: 200 MiB sent, the host's memory grew by 200 MiB).  Now the host closes the
    connection once the window is exceeded, and a well-behaved caller is still served."""
    from libp2p.protocol_muxer.multiselect_client import MultiselectClient
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    host = exporter()

    async def main() -> int:
        sent = 0
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                conn = await connect(host.addr, nursery)
                stream = await conn.open_stream()
                await MultiselectClient().select_one_of(["/ipfs/id/1.0.0"],
                                                        MultiselectCommunicator(stream))
                stream.send_window = 1 << 40  # the attacker's own side: no window
                chunk = b"x" * (1 << 20)
                try:
                    while sent < 64 << 20:
                        await stream.write(chunk)
                        sent += len(chunk)
                except Exception:
                    pass
            nursery.cancel_scope.cancel()
        return sent

    assert trio.run(main) < 64 << 20  # the host hung up before taking it all
    r = ww_call(host.addr, "echo", "still", "here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr


def test_streams_left_open_after_their_answer_are_bounded_and_reset(exporter) -> None:
    """One connection opens MAX_STREAMS_PER_CONN + 44 identify streams, reads each answer
    and never closes its side.  py-libp2p keeps such a stream (and what the peer sends on
    it, up to its window) until the peer closes it, and the host counted a stream only
    while its handler ran: found by attack, 600 of them with 200 KB each made the host hold
    600 streams and 129 MiB more.  Now a stream stays counted until the peer closes its
    side, at most STREAM_LINGER seconds after its handler returned, and is then reset:
    every one of these streams ends reset."""
    from libp2p.protocol_muxer.multiselect_client import MultiselectClient
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    host = exporter()
    total = MAX_STREAMS_PER_CONN + 44

    async def main() -> int:
        reset = 0

        async def one(conn) -> None:
            nonlocal reset
            stream = await conn.open_stream()
            try:
                await MultiselectClient().select_one_of(["/ipfs/id/1.0.0"],
                                                        MultiselectCommunicator(stream))
            except Exception:  # reset as it arrived: over the bound
                reset += 1
                return
            while not stream.reset_received:  # bounded by fail_after below
                await trio.sleep(0.05)
            reset += 1

        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                conn = await connect(host.addr, nursery)
                conn.stream_backlog_semaphore = trio.Semaphore(total)  # our side's cap
                async with trio.open_nursery() as streams:
                    for _ in range(total):
                        streams.start_soon(one, conn)
            nursery.cancel_scope.cancel()
        return reset

    assert trio.run(main) == total
    r = ww_call(host.addr, "echo", "still", "here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr


def test_connections_from_ipv6_loopback_are_bounded_as_127_0_0_1s(start_host,
                                                                   cell_file) -> None:
    """::1 is one address held to MAX_PER_LOOPBACK, as 127.0.0.1 is (a host listening on
    both stacks, `::`): MAX_PER_LOOPBACK + 2 peer ids from ::1, the last two refused, and a
    peer from 127.0.0.3 (IPv4, as ::ffff:127.0.0.3 on that socket) still let in."""
    from tests.p2p.conftest import EXPORTER

    host = start_host("b", "--with-p2p", "--listen", "/ip6/::/tcp/0",
                      cell_file(EXPORTER, "exporter.py"))
    port, peer = host.addr.split("/tcp/")[1].split("/p2p/")
    ip6, ip4 = f"/ip6/::1/tcp/{port}/p2p/{peer}", f"/ip4/127.0.0.3/tcp/{port}/p2p/{peer}"

    async def main() -> tuple[int, int, bool]:
        held, refused = 0, 0
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                for _ in range(MAX_PER_LOOPBACK + 2):
                    try:
                        await connect(ip6, nursery, source="::1")
                        held += 1
                    except Exception:
                        refused += 1
                other = await connect(ip4, nursery, source="127.0.0.3")
            nursery.cancel_scope.cancel()
        return held, refused, other.is_established

    assert trio.run(main) == (MAX_PER_LOOPBACK, 2, True)
