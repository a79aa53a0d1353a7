"""kubo's chunkers: how ``ipfs add --chunker`` cuts a file into the leaves of its DAG.

Three kinds, parsed from kubo's strings by :func:`parse` with the rules and messages of kubo
0.22 (boxo v0.11's ``chunker.FromString``):

``size-N``
    fixed N-byte chunks (N from 1 to 1048576), the last one shorter; kubo's default is
    ``size-262144``.
``rabin``, ``rabin-AVG``, ``rabin-MIN-AVG-MAX``
    content-defined: a Rabin fingerprint (polynomial 0x3DF305DFB2A805 of degree 53 over
    GF(2)) of the last 16 bytes; a chunk ends after byte L (MIN <= L < MAX) where the
    fingerprint's low log2(AVG) bits are all zero, else at MAX.  ``rabin`` is ``rabin-262144``;
    ``rabin-AVG`` takes MIN = AVG/3 and MAX = AVG + AVG/2.  (The values may carry kubo's labels:
    ``rabin-min:MIN-avg:AVG-max:MAX``.)
``buzhash``
    content-defined: a cyclic-polynomial hash of the last 32 bytes (each byte mapped through a
    fixed table of 256 32-bit words, rotated by its distance from the end); a chunk ends after
    byte L (128 KiB <= L < 512 KiB) where the hash's low 17 bits are zero, else at 512 KiB.

Speed without a per-byte Python loop: both hashes are GF(2)-linear in the window's bytes, so the
hash at every position of a block is the XOR of W byte-wise table look-ups of shifted copies of
the block: ``bytes.translate`` does the look-ups, ``int`` the XOR of whole blocks.  This runs
over 8 bits of the hash at a time; the positions where the first 8 bits are zero are
candidates, checked one by one (or, when there are many -- input built to have them -- by the
next 8 bits in bulk).  Each byte is looked at a bounded number of times whatever the input, and
a chunk scan stops at the first cut, so the work is linear in the input.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ww.core.errors import ChunkerError

__all__ = ["CHUNK_SIZE_LIMIT", "DEFAULT", "Chunker", "parse", "rechunk"]

DEFAULT = "size-262144"
DEFAULT_SIZE = 262144  # kubo's DefaultBlockSize: size-N's default, and rabin's average
CHUNK_SIZE_LIMIT = 1048576  # boxo v0.11's ChunkSizeLimit: no chunker may cut larger chunks
_ERR_SIZE_MAX = f"chunker parameters may not exceed the maximum chunk size of {CHUNK_SIZE_LIMIT}"

RABIN_POLYNOMIAL = 17437180132763653  # boxo's IpfsRabinPoly (0x3DF305DFB2A805), degree 53
RABIN_WINDOW = 16
BUZHASH_WINDOW = 32
BUZHASH_MIN = 128 << 10
BUZHASH_MAX = 512 << 10
BUZHASH_BITS = 17

# boxo's buzhash byte table (github.com/ipfs/boxo, chunker/buzhash.go, ``bytehash``): data
# kubo's buzhash CIDs depend on, so it is reproduced word for word.
_BUZHASH_TABLE = (
    0x6236e7d5, 0x10279b0b, 0x72818182, 0xdc526514, 0x2fd41e3d, 0x777ef8c8, 0x83ee5285, 0x2c8f3637,
    0x2f049c1a, 0x57df9791, 0x9207151f, 0x9b544818, 0x74eef658, 0x2028ca60, 0x0271d91a, 0x27ae587e,
    0xecf9fa5f, 0x236e71cd, 0xf43a8a2e, 0x0bb13380, 0x9e57912c, 0x89a26cdb, 0x9fcf3d71, 0xa86da6f1,
    0x9c49f376, 0x346aecc7, 0xf094a9ee, 0xea99e9cb, 0xb01713c6, 0x088acffb, 0x2960a0fb, 0x344a626c,
    0x7ff22a46, 0x6d7a1aa5, 0x6a714916, 0x41d454ca, 0x8325b830, 0x0b65f563, 0x447fecca, 0xf9d0ea5e,
    0xc1d9d3d4, 0xcb5ec574, 0x55aae902, 0x86edc0e7, 0x0d3a9e33, 0xe70dc1e1, 0xe3c5f639, 0x9b43140a,
    0xc6490ac5, 0x5e4030fb, 0x8e976dd5, 0xa87468ea, 0xf830ef6f, 0xcc1ed5a5, 0x611f4e78, 0xddd11905,
    0xf2613904, 0x566c67b9, 0x905a5ccc, 0x7b37b3a4, 0x4b53898a, 0x6b8fd29d, 0xaad81575, 0x511be414,
    0x3cfac1e7, 0x8029a179, 0xd40efeda, 0x07380e02, 0xdc9beffd, 0x2d049082, 0x99bc7831, 0xff5002a8,
    0x21ce7646, 0x01cd049b, 0x0f43994f, 0xc3c6c5a5, 0xbbda5f50, 0x0ec15ec7, 0x9adb19b6, 0x0c1e80b9,
    0xb9b52968, 0xae162419, 0x2542b405, 0x91a42e9d, 0x6be0f668, 0x6ed7a6b9, 0xbc2777b4, 0xe162ce56,
    0x4266aad5, 0x60fdb704, 0x66f832a5, 0x9595f6ca, 0xfee83ced, 0x55228d99, 0x12bf0e28, 0x66896459,
    0x0789afda, 0x0282baa8, 0x2367a343, 0x591491b0, 0x2ff1a4b1, 0x410739b6, 0x9b7055a0, 0x2e0eb229,
    0x24fc8252, 0x3327d3df, 0xb0782669, 0x1c62e069, 0x7f503101, 0xf50593ae, 0xd9eb275d, 0xe00eb678,
    0x5917ccde, 0x97b9660a, 0xdd06202d, 0xed229e22, 0xa9c735bf, 0xd6316fe6, 0x6fc72e4c, 0x0206dfa2,
    0xd6b15c5a, 0x69d87b49, 0x09c97745, 0x13445d61, 0x35a975aa, 0x859aa9b9, 0x65380013, 0xd1fb6391,
    0xc29255fd, 0x784a3b91, 0xb9e74c26, 0x63ce4d40, 0xc07cbe9e, 0xe6e4529e, 0x0fb3632f, 0x9438d9c9,
    0x682f94a8, 0xf8fd4611, 0x257ec1ed, 0x475ce3d6, 0x60ee2db1, 0x2afab002, 0x2b9e4878, 0x86b340de,
    0x1482fdca, 0xfe41b3bf, 0xd4a412b0, 0xe09db98c, 0xc1af5d53, 0x7e55e25f, 0xd3346b38, 0xb7a12cbd,
    0x9c6827ba, 0x71f78bee, 0x8c3a0f52, 0x150491b0, 0xf26de912, 0x233e3a4e, 0xd309ebba, 0xa0a9e0ff,
    0xca2b5921, 0xeeb9893c, 0x33829e88, 0x9870cc2a, 0x23c4b9d0, 0xeba32ea3, 0xbdac4d22, 0x3bc8c44c,
    0x1e8d0397, 0xf9327735, 0x783b009f, 0x0eb83742, 0x2621dc71, 0xed017d03, 0x5c760aa1, 0x5a69814b,
    0x96e3047f, 0xa93c9cde, 0x615c86f5, 0xb4322aa5, 0x4225534d, 0x0d2e2de3, 0xccfccc4b, 0x0bac2a57,
    0xf0a06d04, 0xbc78d737, 0xf2d1f766, 0xf5a7953c, 0xbcdfda85, 0x5213b7d5, 0xbce8a328, 0xd38f5f18,
    0xdb094244, 0xfe571253, 0x317fa7ee, 0x4a324f43, 0x3ffc39d9, 0x51b3fa8e, 0x7a4bee9f, 0x78bbc682,
    0x9f5c0350, 0x02fe286c, 0x245ab686, 0xed6bf7d7, 0x0ac4988a, 0x3fe010fa, 0xc65fe369, 0xa45749cb,
    0x2b84e537, 0xde9ff363, 0x20540f9a, 0xaa8c9b34, 0x5bc476b3, 0x1d574bd7, 0x929100ad, 0x4721de4d,
    0x27df1b05, 0x58b18546, 0xb7e76764, 0xdf904e58, 0x97af57a1, 0xbd4dc433, 0xa6256dfd, 0xf63998f3,
    0xf1e05833, 0xe20acf26, 0xf57fd9d6, 0x90300b4d, 0x89df4290, 0x68d01cbc, 0xcf893ee3, 0xcc42a046,
    0x778e181b, 0x67265c76, 0xe981a4c4, 0x82991da1, 0x708f7294, 0xe6e2ae62, 0xfc441870, 0x95e1b0b6,
    0x0445f825, 0x5a93b47f, 0x5e9cf4be, 0x84da71e7, 0x9d9582b0, 0x9bf835ef, 0x591f61e2, 0x43325985,
    0x5d2de32e, 0x8d8fbf0f, 0x95b30f38, 0x07ad5b6e, 0x4e934edf, 0x3cd4990e, 0x9053e259, 0x5c41857d,
)

_BLOCK = 1 << 16  # positions scanned per bulk step
_FEW = 1024  # candidates checked one by one (random data: 256 a block); more: next 8 bits in bulk
_SCALAR = 64  # a range this short is scanned position by position


@dataclass(frozen=True, slots=True)
class Chunker:
    """A chunker string, parsed: ``kind`` is ``"size"`` (``size`` bytes a chunk), ``"rabin"``
    or ``"buzhash"`` (chunks of ``min_size`` to ``max_size`` bytes, the last one shorter)."""

    spec: str
    kind: str
    size: int = 0
    min_size: int = 0
    avg_size: int = 0
    max_size: int = 0

    def split(
        self, pieces: Iterable[bytes | bytearray | memoryview]
    ) -> Iterator[bytes | memoryview]:
        """Cut a stream of arbitrary pieces into this chunker's chunks; nothing for no input."""
        if self.kind == "size":
            return rechunk(pieces, self.size)
        return _split(pieces, _cutter(self.kind, self.min_size, self.avg_size, self.max_size))


