"""Content identifiers (CIDs), versions 0 and 1, for the two codecs UnixFS uses.

* CIDv0: a bare sha2-256 multihash, written in base58btc (``Qm...``); always dag-pb.
* CIDv1: ``<varint 1><varint codec><multihash>``, written with a multibase prefix; kubo
  prints base32 lower case (``bafy...`` for dag-pb, ``bafk...`` for raw).

A CIDv1's multihash is sha2-256, or identity (``bafkq...`` for raw): the block is the CID's
own bytes, at most 128 (see :mod:`ww.core.multihash`), and no store holds it.

Equality follows go-cid: a CIDv0 and the CIDv1 of the same block are *different* CIDs (but
name the same bytes, see :attr:`CID.multihash`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ww.core.errors import InvalidPathError

from . import multibase, multihash, varint

__all__ = ["DAG_PB", "RAW", "MAX_BYTES", "CID", "CidError"]

# Kept over py-cid, which would sit on every block's path (Bitswap, CAR, importer): it is
# 1.9-3.0x slower to decode a binary CID (2.0 us own, 3.8-6.1 us library), 4.2-5.1x to parse
# a base32 one (13 us, 55-69 us) and 12-20x to print one (3.8-5.8 us, 68-74 us) --
# benchmarks/codecs.py, two runs -- and it accepts the dag-cbor CIDs this node refuses and
# identity-multihash CIDs of any size, so the checks here would stay around it anyway.

DAG_PB = 0x70
RAW = 0x55
_CODEC_NAMES = {DAG_PB: "dag-pb", RAW: "raw"}
_KNOWN_CODECS = {0x71: "dag-cbor", 0x0129: "dag-json", 0x0200: "json", 0x51: "cbor"}


MAX_BYTES = 5 + multihash.MAX_IDENTITY
"""The longest binary CID read: version, codec, identity code and a two-byte digest length
(one byte each but the length), then :data:`ww.core.multihash.MAX_IDENTITY` bytes.  Its text
is at most :func:`ww.core.multibase.longest` of it; a longer one is refused unread."""


class CidError(InvalidPathError):
    """The text or bytes are not a CID this node can handle."""


@dataclass(frozen=True, slots=True)
class CID:
    """A parsed CID.  Build with :meth:`parse`, :meth:`decode`, :meth:`v0` or :meth:`v1`."""

    version: int
    codec: int
    multihash: bytes

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise CidError(f"unsupported CID version {self.version}")
        if self.version == 0 and self.codec != DAG_PB:
            raise CidError("a CIDv0 is always dag-pb")
        if self.codec not in _CODEC_NAMES:
            name = _KNOWN_CODECS.get(self.codec, "unknown")
            raise CidError(
                f"unsupported codec 0x{self.codec:x} ({name}); only dag-pb and raw are supported"
            )
        try:
            _, _, end = multihash.decode(self.multihash)
        except multihash.MultihashError as err:
            raise CidError(f"invalid CID multihash: {err}") from None
        if end != len(self.multihash):
            raise CidError("trailing bytes after the CID multihash")
        if self.version == 0 and self.multihash[:1] != b"\x12":
            raise CidError("a CIDv0 is always a sha2-256 multihash")

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def v0(cls, mh: bytes) -> CID:
        return cls(0, DAG_PB, mh)

    @classmethod
    def v1(cls, codec: int, mh: bytes) -> CID:
        return cls(1, codec, mh)

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse a CID string (``Qm...`` base58btc v0, or a CIDv1 in any multibase
        :mod:`ww.core.multibase` reads: ``b`` base32, ``B``, ``k`` base36, ``z``, ...)."""
        if not isinstance(text, str) or not text:
            raise CidError("empty CID")
        if len(text) == 46 and text.startswith("Qm"):
            try:
                raw = multibase.b58decode(text)
            except multibase.MultibaseError as err:
                raise CidError(f"invalid CIDv0 {text!r}: {err}") from None
            if len(raw) != 34 or raw[:2] != b"\x12\x20":
                raise CidError(f"invalid CIDv0 {text!r}: not a sha2-256 multihash")
            return cls.v0(raw)
        try:
            raw = multibase.decode(text, MAX_BYTES)
        except multibase.MultibaseError as err:
            raise CidError(f"invalid CID {_short(text)!r}: {err}") from None
        if raw[:1] == b"\x12":
            raise CidError(f"invalid CID {_short(text)!r}: a CIDv0 must be written in bare base58")
        cid, end = cls.decode(raw)
        if end != len(raw):
            raise CidError(f"invalid CID {_short(text)!r}: trailing bytes")
        return cid

    @classmethod
    def _checked(cls, version: int, codec: int, mh: bytes) -> CID:
        """A CID whose parts :meth:`decode` has checked already (``__post_init__`` would
        decode the multihash again: a third of the time of a directory entry's link)."""
        cid = object.__new__(cls)
        object.__setattr__(cid, "version", version)
        object.__setattr__(cid, "codec", codec)
        object.__setattr__(cid, "multihash", mh)
        return cid

    @classmethod
    def decode(cls, data: bytes | memoryview, pos: int = 0) -> tuple[CID, int]:
        """Decode a binary CID at ``data[pos:]``; return ``(cid, end position)``."""
        size = len(data)
        if pos + 2 <= size and data[pos] == 0x12 and data[pos + 1] == 0x20:
            end = pos + 34
            if end > size:
                raise CidError("truncated CIDv0")
            return cls._checked(0, DAG_PB, bytes(data[pos:end])), end
        if pos + 4 <= size and data[pos] == 1 and data[pos + 1] in _CODEC_NAMES:
            # the usual CIDv1, each varint one byte: a raw or dag-pb block by sha2-256, or
            # an identity CID, read straight (anything else, or short, goes the long way)
            code, length = data[pos + 2], data[pos + 3]
            end = pos + 4 + length
            if ((code == multihash.SHA2_256 and length == 32)
                    or (code == multihash.IDENTITY and length < 0x80)) \
                    and end <= size:
                return cls._checked(1, data[pos + 1], bytes(data[pos + 2:end])), end
        try:
            version, p = varint.decode(data, pos)
            codec, p = varint.decode(data, p)
        except varint.VarintError as err:
            raise CidError(f"invalid binary CID: {err}") from None
        if version != 1:
            raise CidError(f"unsupported CID version {version}")
        try:
            _, _, end = multihash.decode(data, p)
        except multihash.MultihashError as err:
            raise CidError(f"invalid CID multihash: {err}") from None
        return cls.v1(codec, bytes(data[p:end])), end

    # --- forms ------------------------------------------------------------------------

    def __bytes__(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return varint.encode(1) + varint.encode(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return multibase.b58encode(self.multihash)
        return multibase.encode(bytes(self), "base32")

    def __repr__(self) -> str:
        return f"CID({str(self)!r})"

    @property
    def codec_name(self) -> str:
        return _CODEC_NAMES[self.codec]

    @property
    def digest(self) -> bytes:
        """The raw digest: sha2-256's 32 bytes, or an identity CID's content."""
        return multihash.decode(self.multihash)[1]

    @property
    def inline(self) -> bytes | None:
        """The block an identity CID holds in itself (no store has it: it *is* the CID);
        None for a CID that names its block by hash."""
        return multihash.inline(self.multihash)

    def to_v1(self) -> CID:
        return CID.v1(self.codec, self.multihash)


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."
