"""What an unauthenticated peer can make a `ww run` host hold over `/ww/0.1.0`.

Real hosts (`ww run --with-p2p` with a cell exporting a `Service`) and a real libp2p peer
that writes Cap'n Proto RPC frames by hand (built with pycapnp's own ``rpc.capnp``), so it
can do what a well-behaved client never does: pipeline calls and never read the answers,
or announce a huge message and stall.  The outcome checked is the one that matters: the
host keeps its cell's session (its memory guard never fires, which would hang up fd 3 and
withdraw the export) and still serves another caller.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import capnp
import pytest

from tests.conftest import HANG
from tests.p2p.conftest import ww_call
from tests.p2p.deaf_peer import _cell, bootstrap, gateway_service, rpc, service_call
from ww.p2p import splice

pytest.importorskip("libp2p")

GUARD = "held more than"  # what the host prints when it hangs up the cell's fd 3


def echo(question: int, arg: str, service: int = 1) -> bytes:
    """``Service.call("echo", [arg])`` on the export (pipelined on the ``service()`` call)."""
    return service_call(question, "echo", arg, service)


def a_return(answer: int) -> bytes:
    m = rpc.Message.new_message()
    r = m.init("return")
    r.answerId = answer
    r.init("results").content.as_struct(_cell.Service.schema.methods["call"].result_type) \
        .result = "x" * 5000
    return m.to_bytes()


def test_frames_are_classified_as_pycapnp_writes_them() -> None:
    assert splice.classify(bootstrap(7)) == (splice._BOOTSTRAP, 7)
    assert splice.classify(gateway_service(9)) == (splice._CALL, 9)
    assert splice.classify(echo(123456, "y" * 10000)) == (splice._CALL, 123456)
    assert splice.classify(a_return(42)) == (splice._RETURN, 42)
    finish = rpc.Message.new_message()
    finish.init("finish").questionId = 3
    assert splice.classify(finish.to_bytes()) == (4, -1)
    message = echo(5, "z")
    assert splice._frame_size(message) == len(message)
    assert splice._frame_size(message[:3]) is None
    assert splice.classify(b"\0" * 16) is None  # a null root: not a message we pass on


def _flood(sock: socket.socket, frames: list[bytes]) -> int:
    """Write ``frames`` until the host stops taking them; how many went."""
    sent = 0
    sock.settimeout(HANG)
    for frame in frames:
        try:
            sock.sendall(frame)
        except OSError:
            break
        sent += 1
    return sent


def test_calls_whose_answers_are_never_read_do_not_cost_the_cell_its_session(
        exporter, peer) -> None:
    """200 pipelined 1 MiB echo calls, never reading an answer: the old host read them all
    and queued 200 MiB of answers, its memory guard fired and hung up the cell's fd 3 (the
    export was withdrawn for everyone)."""
    host = exporter()
    sock = peer.open(host.addr).result(HANG)
    try:
        arg = "x" * (1 << 20)
        _flood(sock, [bootstrap(), gateway_service()]
               + [echo(q, arg) for q in range(2, 202)])
        r = ww_call(host.addr, "echo", "still", "here")
        assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    finally:
        sock.close()
    status, stderr = host.stop()
    assert GUARD not in stderr, stderr


def test_a_huge_or_stalled_message_does_not_cost_the_cell_its_session(exporter, peer) -> None:
    """Messages announcing 64 MiB (Cap'n Proto's own default limit), all but their last
    byte sent, on three streams: the old host took them in, hung up the cell's fd 3 when
    they passed its memory guard.  Now a message over 8 MiB resets its stream at once."""
    host = exporter()
    socks = [peer.open(host.addr).result(HANG) for _ in range(3)]
    try:
        words = (64 << 20) // 8 - 1
        body = b"\0" * (1 << 20)
        for sock in socks:
            _flood(sock, [struct.pack("<II", 0, words)] + [body] * 63 + [body[:-9]])
        r = ww_call(host.addr, "echo", "still", "here")
        assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
        for sock in socks:  # each was cut off by the host, not left waiting for its end
            sock.settimeout(HANG)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in socks:
            sock.close()
    status, stderr = host.stop()
    assert GUARD not in stderr, stderr


def test_one_peer_with_many_idle_streams_does_not_shut_the_door(exporter, peer) -> None:
    """70 `/ww/0.1.0` streams from one peer, sending nothing: the old host served at most 64
    connections, all of them this peer's, with no end, so every other caller was refused."""
    from ww.p2p.protocol import MAX_INBOUND

    host = exporter()
    socks = [peer.open(host.addr).result(HANG) for _ in range(MAX_INBOUND + 6)]
    try:
        r = ww_call(host.addr, "echo", "still", "here")
        assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    finally:
        for sock in socks:
            sock.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(HANG)  # a bound against a hang only
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            break
        data += piece
    return data


