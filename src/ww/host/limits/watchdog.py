"""The watchdog: a thread that stops a cell on the first limit it exceeds.

It reads the cgroup's event counters (a refused fork, an OOM kill) and CPU time, and the
time since the start; it runs only when a limit is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ww.host.cgroups import CellCgroup
    from ww.host.limits import Limits

__all__ = ["INTERVAL", "Watchdog"]

INTERVAL = 0.01  # seconds between two samples of the cell


class Watchdog:
    """Stops a cell on the first limit it exceeds, looked at every ``INTERVAL``.

    ``on_exceeded`` is called with the one-line message, then ``stop_cell`` kills the cell.
    ``--pids``, ``--memory`` and ``--cpu-time`` are read from ``cgroup`` (its event counters
    and its CPU time; :func:`cgroup_for` refuses them without one), ``--timeout`` from the
    clock.
    """

    def __init__(self, limits: Limits, *, on_exceeded: Callable[[str], None],
                 stop_cell: Callable[[], None], cgroup: CellCgroup | None = None) -> None:
        import threading  # here: `ww run` without a watched limit does without it

        self.limits = limits
        self._cgroup = cgroup
        self._on_exceeded = on_exceeded
        self._stop_cell = stop_cell
        self._done = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="ww-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(1)

    def check(self) -> str | None:
        """Which limit the cell is over right now, if any."""
        lim, group = self.limits, self._cgroup
        if group is not None and (which := group.exceeded()) is not None:
            return which
        if lim.timeout is not None and time.monotonic() - self._start > lim.timeout:
            return "timeout"
        if group is not None and lim.cpu_time is not None and "cpu" in group.enforced:
            if (group.cpu_seconds() or 0.0) > lim.cpu_time:
                return "cpu_time"
        return None

    def _run(self) -> None:
        while not self._done.wait(INTERVAL):
            which = self.check()
            if which is not None:
                self._on_exceeded(self.limits.exceeded_message(which))
                self._stop_cell()
                return
