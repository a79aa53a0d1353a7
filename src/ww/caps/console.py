"""The console capability: a cell writes lines on the operator's terminal."""

from __future__ import annotations

import sys
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
        # One write per line so lines from concurrent cells do not interleave mid-line.
        out.write("[cell] " + line.replace("\n", "\\n") + "\n")
        out.flush()

    async def ping(self, payload: bytes, **kwargs: Any) -> bytes:
        return payload
