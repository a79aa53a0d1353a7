"""Resource limits on a cell: memory, CPU time, processes, file size and wall-clock time.

A cell that goes over a limit is stopped (SIGKILL to the whole jail) and `ww run` exits 66
naming the limit.  Three mechanisms, so that the host is never the one that runs out:

* **A cgroup per cell for ``--pids`` and ``--memory``** (:mod:`ww.host.cgroups`), where the
  host can make one (cgroup v2 if delegated, else v1): the kernel refuses the fork past
  ``--pids`` tasks and the page past ``--memory`` bytes (the OOM killer then kills inside
  the cell, never outside it).  The watchdog below reads the cgroup's event counters
  (a refused fork, an OOM kill) every ``INTERVAL`` and stops the cell on the first.
* **A watchdog thread in the host** samples the cell's process tree every ``INTERVAL``
  seconds from ``/proc``: the CPU time of every process alive or reaped and the time since
  the start; and, for ``--pids`` and ``--memory`` where no cgroup could be made, the number
  of tasks (processes and threads) and the resident memory of every process plus what the
  cell stored in its tmpfs directories (``/cell``, ``/tmp``).  It kills the jail on the first
  sample over a limit.  It runs only when a limit is set.
* **Kernel limits as a backstop**, set in the forked child before bubblewrap starts and
  inherited by everything in the jail: ``RLIMIT_CPU`` a second past ``--cpu-time`` (for a
  single process the watchdog would miss), ``RLIMIT_FSIZE`` (a write past ``--fsize`` fails
  and raises SIGXFSZ), and, with ``--memory``, tmpfs mounts no larger than the limit.  Every
  cell also gets ``oom_score_adj`` 1000 (under memory pressure the kernel kills a cell before
  anything of the host) and no core dumps (``RLIMIT_CORE`` 1: neither a core file nor a
  core-dump pipe).

The ``/proc`` fallback for ``--pids`` and ``--memory`` is sampled: a fork bomb can make
hundreds of processes and a fast allocator overshoot by what it touches in ``INTERVAL``
before it is stopped.  It works wherever ``/proc`` does, with no privileges.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ww.errors import EXIT_RESOURCE_LIMIT, UsageError

if TYPE_CHECKING:
    from ww.host.cgroups import CellCgroup  # imported only when a cell has --pids/--memory

INTERVAL = 0.01  # seconds between two samples of the cell

# Tasks of a jailed cell that are not the cell's own: bubblewrap and its init in the jail.
JAIL_TASKS = 2

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?"


def parse_size(text: str, flag: str) -> int:
    """``64M``, ``1.5G``, ``4096``, ``10KiB`` -> bytes; a UsageError naming ``flag`` otherwise."""
    m = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a size such as 4096, 64K, 256M or 2G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_seconds(text: str, flag: str) -> float:
    """``2``, ``0.5``, ``3s``, ``2m`` -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a duration such as 30, 2.5s, 500ms or 5m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def parse_count(text: str, flag: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a positive whole number")
    return int(text)


def format_size(n: int) -> str:
    for unit in ("G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return f"{n} bytes"


class Limits:
    """What ``--memory``, ``--cpu-time``, ``--pids``, ``--fsize`` and ``--timeout`` asked for.

    (A plain class, not a dataclass: this module is imported on every `ww run`, and making a
    dataclass costs start-up a fraction of a millisecond.)
    """

    def __init__(self, memory: int | None = None, cpu_time: float | None = None,
                 pids: int | None = None, fsize: int | None = None,
                 timeout: float | None = None) -> None:
        self.memory = memory  # bytes: resident memory of all processes + tmpfs contents
        self.cpu_time = cpu_time  # seconds of CPU, all processes together
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


def cgroup_for(limits: Limits | None, jailed: bool) -> CellCgroup | None:
    """The cell's cgroup with ``--pids`` and ``--memory`` set, where the host can make one.

    ``--pids`` counts the cell's own tasks, so a jailed cell's cgroup allows bubblewrap and
    its init on top.  ``WW_CGROUPS=0`` in the host's environment turns cgroups off.
    """
    if limits is None or (limits.pids is None and limits.memory is None):
        return None
    if os.environ.get("WW_CGROUPS") == "0":
        return None  # the operator asked for the /proc watchdog
    from ww.host import cgroups

    wanted: dict[str, int] = {}
    if limits.pids is not None:
        wanted["pids"] = limits.pids + (JAIL_TASKS if jailed else 0)
    if limits.memory is not None:
        wanted["memory"] = limits.memory
    return cgroups.create(wanted)


def preexec_setter(limits: Limits | None,
                   cgroup: CellCgroup | None = None) -> Callable[[], None]:
    """A function for the forked child (before bubblewrap): the kernel-side limits.

    Everything is computed here, in the host; the child only makes system calls.  Joining
    the cell's cgroup comes first, before anything else runs in the child, and fails the
    spawn if the kernel refuses it: no process of the cell ever exists outside it.
    """
    import resource

    join = cgroup.joiner() if cgroup is not None else None

    settings: list[tuple[int, tuple[int, int]]] = []
    _, core_hard = resource.getrlimit(resource.RLIMIT_CORE)
    core = 1 if core_hard == resource.RLIM_INFINITY or core_hard >= 1 else 0
    settings.append((resource.RLIMIT_CORE, (core, core)))
    if limits is not None and limits.cpu_time is not None:
        soft = int(limits.cpu_time) + 1
        settings.append((resource.RLIMIT_CPU, (soft, soft + 1)))
    if limits is not None and limits.fsize is not None:
        settings.append((resource.RLIMIT_FSIZE, (limits.fsize, limits.fsize)))
    setrlimit = resource.setrlimit
    adj = b"1000"

    def apply() -> None:
        if join is not None:
            join()
        for which, value in settings:
            try:
                setrlimit(which, value)
            except (ValueError, OSError):
                pass  # a hard limit already lower than ours: the lower one stands
        try:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, adj)
            os.close(fd)
        except OSError:
            pass

    return apply


class _Sample:
    def __init__(self) -> None:
        self.rss_pages = 0
        self.cpu_ticks = 0
        self.tasks = 0


def children(pid: int) -> list[int]:
    """The pids of a process's children (of all its threads)."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()  # fields from the 3rd (state) on


class Watchdog:
    """Samples a cell's process tree and stops it on the first limit it exceeds.

    ``root`` is the process we spawned: bubblewrap (``jailed``: its descendants are the
    jail, the first being bubblewrap's init) or, unjailed, the program itself.
    ``on_exceeded`` is called with the one-line message, then ``stop_cell`` kills the cell.
    With ``cgroup``, the limits it enforces are read from its event counters, not sampled.
    """

    def __init__(self, limits: Limits, root: int, jailed: bool, *,
                 on_exceeded: Callable[[str], None], stop_cell: Callable[[], None],
                 cgroup: CellCgroup | None = None) -> None:
        self.limits = limits
        self._cgroup = cgroup
        enforced = cgroup.enforced if cgroup is not None else frozenset()
        self._sampled_pids = limits.pids if "pids" not in enforced else None
        self._sampled_memory = limits.memory if "memory" not in enforced else None
        self._sample_tree = any(x is not None for x in (self._sampled_pids,
                                                        self._sampled_memory, limits.cpu_time))
        self._root = root
        self._include_root = not jailed
        self._on_exceeded = on_exceeded
        self._stop_cell = stop_cell
        self._done = threading.Event()
        self._start = time.monotonic()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, name="ww-watchdog", daemon=True)
        self.peak_memory = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(1)

    def sample(self) -> _Sample:
        s = _Sample()
        root = _stat(self._root)
        if root is None:
            return s
        s.cpu_ticks = int(root[13]) + int(root[14])  # reaped children: cutime + cstime
        if self._include_root:
            s.cpu_ticks += int(root[11]) + int(root[12])
            s.rss_pages += int(root[21])
            s.tasks += int(root[17])
        seen = {self._root}
        stack = children(self._root)
        while stack and len(seen) < 100_000:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            fields = _stat(pid)
            if fields is None:
                continue
            s.cpu_ticks += sum(int(x) for x in fields[11:15])
            s.rss_pages += int(fields[21])
            s.tasks += int(fields[17])
            stack.extend(children(pid))
        return s

    def _tmpfs_bytes(self) -> int:
        """What the cell stored in its tmpfs mounts, seen through its init's root."""
        if self._include_root:
            return 0  # unjailed: the cell's files are the host's business
        used = 0
        init = children(self._root)[:1]
        for path in [f"/proc/{pid}/root{d}" for pid in init for d in ("/cell", "/tmp")]:
            try:
                st = os.statvfs(path)
            except OSError:
                continue
            used += (st.f_blocks - st.f_bfree) * st.f_frsize
        return used

    def _processes_in_jail(self) -> int | None:
        """The number of processes in the jail, cheaply: one listing of the jail's own /proc.

        A fork bomb is caught by this before a walk of its process tree would even finish.
        """
        if self._include_root:
            return None
        for init in children(self._root)[:1]:
            try:
                return sum(name.isdigit() for name in os.listdir(f"/proc/{init}/root/proc")) - 1
            except OSError:
                return None
        return None

    def check(self) -> str | None:
        """Which limit the cell is over right now, if any."""
        lim = self.limits
        if self._cgroup is not None and (which := self._cgroup.exceeded()) is not None:
            return which
        if lim.timeout is not None and time.monotonic() - self._start > lim.timeout:
            return "timeout"
        pids, memory = self._sampled_pids, self._sampled_memory
        if pids is not None and (self._processes_in_jail() or 0) > pids:
            return "pids"
        if not self._sample_tree:
            return None
        s = self.sample()
        if memory is not None:
            used = s.rss_pages * self._page + self._tmpfs_bytes()
            self.peak_memory = max(self.peak_memory, used)
            if used > memory:
                return "memory"
        if lim.cpu_time is not None and s.cpu_ticks / self._tick > lim.cpu_time:
            return "cpu_time"
        # Unjailed, the root is the program; jailed, it is bubblewrap, and the first task
        # below it is bubblewrap's init inside the jail, which is not the cell's.
        tasks = s.tasks if self._include_root else s.tasks - 1
        if pids is not None and tasks > pids:
            return "pids"
        return None

    def _run(self) -> None:
        while not self._done.wait(INTERVAL):
            which = self.check()
            if which is not None:
                self._on_exceeded(self.limits.exceeded_message(which))
                self._stop_cell()
                return


EXIT_CODE = EXIT_RESOURCE_LIMIT
