"""The bounds of a remote peer's `/ww/0.1.0` stream on asyncio (`bounds.bounded_capnp`).

The native lane attaches its streams to pycapnp on the loop, with no socketpair and no
splice; the shim between them must hold a remote peer to what the splice holds it to.  Here
a real pycapnp ``TwoPartyServer`` (a Gateway whose ``service()`` is an echo ``Service``, as
a ww host's export) serves over the shim over a real asyncio socket transport, and the
attacking peer writes raw Cap'n Proto frames on the other end of the socketpair (the frames
of ``test_ww_bounds``, built with pycapnp's own ``rpc.capnp``).

``WW_LANE_BOUNDS_PLAIN=1`` runs the same tests with the transport straight into pycapnp (no
shim), to show each attack test fails without it (run it with ``--timeout``: a peer the
host never cuts off waits for ever).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import capnp

from tests.conftest import HANG
from tests.p2p.test_ww_bounds import _cell, a_return, bootstrap, echo, gateway_service, rpc
from ww.p2p import bounds

PLAIN = os.environ.get("WW_LANE_BOUNDS_PLAIN") == "1"


class _Echo(_cell.Service.Server):  # type: ignore[name-defined,misc]
    """The export: ``call("echo", args)``; ``gate`` (when set) holds every answer back
    until it opens (a host slow to answer)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.calls = 0
        self.gate = gate

    async def call(self, method: str, args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return " ".join(args)


class _Gateway(_cell.Gateway.Server):  # type: ignore[name-defined,misc]
    def __init__(self, service: _Echo) -> None:
        self._service = service

    async def service(self, _context: Any, **kwargs: Any) -> None:
        _context.results.service = self._service


class Host:
    """A pycapnp server on one end of a socketpair, through the shim (unless PLAIN); the
    attacking peer's end is ``peer``, non-blocking, on the same loop."""

    def __init__(
        self,
        service: _Echo,
        protocol: Any,
        server: Any,
        peer: socket.socket,
        budget: bounds.AsyncBudget,
    ) -> None:
        self.service, self.protocol, self.server, self.peer = service, protocol, server, peer
        self.budget = budget
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.peer, data)

    async def recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = await asyncio.wait_for(self.loop.sock_recv(self.peer, n - len(data)), HANG)
            assert piece, "the host hung up"
            data += piece
        return data

    async def cut_off(self) -> None:
        """Wait for the host to end the stream (reads and drops what it sent before)."""

        async def until_end() -> None:
            for _ in range(1 << 20):  # bounded; each turn reads or ends
                try:
                    if not await self.loop.sock_recv(self.peer, 1 << 16):
                        return
                except ConnectionResetError:
                    return

        await asyncio.wait_for(until_end(), HANG)

    async def recv_message(self) -> bytes:
        """One whole Cap'n Proto message from the host."""
        table = await self.recv_exactly(4)
        table += await self.recv_exactly(
            bounds.capnp_frames.header_size(struct.unpack("<I", table)[0] + 1) - 4
        )
        size = bounds.frame_size(table)
        assert size is not None
        return table + await self.recv_exactly(size - len(table))

    def close(self) -> None:
        self.peer.close()


async def _host(
    gate: asyncio.Event | None = None,
    budget: bounds.AsyncBudget | None = None,
    service: _Echo | None = None,
    **limits: Any,
) -> Host:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    service = service or _Echo(gate)
    budget = budget or bounds.AsyncBudget()
    if PLAIN:
        stream = await capnp.AsyncIoStream.create_connection(sock=ours)
        protocol = None
    else:
        protocol, stream = bounds.bounded_capnp(budget, **limits)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock=ours)
    server = capnp.TwoPartyServer(stream, bootstrap=_Gateway(service))
    return Host(service, protocol, server, peer, budget)


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (a turn of the loop at a time) until ``condition()``; HANG only stops a hang."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), HANG)


def _run(main: Callable[[], Any]) -> None:
    asyncio.run(capnp.run(main()))


