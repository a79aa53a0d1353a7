"""The few protobuf wire-format primitives the dag-pb and UnixFS codecs need.

Only two wire types occur in these schemas: varint (0) and length-delimited (2).  Readers are
strict and raise :class:`ProtobufError`; the codecs turn that into ``CorruptBlockError``.
"""

from __future__ import annotations

from collections.abc import Iterator

from ww.ipfs import varint

VARINT = 0
LEN = 2
FIXED64 = 1
FIXED32 = 5

_MAX_PROTOBUF_VARINT = 10


class ProtobufError(ValueError):
    """Malformed protobuf bytes."""


def key(field: int, wire_type: int) -> bytes:
    return varint.encode(field << 3 | wire_type)


def uvarint_field(field: int, value: int) -> bytes:
    return key(field, VARINT) + varint.encode(value)


def bytes_field(field: int, value: bytes) -> bytes:
    return key(field, LEN) + varint.encode(len(value)) + value


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    try:
        value, pos = varint.decode(data, pos, _MAX_PROTOBUF_VARINT)
    except varint.VarintError as err:
        raise ProtobufError(str(err)) from None
    if value >= 1 << 64:
        raise ProtobufError("varint overflows 64 bits")
    return value, pos


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)``; a length-delimited value is a memoryview.

    Fixed-width values are returned as integers.  Group wire types (3, 4) are refused.
    """
    view = memoryview(data)
    pos = 0
    end = len(view)
    while pos < end:
        tag, pos = read_varint(view, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise ProtobufError("protobuf field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos)
            yield field, wire_type, value
        elif wire_type == LEN:
            length, pos = read_varint(view, pos)
            if pos + length > end:
                raise ProtobufError(f"field {field} runs past the end of the message")
            yield field, wire_type, view[pos : pos + length]
            pos += length
        elif wire_type in (FIXED32, FIXED64):
            size = 4 if wire_type == FIXED32 else 8
            if pos + size > end:
                raise ProtobufError(f"field {field} runs past the end of the message")
            yield field, wire_type, int.from_bytes(view[pos : pos + size], "little")
            pos += size
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire_type}")
