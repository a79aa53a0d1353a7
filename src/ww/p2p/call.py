"""One `Service.call` on a remote cell, for `ww call`: a throw-away node, one stream, one call."""

from __future__ import annotations

import asyncio

import capnp

from ww.core.addrs import P2PError
from ww.core.bridge import run_capnp
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node


def call_service(addr: str, method: str, args: list[str], timeout: float,
                 bootstrap: list[str] | None = None) -> str:
    """``Service.call(method, args)`` on the export at ``addr``; raises P2PError.  ``addr``
    may be a bare peer id when ``bootstrap`` names DHT peers: its address is then looked up
    in kubo's LAN DHT (``FIND_NODE``)."""
    # A fresh identity: `ww call` is a client, and may run beside a `ww run` of this $WW_HOME.
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[])
    node.start()
    try:
        if "/" not in addr:
            addr = _find(node, addr, bootstrap or [], timeout)
        return run_capnp(_call(node, addr, method, args, timeout))
    finally:
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


async def _call(node: Node, addr: str, method: str, args: list[str], timeout: float) -> str:
    from ww.core.foreign import kj_reason
    from ww.p2p.protocol import Dialer
    from ww.schema import load

    dialer = Dialer(node)
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
