"""The p2p capability: a cell exports itself on `/ww/0.1.0` and dials other cells.

A thin adapter from `P2P` (cell.capnp) onto :class:`ww.p2p.host.Node` and
:mod:`ww.p2p.protocol`.  One server per host: the export it holds is the cell's, and is
dropped (:meth:`P2PServer.end`) when the cell hangs up fd 3.  A dial is held to the run's
dial policy (:mod:`ww.p2p.dial_policy`, given by :mod:`ww.app.build`) before anything is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ww.core.addrs import check_dial_addr
from ww.host.denied import NOBODY, Caller
from ww.p2p.dial_policy import STRICT, DialPolicy
from ww.p2p.protocol import Dialer, Exports, hold
from ww.schema import load

if TYPE_CHECKING:
    from ww.p2p.host import Node

_cell = load("cell")


class P2PServer(_cell.P2P.Server):  # type: ignore[name-defined,misc]
    """`P2P` over a running :class:`ww.p2p.host.Node`."""

    def __init__(self, node: Node, caller: Caller = NOBODY,
                 dial_policy: DialPolicy = STRICT) -> None:
        self._node = node
        self._caller = caller
        self.dial_policy = dial_policy  # where `dial` may make the host connect
        self._exports = Exports()
        self._dialer = Dialer(node)
        node.when_session_ends(self.end)

    async def export_context(self, context: Any) -> None:
        if context.params._has("service"):
            self._exports.set(hold(context.params.service))
            self._node.serve(self._exports.accept)
        else:
            self._node.serve(None)
            self._exports.set(None)

    async def dial(self, addr: str, _context: Any, **kwargs: Any) -> None:
        addr = check_dial_addr(addr)
        if reason := self.dial_policy.refusal(addr):  # before anything touches the network
            raise self._caller.deny("p2p", "dial", reason)
        _context.results.service = await self._dialer.dial(addr)

    async def id(self, _context: Any, **kwargs: Any) -> None:
        _context.results.peerId = self._node.peer_id
        _context.results.addrs = list(self._node.addrs)

    def end(self) -> None:
        """The cell hung up fd 3 or exited: withdraw its export, close what it dialed."""
        self._node.serve(None)
        self._exports.current = None
        self._exports.close_all()
        self._dialer.close_all()
