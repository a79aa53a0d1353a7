"""What a remote peer's `/ww/0.1.0` stream may make the host hold, for trio and for asyncio.

pycapnp offers no flow limit of its own, so the host cuts what a remote peer sends into
Cap'n Proto messages itself (:mod:`ww.core.capnp_frames`) and bounds it:

- messages are passed on whole, each at most :data:`MAX_MESSAGE` bytes;
- a message under way must keep arriving: :data:`MESSAGE_GRACE` without a byte, or slower
  than :data:`MIN_RATE` on average after that grace, cuts the stream off;
- every byte read is counted in the node's budget (:data:`BUDGET`) until it is passed on,
  the bytes of a call or bootstrap until the host's ``Return`` to it leaves; no stream
  reads while the budget is spent;
- a stream waiting for room in the budget with a message under way keeps that message's
  clock: it must still be in within :data:`MESSAGE_GRACE` + its length / :data:`MIN_RATE`
  from its first byte, the wait included, or the stream is cut off and its bytes freed (see
  :meth:`Inbound.deadline`); a stream waiting between messages holds nothing and waits on;
- a stream has at most :data:`MAX_CALLS` calls unanswered; the next is not read until one is;
- the host's answers must move like the peer's messages: the peer must take a first byte
  within :data:`MESSAGE_GRACE`, then on average at least :data:`MIN_RATE`, or the stream is
  cut off (and its calls no longer count).  What the host writes meanwhile buys no time;
- no answer is larger than a peer takes (:data:`MAX_MESSAGE`): the stream is cut off
  instead of writing it;
- what the host has written to the node's streams and their peers have not taken is at most
  :data:`ANSWER_BUDGET` bytes, every stream of a node together (:class:`Answers`): a write
  past it cuts off the stream holding the most unsent written over :data:`ANSWER_AGE` ago
  (the most unsent when none holds such bytes: the writer's own, most often).

This module is the part without I/O, shared by the two places a stream meets pycapnp:
:mod:`ww.p2p.splice` (py-libp2p's streams, on trio, copied to a socketpair) and
:func:`bounded_capnp` (an asyncio transport, such as the native lane's streams, attached to
pycapnp on the loop that runs it, with no socketpair).  :class:`Inbound` holds one stream's
unpassed bytes, its held calls and its clock; :class:`Outbound` finds the host's Returns at
the start of its messages; :class:`Count` is the budget's arithmetic (the waiting is each
side's: trio's ``splice.Budget``, asyncio's :class:`AsyncBudget`).  The host's answers wait
on the asyncio side on both paths, so they are bounded there, in one :class:`Answers` a loop:
a lane stream's by :class:`BoundedProtocol`, a spliced socket's by :class:`SplicedAnswers`
(:func:`spliced_capnp`).
"""

from __future__ import annotations

import asyncio
import functools
import struct
import weakref
from typing import Any

from ww.core import capnp_frames
from ww.core.capnp_stream import HeldReads, OneSend, TransportProxy

MAX_MESSAGE = 8 << 20  # bytes in one Cap'n Proto message from a remote peer; more: reset
MAX_SEGMENTS = capnp_frames.MAX_SEGMENTS  # segments in one message (Cap'n Proto's own limit)
MAX_CALLS = 16  # calls one stream may have unanswered; the next is not read until one is
BUDGET = 32 << 20  # bytes of remote messages held at once, every stream of a node together
MIN_RATE = 100 * 1024  # bytes/s a message must arrive at on average (after MESSAGE_GRACE)
MESSAGE_GRACE = 10.0  # seconds a message under way may go without a byte
CHUNK = 256 * 1024  # bytes read from a stream at once
# bytes written to the node's remote streams (answers, mostly) their peers have not taken, all
# streams together; past it the stream holding the most is cut off
ANSWER_BUDGET = 32 << 20
# seconds after which an answer's unsent bytes are "old": past ANSWER_BUDGET the stream holding
# the most old bytes is cut first, and only when none holds any, the one holding the most
ANSWER_AGE = 1.0
_PEEK = 4096  # bytes of the host's message enough to see whether it is a Return, and to whom

# rpc.capnp's Message union: the members whose bytes stay counted until answered.
_CALL, _RETURN, _BOOTSTRAP = capnp_frames.CALL, capnp_frames.RETURN, capnp_frames.BOOTSTRAP
_INF = float("inf")


class ProtocolViolation(Exception):
    """The remote sent something that is not a Cap'n Proto message we pass on."""


