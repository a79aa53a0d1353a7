"""Writing a command's output: kubo's aligned columns, and a reader that went away.

``ww cat … | head -c1`` closes the pipe early: the write fails with EPIPE, and the command
ends quietly with the status a program killed by SIGPIPE has (128 + 13), as kubo's does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from ww.core.errors import OutputError

EXIT_BROKEN_PIPE = 128 + 13


def columns(rows: Iterable[Sequence[str]], widths: list[int] | None = None) -> list[str]:
    """``rows`` as lines whose cells are padded to a common width plus one space, the last
    cell of each row as it is (what Go's tabwriter makes of kubo's tab-separated output).

    ``widths``, if given, are the columns' widths so far and are widened in place: rows
    printed a batch at a time line up with every batch before (never narrower)."""
    rows = [list(row) for row in rows]
    widths = [] if widths is None else widths
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    return ["".join(cell.ljust(widths[i] + 1) for i, cell in enumerate(row[:-1])) + row[-1]
            for row in rows]


def reader_gone() -> int:
    """After EPIPE on stdout: point stdout at /dev/null, so that flushing what is still
    buffered on the way out fails no more, and give the status to exit with."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass
    return EXIT_BROKEN_PIPE


def binary_stdout() -> BinaryIO:
    """stdout for bytes, or :class:`OutputError` when the caller closed it (``>&-``): Python
    then has no ``sys.stdout`` at all."""
    if sys.stdout is None:
        raise OutputError("cannot write to stdout: it is closed")
    return sys.stdout.buffer


def write_out(out: BinaryIO, data: bytes | None = None) -> None:
    """Write ``data`` to ``out`` (with None: flush it); a failure other than EPIPE (which
    the command turns into :func:`reader_gone`) is one :class:`OutputError` line: a full
    disk, an I/O error, a descriptor not open for writing."""
    try:
        if data is None:
            out.flush()
        else:
            out.write(data)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to stdout: {e.strerror or e}") from None
