"""The kernel-side limits, set in the forked child before bubblewrap starts: a backstop.

``RLIMIT_CPU`` a second past ``--cpu-time``, ``RLIMIT_FSIZE`` at ``--fsize``, no core dumps,
``oom_score_adj`` 1000; and joining the cell's cgroup first of all.
"""

from __future__ import annotations

import os
from collections.abc import Callable

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds

if TYPE_CHECKING:
    from ww.host.cgroups import CellCgroup
    from ww.host.limits import Limits

__all__ = ["preexec_setter"]


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
