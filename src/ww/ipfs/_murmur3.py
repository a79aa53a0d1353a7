"""MurmurHash3 x64 (128-bit variant, first 64 bits), the hash of UnixFS HAMT directories.

kubo hashes each entry name with ``murmur3.New64`` (spaolacci/murmur3, seed 0) and reads the
digest big-endian; :func:`murmur3_64` returns those 8 bytes.  Names are short, so a plain
Python implementation costs microseconds per entry.
"""

from __future__ import annotations

__all__ = ["murmur3_64"]

_M = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    k ^= k >> 33
    return k


def murmur3_64(data: bytes, seed: int = 0) -> bytes:
    """The first 64 bits (h1) of MurmurHash3_x64_128, as 8 big-endian bytes."""
    h1 = h2 = seed
    n = len(data)
    end = n - n % 16
    for i in range(0, end, 16):
        k1 = int.from_bytes(data[i : i + 8], "little")
        k2 = int.from_bytes(data[i + 8 : i + 16], "little")
        h1 ^= (_rotl((k1 * _C1) & _M, 31) * _C2) & _M
        h1 = (((_rotl(h1, 27) + h2) & _M) * 5 + 0x52DCE729) & _M
        h2 ^= (_rotl((k2 * _C2) & _M, 33) * _C1) & _M
        h2 = (((_rotl(h2, 31) + h1) & _M) * 5 + 0x38495AB5) & _M
    tail = data[end:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _M, 33) * _C1) & _M
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _M, 31) * _C2) & _M
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = (h1 + h2) & _M
    return h1.to_bytes(8, "big")
