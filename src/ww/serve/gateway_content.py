"""What the gateway sends, worked out block by block in worker threads (nothing here is async).

A path is resolved one segment at a time, recording every block the resolution read (the
blocks a client needs to verify the path, HAMT shards included) and the CID of each logical
root (``X-Ipfs-Roots``).  A CAR is then those blocks, followed by the terminus's blocks as
``dag-scope`` asks, depth first, each read only when the response is ready for it.
"""

from __future__ import annotations

import html
import mimetypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

from ww.core.cid import CID
from ww.core.errors import CorruptBlockError
from ww.ipfs import exporter
from ww.ipfs.exporter import UnixfsNode
from ww.ipfs.path import IpfsPath
from ww.ipfs.unixfs import DataType

__all__ = [
    "BlockGetter", "Resolved", "resolve", "car_blocks", "content_type",
    "sniff", "SCOPES", "listing", "LISTING_VERSION",
]

BlockGetter = Callable[[CID], bytes]

SCOPES = ("all", "entity", "block")
"""The ``dag-scope`` values: the terminus's whole DAG, the blocks of its entity (a whole file,
a directory's own blocks), or its one block."""


@dataclass(frozen=True)
class Resolved:
    """A content path resolved: the node it names and the blocks that prove it."""

    path: IpfsPath
    node: UnixfsNode
    roots: tuple[CID, ...]  # the root, then the CID each path segment names
    traversal: tuple[CID, ...]  # every block read on the way, in order, the terminus last


def resolve(getter: BlockGetter, path: IpfsPath) -> Resolved:
    """Follow ``path`` from its root, one segment at a time; NotFoundError names where it
    stopped (a missing entry, or a file that has no entries)."""
    read: dict[bytes, CID] = {}  # in order, each block once

    def recording(cid: CID) -> bytes:
        read.setdefault(cid.multihash, cid)
        return getter(cid)

    roots = []
    for node in exporter.resolve_steps(recording, path):  # its sub-shards read are bounded
        roots.append(node.cid)
    return Resolved(path, node, tuple(roots), tuple(read.values()))


# --- CARs ----------------------------------------------------------------------------------


def car_blocks(getter: BlockGetter, resolved: Resolved, scope: str,
               entity_bytes: tuple[int, int] | None, dups: bool) -> Iterator[tuple[CID, bytes]]:
    """The blocks of a CAR response, depth first: those proving the path, then the
    terminus's as ``scope`` says (``entity_bytes``: only the file blocks holding the byte
    range ``[start, end)``).  ``dups``: a block is sent each time the walk meets it, else
    once.  Each block is read when its turn comes, so memory holds the walk's stack of CIDs,
    not the DAG."""
    seen: set[bytes] = set()
    for cid in resolved.traversal[:-1]:
        seen.add(cid.multihash)
        yield cid, getter(cid)
    node = resolved.node
    if scope == "block":
        yield node.cid, node.block
    elif scope == "entity" and node.is_directory:
        yield from _directory_blocks(getter, node)
    elif scope == "entity" and entity_bytes is not None and node.fs is not None:
        for cid, block in _range_blocks(getter, node, *entity_bytes):
            if dups or cid.multihash not in seen:  # a subtree met again is walked, not resent
                seen.add(cid.multihash)
                yield cid, block
    else:  # a whole entity (a file, a symlink, a raw block) is its whole DAG
        yield from exporter.walk(getter, node.cid, seen, once=not dups)


def _directory_blocks(getter: BlockGetter, node: UnixfsNode) -> Iterator[tuple[CID, bytes]]:
    """A directory's own blocks: the node, and for a HAMT every shard (not the entries).

    As a listing does (ww.ipfs.exporter), each shard once and at most MAX_HAMT_LEVELS deep:
    a shard linked twice is corrupt, and would make a CAR of ``fanout ** depth`` blocks of
    a few (256 links to one shard, three levels deep: 16 million)."""
    yield node.cid, node.block
    assert node.fs is not None
    if node.fs.type is not DataType.HAMT_SHARD:
        return
    shards = {node.cid.multihash}
    stack = [(cid, 1) for cid in reversed(_sub_shards(node))]
    while stack:
        cid, depth = stack.pop()
        if cid.multihash in shards:
            raise CorruptBlockError(f"{node.cid}: HAMT links the shard {cid} twice")
        if depth >= exporter.MAX_HAMT_LEVELS:
            raise CorruptBlockError(f"{node.cid}: HAMT deeper than its hash")
        shards.add(cid.multihash)
        shard = exporter.load(getter, cid)
        if shard.fs is None or shard.fs.type is not DataType.HAMT_SHARD:
            raise CorruptBlockError(f"{shard.cid}: expected a HAMT shard")
        yield shard.cid, shard.block
        stack.extend((sub, depth + 1) for sub in reversed(_sub_shards(shard)))


def _sub_shards(shard: UnixfsNode) -> list[CID]:
    """The links of a HAMT shard to its sub-shards (a link named by its index alone)."""
    assert shard.fs is not None and shard.fs.fanout
    width = len(f"{shard.fs.fanout - 1:X}")
    return [link.cid for link in shard.links if len(link.name) == width]


