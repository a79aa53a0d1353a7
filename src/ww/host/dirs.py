"""Host directories granted to a cell: ``--dir NAME=PATH[:ro|:rw]``.

Each granted directory is bound into the jail at ``/run/ww/dir/<NAME>`` (:data:`MOUNT_ROOT`:
below bubblewrap's own read-only root, where none of the jail's other mounts is), read-only
unless the flag ends in ``:rw``, and announced to the cell as ``WW_DIR_<NAME>`` (upper-case,
like ``WW_FD_<NAME>``).  With ``--jail=none`` nothing is bound: the variable names the
directory's host path, and nothing keeps the cell inside it or from writing it.

The flag's value: the name (the rule of ``--fd`` names: letters, digits and ``_``, not
starting with a digit; names are compared without case), ``=``, the path, then an optional
``:ro`` or ``:rw``.  Only those two exact suffixes are a mode; every other ``:`` belongs to
the path, so ``/srv/a:b`` is the path ``/srv/a:b``, and a path that itself ends in ``:ro``
or ``:rw`` is given with a mode after it (``/srv/x:rw:ro``).

Checked before anything starts (one line, exit 2): the path exists and is a directory, and
it is none of :func:`refusal`'s: not the root, not the user's home or a directory above it,
nothing below ``/proc``, ``/sys``, ``/dev`` or ``/run``, not ``/etc``, ``/var`` or ``/tmp``
themselves, nothing inside ``$WW_HOME``, and no directory holding `ww`'s own files for the
run (``$WW_HOME`` with the node key, the ``--audit`` file, the ``--identity``/``--node-key``
key files, the ``--policy`` file), compared by path and by device and inode with them and every
directory above them.  The bind is recursive, so the mounts below the path are checked
too: none may be a file system of the kernel's interfaces (a chroot's ``/proc`` below a
granted directory would show the cell every host process), nor one :func:`refusal`
refuses; nor may the directory itself be on such a file system.

No race between the check and the bind: the path is opened once, here, as an ``O_PATH``
directory handle (:func:`open_guarded`: a symlink another user planted in ``/tmp`` is not
followed), and everything is checked on that handle (its ``fstat``, and its real
path as the kernel reports it through ``/proc/self/fd``), never on the path again.
bubblewrap gets the handle itself (``--ro-bind-fd N``/``--bind-fd N``).  It cannot mount
the handle directly (it comes from another user namespace), so it mounts the path the
handle's ``/proc/self/fd/N`` link names and then compares the mounted directory's device
and inode with the handle's: if anything on the way (a symlink, a parent directory, a
mount) was swapped since the check, the two differ and bubblewrap refuses to start ("Race
condition binding dirfd"), so the cell never sees another directory than the one checked.
``--ro-bind PATH`` would resolve the operator's path afresh and bind whatever it names then.
When `ww` runs as root, bubblewrap resolves that path as the cell's unprivileged user, so a
directory below one that user cannot enter is staged first (:func:`ww.host.jail.dropper`).
"""

from __future__ import annotations

import os
import stat

from ww.core.errors import UsageError
from ww.core.records import NamedTuple
from ww.host.fds import NAME_PATTERN  # one rule for --fd and --dir names

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence

MOUNT_ROOT = "/run/ww/dir"
ENV_PREFIX = "WW_DIR_"
NAME_MAX = 255  # a name is the mount point's file name