def parse(spec: str) -> Chunker:
    """Parse kubo's ``--chunker`` string; raise :class:`ChunkerError` with kubo's reason."""
    if spec in ("", "default"):
        return Chunker(DEFAULT, "size", size=DEFAULT_SIZE)
    if spec.startswith("size-"):
        size = _atoi(spec.split("-")[1])  # kubo reads the part after the first dash, as here
        if size <= 0:
            raise ChunkerError("chunker size must be greater than 0")
        if size > CHUNK_SIZE_LIMIT:
            raise ChunkerError(_ERR_SIZE_MAX)
        return Chunker(spec, "size", size=size)
    if spec.startswith("rabin"):
        return _parse_rabin(spec)
    if spec == "buzhash":
        return Chunker(spec, "buzhash", min_size=BUZHASH_MIN, max_size=BUZHASH_MAX)
    raise ChunkerError(f"unrecognized chunker option: {spec}")


def _parse_rabin(spec: str) -> Chunker:
    parts = spec.split("-")
    if len(parts) == 1:
        return _rabin(spec, DEFAULT_SIZE // 3, DEFAULT_SIZE, DEFAULT_SIZE + DEFAULT_SIZE // 2)
    if len(parts) == 2:
        avg = _atoi(parts[1])
        # kubo's own bound, computed as kubo does it: in float32, then truncated
        bound = _float32(_float32(float(avg)) * 1.5)
        if bound >= 2**63 or int(bound) > CHUNK_SIZE_LIMIT:
            raise ChunkerError(_ERR_SIZE_MAX)
        if avg // 3 < RABIN_WINDOW:
            # kubo accepts these, but its chunker then skips "MIN - 16" bytes before hashing,
            # a negative count that wraps around: it never cuts, and the whole file becomes one
            # leaf of any size.  ww refuses rather than make unbounded blocks.
            raise ChunkerError(f"rabin average {avg} is below 48: kubo's rabin chunker would "
                               "never cut (its minimum, AVG/3, is below its 16-byte window)")
        return _rabin(spec, avg // 3, avg, avg + avg // 2)
    if len(parts) == 4:
        sizes = []
        for part, label, ordinal in zip(parts[1:], ("min", "avg", "max"),
                                        ("first", "second", "final"), strict=True):
            sub = part.split(":")
            if len(sub) > 1 and sub[0] != label:
                raise ChunkerError(f"{ordinal} label must be {label}")
            sizes.append(_atoi(sub[-1]))
            if label == "min" and sizes[0] < RABIN_WINDOW:
                raise ChunkerError("rabin min must be greater than 16")
        low, avg, high = sizes
        if low >= avg:
            raise ChunkerError("incorrect format: rabin-min must be smaller than rabin-avg")
        if avg >= high:
            raise ChunkerError("incorrect format: rabin-avg must be smaller than rabin-max")
        if high > CHUNK_SIZE_LIMIT:
            raise ChunkerError(_ERR_SIZE_MAX)
        return _rabin(spec, low, avg, high)
    raise ChunkerError(
        "incorrect format (expected 'rabin' 'rabin-[avg]' or 'rabin-[min]-[avg]-[max]'")


def _rabin(spec: str, low: int, avg: int, high: int) -> Chunker:
    return Chunker(spec, "rabin", min_size=low, avg_size=avg, max_size=high)


def _atoi(text: str) -> int:
    """Go's ``strconv.Atoi``: an optional sign and decimal digits, within 64 bits."""
    if re.fullmatch(r"[+-]?[0-9]+", text, re.ASCII) is None:
        raise ChunkerError(f"strconv.Atoi: parsing {_go_quote(text)}: invalid syntax")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ChunkerError(f"strconv.Atoi: parsing {_go_quote(text)}: value out of range")
    return value


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _float32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def rechunk(
    chunks: Iterable[bytes | bytearray | memoryview], size: int = DEFAULT_SIZE
) -> Iterator[bytes | memoryview]:
    """Cut a stream of arbitrary pieces into ``size``-byte chunks (the last may be shorter).

    Pieces that are ``bytes``, or memoryviews of ``bytes``, are sliced without copying; mutable
    pieces are copied first so a caller reusing its buffer cannot change a chunk after the fact.
    Empty input yields nothing.
    """
    buf = bytearray()
    for piece in chunks:
        if not isinstance(piece, bytes) and not (
                isinstance(piece, memoryview) and isinstance(piece.obj, bytes)
                and piece.itemsize == 1):
            piece = bytes(piece)
        if not piece:
            continue
        view = memoryview(piece)
        if buf:
            need = size - len(buf)
            buf += view[:need]
            view = view[need:]
            if len(buf) < size:
                continue
            yield bytes(buf)
            buf = bytearray()
        while len(view) >= size:
            yield view[:size]
            view = view[size:]
        if view:
            buf += view
        del piece, view  # a piece is not kept while the next one is waited for
    if buf:
        yield bytes(buf)


# --- content-defined cutting --------------------------------------------------------------


class _Cutter:
    """Finds where a chunk ends, for a hash that is the XOR of ``terms[j][byte]`` over the
    ``window`` bytes before a position (``terms`` already masked to the bits that must be 0)."""

    def __init__(self, window: int, min_size: int, max_size: int, terms: list[list[int]]) -> None:
        self.window = window
        self.min_size = min_size
        self.max_size = max_size
        self.terms = terms
        bits = max(max(t) for t in terms).bit_length()
        # planes[q][j]: the translate table giving bits 8q..8q+7 of term j
        self.planes = [
            [bytes((t[b] >> 8 * q) & 0xFF for b in range(256)) for t in terms]
            for q in range((bits + 7) // 8)
        ]

    def cut(self, data: bytes, start: int, available: int) -> int:
        """The length of the chunk at ``data[start:]``, of which ``available`` bytes are there to
        cut from (the maximum, or all that is left at the end of the input)."""
        if available > self.max_size:
            available = self.max_size
        lo = start + self.min_size
        end = start + available
        while lo < end:
            hi = min(end, lo + _BLOCK)
            hit = self._scalar(data, lo, hi) if hi - lo <= _SCALAR else self._bulk(data, lo, hi)
            if hit is not None:
                return hit - start
            lo = hi
        return available

    def _hash(self, data: bytes, end: int) -> int:
        h = 0
        for j, term in enumerate(self.terms, end - self.window):
            h ^= term[data[j]]
        return h

    def _scalar(self, data: bytes, lo: int, hi: int) -> int | None:
        for end in range(lo, hi):
            if not self._hash(data, end):
                return end
        return None

    def _bulk(self, data: bytes, lo: int, hi: int) -> int | None:
        """The first position in [lo, hi) whose hash is zero, computed for all at once."""
        n = hi - lo
        segment = data[lo - self.window : hi - 1]  # term j of position p reads data[p - W + j]
        combined = 0
        for q, tables in enumerate(self.planes):
            plane = 0
            for j, table in enumerate(tables):
                plane ^= int.from_bytes(memoryview(segment.translate(table))[j : j + n], "little")
            combined |= plane
            zeros = combined.to_bytes(n, "little")
            candidates = zeros.count(0)
            if not candidates:
                return None
            exact = q == len(self.planes) - 1
            if exact or candidates <= _FEW:
                break
        pos = zeros.find(0)
        while pos >= 0:
            if exact or not self._hash(data, lo + pos):
                return lo + pos
            pos = zeros.find(0, pos + 1)
        return None


_CUTTERS: dict[tuple[str, int, int, int], _Cutter] = {}


def _cutter(kind: str, min_size: int, avg_size: int, max_size: int) -> _Cutter:
    key = (kind, min_size, avg_size, max_size)
    cutter = _CUTTERS.get(key)
    if cutter is None:
        if kind == "rabin":
            mask = (1 << (avg_size.bit_length() - 1)) - 1  # kubo: 2^floor(log2(AVG)) - 1
            terms = [[_pol_mod(b << 8 * (RABIN_WINDOW - 1 - j), RABIN_POLYNOMIAL) & mask
                      for b in range(256)] for j in range(RABIN_WINDOW)]
            cutter = _Cutter(RABIN_WINDOW, min_size, max_size, terms)
        else:
            mask = (1 << BUZHASH_BITS) - 1
            terms = [[_rotl32(_BUZHASH_TABLE[b], BUZHASH_WINDOW - 1 - k) & mask
                      for b in range(256)] for k in range(BUZHASH_WINDOW)]
            cutter = _Cutter(BUZHASH_WINDOW, min_size, max_size, terms)
        if len(_CUTTERS) < 64:
            _CUTTERS[key] = cutter
    return cutter


def _pol_mod(x: int, polynomial: int) -> int:
    """``x`` modulo ``polynomial``, both polynomials over GF(2) written as integers."""
    degree = polynomial.bit_length()
    while x.bit_length() >= degree:
        x ^= polynomial << (x.bit_length() - degree)
    return x


def _rotl32(x: int, r: int) -> int:
    r %= 32
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def _split(
    pieces: Iterable[bytes | bytearray | memoryview], cutter: _Cutter
) -> Iterator[memoryview]:
    """Content-defined chunks of a stream; at most ``max_size`` plus one piece is held."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        if len(pending) < cutter.max_size:
            continue
        data = bytes(pending)
        start = 0
        while len(data) - start >= cutter.max_size:
            length = cutter.cut(data, start, cutter.max_size)
            yield memoryview(data)[start : start + length]
            start += length
        pending = bytearray(memoryview(data)[start:])
    data = bytes(pending)
    start = 0
    while start < len(data):
        length = cutter.cut(data, start, len(data) - start)
        yield memoryview(data)[start : start + length]
        start += length
