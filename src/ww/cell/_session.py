"""Connecting to the host over fd 3, logging in, and typed capability wrappers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import capnp

from ww.cell._errors import CapabilityNotGranted, CellError, RemoteError
from ww.cell._fds import RPC_FD
from ww.schema import load

_cell = load("cell")
_rpc_fd_used = False  # fd 3 carries exactly one connection per cell


def remote_error(e: Exception) -> RemoteError:
    """Turn a Cap'n Proto exception into a RemoteError carrying the host's one-line reason."""
    text = getattr(e, "description", None) or str(e)
    text = text.split("\nstack:", 1)[0].strip()
    # KJ prefixes "remote exception: " and sometimes "file:line: failed: "; keep the reason.
    for marker in ("remote exception: ", "failed: ", "message = "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return RemoteError(text)


async def call(promise: Any) -> Any:
    """Await a capability call, raising RemoteError instead of a raw KjException."""
    try:
        return await promise
    except capnp.KjException as e:
        raise remote_error(e) from None


class Console:
    """The console capability: lines on the operator's terminal."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap

    async def println(self, line: str) -> None:
        await call(self._cap.println(line))

    async def ping(self, payload: bytes = b"") -> bytes:
        return bytes((await call(self._cap.ping(payload))).payload)


class Session:
    """The capabilities the operator granted, as returned by ``Host.login``."""

    def __init__(self, raw: Any, host: Any) -> None:
        self._raw = raw
        self._host = host
        self.granted: list[str] = list(raw.granted)

    async def relogin(self) -> Session:
        """Log in again on the same connection (a fresh session object from the host)."""
        return Session((await call(self._host.login())).session, self._host)

    def _cap(self, name: str) -> Any:
        if name not in self.granted:
            raise CapabilityNotGranted(name)
        return getattr(self._raw, name)

    @property
    def console(self) -> Console:
        return Console(self._cap("console"))

    @property
    def ipfs(self) -> Any:
        cap = self._cap("ipfs")
        from ww.cell._ipfs import Ipfs

        return Ipfs(cap)


async def open_session(sock: socket.socket | None = None) -> tuple[Any, Session]:
    """Connect over fd 3 (or ``sock``) and log in; returns (client, session)."""
    global _rpc_fd_used
    if sock is None:
        if _rpc_fd_used:
            raise CellError(
                "fd 3 was already used by an earlier connection: it carries one RPC "
                "connection per cell; keep the first session (or call relogin on it)"
            )
        try:
            sock = socket.socket(fileno=RPC_FD)
        except OSError as e:
            raise CellError(
                f"fd 3 is not an RPC socket ({e.strerror}): run the cell with 'ww run'"
            ) from None
        _rpc_fd_used = True
    stream = await capnp.AsyncIoStream.create_connection(sock=sock)
    client = capnp.TwoPartyClient(stream)
    host = client.bootstrap().cast_as(_cell.Host)
    result = await call(host.login())
    return client, Session(result.session, host)


@contextlib.asynccontextmanager
async def connect(sock: socket.socket | None = None) -> AsyncIterator[Session]:
    """``async with connect() as session``: fd 3, login, and the KJ event loop around it."""
    async with capnp.kj_loop():
        client, session = await open_session(sock)
        try:
            yield session
        finally:
            client.close()
