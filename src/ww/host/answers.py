"""The bytes of answers the host may hold for one cell: a budget its large answers wait for.

fd 3's flow limit (:mod:`ww.host.wire`) counts the bytes of the calls a cell has in flight,
not of their answers, and some answers are far larger than their calls: a ``read(4 MiB)`` on
an IPFS ``Reader`` is a call of about 100 bytes.  A cell that sends many such calls and never
reads fd 3 made the host produce every answer and hold it (in KJ's queue, behind the first
answers the socket could not take) until the memory guard hung up fd 3: 128 reads of 4 MiB
grew the host by 571 MiB before it did.

So a capability method whose answer may be large (and is not bounded by its call's size)
takes its size from the cell's :class:`AnswerBudget` before producing it (:meth:`answer`):
while the answers produced and not yet written to fd 3 are over :data:`ANSWER_LIMIT`, it
waits (flow control: the cell's other calls go on, and no call fails).  An answer counts
from the moment its method is let in until as many bytes as it has have been written to fd
3's transport after it was produced, in Returns larger than their calls (counted by
fd 3's flow limit as they leave): its own, or others written ahead of it, which then stand
for it (the transport writes in order, and what it has taken the cell has read but for one
message and the transport's high-water mark).  Other bytes never stand for an answer: an
echo's ``Return`` (a ping's, as large as its call, the flow limit's share) written while
answers were queued behind it let as many bytes of answers in again each time: eight
pings of 10 MiB made the host hold 24 to 36 MiB of answers the budget counted as 16.
Bytes written while no produced answer waits count for nothing.  An answer larger than the
limit is let in alone.  An answer whose ``Return`` never carries it (the cell cancelled the
call after its method returned) is let go once writes have gone unpaused for
:data:`SETTLE_TURNS` turns of the loop while answers wait (:meth:`AnswerBudget._sweep_soon`).

A cell that reads fd 3 frees the budget as it reads; one that waits for an answer reads fd 3
to get it; an answer waiting for room holds none of it.  So the bound costs no deadlock that
fd 3's flow limit does not have already.  An answer let in holds its share while it is
produced, though: reads waiting on the network (a block no peer sends) can make the cell's
other large answers wait until they end or the cell cancels them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

ANSWER_LIMIT = 16 * 1024 * 1024
"""Bytes of large answers one cell can make the host hold at once: produced, or being
produced, and not yet written to fd 3's transport.  The SDK keeps 8 reads of 1 MiB in flight
per stream, so two streams read at full speed; more wait their turn."""
SETTLE_TURNS = 4
"""Turns of the event loop within which KJ writes an answer its method has returned, while
pycapnp's writes are not paused: the task's end, its done-callback fulfilling KJ's promise,
KJ's run, and one to spare."""


class Answer:
    """One answer being produced: set :attr:`size` to the bytes it returns (at most
    :attr:`taken`, what it holds of the budget; 0 when it returns nothing large)."""

    __slots__ = ("size", "taken")

    def __init__(self, size: int) -> None:
        self.size = size
        self.taken = size


