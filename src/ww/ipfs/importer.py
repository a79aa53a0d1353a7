"""The UnixFS importer: files, directories and symlinks to dag-pb blocks, as ``ipfs add`` does.

Byte-compatible with kubo (boxo's balanced layout): chunks of 262144 bytes by default, or
cut by any of kubo's chunkers (:mod:`ww.ipfs.chunker`: size-N, rabin, buzhash); leaves that
are dag-pb UnixFS ``File`` nodes (or raw blocks with ``raw_leaves``), at most 174 links per
node, every leaf at the same depth, and a lone chunk being the root itself.  An empty file is
a single leaf with no data.  CIDv1 (``cid_version=1``) implies raw leaves.
Directories are single nodes with sorted links, or HAMT-sharded once they reach kubo's 256 KiB
sharding threshold.

Memory stays bounded: the input is cut into chunks as it streams in, each block is handed to
a :class:`BlockSink` as soon as it exists, and the only thing kept is, per tree level, the
(CID, sizes) of at most 174 pending children.  The hot path does no per-byte Python work: a
leaf is hashed as ``header + chunk + trailer`` with ``hashlib`` and written with ``writev``.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ww.core import multihash, varint
from ww.core import progress as _progress
from ww.core.cid import CID, DAG_PB, RAW

from . import chunker as chunkers
from . import dagpb, unixfs
from .api import AddOptions, UnsupportedError
from .chunker import rechunk

__all__ = [
    "CHUNK_SIZE",
    "MAX_LINKS",
    "BlockSink",
    "NullSink",
    "ImportParams",
    "Imported",
    "rechunk",
    "import_file",
    "import_symlink",
    "import_directory",
    "import_path",
    "file_chunks",
    "tree_size",
    "import_entries",
    "TreeEntry",
]

CHUNK_SIZE = chunkers.DEFAULT_SIZE
MAX_LINKS = 174
HAMT_THRESHOLD = 262144  # kubo's Internal.UnixFSShardingSizeThreshold default, 256 KiB
HAMT_FANOUT = 256
HAMT_MURMUR3 = 0x22
_DIRECTORY_DATA = unixfs.encode(unixfs.UnixFSData(unixfs.DataType.DIRECTORY))


class BlockSink(Protocol):
    """Where new blocks go.  ``parts`` concatenated are the block's bytes."""

    def put(self, cid: CID, parts: Sequence[bytes | memoryview]) -> None: ...


class NullSink:
    """Discards blocks: for ``only_hash``."""

    def put(self, cid: CID, parts: Sequence[bytes | memoryview]) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ImportParams:
    """The resolved add options that shape blocks."""

    cid_version: int = 0
    raw_leaves: bool = False
    hidden: bool = True  # include directory entries whose names start with "."
    chunker: chunkers.Chunker = chunkers.parse(chunkers.DEFAULT)
    wrap: bool = False  # import_path: put the result in a directory of its own, as kubo's -w
    on_added: Callable[[str, str], None] | None = field(default=None, compare=False)

    @classmethod
    def from_options(cls, options: AddOptions) -> ImportParams:
        if options.cid_version not in (0, 1):
            raise UnsupportedError(f"unsupported CID version {options.cid_version} (use 0 or 1)")
        chunker = chunkers.parse(options.chunker)  # ChunkerError: kubo's reason
        raw = options.raw_leaves
        return cls(options.cid_version, options.cid_version == 1 if raw is None else raw,
                   options.hidden, chunker, options.wrap, options.on_added)

    def node_cid(self, mh: bytes) -> CID:
        return CID.v0(mh) if self.cid_version == 0 else CID.v1(DAG_PB, mh)


@dataclass(frozen=True, slots=True)
class Imported:
    """A node just imported: its CID, its DAG's cumulative size (a link's Tsize) and the
    content bytes it stands for (a file's size; 0 for directories and symlinks)."""

    cid: CID
    tsize: int
    filesize: int


