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

    To a regular file (``--audit FILE``) a line is written at once.  To anything else (the
    host's stderr with ``--json``: a terminal, a pipe) it is handed to a thread of its own
    (:class:`_Lines`): a write there can wait for as long as the terminal's output is stopped,
    and the cell shares that terminal (``tcflow(TCOOFF)``): a cell that stopped it and then
    made a call that is audited held the loop serving fd 3 in ``write`` for good, and `ww run`
    never exited.  :func:`drain` (at exit) writes what is still waiting.
    """

    def __init__(self, enabled: bool = False, fd: int = 2) -> None:
        self.enabled = enabled
        self.fd = fd
        self._cell = os.getpid()
        self._lines: _Lines | None = None

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        import json

        record = {"ts": round(time.time(), 6), "event": event, "cell": self._cell, **fields}
        line = (json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n").encode()
        if self._lines is None:
            import stat

            try:
                regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
            except OSError:
                return  # the operator's terminal went away; the cell's work goes on
            if regular:
                _write(self.fd, line)
                return
            self._lines = _Lines(self.fd)
        self._lines.put(line)


def _write(fd: int, line: bytes) -> None:
    try:
        os.write(fd, line)
    except OSError:
        pass  # the operator's terminal went away; the cell's work goes on


class _Lines:
    """Audit lines for an fd whose writes may wait (a terminal, a pipe), written in order by
    a daemon thread.  At most :data:`MAX_WAITING` bytes wait: past that a line is dropped,
    and how many were is said once the thread can write again."""

    def __init__(self, fd: int) -> None:
        import collections
        import threading

        self.fd = fd
        self._waiting: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._dropped = 0
        self._busy = False  # the thread holds a line it has not written yet
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="ww-audit", daemon=True).start()
        _all.append(self)

    def put(self, line: bytes) -> None:
        with self._cond:
            if self._size + len(line) > MAX_WAITING:
                self._dropped += 1
                return
            self._waiting.append(line)
            self._size += len(line)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                self._busy = True
                line = self._waiting.popleft()
                self._size -= len(line)
                dropped, self._dropped = self._dropped, 0
            _write(self.fd, line)
            if dropped:
                _write(self.fd, f"ww: {dropped} audit lines dropped: they could not be "
                       "written as fast as they came\n".encode())

    def drain(self) -> None:
        """Wait until every line put so far is written."""
        with self._cond:
            while self._waiting or self._busy:
                self._cond.wait()


MAX_WAITING = 1 << 20  # bytes of audit lines waiting for a terminal or a pipe
_all: list[_Lines] = []


def drain() -> None:
    """At exit: write the audit lines still waiting (the terminal is restored by then)."""
    for lines in _all:
        lines.drain()


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
