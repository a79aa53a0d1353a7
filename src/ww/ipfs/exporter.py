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

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import dagpb, unixfs
from ._murmur3 import murmur3_64
from .api import (
    CorruptBlockError,
    Entry,
    EntryType,
    IpfsError,
    Link,
    NotAFileError,
    NotFoundError,
    Stat,
    UnsupportedError,
)
from .cid import CID, RAW
from .path import IpfsPath, parse_path
from .unixfs import DataType

HAMT_MURMUR3 = 0x22

__all__ = ["BlockGetter", "UnixfsNode", "load", "resolve", "stat", "ls", "cat", "get", "walk"]

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
        """The block plus every linked DAG, by the links' Tsize (kubo's CumulativeSize)."""
        return len(self.block) + sum(link.tsize for link in self.links)

    @property
    def target(self) -> bytes:
        assert self.fs is not None and self.fs.type is DataType.SYMLINK
        return self.fs.data or b""


def load(getter: BlockGetter, cid: CID) -> UnixfsNode:
    """Fetch and decode ``cid``; raises :class:`CorruptBlockError` if it is not UnixFS."""
    block = getter(cid)
    if cid.codec == RAW:
        return UnixfsNode(cid, block, (), None)
    pb = dagpb.decode(block)
    if pb.data is None:
        raise CorruptBlockError(f"{cid} is a dag-pb node without UnixFS data")
    fs = unixfs.decode(pb.data)
    links = tuple(pb.links)
    if fs.type in _FILE_TYPES:
        if len(fs.blocksizes) != len(links):
            raise CorruptBlockError(
                f"{cid}: {len(links)} links but {len(fs.blocksizes)} blocksizes"
            )
        if fs.filesize is not None and fs.filesize != len(fs.data or b"") + sum(fs.blocksizes):
            raise CorruptBlockError(f"{cid}: filesize disagrees with its data and blocksizes")
    elif fs.type is DataType.SYMLINK:
        if links:
            raise CorruptBlockError(f"{cid}: a symlink node has links")
    elif fs.type is DataType.HAMT_SHARD:
        if not fs.fanout or fs.fanout & (fs.fanout - 1) or fs.fanout > 1024:
            raise CorruptBlockError(f"{cid}: HAMT shard with invalid fanout {fs.fanout}")
    elif fs.type is DataType.METADATA:
        raise UnsupportedError(f"{cid} is a UnixFS metadata node, which is not supported")
    return UnixfsNode(cid, block, links, fs)


# --- directories ---------------------------------------------------------------------------


def _dir_links(getter: BlockGetter, node: UnixfsNode) -> Iterator[dagpb.PBLink]:
    """The entries of a plain or HAMT-sharded directory, in stored order."""
    assert node.fs is not None
    if node.fs.type is DataType.DIRECTORY:
        yield from node.links
        return
    width = len(f"{node.fs.fanout - 1:X}")  # type: ignore[operator]
    for link in node.links:
        if len(link.name) < width:
            raise CorruptBlockError(f"{node.cid}: HAMT link name {link.name!r} is too short")
        if len(link.name) == width:
            child = load(getter, link.cid)
            if child.fs is None or child.fs.type is not DataType.HAMT_SHARD:
                raise CorruptBlockError(f"{link.cid}: expected a HAMT shard")
            yield from _dir_links(getter, child)
        else:
            yield dagpb.PBLink(link.cid, link.name[width:], link.tsize)


def _find(getter: BlockGetter, node: UnixfsNode, name: bytes) -> CID | None:
    """The CID of entry ``name``; a HAMT is descended along the name's hash, one shard a level."""
    assert node.fs is not None
    if node.fs.type is not DataType.HAMT_SHARD or node.fs.hash_type != HAMT_MURMUR3:
        return next((link.cid for link in _dir_links(getter, node) if link.name == name), None)
    hashed = int.from_bytes(murmur3_64(name), "big")
    consumed = 0
    while True:
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
        node = load(getter, link.cid)
        if node.fs is None or node.fs.type is not DataType.HAMT_SHARD:
            raise CorruptBlockError(f"{link.cid}: expected a HAMT shard")


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def resolve(getter: BlockGetter, path: IpfsPath) -> UnixfsNode:
    """Follow ``path``'s names from its root; the node it names."""
    node = load(getter, path.root)
    walked = [str(path.root)]
    for seg in path.segments:
        if not node.is_directory:
            raise NotFoundError(
                f"/ipfs/{'/'.join(walked)} is a {node.type.value}; it has no entry {seg!r}"
            )
        found = _find(getter, node, seg.encode("utf-8", "surrogateescape"))
        if found is None:
            raise NotFoundError(f"no entry named {seg!r} in /ipfs/{'/'.join(walked)}")
        node = load(getter, found)
        walked.append(seg)
    return node


def stat(getter: BlockGetter, node: UnixfsNode) -> Stat:
    links: list[Link] = []
    if node.is_directory:
        links = [Link(_name(lk.name), lk.tsize, str(lk.cid)) for lk in _dir_links(getter, node)]
    target = None
    if node.type is EntryType.SYMLINK:
        target = _name(node.target)
    return Stat(
        cid=str(node.cid),
        type=node.type,
        size=node.content_size,
        cumulative_size=node.cumulative_size,
        links=links,
        target=target,
    )


