"""The native lane's asyncio side (:mod:`ww.p2p.lane`): dialing, serving, its bounds, and its
use by :class:`ww.p2p.protocol.Dialer`, :class:`ww.p2p.protocol.Exports` and `ww call`.

Real parts: the C connection of the extension at both ends over real TCP sockets on
127.0.0.1, real Cap'n Proto, a real `ww run --with-p2p` host (py-libp2p, which answers the
lane proposal ``na``: the dialer goes on with ``/noise``).  The lane listener here is the
test's own (it accepts the sockets itself); the host's admission, which hands lane
connections over in `ww run`, is stood in for by :class:`DoNothingTicket`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import capnp
import pytest

from tests.conftest import HANG
from tests.p2p.conftest import EXPORTER, LOOPBACK
from ww.core.addrs import PROTOCOL_ID
from ww.core.identity import PrivateKey
from ww.p2p import _native, lane
from ww.p2p.protocol import MAX_INBOUND_PER_PEER, Dialer, Exports, hold
from ww.schema import load

_cell = load("cell")


class DoNothingTicket:
    """A stand-in for the host admission's ticket (named as such: admission is the trio
    side's): records what the lane told it, and keeps the close callback it was given."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.close: Callable[[], None] | None = None
        self.streams = 0  # what the lane says the peer has open

    def handshaken(self) -> None:
        self.events.append("handshaken")

    def ended(self) -> None:
        self.events.append("ended")

    def on_close(self, callback: Callable[[], None]) -> None:
        self.close = callback


class Echo(_cell.Service.Server):  # type: ignore[name-defined,misc]
    async def call(self, method: str, args: Any, **kwargs: Any) -> str:
        return " ".join(args)


class Listener:
    """A lane listener of the test's own on 127.0.0.1: each accepted socket goes to
    ``accept(sock, ip, ticket)`` (an Exports' lane acceptor, or :func:`lane.serve` with an
    ``on_ww`` of the test's), with a :class:`DoNothingTicket`."""

    def __init__(self, accept: Callable[[bytes], Callable[[socket.socket, str, Any], Any]]) -> None:
        """``accept(seed)``: the acceptor for the listener's identity."""
        self.seed = PrivateKey.generate().seed
        self.peer_id = PrivateKey(self.seed).peer_id
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = f"/ip4/127.0.0.1/tcp/{self.sock.getsockname()[1]}/p2p/{self.peer_id}"
        self.tickets: list[DoNothingTicket] = []
        self._accept = accept(self.seed)
        self._task = asyncio.ensure_future(self._run())
        self._held: set[Any] = set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, (ip, _) = await loop.sock_accept(self.sock)
            ticket = DoNothingTicket()
            self.tickets.append(ticket)
            got = self._accept(sock, ip, ticket)
            if asyncio.iscoroutine(got):
                task = asyncio.ensure_future(got)
                self._held.add(task)
                task.add_done_callback(self._held.discard)

    def close(self) -> None:
        self._task.cancel()
        self.sock.close()


async def until(check: Callable[[], bool]) -> None:
    """Wait (each loop turn a look, bounded against a hang only) until ``check()``."""
    async with asyncio.timeout(HANG):
        while not check():
            await asyncio.sleep(0.01)


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(capnp.run(asyncio.wait_for(main(), HANG)))


class LaneOnlyNode:
    """What Dialer asks of a node, without py-libp2p (a stand-in, named as such): an
    identity, no dial policy; its py-libp2p path is the test's ``_open_py``."""

    def __init__(self) -> None:
        from ww.core.identity import Identity

        self.identity = Identity.from_private_key(PrivateKey.generate())
        self.peer_id = self.identity.peer_id
        self.dial_policy = None


class RecordingDialer(Dialer):
    """A Dialer whose py-libp2p path only records that it was taken."""

    def __init__(self) -> None:
        super().__init__(LaneOnlyNode())  # type: ignore[arg-type]
        self.py_dials: list[str] = []

    async def _open_py(self, addr: str) -> socket.socket:
        self.py_dials.append(addr)
        raise lane.P2PError("p2p: the py-libp2p path (not in this test)")


