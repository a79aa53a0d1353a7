"""Reading UnixFS DAGs back: resolve paths, stat, ls, stream file bytes, write trees to disk.

Everything goes through a block getter (``Callable[[CID], bytes]``) that returns verified
bytes, so this module only has to check *structure*: that nodes decode, that a file's
``blocksizes`` agree with its children, that directory names are safe to create on disk.

``cat`` seeks: a file node lists the content size of every child (``blocksizes``), so the
children before ``offset`` and after ``offset + length`` are never fetched.

HAMT-sharded directories (kubo's form of very large directories) are listed by walking every
shard and looked up by following the entry name's murmur3 hash, one shard per level.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import secrets
import stat as stat_mod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ww.core import progress as _progress
from ww.core.cid import CID, RAW
from ww.core.errors import DestinationExistsError, UnsafeDestinationError
from ww.core.fsutil import mount_id, mount_points_in, rename_exchange
from ww.core.fsutil import rename_noreplace as _rename_noreplace

from . import dagpb, unixfs
from .api import (
    WOULD_WAIT,
    CorruptBlockError,
    Entry,
    EntryType,
    IpfsError,
    Link,
    NotAFileError,
    NotFoundError,
    ShardRatioError,
    Stat,
    UnsupportedError,
    WouldWait,
    shard_read,
)
from .path import IpfsPath, parse_path
from .unixfs import DataType

HAMT_MURMUR3 = 0x22
MAX_UINT64 = (1 << 64) - 1
MAX_HAMT_LEVELS = 64  # one bit of the 64-bit murmur3 hash per level at least
SHARD_SLACK = 1024
SHARDS_PER_ENTRY = 4
"""A HAMT walk reads at most ``SHARD_SLACK + SHARDS_PER_ENTRY * entries`` sub-shards for the
entries it has yielded so far, whoever lists it (a cell, ``ww ls``, the RPC's ``ls``, the
gateway's index page).  Importers write far fewer: boxo's HAMT at fanout 2 with random names
averages 1.44 sub-shards an entry, kubo's at fanout 256 about 0.3; a chain of up to 7
single-link shards where names share a hash prefix leads to two entries at least (3.5 an
entry, and rare).  A walk has read, beyond the sub-shards of the entries it yielded, only
the shards on its stack (at most :data:`MAX_HAMT_LEVELS`), and the slack covers those and
the first entries of any layout.  A crafted HAMT of chains of 63 single-link shards, one
entry each, is stopped after 17 entries (1,092 sub-shards): one read amplified at most
about 4 times an entry, not 63."""
MAX_FILE_DEPTH = 1024
"""Levels of a file DAG a read goes down, at most: a read holds about 1 KiB a level, and a
chain of a million one-link nodes (some 50 MB of blocks) held a GiB per read.  Importers
make far shallower DAGs (kubo's balanced layout: 5 levels for a PiB; its trickle layout
grows with the logarithm of the size)."""

__all__ = [
    "BlockGetter", "UnixfsNode", "load", "resolve", "stat", "ls", "cat", "get", "get_path",
    "check_destination", "check_outside_repository", "walk", "entries", "resolve_steps",
    "entry_kind",
]

BlockGetter = Callable[[CID], bytes]

_FILE_TYPES = (DataType.FILE, DataType.RAW)


@dataclass(frozen=True, slots=True)
class UnixfsNode:
    """A decoded block: a raw leaf (``fs is None``) or a dag-pb node with UnixFS data."""

    cid: CID
    block: bytes
    links: tuple[dagpb.PBLink, ...]
    fs: unixfs.UnixFSData | None

    @property
    def type(self) -> EntryType:
        if self.fs is None or self.fs.type in _FILE_TYPES:
            return EntryType.FILE
        if self.fs.type is DataType.SYMLINK:
            return EntryType.SYMLINK
        return EntryType.DIRECTORY

    @property
    def is_directory(self) -> bool:
        return self.type is EntryType.DIRECTORY

    @property
    def content_size(self) -> int:
        """File bytes; symlink target length; 0 for a directory."""
        if self.fs is None:
            return len(self.block)
        if self.fs.type in _FILE_TYPES:
            return self.fs.content_size
        if self.fs.type is DataType.SYMLINK:
            return len(self.fs.data or b"")
        return 0

    @property
    def cumulative_size(self) -> int:
        """The block plus every linked DAG, by the links' Tsize (kubo's CumulativeSize);
        at most 2**64 - 1 (the links are the content's word: they may add up to more)."""
        return min(len(self.block) + sum(link.tsize for link in self.links), MAX_UINT64)

    @property
    def target(self) -> bytes:
        assert self.fs is not None and self.fs.type is DataType.SYMLINK
        return self.fs.data or b""


def load(getter: BlockGetter, cid: CID) -> UnixfsNode:
    """Fetch and decode ``cid``; raises :class:`CorruptBlockError` if it is not UnixFS."""
    block = getter(cid)
    if cid.codec == RAW:
        return UnixfsNode(cid, block, (), None)
    try:
        pb = dagpb.decode(block)
        links = tuple(pb.links)
        fs = _unixfs(pb.data, len(links))
    except CorruptBlockError as err:
        raise CorruptBlockError(f"{cid}: {err}") from None
    _check(cid, fs, len(links))
    return UnixfsNode(cid, block, links, fs)


def _unixfs(data: bytes | None, links: int) -> unixfs.UnixFSData:
    if data is None:
        raise CorruptBlockError("a dag-pb node without UnixFS data")
    return unixfs.decode(data, max_blocksizes=links)


def _check(cid: CID, fs: unixfs.UnixFSData, links: int) -> None:
    """What :func:`load` refuses of a node's UnixFS data ``fs`` with ``links`` links."""
    if fs.type in _FILE_TYPES:
        if len(fs.blocksizes) != links:
            raise CorruptBlockError(f"{cid}: {links} links but {len(fs.blocksizes)} blocksizes")
        if fs.filesize is not None and fs.filesize != len(fs.data or b"") + sum(fs.blocksizes):
            raise CorruptBlockError(f"{cid}: filesize disagrees with its data and blocksizes")
    elif fs.type is DataType.SYMLINK:
        if links:
            raise CorruptBlockError(f"{cid}: a symlink node has links")
    elif fs.type is DataType.HAMT_SHARD:
        if not fs.fanout or fs.fanout & (fs.fanout - 1) or fs.fanout > 1024:
            raise CorruptBlockError(f"{cid}: HAMT shard with invalid fanout {fs.fanout}")
        if fs.hash_type != HAMT_MURMUR3:  # as kubo (boxo's NewHamtFromDag) refuses it
            # No lookup can follow another hash: it would walk every shard for each name
            # (a HAMT of 512,000 entries hashed 0x23: 1.1 s and 257 blocks a `cat` of one).
            raise UnsupportedError(
                f"{cid}: a HAMT shard of hash type {fs.hash_type}, where only murmur3 "
                f"({HAMT_MURMUR3:#x}) is supported")
    elif fs.type is DataType.METADATA:
        raise UnsupportedError(f"{cid} is a UnixFS metadata node, which is not supported")


def entry_kind(getter: BlockGetter, cid: CID) -> tuple[EntryType, int]:
    """The type and content size of ``cid`` (what :func:`iter_ls` shows of a child), read
    from its UnixFS data alone: its links are skipped, not decoded (:func:`dagpb.skim`), and
    what :func:`load` checks of the data is checked.  (Found by attack) each child was
    decoded whole: 10 ms a child of 5,461 empty identity links (64 KiB), and a listing
    cycling through 4,097 of them, one more than :data:`KIND_CACHE`, read each again:
    85 s of CPU a `ww ls` of 8,194 entries, some 17 minutes for a cell's `ls` at its
    bounds; 0.54 ms a child now."""
    block = getter(cid)
    if cid.codec == RAW:
        return EntryType.FILE, len(block)
    try:
        links, data = dagpb.skim(block)
        fs = _unixfs(data, links)
    except CorruptBlockError as err:
        raise CorruptBlockError(f"{cid}: {err}") from None
    _check(cid, fs, links)
    node = UnixfsNode(cid, block, (), fs)  # its links unread: type and content size need none
    return node.type, node.content_size


# --- directories ---------------------------------------------------------------------------


def _dir_links(getter: BlockGetter, node: UnixfsNode) -> Iterator[dagpb.PBLink]:
    """The entries of a plain or HAMT-sharded directory, in stored order.

    Sub-shards are walked with an explicit stack, at most :data:`MAX_HAMT_LEVELS` deep (each
    level uses at least one bit of the 64-bit name hash, so a deeper HAMT is corrupt), and
    each shard once: every shard of a HAMT holds the names of its own hash prefix, so one
    shard linked twice is corrupt (and would list ``fanout ** depth`` entries from a few
    blocks: 256 links to one shard, three levels deep, are 16 million entries).  A sub-shard
    holds at least one entry (kubo removes a shard once it is empty), so an empty one is
    corrupt too: walked, shards of nothing cost a listing the reading of every block a cell
    made (256 x 256 empty shards: 1.9 s of CPU an `ls`, for no entry), where now every shard
    read leads to an entry within :data:`MAX_HAMT_LEVELS` shards.  That is up to 63 shards an
    entry, and chains of single-link shards are what kubo writes where names share a hash
    prefix (so not corrupt): a cell's listing counts each sub-shard against its own bound
    (:func:`~ww.ipfs.api.shard_read`, ``ww.caps.ipfs.MAX_LISTED_SHARDS``), and every walk,
    whoever asks for it, reads at most :data:`SHARD_SLACK` + :data:`SHARDS_PER_ENTRY`
    sub-shards an entry yielded (:class:`~ww.ipfs.api.ShardRatioError` past that: no
    importer writes such a HAMT, however large).
    """
    assert node.fs is not None
    if node.fs.type is DataType.DIRECTORY:
        yield from node.links
        return
    shards = {node.cid.multihash}
    stack = [(node, iter(node.links))]
    yielded = 0
    while stack:
        shard, links = stack[-1]
        width = len(f"{shard.fs.fanout - 1:X}")  # type: ignore[union-attr,operator]
        for link in links:  # left for a sub-shard, taken up again where it was once that ends
            name = link.name
            if len(name) > width:
                yielded += 1
                yield dagpb.PBLink(link.cid, name[width:], link.tsize)
                continue
            if len(name) < width:
                raise CorruptBlockError(f"{shard.cid}: HAMT link name {_shown(name)} is too short")
            if len(stack) >= MAX_HAMT_LEVELS:
                raise CorruptBlockError(f"{node.cid}: HAMT deeper than its hash")
            if link.cid.multihash in shards:
                raise CorruptBlockError(f"{node.cid}: HAMT links the shard {link.cid} twice")
            if len(shards) > SHARD_SLACK + SHARDS_PER_ENTRY * yielded:  # the root's not counted
                raise ShardRatioError(
                    f"{node.cid}: HAMT of more than {SHARD_SLACK} + {SHARDS_PER_ENTRY} sub-shards "
                    f"an entry ({len(shards) - 1} read for {yielded} entries)")
            shards.add(link.cid.multihash)
            shard_read()
            child = load(getter, link.cid)
            if child.fs is None or child.fs.type is not DataType.HAMT_SHARD:
                raise CorruptBlockError(f"{link.cid}: expected a HAMT shard")
            if not child.links:
                raise CorruptBlockError(f"{link.cid}: an empty HAMT shard")
            stack.append((child, iter(child.links)))
            break
        else:
            stack.pop()


def entries(getter: BlockGetter, node: UnixfsNode) -> Iterator[dagpb.PBLink]:
    """A plain or HAMT-sharded directory's entries one at a time, in stored order, each shard
    read as the walk reaches it: what holds one shard's links at a time, where :func:`stat`
    holds them all (a directory may have millions)."""
    return _dir_links(getter, node)


def _find(getter: BlockGetter, node: UnixfsNode, name: bytes,
          take: Callable[[], None] = shard_read) -> CID | None:
    """The CID of entry ``name``; a HAMT is descended along the name's hash, one shard a level
    (``take`` called before each sub-shard is read)."""
    assert node.fs is not None
    if node.fs.type is not DataType.HAMT_SHARD:  # one block; a HAMT is murmur3 (load)
        return next((link.cid for link in _dir_links(getter, node) if link.name == name), None)
    hashed = int.from_bytes(unixfs.hamt_hash(name), "big")
    consumed = 0
    for _ in range(MAX_HAMT_LEVELS):
        fanout = node.fs.fanout or 0
        bits = fanout.bit_length() - 1
        if consumed + bits > 64:
            raise CorruptBlockError(f"{node.cid}: HAMT deeper than its hash")
        index = (hashed >> (64 - consumed - bits)) & (fanout - 1)
        consumed += bits
        width = len(f"{fanout - 1:X}")
        prefix = f"{index:0{width}X}".encode()
        link = next((lk for lk in node.links if lk.name[:width] == prefix), None)
        if link is None:
            return None
        if len(link.name) > width:
            return link.cid if link.name[width:] == name else None
        take()
        node = load(getter, link.cid)
        if node.fs is None or node.fs.type is not DataType.HAMT_SHARD:
            raise CorruptBlockError(f"{link.cid}: expected a HAMT shard")
    raise CorruptBlockError(f"{node.cid}: HAMT deeper than its hash")


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _clip(text: str, limit: int = 200) -> str:
    """``text`` cut for an error line: a name from content may be megabytes long."""
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _shown(name: object) -> str:
    return _clip(repr(name))


def resolve(getter: BlockGetter, path: IpfsPath) -> UnixfsNode:
    """Follow ``path``'s names from its root; the node it names."""
    return collections.deque(resolve_steps(getter, path), maxlen=1)[0]


def resolve_steps(getter: BlockGetter, path: IpfsPath) -> Iterator[UnixfsNode]:
    """The node of ``path``'s root, then the node each of its names leads to, in turn.

    A lookup reads at most :data:`MAX_HAMT_LEVELS` shards of a HAMT, and the HAMT
    sub-shards the whole path's lookups read are at most :data:`SHARD_SLACK` +
    :data:`SHARDS_PER_ENTRY` a name looked up (:class:`~ww.ipfs.api.ShardRatioError` past
    that), as a listing's are an entry.  (Found by attack) a path's names, each leading
    through a chain of 63 single-link sub-shards (a HAMT of fanout 2; chains kubo writes
    where names share a hash prefix), read 64 blocks a name of two bytes: a path of 2 KB,
    64,001 blocks and 1.4 s of CPU a `cat` (a cell's, the gateway's), and more with each
    name added; now such a path stops after 18 names, 1,100 sub-shards read."""
    node = load(getter, path.root)
    yield node
    walked = [str(path.root)]
    read = 0

    def take() -> None:
        nonlocal read
        if read >= SHARD_SLACK + SHARDS_PER_ENTRY * len(walked):
            raise ShardRatioError(
                f"{path.root}: a path through HAMTs of more than {SHARD_SLACK} + "
                f"{SHARDS_PER_ENTRY} sub-shards a name ({read} read for {len(walked)} names)")
        read += 1
        shard_read()

    for seg in path.segments:
        if not node.is_directory:
            raise NotFoundError(
                f"/ipfs/{'/'.join(walked)} is a {node.type.value}; it has no entry {seg!r}"
            )
        found = _find(getter, node, seg.encode("utf-8", "surrogateescape"), take)
        if found is None:
            raise NotFoundError(f"no entry named {seg!r} in /ipfs/{'/'.join(walked)}")
        node = load(getter, found)
        walked.append(seg)
        yield node


def stat(getter: BlockGetter, node: UnixfsNode, links: bool = True) -> Stat:
    """What ``node`` is; ``links``: with every entry of a directory (all of them held: a
    directory may have millions), else none (the node alone is read)."""
    listed = list(iter_links(getter, node)) if links else []
    target = None
    if node.type is EntryType.SYMLINK:
        target = _name(node.target)
    return Stat(
        cid=str(node.cid),
        type=node.type,
        size=node.content_size,
        cumulative_size=node.cumulative_size,
        links=listed,
        target=target,
    )


def iter_links(getter: BlockGetter, node: UnixfsNode) -> Iterator[Link]:
    """The links :func:`stat` holds, one at a time as the directory is read (a HAMT shard at
    a time, the children themselves never); none for a file or a symlink."""
    if node.is_directory:
        for link in _dir_links(getter, node):
            yield Link(_name(link.name), link.tsize, str(link.cid))


def ls(getter: BlockGetter, node: UnixfsNode, name: str) -> list[Entry]:
    """A directory's entries (in link order, which is sorted by name); for a file or symlink,
    a single entry for itself named ``name``, as Unix ``ls`` does."""
    return list(iter_ls(getter, node, name))


KIND_CACHE = 4096
"""How many children's (type, size) :func:`iter_ls` remembers, the most recently used: a
child linked again within that many distinct children is not read again."""


def iter_ls(getter: BlockGetter, node: UnixfsNode, name: str) -> Iterator[Entry]:
    """:func:`ls` one entry at a time, as the directory is read: what it holds is one HAMT
    shard's links (or the one directory block) and :data:`KIND_CACHE` children's kinds,
    however many entries the directory has."""
    if not node.is_directory:
        yield Entry(name, node.type, node.content_size, str(node.cid))
        return
    # Each child is read once while it is remembered, however many entries link to it: a
    # 4 MiB directory block can hold some 80,000 links to one 4 MiB block, which read per
    # entry would be 300 GiB hashed.  Bounded, so that the kinds of a directory of millions
    # of entries are not all kept; to make it read a block again, a directory must link
    # KIND_CACHE other children in between.
    kinds: OrderedDict[bytes, tuple[EntryType, int]] = OrderedDict()
    for link in _dir_links(getter, node):
        key = bytes(link.cid)  # a raw and a dag-pb CID of one block read differently
        kind = kinds.get(key)
        if kind is None:
            kind = kinds[key] = entry_kind(getter, link.cid)
            if len(kinds) > KIND_CACHE:
                kinds.popitem(last=False)
        else:
            kinds.move_to_end(key)
        yield Entry(_name(link.name), kind[0], kind[1], str(link.cid))


# --- files ---------------------------------------------------------------------------------


def cat(
    getter: BlockGetter, node: UnixfsNode, offset: int = 0, length: int | None = None
) -> Iterator[bytes]:
    """Stream ``length`` bytes (to the end if None) of a file from ``offset``."""
    if node.type is not EntryType.FILE:
        raise NotAFileError(f"/ipfs/{node.cid} is a {node.type.value}, not a file")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0, not {length}")
    size = node.content_size
    end = size if length is None else min(size, offset + length)
    return _read(getter, node, offset, end, size)


def _read(
    getter: BlockGetter, node: UnixfsNode, start: int, end: int, expected: int
) -> Iterator[bytes]:
    """The bytes ``[start, end)`` of a file DAG, depth first with an explicit stack (a file
    may be any number of levels deep)."""
    stack = [_pieces(node, start, end, expected)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, tuple):
            cid, child_start, child_end, size = item
            while True:
                try:
                    child = load(getter, cid)
                    break
                except WouldWait:  # only under api.local_only(): resumed, it tries again
                    yield WOULD_WAIT
            if len(stack) >= MAX_FILE_DEPTH:
                raise CorruptBlockError(
                    f"{node.cid}: file DAG deeper than {MAX_FILE_DEPTH} levels")
            stack.append(_pieces(child, child_start, child_end, size))
        else:
            yield item


def _pieces(
    node: UnixfsNode, start: int, end: int, expected: int
) -> Iterator[bytes | tuple[CID, int, int, int]]:
    """One node's part of a read: its own bytes, and ``(cid, start, end, size)`` for each child
    to read in its place."""
    if start >= end:
        return
    if node.content_size != expected:
        raise CorruptBlockError(
            f"{node.cid} holds {node.content_size} bytes but its parent says {expected}"
        )
    if node.fs is None:
        yield node.block[start:end] if start or end < len(node.block) else node.block
        return
    if node.fs.type not in _FILE_TYPES:
        raise CorruptBlockError(f"{node.cid}: a file links to a {node.type.value}")
    inline = node.fs.data or b""
    if start < len(inline):
        yield inline[start:end] if start or end < len(inline) else inline
    pos = len(inline)
    for link, size in zip(node.links, node.fs.blocksizes, strict=True):
        if pos >= end:
            break
        if pos + size > start:
            yield link.cid, max(0, start - pos), min(size, end - pos), size
        pos += size


# --- the whole DAG -------------------------------------------------------------------------


def walk(
    getter: BlockGetter, cid: CID, seen: set[bytes] | None = None, once: bool = True
) -> Iterator[tuple[CID, bytes]]:
    """Every block of the DAG under ``cid``, depth first, each once (by multihash; those in
    ``seen`` are skipped with their links); ``once=False``: each time a link leads to it.

    Any codec this node stores is followed: dag-pb links, raw leaves.
    """
    seen = set() if seen is None else seen
    stack = [cid]
    while stack:
        current = stack.pop()
        if once:
            if current.multihash in seen:
                continue
            seen.add(current.multihash)
        block = getter(current)
        yield current, block
        if current.codec != RAW:
            links = dagpb.decode(block).links
            stack.extend(link.cid for link in reversed(links))


# --- writing to disk -----------------------------------------------------------------------
#
# Everything is created relative to directory file descriptors, never through a path that a
# symlink could redirect: new files with O_CREAT|O_EXCL|O_NOFOLLOW, directories with mkdirat
# and then opened with O_NOFOLLOW.  A symlink the content itself creates is therefore never
# followed, and no path grows with the DAG's depth (no PATH_MAX, no recursion).

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_MAX = 4096  # Linux's limit on a symlink's target, its NUL included
_OPEN_DIRS = 32  # directory fds a deep walk keeps open at once; the rest are reopened by ".."


def _check_name(raw: bytes, parent: CID) -> str:
    name = _name(raw)
    check_entry_name(name, str(parent))
    return name


def check_entry_name(name: str, parent: str) -> None:
    """Refuse a directory entry's name that would step out of, or across, the directory it
    is written into (on disk, or as a path in a tar): empty, ``.``, ``..``, holding ``/`` or
    a NUL; ``parent`` names the directory in the error."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise CorruptBlockError(
            f"directory {parent} has an entry named {_shown(name)}, unsafe on disk"
        )


class _DirStack:
    """Open directories from a base down to the current one, entered and left by name.

    At most :data:`_OPEN_DIRS` fds are open whatever the depth: leaving a directory whose
    parent's fd was closed reopens the parent as ``..`` and checks it is the same directory
    (device and inode) it was on the way down.
    """

    def __init__(self, base_fd: int) -> None:
        fd = os.dup(base_fd)
        self._fds = [fd]
        self._ids = [self._id(fd)]

    @staticmethod
    def _id(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    @property
    def fd(self) -> int:
        return self._fds[-1]

    @property
    def depth(self) -> int:
        return len(self._fds) - 1

    def enter(self, name: str) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        self._fds.append(fd)
        self._ids.append(self._id(fd))
        old = len(self._fds) - 1 - _OPEN_DIRS
        if old >= 0 and self._fds[old] >= 0:
            os.close(self._fds[old])
            self._fds[old] = -1

    def leave(self) -> None:
        fd = self._fds.pop()
        self._ids.pop()
        try:
            if self._fds[-1] < 0:
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                if self._id(parent) != self._ids[-1]:
                    os.close(parent)
                    raise IpfsError("a directory being written was moved away; stopped")
                self._fds[-1] = parent
        finally:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds:
            if fd >= 0:
                os.close(fd)
        self._fds = []


def _write_leaf(
    getter: BlockGetter, node: UnixfsNode, dir_fd: int, name: str, executable: bool,
    created: Callable[[int], None] | None = None,
) -> None:
    """Create the file or symlink ``name`` in ``dir_fd``; it must not exist.  ``created`` is
    called with the new file's fd before anything is written (not for a symlink)."""
    if node.type is EntryType.SYMLINK:
        target = node.target
        why = ("is empty" if not target else "holds a NUL byte" if b"\0" in target
               else f"is {len(target)} bytes long" if len(target) >= _PATH_MAX else None)
        if why:
            raise CorruptBlockError(f"symlink {node.cid}: its target {why}, unsafe on disk")
        os.symlink(target, name, dir_fd=dir_fd)
        return
    mode = 0o777 if executable else 0o666  # the umask applies, as for any new file
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        if created is not None:
            created(fd)
        for piece in cat(getter, node):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    progress = _progress.active()
    if progress is not None:
        progress.advance(files=1)


def _write_node(
    getter: BlockGetter, node: UnixfsNode, dir_fd: int, name: str, executable: bool,
    created: Callable[[int], None] | None = None,
) -> None:
    """Create ``name`` in ``dir_fd`` (it must not exist) from ``node``, depth first with an
    explicit stack: a DAG of any depth is written with bounded recursion and open fds.
    ``created`` is called with the fd of ``name`` (file or directory) once it exists."""
    if not node.is_directory:
        _write_leaf(getter, node, dir_fd, name, executable, created)
        return
    os.mkdir(name, 0o777, dir_fd=dir_fd)
    dirs = _DirStack(dir_fd)
    try:
        dirs.enter(name)
        if created is not None:
            created(dirs.fd)
        # One frame per directory being written: its CID, its entries still to write, and
        # the names written so far (two entries with one name would write into each other).
        frames = [(node.cid, _dir_links(getter, node), set())]
        while frames:
            parent, links, seen = frames[-1]
            link = next(links, None)
            if link is None:
                frames.pop()
                dirs.leave()
                continue
            child_name = _check_name(link.name, parent)
            if child_name in seen:
                raise CorruptBlockError(
                    f"directory {parent} has two entries named {_shown(child_name)}"
                )
            seen.add(child_name)
            child = load(getter, link.cid)
            if child.is_directory:
                os.mkdir(child_name, 0o777, dir_fd=dirs.fd)
                dirs.enter(child_name)
                frames.append((child.cid, _dir_links(getter, child), set()))
            else:
                _write_leaf(getter, child, dirs.fd, child_name, executable)
    finally:
        dirs.close()


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd`` and everything under it, never following a symlink and
    never entering another mount (a file system, or a bind mount, mounted somewhere in the
    tree: its content is not the tree's, and stays); iterative, so a tree of any depth goes.
    Errors are ignored (best-effort cleanup)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass  # a directory (EISDIR on Linux, EPERM elsewhere)
    home = mount_id(dir_fd)
    dirs = _DirStack(dir_fd)
    try:
        dirs.enter(name)
        if mount_id(dirs.fd) != home:
            return  # a mount point: what is mounted there is not ours to remove
        frames = [(name, iter(os.listdir(dirs.fd)))]
        while frames:
            entry = next(frames[-1][1], None)
            if entry is None:
                done, _ = frames.pop()
                dirs.leave()
                with contextlib.suppress(OSError):
                    os.rmdir(done, dir_fd=dirs.fd)
                continue
            try:
                os.unlink(entry, dir_fd=dirs.fd)
            except FileNotFoundError:
                pass
            except OSError:
                try:
                    dirs.enter(entry)
                except OSError:
                    continue
                if mount_id(dirs.fd) != home:
                    dirs.leave()
                    continue
                frames.append((entry, iter(os.listdir(dirs.fd))))
    except OSError:
        pass
    finally:
        dirs.close()


def _remove(path: Path) -> None:
    """Remove ``path`` (file, symlink or tree), never following symlinks."""
    with contextlib.suppress(OSError):
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _remove_at(parent, path.name)
        finally:
            os.close(parent)


def _temp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.ww-tmp-{secrets.token_hex(6)}"


# A temp sibling's name (above).  While an import writes one it holds an flock on it (the
# file, or the directory); one whose lock can be taken belongs to no running import (one
# killed with SIGKILL, say), and the next import into the same directory removes it.
_TEMP_NAME = re.compile(r"\..+\.ww-tmp-[0-9a-f]{12}", re.DOTALL)


_TEMP_TRIES = 100  # each lost only in the instant between creating and locking it


class _Lost(Exception):
    """The temp entry just made was removed before its lock was taken: make another."""


def _locker(dir_fd: int, name: str, held: list[int]) -> Callable[[int], None]:
    """``created`` for :func:`_write_node`: lock the new temp entry ``name`` for as long as
    this import runs (a duplicate fd in ``held`` keeps the lock), and check it is still the
    entry at ``name``: an import cleaning up may have taken it for stale in between."""

    def created(fd: int) -> None:
        lock = os.dup(fd)
        held.append(lock)
        fcntl.flock(lock, fcntl.LOCK_EX)  # a cleaner holds it only while it removes
        st, now = os.fstat(lock), _lstat_at(dir_fd, name)
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise _Lost(name)

    return created


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_stale_temps(dir_fd: int) -> None:
    """Remove the temp entries of killed imports in ``dir_fd``: only names of our own form,
    only a regular file or directory of this user, and only while holding its lock (so no
    running import's); never a symlink or anything else.  Best effort: errors are ignored."""
    try:
        names = [n for n in os.listdir(dir_fd) if _TEMP_NAME.fullmatch(n)]
    except OSError:
        return
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError:
            continue  # a symlink (ELOOP), gone, or not ours to read
        try:
            st = os.fstat(fd)
            if (not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISDIR(st.st_mode))
                    or st.st_uid != os.geteuid()):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a running import holds it
            now = _lstat_at(dir_fd, name)
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                _remove_at(dir_fd, name)
        finally:
            os.close(fd)


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat_mod.S_ISLNK(mode):
        return "a symlink"
    if stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode):
        return "a device"
    if stat_mod.S_ISFIFO(mode):
        return "a FIFO"
    if stat_mod.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file or directory"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # a parent that is a file: nothing there, and writing it fails


