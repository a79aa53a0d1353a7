"""Just enough dag-cbor for a CAR v1 header: ``{"roots": [CID, ...], "version": 1}``.

dag-cbor is strict CBOR: definite lengths, shortest integer forms, map keys sorted by length
then bytes, and CIDs as tag 42 over a byte string ``0x00 || binary CID``.  The decoder takes
the subset a header uses (unsigned ints, byte and text strings, arrays, maps, tag 42) and
refuses everything else, with depth and size limits since CAR files come from outside.
"""

from __future__ import annotations

from typing import Any

from ww.core.cid import CID, CidError

__all__ = ["DagCborError", "encode", "decode"]

_MAX_DEPTH = 16
_MAX_ITEMS = 1 << 16

# Kept over cbor2 for CAR headers, which come from outside: cbor2 resolves CBOR's value-sharing
# tags (28/29) and string references (25/256) inside its decoder, so 300 bytes of header
# expand exponentially when walked or re-encoded (tried: cbor2.dumps of one ran out of time),
# and it checks none of dag-cbor's canonical rules (minimal integers, key order).  A header is
# decoded once per CAR: speed does not enter.


class DagCborError(ValueError):
    """The bytes are not (the supported subset of) dag-cbor."""


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes((major << 5 | extra,)) + value.to_bytes(size, "big")
    raise DagCborError("integer too large for CBOR")


def encode(value: Any) -> bytes:
    """Encode ints >= 0, str, bytes, lists, str-keyed dicts and CIDs."""
    if isinstance(value, bool) or value is None:
        raise DagCborError(f"cannot encode {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise DagCborError("negative integers are not supported")
        return _head(0, value)
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, list | tuple):
        return _head(4, len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))
        return _head(5, len(keys)) + b"".join(encode(k) + encode(value[k]) for k in keys)
    if isinstance(value, CID):
        return b"\xd8\x2a" + encode(b"\x00" + bytes(value))
    raise DagCborError(f"cannot encode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """Decode one complete item; trailing bytes are an error."""
    value, pos = _decode(memoryview(data), 0, 0)
    if pos != len(data):
        raise DagCborError("trailing bytes after the dag-cbor item")
    return value


def _read_head(data: memoryview, pos: int) -> tuple[int, int, int]:
    if pos >= len(data):
        raise DagCborError("truncated dag-cbor")
    first = data[pos]
    major, info = first >> 5, first & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise DagCborError("indefinite lengths and reserved values are not dag-cbor")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise DagCborError("truncated dag-cbor")
    value = int.from_bytes(data[pos : pos + size], "big")
    if value < (24 if size == 1 else 1 << (4 * size)):
        raise DagCborError("non-minimal integer encoding")
    return major, value, pos + size


def _decode(data: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise DagCborError("dag-cbor nested too deeply")
    major, arg, pos = _read_head(data, pos)
    if major == 0:
        return arg, pos
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise DagCborError("truncated dag-cbor string")
        raw = bytes(data[pos:end])
        if major == 2:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise DagCborError("invalid UTF-8 in a text string") from None
    if major == 4:
        if arg > _MAX_ITEMS:
            raise DagCborError("array too long")
        items = []
        for _ in range(arg):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        if arg > _MAX_ITEMS:
            raise DagCborError("map too long")
        result: dict[str, Any] = {}
        previous: bytes | None = None
        for _ in range(arg):
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, str):
                raise DagCborError("dag-cbor map keys must be strings")
            raw = key.encode("utf-8")
            if previous is not None and (len(raw), raw) <= (len(previous), previous):
                raise DagCborError("dag-cbor map keys not in canonical order")
            previous = raw
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos
    if major == 6 and arg == 42:
        inner, pos = _decode(data, pos, depth + 1)
        if not isinstance(inner, bytes) or inner[:1] != b"\x00":
            raise DagCborError("tag 42 must wrap 0x00 followed by a binary CID")
        try:
            cid, end = CID.decode(inner, 1)
        except CidError as err:
            raise DagCborError(f"invalid CID in tag 42: {err}") from None
        if end != len(inner):
            raise DagCborError("trailing bytes after a tag-42 CID")
        return cid, pos
    raise DagCborError(f"unsupported dag-cbor item (major type {major})")
