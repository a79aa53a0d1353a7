"""The dag-pb codec (multicodec ``0x70``): the block format of UnixFS.

Encoding is canonical exactly as go-codec-dagpb (and so kubo) writes it: every link's
``Hash``, ``Name`` and ``Tsize`` in that order -- ``Name`` and ``Tsize`` always present, as
go-merkledag fills them -- then the ``Data`` field last, although its field number (1) is
lower than ``Links`` (2).  Decoding is strict in the go-codec-dagpb sense: fields in that
order, each once, no unknown fields, link hashes must be CIDs, and at most :data:`MAX_LINKS`
links.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ww.core import varint
from ww.core.cid import CID, CidError
from ww.core.protobuf import LEN, VARINT, ProtobufError, fields, key, read_varint

from .api import CorruptBlockError

__all__ = ["PBLink", "PBNode", "encode", "decode", "iter_links", "skim", "MAX_LINKS"]

MAX_LINKS = 1 << 17
"""Links a node may have, at most; a node with more is corrupt, refused at the first link
past this.  A link costs some 8 us to decode and 180 bytes to hold whatever its size, and
the smallest takes 8 bytes (an empty identity CID, no name): a 4 MiB block held 524,000,
4.3 s and 92 MiB per read, and 8.6 s for `ww ls`.  A link to a sha2-256 block takes 38 bytes
at least (42 as kubo writes it, Name and Tsize always present), so every such block up to
the block size limit (110,400 links at most) is under this;
kubo writes at most 174 links a file node, 256 a HAMT shard, and shards a directory
before its links reach 256 KiB."""


@dataclass(frozen=True, slots=True)
class PBLink:
    """A named, sized link.  ``name`` is bytes: dag-pb does not force UTF-8."""

    cid: CID
    name: bytes = b""
    tsize: int = 0


@dataclass(frozen=True, slots=True)
class PBNode:
    links: Sequence[PBLink] = field(default_factory=tuple)
    data: bytes | None = None


_LINK_KEY = key(2, LEN)
_HASH_KEY = key(1, LEN)
_NAME_KEY = key(2, LEN)
_TSIZE_KEY = key(3, VARINT)
_DATA_KEY = key(1, LEN)


def encode_link(link: PBLink) -> bytes:
    cid = bytes(link.cid)
    body = b"".join(
        (
            _HASH_KEY,
            varint.encode(len(cid)),
            cid,
            _NAME_KEY,
            varint.encode(len(link.name)),
            link.name,
            _TSIZE_KEY,
            varint.encode(link.tsize),
        )
    )
    return _LINK_KEY + varint.encode(len(body)) + body


def encode(node: PBNode) -> bytes:
    """Encode a node canonically (links in the given order, then data)."""
    parts = [encode_link(link) for link in node.links]
    if node.data is not None:
        parts.append(_DATA_KEY + varint.encode(len(node.data)) + node.data)
    return b"".join(parts)


def decode(block: bytes | memoryview) -> PBNode:
    """Decode a dag-pb block; raises :class:`CorruptBlockError` if it is not canonical dag-pb."""
    try:
        return _decode(block)
    except (ProtobufError, CidError) as err:
        raise CorruptBlockError(f"invalid dag-pb block: {err}") from None


def _decode(block: bytes | memoryview) -> PBNode:
    view = memoryview(block)
    end = len(view)
    links: list[PBLink] = []
    data: bytes | None = None
    # Links in the usual form (key 0x12, a length of one or two bytes) are taken straight;
    # from the first field that is not one, the strict reader goes on (and says what is wrong).
    pos = 0
    while pos + 1 < end and view[pos] == 0x12 and len(links) < MAX_LINKS:
        length, start = view[pos + 1], pos + 2
        if length >= 0x80:
            if start >= end or not 0 < view[start] < 0x80:
                break
            length, start = (length & 0x7F) | view[start] << 7, start + 1
        if start + length > end:
            break
        links.append(_decode_link(view[start:start + length]))
        pos = start + length
    for num, wire, value in fields(view[pos:]):
        if num == 2 and wire == LEN:
            if data is not None:
                raise ProtobufError("a link follows the Data field")
            assert isinstance(value, memoryview)
            if len(links) >= MAX_LINKS:
                raise ProtobufError(f"more than {MAX_LINKS} links")
            links.append(_decode_link(value))
        elif num == 1 and wire == LEN:
            if data is not None:
                raise ProtobufError("duplicate Data field")
            assert isinstance(value, memoryview)
            data = bytes(value)
        else:
            raise ProtobufError(f"unexpected field {num} (wire type {wire}) in PBNode")
    return PBNode(tuple(links), data)


def skim(block: bytes) -> tuple[int, bytes | None]:
    """A dag-pb block's link count and its Data field, its links skipped by their lengths
    and not decoded (some 30 times faster: 0.33 ms a 64 KiB block of 5,461 links, 10.5 ms
    decoded), for a reader that wants a node's UnixFS data alone; their own bytes (CID, name,
    size) are left unchecked.  A block :func:`decode` would refuse is decoded by it (and so
    refused as it is); any it accepts is skimmed, whatever its links' lengths.  (Found by
    attack) a link of 16 KiB or more (its length a varint of three bytes) had the whole block
    decoded: one such link first, then 5,461 empty ones, 12 ms a skim, as slow as
    :func:`decode` (0.46 ms without it), which undid ``ls``'s saving for such children."""
    pos, count, end = 0, 0, len(block)
    while pos + 1 < end and block[pos] == 0x12 and count < MAX_LINKS:
        length = block[pos + 1]
        if length < 0x80:
            pos += 2 + length
        elif pos + 2 < end and 0 < block[pos + 2] < 0x80:
            pos += 3 + ((length & 0x7F) | block[pos + 2] << 7)
        else:  # (found by attack) a link of 16 KiB or more, as decode reads it, not decode
            try:
                length, start = read_varint(block, pos + 1)
            except ProtobufError:
                break
            pos = start + length
        count += 1
    if pos == end:
        return count, None
    if pos < end and block[pos] == 0x0A:  # Data, last
        try:
            length, start = read_varint(block, pos + 1)
        except ProtobufError:
            length, start = -1, end
        if start + length == end:
            return count, block[start:]
    node = decode(block)  # anything else: the strict reader says what is wrong, if anything
    return len(node.links), node.data


