"""Resource limits on a tree of cells: memory, CPU time, processes, file size and time.

A cell that goes over a limit is stopped (SIGKILL to the whole jail) and `ww run` exits 66
naming the limit.  Every limit is for the whole tree: the cell and the sub-cells it starts
(``--with-exec``), at every depth, with their own `ww run` host processes.  Three mechanisms,
so that the host is never the one that runs out:

* **A cgroup per cell for ``--pids``, ``--memory`` and ``--cpu-time``**
  (:mod:`ww.host.cgroups`): the kernel refuses the fork past ``--pids`` tasks and the page
  past ``--memory`` bytes (the OOM killer then kills inside the cell, never outside it), and
  counts the CPU time of everything in it.  A sub-cell's `ww run` joins its parent cell's
  cgroup before it runs anything.  Each of the three is refused (a usage error, exit 2)
  where the host cannot make the cgroup it needs (cgroup v1 as root, or a delegated cgroup
  v2): only the kernel's own accounting sees everything a cell can make it hold (pipe and
  socket buffers, page tables, ...), all the CPU time it burns (a child the kernel reaps
  itself, with SIGCHLD ignored, adds its time to no parent's and leaves ``/proc`` between
  two samples), and every fork as it happens (a fork bomb made 750 to 2000 processes under
  ``--pids 50`` before a watchdog sampling ``/proc`` stopped it).  A limit that silently
  counts less than it says is worse than none.
* **A watchdog thread in the host** wakes every ``INTERVAL`` seconds: it reads the
  cgroup's event counters (a refused fork, an OOM kill) and CPU time, and the time since
  the start, and kills the jail on the first limit exceeded.  It runs only when a limit is
  set.
* **Kernel limits as a backstop**, set in the forked child before bubblewrap starts and
  inherited by everything in the jail: ``RLIMIT_CPU`` a second past ``--cpu-time`` (each
  process on its own, should the host be too busy to look), ``RLIMIT_FSIZE`` (a write
  past ``--fsize`` fails and raises SIGXFSZ), and, with ``--memory``, tmpfs mounts no larger
  than the limit.  Every cell also gets ``oom_score_adj`` 1000 (under memory pressure the
  kernel kills a cell before anything of the host) and no core dumps (``RLIMIT_CORE`` 1:
  neither a core file nor a core-dump pipe).  Sub-cells get the same flags, so each cell of
  a tree is also held to them on its own.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py imports enum, which costs `ww run` ms
import os
import time
from collections.abc import Callable

from ww.core.errors import EXIT_RESOURCE_LIMIT, UsageError

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from ww.host.cgroups import CellCgroup  # imported only when a cell has --pids/--memory

INTERVAL = 0.01  # seconds between two samples of the cell

# Tasks of a jailed cell that are not the cell's own: bubblewrap and its init in the jail.
JAIL_TASKS = 2

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?"
_SECONDS = r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?"

# The largest values the kernel takes (and the host can hand it): sizes and durations
# become 64-bit signed rlimits or cgroup values; --pids becomes pids.max, at most
# PID_MAX_LIMIT (2**22) with the jail's own tasks on top.
MAX_SIZE = (1 << 63) - 1  # bytes
MAX_SECONDS = 1 << 32  # about 136 years: RLIMIT_CPU is set a second or two past it
PID_MAX_LIMIT = 1 << 22


def _too_large(flag: str, text: str, largest: str) -> UsageError:
    return UsageError(f"{flag} {text!r}: too large (at most {largest})")


def parse_size(text: str, flag: str) -> int:
    """``64M``, ``1.5G``, ``4096``, ``10KiB`` -> a whole, positive number of bytes.

    A UsageError naming ``flag`` otherwise: fewer than one byte (``0.5``), more than
    :data:`MAX_SIZE`, or not a size at all.  A fraction of a byte is dropped.
    """
    import re
    from decimal import Decimal

    m = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE | re.ASCII)
    if not m:
        raise UsageError(f"{flag} {text!r}: expected a size such as 4096, 64K, 256M or 2G")
    size = int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 1:
        raise UsageError(f"{flag} {text!r}: expected at least one byte, such as 4096, 64K, "
                         "256M or 2G")
    if size > MAX_SIZE:
        raise _too_large(flag, text, "8388607T, 2**63-1 bytes")
    return size


def parse_seconds(text: str, flag: str) -> float:
    """``2``, ``0.5``, ``3s``, ``2m``, ``500ms`` -> seconds, more than 0 and at most
    :data:`MAX_SECONDS`."""
    import re

    m = re.fullmatch(_SECONDS, text.strip(), re.ASCII)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a duration such as 30, 2.5s, 500ms or 5m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    seconds = float(m.group(1)) * scale
    if seconds > MAX_SECONDS:
        raise _too_large(flag, text, f"{MAX_SECONDS} seconds")
    return seconds


def parse_count(text: str, flag: str) -> int:
    """``--pids``: a whole number from 1 to PID_MAX_LIMIT less the jail's own tasks."""
    import re

    if not re.fullmatch(r"[0-9]+", text.strip(), re.ASCII) or int(text) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a positive whole number")
    if int(text) > PID_MAX_LIMIT - JAIL_TASKS:
        raise _too_large(flag, text, str(PID_MAX_LIMIT - JAIL_TASKS))
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


