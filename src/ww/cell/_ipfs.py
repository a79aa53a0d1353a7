"""The typed IPFS wrapper a cell uses: ``session.ipfs``.

Large data is streamed with several calls in flight: ``add`` keeps up to ``WINDOW`` writes
outstanding, ``cat_stream`` up to ``WINDOW`` reads, which is what makes a cell's
throughput close to the host's own.  Results are the plain dataclasses of
:mod:`ww.ipfs.api` (``Entry``, ``Stat``, ``PeerInfo``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, BinaryIO

from ww.cell._session import call
from ww.core.ipfs_values import Entry, EntryType, Link, PeerInfo, Stat

CHUNK = 1024 * 1024  # bytes per write or read call
WINDOW = 8  # calls kept in flight while streaming

_TYPES = {"file": EntryType.FILE, "directory": EntryType.DIRECTORY,
          "symlink": EntryType.SYMLINK}


def _peer(raw: Any) -> PeerInfo:
    return PeerInfo(id=raw.id, addresses=list(raw.addresses), protocols=list(raw.protocols))


async def _pieces(data: Any) -> AsyncIterator[bytes]:
    """Cut bytes, a binary file, or a (sync or async) iterable of bytes into CHUNK pieces."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            yield bytes(view[i:i + CHUNK])
    elif hasattr(data, "read"):
        f: BinaryIO = data
        while piece := f.read(CHUNK):
            yield piece
    elif isinstance(data, AsyncIterable):
        async for item in data:
            for i in range(0, len(item), CHUNK):
                yield bytes(item[i:i + CHUNK])
    elif isinstance(data, Iterable):
        for item in data:
            for i in range(0, len(item), CHUNK):
                yield bytes(item[i:i + CHUNK])
    else:
        raise TypeError(f"cannot add {type(data).__name__}: give bytes, a file or an iterable")


class Ipfs:
    """The IPFS capability.  Paths are ``/ipfs/<cid>[/sub/path]`` or ``<cid>[/sub/path]``."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap

    async def add(self, data: Any, *, cid_version: int = 0, raw_leaves: bool | None = None,
                  pin: bool = True, only_hash: bool = False) -> str:
        """Add one file (bytes, a binary file object, or an iterable of bytes); its CID."""
        options = {"cidVersion": cid_version, "pin": pin, "onlyHash": only_hash,
                   "rawLeaves": {None: "default", True: "yes", False: "no"}[raw_leaves]}
        writer = (await call(self._cap.add(options))).writer
        # The host applies writes one at a time in the order sent (a stream method), so
        # WINDOW of them in flight keep the pipe full without reordering anything.
        in_flight: collections.deque[Any] = collections.deque()
        try:
            async for piece in _pieces(data):
                in_flight.append(asyncio.ensure_future(call(writer.write(piece))))
                if len(in_flight) >= WINDOW:
                    await in_flight.popleft()
            while in_flight:
                await in_flight.popleft()
        finally:
            for pending in in_flight:  # a write failed, or the caller gave up
                pending.cancel()
        return str((await call(writer.done())).cid)

    async def cat_stream(self, path: str, offset: int = 0,
                         length: int | None = None) -> AsyncIterator[bytes]:
        """Yield a file's bytes in pieces of up to 1 MiB, reading ahead WINDOW pieces."""
        reader = (await call(self._cap.cat(path, offset, -1 if length is None else length))).reader
        in_flight: collections.deque[Any] = collections.deque(
            asyncio.ensure_future(call(reader.read(CHUNK))) for _ in range(WINDOW)
        )
        try:
            while in_flight:
                data = bytes((await in_flight.popleft()).data)
                if not data:
                    # The reads still in flight answer "end of file" at once: let them, so
                    # that closing the session right after sends nothing on a closed socket.
                    await asyncio.gather(*in_flight, return_exceptions=True)
                    in_flight.clear()
                    return
                in_flight.append(asyncio.ensure_future(call(reader.read(CHUNK))))
                yield data
        finally:
            for pending in in_flight:  # the caller stopped early
                pending.cancel()

    async def cat(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """A whole file (or a range of it) as bytes."""
        return b"".join([piece async for piece in self.cat_stream(path, offset, length)])

    async def ls(self, path: str) -> list[Entry]:
        raw = (await call(self._cap.ls(path))).entries
        return [Entry(name=e.name, type=_TYPES[str(e.type)], size=e.size, cid=e.cid)
                for e in raw]

    async def stat(self, path: str) -> Stat:
        i = (await call(self._cap.stat(path))).info
        return Stat(
            cid=i.cid, type=_TYPES[str(i.type)], size=i.size, cumulative_size=i.cumulativeSize,
            links=[Link(name=x.name, size=x.size, cid=x.cid) for x in i.links],
            target=i.target if str(i.type) == "symlink" else None,
        )

    async def resolve(self, path: str) -> str:
        return str((await call(self._cap.resolve(path))).cid)

    async def pin(self, path: str, recursive: bool = True) -> None:
        await call(self._cap.pin(path, recursive))

    async def unpin(self, path: str) -> None:
        await call(self._cap.unpin(path))

    async def pins(self) -> list[str]:
        return list((await call(self._cap.pins())).cids)

    async def id(self) -> PeerInfo:
        return _peer((await call(self._cap.id())).info)

    async def connect(self, addr: str) -> None:
        await call(self._cap.connect(addr))

    async def peers(self) -> list[PeerInfo]:
        return [_peer(p) for p in (await call(self._cap.peers())).peers]

    async def attenuate(self, read_only: bool = False, roots: Iterable[str] = ()) -> Ipfs:
        """A narrower IPFS capability: read-only, and/or only the DAGs under ``roots``.

        This one is unchanged; nothing can be widened (a root outside this capability's own
        roots raises CapabilityDenied).
        """
        return Ipfs((await call(self._cap.attenuate(read_only, list(roots)))).ipfs)
