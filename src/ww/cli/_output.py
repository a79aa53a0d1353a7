"""Writing a command's output: kubo's aligned columns, and a reader that went away.

``ww cat … | head -c1`` closes the pipe early: the write fails with EPIPE, and the command
ends quietly with the status a program killed by SIGPIPE has (128 + 13), as kubo's does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

EXIT_BROKEN_PIPE = 128 + 13


def columns(rows: Iterable[Sequence[str]]) -> list[str]:
    """``rows`` as lines whose cells are padded to a common width plus one space, the last
    cell of each row as it is (what Go's tabwriter makes of kubo's tab-separated output)."""
    rows = [list(row) for row in rows]
    widths: list[int] = []
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
