"""The console capability: a cell writes lines on the operator's terminal.

A line is written on the host's stderr in a thread of its own, never on the event loop that
serves fd 3: a write there can wait for as long as the terminal's output is stopped, and the
cell holds that terminal too (``tcflow(TCOOFF)``, ^S): a cell that stopped it and then wrote
a line held the loop in ``write`` for good, and `ww run` never exited, SIGTERM or not, the
terminal left stopped.  Now only the line's call waits; the cell's other calls go on, and
when the cell has gone `ww run` restores the terminal, writes what waits (:func:`drain`)
and exits.  One line at a time: the next waits for the thread of the last, even one whose
call was cancelled, so a cell makes at most one such thread.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any, TextIO

from ww.core import bridge
from ww.core.errors import CallError
from ww.schema import load

_cell = load("cell")

MAX_LINE = 64 * 1024


class ConsoleServer(_cell.Console.Server):  # type: ignore[name-defined,misc]
    """Writes ``[cell] <line>`` on the host's stderr; ``ping`` echoes its payload."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out
        self._order = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None  # the last line's thread

    async def println(self, line: str, **kwargs: Any) -> None:
        if len(line) > MAX_LINE:
            raise CallError(f"console line too long ({len(line)} > {MAX_LINE} characters)")
        text = "[cell] " + line.replace("\n", "\\n") + "\n"
        if self._out is not None:
            self._out.write(text)
            self._out.flush()
            return
        data = text.encode(sys.stderr.encoding or "utf-8", sys.stderr.errors or "strict")
        async with self._order:
            if self._writing is not None:  # (its call may have been cancelled)
                await asyncio.wait([self._writing])
            # What the cell wrote on its own stderr first reaches the file first, when
            # that is a file ww relays for it.
            from ww.host import relay

            relay.flush_into(2)
            _handed()
            writing = self._writing = bridge.in_new_thread(
                asyncio.get_running_loop(), "ww-console", _write_all, data)
            writing.add_done_callback(_seen)  # its error is its call's, if still there
            await asyncio.shield(writing)

    async def ping(self, payload: bytes, **kwargs: Any) -> bytes:
        return payload


_unwritten = threading.Condition()
_lines = 0  # lines handed to a thread and not yet written (or failed)


def _handed() -> None:
    global _lines
    with _unwritten:
        _lines += 1


def _write_all(data: bytes) -> None:
    """A thread: ``data`` on the host's stderr, in one write where it fits, so lines from
    concurrent cells do not interleave mid-line."""
    global _lines
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(2, view):]
    finally:
        with _unwritten:
            _lines -= 1
            _unwritten.notify_all()


def drain() -> None:
    """At exit: wait until every line is written (the terminal is restored by then, so a
    line a cell held back by stopping its output goes out)."""
    with _unwritten:
        _unwritten.wait_for(lambda: _lines <= 0)


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
