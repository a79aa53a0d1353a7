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
no stream reads while the budget is spent; a stream has at most :data:`MAX_CALLS` calls
unanswered, the next is held back until one is.  So a peer that pipelines calls and never
reads the answers, or sends huge or endless messages, makes the host hold at most the
budget, not its memory.
"""

from __future__ import annotations

import socket

import trio

from ww.core import capnp_frames

CHUNK = 256 * 1024
HANGUP_GRACE = 2.0  # seconds the remote may take to close after our side hung up
MAX_MESSAGE = 8 << 20  # bytes in one Cap'n Proto message from a remote peer; more: reset
MAX_SEGMENTS = capnp_frames.MAX_SEGMENTS  # segments in one message (Cap'n Proto's own limit)
MAX_CALLS = 16  # calls one stream may have unanswered; the next is not read until one is
BUDGET = 32 << 20  # bytes of remote messages held at once, every stream of a node together
MIN_RATE = 100 * 1024  # bytes/s a message must arrive at on average (after MESSAGE_GRACE)
MESSAGE_GRACE = 10.0  # seconds a message under way may go without a byte

# rpc.capnp's Message union: the members whose bytes stay counted until answered.
_CALL, _RETURN, _BOOTSTRAP = capnp_frames.CALL, capnp_frames.RETURN, capnp_frames.BOOTSTRAP


class ProtocolViolation(Exception):
    """The remote sent something that is not a Cap'n Proto message we pass on."""


