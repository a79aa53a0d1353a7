"""The asynchronous face of a :class:`~ww.ipfs.api.CoreAPI` backend, for asyncio embedders.

The backends are synchronous: their calls block (on disk, on a kubo node, on Bitswap peers)
and stop early when the :class:`~ww.ipfs.api.CancelToken` they run under is cancelled.
:class:`AsyncCoreAPI` runs each call in a worker thread under a token of its own, and
cancelling the asyncio task that awaits it cancels the token: the task's ``CancelledError``
is raised once the work has stopped (a kubo request's connection is shut down, a Bitswap
wait is woken), so nothing keeps running for a caller that left::

    from ww.ipfs import AsyncCoreAPI, EmbeddedNode

    async with AsyncCoreAPI(EmbeddedNode("/var/lib/app/ipfs")) as ipfs:
        cid = await ipfs.add_stream([b"hello\\n"])
        async for piece in ipfs.cat(cid):
            ...
        await asyncio.wait_for(ipfs.stat(cid), 5)   # cancelled work stops

The method names, arguments and results are the CoreAPI's; ``cat`` is an async iterator.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from ww.core import bridge

from .api import AddOptions, CancelToken, CoreAPI, Entry, PeerInfo, RepoStat, Stat, cancellable

__all__ = ["AsyncCoreAPI"]

T = TypeVar("T")

_DEFAULT_ADD = AddOptions()


class AsyncCoreAPI:
    """A CoreAPI backend (``EmbeddedNode``, ``KuboClient``) as coroutines.

    ``executor`` runs the blocking calls (default: the event loop's default executor).  The
    backend is shared, not owned, unless the ``async with`` form or :meth:`close` is used,
    which close it.
    """

    def __init__(
        self, backend: CoreAPI, *, executor: concurrent.futures.Executor | None = None
    ) -> None:
        self.backend = backend
        self._executor = executor

    def __repr__(self) -> str:
        return f"AsyncCoreAPI({self.backend!r})"

    async def _run(self, token: CancelToken, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread under ``token``; a cancelled task cancels the token
        and waits for the work to stop before it raises ``CancelledError``."""

        def work() -> T:
            with cancellable(token):
                return fn()

        return await bridge.in_executor(self._executor, work, on_cancel=token.cancel)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await self._run(CancelToken(), fn)

    # writing

    async def add_stream(self, chunks: Iterable[bytes], options: AddOptions = _DEFAULT_ADD) -> str:
        """Add one file's bytes (the iterable is consumed in the worker thread); its CID."""
        return await self._call(lambda: self.backend.add_stream(chunks, options))

    async def add_path(self, path: Path, options: AddOptions = _DEFAULT_ADD) -> str:
        return await self._call(lambda: self.backend.add_path(path, options))

    # reading

    async def cat(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """A file's bytes in pieces; each piece is read in a worker thread.  Errors (a
        missing path, a directory) raise at the first step; leaving the loop early (or
        cancelling the task) stops the read."""
        token = CancelToken()
        pieces: Iterator[bytes] = await self._run(
            token, lambda: self.backend.cat(path, offset, length)
        )
        try:
            while (piece := await self._run(token, lambda: next(pieces, None))) is not None:
                yield piece
        finally:
            token.cancel()
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    async def ls(self, path: str) -> list[Entry]:
        return await self._call(lambda: self.backend.ls(path))

    async def stat(self, path: str, links: bool = True) -> Stat:
        return await self._call(lambda: self.backend.stat(path, links))

    async def resolve(self, path: str) -> str:
        return await self._call(lambda: self.backend.resolve(path))

    async def get(self, path: str, dest: Path, executable: bool = False,
                  force: bool | None = None) -> None:
        await self._call(lambda: self.backend.get(path, dest, executable, force))

    # pins

    async def pin(self, path: str, recursive: bool = True) -> None:
        await self._call(lambda: self.backend.pin(path, recursive))

    async def unpin(self, path: str) -> None:
        await self._call(lambda: self.backend.unpin(path))

    async def pins(self) -> list[str]:
        return await self._call(self.backend.pins)

    async def pin_ls(self, type: str = "all") -> dict[str, str]:
        return await self._call(lambda: self.backend.pin_ls(type))

    # the repository

    async def repo_stat(self) -> RepoStat:
        return await self._call(self.backend.repo_stat)

    # CAR interchange

    async def export_car(self, roots: list[str], out: BinaryIO) -> None:
        await self._call(lambda: self.backend.export_car(roots, out))

    async def import_car(self, src: BinaryIO) -> list[str]:
        return await self._call(lambda: self.backend.import_car(src))

    # network

    async def id(self) -> PeerInfo:
        return await self._call(self.backend.id)

    async def peers(self) -> list[PeerInfo]:
        return await self._call(self.backend.peers)

    async def connect(self, addr: str) -> None:
        await self._call(lambda: self.backend.connect(addr))

    async def close(self) -> None:
        """Close the backend."""
        await self._call(self.backend.close)

    async def __aenter__(self) -> AsyncCoreAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