# Refused, and every directory below them: the kernel's interfaces (/proc/<pid>/root is a
# way into every process's file system), the devices, and the services' sockets (a unix
# socket is reachable through a read-only bind: connecting writes nothing).
_REFUSED_TREES = ("/proc", "/sys", "/dev", "/run")
# Refused themselves (a directory below them is fine): all of the host's configuration,
# its variable data, and every user's temporary files and sockets.
_REFUSED_EXACTLY = ("/etc", "/var", "/tmp")
# File systems that are the kernel's interfaces, refused at the granted directory and at
# every mount below it (the bind is recursive, so those come along): a chroot's /proc
# mounted below a granted directory is the host's /proc in the jail, every host process
# and its command line; a fresh proc mount elsewhere is not /proc by device and inode.
_REFUSED_TYPES = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "debugfs",
    "tracefs", "securityfs", "bpf", "configfs", "efivarfs", "pstore", "binfmt_misc",
    "fusectl", "selinuxfs", "nsfs", "rpc_pipefs", "nfsd",
})


class DirGrant(NamedTuple):
    """One ``--dir`` flag: the directory open as ``fd`` (``O_PATH``), found at ``path`` on
    the host, bound at :attr:`dest` in the jail, writable or not."""

    name: str
    path: str  # the real path the handle had when checked
    fd: int  # O_PATH | O_DIRECTORY, close-on-exec; bubblewrap binds from it
    writable: bool

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def dest(self) -> str:
        return f"{MOUNT_ROOT}/{self.name}"


def split_flag(flag: str) -> tuple[str, str, bool]:
    """``NAME=PATH[:ro|:rw]`` as (name, path, writable); the form only, nothing opened."""
    name, sep, rest = flag.partition("=")
    if not sep or not rest:
        raise UsageError(f"--dir {flag!r}: expected NAME=PATH[:ro|:rw], for example "
                         "--dir data=./data")
    writable = False
    if rest.endswith((":ro", ":rw")):
        rest, writable = rest[:-3], rest.endswith(":rw")
    if not rest:
        raise UsageError(f"--dir {flag!r}: the path is empty")
    return name, rest, writable


def _home_dirs() -> list[str]:
    """The user's home directories: ``$HOME``, and the password database's for the uid."""
    homes = [os.environ.get("HOME", "")]
    try:
        import pwd

        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    except (KeyError, ImportError):
        pass
    return [os.path.realpath(h) for h in homes if h.startswith("/")]


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _above(path: str) -> list[str]:
    """``path`` and every directory above it, up to ``/``."""
    found = [path]
    while path != "/":
        path = os.path.dirname(path)
        found.append(path)
    return found


def _unescape(field: bytes) -> str:
    r"""A path as /proc/self/mountinfo writes it (space, tab, newline and ``\`` as
    ``\ooo``), as os.readlink returns paths."""
    import re

    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


def mounts(fd: int, real: str) -> list[tuple[str | None, str]]:
    """(mount point, file system type) of the mount the handle ``fd`` is on (its mount
    point given as None) and of every other mount at or below ``real``, its real path, as
    this process's mount namespace has them (the one bubblewrap binds from)."""
    mnt_id = b""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                mnt_id = line.split()[1]
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields, _, rest = line.partition(b" - ")
            parts = fields.split()
            point = _unescape(parts[4])
            fstype = rest.split()[0].decode(errors="replace")
            if parts[0] == mnt_id:
                found.append((None, fstype))
            elif _within(point, real):
                found.append((point, fstype))
    return found