_ONE = struct.Struct("<IIQ")  # a one-segment message's table, then its root pointer
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def frame_size(buf: Any) -> int | None:
    """Bytes of the message starting ``buf`` (None: its header is not all there yet)."""
    if len(buf) >= 8 and not buf[0] and not buf[1] and not buf[2] and not buf[3]:
        return 8 + 8 * _U32.unpack_from(buf, 4)[0]  # one segment: the common case
    try:
        return capnp_frames.message_size(buf)
    except capnp_frames.TooManySegments as e:
        raise ProtocolViolation(str(e)) from None


def starts_call(buf: Any) -> bool:
    """Whether the message starting ``buf`` (all of it, or only its start) is, or may be, a
    call or bootstrap: its root's union tag says so, or is not where an honest writer puts
    it (read from the first 24 bytes past the segment table); False while too little is
    there to tell (a few bytes)."""
    n = len(buf)
    if n < 8:
        return False
    segments = _U32.unpack_from(buf, 0)[0] + 1
    if segments > 512:
        return True
    head = (4 + 4 * segments + 7) & ~7
    if n < head + 8:
        return False
    root = _U64.unpack_from(buf, head)[0]
    offset = (root >> 2) & 0x3FFFFFFF
    if not root or root & 3 or offset & 0x20000000 or not (root >> 32) & 0xFFFF:
        return True
    at = head + 8 * (1 + offset)
    if at + 2 > n:
        return at + 2 > head + 24  # (an honest root's struct comes right after it)
    which = buf[at] | buf[at + 1] << 8
    return which == _CALL or which == _BOOTSTRAP


def classify(message: Any) -> tuple[int, int] | None:
    """(which member of rpc.capnp's ``Message`` union, its question/answer id) for a call,
    return or bootstrap; ``(which, -1)`` for another member; None if unreadable here (the
    root, or the member's struct, not a near pointer within the first segment)."""
    # The common case read at once (a message of one segment, the root and the member's
    # struct near, non-null and within it); anything else is read by the general reader.
    n = len(message)
    if n >= 16:
        count, words, root = _ONE.unpack_from(message)
        if not count and root and not root & 3:
            offset = (root >> 2) & 0x3FFFFFFF
            first = -1 if offset & 0x20000000 else 1 + offset  # backwards: the general reader
            data, pointers = (root >> 32) & 0xFFFF, root >> 48
            if first >= 0 and data and first + data + pointers <= words and 8 * first + 10 <= n:
                which = message[8 + 8 * first] | message[9 + 8 * first] << 8
                if which != _CALL and which != _RETURN and which != _BOOTSTRAP:
                    return which, -1
                at = first + data
                if pointers and 8 * at + 16 <= n:
                    body = _U64.unpack_from(message, 8 + 8 * at)[0]
                    if body and not body & 3 and not body & 0x80000000:
                        start = at + 1 + ((body >> 2) & 0x1FFFFFFF)
                        size = ((body >> 32) & 0xFFFF) + (body >> 48)
                        if body >> 32 & 0xFFFF and start + size <= words and 8 * start + 12 <= n:
                            return which, _U32.unpack_from(message, 8 + 8 * start)[0]
    return _classify(message)


def _classify(message: Any) -> tuple[int, int] | None:
    sizes = capnp_frames.segment_sizes(message)
    if sizes is None:
        return None
    head = memoryview(message)[capnp_frames.header_size(len(sizes)) :]
    member = capnp_frames.rpc_member(head, sizes, (_CALL, _RETURN, _BOOTSTRAP), far=False)
    if member is None or member[1] is None:
        return None
    return member  # type: ignore[return-value]


