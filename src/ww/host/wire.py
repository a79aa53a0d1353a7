"""The host's end of a Cap'n Proto connection, sending each error's reason exactly as written.

pycapnp turns an exception raised by a server method into ``KJ_EXCEPTION(FAILED, message)``,
and KJ writes such an exception's description as ``message = <text>``: every error the host
answers a cell with would reach it as ``message = capability denied: …`` instead of the
documented ``capability denied: …``.  pycapnp offers no hook for that description, so
:func:`connect` sits between pycapnp and the socket: a ``Return`` message carrying an
exception whose reason starts with that prefix is re-encoded without it.  Every other byte
passes through unchanged, in order.

A cell's Cap'n Proto library shows the reason as it arrived (KJ, in C++ and pycapnp, puts
``remote exception: `` before it in the local description).

The same wrapper bounds the calls a cell has in flight (:data:`FLOW_LIMIT`), which is what
C++'s ``RpcSystem::setFlowLimit`` does and pycapnp does not offer: the incoming byte stream is
cut into messages too, each ``Call``'s size (and each ``Bootstrap``'s) is counted against
its question id until the host writes the ``Return`` with that answer id, and while the total
is over the limit the host stops reading fd 3.  The cell's writes then block in its own
socket: pushback, not failure.

pycapnp's protocol asks its transport to pause after every read and to resume on its next:
two ``epoll_ctl`` calls per message.  The host does not pass those on: fd 3 is read while
pycapnp has no read pending too, what comes held for pycapnp's next read (once
:data:`HOLD` bytes wait, fd 3 is really paused: fewer than HOLD and one read), and only
the flow limit, or that bound, pauses the socket.  Each small message leaves with one
``send``.  Both are :mod:`ww.core.capnp_stream`'s, shared with the cell SDK's end of fd 3;
this module adds the exact reasons and the flow limit through its hooks.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import capnp

from ww.core import capnp_frames
from ww.core.capnp_stream import HOLD as HOLD  # re-exported: the bound on held bytes
from ww.core.capnp_stream import WHOLE, HeldReads, OneSend
from ww.host.answers import UNBOUNDED, AnswerBudget

PYCAPNP_PREFIX = "message = "
_PREFIX_BYTES = PYCAPNP_PREFIX.encode()
MAX_INSPECTED = WHOLE
"""Messages up to this size (written whole, :mod:`ww.core.capnp_stream`) are looked at; an
exception's one-line reason is far smaller, and anything larger (a chunk of a file) streams
through without being held back."""

FLOW_LIMIT = 32 * 1024 * 1024
"""Bytes of calls a cell may have sent that the host has not answered before the host stops
reading its connection (C++ Cap'n Proto's ``RpcSystem::setFlowLimit``).  KJ's caveat: while
over the limit nothing is read, Returns and Finishes included, so a call that can complete
only after the host reads another message from the cell (a login waiting on the cell's
``Signer``, a call into a capability the cell exported) cannot complete; "a sufficiently
high limit should make this unlikely".  The SDK keeps 8 writes of 1 MiB in flight per add, a
raw client of the tests 256 writes of 64 KiB (16 MiB): twice that leaves room for an honest
cell's other calls, and bounds what one cell can pin in the host to a few dozen MiB.  Calls
that the host answers on its own (all of its capabilities' calls) only pause the cell for as
long as they take."""
RESUME_AT = FLOW_LIMIT // 2
"""Reading resumes once the total of unanswered calls is down to this, so that a cell
writing flat out is paused and resumed a few times per 16 MiB, not per message."""
CALL_FLOOR = 4096
"""What a call counts at the least: a call the host has not answered costs it a coroutine and
RPC bookkeeping whatever its size, so many tiny calls (100k pings queued behind a promise)
are bounded too, to FLOW_LIMIT / CALL_FLOOR = 8192 at once, far more than any cell needs."""
HEAD = 4096
"""Bytes of each message's segments kept to find its kind and question/answer id: every
encoder puts the root and the call/return struct first; a message that points past these
bytes is counted as a call that never returns (a cell that does that only stalls itself)."""

CALL, RETURN, OTHER, UNSURE = range(4)

_rpc: Any = None
_ASKED = (capnp_frames.CALL, capnp_frames.RETURN, capnp_frames.BOOTSTRAP)


def _rpc_schema() -> Any:
    global _rpc
    if _rpc is None:
        package = Path(capnp.__file__).resolve().parent  # pycapnp ships rpc.capnp and c++.capnp
        _rpc = capnp.load(str(package / "rpc.capnp"), imports=[str(package.parent)])
    return _rpc


def exact_reason(message: bytes) -> bytes:
    """``message`` (one framed Cap'n Proto message) with pycapnp's prefix taken off the reason
    of the exception it returns, if it is such a message; otherwise ``message`` itself."""
    if _PREFIX_BYTES not in message:
        return message
    try:
        with _rpc_schema().Message.from_bytes(message) as reader:
            if reader.which() != "return":
                return message
            returned = getattr(reader, "return")
            if returned.which() != "exception":
                return message
            reason = returned.exception.reason
            if not reason.startswith(PYCAPNP_PREFIX):
                return message
            builder = reader.as_builder()
        getattr(builder, "return").exception.reason = reason[len(PYCAPNP_PREFIX):]
        return bytes(builder.to_bytes())
    except Exception:  # noqa: BLE001 - this runs inside pycapnp's write: never raise there
        return message  # not something to rewrite: pass it on as it was


def classify(head: bytes, sizes: list[int]) -> tuple[int, int]:
    """(kind, id) of a Cap'n Proto RPC message from its segment sizes (in words) and the
    first bytes of its segments: (CALL, question id), (RETURN, answer id), (OTHER, 0), or
    (UNSURE, 0) when ``head`` does not show which, read as Cap'n Proto readers do (a field
    past a struct's end, or behind a null pointer, is 0).  A ``Bootstrap`` is a CALL with its
    question id: KJ keeps an answer and sends a ``Return`` for it as for a call, so a cell
    sending bootstraps it never reads the answers to must meet the flow limit too."""
    member = capnp_frames.rpc_member(head, sizes, _ASKED)
    if member is None:
        return UNSURE, 0
    which, ident = member
    if which == capnp_frames.CALL or which == capnp_frames.BOOTSTRAP:
        return CALL, ident or 0
    if which == capnp_frames.RETURN:
        return RETURN, ident or 0
    return OTHER, 0


def _framer(on_message: Callable[[int, int, int], None]) -> capnp_frames.Framer:
    """Cuts a stream into messages classified as :func:`classify` does from their first
    :data:`HEAD` bytes (in C: the kinds given, a Bootstrap a CALL, not the function); a
    stream past Cap'n Proto's segment limit is all UNSURE."""
    return capnp_frames.Framer(on_message, (CALL, RETURN, OTHER, CALL), UNSURE, HEAD)


class FlowLimit:
    """The calls one peer has in flight: :meth:`received` counts each incoming message,
    :meth:`sent` each outgoing one; ``pause``/``resume`` are called when the total of
    unanswered calls passes ``limit`` and falls back to ``resume_at``."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 limit: int = FLOW_LIMIT, resume_at: int = RESUME_AT,
                 answered: Callable[[int], None] | None = None) -> None:
        self._pause, self._resume = pause, resume
        self.limit, self.resume_at = limit, resume_at
        self._answered = answered
        # question id -> [bytes its call(s) count for, bytes they really had]
        self.in_flight: dict[int, list[int]] = {}
        self.total = 0  # bytes of unanswered calls, those never to be answered included
        self.paused = False
        self.incoming = _framer(self._received)
        self.outgoing = _framer(self._sent)

    def _received(self, kind: int, ident: int, size: int) -> None:
        if kind == CALL:
            asked = size
            size = max(size, CALL_FLOOR)
            call = self.in_flight.get(ident)
            if call is None:
                self.in_flight[ident] = [size, asked]
            else:  # a question id used twice: the calls add up
                call[0] += size
                call[1] += asked
        elif kind != UNSURE:
            return
        self.total += size  # an UNSURE message is never answered: it stays counted
        if self.total > self.limit and not self.paused:
            self.paused = True
            self._pause()

    def _sent(self, kind: int, ident: int, size: int) -> None:
        if kind != RETURN:
            return
        call = self.in_flight.pop(ident, None)
        if call is not None:
            self.total -= call[0]
            if self._answered is not None and size > call[1]:
                self._answered(size)  # an answer larger than its call: see ww.host.answers
        if self.paused and self.total <= self.resume_at:
            self.paused = False
            self._resume()


class _ExactReasons(OneSend):
    """Wraps an asyncio transport: each small message written with one send, as
    :class:`~ww.core.capnp_stream.OneSend` does, rewritten first if :func:`exact_reason` says
    to.  With a :class:`FlowLimit`, each Return is counted as it leaves: a small message is
    classified whole, here; a large one goes through the limit's outgoing framer as it
    streams by."""

    def __init__(self, transport: asyncio.Transport, flow: FlowLimit | None = None) -> None:
        super().__init__(transport)
        self._framed = False  # the current large message is fed to the flow limit's framer
        self._flow = flow

    def _whole(self, message: bytes, table: int, sizes: Any) -> None:
        self._write(exact_reason(message))
        if self._flow is not None:
            self._count(message, table, sizes)

    def _large_table(self, table: memoryview, body: int) -> None:
        self._write(table)
        self._framed = self._flow is not None and body > 0  # no segments: not a Return
        if self._framed:
            self._flow.outgoing.feed(table)  # type: ignore[union-attr]

    def _large_piece(self, piece: memoryview) -> None:
        self._write(piece)
        if self._framed:
            self._flow.outgoing.feed(piece)  # type: ignore[union-attr]

    def _count(self, message: bytes, table: int, sizes: Any) -> None:
        """A whole small message left: if it is a Return, its call is answered."""
        try:
            kind, ident = classify(message[table:table + HEAD], list(sizes))
        except Exception:  # noqa: BLE001 - this runs inside pycapnp's write: never raise there
            return  # an unreadable message releases nothing
        if kind == RETURN:
            self._flow._sent(kind, ident, len(message))  # type: ignore[union-attr]


class _Connection(HeldReads):
    """Between asyncio's socket transport and pycapnp's protocol: pycapnp's own requests to
    pause and resume kept from the socket, as :class:`~ww.core.capnp_stream.HeldReads`
    does; sees every incoming byte for the :class:`FlowLimit`, and keeps reading paused
    while the cell's calls in flight are over it, whatever pycapnp asks."""

    def __init__(self, on_pause: Callable[[int], None] | None = None,
                 limit: int = FLOW_LIMIT, answers: AnswerBudget = UNBOUNDED) -> None:
        super().__init__()
        self._on_pause = on_pause
        # The Returns larger than their calls free the cell's AnswerBudget as they leave.
        self.flow = FlowLimit(self._pause, self._gate, limit, limit // 2, answers.wrote)
        self.answers = answers

    def _wrap(self, transport: Any) -> Any:
        return _ExactReasons(transport, self.flow)

    def _seen(self, data: memoryview) -> None:
        try:
            self.flow.incoming.feed(data)
        except Exception:  # noqa: BLE001 - a bug here must not open the gate: stop counting
            self.flow.incoming.broken = True
            self.flow._received(UNSURE, 0, len(data))  # and all that follows

    def _may_read(self) -> bool:
        return not self.flow.paused

    def pause_writing(self) -> None:
        self.answers.writing_paused()
        super().pause_writing()

    def resume_writing(self) -> None:
        self.answers.writing_resumed()
        super().resume_writing()

    def _pause(self) -> None:
        self._gate()
        if self._on_pause is not None:
            on_pause, self._on_pause = self._on_pause, None  # reported once per connection
            on_pause(self.flow.total)


async def connect(sock: socket.socket, on_pause: Callable[[int], None] | None = None,
                  answers: AnswerBudget = UNBOUNDED) -> Any:
    """A pycapnp stream on ``sock`` whose exceptions carry their reason without pycapnp's
    ``message = `` prefix (what ``capnp.AsyncIoStream.create_connection(sock=…)`` gives,
    plus that), which stops reading while the peer's calls in flight are over
    :data:`FLOW_LIMIT`; ``on_pause(bytes in flight)`` is called the first time it does.
    Its Returns larger than their calls free ``answers`` (:mod:`ww.host.answers`)."""
    _rpc_schema()  # loaded here, where a failure can be reported, not inside a write
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: _Connection(on_pause, answers=answers), sock=sock)
    stream = capnp.AsyncIoStream()
    stream._post_init(connection.inner)
    return stream
