"""The p2p capability, from the cell's side: export yourself, dial other cells.

::

    class Greeter(ww.cell.Service.Server):        # the generic interface `ww call` speaks
        async def call(self, method, args, **kwargs):
            return "hello " + " ".join(args)

    async with ww.cell.connect() as session:
        await session.p2p.export(Greeter())       # served on /ww/0.1.0 while we run
        peer_id, addrs = await session.p2p.id()
        remote = await session.p2p.dial_service(addr)   # another cell's Service
        print(await remote.call("greet", "you"))
        raw = await session.p2p.dial(addr)        # any interface: raw.cast_as(MySchema.Api)
"""

from __future__ import annotations

import asyncio
from typing import Any

from ww.cell._errors import CellError
from ww.schema import load

_cell = load("cell")

Service = _cell.Service
"""The generic interface ``Service.call(method, args) -> result`` (subclass ``Service.Server``)."""


async def _call(promise: Any) -> Any:
    from ww.cell._session import call

    return await call(promise)


class P2P:
    """This cell on the libp2p network (``ww run --with-p2p``)."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap

    async def export(self, service: Any) -> None:
        """Serve ``service`` (a capability server or client) to remote peers; ``None``
        withdraws it.  Keep the cell running (and its event loop turning) to serve it."""
        await _call(self._cap.export(service))

    async def id(self) -> tuple[str, list[str]]:
        """This host's peer id and the addresses remote peers dial to reach this cell."""
        result = await _call(self._cap.id())
        return str(result.peerId), list(result.addrs)

    async def dial(self, addr: str, interface: Any = None) -> Any:
        """The capability the cell at ``addr`` exports, cast to ``interface`` if given.

        ``addr`` is ``/ip4/<address>/tcp/<port>/p2p/<peer id>``, or the peer id of a peer
        the host is connected to.  Failures raise RemoteError with a one-line reason.
        """
        result = await _call(self._cap.dial(addr))
        return result.service.as_interface(interface or _cell.Service)

    async def dial_service(self, addr: str) -> RemoteService:
        """The remote cell's export as the generic `Service` (what `ww call` uses)."""
        return RemoteService(await self.dial(addr, _cell.Service))

    async def serve(self, seconds: float | None = None) -> None:
        """Keep serving the export: wait ``seconds``, or forever."""
        if seconds is None:
            await asyncio.Event().wait()
            return
        await asyncio.sleep(seconds)


class RemoteService:
    """A remote cell's `Service`."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap

    async def call(self, method: str, *args: str) -> str:
        if not all(isinstance(a, str) for a in args):
            raise CellError("Service.call arguments are text")
        return str((await _call(self._cap.call(method, list(args)))).result)
