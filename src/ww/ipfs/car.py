"""CAR v1 (content-addressable archives): ``varint(len) header``, then ``varint(len) CID
block`` sections.  The header is dag-cbor ``{"roots": [CID, ...], "version": 1}``.

The reader trusts nothing: lengths are bounded, every CID must parse, every block must hash
to its CID, and truncation anywhere is an :class:`InvalidCarError` naming the byte offset.
It streams, so a caller can stage blocks and commit only once the whole archive checked out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from ww.core import multihash, varint
from ww.core.cid import CID, CidError

from . import _dagcbor
from .api import CorruptBlockError
from .blockstore import MAX_BLOCK_SIZE

__all__ = ["InvalidCarError", "write_header", "write_block", "write_car", "CarReader"]

_MAX_HEADER = 1 << 20


class InvalidCarError(CorruptBlockError):
    """The stream is not a valid CAR v1 (truncated, malformed or with a corrupt block)."""


def write_header(out: BinaryIO, roots: list[CID]) -> int:
    """Write the header; returns the bytes written."""
    header = _dagcbor.encode({"roots": list(roots), "version": 1})
    framed = varint.encode(len(header)) + header
    out.write(framed)
    return len(framed)


def write_block(out: BinaryIO, cid: CID, block: bytes) -> int:
    """Write one section; returns the bytes written."""
    raw_cid = bytes(cid)
    length = varint.encode(len(raw_cid) + len(block))
    out.write(length)
    out.write(raw_cid)
    out.write(block)
    return len(length) + len(raw_cid) + len(block)


def write_car(out: BinaryIO, roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> None:
    write_header(out, roots)
    for cid, block in blocks:
        write_block(out, cid, block)


class CarReader:
    """Parse a CAR v1 from a binary stream: :attr:`roots` at once, then :meth:`blocks`."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._offset = 0
        length = self._read_varint(allow_eof=False)
        assert length is not None
        if length == 0 or length > _MAX_HEADER:
            raise InvalidCarError(f"invalid CAR header length {length}")
        try:
            header = _dagcbor.decode(self._read_exact(length, "header"))
        except _dagcbor.DagCborError as err:
            raise InvalidCarError(f"invalid CAR header: {err}") from None
        if not isinstance(header, dict) or header.get("version") != 1:
            version = header.get("version") if isinstance(header, dict) else None
            raise InvalidCarError(f"not a CAR v1 file (header version {version!r})")
        roots = header.get("roots")
        if set(header) != {"roots", "version"} or not isinstance(roots, list) or not roots:
            raise InvalidCarError("a CAR v1 header must list at least one root and nothing else")
        if not all(isinstance(r, CID) for r in roots):
            raise InvalidCarError("CAR roots must be CIDs")
        self.roots: list[CID] = roots

    @property
    def offset(self) -> int:
        """The bytes of the archive read so far."""
        return self._offset

    def blocks(self) -> Iterator[tuple[CID, bytes]]:
        """Yield every ``(cid, block)``, each verified against its CID."""
        while True:
            start = self._offset
            length = self._read_varint(allow_eof=True)
            if length is None:
                return
            if length == 0 or length > MAX_BLOCK_SIZE + 64:
                raise InvalidCarError(f"invalid section length {length} at byte {start}")
            section = self._read_exact(length, "block")
            try:
                cid, pos = CID.decode(section)
            except CidError as err:
                raise InvalidCarError(
                    f"invalid CID in the section at byte {start}: {err}"
                ) from None
            block = section[pos:]
            if not multihash.verify(cid.multihash, block):
                raise InvalidCarError(f"block {cid} at byte {start} does not match its CID")
            yield cid, block

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._src.read(n)
        while len(data) < n:
            more = self._src.read(n - len(data))
            if not more:
                raise InvalidCarError(f"truncated CAR: {what} at byte {self._offset} is cut short")
            data += more
        self._offset += n
        return data

    def _read_varint(self, allow_eof: bool) -> int | None:
        raw = bytearray()
        while True:
            b = self._src.read(1)
            if not b:
                if not raw and allow_eof:
                    return None
                raise InvalidCarError(f"truncated CAR: varint at byte {self._offset} is cut short")
            raw += b
            if not b[0] & 0x80:
                break
            if len(raw) >= varint.MAX_MULTIFORMATS_LEN:
                raise InvalidCarError(f"invalid varint at byte {self._offset}")
        try:
            value, _ = varint.decode(bytes(raw))
        except varint.VarintError as err:
            raise InvalidCarError(f"invalid varint at byte {self._offset}: {err}") from None
        self._offset += len(raw)
        return value
