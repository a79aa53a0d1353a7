"""The cell's file descriptor layout.

decisions.md (1) and (3): fd 3 is always the Cap'n Proto RPC socket; the operator's
``--fd name=fdnum`` flags land at fd 4, 5, ... in flag order, each announced to the cell
as ``WW_FD_<NAME>=<n>``.  Nothing else is inherited: fds 0-2 are the host's own stdio,
except that a jailed cell gets a regular file open read-only or write-only (as stdio or
a grant) through a pipe (:mod:`ww.host.relay`).
"""

from __future__ import annotations

import fcntl
import os
import stat

from ww.core.errors import UsageError
from ww.core.records import NamedTuple

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence

RPC_FD = 3
FIRST_GRANTED_FD = 4

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*\Z"  # --fd and --dir names; re is imported only for one


class FdGrant(NamedTuple):
    """One ``--fd`` flag: host fd ``source`` appears in the cell as ``target``."""

    name: str
    source: int
    target: int

    @property
    def env_name(self) -> str:
        return "WW_FD_" + self.name.upper()


def parse_fd_flags(flags: list[str]) -> list[FdGrant]:
    """Validate every ``--fd`` flag and assign targets 4, 5, ... in order.

    Raises UsageError naming the offending flag for a malformed flag, a bad or duplicate
    name (case-insensitive), a source fd that is not open in the host, one that is a
    directory (from which ``..`` reaches the whole file system), or an ``O_PATH`` handle.
    """
    grants: list[FdGrant] = []
    seen: dict[str, str] = {}
    for i, flag in enumerate(flags):
        where = f"--fd {flag!r}"
        name, sep, num = flag.partition("=")
        if not sep:
            raise UsageError(f"{where}: expected name=fdnum, for example --fd db=5")
        import re

        if not re.match(NAME_PATTERN, name):
            raise UsageError(
                f"{where}: the name must be letters, digits and '_', not starting with a digit"
            )
        if not num.isdigit() or not num.isascii():
            raise UsageError(f"{where}: {num!r} is not a file descriptor number")
        key = name.upper()
        if key in seen:
            raise UsageError(f"{where}: the name {name!r} is already used by --fd {seen[key]!r}")
        seen[key] = flag
        source = int(num)
        try:
            st = os.fstat(source)
        except (OSError, OverflowError):
            raise UsageError(f"{where}: fd {source} is not open in the host") from None
        if stat.S_ISDIR(st.st_mode):
            # openat(fd, "../..") leaves the directory: the cell would get the host's whole
            # file system with its host uid's permissions, not the directory.
            raise UsageError(f"{where}: fd {source} is a directory, which would give the cell "
                             "every file of the host it may read (through '..'), not just "
                             "that directory")
        if fcntl.fcntl(source, fcntl.F_GETFL) & os.O_PATH:
            # An O_PATH fd reads and writes nothing, but /proc/self/fd/N opens its file
            # anew with any mode the cell's host uid may use.
            raise UsageError(f"{where}: fd {source} is an O_PATH handle, which would let the "
                             "cell open the file behind it for reading and writing")
        grants.append(FdGrant(name=name, source=source, target=FIRST_GRANTED_FD + i))
    return grants


def fd_env(grants: list[FdGrant]) -> dict[str, str]:
    """The ``WW_FD_*`` variables announcing the granted fds."""
    return {g.env_name: str(g.target) for g in grants}


def install_fds(rpc_fd: int, grants: Sequence[FdGrant]) -> None:
    """In the forked child, before exec: put the RPC socket at 3 and each grant at its target.

    Sources are first duplicated above every target, so that a source which happens to
    sit at a target number (``--fd db=3``) is not overwritten before it is moved.  The
    duplicates are close-on-exec; the targets are inheritable.
    """
    sources = [rpc_fd] + [g.source for g in grants]
    floor = FIRST_GRANTED_FD + len(grants) + 1

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in sources]
    for target, fd in enumerate(high, start=RPC_FD):
        os.dup2(fd, target, inheritable=True)
    for fd in high:
        os.close(fd)


def relay_mode(fd: int) -> str | None:
    """``"read"`` or ``"write"`` if a jailed cell must get ``fd`` through a pipe
    :mod:`ww.host.relay` fills or drains, else None (it passes as it is).

    A regular file or block device open read-only or write-only: reopened through
    ``/proc/self/fd``, it would give the cell any mode its host uid may use.  One open
    read-write gives no more when reopened; other files reopen as themselves.
    """
    try:
        st = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return None
    access = flags & os.O_ACCMODE
    if access == os.O_RDONLY:
        return "read"
    if access == os.O_WRONLY:
        return "write"
    return None