class Budget:
    """Bytes of remote messages a node holds; :meth:`room` waits until some is free.

    Belongs to one trio run (one :class:`ww.p2p.host.Node`)."""

    def __init__(self, total: int = BUDGET) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self._freed = trio.Event()

    async def room(self) -> None:
        """Wait until less than the whole budget is used."""
        while self.used >= self.total:
            await self._freed.wait()

    def count(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()
        self._freed = trio.Event()


def _frame_size(buf: bytes | bytearray) -> int | None:
    """Bytes of the message starting ``buf`` (None: its header is not all there yet)."""
    try:
        return capnp_frames.message_size(buf)
    except capnp_frames.TooManySegments as e:
        raise ProtocolViolation(str(e)) from None


def classify(message: bytes | bytearray) -> tuple[int, int] | None:
    """(which member of rpc.capnp's ``Message`` union, its question/answer id) for a call,
    return or bootstrap; ``(which, -1)`` for another member; None if unreadable here (the
    root, or the member's struct, not a near pointer within the first segment)."""
    sizes = capnp_frames.segment_sizes(message)
    if sizes is None:
        return None
    head = memoryview(message)[capnp_frames.header_size(len(sizes)):]
    member = capnp_frames.rpc_member(head, sizes, (_CALL, _RETURN, _BOOTSTRAP), far=False)
    if member is None or member[1] is None:
        return None
    return member  # type: ignore[return-value]


async def splice(stream: object, sock: socket.socket, budget: Budget | None = None) -> None:
    """Copy bytes between a libp2p ``stream`` and ``sock`` until both directions end.

    Owns both: when it returns (or is cancelled) the socket is closed and the stream closed
    or reset.  ``budget``: the node's (a splice of its own when None).
    """
    from libp2p.network.stream.exceptions import StreamEOF

    budget = budget or Budget()
    tsock = trio.socket.from_stdlib_socket(sock)
    clean = False
    held: dict[int, int] = {}  # the remote's unanswered questions -> bytes counted for them
    answered = trio.Event()

    async def send(data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            sent = await tsock.send(view)
            view = view[sent:]

    async def inbound() -> None:  # remote -> socket, whole messages within the budget
        buf = bytearray()  # what has arrived and is not passed on yet: all counted
        eof = False
        began = 0.0  # when the first byte of the message in ``buf`` arrived

        async def fill() -> None:
            """Read more, counting it first; a message under way must keep MIN_RATE."""
            nonlocal eof, began
            waited = trio.current_time()
            await budget.room()  # what is read was held by Yamux already: count it after
            now = trio.current_time()
            began += now - waited  # time spent waiting for room is not the remote's
            if not buf:
                began = now
                deadline = float("inf")  # an idle stream holds nothing
            else:  # silent for MESSAGE_GRACE, or slower than MIN_RATE on average: cut off
                deadline = min(now + MESSAGE_GRACE,
                               began + MESSAGE_GRACE + len(buf) / MIN_RATE)
            with trio.fail_at(deadline):
                try:
                    data = await stream.read(CHUNK)  # type: ignore[attr-defined]
                except StreamEOF:
                    data = b""
            budget.count(len(data))
            if not data:
                eof = True
            if not buf:
                began = trio.current_time()
            buf.extend(data)

        try:
            while True:
                while (size := _frame_size(buf)) is None and not eof:
                    await fill()
                if size is None:
                    if buf:
                        raise ProtocolViolation("the stream ended inside a message")
                    tsock.shutdown(socket.SHUT_WR)
                    return
                if size > MAX_MESSAGE:
                    raise ProtocolViolation(f"a message of {size} bytes")
                while len(buf) < size and not eof:
                    await fill()
                if len(buf) < size:
                    raise ProtocolViolation("the stream ended inside a message")
                kind = classify(buf)
                if kind is None:
                    raise ProtocolViolation("a message this host cannot read")
                which, ident = kind
                keep = which in (_CALL, _BOOTSTRAP) and ident not in held
                if keep:
                    # Nothing behind this call is read meanwhile, answers to the host's own
                    # calls included (KJ's flow limit has the same caveat): a call the host
                    # answers only after the remote answers one of its calls waits for ever
                    # once MAX_CALLS such calls are held.
                    while len(held) >= MAX_CALLS:
                        event = answered
                        await event.wait()
                await send(memoryview(buf)[:size])
                del buf[:size]
                # The next message's clock starts now: the time this one waited for the
                # host (to take it, or to answer a call) is not the remote's.
                began = trio.current_time()
                if keep:
                    held[ident] = size  # still counted, until our answer leaves
                else:
                    budget.give(size)
        finally:
            budget.give(len(buf))

    async def outbound(scope: trio.CancelScope) -> None:  # socket -> remote
        nonlocal answered
        buf = bytearray()  # the start of the host's current message, until it is classified
        skip = 0  # bytes of the current message still to pass without looking
        while True:
            data = await tsock.recv(CHUNK)
            if not data:
                await stream.close_write()  # type: ignore[attr-defined]
                scope.deadline = min(scope.deadline, trio.current_time() + HANGUP_GRACE)
                return
            view = memoryview(data)
            while view:
                if skip:
                    step = min(skip, len(view))
                    skip -= step
                    view = view[step:]
                    continue
                buf.extend(view)
                view = memoryview(b"")
                while (size := _frame_size(buf)) is not None and len(buf) >= min(size, 4096):
                    kind = classify(buf)  # the start of a long answer is enough
                    if kind is not None and kind[0] == _RETURN and kind[1] in held:
                        budget.give(held.pop(kind[1]))
                        answered.set()
                        answered = trio.Event()
                    if len(buf) >= size:
                        del buf[:size]
                    else:
                        skip = size - len(buf)
                        buf.clear()
                        break
            # A peer that stops taking our answers would keep its calls counted in the
            # node's budget (and so every peer's streams waiting) for as long as it stays
            # connected: its answers too must move at MIN_RATE, after MESSAGE_GRACE.
            with trio.fail_after(MESSAGE_GRACE + len(data) / MIN_RATE):
                await stream.write(data)  # type: ignore[attr-defined]

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbound)
            nursery.start_soon(outbound, nursery.cancel_scope)
        clean = True
    except Exception:
        pass  # a reset, a broken socket or a violation ends the splice; both sides closed below
    finally:
        for size in held.values():
            budget.give(size)
        held.clear()
        tsock.close()
        with trio.CancelScope(shield=True):
            try:
                if clean:
                    await stream.close()  # type: ignore[attr-defined]
                else:
                    await stream.reset()  # type: ignore[attr-defined]
            except Exception:
                pass