@contextlib.asynccontextmanager
async def exported_echo() -> AsyncIterator[tuple[Exports, Listener, RecordingDialer]]:
    """An Echo exported on a lane listener of the test's, and a Dialer; all closed after."""
    exports = Exports()
    exports.set(Echo())
    listener = Listener(exports.lane_acceptor)
    dialer = RecordingDialer()
    try:
        yield exports, listener, dialer
    finally:
        dialer.close_all()
        exports.close_all()
        listener.close()


def test_constants_agree_with_admission() -> None:
    """The lane repeats admission's numbers (admission imports py-libp2p; `ww call` must not)."""
    from ww.p2p import admission

    assert lane.HANDSHAKE_TIMEOUT == admission.HANDSHAKE_TIMEOUT
    assert lane.MAX_NEGOTIATING == admission.MAX_NEGOTIATING
    assert lane.STREAM_NEGOTIATE_TIMEOUT == admission.STREAM_NEGOTIATE_TIMEOUT
    assert lane.MAX_STREAMS <= admission.MAX_STREAMS_PER_CONN


def test_lane_calls_between_two_extension_ends() -> None:
    """A Dialer dials the lane (agreed at both ends), Exports serves the lane streams: calls
    go through, a second dial reuses the connection, and close_all ends it for the served
    side too (the ticket told it ended, after it was told handshaken)."""

    async def main() -> None:
        async with exported_echo() as (_, listener, dialer):
            addr = listener.addr
            service = (await dialer.dial(addr)).cast_as(_cell.Service)
            assert (await service.call("echo", ["over", "the", "lane"])).result == "over the lane"
            conn = dialer._lanes[addr].result()
            assert conn.lane and conn.peer_id == listener.peer_id
            again = (await dialer.dial(addr)).cast_as(_cell.Service)
            assert (await again.call("echo", ["again"])).result == "again"
            assert dialer._lanes[addr].result() is conn and len(listener.tickets) == 1
            assert dialer.py_dials == []
            dialer.close_all()
            assert conn.closed.done()
            await until(lambda: listener.tickets[0].events == ["handshaken", "ended"])

    run(main)


def test_a_lane_connection_the_peer_ends_frees_its_socket_at_once() -> None:
    """A kept lane connection that the remote host ends (its cell exited, it stopped) gives
    its socket back as the end is seen: it used to stay open, and in the Dialer, until the
    address was next dialed, dropped as the least recently dialed of MAX_DIALED, or
    close_all.  The next dial of the address makes a new connection."""

    async def main() -> None:
        async with exported_echo() as (exports, listener, dialer):
            addr = listener.addr
            service = (await dialer.dial(addr)).cast_as(_cell.Service)
            assert (await service.call("echo", ["one"])).result == "one"
            conn = dialer._lanes[addr].result()
            exports.close_all()  # the served side ends its /ww/0.1.0 connection ...
            listener.tickets[0].close()  # ... and admission closes the lane connection
            await conn.closed  # (the Dialer's callback was registered first: it has run)
            assert conn.sock.fileno() == -1
            assert addr not in dialer._lanes
            again = (await dialer.dial(addr)).cast_as(_cell.Service)
            assert (await again.call("echo", ["two"])).result == "two"
            assert dialer._lanes[addr].result() is not conn

    run(main)



def test_a_connection_the_peer_ended_says_so_when_dialed_on() -> None:
    """A dialed lane connection that the peer closes just after the handshake (a host
    refusing it then, as py-libp2p's resource manager did) is freed as the end is seen
    (the Dialer's ``_lane_ended``); the `/ww/0.1.0` stream the dial opens next failed as
    "cannot reach ... (connection closed)", which read as if this host had closed it."""

    async def main() -> None:
        listener, conn = await _served(lambda stream, peer: None)
        try:
            listener.tickets[0].close()  # admission cuts it, as a refusal would
            await conn.closed
            conn.close()  # (as the Dialer's _lane_ended does)
            with pytest.raises(lane.P2PError) as e:
                await conn.open_ww()
            assert str(e.value) == f"p2p: cannot reach {listener.addr} (closed by the peer)"
        finally:
            listener.close()

    run(main)

