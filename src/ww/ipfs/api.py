"""The one IPFS interface that every backend implements (kubo's CoreAPI idea).

The capability server (``ww.caps.ipfs``) and the CLI (``ww export`` / ``ww import`` /
``ww run /ipfs/...``) speak only to :class:`CoreAPI`.  Two backends implement it:

* ``ww.ipfs.node.EmbeddedNode`` -- the default: a repository under ``$WW_HOME``
  (blocks, pins, identity), offline.
* ``ww.ipfs.kubo.KuboClient`` -- every operation goes to a kubo node's HTTP RPC API
  (``--ipfs`` / ``WW_IPFS``).

Paths accepted wherever a ``path`` is taken: ``/ipfs/<cid>[/sub/path]``, ``<cid>[/sub/path]``.
Large data always moves in bounded pieces: ``add_stream`` consumes an iterator of chunks,
``cat`` yields chunks, so memory stays flat for multi-GiB files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ww.core.errors import (  # noqa: F401 (re-exported, see below)
    BackendUnavailableError,
    CallCancelled,
    CorruptBlockError,
    InvalidPathError,
    IpfsError,
    NotAFileError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)

# The values CoreAPI returns, shared with the cell SDK; re-exported from here.
from ww.core.ipfs_values import Entry, EntryType, Link, PeerInfo, Stat  # noqa: F401

# The IPFS errors are defined in the one tree (ww.core.errors): the multiformats glue in
# ww.core raises them too.  They are re-exported here, where the CoreAPI's callers look.


class CancelToken:
    """Tells a call's blocking work that its caller gave up (the role of kubo's ``context``).

    Blocking work runs under a token (:func:`cancellable`) and asks :func:`current_token`
    for it: a loop checks :meth:`check` between steps, a wait registers :meth:`on_cancel` to
    be woken (a socket shut down, a future failed).  Thread-safe; ``cancel`` is idempotent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = list(self._callbacks.values()), {}
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a waker of something already gone: nothing left to wake
                pass

    def check(self) -> None:
        """Raise :class:`CallCancelled` if the caller gave up."""
        if self._cancelled:
            raise CallCancelled("the call was cancelled")

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run ``callback`` (from any thread) when cancelled, at once if already; returns a
        function that forgets it (call it when the wait it would end is over)."""
        with self._lock:
            if not self._cancelled:
                key = self._next
                self._next += 1
                self._callbacks[key] = callback
                return lambda: self._callbacks.pop(key, None) and None
        callback()
        return lambda: None


_NEVER = CancelToken()  # the token of work nobody can cancel (the CLI's)
_local = threading.local()


def current_token() -> CancelToken:
    """The token of the call this thread works for (one never cancelled outside any)."""
    return getattr(_local, "token", _NEVER)


@contextmanager
def cancellable(token: CancelToken) -> Iterator[None]:
    """Run the block's blocking IPFS work under ``token``."""
    before = current_token()
    _local.token = token
    try:
        yield
    finally:
        _local.token = before


class WouldWait(IpfsError):
    """Raised under :func:`local_only` where the work would wait on the network."""


class _WouldWaitMarker:
    """What a file's chunk iterator yields, under :func:`local_only`, instead of waiting for a
    block that is not in the repository; iterated again (outside it), it goes on from there."""


WOULD_WAIT: Any = _WouldWaitMarker()


def is_local_only() -> bool:
    """Whether this thread's IPFS work must not wait on the network (:func:`local_only`)."""
    return getattr(_local, "local_only", False)


@contextmanager
def local_only() -> Iterator[None]:
    """Run the block's IPFS work without waiting on the network: a block the repository lacks
    raises :class:`WouldWait` (a file's chunk iterator yields :data:`WOULD_WAIT`).

    Why: a cell reading a local file through the capability is served on the RPC loop itself,
    in bounded steps (a read is at most 4 MiB of verified local blocks); handing every step to
    a worker thread cost half the read rate (measured: 270 against 530 MiB/s), since the
    loop and the worker then contend for the GIL.  Only what would wait goes to a worker."""
    before = is_local_only()
    _local.local_only = True
    try:
        yield
    finally:
        _local.local_only = before


