"""Multihashes: ``<varint function code><varint digest length><digest>``.

Only sha2-256 (code ``0x12``) is produced and accepted for content: it is what kubo uses by
default and what every CID this node stores carries.  Also read: the identity multihash
(code ``0x00``), whose "digest" is the content itself (an inline block, e.g. the gateway
specification's probe ``bafkqaaa``), up to :data:`MAX_IDENTITY` bytes, kubo's bound
(boxo's verifcid ``DefaultMaxIdentityDigestSize``): a larger one is refused.
"""

from __future__ import annotations

import hashlib

from . import varint

__all__ = ["SHA2_256", "IDENTITY", "MAX_IDENTITY", "MultihashError", "sha256", "decode",
           "verify", "inline"]

# Kept over py-multihash: it decodes every registered function (sha1, identity, ...) and
# non-minimal codes, where a CID of this node must be sha2-256; and it is 2.7-3.6x slower
# per block (benchmarks/codecs.py, two runs: 0.44 us own, 1.2-1.6 us library per decode).

SHA2_256 = 0x12
IDENTITY = 0x00
MAX_IDENTITY = 128
"""Bytes an identity multihash may hold, as kubo (boxo verifcid) allows."""
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

    The digest must be complete; the function must be sha2-256 with a 32-byte digest, or
    identity with at most :data:`MAX_IDENTITY` bytes.
    """
    try:
        code, pos = varint.decode(data, pos)
        length, pos = varint.decode(data, pos)
    except varint.VarintError as err:
        raise MultihashError(f"bad multihash header: {err}") from None
    if code == IDENTITY:
        if length > MAX_IDENTITY:
            raise MultihashError(f"digest too large: identity digest got {length} bytes, "
                                 f"maximum {MAX_IDENTITY}")
    elif code != SHA2_256:
        raise MultihashError(f"unsupported hash function 0x{code:x} (only sha2-256 and "
                             "identity are supported)")
    elif length != 32:
        raise MultihashError(f"sha2-256 digest length must be 32, not {length}")
    end = pos + length
    if end > len(data):
        raise MultihashError("truncated multihash digest")
    return code, bytes(data[pos:end]), end


def inline(mh: bytes) -> bytes | None:
    """The content an identity multihash holds; None for any other (a hash)."""
    if mh[:1] != b"\0":
        return None
    return decode(mh)[1]


def verify(mh: bytes, data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` hashes to the multihash ``mh`` (is its content, for identity)."""
    if mh[:2] == _SHA2_256_PREFIX:
        return hashlib.sha256(data).digest() == mh[2:]
    content = inline(mh)
    return content is not None and content == bytes(data)