class AnswerBudget:
    """:data:`ANSWER_LIMIT` (or ``limit``) bytes of one cell's large answers: :meth:`answer`
    lets a method in, :meth:`wrote` counts the Returns the host writes to fd 3;
    ``on_wait(bytes held)`` is called the first time an answer has to wait."""

    def __init__(self, limit: int = ANSWER_LIMIT,
                 on_wait: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self._on_wait = on_wait
        self.held = 0  # bytes let in and not yet written out
        # answers produced: [bytes still to be written, serial], oldest first
        self._produced: collections.deque[list[int]] = collections.deque()
        self._serial = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._paused = False  # pycapnp's writes are paused: the socket has all it takes
        self._pauses = 0  # how many times they were
        self._sweeping = False

    @asynccontextmanager
    async def answer(self, size: int) -> AsyncIterator[Answer]:
        """Waits until ``size`` more bytes fit (first come, first served), then holds them
        while the block produces the answer; the answer's :attr:`Answer.size` stays held
        until that many bytes are written (:meth:`wrote`).  An error gives it all back."""
        await self._admit(size)
        answer = Answer(size)
        try:
            yield answer
        except BaseException:
            self._give_back(answer.taken)
            raise
        produced = max(0, min(answer.size, answer.taken))
        if produced:
            self._serial += 1
            self._produced.append([produced, self._serial])
        self._give_back(answer.taken - produced)
        self._sweep_soon()

    def grow(self, answer: Answer, size: int) -> bool:
        """Let ``answer``, being produced, hold ``size`` bytes in all if they fit now, as
        :meth:`answer` would let them in without waiting (no answer waits for room, and they
        fit or it is alone); False, and nothing changes, otherwise.  Never waits: an answer
        that waited while it held its share could wait on another doing the same."""
        more = size - answer.taken
        if more <= 0:
            return True
        if self._waiting or (self.held != answer.taken and self.held + more > self.limit):
            return False
        self.held += more
        answer.taken = size
        return True

    def wrote(self, nbytes: int) -> None:
        """A ``Return`` of ``nbytes``, larger than its call, was written to fd 3: its bytes
        stand for the oldest answers produced."""
        produced = self._produced
        if not produced:
            return
        freed = 0
        while nbytes and produced:
            head = produced[0]
            take = min(nbytes, head[0])
            head[0] -= take
            nbytes -= take
            freed += take
            if not head[0]:
                produced.popleft()
        self._give_back(freed)

    def writing_paused(self) -> None:
        """fd 3's transport has more than it takes at once: pycapnp's writes wait."""
        self._paused = True
        self._pauses += 1

    def writing_resumed(self) -> None:
        self._paused = False
        self._sweep_soon()

    def _sweep_soon(self) -> None:
        """An answer's ``Return`` may never be written: the cell cancelled the call after its
        method returned and before KJ sent it (KJ then sends a ``Return`` saying so).  Its
        bytes would stay held for good, and a cell whose reads all wait on them would wait
        for ever.  So while answers wait, those produced :data:`SETTLE_TURNS` turns of the
        loop ago or more are let go once pycapnp's writes went unpaused throughout: KJ
        writes all it has each time it runs (once a turn at the least), and asyncio's
        transport pauses them as soon as it holds more than its high-water mark, so their
        bytes have left (or never will)."""
        if self._sweeping or self._paused or not self._waiting or not self._produced:
            return
        self._sweeping = True
        mark, pauses = self._serial, self._pauses
        loop = asyncio.get_running_loop()

        def turn(left: int) -> None:
            if self._pauses != pauses:  # paused meanwhile: writing_resumed starts over
                self._sweeping = False
                return
            if left:
                loop.call_soon(turn, left - 1)
                return
            self._sweeping = False
            produced, freed = self._produced, 0
            while produced and produced[0][1] <= mark:
                freed += produced.popleft()[0]
            self._give_back(freed)
            self._sweep_soon()

        loop.call_soon(turn, SETTLE_TURNS)

    async def _admit(self, size: int) -> None:
        if not self._waiting and (self.held == 0 or self.held + size <= self.limit):
            self.held += size
            return
        if self._on_wait is not None:
            on_wait, self._on_wait = self._on_wait, None  # reported once per cell
            on_wait(self.held)
        future = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiting.append(entry)
        self._sweep_soon()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._give_back(size)  # let in as it was cancelled: not used
            else:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                self._wake()  # whoever waited behind it may fit now
            raise

    def _give_back(self, size: int) -> None:
        if size:
            self.held -= size
            self._wake()

    def _wake(self) -> None:
        waiting = self._waiting
        while waiting:
            size, future = waiting[0]
            if future.done():  # cancelled: its waiter takes itself out
                waiting.popleft()
                continue
            if self.held and self.held + size > self.limit:
                return
            waiting.popleft()
            self.held += size
            future.set_result(None)


class Unbounded(AnswerBudget):
    """No budget: for a capability server that serves no cell's fd 3 (tests, tools)."""

    def writing_paused(self) -> None:
        pass

    def writing_resumed(self) -> None:
        pass

    @asynccontextmanager
    async def answer(self, size: int) -> AsyncIterator[Answer]:
        yield Answer(size)

    def grow(self, answer: Answer, size: int) -> bool:
        answer.taken = max(answer.taken, size)
        return True

    def wrote(self, nbytes: int) -> None:
        pass


UNBOUNDED = Unbounded()
