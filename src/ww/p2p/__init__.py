"""Cells as services on the libp2p network: the host, its splice to Cap'n Proto, `/ww/0.1.0`.

Where a byte from a remote peer goes: the libp2p host (:mod:`ww.p2p.host`, TCP + Noise +
Yamux, on a trio thread of its own) accepts a `/ww/0.1.0` stream and splices it to one end of
a socketpair (:mod:`ww.p2p.splice`); the other end is served as a Cap'n Proto connection on
asyncio (:mod:`ww.p2p.protocol`), whose bootstrap hands out the capability the cell exported
over fd 3 and nothing else.  The cell's `p2p` capability (:mod:`ww.caps.p2p`) is the only way
in or out.  The same host serves Bitswap when the run uses the embedded IPFS node
(:mod:`ww.ipfs.net`, which is handed the host): one host, one node key, per `ww run`.
docs/p2p.md tells the whole story.

This package's top level imports neither libp2p nor trio, so command-line checks are cheap;
only :mod:`ww.p2p.host` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ww.core.addrs import (
    DEFAULT_LISTEN,
    PROTOCOL_ID,
    P2PError,
    check_dial_addr,
    check_join_addr,
    check_listen_addr,
)

if TYPE_CHECKING:
    from ww.core.identity import Identity
    from ww.ipfs.net import NewHost
    from ww.p2p.dial_policy import DialPolicy
    from ww.p2p.host import Node

__all__ = [
    "DEFAULT_LISTEN",
    "PROTOCOL_ID",
    "P2PError",
    "check_dial_addr",
    "check_join_addr",
    "check_listen_addr",
    "host_for_ipfs",
]


def host_for_ipfs(dial_policy: DialPolicy | None = None) -> NewHost:
    """How the embedded IPFS node makes a libp2p host of its own when it goes on the network
    (``EmbeddedNode(new_host=...)``): listening where it says, serving no `/ww/0.1.0`, quiet,
    dialing where ``dial_policy`` allows (None: wherever it is told).  libp2p is imported
    only when the node makes its host."""

    def new_host(identity: Identity, listen: list[str]) -> Node:
        from ww.p2p.host import Node

        return Node(identity, listen=listen, serve_ww=False, announce=False,
                    warn=lambda message: None, dial_policy=dial_policy)

    return new_host
