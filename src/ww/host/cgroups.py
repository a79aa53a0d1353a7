"""Kernel-enforced ``--pids`` and ``--memory``, kernel-counted ``--cpu-time``: a cgroup per cell.

With ``--pids``, ``--memory`` or ``--cpu-time`` the host creates a cgroup for the cell
before it starts, sets the limit in it, and the forked child joins it before it executes
bubblewrap, so every process of the cell, from bubblewrap on, is born inside it and the
kernel itself refuses the fork past ``pids.max`` and the page past the memory limit.  The
watchdog of :mod:`ww.host.limits.watchdog` then only reads the cgroup's event counters to learn that
a limit was hit, stops the cell and `ww run` exits 66.  For ``--cpu-time`` (the "cpu"
controller: ``cpuacct`` in v1, ``cpu`` in v2) there is no limit to set: the watchdog reads
the CPU time the kernel charged to the cgroup and everything below it (sub-cells join it),
which no process can take out of it by exiting, being killed or being reparented.

Where each controller comes from, per controller:

* **cgroup v2**, when the controller is enabled in the ``cgroup.subtree_control`` of the
  host's own cgroup in the unified hierarchy, so that its children get it (the host never
  enables it itself);
* else **cgroup v1**, when the controller's hierarchy is mounted and writable: the cell's
  cgroup is made under the host's *own* cgroup there, so it stays inside any limit the host
  itself is under;
* else nothing: :func:`create` leaves that controller out, and the flag that needs it is
  refused (see :mod:`ww.host.limits`).  ``WW_CGROUPS=0`` in the host's environment turns
  cgroups off everywhere.

Each cell's cgroup is named ``ww-<pid namespace>-<host pid>-<random>``.  The host removes it
when the cell ends, after killing anything left in it.  A host killed by SIGKILL cannot, so
every :func:`create` first removes the ``ww-*`` cgroups of hosts (in its own pid namespace)
that no longer exist.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

CONTROLLERS = ("pids", "memory", "cpu")
_V1_NAMES = {"cpu": "cpuacct"}  # the v1 hierarchy that counts CPU time per cgroup
_PREFIX = "ww-"


class Hierarchy:
    """Where one controller can be used: a mounted hierarchy and the host's cgroup in it."""

    def __init__(self, version: int, own: str) -> None:
        self.version = version
        self.own = own  # the host's own cgroup directory: the cell's goes below it


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _own_cgroups() -> dict[str, str]:
    """``/proc/self/cgroup``: controller (or "" for the unified hierarchy) -> path."""
    paths: dict[str, str] = {}
    for line in _read("/proc/self/cgroup").splitlines():
        hid, names, path = line.split(":", 2)
        if hid == "0" and names == "":
            paths[""] = path
        for name in names.split(","):
            if name:
                paths[name] = path
    return paths


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """The cgroup mounts: (fstype, mount root, mount point, super options)."""
    found = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if len(fields) < 5 or len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        found.append((after[0], fields[3], point, set(after[2].split(","))))
    return found


def _below(point: str, root: str, path: str) -> str | None:
    """The directory of cgroup ``path`` in a hierarchy mounted at ``point`` from ``root``."""
    if root != "/":
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None  # our cgroup is not visible through this mount
        path = path[len(root.rstrip("/")):]
    full = os.path.join(point, path.lstrip("/")).rstrip("/") or "/"
    return full if os.path.isdir(full) else None


def _v2_delegable(own: str, controller: str) -> bool:
    """Whether cells may get ``controller`` below ``own`` in the unified hierarchy.

    Only if it is already enabled for ``own``'s children: the host never changes a
    ``cgroup.subtree_control`` itself.  (A cgroup holding processes cannot enable one
    anyway, the "no internal processes" rule, so this is the v2 root, or a host whose
    cgroup was set up for it.)
    """
    try:
        return controller in _read(os.path.join(own, "cgroup.subtree_control")).split()
    except OSError:
        return False