class ShardRatioError(CorruptBlockError):
    """Raised by a directory walk (``ww.ipfs.exporter``) at the first HAMT sub-shard past
    its bound proportional to the entries it has yielded (``SHARD_SLACK + SHARDS_PER_ENTRY
    * entries``): a HAMT no importer writes, so corrupt, as every caller already says it."""


class ShardBoundError(IpfsError):
    """Raised by a walk under :func:`counting_shards` at the first HAMT sub-shard past its
    count's limit (nothing of that shard read)."""


class ShardCount:
    """The HAMT sub-shards the walks under :func:`counting_shards` read, and how many they
    may: one for each listing a cell asks for (``ww.caps.ipfs``), kept across its steps."""

    __slots__ = ("limit", "read")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.read = 0


@contextmanager
def counting_shards(count: ShardCount) -> Iterator[None]:
    """Count against ``count`` every HAMT sub-shard the block's work reads in this thread
    (:func:`shard_read`, called by the exporter before it reads one)."""
    before = getattr(_local, "shards", None)
    _local.shards = count
    try:
        yield
    finally:
        _local.shards = before


def shard_read() -> None:
    """A HAMT sub-shard is about to be read: counted if the thread's work is
    (:func:`counting_shards`), and refused with :class:`ShardBoundError` past the limit."""
    count: ShardCount | None = getattr(_local, "shards", None)
    if count is not None:
        if count.read >= count.limit:
            raise ShardBoundError(f"more than {count.limit} HAMT shards read")
        count.read += 1

@dataclass(frozen=True)
class AddOptions:
    """kubo ``ipfs add`` options we match byte for byte."""

    cid_version: int = 0  # 1 implies raw_leaves unless raw_leaves is given
    raw_leaves: bool | None = None
    pin: bool = True
    only_hash: bool = False
    chunker: str = "size-262144"  # kubo's --chunker: size-N, rabin[-AVG|-MIN-AVG-MAX], buzhash
    wrap: bool = False  # kubo's -w: the result is a directory holding the path (or the stream)
    # kubo's --stdin-name: the name a wrapped stream (add_stream with wrap) gets in its
    # directory; "" names it by its own CID, as kubo does.
    stdin_name: str = ""
    # Called with (name, CID) for each file, symlink and directory added, in the order kubo's
    # `ipfs add` reports them: files as they are added, then directories children first.
    on_added: Callable[[str, str], None] | None = field(default=None, compare=False)
    # Directory trees: include names starting with "." (kubo's library does; its command line,
    # and so `ww export`, skips them unless --hidden is given).
    hidden: bool = True


PIN_TYPES = ("recursive", "direct", "indirect")
"""What a pin can be, as kubo names them: a recursive pin keeps a whole DAG, a direct pin one
block, and every other block of a recursively pinned DAG is pinned indirectly."""


def check_pin_type(type: str) -> None:
    """Refuse a pin type that is neither one of :data:`PIN_TYPES` nor ``"all"``."""
    if type != "all" and type not in PIN_TYPES:
        raise UsageError(f"invalid pin type {type!r}: use one of {', '.join(PIN_TYPES)} or all")


@dataclass(frozen=True)
class RepoStat:
    """What ``repo_stat`` reports, with kubo's ``ipfs repo stat`` fields."""

    repo_size: int  # bytes stored (the embedded node: its blocks; kubo: its repository)
    num_objects: int  # blocks stored
    repo_path: str
    version: str  # the repository format, e.g. "ww-repo@1" or kubo's "fs-repo@15"
    storage_max: int | None = None  # kubo's Datastore.StorageMax; None: no limit


