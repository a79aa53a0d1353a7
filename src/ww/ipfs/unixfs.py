"""The UnixFS ``Data`` protobuf carried in a dag-pb node's Data field.

``message Data { required DataType Type = 1; optional bytes Data = 2; optional uint64
filesize = 3; repeated uint64 blocksizes = 4; optional uint64 hashType = 5; optional uint64
fanout = 6; optional uint32 mode = 7; optional UnixTime mtime = 8; }``

Fields are written in number order and only when set, as gogo-protobuf in kubo does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import mmh3

from ww.core.protobuf import LEN, VARINT, ProtobufError, bytes_field, fields, key, read_varint
from ww.core.protobuf import uvarint_field as _uv

from .api import CorruptBlockError

__all__ = ["DataType", "UnixFSData", "encode", "decode", "hamt_hash", "FILE_LEAF_PREFIX"]


class DataType(enum.IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: DataType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = field(default_factory=tuple)
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: tuple[int, int | None] | None = None  # (seconds, fractional nanoseconds)

    @property
    def content_size(self) -> int:
        """The bytes this node stands for: filesize if set, else its inline data length."""
        if self.filesize is not None:
            return self.filesize
        return len(self.data or b"")


FILE_LEAF_PREFIX = _uv(1, DataType.FILE)


def encode(d: UnixFSData) -> bytes:
    parts = [_uv(1, int(d.type))]
    if d.data is not None:
        parts.append(bytes_field(2, d.data))
    if d.filesize is not None:
        parts.append(_uv(3, d.filesize))
    parts.extend(_uv(4, size) for size in d.blocksizes)
    if d.hash_type is not None:
        parts.append(_uv(5, d.hash_type))
    if d.fanout is not None:
        parts.append(_uv(6, d.fanout))
    if d.mode is not None:
        parts.append(_uv(7, d.mode))
    if d.mtime is not None:
        seconds, nanos = d.mtime
        body = _uv(1, seconds & (1 << 64) - 1)
        if nanos is not None:
            body += key(2, 5) + nanos.to_bytes(4, "little")
        parts.append(bytes_field(8, body))
    return b"".join(parts)


def decode(data: bytes | memoryview, max_blocksizes: int | None = None) -> UnixFSData:
    """Decode strictly; raises :class:`CorruptBlockError` for anything malformed.

    ``max_blocksizes``: refuse more ``blocksizes`` than that, at the first one past it (the
    node's link count: one size a link).  A 4 MiB block packs 4 million one-byte sizes,
    2 s and 66 MiB to decode, all for a node that links nothing."""
    try:
        return _decode(data, max_blocksizes)
    except ProtobufError as err:
        raise CorruptBlockError(f"invalid UnixFS data: {err}") from None


def _decode(data: bytes | memoryview, max_blocksizes: int | None) -> UnixFSData:
    values: dict[int, object] = {}
    blocksizes: list[int] = []
    limit = -1 if max_blocksizes is None else max_blocksizes

    def add(size: int) -> None:
        if len(blocksizes) == limit:
            raise ProtobufError(f"more blocksizes than the node's {limit} links")
        blocksizes.append(size)

    for num, wire, value in fields(data):
        if num == 4:
            if wire == VARINT:
                assert isinstance(value, int)
                add(value)
            elif wire == LEN:  # packed encoding, legal protobuf although kubo never writes it
                assert isinstance(value, memoryview)
                pos = 0
                while pos < len(value):
                    size, pos = read_varint(value, pos)
                    add(size)
            else:
                raise ProtobufError("blocksizes has the wrong wire type")
            continue
        expected = LEN if num in (2, 8) else VARINT
        if num < 1 or num > 8 or wire != expected:
            raise ProtobufError(f"unexpected field {num} (wire type {wire})")
        if num in values:
            raise ProtobufError(f"field {num} repeated")
        values[num] = value
    if 1 not in values:
        raise ProtobufError("the required Type field is missing")
    try:
        dtype = DataType(values[1])
    except ValueError:
        raise ProtobufError(f"unknown UnixFS type {values[1]}") from None
    raw_data = values.get(2)
    mtime = None
    if 8 in values:
        mtime = _decode_mtime(values[8])  # type: ignore[arg-type]
    mode = values.get(7)
    if mode is not None and mode >= 1 << 32:  # type: ignore[operator]
        raise ProtobufError("mode overflows uint32")
    return UnixFSData(
        type=dtype,
        data=bytes(raw_data) if raw_data is not None else None,  # type: ignore[arg-type]
        filesize=values.get(3),  # type: ignore[arg-type]
        blocksizes=tuple(blocksizes),
        hash_type=values.get(5),  # type: ignore[arg-type]
        fanout=values.get(6),  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        mtime=mtime,
    )


def _decode_mtime(body: memoryview) -> tuple[int, int | None]:
    seconds: int | None = None
    nanos: int | None = None
    for num, wire, value in fields(body):
        if num == 1 and wire == VARINT and seconds is None:
            assert isinstance(value, int)
            seconds = value - (1 << 64) if value >= 1 << 63 else value
        elif num == 2 and wire == 5 and nanos is None:
            assert isinstance(value, int)
            nanos = value
        else:
            raise ProtobufError(f"unexpected field {num} in UnixTime")
    if seconds is None:
        raise ProtobufError("UnixTime without Seconds")
    return seconds, nanos


def hamt_hash(name: bytes) -> bytes:
    """The 8-byte hash a HAMT shard (hashType 0x22) files ``name`` under.

    kubo hashes each entry name with ``murmur3.New64`` (spaolacci/murmur3, seed 0): the first
    64 bits (h1) of MurmurHash3_x64_128, read big-endian.  ``mmh3`` computes it in C.
    """
    return mmh3.hash64(name, 0, signed=False)[0].to_bytes(8, "big")