def test_the_quick_reading_of_a_message_agrees_with_the_general_reader() -> None:
    """``bounds.classify`` and ``frame_size`` read the common layout at once: on pycapnp's
    own frames and on thousands of them with bytes of their start changed, they say what
    the general reader (``capnp_frames``) says."""
    import random

    from ww.core import capnp_frames

    rng = random.Random(14)
    finish = rpc.Message.new_message()
    finish.init("finish").questionId = 3
    frames = [bootstrap(7), gateway_service(9), echo(123456, "y" * 100), finish.to_bytes()]
    frames += [a_return(42)[:300]]
    for _ in range(20_000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(min(len(frame), 64))
            frame[at] = rng.choice([0, 1, 2, 3, 0xFF, 0x80, rng.randrange(256)])
        frame = frame[: rng.choice([len(frame), rng.randrange(len(frame) + 1)])]
        try:
            general = capnp_frames.message_size(frame)
        except capnp_frames.TooManySegments:
            general = "violation"
        try:
            quick = bounds.frame_size(frame)
        except bounds.ProtocolViolation:
            quick = "violation"
        assert quick == general, bytes(frame)
        if general != "violation":
            assert bounds.classify(frame) == bounds._classify(frame), bytes(frame)


def test_a_message_announcing_more_than_the_limit_is_cut_off_at_its_header() -> None:
    async def main() -> None:
        host = await _host()
        try:
            words = (bounds.MAX_MESSAGE + 8) // 8
            await host.send(struct.pack("<II", 0, words) + b"\0" * 4096)
            await host.cut_off()
            assert host.protocol.violation == f"a message of {8 + 8 * words} bytes"
            assert host.budget.used == 0
        finally:
            host.close()

    _run(main)


def test_a_stalled_half_message_is_cut_off_after_the_grace() -> None:
    async def main() -> None:
        host = await _host(grace=0.5)
        try:
            call = echo(1, "x" * 10_000)
            await host.send(call[: len(call) // 2])
            await host.cut_off()  # the grace passes; nothing else happens meanwhile
            assert host.protocol.violation == "a message under way arrived too slowly"
            assert host.budget.used == 0
            assert host.service.calls == 0
        finally:
            host.close()

    _run(main)


def test_pipelined_calls_whose_answers_are_never_read_are_held_to_the_limit() -> None:
    """200 pipelined 1 MiB echo calls, never reading an answer: pycapnp alone reads all of
    them and queues every answer (200 MiB).  Through the shim the service sees at most the
    calls held plus the few whose answers fit the socket's buffers, and the stream stops
    being read while its calls are held."""
    arg = "x" * (1 << 20)
    calls = [echo(q, arg) for q in range(2, 202)]
    limit = bounds.MAX_CALLS + 4  # held, and a few answered into the socket's buffers

    async def main() -> None:
        host = await _host(grace=HANG)
        flood = asyncio.ensure_future(host.send(b"".join([bootstrap(), gateway_service()] + calls)))
        try:
            protocol = host.protocol
            await _until(
                lambda: (
                    host.service.calls > limit
                    or (protocol is not None and protocol.state.full() and not protocol._reading)
                )
            )
            assert host.service.calls <= limit
            assert not flood.done()  # the peer's calls wait in its own socket
            assert host.budget.peak <= (bounds.MAX_CALLS + 1) * len(calls[0]) + (64 << 10)
        finally:
            flood.cancel()
            host.close()

    _run(main)


def test_an_honest_peer_pipelining_past_the_limit_with_a_slow_host_is_not_cut_off() -> None:
    """20 pipelined calls (4 past MAX_CALLS) and the start of the next message, while the
    host takes longer than the grace to answer: the held calls then pass, the rest of the
    next message follows at once, and every answer arrives.  Waiting for the host is not
    the peer's time."""
    grace = 0.3

    async def main() -> None:
        gate = asyncio.Event()
        host = await _host(gate, grace=grace)
        try:
            n = bounds.MAX_CALLS + 4
            finish = rpc.Message.new_message()
            finish.init("finish").questionId = 1000
            last = finish.to_bytes()  # not a call: nothing holds it back
            await host.send(
                b"".join([bootstrap(), gateway_service()] + [echo(q, "a") for q in range(2, 2 + n)])
                + last[:8]
            )
            await _until(lambda: host.service.calls >= bounds.MAX_CALLS)
            await asyncio.sleep(3 * grace)  # the host is slow to answer (stands for it)
            gate.set()
            await host.send(last[8:])  # the peer goes on
            returns = 0
            for _ in range(10 * n):  # bounded: each turn reads one message whole
                kind = bounds.classify(await host.recv_message())
                returns += kind is not None and kind[0] == bounds._RETURN
                if returns == n + 2:  # the bootstrap's, service()'s and every echo's
                    break
            assert returns == n + 2
            assert host.service.calls == n
            assert host.protocol is None or host.protocol.violation is None
        finally:
            host.close()

    _run(main)


def test_a_peer_that_never_takes_its_answers_is_cut_off_and_its_calls_uncounted() -> None:
    """Calls whose answers (256 KiB each) fill the socket's buffers, never read: the answers
    must move within the grace, then at MIN_RATE, or the stream is cut off and its calls no
    longer count in the node's budget."""
    arg = "y" * (256 << 10)

    async def main() -> None:
        host = await _host(grace=0.5)
        try:
            await host.send(
                b"".join(
                    [bootstrap(), gateway_service()]
                    + [echo(q, arg) for q in range(2, 2 + bounds.MAX_CALLS)]
                )
            )
            # nothing is read here until the host hangs up: reading would move the answers
            await _until(lambda: host.protocol is not None and host.protocol.violation)
            await host.cut_off()
            assert host.protocol.violation == "the host's answers were not taken"
            assert host.budget.used == 0
        finally:
            host.close()

    _run(main)


def test_the_budget_is_shared_a_stream_waits_while_another_holds_it_all() -> None:
    """Two streams of one host, one budget of 1 MiB: one peer's two calls of 640 KiB, held
    until the host answers them, spend the whole budget; the other peer's call is not read
    meanwhile, and is served once those answers leave."""

    async def main() -> None:
        budget = bounds.AsyncBudget(1 << 20)
        gate = asyncio.Event()
        big = await _host(gate, budget=budget)
        honest = None
        try:
            calls = [echo(q, "z" * (5 << 17)) for q in (2, 3)]
            sending = asyncio.ensure_future(
                big.send(b"".join([bootstrap(), gateway_service(), *calls]))
            )
            await _until(lambda: budget.used >= budget.total)  # calls stay counted until answered
            # (a stream already reading when the budget fills takes one more read, as a
            # splice already in its read does: the next stream is the one that waits)
            honest = await _host(budget=budget)
            await honest.send(bootstrap() + gateway_service() + echo(2, "still here"))
            await _until(lambda: honest.protocol._stalled_at >= 0)  # waits for room
            assert honest.service.calls == 0
            gate.set()  # the host answers the big call: its bytes leave the budget
            for _ in range(100):  # bounded: the bootstrap's, service()'s, then the echo's
                if bounds.classify(await honest.recv_message()) == (bounds._RETURN, 2):
                    break
            assert honest.service.calls == 1
            assert big.protocol.violation is None and honest.protocol.violation is None
            assert budget.peak <= budget.total + (64 << 10)  # one read past it at most
        finally:
            sending.cancel()
            big.close()
            if honest is not None:
                honest.close()

    _run(main)


def test_partial_messages_that_fill_the_budget_are_cut_and_another_call_served() -> None:
    """4 streams each send most of a message (more than the budget together, each under
    the message limit) and stop: their streams wait for room with their messages half in.
    The old shim stopped a message's clock while it waited, so they were never cut off and
    every other stream of the loop waited as long as the attacker stayed connected.  Now a
    message keeps its clock while it waits: they are cut, their bytes freed, and another
    stream's call is answered.  (A 1 MiB budget and 1 MiB/s: the rule is the same at 32 MiB
    and 100 KiB/s.)"""
    limits = {"grace": 0.5, "rate": 1 << 20}

    async def main() -> None:
        budget = bounds.AsyncBudget(1 << 20)
        attackers: list[Host] = []
        floods: list[Any] = []
        honest = None
        try:
            for _ in range(4):
                attacker = await _host(budget=budget, **limits)
                attackers.append(attacker)
                # a message of 7 MiB, 1.5 MiB of it sent: more than the budget, so no stream
                # reads all its bytes before the budget is full
                words = (bounds.MAX_MESSAGE - (1 << 20)) // 8
                data = struct.pack("<II", 0, words) + b"\0" * ((3 << 19) - 8)
                floods.append(asyncio.ensure_future(attacker.send(data)))
            await _until(lambda: budget.used >= budget.total)
            honest = await _host(budget=budget, **limits)
            await honest.send(bootstrap() + gateway_service() + echo(2, "still here"))

            async def answered() -> None:
                for _ in range(100):  # bounded: the bootstrap's, service()'s, then the echo's
                    if bounds.classify(await honest.recv_message()) == (bounds._RETURN, 2):
                        return
                raise AssertionError("no answer to the echo")

            # a bound: the attackers' allowance is 1.5 s at most; the old shim never answered
            await asyncio.wait_for(answered(), 60)
            assert honest.protocol.violation is None
            for attacker in attackers:
                await attacker.cut_off()
                assert attacker.protocol.violation == "a message under way arrived too slowly"
            await _until(lambda: budget.used == 0)
        finally:
            for flood in floods:
                flood.cancel()
            for attacker in attackers:
                attacker.close()
            if honest is not None:
                honest.close()

    _run(main)


def test_a_message_shorter_than_a_table_and_its_start_does_not_hide_the_next_answer() -> None:
    """A whole message of under 16 bytes (a table and an empty segment: KJ writes none, but a
    host's stream is not the place to assume so) followed by an answer's start, in one short
    write, was kept whole as "a table alone": the next write then stepped back past its own
    start, and the answer's call stayed held.  Every split of the stream in two and three
    now finds both answers."""
    empty = struct.pack("<II", 0, 0)  # one segment of no words: 8 bytes
    stream = empty + a_return(2) + empty + empty + a_return(5)
    for cuts in [(i,) for i in range(1, len(stream))] + [
        (i, j) for i in range(1, 24) for j in range(i + 1, min(i + 24, len(stream)))
    ]:
        inbound = bounds.Inbound(bounds.Count(), 0.0)
        for ident in (2, 5, 11):  # 11: never answered
            inbound.budget.count(100)
            inbound.hold(ident, 100)
        out = bounds.Outbound()
        edges = (0, *cuts, len(stream))
        for a, b in itertools.pairwise(edges):
            out.feed(stream[a:b], inbound)
        assert list(inbound.held) == [11], cuts
        assert not out.buf and not out.skip, cuts


def test_the_hosts_answers_are_looked_at_where_they_lie_not_copied() -> None:
    """``Outbound`` finds the Returns to held calls however the host's writes fall (pycapnp
    writes a message's segment table apart from its segments; random pieces too), and a
    1 MiB answer passes with no more than its start copied (the whole of it was)."""
    import random
    import tracemalloc

    def returning(answer: int, size: int) -> bytes:
        m = rpc.Message.new_message()
        r = m.init("return")
        r.answerId = answer
        r.init("results").content.as_struct(
            _cell.Service.schema.methods["call"].result_type
        ).result = "x" * size
        return m.to_bytes()

    finish = rpc.Message.new_message()
    finish.init("finish").questionId = 3
    big = returning(7, 1 << 20)
    messages = [returning(2, 10), finish.to_bytes(), big, returning(99, 5000), a_return(5)]
    stream = b"".join(messages)

    def fresh() -> tuple[bounds.Inbound, bounds.Outbound]:
        inbound = bounds.Inbound(bounds.Count(), 0.0)
        for ident in (2, 5, 7, 11):  # 11: never answered
            inbound.budget.count(100)
            inbound.hold(ident, 100)
        return inbound, bounds.Outbound()

    as_pycapnp = []  # each message's table, then its segments
    for m in messages:
        table = bounds.capnp_frames.header_size(struct.unpack_from("<I", m)[0] + 1)
        as_pycapnp += [m[:table], m[table:]]
    rng = random.Random(5)
    for writes in [as_pycapnp] + [
        [stream[i : i + n] for i in range(0, len(stream), n)]
        for n in (1, 7, 8, 9, 4095, 4097, 65536, rng.randrange(1, 300_000))
    ]:
        inbound, out = fresh()
        released = [out.feed(w, inbound) for w in writes]
        assert list(inbound.held) == [11] and inbound.budget.used == 100
        assert any(released) and not out.buf and not out.skip

    inbound, out = fresh()
    table, segments = as_pycapnp[4], as_pycapnp[5]
    assert len(segments) > 1 << 20
    out.feed(as_pycapnp[0] + as_pycapnp[1] + as_pycapnp[2] + as_pycapnp[3], inbound)
    tracemalloc.start()
    try:
        out.feed(table, inbound)
        before = tracemalloc.get_traced_memory()[0]
        assert out.feed(segments, inbound)  # the call answered
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 64 << 10, f"{peak - before} bytes allocated to look at an answer"
    assert list(inbound.held) == [5, 11]