class Count:
    """Bytes of remote messages a node holds (the arithmetic; waiting is the subclass's)."""

    def __init__(self, total: int = BUDGET) -> None:
        self.total = total
        self.used = 0
        self.peak = 0

    def count(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def give(self, n: int) -> None:
        self.used -= n


class Inbound:
    """One stream's bytes from the remote that are not passed on yet (``buf``, all counted in
    ``budget``), its calls passed on and not answered (``held``: question id -> bytes still
    counted), and the clock of the message under way (``began``)."""

    __slots__ = ("budget", "buf", "held", "began", "grace", "rate", "max_message", "max_calls")

    def __init__(
        self,
        budget: Count,
        now: float,
        grace: float = MESSAGE_GRACE,
        rate: float = MIN_RATE,
        max_message: int = MAX_MESSAGE,
        max_calls: int = MAX_CALLS,
    ) -> None:
        self.budget = budget
        self.buf = bytearray()
        self.held: dict[int, int] = {}
        self.began = now  # when the first byte of the message in ``buf`` arrived
        self.grace, self.rate = grace, rate
        self.max_message, self.max_calls = max_message, max_calls

    def deadline(self, now: float, waiting: bool = False) -> float:
        """When the message under way must be in, if a read starting ``now`` (or the last
        byte's arrival) is the last: silent for the grace, or slower than the rate on
        average after it, is too slow.  Infinite for an idle stream: it holds nothing.

        ``waiting``: the stream is not read, for want of room in the node's budget.  The
        silence is then not the remote's (no grace from ``now``), but its message's clock
        runs on: it is due :meth:`within` its length of its first byte, the wait included.
        Otherwise a peer whose partial messages fill the budget (4 streams of just under
        :data:`MAX_MESSAGE`, and one more) would keep them, and every other stream of the
        node waiting, for as long as it stayed connected.  With the clock running, waiting
        buys a peer nothing that sending at :data:`MIN_RATE` does not: its streams are cut
        and their bytes freed.  The cost: an honest message that meets a budget full (the
        node overloaded) may be cut after its allowance; a stream between messages holds
        nothing, is no one's fault and waits on.  Cutting the stream holding the most instead
        was rejected: it needs a view of every stream, and cuts the largest honest message
        arriving at full speed as readily as an attacker's."""
        if not self.buf:
            return _INF
        due = self.began + self.within(len(self.buf))
        return due if waiting else min(now + self.grace, due)

    def within(self, size: int) -> float:
        """Seconds ``size`` bytes may take to move: the grace, then the rate."""
        return self.grace + size / self.rate

    def received(self, data: Any, now: float) -> None:
        """``data`` arrived ``now``: counted until passed on."""
        self.budget.count(len(data))
        if not self.buf:
            self.began = now
        self.buf += data

    def message(self, eof: bool = False) -> tuple[int, bool, int] | None:
        """(size, kept, id) of the whole message at the start of ``buf``, ``kept`` if it is a
        new call or bootstrap (counted until answered); None while it is not all in (or
        ``buf`` is empty).  Raises :class:`ProtocolViolation` for one over the size limit
        (as soon as its header shows it), unreadable, or cut short by the end of the
        stream (``eof``)."""
        buf = self.buf
        size = frame_size(buf)
        if size is not None and size > self.max_message:
            raise ProtocolViolation(f"a message of {size} bytes")
        if size is None or len(buf) < size:
            if eof and buf:
                raise ProtocolViolation("the stream ended inside a message")
            return None
        kind = classify(buf)
        if kind is None:
            raise ProtocolViolation("a message this host cannot read")
        which, ident = kind
        return size, (which == _CALL or which == _BOOTSTRAP) and ident not in self.held, ident

    def full(self) -> bool:
        """A new call must wait: :data:`MAX_CALLS` of the stream's are unanswered.  Nothing
        behind it is read meanwhile, answers to the host's own calls included (KJ's flow
        limit has the same caveat)."""
        return len(self.held) >= self.max_calls

    def passed(self, size: int, kept: bool, ident: int, now: float) -> None:
        """The message at the start of ``buf`` is passed on ``now``: the next message's clock
        starts now (the time this one waited for the host is not the remote's)."""
        del self.buf[:size]  # (consumed, inline: once per message)
        self.began = now
        if kept:
            self.held[ident] = size  # still counted, until our answer leaves
        else:
            self.budget.give(size)

    def hold(self, ident: int, size: int) -> None:
        """A call (or bootstrap) of ``size`` bytes is about to be written on: counted until
        answered from now, since its answer may come back before the write returns (then
        :meth:`consumed`, not :meth:`passed`, once it is written)."""
        self.held[ident] = size

    def consumed(self, size: int, now: float) -> None:
        """The message at the start of ``buf`` is written on, its bytes counted elsewhere
        (:meth:`hold`) or given back by the caller: the next message's clock starts now."""
        del self.buf[:size]
        self.began = now

    def answered(self, ident: int) -> bool:
        """The host's Return to ``ident`` leaves: the call's bytes are no longer counted."""
        size = self.held.pop(ident, None)
        if size is None:
            return False
        self.budget.give(size)
        return True

    def close(self) -> None:
        """The stream is gone: nothing of it counts any more."""
        self.budget.give(len(self.buf) + sum(self.held.values()))
        self.buf.clear()
        self.held.clear()


def too_large(size: int, max_message: int) -> str:
    """Why an answer of ``size`` bytes cuts its stream unsent."""
    return f"an answer of {size} bytes, more than the {max_message} a peer takes"


class Outbound:
    """Looks at the start of each of the host's messages to the remote (its first
    :data:`_PEEK` bytes at most; the rest passes unlooked) for Returns to held calls, and
    refuses a message over ``max_message`` bytes (:class:`ProtocolViolation`: the peer could
    not take it, so it is not sent, nor held)."""

    __slots__ = ("buf", "skip", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.buf = bytearray()  # the start of the host's current message, until classified
        self.skip = 0  # bytes of the current message still to pass without looking
        self.max_message = max_message

    def feed(self, data: Any, inbound: Inbound) -> bool:
        """The host writes ``data``: releases the calls it answers; whether any were.  A
        message whose start is in ``data`` is looked at where it lies; only one that begins
        in pieces (pycapnp writes a message's segment table apart from its segments) is
        collected in ``buf``, and no more of it than :data:`_PEEK` bytes."""
        released = False
        view = memoryview(data)
        n, pos = len(view), 0
        buf = self.buf
        while pos < n:
            if self.skip:
                step = min(self.skip, n - pos)
                self.skip -= step
                pos += step
                continue
            if buf:  # a message begun in an earlier write: add to its start
                buf += view[pos : pos + _PEEK]
                added = min(n - pos, _PEEK)
                pos += added
                at: Any = buf
            elif n - pos < 16 and (
                (whole := frame_size(view[pos:])) is None or whole > n - pos
            ):  # a segment table alone (pycapnp writes it apart): kept (buf never holds
                buf += view[pos:]  # more than the start of one message)
                break
            else:
                at = view[pos:] if pos else view
            size = frame_size(at)
            if size is not None and size > self.max_message:
                raise ProtocolViolation(too_large(size, self.max_message))
            if size is None or len(at) < min(size, _PEEK):
                if at is not buf:  # short of its table or its start: kept (< _PEEK bytes)
                    buf += at
                    pos = n
                continue
            kind = classify(at)  # the start of a long answer is enough
            if kind is not None and kind[0] == _RETURN and inbound.answered(kind[1]):
                released = True
            if at is buf:
                extra = len(buf) - size  # bytes of the next message(s) taken from view
                buf.clear()
                if extra >= 0:
                    pos -= extra  # (less than added: buf held less than this message)
                else:
                    self.skip = -extra
            elif len(at) >= size:
                pos += size
            else:
                self.skip = size - len(at)
                pos = n
        return released


class WriteAge:
    """The bytes a stream wrote lately, for :class:`Answers`' choice of the stream to cut:
    counted in windows of :data:`ANSWER_AGE`, the current one and the one before."""

    __slots__ = ("_at", "_cur", "_prev")

    def __init__(self) -> None:
        self._at = -_INF  # bytes written in the ANSWER_AGE from _at, and the one before
        self._cur = self._prev = 0

    def wrote(self, n: int, now: float) -> None:
        if now - self._at >= ANSWER_AGE:  # a new window of ANSWER_AGE
            self._prev = self._cur if now - self._at < 2 * ANSWER_AGE else 0
            self._cur, self._at = 0, now
        self._cur += n

    def recent(self, now: float) -> int:
        """About the bytes written within the last :data:`ANSWER_AGE` to :data:`ANSWER_AGE`
        x 2 seconds."""
        age = now - self._at
        if age >= 2 * ANSWER_AGE:
            return 0
        return self._cur + (self._prev if age < ANSWER_AGE else 0)


class Answers:
    """The bytes the host has written to a node's remote streams and their peers have not
    taken (the transports' ``get_write_buffer_size``), every stream together: at most
    ``total``.  A write past it cuts off the stream holding the most *old* unsent bytes
    (written over :data:`ANSWER_AGE` ago, about, and recent ones past :data:`MAX_MESSAGE`),
    or when none holds any, the most unsent bytes, until the rest fit.  (Not the most
    unsent alone: a fast honest peer's one big answer, just written, was the most before it
    could take a byte, while a peer holding a little less on each of many streams kept its
    own.)

    Why a cut and not a wait: what waits unsent is the answers of calls the cell has taken
    already (and of their size, which the cell chooses); no longer reading a stream's calls
    stops new ones, but not those, and holding them back in pycapnp moves them into KJ's
    queue, where they are counted nowhere.  Pausing fd 3 would hold up the cell's traffic
    with every other peer.  Why the one holding the most: it frees the most, and an honest
    peer's answers leave at the speed of its link, while a peer that does not take its own
    gathers them; the writer's own stream is that one whenever one stream asks for the
    answers that fill the budget.  The cost: a peer with one big answer under way (a few
    MiB on a slow link) may be cut off while peers holding less each fill the rest of the
    budget, until :data:`MESSAGE_GRACE` cuts those off (their answers do not move).

    The count is kept from above: each write adds its bytes to ``upper`` (the peers take
    bytes without a word to Python); only once ``upper`` passes ``total`` are the streams
    asked, and ``upper`` set to what they hold."""

    def __init__(self, total: int = ANSWER_BUDGET) -> None:
        self.total = total
        self.upper = 0  # at least what the streams hold unsent
        # the streams: lane ones (BoundedProtocol) and spliced ones (SplicedAnswers) alike,
        # each with ``unsent()``, ``age`` (a WriteAge) and ``_violate(why)``
        self.streams: set[Any] = set()
        self.peak = 0  # the most found held at once (when asked)
        self.cut = 0  # streams cut off for it

    def wrote(self, n: int) -> None:
        self.upper += n
        if self.upper > self.total:
            self._settle()

    def _settle(self) -> None:
        held = {p: p.unsent() for p in self.streams}
        used = sum(held.values())
        self.peak = max(self.peak, used)
        if used <= self.total:
            self.upper = used
            return
        now = asyncio.get_running_loop().time()
        # (old bytes, unsent): an answer written a moment ago has not had the time to move;
        # recent bytes past one answer's worth (MAX_MESSAGE) count as old (a burst of them)
        rank = {}
        for p, n in held.items():
            recent = min(n, p.age.recent(now))
            rank[p] = (n - recent + max(0, recent - MAX_MESSAGE), n)
        while used > self.total and held:
            victim = max(rank, key=rank.__getitem__)
            del rank[victim]
            size = held.pop(victim)
            used -= size
            self.cut += 1
            victim._violate(
                f"its peer had not taken {size} bytes of answers, the most of any stream, "
                f"and the node's streams {used + size} (over {self.total >> 20} MiB)"
            )
        self.upper = used


class AsyncBudget(Count):
    """The node's :class:`Count` on an asyncio loop: streams that found it spent wait in
    :meth:`wait` and are called back (soon, not inside :meth:`give`) once it has room.
    ``answers``: the node's :class:`Answers` (what its streams' peers have not taken)."""

    def __init__(self, total: int = BUDGET, answers: int = ANSWER_BUDGET) -> None:
        super().__init__(total)
        self._waiting: list[Any] = []
        self.answers = Answers(answers)

    def wait(self, resume: Any) -> None:
        self._waiting.append(resume)

    def give(self, n: int) -> None:
        self.used -= n
        if self._waiting and self.used < self.total:
            waiting, self._waiting = self._waiting, []
            loop = asyncio.get_running_loop()
            for resume in waiting:
                loop.call_soon(resume)


_budgets: weakref.WeakKeyDictionary[Any, AsyncBudget] = weakref.WeakKeyDictionary()


def loop_budget() -> AsyncBudget:
    """The running loop's :class:`AsyncBudget`: one per loop, for every stream on it."""
    loop = asyncio.get_running_loop()
    budget = _budgets.get(loop)
    if budget is None:
        budget = _budgets[loop] = AsyncBudget()
    return budget


class BoundedProtocol(asyncio.BufferedProtocol):
    """Between an asyncio transport (a lane stream, a socket) and pycapnp's protocol
    (``inner``): passes the remote's messages on whole within the bounds, and pycapnp's
    writes out, releasing calls as their Returns leave.  One loop timer per stream, armed
    only while a message is under way or answers are unsent; a violation aborts the
    transport and tells pycapnp the connection is lost."""

    def __init__(
        self,
        budget: AsyncBudget | None = None,
        grace: float = MESSAGE_GRACE,
        rate: float = MIN_RATE,
        max_message: int = MAX_MESSAGE,
        max_calls: int = MAX_CALLS,
        chunk: int = 64 * 1024,
        pause_writes: bool = True,
        calls_wait: bool = False,
    ) -> None:
        import capnp

        self.loop = asyncio.get_running_loop()
        self.budget = budget if budget is not None else loop_budget()
        self.inner = capnp.lib.capnp._PyAsyncIoStreamProtocol()  # type: ignore[attr-defined]
        self.state = Inbound(self.budget, self.loop.time(), grace, rate, max_message, max_calls)
        self.out = Outbound(max_message)
        self.answers = self.budget.answers
        self.transport: Any = None
        self.violation: str | None = None  # why the stream was cut off, once it is
        self._scratch = bytearray(chunk)
        self._ahead = chunk  # bytes read ahead while whole messages wait for pycapnp
        self._waits = False  # a whole message waits (for pycapnp, or for a call's answer)
        self._cur: tuple[int, bool, int] | None = None  # the message being handed over
        self._handed = 0  # bytes of it pycapnp has taken
        self._wanted = False  # pycapnp has a read outstanding
        self._reading = True  # the transport is reading (we paused it: False)
        self._stalled_at = -1.0  # since when the budget keeps us from reading (-1: not)
        self._last = 0.0  # the last byte's arrival (or the end of a wait for room)
        self._eof = False
        self._eof_given = False
        self._lost = False
        self._pumping = False
        self._again = False
        self._blocked = False  # a new call waits for one of the stream's to be answered
        self._timer: asyncio.TimerHandle | None = None
        self._out_since = -1.0  # since when answers are unsent (-1: none are)
        self._out_bytes = 0  # bytes written since then
        self._draining = False  # closed, its answers still unsent: counted, clocked
        self.age = WriteAge()  # what it wrote lately
        self._pause_writes = pause_writes
        self._calls_wait = calls_wait  # while pycapnp is paused, no new call of the remote's
        self._write_paused = False  # told pause_writing (with calls_wait): no new call passes

    # the transport's side
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._write = transport.write
        self._unsent = transport.get_write_buffer_size  # the answer bounds need it
        self.answers.streams.add(self)
        self.inner.connection_made(_ToRemote(self))
        self._pump()  # not a byte read while the budget is spent, the first included

    def connection_lost(self, exc: Exception | None) -> None:
        # Closed by us (pycapnp's end after the peer's EOF: a FIN behind the answers) with
        # answers still unsent: they stay in the lane's buffers until the peer takes them, so
        # they stay counted and clocked until then (cut: reset, and dropped)
        unsent = self.violation is None and not self._lost and self._unsent()
        self._end(draining=bool(unsent))
        if not self._lost:
            self._lost = True
            self.inner.connection_lost(exc)

    def get_buffer(self, sizehint: int) -> Any:
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        now = self.loop.time()
        self._last = now
        self.state.received(memoryview(self._scratch)[:nbytes], now)
        self._pump()

    def eof_received(self) -> Any:
        self._eof = True
        self._pump()
        return True  # pycapnp is told once every message before the end is handed over

    def pause_writing(self) -> None:
        """The transport holds too much unsent: pycapnp waits (``pause_writes``), or, for the
        host's answers on a served stream, writes on: they stay in the transport, counted in
        the node's :class:`Answers` and clocked (cut, not waited for: see its docstring).
        With ``calls_wait`` (the lane's dialed streams), while pycapnp waits no new call of
        the remote's is read or passed on (its bytes would stay counted in the node's budget
        until its answer leaves, which the pause holds back: a remote that takes nothing
        would hold the budget); the rest is."""
        if self._pause_writes:
            self._write_paused = self._calls_wait
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._pause_writes:
            self._write_paused = False
            self.inner.resume_writing()
            if self._calls_wait and not self._lost:  # a call held back may pass now
                self._blocked = False
                self.loop.call_soon(self._pump)

    # pycapnp's side, through _ToRemote
    def want(self, reading: bool) -> None:
        self._wanted = reading
        if reading and (self.state.buf or self._eof):  # else the last _pump's choices stand
            self._pump()

    def wrote(self, data: Any) -> None:
        if self._lost:
            return
        try:
            released = self.out.feed(data, self.state)
        except ProtocolViolation as e:  # an answer larger than the peer takes: not sent
            self._violate(str(e))
            return
        if released and self._blocked:
            self._blocked = False
            self.loop.call_soon(self._pump)  # the held call may pass now
        self._write(data)
        if self._out_since < 0:
            unsent = self._unsent()
            if unsent:  # answers must move: the first byte within the grace, then the rate
                self._out_since, self._out_bytes = self.loop.time(), unsent
                self._arm(self._out_since + self.state.within(0))
        else:
            self._out_bytes += len(data)
        self.age.wrote(len(data), self.loop.time())
        self.answers.wrote(len(data))

    def unsent(self) -> int:
        """Bytes written to the remote that it has not taken."""
        return self._unsent() if not self._lost or self._draining else 0

    # the bounds
    def _pump(self) -> None:
        """Hand whole messages to pycapnp while it reads; read while a message is short."""
        if self._lost:
            return
        if self._pumping:  # called back from inside (a transport that delivers at once)
            self._again = True
            return
        self._pumping = True
        try:
            again = True
            while again and not self._lost:
                self._again = False
                self._read_or_not(self._hand_over())
                again = self._again
        except ProtocolViolation as e:
            self._violate(str(e))
        finally:
            self._pumping = False

    def _next(self) -> bool:
        """Whether a whole message is ready to pass at the start of the buffer (vetted once,
        then ``_cur``); False while it is short, or a call held back (``_blocked``)."""
        if self._cur is not None:
            return True
        if not self.state.buf:
            return False
        cur = self.state.message(self._eof)
        if cur is None:
            return False
        if cur[1] and (self.state.full() or self._write_paused):
            self._blocked = True
            return False
        self._cur, self._handed = cur, 0
        return True

    def _hand_over(self) -> bool:
        """Whole messages to pycapnp while it reads, as many as its buffer takes at once;
        whether one waits (for pycapnp to read, or for a call to be answered)."""
        state, inner = self.state, self.inner
        while self._wanted and self._next():
            cur = self._cur
            into = inner.get_buffer(cur[0] - self._handed)  # type: ignore[index]
            room, filled = len(into), 0
            while True:
                size, kept, ident = cur  # type: ignore[misc]
                handed = self._handed
                k = min(room - filled, size - handed)
                into[filled : filled + k] = memoryview(state.buf)[handed : handed + k]
                filled += k
                if handed + k < size:
                    self._handed = handed + k
                    break
                self._cur = None
                state.passed(size, kept, ident, self.loop.time())
                if filled >= room or not state.buf or not self._next():
                    break
                cur = self._cur
            if not filled:
                break
            inner.buffer_updated(filled)  # may ask for no more: _wanted False
        return (bool(state.buf) and self._next()) or self._blocked

    def _read_or_not(self, waits: bool) -> None:
        """Read on while no call is held back, the budget has room and, when a whole message
        waits for pycapnp, less than a read's worth is held; its clock runs only while the
        message at the start is short and being read."""
        state = self.state
        self._waits = waits
        if (
            self._blocked
            or (waits and len(state.buf) >= self._ahead)
            or (self._write_paused and starts_call(state.buf))
        ):
            want = False
        elif self.budget.used >= self.budget.total:
            want = False
            if self._stalled_at < 0:
                self._stalled_at = self.loop.time()
                self.budget.wait(self._room)
            if state.buf and not waits:  # a message under way keeps its clock while it waits
                self._arm(state.deadline(self._last, waiting=True))
        else:
            want = True
        if want != self._reading and not self._eof:
            self._reading = want
            if want:
                self._last = self.loop.time()  # the remote's clock runs from now
                # soon, not now: a transport may deliver inside resume_reading (the lane's
                # does), and this may be inside its delivery already
                self.loop.call_soon(self._resume)
            else:
                self.transport.pause_reading()
        if want and state.buf and not waits:  # a message under way: its clock runs
            self._arm(state.deadline(self._last))
        if self._eof and not state.buf and not self._eof_given:
            self._eof_given = True
            if not self.inner.eof_received():
                self.transport.close()

    def _resume(self) -> None:
        if self._reading and not self._lost and not self._eof:
            self.transport.resume_reading()

    def _room(self) -> None:
        if self._lost or self._stalled_at < 0:
            return
        self._last = self.loop.time()  # the silence was not the remote's; its message's clock ran
        self._stalled_at = -1.0
        self._pump()

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._lost and not self._draining:
            return
        now = self.loop.time()
        state = self.state
        due = _INF
        stalled = self._stalled_at >= 0
        if state.buf and (self._reading or stalled) and not self._waits:
            due = state.deadline(self._last, waiting=stalled)
            if now >= due:
                self._violate("a message under way arrived too slowly")
                return
        if self._out_since >= 0:
            unsent = self._unsent()
            if not unsent:
                self._out_since = -1.0
                if self._draining:  # all taken: no longer counted
                    self._draining = False
                    self.answers.streams.discard(self)
            else:  # due by what the peer took (written, less unsent), not by what was written
                out_due = self._out_since + state.within(self._out_bytes - unsent)
                if now >= out_due:
                    self._violate("the host's answers were not taken")
                    return
                due = min(due, out_due)
        if due < _INF:
            self._arm(due)

    def _violate(self, why: str) -> None:
        self.violation = why
        self._end()
        self.transport.abort()
        if not self._lost:
            self._lost = True
            self.inner.connection_lost(ConnectionResetError(why))

    def _end(self, draining: bool = False) -> None:
        self._draining = draining
        if draining:  # the answers' clock runs on; the rest ends
            if self._out_since < 0:
                self._out_since, self._out_bytes = self.loop.time(), self._unsent()
                self._arm(self._out_since + self.state.within(0))
            elif self._timer is None:
                self._arm(self.loop.time())
        else:
            self.answers.streams.discard(self)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._stalled_at = -1.0
        self._cur = None
        self.state.close()


class _ToRemote(TransportProxy):
    """The transport pycapnp's protocol is given: its writes go out through the bounds, its
    requests to read are the :class:`BoundedProtocol`'s to serve, the rest is the transport's."""

    def __init__(self, bounded: BoundedProtocol) -> None:
        self._bounded = bounded
        self._transport = bounded.transport  # is_closing, close, abort, write_eof ...
        self.write = bounded.wrote
        # pycapnp asks to pause after every read: a flag set in C, no Python frame
        self.pause_reading = functools.partial(setattr, bounded, "_wanted", False)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self._bounded.wrote(chunk)

    def resume_reading(self) -> None:
        self._bounded.want(True)


class SplicedAnswers(HeldReads):
    """pycapnp on the host's end of a socketpair spliced to a py-libp2p stream
    (:mod:`ww.p2p.splice`): the answers' bounds of the lane's streams, for the splice's.

    The splice (trio) bounds what the remote sends, and passes the host's answers on only as
    the remote takes them (its Yamux window); what waits meanwhile is on this side.  Here
    pycapnp is never paused for it (asyncio's pause at 64 KiB would only move the answers
    into KJ's queue, where they are counted nowhere, while KJ goes on reading them from fd
    3): they wait in the socket transport's buffer, counted in the node's :class:`Answers`
    (the running loop's, the one the lane's streams count in: one budget for both paths).  A
    write past it cuts off a stream as :class:`Answers` chooses; an answer over
    ``max_message`` cuts its stream unsent.  A cut aborts the socket: the splice sees its end
    and resets the stream (at the latest when its write's clock runs out)."""

    def __init__(self, answers: Answers | None = None, max_message: int = MAX_MESSAGE) -> None:
        super().__init__()
        self.answers = answers if answers is not None else loop_budget().answers
        self.max_message = max_message
        self.violation: str | None = None  # why the stream was cut off, once it is
        self._lost = False
        self._send: Any = None
        self.age = WriteAge()  # what it wrote lately

    def _wrap(self, transport: Any) -> Any:
        self._send = _SplicedSend(transport, self)
        self.answers.streams.add(self)
        return self._send

    def connection_lost(self, exc: Exception | None) -> None:
        self.answers.streams.discard(self)
        if not self._lost:
            self._lost = True
            super().connection_lost(exc)

    def pause_writing(self) -> None:
        pass  # not pycapnp: what waits unsent is bounded by the node's Answers instead

    def resume_writing(self) -> None:
        pass

    def unsent(self) -> int:
        """Bytes written to the splice that it has not taken (the transport's buffer)."""
        return self._transport.get_write_buffer_size() if not self._lost else 0

    def _violate(self, why: str) -> None:
        if self._lost:
            return
        self.violation = why
        self.answers.streams.discard(self)
        self._send.cut()
        self._transport.abort()
        self._lost = True
        self._held.clear()
        self.inner.connection_lost(ConnectionResetError(why))


class _SplicedSend(OneSend):
    """pycapnp's writes to a spliced socket, one message a write (:class:`OneSend`), counted
    in the node's :class:`Answers`; an answer larger than a peer takes is not written."""

    def __init__(self, transport: Any, owner: SplicedAnswers) -> None:
        super().__init__(transport)
        self._owner = owner
        self._wrote = owner.answers.wrote
        self._loop = asyncio.get_running_loop()

    def write(self, data: Any) -> None:
        if self._owner._lost:
            return
        super().write(data)
        self._owner.age.wrote(len(data), self._loop.time())
        self._wrote(len(data))

    def cut(self) -> None:
        self._write = _drop  # the rest of a message under way goes nowhere

    def _large_table(self, table: memoryview, body: int) -> None:
        size = len(table) + body
        if size > self._owner.max_message:  # refused at its table: not a byte of it sent
            self._owner._violate(too_large(size, self._owner.max_message))
        self._write(table)


def _drop(data: Any) -> None:
    pass


async def spliced_capnp(
    sock: Any, answers: Answers | None = None, **limits: Any
) -> tuple[SplicedAnswers, Any]:
    """(protocol, stream): a ``capnp.AsyncIoStream`` on ``sock``, the host's end of a
    socketpair spliced to a py-libp2p stream, with its answers bounded (``protocol``, a
    :class:`SplicedAnswers`; ``answers``: the running loop's when None)."""
    import capnp

    protocol = SplicedAnswers(answers, **limits)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock=sock)
    stream = capnp.AsyncIoStream()
    stream._post_init(protocol.inner)
    return protocol, stream


def bounded_capnp(budget: AsyncBudget | None = None, **limits: Any) -> tuple[Any, Any]:
    """(protocol, stream): attach ``protocol`` to a transport (a lane stream's
    ``attach(protocol, leftover, eof)``, ``loop.create_connection(lambda: protocol, sock=…)``)
    and give ``stream`` (a ``capnp.AsyncIoStream``) to ``capnp.TwoPartyServer`` or
    ``TwoPartyClient``: what the remote sends reaches pycapnp within the bounds.  ``budget``:
    the node's (the running loop's when None); ``limits``: :class:`BoundedProtocol`'s."""
    import capnp

    protocol = BoundedProtocol(budget, **limits)
    stream = capnp.AsyncIoStream()
    stream._post_init(protocol.inner)
    return protocol, stream
