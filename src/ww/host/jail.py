"""The jail, assembled in one place as an explicit list of grants.

Every cell runs under bubblewrap in new user, pid, mount, network, ipc, uts and cgroup
namespaces, with no capabilities, ``no_new_privs`` (bubblewrap always sets it), an
unprivileged uid, and a root file system made only of what is named below:

* the system directories read-only (``/usr``, and ``/bin``, ``/sbin``, ``/lib*`` as the
  host has them: directories bound read-only, merged-/usr symlinks recreated);
* a handful of ``/etc`` files that dynamically linked programs need;
* its own ``/proc`` and a minimal ``/dev`` (null, zero, full, random, urandom, tty, pts),
  with ``/dev/shm`` a tmpfs of its own (capped like ``/cell`` and ``/tmp`` with ``--memory``);
* a fresh empty writable working directory ``/cell`` and a private ``/tmp``, both tmpfs
  mounts that exist only inside the jail and vanish with it, even if the host is killed;
* the program (and for a script, its interpreter and the interpreter's prefix), read-only
  at their host paths.

Nothing else of the host is visible: not its home, not the invoking directory, not other
processes, not its network (the cell has only its own loopback).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ww.errors import HostError
from ww.host.executable import which

CELL_DIR = "/cell"
CELL_UID = 1000
CELL_GID = 1000
HOSTNAME = "cell"

_ROOT_LINKS_OR_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# /etc entries programs commonly need; each is bound read-only only if the host has it.
_ETC = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/mime.types",
)

BWRAP_MISSING = (
    "bubblewrap (bwrap) is not installed: install it with 'sudo apt-get install bubblewrap' "
    "(or run unjailed with --jail=none)"
)


@dataclass
class JailSpec:
    """Everything that varies between jails."""

    binds: list[str]  # host paths bound read-only at the same path
    status_fd: int  # fd (in bwrap) where bubblewrap writes its JSON status
    seccomp_fd: int | None = None  # fd (in bwrap) holding the seccomp program to install
    tmpfs_size: int | None = None  # bytes: the most /cell, /tmp and /dev/shm may each hold


def find_bwrap() -> str:
    path = which("bwrap")
    if path is None:
        raise HostError(BWRAP_MISSING)
    return path


def bwrap_argv(bwrap: str, spec: JailSpec, program: list[str]) -> list[str]:
    """The complete bubblewrap command line: the reviewable list of grants."""
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--uid", str(CELL_UID),
        "--gid", str(CELL_GID),
        "--hostname", HOSTNAME,
        "--cap-drop", "ALL",
        "--die-with-parent",
        "--new-session",
        "--json-status-fd", str(spec.status_fd),
    ]  # fmt: skip
    if spec.seccomp_fd is not None:
        # Installed just before the program starts; see ww/host/seccomp.py for the rules.
        argv += ["--seccomp", str(spec.seccomp_fd)]
    argv += ["--ro-bind", "/usr", "/usr"]
    for path in _ROOT_LINKS_OR_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in _ETC:
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    size = ["--size", str(spec.tmpfs_size)] if spec.tmpfs_size is not None else []
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        *size, "--perms", "01777", "--tmpfs", "/dev/shm",
        *size, "--tmpfs", "/tmp",
        *size, "--tmpfs", CELL_DIR,
    ]  # fmt: skip
    for path in spec.binds:
        argv += ["--ro-bind", path, path]
    # The root itself (bubblewrap's own tmpfs holding the mount points) is read-only too.
    argv += ["--remount-ro", "/", "--chdir", CELL_DIR, "--", *program]
    return argv