def refusal(real: str, st: os.stat_result,
            protected: Sequence[tuple[str, str]] = ()) -> str | None:
    """Why the directory at real path ``real`` (``st`` its stat) must not be granted, if so.

    Compared both by path and by identity (device and inode), so that the same directory
    reached another way (a bind mount of ``/`` elsewhere) is refused too.  ``protected``
    are (what, path) pairs of `ww`'s own files for this run (its repository with the node
    key, the audit file, key and policy files): a directory holding one is refused, and,
    for a directory of them (the repository), every directory inside it."""
    ident = (st.st_dev, st.st_ino)

    def same(path: str) -> bool:
        try:
            other = os.stat(path)
        except OSError:
            return False
        return (other.st_dev, other.st_ino) == ident

    def holds(path: str) -> bool:  # the directory is, by identity, path or one above it
        return any(same(p) for p in _above(path))

    if real == "/" or same("/"):
        return "it is the root of the host's file system"
    for home in _home_dirs():
        if _within(home, real) or holds(home):
            what = "the home directory" if real == home or same(home) else \
                f"a directory holding the home directory {home}"
            return f"it is {what}: grant the directory the cell needs, below it"
    for top in _REFUSED_TREES:
        if _within(real, top) or same(top):
            return f"{top} and everything below it are the host's own, never granted"
    for top in _REFUSED_EXACTLY:
        if real == top or same(top):
            return f"{top} itself is too broad: grant the directory the cell needs, below it"
    for what, path in protected:
        mine = os.path.realpath(path)
        if _within(mine, real) or holds(mine):
            return f"it holds {what} ({mine}), which the cell must not reach"
        if os.path.isdir(mine) and (_within(real, mine) or _inside(real, mine)):
            return f"it is inside {what} ({mine}), which the cell must not reach"
    return None


def _inside(real: str, top: str) -> bool:
    """Whether a directory above ``real`` (its real path) is, by device and inode, ``top``:
    ``top`` reached through a bind mount elsewhere."""
    try:
        st = os.stat(top)
    except OSError:
        return False
    for path in _above(real)[1:]:
        try:
            other = os.stat(path)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


_MAX_LINKS = 40  # symlinks followed for one path at most, as the kernel (ELOOP)


class _Planted(Exception):
    """A symlink :func:`open_guarded` will not follow: why, in words."""


def open_guarded(path: str) -> int:
    """``path`` opened as an ``O_PATH`` handle (close-on-exec), each component opened from
    the one before it without following a symlink, and every symlink on the way (also in
    a link's target) followed by hand under the rule of the kernel's
    ``fs.protected_symlinks``, which a host may have off: a link in a sticky,
    world-writable directory (``/tmp``) is followed only if it belongs to this process's
    user or to that directory's owner.  Another local user cannot point the operator's
    ``--dir /tmp/build`` at a directory of the operator's; and since the handle is the
    end of that walk, nothing can be swapped between the check and the open.

    Raises OSError as ``open(path, O_PATH | O_DIRECTORY)`` would (missing, not a
    directory, permission, ``ELOOP``), and :class:`_Planted` for a link refused."""
    import errno

    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    todo = [p for p in reversed(path.split("/")) if p]  # the next component last
    current = os.open("/" if path.startswith("/") else ".", flags | os.O_DIRECTORY)
    links = 0
    try:
        while todo:
            part = todo.pop()
            if part == ".":
                continue
            try:  # O_DIRECTORY: an automount point is mounted, as open() would
                following = os.open(part, flags | os.O_DIRECTORY, dir_fd=current)
            except NotADirectoryError:  # a symlink (O_NOFOLLOW), or not a directory
                following = os.open(part, flags, dir_fd=current)
            else:
                os.close(current)
                current = following
                continue
            st = os.fstat(following)
            if not stat.S_ISLNK(st.st_mode):
                os.close(following)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            try:
                parent = os.fstat(current)
                if parent.st_mode & 0o1002 == 0o1002 and \
                        st.st_uid not in (os.geteuid(), parent.st_uid):
                    where = os.readlink(f"/proc/self/fd/{current}")
                    raise _Planted(
                        f"the symlink {os.path.join(where, part)} belongs to another user "
                        f"(uid {st.st_uid}) in the sticky, world-writable directory {where}, "
                        "which anyone may have put there: name the directory itself")
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink("", dir_fd=following)  # the link opened, not its name
            finally:
                os.close(following)
            todo.extend(reversed([p for p in target.split("/") if p]))
            if target.startswith("/"):
                os.close(current)
                current = os.open("/", flags | os.O_DIRECTORY)
    except BaseException:
        os.close(current)
        raise
    return current


