"""The p2p capability: a cell exports itself on `/ww/0.1.0` and dials other cells.

A thin adapter from `P2P` (cell.capnp) onto :class:`ww.p2p.host.Node` and
:mod:`ww.p2p.protocol`.  One server per identity the cell logs in with (sharing its DHT
lookups, :func:`lookup_slots`): the export it holds is the cell's, and is
dropped (:meth:`P2PServer.end`) when the cell hangs up fd 3.  A dial is held to the run's
dial policy (:mod:`ww.p2p.dial_policy`, given by :mod:`ww.app.build`) before anything is sent.
A bare peer id the host is not connected to is looked up in the host's DHT, if it has one
(`--bootstrap`, `--routing`): the first address found that the policy allows is dialed.
A cell's lookups run :data:`MAX_LOOKUPS` at a time, the others wait (a cell may have
thousands of calls in flight: each would be a lookup of up to 60 peers).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ww.core.addrs import check_dial_addr, peer_of
from ww.core.errors import P2PError
from ww.host.denied import NOBODY, Caller
from ww.p2p.dial_policy import STRICT, DialPolicy
from ww.p2p.protocol import Dialer, Exports, hold
from ww.schema import load

if TYPE_CHECKING:
    from ww.p2p.host import Node

_cell = load("cell")
MAX_LOOKUPS = 4  # DHT lookups one cell's dials run at a time; the others wait


def lookup_slots() -> asyncio.Semaphore:
    """A cell's DHT lookups, :data:`MAX_LOOKUPS` at a time."""
    return asyncio.Semaphore(MAX_LOOKUPS)


class P2PServer(_cell.P2P.Server):  # type: ignore[name-defined,misc]
    """`P2P` over a running :class:`ww.p2p.host.Node`."""

    def __init__(self, node: Node, caller: Caller = NOBODY,
                 dial_policy: DialPolicy = STRICT, dht: Any = None,
                 lookups: asyncio.Semaphore | None = None) -> None:
        """``dht``: the host's :class:`ww.p2p.routing.DualDht`, where a peer id is looked up.
        ``lookups``: the cell's (:func:`lookup_slots`), shared by the servers of all its
        logins, so that a cell logging in with many identities still runs a few at once."""
        self._node = node
        self._dht = dht
        self._lookups = lookups if lookups is not None else lookup_slots()
        self._caller = caller
        self.dial_policy = dial_policy  # where `dial` may make the host connect
        self._exports = Exports()
        self._dialer = Dialer(node)
        node.when_session_ends(self.end)

    async def export_context(self, context: Any) -> None:
        if context.params._has("service"):
            self._exports.set(hold(context.params.service))
            self._node.serve(self._exports.accept)
            self._node.serve_lane(self._exports.lane_acceptor(
                self._node.identity.private_key.seed, self._node.rest()))
        else:
            self._node.serve_lane(None)
            self._node.serve(None)
            self._exports.set(None)

    async def dial(self, addr: str, _context: Any, **kwargs: Any) -> None:
        addr = check_dial_addr(addr)
        if addr.startswith("/p2p/") and self._dht is not None:
            addr = await self._locate(peer_of(addr))
        if reason := self.dial_policy.refusal(addr):  # before anything touches the network
            raise self._caller.deny("p2p", "dial", reason)
        _context.results.service = await self._dialer.dial(addr)

    async def _locate(self, peer: str) -> str:
        """``/p2p/PEER`` if the host is connected to it, else its first address from the DHT
        that the dial policy allows (or the first found, to be refused by name); a
        :class:`P2PError` if the DHT knows none."""
        dht = self._dht

        async def find() -> list[str] | None:
            from libp2p.peer.id import ID

            if self._node.host.get_network().get_connections(ID.from_base58(peer)):
                return None
            return await dht.find_peer(peer)  # type: ignore[no-any-return]

        async with self._lookups:
            found = await asyncio.wrap_future(self._node.submit(find))
        if found is None:
            return f"/p2p/{peer}"
        if not found:
            raise P2PError(f"p2p: dial: not connected to {peer}, and the DHT knows no address "
                           "of it")
        addrs = [f"{a}/p2p/{peer}" for a in found]
        allowed = [a for a in addrs if not self.dial_policy.refusal(a)]
        return (allowed or addrs)[0]

    async def id(self, _context: Any, **kwargs: Any) -> None:
        _context.results.peerId = self._node.peer_id
        _context.results.addrs = list(self._node.addrs)

    def end(self) -> None:
        """The cell hung up fd 3 or exited: withdraw its export, close what it dialed."""
        self._node.serve(None)
        self._node.serve_lane(None)
        self._exports.current = None
        self._exports.close_all()
        self._dialer.close_all()