def cgroup_for(limits: Limits | None, jailed: bool) -> CellCgroup | None:
    """The cell's cgroup with ``--pids`` and ``--memory`` set and ``--cpu-time`` counted,
    where the host can make one.

    ``--pids`` counts the cell's own tasks, so a jailed cell's cgroup allows bubblewrap and
    its init on top.  ``WW_CGROUPS=0`` in the host's environment turns cgroups off.  A
    UsageError when ``--pids``, ``--memory`` or ``--cpu-time`` is given and the cgroup
    controller it needs cannot be had (see above).
    """
    if limits is None or (limits.pids is None and limits.memory is None
                          and limits.cpu_time is None):
        return None
    group = None
    if os.environ.get("WW_CGROUPS") != "0":  # else the operator asked for no cgroups
        from ww.host import cgroups

        wanted: dict[str, int] = {}
        if limits.pids is not None:
            wanted["pids"] = limits.pids + (JAIL_TASKS if jailed else 0)
        if limits.memory is not None:
            wanted["memory"] = limits.memory
        if limits.cpu_time is not None:
            wanted["cpu"] = 0  # nothing to set: the kernel counts the tree's CPU time there
        group = cgroups.create(wanted)
    for controller in _needed(limits):
        if group is None or controller not in group.enforced:
            if group is not None:
                group.remove()
            raise _refused(controller)
    return group


def _needed(limits: Limits) -> list[str]:
    """The cgroup controllers without which ``limits`` are refused, not under-enforced."""
    return [c for c, value in (("pids", limits.pids), ("memory", limits.memory),
                               ("cpu", limits.cpu_time)) if value is not None]


def _refused(controller: str) -> UsageError:
    flag, name, hierarchy, uncounted = {
        "pids": ("--pids", "pids", "pids",
                 "a fork bomb would make hundreds of processes past it before a sampling "
                 "watchdog could stop it"),
        "memory": ("--memory", "memory", "memory",
                   "the kernel's pipe and socket buffers would go uncounted"),
        "cpu": ("--cpu-time", "cpu", "cpuacct",
                "the CPU time of children the kernel reaps itself would go uncounted"),
    }[controller]
    why = ("WW_CGROUPS=0 turns cgroups off" if os.environ.get("WW_CGROUPS") == "0" else
           f"this host cannot make one (it takes root with a writable cgroup v1 {hierarchy} "
           "hierarchy, or a delegated cgroup v2 one)")
    return UsageError(f"{flag} needs a {name} cgroup, and {why}: without one {uncounted}; "
                      f"run without {flag}")


def check_cgroups(limits: Limits | None) -> None:
    """Refuse ``--pids``, ``--memory`` and ``--cpu-time`` on a host without the cgroup each
    needs, before anything starts.

    (:func:`cgroup_for` refuses them too, should making the cgroup itself fail.)
    """
    needed = _needed(limits) if limits is not None else []
    if not needed:
        return
    if os.environ.get("WW_CGROUPS") == "0":
        raise _refused(needed[0])
    from ww.host import cgroups

    found = cgroups.available(tuple(needed))
    for controller in needed:
        if controller not in found:
            raise _refused(controller)


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


# --- sub-cells (--with-exec) -------------------------------------------------------------

SUBCELLS_ENV = "WW_SUBCELLS"  # "FD,INODE": the tree's slot file, for a child `ww run`
MAX_SUBCELLS = 32  # sub-cells a whole tree of cells may run at once

# struct flock for F_OFD_SETLK (64-bit Linux): l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = "hhqqi4x"


