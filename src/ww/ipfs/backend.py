"""Choosing the IPFS backend: the embedded node, or a kubo node's RPC API (``--ipfs``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ww.ipfs.api import CoreAPI

if TYPE_CHECKING:
    from ww.core.identity import Identity
    from ww.ipfs.net import Host, NewHost, NewRouter


def open_backend(api: str | None = None, *, check: bool = False, peers: Iterable[str] = (),
                 host: Host | None = None, new_host: NewHost | None = None,
                 identity: Identity | None = None, router: NewRouter | None = None
                 ) -> CoreAPI:
    """The embedded node in ``$WW_HOME`` when ``api`` is empty, else a kubo RPC client.

    With ``check``, a kubo node is asked for its identity first, so that an unreachable
    address fails now with one BackendUnavailableError line instead of on first use.
    ``peers`` (``--peer``) and ``host`` (`ww run`'s libp2p host, a ``ww.p2p.host.Node``) are
    the embedded node's, as is ``new_host`` (how it makes a host of its own, carrying where
    that may dial; see :class:`ww.ipfs.node.EmbeddedNode`) and ``identity`` (its key instead
    of the repository's, `ww run --node-key`) and ``router`` (how it finds providers,
    `--routing dht`); a kubo node has its own.
    """
    if not api:
        from ww.ipfs.node import EmbeddedNode

        return EmbeddedNode(peers=peers, host=host, new_host=new_host, identity=identity,
                            router=router)
    from ww.ipfs.kubo import KuboClient

    client = KuboClient(api)
    if check:
        client.id()
    return client