def _refuse_special(path: Path, st: os.stat_result) -> None:
    """A destination that is a symlink, device, FIFO or socket is never written through or
    replaced."""
    if not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISDIR(st.st_mode)):
        raise UnsafeDestinationError(
            f"{path} is {_kind(st)}; ww import never writes through or replaces one "
            "(remove it or choose another path)"
        )


def check_destination(dest: Path, force: bool | None = None) -> None:
    """Refuse, before any work, a destination ``ww import`` would refuse anyway: a symlink,
    device, FIFO or socket (``dest`` itself; what is inside it is checked when writing), and,
    when ``force`` is False, anything that exists (see :func:`get`)."""
    st = _lstat(Path(dest))
    if st is not None:
        _refuse_special(Path(dest), st)
        if force is False:
            raise _exists(Path(dest))
        if force:
            _refuse_mounts(Path(dest))


def check_outside_repository(dest: Path, repo: Path) -> None:
    """Refuse a destination at or inside ``repo``, the repository the content is read from
    (written there it is a stray entry in the store; with ``--force`` onto ``blocks`` it
    deleted every block), or one that holds it (``--force`` would remove the repository
    while reading from it)."""
    real, store = os.path.realpath(dest), os.path.realpath(repo)
    if real == store or real.startswith(store.rstrip("/") + "/"):
        raise UnsafeDestinationError(
            f"{dest} is inside the repository {repo} that ww import reads from; it never "
            "writes there (choose a path outside it)")
    if store.startswith(real.rstrip("/") + "/"):
        raise UnsafeDestinationError(
            f"{dest} holds the repository {repo} that ww import reads from; it never "
            "replaces it (choose another path)")