def _mount_refusal(fd: int, real: str, protected: Sequence[tuple[str, str]]) -> str | None:
    """Why a mount the grant would bring along (its own, or one below it: the bind is
    recursive) must not be granted, if so."""
    for point, fstype in mounts(fd, real):
        where = "it" if point is None else f"{point}, a mount below it,"
        if fstype in _REFUSED_TYPES:
            return f"{where} is a {fstype} file system (the kernel's interfaces), never granted"
        if point is not None:
            try:
                why = refusal(point, os.stat(point), protected)
            except OSError:
                continue
            if why is not None:
                return f"{point}, a mount below it: {why}"
    return None


def parse_dir_flags(flags: list[str], protected: Sequence[tuple[str, str]] = (),
                    code: Sequence[tuple[str, str]] = ()) -> list[DirGrant]:
    """Check every ``--dir`` flag and open its directory (see the module's docstring).

    Raises UsageError naming the flag: a malformed flag, a bad or duplicate name (without
    case), a path that is missing or not a directory, or one :func:`refusal` refuses (with
    ``protected``, and for a ``:rw`` grant ``code`` too: `ww`'s own code, which a cell must
    not rewrite).  On an error, the handles opened so far are closed."""
    grants: list[DirGrant] = []
    seen: dict[str, str] = {}
    try:
        for flag in flags:
            where = f"--dir {flag!r}"
            name, path, writable = split_flag(flag)
            import re

            if not re.match(NAME_PATTERN, name):
                raise UsageError(f"{where}: the name must be letters, digits and '_', not "
                                 "starting with a digit")
            if len(name) > NAME_MAX:  # it names the mount point: one file name
                raise UsageError(f"{where}: the name is longer than {NAME_MAX} characters")
            key = name.upper()
            if key in seen:
                raise UsageError(f"{where}: the name {name!r} is already used by "
                                 f"--dir {seen[key]!r}")
            seen[key] = flag
            try:
                fd = open_guarded(path)
            except _Planted as e:
                raise UsageError(f"{where}: refused to grant {path}: {e}") from None
            except FileNotFoundError:
                raise UsageError(f"{where}: {path} does not exist") from None
            except NotADirectoryError:
                raise UsageError(f"{where}: {path} is not a directory") from None
            except OSError as e:
                raise UsageError(f"{where}: cannot open {path}: {e.strerror}") from None
            grants.append(DirGrant(name=name, path="", fd=fd, writable=writable))
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):  # open_guarded saw to it; checked on the handle
                raise UsageError(f"{where}: {path} is not a directory")
            real = os.readlink(f"/proc/self/fd/{fd}")  # what the handle is, not the path
            mine = [*protected, *code] if writable else protected
            why = refusal(real, st, mine)
            if why is None:
                why = _mount_refusal(fd, real, mine)
            if why is not None:
                shown = path if path == real else f"{path} ({real})"
                raise UsageError(f"{where}: refused to grant {shown}: {why}")
            grants[-1] = grants[-1]._replace(path=real)
    except BaseException:
        close(grants)
        raise
    return grants


def close(grants: Sequence[DirGrant]) -> None:
    """Close the grants' handles (once the jail is started, or on an error)."""
    for g in grants:
        try:
            os.close(g.fd)
        except OSError:
            pass


def dir_env(grants: Sequence[DirGrant], jailed: bool) -> dict[str, str]:
    """The ``WW_DIR_*`` variables: each directory's place in the jail, or with
    ``--jail=none`` its host path."""
    return {g.env_name: g.dest if jailed else g.path for g in grants}


def bwrap_args(grants: Sequence[DirGrant], first_fd: int) -> list[str]:
    """bubblewrap's arguments binding ``grants``, their handles at ``first_fd``, ... in the
    process that executes bubblewrap (after the mounts of the jail's own)."""
    argv: list[str] = []
    for i, g in enumerate(grants):
        argv += ["--bind-fd" if g.writable else "--ro-bind-fd", str(first_fd + i), g.dest]
    return argv
