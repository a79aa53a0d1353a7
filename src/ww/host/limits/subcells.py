"""How many sub-cells (``--with-exec``) a whole tree of cells may run at once.

One :class:`SubcellBudget` per host, made by whoever builds the run and handed to both the
supervisor (which shares it once the cell's cgroup exists) and the exec capability (which
takes a slot per sub-cell): a tree of hosts shares one slot file through ``WW_SUBCELLS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds

if TYPE_CHECKING:
    from ww.host.cgroups import CellCgroup
    from ww.host.limits import Limits

__all__ = ["MAX_SUBCELLS", "SUBCELLS_ENV", "SubcellBudget", "SubcellLease"]

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

    def __init__(self, limits: Limits | None = None) -> None:
        """The budget of the tree this host is in, for a cell with ``limits``.  Its slot file
        is opened by :meth:`share` (or the first :meth:`take`)."""
        self._limits = limits
        self._fd: int | None = None
        self.total = 0
        self.join: list[str] = []  # the files a child writes "0" to to join this cell's cgroups

    def share(self, cgroup: CellCgroup | None) -> None:
        """Called by the supervisor once the cell's cgroup exists: what sub-cells will share."""
        limits = self._limits
        total = MAX_SUBCELLS
        if limits is not None and limits.pids is not None:
            total = min(total, limits.pids)  # each sub-cell is at least one task of the tree
        fd = _inherited_slots()
        if fd is None:  # the first host of its tree
            fd = os.memfd_create("ww-subcells", os.MFD_CLOEXEC)
            os.ftruncate(fd, total)
        else:
            total = os.fstat(fd).st_size  # the first host's count holds for the whole tree
        self._fd, self.total = fd, total
        self.join = cgroup.join_files() if cgroup is not None else []

    @property
    def fd(self) -> int:
        """The tree's slot file (opened now if :meth:`share` has not been called)."""
        if self._fd is None:
            self.share(None)
        assert self._fd is not None
        return self._fd

    def take(self) -> SubcellLease | None:
        """A lease for one more sub-cell, or None when the tree's budget is used up."""
        import fcntl
        import struct

        fd_ = self.fd
        for slot in range(self.total):
            fd = os.open(f"/proc/self/fd/{fd_}", os.O_RDWR | os.O_CLOEXEC)  # its own OFD
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                            struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
            except OSError:
                os.close(fd)  # held by a running sub-cell of the tree
                continue
            return SubcellLease(self, fd)
        return None


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