def _refuse_mounts(dest: Path) -> None:
    """``--force`` never replaces a mount point, nor a tree with something mounted in it: the
    old tree is removed once replaced, and what is mounted there is not its content."""
    real = os.path.realpath(dest)
    points = mount_points_in(real)
    if points:
        where = ("is a mount point" if points[0] == real.rstrip("/") or real == "/" else
                 f"has a file system mounted in it ({_clip(points[0])})")
        raise UnsafeDestinationError(
            f"{dest} {where}; ww import --force never replaces a mount point or a tree with "
            "one inside (unmount it first)")


def _exists(dest: Path) -> DestinationExistsError:
    what = "a directory" if dest.is_dir() else "a file"
    return DestinationExistsError(
        f"{dest} already exists ({what}); ww import replaces it only with --force"
    )


def get_path(getter: BlockGetter, path: str, dest: Path, executable: bool,
             force: bool | None = None) -> Path:
    """``ww import`` of an IPFS path: resolve it and :func:`get` it, with a file-system
    failure turned into one IpfsError line.  Both backends' ``get`` is this."""
    ipath = parse_path(path)
    node = resolve(getter, ipath)
    progress = _progress.active()
    if progress is not None:  # the DAG's bytes read, of its cumulative size, and files
        progress.expect(node.cumulative_size)
        progress.advance(len(node.block), blocks=1)
        getter = _counted(getter, progress)
    try:
        return get(getter, node, ipath.last_name, Path(dest), executable, force)
    except OSError as err:
        # symlink and rename name their destination second
        where = os.fsdecode(err.filename2 or err.filename or dest)
        if where == Path(dest).name or _TEMP_NAME.fullmatch(where):
            # a name taken in dest's directory fd: the temp copy, unknown to the user, or
            # dest's own last element; the user knows it as dest
            where = os.fspath(dest)
        raise IpfsError(f"cannot write {_clip(where)}: {err.strerror}") from None


