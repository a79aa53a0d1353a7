"""A plain synchronous face of the SDK, for scripts.

Each call runs the asynchronous SDK on a private event loop until it completes.  Objects
returned by the asynchronous wrappers are wrapped again, so ``session.console.println``
and ``session.ipfs.cat(...)`` read as ordinary blocking calls.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import capnp

from ww.cell._errors import AuthenticationFailed, CapabilityDenied, CapabilityNotGranted
from ww.cell._session import open_session


class _Blocking:
    """Proxy an async SDK object: coroutines are awaited, async iterators drained lazily."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def _wrap(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            return self._wrap(self._loop.run_until_complete(value))
        if isinstance(value, AsyncIterator):
            return self._iterate(value)
        if type(value).__module__.startswith("ww.cell."):
            return _Blocking(value, self._loop)
        return value

    def _iterate(self, it: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                item = self._loop.run_until_complete(it.__anext__())
            except StopAsyncIteration:
                return
            yield self._wrap(item)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value):
            return lambda *a, **kw: self._wrap(value(*a, **kw))
        return self._wrap(value)

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"


class SyncSession(_Blocking):
    """A logged-in session whose methods block.  Close it (or use ``with``) when done."""

    def __init__(self, sock: socket.socket | None = None, identity: Any = None) -> None:
        loop = asyncio.new_event_loop()
        self._kj = capnp.kj_loop()
        loop.run_until_complete(self._kj.__aenter__())
        try:
            client, session = loop.run_until_complete(open_session(sock, identity))
        except AuthenticationFailed:
            # The host says why in one line and stops the cell (ww run exits 64): leave
            # quietly, without a traceback.
            raise SystemExit(64) from None
        self._client = client
        super().__init__(session, loop)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._client.close()
        self._loop.run_until_complete(self._kj.__aexit__(None, None, None))
        self._loop.close()

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()
        if isinstance(exc, CapabilityNotGranted | CapabilityDenied):
            # An uncaught "not granted" or "denied" ends the cell with the spec's status 65.
            print(f"cell: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code)


def session(sock: socket.socket | None = None, identity: Any = None) -> SyncSession:
    """Connect over fd 3 and log in, synchronously (``identity``: see ``open_session``)."""
    return SyncSession(sock, identity)
