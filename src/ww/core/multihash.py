"""Multihashes: ``<varint function code><varint digest length><digest>``.

Only sha2-256 (code ``0x12``) is produced and accepted for content: it is what kubo uses by
default and what every CID this node stores carries.
"""

from __future__ import annotations

import hashlib

from . import varint

__all__ = ["SHA2_256", "MultihashError", "sha256", "decode", "verify"]

# Kept over py-multihash: it decodes every registered function (sha1, identity, ...) and
# non-minimal codes, where a CID of this node must be sha2-256; and it is 2.7-3.6x slower
# per block (benchmarks/codecs.py, two runs: 0.44 us own, 1.2-1.6 us library per decode).

SHA2_256 = 0x12
_SHA2_256_PREFIX = b"\x12\x20"


class MultihashError(ValueError):
    """The bytes are not a supported multihash."""


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    """The sha2-256 multihash of ``data``."""
    return _SHA2_256_PREFIX + hashlib.sha256(data).digest()


def from_digest(digest: bytes) -> bytes:
    """Wrap a raw 32-byte sha2-256 digest as a multihash."""
    if len(digest) != 32:
        raise MultihashError(f"a sha2-256 digest is 32 bytes, not {len(digest)}")
    return _SHA2_256_PREFIX + digest


def decode(data: bytes | memoryview, pos: int = 0) -> tuple[int, bytes, int]:
    """Parse the multihash at ``data[pos:]``: ``(function code, digest, end position)``.

    The digest must be complete; the function must be sha2-256 with a 32-byte digest.
    """
    try:
        code, pos = varint.decode(data, pos)
        length, pos = varint.decode(data, pos)
    except varint.VarintError as err:
        raise MultihashError(f"bad multihash header: {err}") from None
    if code != SHA2_256:
        raise MultihashError(f"unsupported hash function 0x{code:x} (only sha2-256 is supported)")
    if length != 32:
        raise MultihashError(f"sha2-256 digest length must be 32, not {length}")
    end = pos + length
    if end > len(data):
        raise MultihashError("truncated multihash digest")
    return code, bytes(data[pos:end]), end


def verify(mh: bytes, data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` hashes to the multihash ``mh``."""
    return mh[:2] == _SHA2_256_PREFIX and hashlib.sha256(data).digest() == mh[2:]