def _counted(getter: BlockGetter, progress: _progress.Progress) -> BlockGetter:
    """``getter``, reporting each block it returns: a DAG written to disk reads each block
    once for each link to it, so the bytes add up to the root's cumulative size."""

    def get_block(cid: CID) -> bytes:
        block = getter(cid)
        progress.advance(len(block), blocks=1)
        return block

    return get_block


def _write_temp(getter: BlockGetter, node: UnixfsNode, dest: Path,
                executable: bool) -> tuple[Path, int | None]:
    """:func:`_write_temp_at` in ``dest``'s parent, opened by its path; the temp's path."""
    parent = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        name, lock = _write_temp_at(getter, node, parent, dest, executable)
        return dest.parent / name, lock
    finally:
        os.close(parent)


def _write_temp_at(getter: BlockGetter, node: UnixfsNode, parent: int, dest: Path,
                   executable: bool) -> tuple[str, int | None]:
    """Write ``node`` to a new hidden temp sibling of ``dest`` in the directory ``parent``
    (an fd), locked while this import runs (a symlink is not: it is made and renamed at
    once); first remove what killed imports left in that directory.  Returns the temp's
    name and the fd holding its lock, to close once the temp is renamed away or removed; on
    failure nothing of it is left."""
    _remove_stale_temps(parent)
    for _ in range(_TEMP_TRIES):
        tmp = _temp_sibling(dest).name
        held: list[int] = []
        try:
            _write_node(getter, node, parent, tmp, executable, _locker(parent, tmp, held))
        except _Lost:
            for fd in held:
                os.close(fd)
            continue  # a cleaner removed it before it was locked: make another
        except BaseException:
            _remove_at(parent, tmp)
            for fd in held:
                os.close(fd)
            raise
        return tmp, (held[0] if held else None)
    raise IpfsError(f"cannot keep a temporary copy beside {dest}: other imports there "
                    f"removed {_TEMP_TRIES} in a row before they were locked")


