"""A libp2p `/ww/0.1.0` stream spliced to a socketpair, bounded on the way.

py-libp2p runs on trio, pycapnp on asyncio, and each wants its own event loop.  Rather than
teach either about the other, every `/ww/0.1.0` stream is copied to one end of an ``AF_UNIX``
socketpair on the libp2p thread; the other end is an ordinary socket that the Cap'n Proto
side opens a two-party connection on.  Bytes cross between the threads here; every other
hand-off between them goes through :mod:`ww.core.bridge`.

Closing follows the stream: end of stream on one side is a half-close on the other; a
reset, an error, or the node stopping closes both.  When the Cap'n Proto side hangs up, the
remote peer is given a short grace to hang up too, then the stream is reset.

What a remote peer sends is bounded here, where the bytes are still countable (pycapnp
offers no flow limit of its own; messages are cut and read with :mod:`ww.core.capnp_frames`,
as on fd 3).  The remote's Cap'n Proto messages are passed on whole,
each at most :data:`MAX_MESSAGE` bytes; a message under way that stops arriving for
:data:`MESSAGE_GRACE`, or arrives slower than :data:`MIN_RATE`, resets the stream.
Every byte read from remote peers is counted in the node's :class:`Budget` until it is
passed on -- the bytes of a call (or bootstrap) until the host's answer to it leaves -- and
no stream reads while the budget is spent (a message under way keeps its clock meanwhile,
so a peer cannot fill the budget with partial messages and hold it); a stream has at most
:data:`MAX_CALLS` calls unanswered, the next is held back until one is.  So a peer that
pipelines calls and never reads the answers, or sends huge or endless messages, makes the
host hold at most the budget, not its memory.  The bounds themselves (framing, the calls
held, the counting, the clocks) are :mod:`ww.p2p.bounds`, shared with the asyncio streams
of the native lane.  The host's answers that the remote has not taken wait on the other side
of the socketpair, in its socket transport's buffer: they are bounded there, with the lane's,
by :class:`ww.p2p.bounds.SplicedAnswers` (the node's answer budget; the stream holding the
most is cut, its socket aborted, and the splice then resets the stream).
"""

from __future__ import annotations

import socket

import trio

from ww.p2p import bounds
from ww.p2p.bounds import (  # noqa: F401 - the bounds, named here as before
    _BOOTSTRAP,
    _CALL,
    _RETURN,
    BUDGET,
    CHUNK,
    MAX_CALLS,
    MAX_MESSAGE,
    MAX_SEGMENTS,
    MESSAGE_GRACE,
    MIN_RATE,
    ProtocolViolation,
    classify,
)
from ww.p2p.bounds import frame_size as _frame_size  # noqa: F401

HANGUP_GRACE = 2.0  # seconds the remote may take to close after our side hung up


class Budget(bounds.Count):
    """Bytes of remote messages a node holds; :meth:`room` waits until some is free.

    Belongs to one trio run (one :class:`ww.p2p.host.Node`)."""

    def __init__(self, total: int = BUDGET) -> None:
        super().__init__(total)
        self._freed = trio.Event()

    async def room(self) -> None:
        """Wait until less than the whole budget is used."""
        while self.used >= self.total:
            await self._freed.wait()

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()
        self._freed = trio.Event()


async def splice(stream: object, sock: socket.socket, budget: Budget | None = None) -> None:
    """Copy bytes between a libp2p ``stream`` and ``sock`` until both directions end.

    Owns both: when it returns (or is cancelled) the socket is closed and the stream closed
    or reset.  ``budget``: the node's (a splice of its own when None).
    """
    from libp2p.network.stream.exceptions import StreamEOF

    budget = budget or Budget()
    tsock = trio.socket.from_stdlib_socket(sock)
    clean = False
    # what has arrived and is not passed on yet, the remote's unanswered questions: counted
    state = bounds.Inbound(
        budget, trio.current_time(), MESSAGE_GRACE, MIN_RATE, MAX_MESSAGE, MAX_CALLS
    )
    answered = trio.Event()

    async def send(data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            sent = await tsock.send(view)
            view = view[sent:]

    async def inbound() -> None:  # remote -> socket, whole messages within the budget
        eof = False

        async def fill() -> None:
            """Read more, counting it first; a message under way must keep MIN_RATE."""
            nonlocal eof
            # what is read was held by Yamux already: count it after.  A message under way
            # keeps its clock while the stream waits for room (bounds.Inbound.deadline).
            with trio.fail_at(state.deadline(0.0, waiting=True)):
                await budget.room()
            with trio.fail_at(state.deadline(trio.current_time())):
                try:
                    data = await stream.read(CHUNK)  # type: ignore[attr-defined]
                except StreamEOF:
                    data = b""
            if not data:
                eof = True
            state.received(data, trio.current_time())

        try:
            while True:
                while (message := state.message(eof)) is None and not eof:
                    await fill()
                if message is None:  # the end of the stream, between messages
                    tsock.shutdown(socket.SHUT_WR)
                    return
                size, keep, ident = message
                if keep:
                    while state.full():
                        event = answered
                        await event.wait()
                    state.hold(ident, size)  # before the write: its answer may come first
                try:
                    await send(memoryview(state.buf)[:size])
                except BaseException:  # its bytes are given back once, with the buffer's
                    if keep and state.held.pop(ident, None) is None:
                        budget.count(size)  # its answer gave them back already
                    raise
                if keep:
                    state.consumed(size, trio.current_time())
                else:
                    state.passed(size, keep, ident, trio.current_time())
        finally:
            budget.give(len(state.buf))
            state.buf.clear()

    async def outbound(scope: trio.CancelScope) -> None:  # socket -> remote
        nonlocal answered
        looking = bounds.Outbound()
        while True:
            data = await tsock.recv(CHUNK)
            if not data:
                await stream.close_write()  # type: ignore[attr-defined]
                scope.deadline = min(scope.deadline, trio.current_time() + HANGUP_GRACE)
                return
            if looking.feed(data, state):
                answered.set()
                answered = trio.Event()
            # A peer that stops taking our answers would keep its calls counted in the
            # node's budget (and so every peer's streams waiting) for as long as it stays
            # connected: its answers too must move at MIN_RATE, after MESSAGE_GRACE.
            with trio.fail_after(state.within(len(data))):
                await stream.write(data)  # type: ignore[attr-defined]

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbound)
            nursery.start_soon(outbound, nursery.cancel_scope)
        clean = True
    except Exception:
        pass  # a reset, a broken socket or a violation ends the splice; both sides closed below
    finally:
        state.close()
        tsock.close()
        with trio.CancelScope(shield=True):
            try:
                if clean:
                    await stream.close()  # type: ignore[attr-defined]
                else:
                    await stream.reset()  # type: ignore[attr-defined]
            except Exception:
                pass