def _leaf(chunk: bytes | memoryview, params: ImportParams, sink: BlockSink) -> Imported:
    n = len(chunk)
    if params.raw_leaves:
        cid = CID.v1(RAW, multihash.sha256(chunk))
        sink.put(cid, (chunk,))
        return Imported(cid, n, n)
    # dag-pb node { Data: UnixFS { Type: File, Data: chunk, filesize: n } }, built around the
    # chunk so that it is neither copied nor re-encoded.
    n_varint = varint.encode(n)
    trailer = b"\x18" + n_varint
    inner_len = len(unixfs.FILE_LEAF_PREFIX) + 1 + len(n_varint) + n + len(trailer)
    header = b"\x0a" + varint.encode(inner_len) + unixfs.FILE_LEAF_PREFIX + b"\x12" + n_varint
    h = hashlib.sha256(header)
    h.update(chunk)
    h.update(trailer)
    cid = params.node_cid(multihash.from_digest(h.digest()))
    sink.put(cid, (header, chunk, trailer))
    return Imported(cid, len(header) + n + len(trailer), n)


def _empty_file(params: ImportParams, sink: BlockSink) -> Imported:
    if params.raw_leaves:
        return _leaf(b"", params, sink)
    block = dagpb.encode(
        dagpb.PBNode((), unixfs.encode(unixfs.UnixFSData(unixfs.DataType.FILE, filesize=0)))
    )
    return _put_node(block, params, sink, 0)


def _put_node(
    block: bytes, params: ImportParams, sink: BlockSink, filesize: int, tsize_links: int = 0
) -> Imported:
    cid = params.node_cid(multihash.sha256(block))
    sink.put(cid, (block,))
    return Imported(cid, len(block) + tsize_links, filesize)


def _internal(children: list[Imported], params: ImportParams, sink: BlockSink) -> Imported:
    filesize = sum(c.filesize for c in children)
    data = unixfs.encode(
        unixfs.UnixFSData(
            unixfs.DataType.FILE,
            filesize=filesize,
            blocksizes=tuple(c.filesize for c in children),
        )
    )
    links = tuple(dagpb.PBLink(c.cid, b"", c.tsize) for c in children)
    block = dagpb.encode(dagpb.PBNode(links, data))
    return _put_node(block, params, sink, filesize, sum(c.tsize for c in children))


def import_file(
    chunks: Iterable[bytes | bytearray | memoryview], params: ImportParams, sink: BlockSink
) -> Imported:
    """Import one file's bytes with kubo's balanced layout; returns the root."""
    # levels[i] holds the pending children of height i.  A full level is only folded into a
    # parent when one more child arrives, so the tree is exactly as deep as it must be.
    levels: list[list[Imported]] = [[]]

    def push(level: int, item: Imported) -> None:
        while len(levels[level]) == MAX_LINKS:
            parent = _internal(levels[level], params, sink)
            levels[level] = [item]
            if level + 1 == len(levels):
                levels.append([])
            level, item = level + 1, parent
        levels[level].append(item)

    for chunk in params.chunker.split(chunks):
        push(0, _leaf(chunk, params, sink))
        del chunk  # (a view of a piece of the input) not kept while the next is waited for

    if not levels[0]:
        return _empty_file(params, sink)
    top = len(levels) - 1
    if top == 0 and len(levels[0]) == 1:
        return levels[0][0]
    for level in range(top):
        if levels[level]:
            push(level + 1, _internal(levels[level], params, sink))
            levels[level] = []
            top = len(levels) - 1
    return _internal(levels[-1], params, sink)


def import_symlink(target: bytes, params: ImportParams, sink: BlockSink) -> Imported:
    """A UnixFS symlink node holding ``target`` as kubo stores it."""
    data = unixfs.encode(unixfs.UnixFSData(unixfs.DataType.SYMLINK, data=target))
    return _put_node(dagpb.encode(dagpb.PBNode((), data)), params, sink, 0)


