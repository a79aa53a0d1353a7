"""The door to the native lane: inbound connections whose first bytes propose the lane
(:data:`ww.p2p.admission.LANE_PROPOSAL`) are handed to a lane acceptor
(:meth:`ww.p2p.host.Node.serve_lane`), every other connection goes to py-libp2p as before,
and the lane's connections are held to admission's bounds.

Real hosts (:class:`ww.p2p.host.Node` in this process, so that the bounds can be made small
and the counts looked at), real TCP sockets from loopback addresses (127.0.0.2, 127.0.0.3:
each counted as a remote address; 127.0.0.1 too, under its larger bounds), real py-libp2p
dialers.  The lane
acceptor is :class:`StandInLane`, a stand-in for the C lane (``ww.p2p._native``'s
responder, wired to the door elsewhere): an asyncio loop on its own thread that reads the
proposal, answers it and echoes what follows.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import HANG
from ww.core.identity import Identity, PrivateKey
from ww.p2p import admission
from ww.p2p.admission import LANE_PROPOSAL
from ww.p2p.host import Node

pytest.importorskip("libp2p")

HEADER = b"\x13/multistream/1.0.0\n"
NOISE = b"\x07/noise\n"
NA = b"\x03na\n"


class LaneConn:
    """One connection the stand-in took: what it saw, and what happened to it."""

    def __init__(self, sock: socket.socket, ip: str, ticket: admission.LaneTicket) -> None:
        self.sock, self.ip, self.ticket = sock, ip, ticket
        self.inode = os.fstat(sock.fileno()).st_ino
        self.first = b""  # the bytes it read first
        self.answered = threading.Event()  # it answered the proposal
        self.cut = threading.Event()  # admission called its on_close callback
        self.gone = threading.Event()  # it closed its socket and said ended()
        self.task: asyncio.Task[None] | None = None


class StandInLane:
    """A stand-in for the C lane's responder (named as such: the real one is wired to the
    door by another module): the acceptor hands each socket to an asyncio loop on a thread
    of its own, which reads the proposal, answers it (as the lane does: the same two lines),
    says ``handshaken()`` (unless told not to) and echoes until the peer or admission ends
    the connection; then it closes its socket and says ``ended()``."""

    def __init__(self, handshake: bool = True, fail: bool = False) -> None:
        self.handshake, self.fail = handshake, fail
        self.calls = 0
        self.conns: queue.Queue[LaneConn] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def accept(self, sock: socket.socket, ip: str, ticket: admission.LaneTicket) -> None:
        self.calls += 1  # (the libp2p thread)
        if self.fail:
            raise RuntimeError("the stand-in refuses")
        conn = LaneConn(sock, ip, ticket)
        ticket.on_close(lambda: self._cut(conn))
        self.loop.call_soon_threadsafe(self._start, conn)
        self.conns.put(conn)

    def next(self) -> LaneConn:
        return self.conns.get(timeout=HANG)

    def _cut(self, conn: LaneConn) -> None:
        conn.cut.set()
        self.loop.call_soon_threadsafe(lambda: conn.task and conn.task.cancel())

    def _start(self, conn: LaneConn) -> None:
        conn.task = self.loop.create_task(self._serve(conn))

    async def _serve(self, conn: LaneConn) -> None:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn.sock)
            conn.first = await reader.readexactly(len(LANE_PROPOSAL))
            writer.write(LANE_PROPOSAL)
            await writer.drain()
            if self.handshake:
                conn.ticket.handshaken()
            conn.answered.set()
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except (asyncio.CancelledError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.sock.close()
            conn.ticket.ended()
            conn.gone.set()

    def stop(self) -> None:
        async def finish() -> None:  # every connection's task ends: its socket closed
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(HANG)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(HANG)
        self.loop.close()


@pytest.fixture
def start() -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(serve_ww: bool = True) -> Node:
        node = Node(
            Identity.from_private_key(PrivateKey.generate()),
            listen=["/ip4/127.0.0.1/tcp/0"],
            serve_ww=serve_ww,
            announce=False,
            warn=lambda message: None,
        )
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def lanes() -> Iterator[Callable[..., StandInLane]]:
    made: list[StandInLane] = []

    def make(**kwargs: Any) -> StandInLane:
        made.append(StandInLane(**kwargs))
        return made[-1]

    yield make
    for lane in made:
        lane.stop()


def _client(node: Node, source: str = "127.0.0.1") -> socket.socket:
    port = int(node.addrs[0].split("/tcp/")[1].split("/")[0])
    return socket.create_connection(("127.0.0.1", port), timeout=HANG, source_address=(source, 0))


def _read(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes, or fewer if the connection ends first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _hung_up(sock: socket.socket) -> bool:
    """The host closed the connection (end of stream, or reset) without sending anything."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _counts(node: Node) -> dict[str, Any]:
    async def look() -> dict[str, Any]:
        a = node.host.get_network().admission
        return {
            "handshakes": a.handshakes,
            "inbound": a.inbound,
            "per_ip": dict(a.per_ip),
            "held": {ip: len(c) for ip, c in a.held.items()},
            "refused": dict(a.refused),
            "lane_in": a.lane_in,
        }

    return node.submit(look).result(HANG)