class CoreAPI(Protocol):
    """The operations both backends provide."""

    guards_dials: bool
    """Whether every connection the backend makes passes ww's dial policy
    (:mod:`ww.p2p.dial_policy`): the embedded node's own transport refuses the others; kubo
    dials whatever addresses it knows for a peer, so a capability asks it only for a full,
    checked address."""

    local_reads: bool
    """Whether a file's chunk iterator honours :func:`local_only` (the embedded node: its
    blocks are local files); kubo's are HTTP responses, which may always wait."""

    verifies_blocks: bool
    """Whether every block the backend returns was hashed against its CID here (the embedded
    node); a kubo node's answers are taken as they come."""

    # writing
    def add_stream(self, chunks: Iterable[bytes], options: AddOptions = ...) -> str:
        """Add one file's bytes; returns its CID."""

    def add_path(self, path: Path, options: AddOptions = ...) -> str:
        """Add a file, symlink or directory tree recursively (as ``ipfs add -r``).

        Returns the root CID.  Symlinks are stored as symlinks, never followed.
        """

    # reading
    def cat(self, path: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream a file's bytes, from ``offset``, at most ``length`` bytes."""

    def ls(self, path: str) -> list[Entry]:
        """A directory's entries in link order (sorted by name); for a file or symlink, one
        entry describing it, named after the path's last component (as Unix ``ls`` does)."""

    def iter_ls(self, path: str) -> Iterator[Entry]:
        """:meth:`ls` one entry at a time, as the directory is read, never held whole (kubo's
        ``ls --stream``); a path that does not resolve raises before the first entry."""

    def stat(self, path: str, links: bool = True) -> Stat:
        """Type, sizes and (``links``) every entry of a directory, all held at once; with
        ``links=False`` none, and only the node itself is read (what :meth:`iter_ls` lists
        one at a time, without holding them)."""

    def iter_links(self, path: str) -> Iterator[Link]:
        """:meth:`stat`'s links (a directory's entries, their children not read) one at a
        time, as the directory is read, never held whole; none for a file or symlink; a path
        that does not resolve raises before the first."""

    def resolve(self, path: str) -> str:
        """``/ipfs/<cid>/a/b`` -> the CID of ``b``."""

    def get(self, path: str, dest: Path, executable: bool = False,
            force: bool | None = None) -> None:
        """Write a file or a tree to ``dest`` atomically (nothing half-written on failure).

        ``force`` a bool: ``ww import``'s rule -- ``dest`` is the path written; one that
        exists is an error unless ``force``, which replaces a regular file or directory there
        (never a symlink, device, FIFO or socket).  None: a directory is merged into an
        existing ``dest``, a file goes inside an existing directory ``dest``."""

    # pins
    def pin(self, path: str, recursive: bool = True) -> None: ...

    def unpin(self, path: str) -> None: ...

    def pins(self) -> list[str]: ...

    def iter_pins(self) -> Iterator[str]:
        """:meth:`pins` one at a time, in no order, never held whole (a CID may come twice)."""

    def pin_ls(self, type: str = "all") -> dict[str, str]:
        """Pinned CIDs -> their pin type (one of :data:`PIN_TYPES`), as ``ipfs pin ls``:
        ``type`` is one of them or ``"all"``.  A CID pinned in several ways is reported once,
        as recursive before direct before indirect."""

    # the repository
    def repo_stat(self) -> RepoStat:
        """Size and block count of the repository (``ipfs repo stat``)."""

    # CAR interchange
    def export_car(self, roots: list[str], out: BinaryIO) -> None: ...

    def import_car(self, src: BinaryIO) -> list[str]:
        """Import every block of a CAR v1 (verifying each) and return its roots."""

    # network
    def id(self) -> PeerInfo: ...

    def peers(self) -> list[PeerInfo]: ...

    def connect(self, addr: str) -> None: ...

    def close(self) -> None: ...
