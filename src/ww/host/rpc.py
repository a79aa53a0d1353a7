"""The host's side of fd 3: the bootstrap `Host` capability and the session it hands out.

This module imports pycapnp, so the supervisor only imports it once the cell has sent
its first bytes on fd 3.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import capnp

from ww.errors import WwError
from ww.ipfs.api import IpfsError
from ww.schema import load

_cell = load("cell")

# Errors a capability raises on purpose: their message is one line meant for the cell.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    WwError, IpfsError, ValueError, PermissionError, NotImplementedError,
)


class _OneLineErrors:
    """Stands in for the ``traceback`` module inside pycapnp.

    pycapnp sends a failing server method's whole Python traceback to the caller, which
    would show the cell the host's source paths and code.  The cell gets one line instead:
    the message of an expected error, or a generic line for a bug, whose traceback goes to
    the host's stderr only (with --debug).
    """

    debug = False

    @classmethod
    def format_exception(cls, etype: type, exc: BaseException, tb: Any) -> list[str]:
        if isinstance(exc, capnp.KjException):
            return [exc.description]
        if isinstance(exc, EXPECTED_ERRORS):
            return [str(exc).splitlines()[0] if str(exc) else etype.__name__]
        if cls.debug:
            sys.stderr.write("".join(traceback.format_exception(etype, exc, tb)))
        return [f"internal error in the host ({etype.__name__})"]


capnp.lib.capnp._traceback = _OneLineErrors  # type: ignore[attr-defined]


def report_internal_errors(debug: bool) -> None:
    """With --debug, a capability's unexpected error prints its traceback on the host."""
    _OneLineErrors.debug = debug

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
