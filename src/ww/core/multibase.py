"""The two multibase encodings IPFS uses for CIDs: base58btc (``z``) and base32 lower (``b``).

CIDv0 strings are bare base58btc (no prefix); CIDv1 strings carry a multibase prefix, and
kubo prints them in base32 lower case.
"""

from __future__ import annotations

import base64
import binascii

__all__ = [
    "MultibaseError",
    "b58encode",
    "b58decode",
    "b32encode",
    "b32decode",
    "encode",
    "decode",
]

# Kept over py-multibase, which every CID string would go through: it is 5-11x slower to
# decode base58btc (2.7-4.5 us own, 13-51 us library) and 12-20x to encode base32 (4-6 us,
# 68-74 us) in two runs of benchmarks/codecs.py; and it accepts base32 with non-zero
# trailing bits ("baf" decodes as "bae" does), so two strings would name one CID.

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


class MultibaseError(ValueError):
    """The string is not valid in the expected base."""


def b58encode(data: bytes) -> str:
    """Bitcoin base58 (no prefix), leading zero bytes kept as ``1`` characters."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    chars = []
    while num:
        num, rem = divmod(num, 58)
        chars.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises :class:`MultibaseError` on a foreign character."""
    num = 0
    for ch in text:
        try:
            num = num * 58 + _B58_INDEX[ch]
        except KeyError:
            raise MultibaseError(f"{ch!r} is not a base58btc character") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def b32encode(data: bytes) -> str:
    """RFC 4648 base32, lower case, without padding (no prefix)."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(text: str) -> bytes:
    """Inverse of :func:`b32encode`; strict about alphabet and trailing bits."""
    bad = set(text) - _B32_ALPHABET
    if bad:
        raise MultibaseError(f"{sorted(bad)[0]!r} is not a base32 lower-case character")
    if len(text) % 8 in (1, 3, 6):
        raise MultibaseError("base32 text has an impossible length")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        data = base64.b32decode(padded)
    except binascii.Error as err:
        raise MultibaseError(f"invalid base32: {err}") from None
    if b32encode(data) != text:
        raise MultibaseError("base32 text has non-zero trailing bits")
    return data


def encode(data: bytes, base: str) -> str:
    """Multibase-encode with prefix: ``base`` is ``"base32"`` or ``"base58btc"``."""
    if base == "base32":
        return "b" + b32encode(data)
    if base == "base58btc":
        return "z" + b58encode(data)
    raise MultibaseError(f"unsupported multibase {base!r}")


def decode(text: str) -> bytes:
    """Decode a prefixed multibase string (``b`` base32 lower or ``z`` base58btc)."""
    if not text:
        raise MultibaseError("empty multibase string")
    prefix, body = text[0], text[1:]
    if prefix == "b":
        return b32decode(body)
    if prefix == "z":
        return b58decode(body)
    raise MultibaseError(
        f"unsupported multibase prefix {prefix!r} (expected 'b' base32 or 'z' base58btc)"
    )