def _hierarchies(wanted: list[str]) -> dict[str, Hierarchy]:
    """For each wanted controller, the hierarchy to use (v2 first, then v1), if any."""
    try:
        own = _own_cgroups()
        mounts = _mounts()
    except OSError:
        return {}
    found: dict[str, Hierarchy] = {}
    for fstype, root, point, _ in mounts:
        if fstype == "cgroup2" and "" in own:
            d = _below(point, root, own[""])
            for c in wanted:
                if (d is not None and c not in found and os.access(d, os.W_OK)
                        and _v2_delegable(d, c)):
                    found[c] = Hierarchy(2, d)
    for fstype, root, point, options in mounts:
        for c in wanted:
            v1 = _V1_NAMES.get(c, c)
            if fstype == "cgroup" and v1 in options and c not in found and v1 in own:
                d = _below(point, root, own[v1])
                if d is not None and os.access(d, os.W_OK):
                    found[c] = Hierarchy(1, d)
    return found


def available(controllers: tuple[str, ...] = CONTROLLERS) -> dict[str, Hierarchy]:
    """The controllers a cell's cgroup can have on this host, each with its hierarchy."""
    return _hierarchies(list(controllers))


class CellCgroup:
    """The cgroups (one per hierarchy used) of one cell, with its limits set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dirs: dict[str, str] = {}  # controller -> the cell's cgroup directory
        self.versions: dict[str, int] = {}  # controller -> 1 or 2
        self._procs: list[int] = []  # the file of each directory the child joins through
        self._events: dict[str, int] = {}  # controller -> fd of its event counters
        self._usage: tuple[int, int] | None = None  # "cpu": (version, fd of its CPU time)

    @property
    def enforced(self) -> frozenset[str]:
        """The controllers the kernel enforces for this cell ("pids", "memory")."""
        return frozenset(self.dirs)

    def _directories(self) -> list[str]:
        return list(dict.fromkeys(self.dirs.values()))

    def joiner(self) -> Callable[[], None]:
        """A function for the forked child, before it executes anything: join the cgroups.

        Writing "0" to ``tasks`` (v1) or ``cgroup.procs`` (v2) moves the writer.  It raises
        if the kernel refuses, so that no cell ever starts outside its cgroup (the spawn
        then fails).
        """
        fds = self._procs
        write = os.write

        def join() -> None:
            for fd in fds:
                write(fd, b"0")

        return join

    def join_files(self) -> list[str]:
        """The files a process writes "0" to to join this cell's cgroups (for sub-cells)."""
        seen: dict[str, int] = {}
        for controller, d in self.dirs.items():
            seen.setdefault(d, self.versions[controller])
        return [os.path.join(d, _JOIN[version]) for d, version in seen.items()]

    def exceeded(self) -> str | None:
        """The limit the kernel enforced at least once ("pids" or "memory"), if any."""
        for controller, fd in self._events.items():
            try:
                counters = _counters(os.pread(fd, 4096, 0))
            except OSError:
                continue
            if controller == "pids" and counters.get("max", 0) > 0:
                return "pids"
            if controller == "memory" and (counters.get("oom_kill", 0) > 0
                                           or counters.get("under_oom", 0) > 0
                                           or counters.get("oom", 0) > 0):
                return "memory"
        return None

    def cpu_seconds(self) -> float | None:
        """The CPU time charged to the cell's cgroup and below it, if it has "cpu"."""
        if self._usage is None:
            return None
        version, fd = self._usage
        try:
            data = os.pread(fd, 4096, 0)
        except OSError:
            return None
        if version == 1:
            return int(data.split()[0]) / 1e9  # cpuacct.usage: nanoseconds
        return _counters(data).get("usage_usec", 0) / 1e6

    def close(self) -> None:
        """Close the files the child needed (the host's copy of them), once it has started."""
        for fd in self._procs:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._procs = []

    def remove(self) -> None:
        """Kill whatever is left in the cell's cgroups and remove them."""
        self.close()
        for fd in [*self._events.values(), *([self._usage[1]] if self._usage else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._events = {}
        self._usage = None
        for d in self._directories():
            _remove(d)


def _counters(data: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in data.decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _remove(d: str, deadline: float = 2.0) -> bool:
    """Kill what is in cgroup ``d`` and below it, then rmdir them, deepest first (retrying
    while the dead are reaped).  Below it are the cgroups of sub-cells started in it."""
    end = time.monotonic() + deadline
    while True:
        try:
            pids = [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()]
        except FileNotFoundError:
            return True
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            for entry in os.scandir(d):
                if entry.is_dir(follow_symlinks=False):
                    _remove(entry.path, max(0.0, end - time.monotonic()))
        try:
            os.rmdir(d)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > end:
                return False
            time.sleep(0.005)


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _remove_stale(parent: str, ns: str) -> None:
    """Remove the ww-* cgroups under ``parent`` whose host (in our pid namespace) is gone."""
    try:
        names = [e.name for e in os.scandir(parent) if e.name.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) != 4 or parts[1] != ns or not parts[2].isdigit():
            continue  # another pid namespace's host: not ours to judge
        try:
            os.kill(int(parts[2]), 0)
            continue  # the host is alive (or the pid was reused: left for later)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _remove(os.path.join(parent, name), deadline=0.5)


def _limits_v1(d: str, controller: str, value: int) -> None:
    if controller == "pids":
        _write(os.path.join(d, "pids.max"), str(value))
        return
    _write(os.path.join(d, "memory.limit_in_bytes"), str(value))
    # With swap, memory + swap is capped at the same size: a cell cannot swap its way past.
    if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
        _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(value))


def _limits_v2(d: str, controller: str, value: int) -> None:
    if controller == "pids":
        _write(os.path.join(d, "pids.max"), str(value))
        return
    _write(os.path.join(d, "memory.max"), str(value))
    for name, text in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
        if os.path.exists(os.path.join(d, name)):
            _write(os.path.join(d, name), text)


# What the child writes "0" to.  In v1, ``tasks`` moves just the writing thread (the whole
# process: a forked child has one thread) without the kernel's global threadgroup lock,
# whose first taker waits for an RCU grace period: ``cgroup.procs`` cost 5-20 ms a cell here.
_JOIN = {1: "tasks", 2: "cgroup.procs"}

_EVENTS = {(1, "pids"): "pids.events", (1, "memory"): "memory.oom_control",
           (2, "pids"): "pids.events", (2, "memory"): "memory.events"}
_USAGE = {1: "cpuacct.usage", 2: "cpu.stat"}  # the CPU time charged, for "cpu"


def create(limits: dict[str, int]) -> CellCgroup | None:
    """A cgroup for one cell with ``limits`` ({"pids": tasks, "memory": bytes}) set.

    ``"cpu"`` in ``limits`` (its value unused) asks for the CPU time to be counted.

    Controllers that cannot be used here are left out (see :attr:`CellCgroup.enforced`);
    None when none can.  Never raises: :func:`ww.host.limits.cgroup.cgroup_for` refuses a flag
    whose controller is missing.
    """
    wanted = [c for c in CONTROLLERS if c in limits]
    if not wanted:
        return None
    found = _hierarchies(wanted)
    if not found:
        return None
    ns = _pid_namespace()
    group = CellCgroup(f"{_PREFIX}{ns}-{os.getpid()}-{os.urandom(4).hex()}")
    made: dict[str, tuple[str, int]] = {}  # own cgroup dir -> the cell's below it, its procs
    for controller in wanted:
        h = found.get(controller)
        if h is None:
            continue
        try:
            if h.own not in made:
                _remove_stale(h.own, ns)
                d = os.path.join(h.own, group.name)
                os.mkdir(d, 0o755)
                made[h.own] = (d, -1)
                made[h.own] = (d, os.open(os.path.join(d, _JOIN[h.version]),
                                          os.O_WRONLY | os.O_CLOEXEC))
            d = made[h.own][0]
            if controller == "cpu":
                usage = os.open(os.path.join(d, _USAGE[h.version]), os.O_RDONLY | os.O_CLOEXEC)
                group._usage = (h.version, usage)
            else:
                setter = _limits_v1 if h.version == 1 else _limits_v2
                setter(d, controller, limits[controller])
                group._events[controller] = os.open(
                    os.path.join(d, _EVENTS[h.version, controller]), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # left out: cgroup_for refuses the flag that needs it
        group.dirs[controller] = d
        group.versions[controller] = h.version
    for d, procs in made.values():
        if d in group.dirs.values():
            group._procs.append(procs)
            continue
        if procs >= 0:  # made for a controller that then failed: not needed after all
            os.close(procs)
        _remove(d, deadline=0.5)
    return group if group.dirs else None
