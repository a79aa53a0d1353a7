"""Small file-system helpers shared by the repository parts."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

from ww.core.errors import WwError


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, creations, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Make everything written on the file system holding ``path`` durable, in one call.

    One ``syncfs`` after writing many files lets the kernel flush them together, which is
    about twice as fast as an ``fsync`` per file; where ``syncfs`` is missing, ``sync`` does
    the same for every file system.
    """
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


# Files a batch written unsynced makes durable with an fsync each; more: one syncfs
# (SyncedTogether).  A syncfs writes out everything on the file system not yet written, other
# writers' too: with 2 GiB left unsynced by another writer, a `dag import` of a one-block CAR
# took 0.1-0.8 s, an `add` of 100 bytes 0.1-0.6 s (an fsync each: 11-25 ms and 7-27 ms;
# benchmarks/sync_small.py); an fsync costs about 1.2 ms a file here, 32 some 40 ms.
SYNC_EACH = 32


class SyncedTogether:
    """Files written without their own sync (``write_new_file(..., sync=False)``), made
    durable together by :meth:`sync`: an fsync each while they are :data:`SYNC_EACH` or fewer,
    else one :func:`sync_filesystem` of the file system holding ``root``.  So a request that
    wrote a few blocks never waits for the whole file system's unwritten data (another
    client's upload, another program's), while a batch of thousands syncs at once.  Only the
    first :data:`SYNC_EACH` paths are kept, whatever the batch's size; :meth:`add` may be
    called from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0
        self._few: list[Path] = []
        self._lock = threading.Lock()

    def add(self, path: Path) -> None:
        with self._lock:
            self.count += 1
            if self.count <= SYNC_EACH:
                self._few.append(path)

    def sync(self) -> None:
        """Make every file added so far durable (their data; their names are the caller's
        to sync, with their directories), then start counting anew."""
        with self._lock:
            count, few = self.count, self._few
            self.count, self._few = 0, []
        if count > SYNC_EACH:
            sync_filesystem(self.root)
            return
        for path in few:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_new_file(
    path: Path, parts: Sequence[bytes | memoryview], mode: int = 0o444, sync: bool = True
) -> None:
    """Create ``path`` (which must not exist), write ``parts`` and (with ``sync``) fsync it.

    On any failure the file is removed again.  ``writev`` writes the parts without joining them.
    A caller that passes ``sync=False`` must make the file durable itself before relying on
    it (see :func:`sync_filesystem`).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        pending = [memoryview(p) for p in parts if len(p)]
        while pending:
            written = os.writev(fd, pending)
            while written:
                if written >= len(pending[0]):
                    written -= len(pending.pop(0))
                else:
                    pending[0] = pending[0][written:]
                    written = 0
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


class ForeignDirectoryError(WwError):
    """``$WW_HOME`` belongs to another user (exit 1): refused, as OpenSSH refuses a
    ``~/.ssh`` that is not its user's."""


# What a directory holds once ww has used it as $WW_HOME (one of them is enough).
_WW_HOME_NAMES = frozenset({"version", "blocks", "pins", "staging", "identity.key", "gc.lock",
                            "exec-cache", "daemon.lock", "api", "gateway"})