def test_a_host_slow_to_answer_does_not_cost_an_honest_peer_its_stream(
        tmp_path: Path, peer, monkeypatch) -> None:
    """A peer pipelines one call past MAX_CALLS, its next message split across writes.  The
    host takes longer than MESSAGE_GRACE to answer the first call (the slowness is the
    host's here, so the wait stands for it): the held call then passes, and the rest of the
    next message, sent as soon as the answer arrives, follows it.  The old splice timed that
    message from before the wait and reset the stream at once."""
    import queue
    import time

    from ww.core.identity import load_or_create
    from ww.p2p.host import Node

    monkeypatch.setattr(splice, "MESSAGE_GRACE", 2.0)
    accepted: queue.Queue[socket.socket] = queue.Queue()
    node = Node(load_or_create(tmp_path / "host"), listen=["/ip4/127.0.0.1/tcp/0"],
                announce=False, warn=lambda message: None)
    node.serve(lambda sock, peer_id: accepted.put(sock))
    node.start()
    try:
        remote = peer.open(node.addrs[0]).result(HANG)
        host = accepted.get(timeout=HANG)
        calls = [echo(q, "a") for q in range(splice.MAX_CALLS + 1)]
        finish = rpc.Message.new_message()
        finish.init("finish").questionId = 0
        last = finish.to_bytes()  # not a call: nothing holds it back
        remote.sendall(b"".join(calls) + last[:8])
        passed = b"".join(calls[:splice.MAX_CALLS])
        assert _recv_exactly(host, len(passed)) == passed
        time.sleep(2.5 * splice.MESSAGE_GRACE)  # the host is slow to answer
        host.sendall(a_return(0))
        assert _recv_exactly(remote, len(a_return(0))) == a_return(0)
        remote.sendall(last[8:])  # the peer goes on at once
        rest = calls[splice.MAX_CALLS] + last
        assert _recv_exactly(host, len(rest)) == rest
        remote.close()
        host.close()
    finally:
        node.stop()


def test_a_burst_of_connections_from_one_peer_gets_no_more_than_its_share() -> None:
    """Connections from one peer that arrive together (each is handed to the loop by the
    libp2p thread as its stream opens): the old check counted only connections already set
    up, and every one of a burst passed it before any was, past MAX_INBOUND_PER_PEER."""
    import asyncio

    from ww.p2p.protocol import MAX_INBOUND_PER_PEER, Exports

    burst = MAX_INBOUND_PER_PEER + 4

    async def main() -> None:
        exports = Exports()
        exports.set(object())  # something exported: its calls are never made here
        pairs = [socket.socketpair() for _ in range(burst)]
        tasks = [asyncio.ensure_future(exports._serve(ours, "12D3KooWBurst"))
                 for ours, _ in pairs]
        try:
            for _ in range(100_000):  # a bound against a hang only; each turn yields
                if sum(t.done() for t in tasks) + len(exports._servers) == burst:
                    break
                await asyncio.sleep(0.001)
            assert len(exports._servers) == MAX_INBOUND_PER_PEER
            refused = [theirs for (_, theirs), task in zip(pairs, tasks, strict=True)
                       if task.done()]
            assert len(refused) == burst - MAX_INBOUND_PER_PEER
            for theirs in refused:
                theirs.settimeout(HANG)
                assert theirs.recv(1) == b""  # closed by the host
        finally:
            exports.close_all()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _, theirs in pairs:
                theirs.close()

    asyncio.run(capnp.run(main()))


