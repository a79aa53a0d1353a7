"""Resource limits on a tree of cells: memory, CPU time, processes, file size and time.

A cell that goes over a limit is stopped (SIGKILL to the whole jail) and `ww run` exits 66
naming the limit.  Every limit is for the whole tree: the cell and the sub-cells it starts
(``--with-exec``), at every depth, with their own `ww run` host processes.  Three mechanisms,
so that the host is never the one that runs out:

* **A cgroup per cell for ``--pids``, ``--memory`` and ``--cpu-time``** (:mod:`ww.host.cgroups`,
  chosen by :mod:`ww.host.limits.cgroup`): the kernel refuses the fork past ``--pids`` tasks and
  the page past ``--memory`` bytes (the OOM killer then kills inside the cell, never outside it),
  and counts the CPU time of everything in it.  A sub-cell's `ww run` joins its parent cell's
  cgroup before it runs anything.  Each of the three is refused (a usage error, exit 2) where the
  host cannot make the cgroup it needs (cgroup v1 as root, or a delegated cgroup v2): only the
  kernel's own accounting sees everything a cell can make it hold (pipe and socket buffers, page
  tables, ...), all the CPU time it burns (a child the kernel reaps itself, with SIGCHLD ignored,
  adds its time to no parent's and leaves ``/proc`` between two samples), and every fork as it
  happens (a fork bomb made 750 to 2000 processes under ``--pids 50`` before a watchdog sampling
  ``/proc`` stopped it).  A limit that silently counts less than it says is worse than none.
* **A watchdog thread in the host** (:mod:`ww.host.limits.watchdog`) wakes every ``INTERVAL``
  seconds: it reads the cgroup's event counters (a refused fork, an OOM kill) and CPU time, and
  the time since the start, and kills the jail on the first limit exceeded.  It runs only when a
  limit is set.
* **Kernel limits as a backstop** (:mod:`ww.host.limits.rlimits`), set in the forked child before
  bubblewrap starts and inherited by everything in the jail: ``RLIMIT_CPU`` a second past
  ``--cpu-time`` (each process on its own, should the host be too busy to look), ``RLIMIT_FSIZE``
  (a write past ``--fsize`` fails and raises SIGXFSZ), and, with ``--memory``, tmpfs mounts no
  larger than the limit.  Every cell also gets ``oom_score_adj`` 1000 (under memory pressure the
  kernel kills a cell before anything of the host) and no core dumps (``RLIMIT_CORE`` 1: neither a
  core file nor a core-dump pipe).  Sub-cells get the same flags, so each cell of a tree is also
  held to them on its own.

This package's modules, one job each: :class:`Limits` (here) is what the flags asked for;
:mod:`~ww.host.limits.flags` parses them; :mod:`~ww.host.limits.cgroup`,
:mod:`~ww.host.limits.rlimits` and :mod:`~ww.host.limits.watchdog` enforce them;
:mod:`~ww.host.limits.subcells` bounds the sub-cells a tree runs at once.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py imports enum, which costs `ww run` ms

from ww.core.errors import EXIT_RESOURCE_LIMIT
from ww.host.limits.flags import format_size

__all__ = ["EXIT_CODE", "Limits"]


class Limits:
    """What ``--memory``, ``--cpu-time``, ``--pids``, ``--fsize`` and ``--timeout`` asked for.

    (A plain class, not a dataclass: this module is imported on every `ww run`, and making a
    dataclass costs start-up a fraction of a millisecond.)
    """

    def __init__(self, memory: int | None = None, cpu_time: float | None = None,
                 pids: int | None = None, fsize: int | None = None,
                 timeout: float | None = None) -> None:
        self.memory = memory  # bytes: the tree's memory cgroup limit (kernel buffers too)
        self.cpu_time = cpu_time  # seconds of CPU, all processes and sub-cells together
        self.pids = pids  # tasks (processes and threads) at once
        self.fsize = fsize  # bytes: the largest file the cell may write
        self.timeout = timeout  # seconds of wall-clock time

    @property
    def watched(self) -> bool:
        """Whether the watchdog has anything to watch."""
        return any(x is not None for x in (self.memory, self.cpu_time, self.pids, self.timeout))

    def exceeded_message(self, which: str) -> str:
        """The one line `ww run` prints when the cell hit ``which``."""
        if which == "memory":
            what = f"used more than {format_size(self.memory or 0)} of memory (--memory)"
        elif which == "cpu_time":
            what = f"used more than {self.cpu_time or 0:g}s of CPU time (--cpu-time)"
        elif which == "pids":
            what = f"ran more than {self.pids} processes or threads at once (--pids)"
        elif which == "fsize":
            what = f"wrote a file larger than {format_size(self.fsize or 0)} (--fsize)"
        else:
            what = f"ran longer than {self.timeout or 0:g}s (--timeout)"
        return f"resource limit: the cell {what}; it was stopped"

    def killed_by_backstop(self, status: int) -> str | None:
        """The limit a cell's death by a kernel signal means, if any (status is 128+n)."""
        if self.cpu_time is not None and status in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
            return "cpu_time" if status == 128 + signal.SIGXCPU else None
        if self.fsize is not None and status == 128 + signal.SIGXFSZ:
            return "fsize"
        return None


EXIT_CODE = EXIT_RESOURCE_LIMIT