def private_directory(path: Path) -> None:
    """Make ``path`` (``$WW_HOME``: ww's repository, node key and exec cache) a directory of
    the user running ``ww`` that no one else may enter.

    Created with mode 0700 (its parents as ``mkdir -p`` makes them).  One that exists is
    checked on the directory opened: another user's -- even root's, for a user, or a user's
    for root -- is refused with :class:`ForeignDirectoryError`, since its owner could change
    what ``ww`` reads and runs from it (swap an exec-cache entry between its check and its
    use, fill ``gc.lock``'s place); one of our own that group or others may enter is made
    private (``go-rwx``, its other bits kept) if it is empty or already a ww home: its blocks
    are the user's files, and anyone who can open ``gc.lock`` can ``flock`` it and stall every
    write.  Any other open directory (``WW_HOME=/tmp``, ``$HOME``, a project's directory) is
    refused rather than changed under its other users.  A mode that cannot be changed (a
    read-only mount) is left."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise ForeignDirectoryError(
                f"{path} belongs to uid {st.st_uid}, not to uid {me} running ww: its owner "
                "could change what ww reads and runs from it; use a directory of your own "
                "(WW_HOME)")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            names = set(os.listdir(fd))
            if names and not names & _WW_HOME_NAMES:
                raise ForeignDirectoryError(
                    f"{path} is open to other users and is not a ww home: ww will not make "
                    "it private under them; use a directory of its own (WW_HOME), or "
                    f"`chmod go-rwx {path}`")
            with contextlib.suppress(OSError):
                os.fchmod(fd, mode & ~0o077)
    finally:
        os.close(fd)


def publish_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data`` and ``mode``, complete or not at all, never replacing.

    The bytes go to a temporary sibling (``.<name>.ww-new-<12 hex digits>``, created with
    ``O_EXCL``/``O_NOFOLLOW`` and ``mode`` from the start, so never readable by others, even
    empty), are fsynced, and the file is renamed into place with :func:`rename_noreplace`.
    Anything at ``path`` -- a file, a directory, a symlink, dangling or not -- raises
    FileExistsError and is left as it was; on any failure the temporary file is removed.
    """
    import secrets

    path = Path(path)
    # not `ww import`'s ``.ww-tmp-`` form: an import into the same directory removes
    # those it finds unlocked as left by a killed import, this one too, mid-write
    tmp = path.parent / f".{path.name}.ww-new-{secrets.token_hex(6)}"
    write_new_file(tmp, [data], mode)
    try:
        rename_noreplace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


_RENAME_NOREPLACE = 1


def rename_noreplace(src: Path | str, dst: Path | str, *, src_dir_fd: int | None = None,
                     dst_dir_fd: int | None = None) -> None:
    """Rename ``src`` to ``dst`` only if ``dst`` does not exist (``renameat2`` with
    ``RENAME_NOREPLACE``): something that appeared at ``dst`` meanwhile, a symlink for one, is
    never replaced.  Relative names are taken in ``src_dir_fd``/``dst_dir_fd`` when given
    (``renameat2``'s directory fds), so a directory on the way that is swapped for a symlink
    cannot move the rename elsewhere.  Raises FileExistsError."""
    import ctypes

    fn = _renameat2()
    if fn is not None:
        if fn(_at(src_dir_fd), os.fsencode(src), _at(dst_dir_fd), os.fsencode(dst),
              _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # otherwise: unsupported by the fs
            raise OSError(err, os.strerror(err), str(dst))
    try:
        os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    except FileNotFoundError:
        pass
    st = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        # no atomic no-replace: checked just above
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
    else:
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                follow_symlinks=False)  # fails if dst exists
        os.unlink(src, dir_fd=src_dir_fd)


def _at(dir_fd: int | None) -> int:
    return _AT_FDCWD if dir_fd is None else dir_fd


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def rename_exchange(src: Path | str, dst: Path | str, *, src_dir_fd: int | None = None,
                    dst_dir_fd: int | None = None) -> bool:
    """Swap ``src`` and ``dst`` in one step (``renameat2`` with ``RENAME_EXCHANGE``); both must
    exist.  Relative names are taken in ``src_dir_fd``/``dst_dir_fd`` when given.  False if
    the file system (or libc) cannot: the caller then does without."""
    import ctypes

    fn = _renameat2()
    if fn is None:
        return False
    if fn(_at(src_dir_fd), os.fsencode(src), _at(dst_dir_fd), os.fsencode(dst),
          _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS):  # unsupported by the file system
        return False
    raise OSError(err, os.strerror(err), str(dst))


@functools.cache
def _renameat2():  # type: ignore[no-untyped-def]
    import ctypes

    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def mount_id(fd: int) -> int | None:
    """The id of the mount the open file ``fd`` is on (``mnt_id`` in
    ``/proc/self/fdinfo``): it tells a bind mount of the same file system apart, which
    ``st_dev`` does not.  None where /proc does not say."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def mount_points_in(directory: str) -> list[str]:
    """The mount points at or below the real path ``directory`` (this mount namespace's, from
    ``/proc/self/mountinfo``); empty where /proc cannot say."""
    import re

    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    top = os.fsencode(directory).rstrip(b"/")
    found = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
        if point == top or point.startswith(top + b"/"):
            found.append(os.fsdecode(point))
    return found