def _range_blocks(getter: BlockGetter, node: UnixfsNode, start: int,
                  end: int) -> Iterator[tuple[CID, bytes]]:
    """The blocks of a file DAG needed to read its bytes ``[start, end)``, depth first: every
    node on the way and the leaves holding the range (the ``blocksizes`` tell which)."""
    stack: list[tuple[CID, int, int]] = []
    current, lo, hi = node, start, end
    while True:
        yield current.cid, current.block
        if current.fs is not None and current.links:
            pos = len(current.fs.data or b"")
            wanted = []
            for link, size in zip(current.links, current.fs.blocksizes, strict=True):
                if pos >= hi:
                    break
                if pos + size > lo:
                    wanted.append((link.cid, max(0, lo - pos), min(size, hi - pos)))
                pos += size
            stack.extend(reversed(wanted))
        if not stack:
            return
        cid, lo, hi = stack.pop()
        current = exporter.load(getter, cid)


# --- content types -------------------------------------------------------------------------

_TEXT_TYPES = ("application/javascript", "application/json", "image/svg+xml",
               "application/xml")

# (prefix, type): the WHATWG MIME sniffing signatures a browser cares about most.
_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b\x08", "application/x-gzip"),
    (b"\x00asm", "application/wasm"),
    (b"OggS\x00", "application/ogg"),
    (b"ID3", "audio/mpeg"),
)
_HTML_TAGS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe",
              b"<h1", b"<div", b"<font", b"<table", b"<a", b"<style", b"<title", b"<b",
              b"<br", b"<p", b"<!--")
_BINARY = frozenset(range(0x00, 0x09)) | {0x0B} | frozenset(range(0x0E, 0x1B)) | frozenset(
    range(0x1C, 0x20))
SNIFF_LEN = 512
"""How many leading bytes :func:`sniff` looks at (the WHATWG algorithm's)."""


def content_type(name: str) -> str | None:
    """The type a file name's extension gives (with a charset for text), or None."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed is None:
        return None
    return _with_charset(guessed)


def sniff(head: bytes) -> str:
    """A type from a file's first bytes (at most :data:`SNIFF_LEN` are looked at)."""
    head = head[:SNIFF_LEN]
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    text = head.lstrip(b" \t\n\r\x0c")
    lowered = text[:64].lower()
    for tag in _HTML_TAGS:  # a tag, then a space or its end
        if lowered.startswith(tag) and lowered[len(tag):len(tag) + 1] in (b" ", b">"):
            return "text/html; charset=utf-8"
    if b"<svg" in head.lower():
        return "image/svg+xml"
    if lowered.startswith(b"<?xml"):
        return "text/xml; charset=utf-8"
    if head.startswith((b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")):
        return "text/plain; charset=utf-8"
    if not any(byte in _BINARY for byte in head):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def _with_charset(kind: str) -> str:
    if kind.startswith("text/") or kind in _TEXT_TYPES:
        return f"{kind}; charset=utf-8"
    return kind


# --- directory listings --------------------------------------------------------------------

LISTING_VERSION = "ww1"
"""Changes with the listing's HTML, so that caches holding an old one see a new Etag."""

_PAGE_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 0.2em 1em 0.2em 0; text-align: left; }}
td.size {{ text-align: right; }}
.cid {{ font-family: monospace; color: #666; }}
</style>
</head>
<body>
<h1>Index of {title}</h1>
<p class="cid">{cid}</p>
<table>
<thead><tr><th>Name</th><th>Size</th><th>CID</th></tr></thead>
<tbody>
"""
_PAGE_TAIL = "</tbody>\n</table>\n</body>\n</html>\n"


def listing(getter: BlockGetter, title: str, node: UnixfsNode, parent: bool) -> Iterator[bytes]:
    """A directory's HTML index, a few rows at a time: each entry links to itself relative
    to the directory's URL (which ends in ``/``), with its size (the DAG's, from the link)
    and its CID; ``parent``: a ``..`` row first.  The entries are read as the rows are
    made, a HAMT shard at a time: a directory of millions of entries is never held whole."""
    yield _PAGE_HEAD.format(title=html.escape(title), cid=node.cid).encode()
    rows = []
    if parent:
        rows.append('<tr><td><a href="..">..</a></td><td></td><td></td></tr>\n')
    for link in exporter.entries(getter, node):
        raw_name = link.name.decode("utf-8", "surrogateescape")
        name = html.escape(raw_name)
        href = quote(link.name, safe="")
        rows.append(
            f'<tr><td><a href="{href}">{name}</a></td><td class="size">{link.tsize}</td>'
            f'<td class="cid"><a href="/ipfs/{link.cid}">{link.cid}</a></td></tr>\n'
        )
        if len(rows) >= 256:
            yield "".join(rows).encode("utf-8", "surrogateescape")
            rows = []
    rows.append(_PAGE_TAIL)
    yield "".join(rows).encode("utf-8", "surrogateescape")
