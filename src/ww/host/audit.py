"""The audit trail: one JSON line per login, grant, denial and sub-cell, with ``ww --json``.

Each line is an object with at least ``"ts"`` (Unix time, seconds), ``"event"`` and
``"cell"`` (the pid of the ``ww run`` that serves the cell, which tells nested cells apart).
Events (see docs/auth.md for every field):

``login``         a login succeeded: ``peer`` (null without identity), ``granted``
``login-failed``  a login failed: ``reason``
``grant``         a capability handed out: ``capability``, ``peer``, its attenuations
``denied``        a call refused: ``capability``, ``method``, ``peer``, ``reason``
``spawn``/``exit`` a sub-cell started (``program``, ``args``, ``granted``, ``pid``) or ended

Lines go to the host's stderr, written whole in one ``write`` so that they never interleave
with the cell's own lines.  A sub-cell's ``ww run`` writes to the same stream: its parent
passes it the fd (``WW_AUDIT_FD``, set only by a parent host, never by a cell).
"""

from __future__ import annotations

import os
import time
from typing import Any

AUDIT_FD_ENV = "WW_AUDIT_FD"


class Audit:
    """Writes audit events as JSON lines when enabled; does nothing otherwise."""

    def __init__(self, enabled: bool = False, fd: int | None = None) -> None:
        self.enabled = enabled
        self.fd = fd if fd is not None else _inherited_fd()
        self._cell = os.getpid()

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        import json

        record = {"ts": round(time.time(), 6), "event": event, "cell": self._cell, **fields}
        line = json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n"
        try:
            os.write(self.fd, line.encode())
        except OSError:
            pass  # the operator's terminal went away; the cell's work goes on


def _inherited_fd() -> int:
    value = os.environ.get(AUDIT_FD_ENV, "")
    if value.isdigit():
        try:
            os.fstat(int(value))
            return int(value)
        except OSError:
            pass
    return 2


NULL = Audit(False)
