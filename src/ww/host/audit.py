"""The audit trail: one JSON line per login, grant, denial and sub-cell, with ``ww --json``.

Each line is an object with at least ``"ts"`` (Unix time, seconds), ``"event"`` and
``"cell"`` (the pid of the ``ww run`` that serves the cell, which tells nested cells apart).
Events (see docs/auth.md for every field):

``login``         a login succeeded: ``peer`` (null without identity), ``granted``
``login-failed``  a login failed: ``reason``
``grant``         a capability handed out: ``capability``, ``peer``, its attenuations
``denied``        a call refused: ``capability``, ``method``, ``peer``, ``reason``
``spawn``/``exit`` a sub-cell started (``program``, ``args``, ``granted``, ``pid``) or ended

Where the lines go (:func:`open_audit`): with ``ww run --audit FILE`` (or ``WW_AUDIT``) to
FILE, which the host opens with ``O_APPEND|O_CREAT`` (mode 0600 when it creates it) and never
passes to the cell; else, with ``ww --json``, to the host's stderr.  The cell's stderr *is* the
host's stderr, so a cell can write lines there that look like audit lines: only FILE is a
trail the cell cannot forge.  Each line is written whole in one ``write``.  A sub-cell's
``ww run`` appends to the same destination: its parent passes it the fd (``WW_AUDIT_FD``, set
only by a parent host, never by a cell) and it audits whenever that is set.
"""

from __future__ import annotations

import os
import time

from ww.core.errors import UsageError

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from typing import Any

AUDIT_FD_ENV = "WW_AUDIT_FD"


class Audit:
    """Writes audit events as JSON lines to ``fd`` when enabled; does nothing otherwise.

    Through :mod:`ww.host.lines`, the one writer of the lines the host writes for cells on
    the operator's stderr: to a regular file (``--audit FILE``) a line is written at once; to
    anything else (the host's stderr with ``--json``: a terminal, a pipe) it is queued, in
    order with the console's lines, for that module's thread: a write there can wait for as
    long as the terminal's output is stopped, and the cell shares that terminal
    (``tcflow(TCOOFF)``): a cell that stopped it and then made a call that is audited held
    the loop serving fd 3 in ``write`` for good, and `ww run` never exited.  At most 1 MiB
    of lines wait there (more are dropped, and counted in a ``ww:`` line); what waits is
    written at exit.
    """

    def __init__(self, enabled: bool = False, fd: int = 2) -> None:
        self.enabled = enabled
        self.fd = fd
        self._cell = os.getpid()
        self._out = None
        if enabled:
            from ww.host import lines

            self._out = lines.Out(fd)  # what fd is, once: not at each line

    def emit(self, event: str, **fields: Any) -> None:
        if self._out is None:
            return
        import json

        from ww.host import lines

        record = {"ts": round(time.time(), 6), "event": event, "cell": self._cell, **fields}
        lines.put(self._out, (json.dumps(record, separators=(",", ":"), sort_keys=False)
                            + "\n").encode())


def open_audit(json_lines: bool = False, path: str | None = None) -> Audit:
    """The audit trail of one ``ww run``: FILE (``--audit``), else the trail the parent host
    passed down to a sub-cell's ``ww run``, else stderr with ``--json``, else none."""
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise UsageError(f"--audit {path}: cannot open it for appending: {e.strerror}"
                             ) from None
        return Audit(True, fd)
    inherited = _inherited_fd()
    if inherited is not None:
        return Audit(True, inherited)
    return Audit(json_lines, 2)


def _inherited_fd() -> int | None:
    value = os.environ.get(AUDIT_FD_ENV, "")
    if value.isdigit():
        try:
            os.set_inheritable(int(value), False)  # never reaches this host's own cell
            return int(value)
        except OSError:
            pass
    return None


NULL = Audit(False)