def iter_links(block: bytes | memoryview) -> Iterator[PBLink]:
    """The links of a dag-pb block, each decoded when it is taken: a reader that wants the
    first few does not pay for all (a 4 MiB block holds up to :data:`MAX_LINKS`).  Raises
    :class:`CorruptBlockError` on reaching what is not canonical dag-pb; the Data field and
    what follows it are not checked."""
    try:
        for count, (num, wire, value) in enumerate(fields(block)):
            if num == 1 and wire == LEN:
                return
            if num != 2 or wire != LEN:
                raise ProtobufError(f"unexpected field {num} (wire type {wire}) in PBNode")
            if count >= MAX_LINKS:
                raise ProtobufError(f"more than {MAX_LINKS} links")
            assert isinstance(value, memoryview)
            yield _decode_link(value)
    except (ProtobufError, CidError) as err:
        raise CorruptBlockError(f"invalid dag-pb block: {err}") from None


def _decode_link(body: memoryview) -> PBLink:
    """One PBLink; one in the form every encoder writes (Hash, then Name and Tsize if any,
    each length a byte) is read straight, without :func:`fields` (a third of the time:
    a directory's listing is mostly this), any other by the strict reader."""
    end = len(body)
    if end > 1 and body[0] == 0x0A and body[1] < 0x80:  # Hash (field 1, LEN)
        pos = 2 + body[1]
        if pos <= end:
            try:
                cid, used = CID.decode(body[2:pos])
            except CidError:
                used = -1
            if used == pos - 2:
                name = b""
                if pos + 1 < end and body[pos] == 0x12 and body[pos + 1] < 0x80:  # Name
                    start = pos + 2
                    pos = start + body[pos + 1]
                    name = bytes(body[start:pos])
                if pos + 1 < end and body[pos] == 0x18 and body[pos + 1] < 0x80:  # Tsize
                    tsize = body[pos + 1]
                    pos += 2
                elif pos < end and body[pos] == 0x18:
                    try:
                        tsize, pos = read_varint(body, pos + 1)
                    except ProtobufError:
                        tsize = 1 << 63
                    if tsize >= 1 << 63:
                        pos = -1
                else:
                    tsize = 0
                if pos == end:
                    return PBLink(cid, name, tsize)
    return _decode_fields(body)  # what is wrong, said as the strict reader says it


def _decode_fields(body: memoryview) -> PBLink:
    cid: CID | None = None
    name: bytes | None = None
    tsize: int | None = None
    last = 0
    for num, wire, value in fields(body):
        if num <= last:
            raise ProtobufError("PBLink fields out of order or repeated")
        last = num
        if num == 1 and wire == LEN:
            assert isinstance(value, memoryview)
            cid, end = CID.decode(value)
            if end != len(value):
                raise ProtobufError("trailing bytes after a link's CID")
        elif num == 2 and wire == LEN:
            assert isinstance(value, memoryview)
            name = bytes(value)
        elif num == 3 and wire == VARINT:
            assert isinstance(value, int)
            if value >= 1 << 63:
                raise ProtobufError("link Tsize overflows int64")
            tsize = value
        else:
            raise ProtobufError(f"unexpected field {num} (wire type {wire}) in PBLink")
    if cid is None:
        raise ProtobufError("a link has no Hash")
    return PBLink(cid, name or b"", tsize or 0)
