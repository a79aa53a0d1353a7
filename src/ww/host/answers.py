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
3's transport after it was produced: its own ``Return``, or bytes written ahead of it, which
then stand for it (the transport writes in order, and what it has taken the cell has read
but for one message and the transport's high-water mark).  Bytes written while no produced
answer waits count for nothing.  An answer larger than the limit is let in alone.

A cell that reads fd 3 frees the budget as it reads; one that waits for an answer reads fd 3
to get it; answers still to be produced never hold the budget.  So the bound costs no
deadlock that fd 3's flow limit does not have already.
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


class Answer:
    """One answer being produced: set :attr:`size` to the bytes it returns (at most what was
    asked for; 0 when it returns nothing large)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class AnswerBudget:
    """:data:`ANSWER_LIMIT` (or ``limit``) bytes of one cell's large answers: :meth:`answer`
    lets a method in, :meth:`wrote` counts the bytes the host writes to fd 3;
    ``on_wait(bytes held)`` is called the first time an answer has to wait."""

    def __init__(self, limit: int = ANSWER_LIMIT,
                 on_wait: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self._on_wait = on_wait
        self.held = 0  # bytes let in and not yet written out
        self._produced: collections.deque[list[int]] = collections.deque()  # bytes to write
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

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
            self._give_back(size)
            raise
        produced = max(0, min(answer.size, size))
        self._give_back(size - produced)
        if produced:
            self._produced.append([produced])

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` were written to fd 3: they stand for the oldest answers produced."""
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

    @asynccontextmanager
    async def answer(self, size: int) -> AsyncIterator[Answer]:
        yield Answer(size)

    def wrote(self, nbytes: int) -> None:
        pass


UNBOUNDED = Unbounded()