def import_directory(
    entries: Iterable[tuple[bytes, Imported]], params: ImportParams, sink: BlockSink
) -> Imported:
    """A UnixFS directory of already imported entries.

    Like kubo, a directory whose estimated size (the sum of its entries' name and CID lengths)
    reaches :data:`HAMT_THRESHOLD` becomes a HAMT-sharded directory; otherwise it is one plain
    node with its links sorted by name bytes.
    """
    items = sorted(entries, key=lambda e: e[0])
    for (a, _), (b, _) in zip(items, items[1:], strict=False):
        if a == b:
            raise ValueError(f"duplicate directory entry {a!r}")
    if sum(len(name) + len(bytes(child.cid)) for name, child in items) >= HAMT_THRESHOLD:
        keyed = [(unixfs.hamt_hash(name), name, child) for name, child in items]
        return _hamt_shard(keyed, 0, params, sink)
    links = tuple(dagpb.PBLink(child.cid, name, child.tsize) for name, child in items)
    block = dagpb.encode(dagpb.PBNode(links, _DIRECTORY_DATA))
    return _put_node(block, params, sink, 0, sum(child.tsize for _, child in items))


def _hamt_shard(
    entries: list[tuple[bytes, bytes, Imported]], depth: int, params: ImportParams, sink: BlockSink
) -> Imported:
    """One HAMT node (fanout 256: one hash byte per level), as boxo's ``hamt.Shard`` writes it.

    A slot holding one entry links to it as ``<2 hex digits><name>``; a slot where several
    entries collide links to a sub-shard, named by the 2 hex digits alone.
    """
    if depth >= 8:
        raise UnsupportedError("two directory entry names have the same 64-bit HAMT hash")
    slots: dict[int, list[tuple[bytes, bytes, Imported]]] = {}
    for entry in entries:
        slots.setdefault(entry[0][depth], []).append(entry)
    links = []
    bitfield = 0
    for index in sorted(slots):
        bitfield |= 1 << index
        group = slots[index]
        prefix = b"%02X" % index
        if len(group) == 1:
            _, name, child = group[0]
            links.append(dagpb.PBLink(child.cid, prefix + name, child.tsize))
        else:
            sub = _hamt_shard(group, depth + 1, params, sink)
            links.append(dagpb.PBLink(sub.cid, prefix, sub.tsize))
    data = unixfs.UnixFSData(
        unixfs.DataType.HAMT_SHARD,
        data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big") or None,
        hash_type=HAMT_MURMUR3,
        fanout=HAMT_FANOUT,
    )
    block = dagpb.encode(dagpb.PBNode(tuple(links), unixfs.encode(data)))
    return _put_node(block, params, sink, 0, sum(link.tsize for link in links))


def file_chunks(path: Path | str, size: int = 1 << 20) -> Iterator[bytes]:
    """Read a file in ``size``-byte pieces (a multiple of the chunk size keeps slicing free).

    Each piece read, and the file once read to its end, is reported to the thread's
    progress (:mod:`ww.core.progress`), if anyone listens."""
    progress = _progress.active()
    with open(path, "rb", buffering=0) as f:
        while True:
            piece = f.read(size)
            if not piece:
                if progress is not None:
                    progress.advance(files=1)
                return
            if progress is not None:
                progress.advance(len(piece))
            yield piece


def tree_size(path: Path, hidden: bool = True) -> tuple[int, int]:
    """The regular files under ``path`` (``path`` itself if it is one) that
    :func:`import_path` would add, and their bytes: ``(files, bytes)``.  Symlinks are not
    followed; ``hidden`` as :attr:`ImportParams.hidden`."""
    files = nbytes = 0
    stack = [os.fsdecode(path)]
    while stack:
        current = stack.pop()
        st = os.lstat(current)
        if stat_mod.S_ISREG(st.st_mode):
            files += 1
            nbytes += st.st_size
        elif stat_mod.S_ISDIR(st.st_mode):
            with os.scandir(current) as it:
                stack.extend(entry.path for entry in it
                             if hidden or not entry.name.startswith("."))
    return files, nbytes


