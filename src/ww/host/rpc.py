"""The host's side of fd 3: the bootstrap `Host` capability and the session it hands out.

This module imports pycapnp, so the supervisor only imports it once the cell has sent
its first bytes on fd 3.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import capnp

from ww.schema import load

_cell = load("cell")

# Capability names, in the order they are listed in Session.granted.
KNOWN_CAPABILITIES = ("console", "ipfs")


@dataclass
class Grants:
    """What the operator granted on the command line, and how to build each capability."""

    names: list[str] = field(default_factory=list)
    factories: dict[str, Callable[[], Any]] = field(default_factory=dict)


class HostServer(_cell.Host.Server):  # type: ignore[name-defined,misc]
    """The bootstrap capability: ``login`` returns a session of exactly the granted capabilities."""

    def __init__(self, grants: Grants) -> None:
        self._grants = grants
        self._made: dict[str, Any] = {}

    def _capability(self, name: str) -> Any:
        # One server object per capability per host, shared by repeated logins.
        if name not in self._made:
            self._made[name] = self._grants.factories[name]()
        return self._made[name]

    async def login(self, account: Any, _context: Any, **kwargs: Any) -> None:
        session = _context.results.session
        session.granted = list(self._grants.names)
        for name in self._grants.names:
            setattr(session, name, self._capability(name))


async def serve(sock: socket.socket, grants: Grants, until: asyncio.Future[Any]) -> None:
    """Serve `Host` on ``sock`` until ``until`` completes or the cell hangs up."""
    stream = await capnp.AsyncIoStream.create_connection(sock=sock)
    server = capnp.TwoPartyServer(stream, bootstrap=HostServer(grants))
    disconnected = asyncio.ensure_future(server.on_disconnect())
    try:
        await asyncio.wait([disconnected, until], return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
