"""Unsigned LEB128 varints, as multiformats and protobuf use them.

Multiformats caps a varint at 9 bytes (63 bits) and forbids non-minimal encodings; protobuf
allows 10 bytes.  Decoding here is strict: a caller that reads untrusted bytes (a CID, a
block, a CAR) gets a :class:`VarintError` for anything truncated, overlong or non-minimal.
"""

from __future__ import annotations

__all__ = ["VarintError", "encode", "decode", "MAX_MULTIFORMATS_LEN"]

# Kept over PyPI's ``varint`` (what py-multihash uses): that one decodes ``80 00`` as 0
# (non-minimal), 20 bytes of ``ff`` as a 141-bit number (no bound) and a truncated varint as
# a TypeError; every varint here comes from a peer, a CAR or a cell.  Speed is the same
# (benchmarks/codecs.py, two runs: 1.0-1.1 us own, 1.2 us library per decode).

MAX_MULTIFORMATS_LEN = 9


class VarintError(ValueError):
    """The bytes do not hold a valid varint."""


def encode(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned varint."""
    if value < 0:
        raise ValueError(f"varint cannot encode a negative number ({value})")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode(
    data: bytes | bytearray | memoryview, pos: int = 0, max_len: int = MAX_MULTIFORMATS_LEN
) -> tuple[int, int]:
    """Decode the varint at ``data[pos:]``; return ``(value, position after it)``.

    Raises :class:`VarintError` if it is truncated, longer than ``max_len`` bytes, or not
    minimally encoded (a trailing ``0x00`` byte after a continuation).
    """
    value = 0
    shift = 0
    end = len(data)
    start = pos
    while True:
        if pos >= end:
            raise VarintError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                raise VarintError("varint is not minimally encoded")
            return value, pos
        shift += 7
        if pos - start >= max_len:
            raise VarintError(f"varint longer than {max_len} bytes")