def _until(node: Node, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The host's counts once ``check`` holds for them (they change as its thread works)."""
    deadline = time.monotonic() + HANG
    while not check(counts := _counts(node)):
        assert time.monotonic() < deadline, counts
        time.sleep(0.02)
    return counts


def _socket_open(inode: int) -> bool:
    """Some descriptor of this process still holds the socket ``inode``."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:  # closed meanwhile
            pass
    return False


def test_a_lane_proposal_reaches_the_acceptor_unread_and_the_lane_owns_the_socket(
    start, lanes
) -> None:
    """A raw client sends LANE_PROPOSAL in one send: the acceptor gets a socket with those
    bytes unread, answers on it, and the connection works past the listener's own handler's
    hand-over (echo); when the lane ends, the connection closes (the client reads its end:
    no descriptor of the host holds it) and its place is given back."""
    node = start()
    lane = lanes()
    node.serve_lane(lane.accept)
    with _client(node) as client:
        client.sendall(LANE_PROPOSAL)
        conn = lane.next()
        assert conn.answered.wait(HANG)
        assert conn.first == LANE_PROPOSAL
        assert conn.ip == "127.0.0.1"
        assert _read(client, len(LANE_PROPOSAL)) == LANE_PROPOSAL
        counts = _until(node, lambda c: c["handshakes"] == 0)
        assert (counts["inbound"], counts["lane_in"]) == (1, 1)
        for word in (b"one", b"two"):  # the handler holds on; the lane's socket is its own
            client.sendall(word)
            assert _read(client, len(word)) == word
        assert _socket_open(conn.inode)
        client.shutdown(socket.SHUT_WR)
        assert conn.gone.wait(HANG)
        assert _read(client, 1) == b""  # closed: the lane's socket and the host's copy
        assert not _socket_open(conn.inode)
    assert not conn.cut.is_set()
    _until(node, lambda c: c["inbound"] == 0 and c["handshakes"] == 0)


def test_a_go_libp2p_dialer_goes_to_the_lane_and_a_py_libp2p_one_does_not(start,
                                                                         lanes) -> None:
    """With a lane acceptor set (the cell exports): a raw client sending multistream's
    header alone and waiting for ours (py-libp2p 0.8.1's own way: a prefix of the
    proposals, so it waits PROPOSAL_WAIT and then reaches py-libp2p) is not diverted; a raw
    client sending the header and `/noise` at once (go-libp2p's and js-libp2p's way, and
    ww's own py-libp2p dialer's: ww.p2p.host._propose_with_the_header) is handed to the
    acceptor (the native connection, which hands its other protocols back to py-libp2p:
    ww.p2p.hybrid)."""
    node = start()
    lane = lanes()
    node.serve_lane(lane.accept)
    with _client(node) as client:
        client.sendall(HEADER)
        assert _read(client, len(HEADER)) == HEADER
        client.sendall(NOISE)
        assert _read(client, len(NOISE)) == NOISE
    assert lane.calls == 0
    assert _counts(node)["lane_in"] == 0
    with _client(node) as client:
        client.sendall(HEADER + NOISE)
        _until(node, lambda c: c["lane_in"] == 1)
    assert lane.calls == 1


def test_without_a_lane_acceptor_py_libp2p_answers_na(start, lanes) -> None:
    """The lane proposal to a host with no lane acceptor (none set, set and taken back, or a
    host without `/ww/0.1.0`) is py-libp2p's: it answers the header and `na`, so a lane
    dialer goes on with `/noise`."""
    lane = lanes()
    plain = start()
    taken_back = start()
    taken_back.serve_lane(lane.accept)
    taken_back.serve_lane(None)
    no_ww = start(serve_ww=False)
    no_ww.serve_lane(lane.accept)
    for node in (plain, taken_back, no_ww):
        with _client(node) as client:
            client.sendall(LANE_PROPOSAL)
            assert _read(client, len(HEADER + NA)) == HEADER + NA
            client.sendall(NOISE)
            assert _read(client, len(NOISE)) == NOISE
    assert lane.calls == 0


def test_lane_connections_count_against_the_per_address_bound(start, lanes, monkeypatch) -> None:
    """MAX_PER_IP made 2: two lane connections from 127.0.0.2 hold its places, a third is
    refused at accept (never reaches the acceptor), 127.0.0.3 is let in; once one lane
    connection has ended, 127.0.0.2 gets a place again."""
    monkeypatch.setattr(admission, "MAX_PER_IP", 2, raising=False)
    node = start()
    lane = lanes()
    node.serve_lane(lane.accept)
    first, second = _client(node, "127.0.0.2"), _client(node, "127.0.0.2")
    try:
        for client in (first, second):
            client.sendall(LANE_PROPOSAL)
            assert lane.next().answered.wait(HANG)
        assert _until(node, lambda c: c["handshakes"] == 0)["held"] == {"127.0.0.2": 2}
        with _client(node, "127.0.0.2") as third:
            assert _hung_up(third)
        assert _counts(node)["refused"] == {"per_ip": 1}
        with _client(node, "127.0.0.3") as other:
            other.sendall(LANE_PROPOSAL)
            assert lane.next().ip == "127.0.0.3"
            assert _read(other, len(LANE_PROPOSAL)) == LANE_PROPOSAL
        first.close()
        _until(node, lambda c: c["per_ip"] == {"127.0.0.2": 1})
        with _client(node, "127.0.0.2") as again:
            again.sendall(LANE_PROPOSAL)
            assert lane.next().ip == "127.0.0.2"
            assert _read(again, len(LANE_PROPOSAL)) == LANE_PROPOSAL
        assert lane.calls == 4
    finally:
        first.close()
        second.close()


def test_lane_connections_in_their_handshake_are_bounded(start, lanes, monkeypatch) -> None:
    """MAX_HANDSHAKES made 2, a lane that has not said handshaken(): two lane connections
    are in their handshake, a third is refused; once one says handshaken(), a new one
    fits."""
    monkeypatch.setattr(admission, "MAX_HANDSHAKES", 2, raising=False)
    monkeypatch.setattr(admission, "HANDSHAKE_TIMEOUT", 10 * HANG, raising=False)
    node = start()
    lane = lanes(handshake=False)
    node.serve_lane(lane.accept)
    clients = [_client(node, "127.0.0.2") for _ in range(2)]
    try:
        conns = []
        for client in clients:
            client.sendall(LANE_PROPOSAL)
            conns.append(lane.next())
        assert _counts(node)["handshakes"] == 2
        with _client(node, "127.0.0.3") as third:
            assert _hung_up(third)
        assert _counts(node)["refused"] == {"handshakes": 1}
        conns[0].ticket.handshaken()
        _until(node, lambda c: c["handshakes"] == 1)
        clients.append(_client(node, "127.0.0.3"))
        clients[-1].sendall(LANE_PROPOSAL)
        assert lane.next().ip == "127.0.0.3"
    finally:
        for client in clients:
            client.close()


def test_a_lane_that_never_finishes_its_handshake_is_cut(start, lanes, monkeypatch) -> None:
    """HANDSHAKE_TIMEOUT made 0.5 s, a lane that never says handshaken(): admission calls
    its on_close callback and shuts the connection down (the client reads its end), counts
    a failed handshake, and gives the place back once the lane has ended."""
    monkeypatch.setattr(admission, "HANDSHAKE_TIMEOUT", 0.5, raising=False)
    node = start()
    lane = lanes(handshake=False)
    node.serve_lane(lane.accept)
    with _client(node, "127.0.0.2") as client:
        client.sendall(LANE_PROPOSAL)
        conn = lane.next()
        assert conn.cut.wait(HANG)
        assert _read(client, len(LANE_PROPOSAL) + 1) == LANE_PROPOSAL  # answered, then cut
        assert conn.gone.wait(HANG)
    counts = _until(node, lambda c: c["inbound"] == 0)
    assert (counts["handshakes"], counts["per_ip"]) == (0, {})
    assert counts["refused"] == {"handshake_failed": 1}


@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.1"])
def test_a_lane_connection_gives_its_place_to_a_newcomer(
    start, lanes, monkeypatch, source
) -> None:
    """MAX_INBOUND made 2, MAX_PER_IP and MAX_PER_LOOPBACK 3: 127.0.0.2 holds both places with
    lane connections, the older one with a stream open (ticket.streams), the newer idle.  A
    lane connection from 127.0.0.3 takes the idle one's place: admission calls that one's
    on_close callback (the busy one is kept), and the newcomer reaches the acceptor.  Likewise
    when 127.0.0.1 holds them (before, it never gave a place up: the newcomer was refused)."""
    monkeypatch.setattr(admission, "MAX_INBOUND", 2, raising=False)
    monkeypatch.setattr(admission, "MAX_PER_IP", 3, raising=False)
    monkeypatch.setattr(admission, "MAX_PER_LOOPBACK", 3, raising=False)
    monkeypatch.setattr(admission, "EVICT_GRACE", 0.0, raising=False)
    node = start()
    lane = lanes()
    node.serve_lane(lane.accept)
    clients: list[socket.socket] = []
    try:
        conns = []
        for _ in range(2):  # one after the other: the order of their set-up is known
            clients.append(_client(node, source))
            clients[-1].sendall(LANE_PROPOSAL)
            conns.append(lane.next())
            assert conns[-1].answered.wait(HANG)
            _until(node, lambda c: c["handshakes"] == 0)
        conns[0].ticket.streams = 1
        clients.append(_client(node, "127.0.0.3"))
        clients[-1].sendall(LANE_PROPOSAL)
        assert _read(clients[-1], len(LANE_PROPOSAL)) == LANE_PROPOSAL  # (b"": refused)
        newcomer = lane.next()
        assert newcomer.ip == "127.0.0.3"
        assert conns[1].cut.wait(HANG) and conns[1].gone.wait(HANG)
        assert _read(clients[1], len(LANE_PROPOSAL) + 1) == LANE_PROPOSAL  # then its end
        assert not conns[0].cut.is_set()
        counts = _until(node, lambda c: c["handshakes"] == 0)
        assert counts["held"] == {source: 1, "127.0.0.3": 1}
        assert (counts["inbound"], counts["refused"]) == (2, {"evicted": 1})
    finally:
        for client in clients:
            client.close()


def test_an_acceptor_that_raises_leaves_nothing_held(start, lanes) -> None:
    """The acceptor raises: the connection is closed and its place given back."""
    node = start()
    lane = lanes(fail=True)
    node.serve_lane(lane.accept)
    with _client(node, "127.0.0.2") as client:
        client.sendall(LANE_PROPOSAL)
        assert _hung_up(client)
    counts = _until(node, lambda c: c["inbound"] == 0)
    assert (lane.calls, counts["refused"], counts["lane_in"]) == (1, {"lane_failed": 1}, 0)


def test_a_silent_connection_is_cut_at_the_handshake_timeout(start, lanes, monkeypatch) -> None:
    """With a lane acceptor set, a connection that sends nothing is peeked at until
    HANDSHAKE_TIMEOUT (made 0.5 s) and closed, counted as a failed handshake, as py-libp2p's
    handshake would be.  (What changes: py-libp2p wrote multistream's header at once, before
    the peer's; while a lane acceptor is set it writes it once the peer's first bytes have
    arrived, so this client reads nothing before the end.  Dialers speak first: py-libp2p's,
    go-libp2p's and the lane's.)"""
    monkeypatch.setattr(admission, "HANDSHAKE_TIMEOUT", 0.5, raising=False)
    node = start()
    lane = lanes()
    node.serve_lane(lane.accept)
    with _client(node, "127.0.0.2") as client:
        assert _read(client, 1) == b""
    counts = _until(node, lambda c: c["inbound"] == 0)
    assert (lane.calls, counts["refused"]) == (0, {"handshake_failed": 1})


def test_stopping_the_host_cuts_its_lane_connections(start, lanes) -> None:
    """The host stops: each lane connection's on_close callback is called."""
    node = start()
    lane = lanes()
    node.serve_lane(lane.accept)
    with _client(node) as client:
        client.sendall(LANE_PROPOSAL)
        conn = lane.next()
        assert conn.answered.wait(HANG)
        node.stop()
        assert conn.cut.wait(HANG) and conn.gone.wait(HANG)