class SubcellLease:
    """One running sub-cell's slot in its tree's budget: a lock the child `ww run` holds.

    The slot is a write lock on one byte of the tree's slot file, taken on an open file
    description of its own (``F_OFD_SETLK``) that only the child `ww run` keeps (never its
    cell).  The kernel drops the lock when the last descriptor of it closes, that is when the
    child `ww run` is gone, however it ends: killed outright, its slot comes back all the same
    (a pipe of tokens used to lose the tokens of a host killed with its sub-cells running).
    """

    def __init__(self, budget: SubcellBudget, slot_fd: int) -> None:
        self._budget = budget
        self._slot_fd: int | None = slot_fd
        self._fds: list[int] = []

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The tree's slot file and this sub-cell's slot, which the child `ww run` (never its
        cell) holds."""
        return (self._budget.fd,) + ((self._slot_fd,) if self._slot_fd is not None else ())

    def environment(self) -> dict[str, str]:
        """What the child `ww run` gets in its environment."""
        fd = self._budget.fd
        return {SUBCELLS_ENV: f"{fd},{os.fstat(fd).st_ino}"}

    def preexec(self) -> Callable[[], None]:
        """For the forked child `ww run`: join the parent cell's cgroups before anything runs.

        It raises (so the spawn fails) if the kernel refuses: a sub-cell never runs outside
        its parent's cgroup.  Call :meth:`spawned` once the child is started.
        """
        self._fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in self._budget.join]
        fds, write = self._fds, os.write

        def join() -> None:
            for fd in fds:
                write(fd, b"0")

        return join

    def spawned(self) -> None:
        """Close the host's copies: the cgroup files, and the slot, which from now on only the
        child holds (if it did not start, that frees the slot)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.release()

    def release(self) -> None:
        """Give up the host's copy of the slot (the child's copy holds it while it runs)."""
        if self._slot_fd is not None:
            os.close(self._slot_fd)
            self._slot_fd = None


class SubcellBudget:
    """The sub-cells a tree of cells may run at once, and the cgroup a child is started in.

    A tree of cells shares one budget.  With a cell cgroup (``--pids``/``--memory`` enforced
    by the kernel), every child `ww run` is started inside the parent cell's cgroup, so the
    kernel counts the child host process, its jail and its cell against the parent's
    ``pids.max`` and memory limit (the child's own cgroup is made below the parent's, never
    beside it).  In every case the number of sub-cells running at once in the whole tree, at
    every depth, is bounded: the tree's first host makes a slot file of that many bytes
    (MAX_SUBCELLS, and no more than ``--pids``), every host of the tree holds it
    (``WW_SUBCELLS``; never its cell), and a sub-cell's `ww run` holds a lock on one byte of
    it for as long as it runs (:class:`SubcellLease`).
    """

    def __init__(self, fd: int, total: int, join: list[str]) -> None:
        self.fd = fd
        self.total = total
        self.join = join  # the files a child writes "0" to to join this cell's cgroups

    def take(self) -> SubcellLease | None:
        """A lease for one more sub-cell, or None when the tree's budget is used up."""
        import fcntl
        import struct

        for slot in range(self.total):
            fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)  # its own OFD
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                            struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
            except OSError:
                os.close(fd)  # held by a running sub-cell of the tree
                continue
            return SubcellLease(self, fd)
        return None


_subcells: SubcellBudget | None = None


def _inherited_slots() -> int | None:
    """The tree's slot file a parent host handed down, if this host is a sub-cell's."""
    import stat

    parts = os.environ.get(SUBCELLS_ENV, "").split(",")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    fd, inode = int(parts[0]), int(parts[1])
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_ino != inode:
        return None  # not the file the parent host named: start a tree of our own
    os.set_inheritable(fd, False)  # for this host only: never its cell
    return fd


def share_with_subcells(limits: Limits | None, cgroup: CellCgroup | None) -> None:
    """Called by the supervisor once the cell's cgroup exists: what sub-cells will share."""
    global _subcells
    total = MAX_SUBCELLS
    if limits is not None and limits.pids is not None:
        total = min(total, limits.pids)  # each sub-cell is at least one task of the tree
    fd = _inherited_slots()
    if fd is None:  # the first host of its tree
        fd = os.memfd_create("ww-subcells", os.MFD_CLOEXEC)
        os.ftruncate(fd, total)
    else:
        total = os.fstat(fd).st_size  # the first host's count holds for the whole tree
    join = cgroup.join_files() if cgroup is not None else []
    _subcells = SubcellBudget(fd, total, join)


def subcells() -> SubcellBudget:
    """This host's sub-cell budget (see :class:`SubcellBudget`)."""
    if _subcells is None:
        share_with_subcells(None, None)
    assert _subcells is not None
    return _subcells


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


EXIT_CODE = EXIT_RESOURCE_LIMIT