async def _served(on_ww: Callable[[Any, str], None]) -> tuple[Listener, lane.LaneConn]:
    """A listener serving with ``on_ww``, and a lane connection dialed to it."""

    def acceptor(seed: bytes) -> Callable[[socket.socket, str, Any], Any]:
        return lambda sock, ip, ticket: lane.serve(sock, seed, ip, ticket, on_ww)

    listener = Listener(acceptor)
    ours = PrivateKey.generate()
    conn = await lane.dial(listener.addr, ours.seed, timeout=HANG)
    conn.our_peer_id = ours.peer_id  # (what the listener should see)
    return listener, conn


def _silent_stream(conn: lane.LaneConn) -> lane.LaneStream:
    """A stream opened that never says a word of multistream-select."""
    sid = _native.Conn.open(conn)
    stream = conn.streams[sid] = lane.LaneStream(conn, sid, True)
    return stream


async def _refused(stream: lane.LaneStream) -> str:
    """How the peer ended ``stream``'s negotiation (it must)."""
    try:
        async with asyncio.timeout(HANG):
            await stream.negotiated
    except ConnectionError as e:
        return str(e)
    return "accepted"


def test_a_stream_that_does_not_negotiate_in_time_is_reset(monkeypatch) -> None:
    monkeypatch.setattr(lane, "STREAM_NEGOTIATE_TIMEOUT", 0.5)

    async def main() -> None:
        listener, conn = await _served(lambda stream, peer: None)
        try:
            assert await _refused(_silent_stream(conn)) == "stream reset"
            assert not conn.closed.done()  # the connection goes on
        finally:
            conn.close()
            listener.close()

    run(main)


def test_streams_past_the_negotiating_bound_are_reset_at_once() -> None:
    async def main() -> None:
        listener, conn = await _served(lambda stream, peer: None)
        try:
            waiting = [_silent_stream(conn) for _ in range(lane.MAX_NEGOTIATING)]
            assert await _refused(_silent_stream(conn)) == "stream reset"
            assert not any(s.negotiated.done() for s in waiting)  # (their 10 s run on)
            # one given up makes room: a ping negotiates on the same connection
            waiting[0].reset()
            conn.flush()  # (sent now, before the new stream's SYN, which is sent at once)
            assert await _ping(conn) == "echoed"
        finally:
            conn.close()
            listener.close()

    run(main)


async def _ping(conn: lane.LaneConn) -> str:
    stream = conn.open(lane.PING)
    outcome = await _refused(stream)
    if outcome != "accepted":
        return outcome
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    class Reader(asyncio.BufferedProtocol):
        buf = bytearray(64)
        data = bytearray()

        def connection_made(self, _t: Any) -> None: ...

        def get_buffer(self, _hint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, n: int) -> None:
            self.data += self.buf[:n]
            if len(self.data) >= 32 and not got.done():
                got.set_result(bytes(self.data))

        def eof_received(self) -> None: ...

        def connection_lost(self, _e: Any) -> None: ...

    stream.connect(Reader())
    ping = bytes(range(32))
    stream.write(ping)
    async with asyncio.timeout(HANG):
        echoed = await got
    return "echoed" if echoed == ping else f"wrong: {echoed!r}"


