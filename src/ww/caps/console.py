"""The console capability: a cell writes lines on the operator's terminal.

A line goes to the host's stderr through :mod:`ww.host.lines`, the one writer of the lines
the host writes for cells there (console and audit, in the order they were made).  On a
terminal or a pipe it is written by that module's thread, never on the event loop that
serves fd 3: a write there can wait for as long as the terminal's output is stopped, and the
cell holds that terminal too (``tcflow(TCOOFF)``, ^S): a cell that stopped it and then wrote
a line held the loop in ``write`` for good, and `ww run` never exited, SIGTERM or not, the
terminal left stopped.  Now only the line's call waits (it returns once its line is
written); the cell's other calls go on, and when the cell has gone `ww run` restores the
terminal, writes what waits and exits (see that module for how long it waits).  On a
regular file the line is written at once, after what the cell wrote there itself, and
counts against the cell's ``--fsize`` (:func:`ww.host.relay.write_as_cell`).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ww.core.errors import CallError
from ww.host import lines
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
        text = "[cell] " + line.replace("\n", "\\n") + "\n"
        if self._out is not None:
            self._out.write(text)
            self._out.flush()
            return
        data = text.encode(sys.stderr.encoding or "utf-8", sys.stderr.errors or "strict")
        try:
            await lines.write_console(lines.stderr(), data)
        except lines.FileTooLarge:
            raise CallError("console: the host's stderr is a file as large as --fsize lets "
                            "the cell write") from None

    async def ping(self, payload: bytes, **kwargs: Any) -> bytes:
        return payload