def ls(getter: BlockGetter, node: UnixfsNode, name: str) -> list[Entry]:
    """A directory's entries (in link order, which is sorted by name); for a file or symlink,
    a single entry for itself named ``name``, as Unix ``ls`` does."""
    if not node.is_directory:
        return [Entry(name, node.type, node.content_size, str(node.cid))]
    entries = []
    for link in _dir_links(getter, node):
        child = load(getter, link.cid)
        entries.append(Entry(_name(link.name), child.type, child.content_size, str(link.cid)))
    return entries


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
            child = load(getter, link.cid)
            yield from _read(getter, child, max(0, start - pos), min(size, end - pos), size)
        pos += size


# --- the whole DAG -------------------------------------------------------------------------


def walk(
    getter: BlockGetter, cid: CID, seen: set[bytes] | None = None
) -> Iterator[tuple[CID, bytes]]:
    """Every block of the DAG under ``cid``, depth first, each once (by multihash).

    Any codec this node stores is followed: dag-pb links, raw leaves.
    """
    seen = set() if seen is None else seen
    stack = [cid]
    while stack:
        current = stack.pop()
        if current.multihash in seen:
            continue
        seen.add(current.multihash)
        block = getter(current)
        yield current, block
        if current.codec != RAW:
            links = dagpb.decode(block).links
            stack.extend(link.cid for link in reversed(links))


# --- writing to disk -----------------------------------------------------------------------


def _check_name(raw: bytes, parent: CID) -> str:
    name = _name(raw)
    if not raw or raw in (b".", b"..") or b"/" in raw or b"\0" in raw:
        raise CorruptBlockError(f"directory {parent} has an entry named {name!r}, unsafe on disk")
    return name


def _write_node(getter: BlockGetter, node: UnixfsNode, dest: Path, executable: bool) -> None:
    """Create ``dest`` (which must not exist) from ``node``."""
    kind = node.type
    if kind is EntryType.SYMLINK:
        os.symlink(node.target, dest)
    elif kind is EntryType.FILE:
        mode = 0o777 if executable else 0o666  # the umask applies, as for any new file
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            for piece in cat(getter, node):
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
    else:
        os.mkdir(dest)
        seen: set[str] = set()
        for link in _dir_links(getter, node):
            name = _check_name(link.name, node.cid)
            if name in seen:
                raise CorruptBlockError(f"directory {node.cid} has two entries named {name!r}")
            seen.add(name)
            _write_node(getter, load(getter, link.cid), dest / name, executable)


def _temp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.ww-tmp-{secrets.token_hex(6)}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def get_path(getter: BlockGetter, path: str, dest: Path, executable: bool) -> Path:
    """``ww import`` of an IPFS path: resolve it and :func:`get` it, with a file-system
    failure turned into one IpfsError line.  Both backends' ``get`` is this."""
    ipath = parse_path(path)
    node = resolve(getter, ipath)
    try:
        return get(getter, node, ipath.last_name, Path(dest), executable)
    except OSError as err:
        raise IpfsError(f"cannot write {err.filename or dest}: {err.strerror}") from None


def get(getter: BlockGetter, node: UnixfsNode, name: str, dest: Path, executable: bool) -> Path:
    """Write ``node`` to disk with ``ww import`` semantics; returns what was written.

    * A directory is extracted *into* ``dest`` (created if missing).  If ``dest`` already
      exists, every top-level entry must be new or a file replacing a file.
    * A file or symlink becomes ``dest`` itself, or ``dest/<name>`` when ``dest`` is an existing
      directory; an existing file there is replaced.

    The content is first written completely to a hidden temp sibling, then renamed into place,
    so a failure (a missing block, a full disk, a kill) leaves no half-written file behind.
    """
    dest = Path(dest)
    if node.is_directory:
        if not dest.exists():
            if dest.is_symlink():
                raise IpfsError(f"{dest} is a dangling symlink; remove it or choose another path")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_sibling(dest)
            try:
                _write_node(getter, node, tmp, executable)
                os.rename(tmp, dest)
            except BaseException:
                _remove(tmp)
                raise
            return dest
        if not dest.is_dir():
            raise IpfsError(
                f"{dest} exists and is not a directory; cannot extract a directory into it"
            )
        tmp = _temp_sibling(dest / "import")
        try:
            _write_node(getter, node, tmp, executable)
            names = sorted(os.listdir(tmp))
            for entry in names:
                target = dest / entry
                if target.is_symlink() or target.exists():
                    new_is_file = not (tmp / entry).is_dir() or (tmp / entry).is_symlink()
                    old_is_file = target.is_symlink() or target.is_file()
                    if not (new_is_file and old_is_file):
                        raise IpfsError(
                            f"{target} already exists; remove it or import into an empty directory"
                        )
            for entry in names:
                os.replace(tmp / entry, dest / entry)
            os.rmdir(tmp)
        except BaseException:
            _remove(tmp)
            raise
        return dest
    if dest.is_dir():
        dest = dest / name
        if dest.is_dir() and not dest.is_symlink():
            raise IpfsError(f"{dest} is a directory; cannot replace it with a {node.type.value}")
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dest)
    try:
        _write_node(getter, node, tmp, executable)
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    return dest