def test_inbound_streams_past_the_bound_are_reset_and_unknown_protocols_refused() -> None:
    """A handler that keeps every `/ww/0.1.0` stream: MAX_STREAMS open, the next is reset as
    it arrives; an unknown protocol gets na; ping on two streams at once, not three.

    The refusals on a connection of their own: conn.c lets a peer open 64 streams at once
    and 256 a second after that, so on one connection the 65th SYN was reset by that bucket
    whenever the 66 streams before it took less than 8 ms to open (an idle machine), and
    the test then failed; here the bounded connection opens MAX_STREAMS (64) first."""

    async def main() -> None:
        kept: list[Any] = []
        listener, conn = await _served(lambda stream, peer: kept.append((stream, peer)))
        try:
            assert await _refused(conn.open("/unknown/1.0.0")) == "refused: na"
            pings = [conn.open(lane.PING) for _ in range(2)]
            for p in pings:
                assert await _refused(p) == "accepted"
            assert await _refused(conn.open(lane.PING)) == "refused: na"
            conn.close()
            key = PrivateKey.generate()
            conn = await lane.dial(listener.addr, key.seed, timeout=HANG)
            pings = [conn.open(lane.PING) for _ in range(2)]
            for p in pings:
                assert await _refused(p) == "accepted"
            for _ in range(lane.MAX_STREAMS - 2):  # one by one: negotiating is bounded too
                assert await _refused(conn.open("/ww/0.1.0")) == "accepted"
            assert len(kept) == lane.MAX_STREAMS - 2
            assert {peer for _, peer in kept} == {key.peer_id}
            assert await _refused(conn.open("/ww/0.1.0")) == "stream reset"
            assert not conn.closed.done()
        finally:
            conn.close()
            listener.close()

    run(main)


def test_exports_per_peer_bound_holds_for_lane_streams() -> None:
    """One peer's lane connection opening more `/ww/0.1.0` streams than MAX_INBOUND_PER_PEER:
    the extra ones are closed by Exports, as spliced sockets are."""

    async def main() -> None:
        exports = Exports()
        exports.set(Echo())
        listener, conn = await _served(exports.serve_lane_stream)
        clients = []
        try:
            for _ in range(MAX_INBOUND_PER_PEER + 2):
                clients.append(capnp.TwoPartyClient(await conn.open_ww(HANG)))
            outcomes = []
            for client in clients:
                gateway = client.bootstrap().cast_as(_cell.Gateway)
                try:
                    service = hold((await gateway.service()).service).cast_as(_cell.Service)
                    outcomes.append((await service.call("echo", ["ok"])).result)
                except capnp.KjException as e:
                    outcomes.append(e.type)
            assert outcomes == ["ok"] * MAX_INBOUND_PER_PEER + ["DISCONNECTED"] * 2
            assert len(exports._servers) == MAX_INBOUND_PER_PEER
        finally:
            for client in clients:
                client.close()
            exports.close_all()
            conn.close()
            listener.close()

    run(main)


def test_a_served_connection_ends_its_ticket() -> None:
    """No handshake within HANDSHAKE_TIMEOUT: ended, never handshaken; and the admission's
    close callback (called from another thread) ends a served connection."""

    async def main() -> None:
        listener, conn = await _served(lambda stream, peer: None)
        try:
            ticket = listener.tickets[0]
            await until(lambda: ticket.events == ["handshaken"])
            # the ticket knows the streams the peer has open (admission's idle test)
            ping = conn.open(lane.PING)
            assert await _refused(ping) == "accepted"
            await until(lambda: ticket.streams == 1)
            ping.reset()
            await until(lambda: ticket.streams == 0)
            assert ticket.close is not None
            threading.Thread(target=ticket.close).start()  # admission's thread, say
            await asyncio.wait_for(conn.closed, HANG)  # the peer hung up
            await until(lambda: ticket.events == ["handshaken", "ended"])
        finally:
            conn.close()
            listener.close()

    run(main)


def test_a_silent_inbound_connection_is_dropped_at_the_handshake_deadline(monkeypatch) -> None:
    monkeypatch.setattr(lane, "HANDSHAKE_TIMEOUT", 0.5)

    async def main() -> None:
        listener, conn = await _served(lambda stream, peer: None)
        conn.close()
        try:
            silent = socket.create_connection(listener.sock.getsockname()[:2])
            with silent:
                await until(lambda: len(listener.tickets) == 2)
                await until(lambda: listener.tickets[1].events == ["ended"])
        finally:
            listener.close()

    run(main)


