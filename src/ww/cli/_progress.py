"""Progress bars on a terminal, in the spirit of kubo's ``ipfs add`` and ``ipfs get``.

Long work reports how far it has come through :mod:`ww.core.progress` (the IPFS layer
counts; nothing here is known to it).  A :class:`TerminalBar` draws those counts on stderr as
one line redrawn in place -- bytes done of the total, files, blocks fetched from peers, rate
and time left where the total is known -- at most :data:`REDRAWS_PER_SECOND` times a second
from a thread of its own (the work itself only adds to integers), and a last time when the
work ends, so that the final state is always what stays on the screen.

Nothing is drawn when stderr is not a terminal, when the command was told to be quiet
(``-q``, ``--progress=false``), or for work too small to be worth a bar (under
:data:`MIN_BYTES` and :data:`MIN_FILES`); ``rich``, which draws it, is imported only once a
bar is shown.  Never on stdout: it may carry a file's bytes or CIDs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ww.core.progress import Progress, reporting

MIN_BYTES = 8 << 20  # as kubo's `ipfs cat`, no bar for less (its progressBarMinSize)
MIN_FILES = 1000  # ... unless there are this many files
REDRAWS_PER_SECOND = 10


@contextmanager
def progress_bar(label: str, enabled: bool = True, stream: TextIO | None = None, *,
                 data_on_stdout: bool = False) -> Iterator[TerminalBar | None]:
    """A bar for the block's work (in this thread) on ``stream`` (stderr), or None when none
    is to be drawn: ``enabled`` false, the stream not a terminal, or (``data_on_stdout``: the
    work writes a file's bytes to stdout) stdout a terminal too, where the bar would be
    drawn over the data."""
    stream = sys.stderr if stream is None else stream
    if not enabled or not _is_terminal(stream) or (data_on_stdout and _is_terminal(sys.stdout)):
        yield None
        return
    bar = TerminalBar(label, stream)
    finished = False
    try:
        with reporting(bar):
            yield bar
        finished = True
    finally:
        bar.close(finished)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file at all
        return False


class TerminalBar(Progress):
    """Counts reported by the work, drawn once they pass :data:`MIN_BYTES` or
    :data:`MIN_FILES` (expected or done)."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.total_bytes: int | None = None
        self.total_files: int | None = None
        self.bytes = self.files = self.blocks = 0
        self.fetched_blocks = 0
        self._stream = stream
        self._drawn: Any = None  # rich's Progress, once shown
        self._task: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._started = time.monotonic()

    # --- what the work reports (its thread) ---------------------------------------------

    def expect(self, nbytes: int | None = None, files: int | None = None) -> None:
        if nbytes is not None:
            self.total_bytes = nbytes
        if files is not None:
            self.total_files = files
        if self._drawn is None and ((nbytes or 0) >= MIN_BYTES or (files or 0) >= MIN_FILES):
            self._show()

    def advance(self, nbytes: int = 0, files: int = 0, blocks: int = 0) -> None:
        self.bytes += nbytes
        self.files += files
        self.blocks += blocks
        if self._drawn is None and (self.bytes >= MIN_BYTES or self.files >= MIN_FILES):
            self._show()

    def fetched(self, blocks: int, nbytes: int) -> None:
        self.fetched_blocks = blocks

    # --- drawing ------------------------------------------------------------------------

    def info(self) -> str:
        """The counts beside the bytes: files, blocks fetched from peers."""
        parts = []
        if self.total_files is not None:
            parts.append(f"{self.files}/{_count(self.total_files, 'file')}")
        elif self.files:
            parts.append(_count(self.files, "file"))
        elif self.blocks and not self.fetched_blocks:
            parts.append(_count(self.blocks, "block"))
        if self.fetched_blocks:
            parts.append(f"{_count(self.fetched_blocks, 'block')} fetched")
        return "  ".join(parts)

    def _show(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        def cell() -> Column:  # a narrow terminal crops the line: it never wraps
            return Column(no_wrap=True)

        width = _columns(self._stream)
        console = Console(file=self._stream, force_terminal=True, highlight=False, width=width)
        drawn = Progress(
            TextColumn("{task.description}", table_column=cell()),
            BarColumn(bar_width=_bar_width(width), table_column=cell()),
            DownloadColumn(binary_units=True, table_column=cell()),
            TextColumn("{task.fields[info]}", table_column=cell()),
            TextColumn("{task.fields[rate]}", table_column=cell()),
            TimeRemainingColumn(table_column=cell()),
            console=console, auto_refresh=False, transient=False,
            redirect_stdout=False, redirect_stderr=False)
        self._task = drawn.add_task(self.label, total=self.total_bytes, info="", rate="")
        drawn.start()
        self._drawn = drawn
        self._draw()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1 / REDRAWS_PER_SECOND):
            self._draw()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self._started
        rate = self.bytes / elapsed if elapsed > 0 and self.bytes else 0  # the mean so far
        self._drawn.update(self._task, total=self.total_bytes, completed=self.bytes,
                           info=self.info(), rate=f"{_binary(rate)}/s" if rate else "")
        self._drawn.refresh()

    def close(self, finished: bool) -> None:
        """Stop redrawing and draw the final state (the line is left, ended)."""
        if self._drawn is None:
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if finished and self.total_bytes is None:
            self.total_bytes = self.bytes  # done: all there was
        self._draw()
        self._drawn.stop()


def _bar_width(columns: int | None) -> int:
    """The bar's own width: 24 columns, or 10 on a terminal narrower than 100 columns, so
    that on the usual 80 the counts, rate and time left fit beside it."""
    return 24 if columns is None or columns >= 100 else 10


def _columns(stream: TextIO) -> int | None:
    """The width of the terminal ``stream`` is on (rich would ask stdin and stdout first,
    which may be another terminal, or none)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError, AttributeError):
        return None


def _binary(n: float) -> str:
    """``n`` bytes in KiB, MiB, GiB..., as kubo's bars show them."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.1f} {units[i]}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
