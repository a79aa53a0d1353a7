"""Run inside a network namespace of the test's own (tests/p2p/kubo_dht.py, no kubo node): a
peer reached over the internet that claims a LAN address, and a ww host with kubo's dual DHT
asking it; prints one JSON line of what happened.

The stand-in of tests/p2p/dht_dual.py: 127.0.2.0/24 stands for the public internet (the WAN
DHT's scope), the rest of the private ranges is the LAN.  The intruder listens on 127.0.2.9
(its "public" address, where the asker reaches it as a WAN bootstrap peer) and on 127.0.0.9,
which identify tells the asker as one more listen address (an internet peer can claim any
address; it owns this one only so that the claim is the ordinary identify message).  It
speaks the LAN DHT protocol and answers every query with a closer peer and a provider at
127.0.0.77, where a plain TCP listener (the "internal service") counts connections.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import multiaddr
import varint
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID

sys.path.insert(0, os.getcwd())

from tests.p2p.dht_dual import TEST_ONLY_SCOPES  # noqa: E402
from ww.core.cid import CID  # noqa: E402
from ww.core.identity import Identity, PrivateKey  # noqa: E402
from ww.p2p.host import Node  # noqa: E402
from ww.p2p.routing import LAN_PROTOCOL, DualDht  # noqa: E402

BOUND = 120.0  # only stops a hang
CID_ = CID.parse("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
INTERNAL = "127.0.0.77"


def _ma(text: str) -> bytes:
    return multiaddr.Multiaddr(text).to_bytes()


def main() -> dict:
    service = socket.socket()
    service.bind((INTERNAL, 0))
    service.listen(16)
    port = service.getsockname()[1]
    probed: list[str] = []

    def accept() -> None:
        while True:
            try:
                conn, addr = service.accept()
            except OSError:
                return
            probed.append(addr[0])
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    fake = ID.from_base58(PrivateKey.generate().peer_id).to_bytes()

    async def intruder(stream: object) -> None:
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        request = Message()
        request.ParseFromString(await read_varint_prefixed_bytes_limited(
            stream, 1 << 16))  # type: ignore[arg-type]
        reply = Message(type=request.type, key=request.key)
        reply.closerPeers.add(id=fake, addrs=[_ma(f"/ip4/{INTERNAL}/tcp/{port}")])
        reply.providerPeers.add(id=fake, addrs=[_ma(f"/ip4/{INTERNAL}/tcp/{port}")])
        data = reply.SerializeToString()
        await stream.write(varint.encode(len(data)) + data)  # type: ignore[attr-defined]
        await stream.close()  # type: ignore[attr-defined]

    intruder_node = Node(Identity.from_private_key(PrivateKey.generate()),
                         listen=["/ip4/127.0.2.9/tcp/0", "/ip4/127.0.0.9/tcp/0"],
                         serve_ww=False, announce=False, handlers={LAN_PROTOCOL: intruder},
                         warn=lambda message: None)
    intruder_node.start()
    wan_addr = next(a for a in intruder_node.addrs if "/127.0.2.9/" in a)
    asker = Node(Identity.from_private_key(PrivateKey.generate()),
                 listen=["/ip4/127.0.0.4/tcp/0"], serve_ww=False, announce=False,
                 warn=lambda message: None)
    dht = DualDht(asker, [wan_addr], scopes=TEST_ONLY_SCOPES)
    asker.start()
    out: dict = {}
    try:
        intruder_id = ID.from_base58(intruder_node.peer_id)

        async def connect() -> None:
            from libp2p.peer.peerinfo import info_from_p2p_addr

            await asker.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(wan_addr)))

        asker.submit(connect).result(BOUND)
        store = asker.host.get_peerstore()
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:  # identify: its protocols and addresses
            try:
                if LAN_PROTOCOL in [str(p) for p in store.get_protocols(intruder_id)] and \
                        any("/127.0.0.9/" in str(a) for a in store.addrs(intruder_id)):
                    break
            except Exception:
                pass
            time.sleep(0.02)
        conns = asker.host.get_network().get_connections(intruder_id)
        out["connected_over"] = [str(c.muxed_conn.secured_conn.get_remote_address()[0])
                                 if hasattr(c.muxed_conn, "secured_conn") else "?"
                                 for c in conns]
        found = asker.submit(dht.find_providers, CID_, 20).result(BOUND)
        out["providers"] = [{"id": p.id, "addrs": p.addresses} for p in found]
        out["lan_stats"] = dict(dht.lan.stats)
        out["lan_table"] = len(dht.lan.table) if hasattr(dht.lan.table, "__len__") else None
        out["probed"] = list(probed)
    finally:
        asker.stop()
        intruder_node.stop()
        service.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