def _recording_listener() -> tuple[socket.socket, str]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock, f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}"


def _accepted_nothing(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_the_dial_policy_refuses_before_any_socket_is_made() -> None:
    """The same error as the py-libp2p path's (AddressNotAllowed, "p2p: address not
    allowed: ..."), and the listener never sees a connection."""
    from ww.p2p.dial_policy import STRICT, AddressNotAllowed

    listener, where = _recording_listener()
    addr = f"{where}/p2p/{PrivateKey.generate().peer_id}"

    async def main() -> None:
        with pytest.raises(AddressNotAllowed) as refused:
            await lane.dial(addr, PrivateKey.generate().seed, policy=STRICT, timeout=HANG)
        assert str(refused.value) == f"p2p: {STRICT.refusal(addr)}"

    with listener:
        run(main)
        assert _accepted_nothing(listener)


def test_what_the_lane_cannot_take_goes_to_py_libp2p() -> None:
    """A peer id that is not Ed25519 (a sha2-256 one, as RSA keys have), or a bare peer id:
    LaneUnavailable before anything is sent, and the Dialer takes the py-libp2p path."""
    from ww.core import multibase

    listener, where = _recording_listener()
    rsa_like = multibase.b58encode(bytes([0x12, 0x20]) + bytes(range(32)))  # Qm...
    assert rsa_like.startswith("Qm")

    async def main() -> None:
        for addr in (f"{where}/p2p/{rsa_like}", f"/p2p/{PrivateKey.generate().peer_id}"):
            with pytest.raises(lane.LaneUnavailable):
                await lane.dial(addr, PrivateKey.generate().seed, timeout=HANG)
            dialer = RecordingDialer()
            with pytest.raises(lane.P2PError, match="the py-libp2p path"):
                await dialer.dial(addr)
            assert dialer.py_dials == [addr]

    with listener:
        run(main)
        assert _accepted_nothing(listener)


def test_an_unreachable_peer_is_one_line() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{PrivateKey.generate().peer_id}"

    async def main() -> None:
        with pytest.raises(lane.P2PError) as failed:
            await lane.dial(addr, PrivateKey.generate().seed, timeout=HANG)
        assert str(failed.value) == f"p2p: cannot reach {addr} (Connection refused)"

    run(main)


_CALL = """
import json, sys
from ww.p2p.call import call_service
result = call_service(sys.argv[1], "echo", ["lane", "call"], float(sys.argv[2]))
print(json.dumps({"result": result, "libp2p": "libp2p" in sys.modules,
                  "trio": "trio" in sys.modules}))
"""


def test_ww_call_dials_a_py_libp2p_host_on_the_lane_without_libp2p(exporter) -> None:
    """`ww call`'s call to a real `ww run --with-p2p` host (py-libp2p answers the lane
    proposal na: /noise follows) works without importing py-libp2p or trio."""
    b = exporter()
    r = subprocess.run(
        [sys.executable, "-c", _CALL, b.addr, str(HANG)],
        capture_output=True,
        text=True,
        timeout=HANG + 60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"result": "lane call", "libp2p": False, "trio": False}


def test_a_ww_run_host_that_exports_serves_its_export_on_the_lane(exporter) -> None:
    """End to end through the door: a real `ww run --with-p2p` host whose cell exports
    agrees the lane with a ww dialer on its one libp2p address (the door hands the
    connection to the lane), and the call reaches the jailed cell."""
    b = exporter()

    async def main() -> None:
        dialer = Dialer(LaneOnlyNode())  # type: ignore[arg-type]
        try:
            service = (await dialer.dial(b.addr)).cast_as(_cell.Service)
            assert (await service.call("echo", ["door", "to", "lane"])).result == "door to lane"
            assert dialer._lanes[b.addr].result().lane
        finally:
            dialer.close_all()

    run(main)


def test_a_ww_run_host_that_exports_nothing_leaves_the_lane_to_py_libp2p(
    start_host, cell_file
) -> None:
    """With nothing exported the door peeks at nothing: py-libp2p answers the lane `na`, the
    dialer's connection is a standard one, and the dial is refused with today's line (the
    connection closed with it)."""
    idle = EXPORTER.replace("        await s.p2p.export(Echo())\n", "")
    assert idle != EXPORTER
    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, cell_file(idle, "idle.py"))

    async def main() -> None:
        conn = await lane.dial(b.addr, PrivateKey.generate().seed, timeout=HANG)
        try:
            assert not conn.lane
        finally:
            conn.close()
        dialer = Dialer(LaneOnlyNode())  # type: ignore[arg-type]
        try:
            with pytest.raises(lane.P2PError, match="serves nothing on /ww/0.1.0"):
                await dialer.dial(b.addr)
            assert not dialer._lanes  # (a failed dial keeps no connection)
            conn = await lane.dial(b.addr, PrivateKey.generate().seed, timeout=HANG)
            try:
                assert not conn.lane
            finally:
                conn.close()
        finally:
            dialer.close_all()

    run(main)