def _unlock(lock: int | None) -> None:
    if lock is not None:
        os.close(lock)


def get(getter: BlockGetter, node: UnixfsNode, name: str, dest: Path, executable: bool,
        force: bool | None = None) -> Path:
    """Write ``node`` to disk; returns what was written.

    With ``force`` a bool, ``ww import``'s one rule, the same for a file, a symlink and a
    directory: ``dest`` is the path written.  If it exists it is an error
    (:class:`DestinationExistsError`) unless ``force``, and then a regular file or directory
    there is replaced atomically: the new content is written to a temp sibling and swapped
    in (``renameat2`` ``RENAME_EXCHANGE``), then the old one removed.  A symlink, device,
    FIFO or socket at ``dest`` is never replaced, even with ``force``
    (:class:`UnsafeDestinationError`).

    With ``force`` None (the CoreAPI's ``get``), the older rules:

    * A directory is extracted *into* ``dest`` (created if missing).  If ``dest`` already
      exists, every top-level entry must be new or a file replacing a regular file.
    * A file or symlink becomes ``dest`` itself, or ``dest/<name>`` when ``dest`` is an existing
      directory; an existing regular file there is replaced.
    * A destination (``dest``, ``dest/<name>``, a top-level entry) that is a symlink, device,
      FIFO or socket is an error: it is neither written through nor replaced.  Inside the tree
      being written nothing is ever followed (see :func:`_write_node`).

    The content is first written completely to a hidden temp sibling, then renamed into place,
    so a failure (a missing block, a full disk, a kill) leaves no half-written file behind.
    """
    dest = Path(dest)
    if force is not None:
        return _put(getter, node, dest, executable, force)
    st = _lstat(dest)
    if st is not None:
        _refuse_special(dest, st)
    if node.is_directory:
        if st is None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_and_rename(getter, node, dest, executable, replace=False)
            return dest
        if not stat_mod.S_ISDIR(st.st_mode):
            raise IpfsError(
                f"{dest} exists and is not a directory; cannot extract a directory into it"
            )
        tmp, lock = _write_temp(getter, node, dest / "import", executable)
        try:
            names = sorted(os.listdir(tmp))
            for entry in names:
                old = _lstat(dest / entry)
                if old is None:
                    continue
                _refuse_special(dest / entry, old)
                new = os.lstat(tmp / entry)
                if stat_mod.S_ISDIR(new.st_mode) or stat_mod.S_ISDIR(old.st_mode):
                    raise IpfsError(
                        f"{dest / entry} already exists; remove it or import into an empty "
                        "directory"
                    )
            for entry in names:
                _move_into_place(tmp / entry, dest / entry)
            os.rmdir(tmp)
        except BaseException:
            _remove(tmp)
            raise
        finally:
            _unlock(lock)
        return dest
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
        dest = dest / name
        st = _lstat(dest)
        if st is not None:
            _refuse_special(dest, st)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IpfsError(
                    f"{dest} is a directory; cannot replace it with a {node.type.value}"
                )
    elif st is None:
        dest.parent.mkdir(parents=True, exist_ok=True)
    _write_and_rename(getter, node, dest, executable, replace=st is not None)
    return dest