def import_path(path: Path, params: ImportParams, sink: BlockSink) -> Imported:
    """Import a file, symlink or directory tree (``ipfs add -r``).

    Symlinks are stored, never followed, including ``path`` itself.  Hidden entries (names
    starting with ".") inside directories are included unless ``params.hidden`` is false, as
    kubo's command line does by default; ``path`` itself is always added.  Other file types
    (sockets, devices, FIFOs) raise :class:`UnsupportedError`.

    The tree is walked depth first with an explicit stack, so its depth is not bounded by
    Python's recursion limit.  With ``params.wrap`` the result is a directory holding it under
    ``path``'s base name (kubo's ``ipfs add -w``).
    """
    path = Path(os.fsdecode(path))
    name = Path(os.path.abspath(path)).name
    dirs: list[tuple[str, Imported]] = []  # reported after the files, as kubo does
    root = _import_tree(path, name, params, sink, dirs)
    if params.wrap:
        root = import_directory([(os.fsencode(name), root)], params, sink)
        dirs.append(("", root))
    if params.on_added is not None:
        for dir_name, imported in dirs:
            params.on_added(dir_name, str(imported.cid))
    return root


def _import_tree(
    path: Path, name: str, params: ImportParams, sink: BlockSink, dirs: list[tuple[str, Imported]]
) -> Imported:
    report = params.on_added
    first = _import_entry(path, params, sink)
    if isinstance(first, Imported):
        if report is not None:
            report(name, str(first.cid))
        return first
    # One frame per directory being imported: its path, its name as reported, its sorted entry
    # names and the entries imported so far (the next one to import is names[len(done)]).
    stack: list[tuple[Path, str, list[bytes], list[tuple[bytes, Imported]]]] = [
        (path, name, first, [])
    ]
    while True:
        dirpath, dirname, names, done = stack[-1]
        if len(done) < len(names):
            child_path = dirpath / os.fsdecode(names[len(done)])
            child_name = f"{dirname}/{os.fsdecode(names[len(done)])}"
            child = _import_entry(child_path, params, sink)
            if isinstance(child, Imported):
                done.append((names[len(done)], child))
                if report is not None:
                    report(child_name, str(child.cid))
            else:
                stack.append((child_path, child_name, child, []))
            continue
        stack.pop()
        imported = import_directory(done, params, sink)
        dirs.append((dirname, imported))
        if not stack:
            return imported
        _, _, parent_names, parent_done = stack[-1]
        parent_done.append((parent_names[len(parent_done)], imported))


def _import_entry(path: Path, params: ImportParams, sink: BlockSink) -> Imported | list[bytes]:
    """Import a file or symlink; for a directory, its entry names (sorted) to import next."""
    st = os.lstat(path)
    mode = st.st_mode
    if stat_mod.S_ISLNK(mode):
        return import_symlink(os.fsencode(os.readlink(path)), params, sink)
    if stat_mod.S_ISREG(mode):
        return import_file(file_chunks(path), params, sink)
    if stat_mod.S_ISDIR(mode):
        with os.scandir(path) as it:
            return sorted(
                os.fsencode(entry.name)
                for entry in it
                if params.hidden or not entry.name.startswith(".")
            )
    raise UnsupportedError(
        f"cannot add {os.fsdecode(path)!r}: not a regular file, directory or symlink"
    )


# One entry of a tree that arrives as a stream (kubo's multipart ``add``): its slash-separated
# path, its kind ("file", "dir" or "symlink") and its content (a file's pieces, consumed
# before the next entry is taken; a symlink's target; None for a directory).
TreeEntry = tuple[str, str, "Iterable[bytes] | bytes | None"]
MAX_TREE_DEPTH = 256  # directory levels of a streamed tree (built recursively)
# Directories a streamed tree may gain that no entry of its own names (a parent of a path
# given, kubo's implicit directories): this many, and one more for each entry given.  Each
# costs the tree some 1 KB and 45 us to build, where a path of one-letter names implies one
# a 2 bytes ("d1/a/a/a/.../f"): 620 KB of such paths made 256,000 directories, 35 s of CPU
# and 250 MB.  An honest tree has fewer directories than files; ``ipfs add -r`` and ``ww``
# name every directory.
IMPLIED_DIRS = 1024