def test_a_lane_stream_is_held_to_the_splices_bounds() -> None:
    """A `/ww/0.1.0` stream of a real lane connection served by Exports goes through the
    bounds the splice holds py-libp2p's streams to: a message announcing more than 8 MiB
    has its stream cut at its header (straight into pycapnp, it would be waited for, 9 MiB
    of it held)."""

    async def main() -> None:
        exports = Exports()
        exports.set(Echo())
        listener = Listener(exports.lane_acceptor)
        conn = await lane.dial(listener.addr, PrivateKey.generate().seed, timeout=HANG)
        try:
            stream = conn.open(PROTOCOL_ID)
            assert await _refused(stream) == "accepted"
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            class Watch(asyncio.BufferedProtocol):
                def connection_made(self, _t: Any) -> None: ...

                def get_buffer(self, _hint: int) -> bytearray:
                    return bytearray(4096)

                def buffer_updated(self, n: int) -> None: ...

                def eof_received(self) -> None: ...

                def connection_lost(self, _e: Any) -> None:
                    if not lost.done():
                        lost.set_result(None)

            stream.connect(Watch())
            words = (9 << 20) // 8  # one segment of 9 MiB announced, 64 KiB of it sent
            stream.write(struct.pack("<II", 0, words) + bytes(64 << 10))
            async with asyncio.timeout(HANG):
                await lost
        finally:
            conn.close()
            exports.close_all()
            listener.close()

    run(main)


def test_a_stream_lost_between_its_negotiation_and_its_protocol_tells_the_protocol() -> None:
    """The peer's answer to the negotiation and its reset arrive in one read: the stream is
    lost before the dialer hands it to pycapnp's protocol.  The protocol is told it is lost
    as it is attached (else a call on it would wait for an answer that cannot come)."""

    async def main() -> None:
        listener, conn = await _served(lambda stream, peer: None)
        try:
            stream = conn.open(PROTOCOL_ID)
            assert await _refused(stream) == "accepted"
            stream._lost()  # (as the C does on the reset that came with the answer)
            told: list[str] = []

            class Watch(asyncio.BufferedProtocol):
                def connection_made(self, _t: Any) -> None:
                    told.append("made")

                def get_buffer(self, _hint: int) -> bytearray:
                    return bytearray(64)

                def buffer_updated(self, n: int) -> None: ...

                def eof_received(self) -> None: ...

                def connection_lost(self, _e: Any) -> None:
                    told.append("lost")

            stream.connect(Watch())
            assert told == ["made", "lost"]
        finally:
            conn.close()
            listener.close()

    run(main)