def _put(getter: BlockGetter, node: UnixfsNode, dest: Path, executable: bool,
         force: bool) -> Path:
    """:func:`get`'s one rule (``force`` a bool).

    The destination's directory is opened once, and the temp copy is written, renamed into
    place, and the old entry removed, all relative to that one fd: a directory on the way to
    ``dest`` swapped for a symlink meanwhile cannot move the rename or the removal into
    another directory (where ``RENAME_EXCHANGE`` would swap out, and then delete, an entry
    of someone else's, past a sticky bit)."""
    if dest.name in ("", ".", ".."):
        raise IpfsError(f"{dest} names no entry to write")
    check_destination(dest, force)
    if _lstat(dest) is None:
        dest.parent.mkdir(parents=True, exist_ok=True)
    parent = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp, lock = _write_temp_at(getter, node, parent, dest, executable)
        try:
            if _lstat_at(parent, dest.name) is None:
                _rename_new(tmp, dest, parent)
            elif not force:
                raise _exists(dest)  # appeared while writing
            else:
                _swap_in(parent, tmp, dest)
        except BaseException:
            _remove_at(parent, tmp)
            raise
        finally:
            _unlock(lock)
    finally:
        os.close(parent)
    return dest


def _swap_in(parent: int, new: str, dest: Path) -> None:
    """Put the entry ``new`` of the directory ``parent`` at ``dest``'s name there in one step,
    replacing the regular file or directory there, and remove the old one (which is at
    ``new``'s name meanwhile: a kill then leaves it where the next import's clean-up of dead
    temp entries removes it).  Something else found at ``dest`` in the swap (a symlink
    planted meanwhile) is swapped back, not replaced."""
    name = dest.name
    st = _lstat_at(parent, name)
    if st is None:
        _rename_new(new, dest, parent)
        return
    _refuse_special(dest, st)
    if rename_exchange(new, name, src_dir_fd=parent, dst_dir_fd=parent):
        old = os.stat(new, dir_fd=parent, follow_symlinks=False)
        if not (stat_mod.S_ISREG(old.st_mode) or stat_mod.S_ISDIR(old.st_mode)):
            # something planted meanwhile: put it back
            rename_exchange(new, name, src_dir_fd=parent, dst_dir_fd=parent)
            _refuse_special(dest, old)
        _remove_at(parent, new)
        return
    # No atomic exchange on this file system: move the old one aside, then the new one in.
    aside = _temp_sibling(dest).name
    os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
    try:
        _rename_noreplace(new, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            _rename_noreplace(aside, name, src_dir_fd=parent, dst_dir_fd=parent)
        raise
    _remove_at(parent, aside)


def _write_and_rename(
    getter: BlockGetter, node: UnixfsNode, dest: Path, executable: bool, replace: bool
) -> None:
    """Write ``node`` to a temp sibling of ``dest``, then move it into place: over a regular
    file if ``replace``, else only where nothing exists."""
    tmp, lock = _write_temp(getter, node, dest, executable)
    try:
        if replace:
            _move_into_place(tmp, dest)
        else:
            _rename_new(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _unlock(lock)


def _rename_new(src: Path | str, dst: Path, parent: int | None = None) -> None:
    """Rename ``src`` to ``dst`` where nothing is; with ``parent``, both are names in that
    directory (an fd)."""
    try:
        if parent is None:
            _rename_noreplace(src, dst)
        else:
            _rename_noreplace(src, dst.name, src_dir_fd=parent, dst_dir_fd=parent)
    except FileExistsError:
        raise IpfsError(f"{dst} appeared while importing; nothing was written there") from None


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` if nothing is there, or over ``dst`` if it is a regular file;
    anything else there now (a symlink planted meanwhile, say) is refused, not replaced."""
    st = _lstat(dst)
    if st is None:
        _rename_new(src, dst)
        return
    _refuse_special(dst, st)
    if not stat_mod.S_ISREG(st.st_mode):
        raise IpfsError(f"{dst} already exists; remove it or import into an empty directory")
    os.replace(src, dst)
