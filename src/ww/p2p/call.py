"""One `Service.call` on a remote cell, for `ww call`: one connection, one stream, one call.

A full address of an Ed25519 peer id is dialed on the native lane (:mod:`ww.p2p.lane`): no
py-libp2p host is started, nor py-libp2p imported.  A bare peer id (looked up in the DHT)
or an address the lane cannot take starts a throw-away py-libp2p node (:class:`_CallNode`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import TYPE_CHECKING

import capnp

from ww.core.addrs import P2PError
from ww.core.bridge import run_capnp, wait_future
from ww.core.identity import Identity, PrivateKey

if TYPE_CHECKING:
    from ww.p2p.host import Node


def call_service(
    addr: str, method: str, args: list[str], timeout: float, bootstrap: list[str] | None = None
) -> str:
    """``Service.call(method, args)`` on the export at ``addr``; raises P2PError.  ``addr``
    may be a bare peer id when ``bootstrap`` names DHT peers: its address is then looked up
    in kubo's LAN DHT (``FIND_NODE``)."""
    # A fresh identity: `ww call` is a client, and may run beside a `ww run` of this $WW_HOME.
    node = _CallNode(Identity.from_private_key(PrivateKey.generate()))
    try:
        if "/" not in addr:
            addr = _find(node.started(), addr, bootstrap or [], timeout)
        return run_capnp(_call(node, addr, method, args, timeout))
    finally:
        node.stop()


class _CallNode:
    """What :class:`ww.p2p.protocol.Dialer` asks of a node, for `ww call`: the identity (a
    lane dial needs nothing else), and the py-libp2p node, started at its first use."""

    dial_policy = None  # `ww call` dials what the operator typed

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self._node: Node | None = None
        self._lock = threading.Lock()

    def started(self) -> Node:
        """The py-libp2p node, started (blocks while it starts)."""
        with self._lock:
            if self._node is None:
                from ww.p2p.host import Node

                self._node = Node(self.identity, listen=[])
            node = self._node
        node.start()  # (idempotent: a second caller waits for the same start)
        return node

    def stop(self) -> None:
        with self._lock:
            node = self._node
        if node is not None:
            node.stop()


def _find(node: Node, peer_id: str, bootstrap: list[str], timeout: float) -> str:
    """``/ip4/.../tcp/.../p2p/<peer_id>``: an address of ``peer_id`` the DHT names."""
    import concurrent.futures

    from ww.p2p.routing import DualDht

    try:
        addrs = node.submit(DualDht(node, bootstrap).find_peer, peer_id).result(timeout)
    except concurrent.futures.TimeoutError:
        raise P2PError(f"p2p: {peer_id}: not found in the DHT within {timeout:g} s") from None
    if not addrs:
        raise P2PError(f"p2p: {peer_id}: the DHT knows no address of it") from None
    return f"{addrs[0]}/p2p/{peer_id}"


async def _call(node: _CallNode, addr: str, method: str, args: list[str], timeout: float) -> str:
    from ww.core.foreign import kj_reason
    from ww.p2p.protocol import Dialer
    from ww.schema import load

    class CallDialer(Dialer):
        async def _open_py(self, addr: str) -> socket.socket:
            started = await asyncio.to_thread(node.started)
            return await wait_future(started.open(addr))

    dialer = CallDialer(node, timeout=timeout)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(timeout):
            service = (await dialer.dial(addr)).cast_as(load("cell").Service)
            try:
                return str((await service.call(method, args)).result)
            except capnp.KjException as e:
                raise P2PError(f"remote error: {kj_reason(e)}") from None
    except TimeoutError:
        raise P2PError(f"p2p: {addr}: no answer within {timeout:g} s") from None
    finally:
        dialer.close_all()