@dataclass(slots=True)
class _Dir:
    children: dict[bytes, Imported | _Dir] = field(default_factory=dict)


def steps_out(parts: list[str]) -> bool:
    """Whether a path's ``parts`` (split at ``/``) would step out of, or across, the tree it
    names a place in: an empty, ``.`` or ``..`` component."""
    return any(p in ("", ".", "..") for p in parts)


def import_entries(
    entries: Iterable[TreeEntry], params: ImportParams, sink: BlockSink,
    report: Callable[[str, Imported], None] | None = None,
) -> tuple[list[tuple[str, Imported]], Imported]:
    """Import a tree given entry by entry, in any order (a file before or without its parent
    directory's own entry), as kubo's ``add`` reads a multipart body: each file is imported as
    its bytes stream in, the directories once every entry is in.

    Reports (``report``, else ``params.on_added`` with the CID alone) each file and symlink
    as it is added, then the directories children first, then with ``params.wrap`` the
    wrapping directory named "".  Returns the top-level entries (name, node) in name order
    and the directory holding them (the root kubo pins when there are several, and ``-w``'s
    result).  A path with an empty, ``.`` or ``..`` component, or given twice, raises
    :class:`UnsupportedError`."""
    root = _Dir()
    if report is None and params.on_added is not None:
        on_added = params.on_added
        report = lambda name, node: on_added(name, str(node.cid))  # noqa: E731
    implied = 0  # directories made for a path's parents, not given as entries
    for given, (path, kind, content) in enumerate(entries, 1):
        parts = path.split("/")
        if len(parts) > MAX_TREE_DEPTH:
            raise UnsupportedError(f"{path[:80]!r}...: deeper than {MAX_TREE_DEPTH} levels")
        if steps_out(parts):
            raise UnsupportedError(f"invalid path {path!r} in the added tree")
        where = root
        for part in parts[:-1]:
            below = where.children.get(os.fsencode(part))
            if below is None:
                implied += 1
                if implied > IMPLIED_DIRS + given:
                    raise UnsupportedError(
                        f"{path[:80]!r}...: the added tree's paths imply more than "
                        f"{IMPLIED_DIRS} directories and one an entry given ({implied} for "
                        f"{given}); give its directories as entries of their own")
                below = where.children[os.fsencode(part)] = _Dir()
            elif not isinstance(below, _Dir):
                raise UnsupportedError(f"{path!r}: a parent in the added tree is not a directory")
            where = below
        name = os.fsencode(parts[-1])
        there = where.children.get(name)
        if kind == "dir":
            if there is None:
                where.children[name] = _Dir()
            elif not isinstance(there, _Dir):
                raise UnsupportedError(f"{path!r} is given twice in the added tree")
            continue
        if there is not None:
            raise UnsupportedError(f"{path!r} is given twice in the added tree")
        if kind == "symlink":
            assert isinstance(content, bytes)
            node = import_symlink(content, params, sink)
        else:
            assert content is not None and not isinstance(content, bytes)
            node = import_file(content, params, sink)
        where.children[name] = node
        if report is not None:
            report(path, node)
    dirs: list[tuple[str, Imported]] = []

    def build(d: _Dir, prefix: str) -> Imported:
        done = []
        for name in sorted(d.children):
            child = d.children[name]
            if isinstance(child, _Dir):
                path = f"{prefix}{os.fsdecode(name)}"
                child = build(child, path + "/")
                dirs.append((path, child))
            done.append((name, child))
        return import_directory(done, params, sink)

    wrapper = build(root, "")
    if report is not None:
        for path, node in dirs:
            report(path, node)
        if params.wrap:
            report("", wrapper)
    built = dict(dirs)
    tops = [(os.fsdecode(name), child if isinstance(child, Imported) else built[os.fsdecode(name)])
            for name, child in sorted(root.children.items())]
    return tops, wrapper
