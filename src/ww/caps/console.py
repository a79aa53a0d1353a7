"""The console capability: a cell writes lines on the operator's terminal."""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
from typing import Any, TextIO

from ww.core.errors import CallError
from ww.schema import load

_cell = load("cell")

MAX_LINE = 64 * 1024


class ConsoleServer(_cell.Console.Server):  # type: ignore[name-defined,misc]
    """Writes ``[cell] <line>`` on the host's stderr; ``ping`` echoes its payload."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    async def println(self, line: str, **kwargs: Any) -> None:
        if len(line) > MAX_LINE:
            raise CallError(f"console line too long ({len(line)} > {MAX_LINE} characters)")
        out = self._out or sys.stderr
        if out is sys.stderr:
            # What the cell wrote on its own stderr first reaches the file first, when
            # that is a file ww relays for it.
            from ww.host import relay

            relay.flush_into(2)
        text = "[cell] " + line.replace("\n", "\\n") + "\n"
        if out is sys.stderr and _on_terminal():
            # A cell can stop the terminal's output (tcflow(TCOOFF), or a STOP character
            # of its choosing the operator then types), and a write there waits until it
            # flows again: written on the event loop, it held `ww run` for ever, the
            # cell's exit unseen and ^C forwarded to no one.  The writer thread waits
            # instead, and this call with it; `ww run` restarts the output once the cell
            # has exited.
            await _terminal_writer().write(text.encode())
            return
        # One write per line so lines from concurrent cells do not interleave mid-line.
        out.write(text)
        out.flush()

    async def ping(self, payload: bytes, **kwargs: Any) -> bytes:
        return payload


def _on_terminal() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False


class _TerminalWriter:
    """Lines for the terminal on stderr, written in order by a daemon thread of their own."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[bytes, asyncio.AbstractEventLoop,
                                       asyncio.Future[None]]] = queue.Queue()
        threading.Thread(target=self._run, name="ww-console", daemon=True).start()

    def drain(self) -> None:
        self._queue.join()

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((data, loop, done))
        await done

    def _run(self) -> None:
        while True:
            data, loop, done = self._queue.get()
            try:
                self._write(data, loop, done)
            finally:
                self._queue.task_done()

    @staticmethod
    def _write(data: bytes, loop: asyncio.AbstractEventLoop,
               done: asyncio.Future[None]) -> None:
        sys.stderr.flush()  # what the host wrote there itself first
        while data:
            try:
                data = data[os.write(2, data):]
            except InterruptedError:
                continue
            except OSError:
                break
        try:
            loop.call_soon_threadsafe(_settle, done)
        except RuntimeError:  # the loop is closed: no one waits any more
            pass


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


_writer: _TerminalWriter | None = None


def _terminal_writer() -> _TerminalWriter:
    global _writer
    if _writer is None:
        _writer = _TerminalWriter()
    return _writer


def drain() -> None:
    """Wait until every console line is written (``ww`` exits with ``os._exit``, after the
    terminal is put back, so a line the cell's stopped output held back is written)."""
    if _writer is not None:
        _writer.drain()
