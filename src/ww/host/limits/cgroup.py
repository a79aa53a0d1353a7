"""Which cgroup a cell gets for its limits, and refusing the flags a host cannot enforce.

``--pids``, ``--memory`` and ``--cpu-time`` each need a cgroup controller (the kernel's own
accounting, :mod:`ww.host.cgroups`); where the host cannot have it, the flag is a usage
error (exit 2), never enforced by sampling.
"""

from __future__ import annotations

import os

from ww.core.errors import UsageError
from ww.host.limits.flags import JAIL_TASKS

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds

if TYPE_CHECKING:
    from ww.host.cgroups import CellCgroup  # imported only when a cell has --pids/--memory
    from ww.host.limits import Limits

__all__ = ["cgroup_for", "check_cgroups"]


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
