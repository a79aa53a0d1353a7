"""Many libp2p identities on one trio thread, each a real connection to one host.

A peer id costs one new ed25519 key, so an attacker has as many as it likes.  Each
:func:`connect` dials the host over TCP, runs the Noise handshake with a fresh key and
negotiates Yamux, as a py-libp2p or kubo peer would, without a host of its own for each
(a host per identity would be slow to build hundreds of times on a busy machine).
"""

from __future__ import annotations

from typing import Any

import multiaddr
import trio

from ww.p2p.admission import MAX_PER_IP, MAX_PER_LOOPBACK


def filling(n: int, taken: int = 0) -> list[str]:
    """Local addresses for ``n`` connections to one host, in turn, that admission lets in
    up to its MAX_INBOUND without trimming any: 127.0.0.1 up to MAX_PER_LOOPBACK (``taken``
    of them held there already), then MAX_PER_IP from each of 127.0.0.2, 127.0.0.3, ...
    (127.0.0.1 alone no longer fills a host: it holds half)."""
    local = max(0, min(n, MAX_PER_LOOPBACK - taken))
    return ["127.0.0.1"] * local + [f"127.0.0.{2 + i // MAX_PER_IP}" for i in range(n - local)]


async def connect(addr: str, nursery: trio.Nursery, source: str | None = None) -> Any:
    """A new identity's Yamux connection to the host at ``addr`` (.../p2p/<id>), from the
    local address ``source`` if given; its reader runs in ``nursery``.  Raises if the host
    refuses or hangs up during the handshake."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.peer.id import ID
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from libp2p.transport.tcp.tcp import TCP
    from libp2p.transport.upgrader import TransportUpgrader

    keys = create_new_key_pair()
    upgrader = TransportUpgrader({NOISE: Noise(keys, noise_privkey=new_x25519().private_key)},
                                 {YAMUX: Yamux})
    maddr = multiaddr.Multiaddr(addr)
    peer = ID.from_base58(maddr.value_for_protocol("p2p"))
    where = maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))
    raw = await (TCP().dial(where) if source is None else
                 TCP().dial_with_source(where, (source, 0)))
    try:
        secured = await upgrader.upgrade_security(raw, True, peer)
        muxed = await upgrader.upgrade_connection(secured, peer)
    except BaseException:
        await raw.close()
        raise
    nursery.start_soon(muxed.start)
    await muxed.event_started.wait()
    return muxed