class _DeafStream:
    """A stand-in for a libp2p stream (named as such: the peer's Yamux window closing is what
    it stands for) whose peer sends one call and then never takes a byte of the answer."""

    def __init__(self, first: bytes) -> None:
        import trio

        self._first: bytes | None = first
        self.reset_called = False
        self._never = trio.Event()

    async def read(self, n: int) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        await self._never.wait()  # the peer sends nothing more, and does not hang up
        return b""

    async def write(self, data: bytes) -> None:
        await self._never.wait()  # its window stays shut

    async def close_write(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        self.reset_called = True


def test_a_peer_that_never_takes_its_answers_is_cut_off_and_its_calls_uncounted(
        monkeypatch) -> None:
    """A peer whose held calls fill the node's budget and which then stops taking the
    answers used to keep every peer's streams waiting for as long as it stayed connected."""
    import trio

    monkeypatch.setattr(splice, "MESSAGE_GRACE", 0.5)
    call = echo(1, "q" * 1000)
    budget = splice.Budget()
    stream = _DeafStream(call)
    host_end, ours = socket.socketpair()

    async def host() -> None:  # takes the call and answers it, as the cell's host does
        tsock = trio.socket.from_stdlib_socket(host_end)
        got = b""
        while len(got) < len(call):
            got += await tsock.recv(65536)
        assert splice.classify(got) == (splice._CALL, 1)
        assert budget.used == len(call)  # held until the answer leaves
        await tsock.send(a_return(1))
        await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host)
            with trio.fail_after(HANG):  # only stops a hang: the splice ends by itself
                await splice.splice(stream, ours, budget)
            nursery.cancel_scope.cancel()

    trio.run(main)
    host_end.close()
    assert stream.reset_called
    assert budget.used == 0


def _partial(size: int, sent: int) -> bytes:
    """The first ``sent`` bytes of a one-segment message of ``size`` bytes (never finished)."""
    return struct.pack("<II", 0, (size - 8) // 8) + b"\0" * (sent - 8)


def test_partial_messages_that_fill_the_budget_are_cut_and_another_call_served(
        tmp_path: Path, peer, monkeypatch) -> None:
    """4 streams each send most of a message (more than the node's budget together, each
    under MAX_MESSAGE) and stop.  Their streams then wait for room with their messages half
    in: the old splice stopped a message's clock while it waited, so they were never cut off
    and every other `/ww/0.1.0` stream of the host waited as long as the attacker stayed.
    Now a message keeps its clock while it waits: they are cut, their bytes freed, and
    another stream's call is served.  (The budget is 1 MiB and the rate 1 MiB/s here, so
    the test moves little: the rule is the same at 32 MiB and 100 KiB/s.)"""
    import queue
    import threading
    import time

    from ww.core.identity import load_or_create
    from ww.p2p.host import Node

    monkeypatch.setattr(splice, "MESSAGE_GRACE", 1.0)
    monkeypatch.setattr(splice, "MIN_RATE", 1 << 20)
    accepted: queue.Queue[socket.socket] = queue.Queue()
    node = Node(load_or_create(tmp_path / "host"), listen=["/ip4/127.0.0.1/tcp/0"],
                announce=False, warn=lambda message: None)
    node.serve(lambda sock, peer_id: accepted.put(sock))
    node.start()
    budget = node._budget
    assert budget is not None
    budget.total = 1 << 20
    attackers, held, honest = [], [], None
    try:
        for _ in range(4):
            sock = peer.open(node.addrs[0]).result(HANG)
            attackers.append(sock)
            held.append(accepted.get(timeout=HANG))
            sock.settimeout(HANG)
            # 1.5 MiB of a 7 MiB message: more than the budget, so no stream reads all its
            # bytes before the budget is full
            data = _partial(splice.MAX_MESSAGE - (1 << 20), 3 << 19)
            # the peer's own writes wait for the host's window: in a thread of its own
            threading.Thread(target=_flood, args=(sock, [data]), daemon=True).start()
        for _ in range(10_000):  # bounded: until the attackers' bytes fill the budget
            if budget.used >= budget.total:
                break
            time.sleep(0.01)
        assert budget.used >= budget.total
        honest = peer.open(node.addrs[0]).result(HANG)
        host = accepted.get(timeout=HANG)
        call = echo(1, "still here")
        honest.sendall(call)
        host.settimeout(60)  # bound: the attackers' allowance is 2 s at most; the old splice: never
        got = b""
        while len(got) < len(call):
            piece = host.recv(len(call) - len(got))
            assert piece, "the host end of the honest stream closed"
            got += piece
        assert got == call
        host.sendall(a_return(1))
        assert _recv_exactly(honest, len(a_return(1))) == a_return(1)
        for sock in held:  # each attacker's stream was cut off: its host end closed
            sock.settimeout(HANG)
            try:
                while sock.recv(1 << 16):
                    pass
            except ConnectionResetError:
                pass
        for _ in range(10_000):  # bounded: the answer has left, the attackers' bytes freed
            if budget.used == 0:
                break
            time.sleep(0.01)
        assert budget.used == 0
        host.close()
    finally:
        for sock in attackers + held:
            sock.close()
        if honest is not None:
            honest.close()
        node.stop()
