"""Run inside the test's network namespace (tests/p2p/kubo_dht.py): a ww host asks a kubo node
with ``Routing.Type: dhtserver`` on kubo's WAN DHT protocol, ``/ipfs/kad/1.0.0``, and prints
what it got as one JSON line.

``python dht_wan_kubo.py KUBO_ADDR``.  The one stand-in: nothing here may dial a public
address, so ww's WAN DHT is built with :func:`test_only_wan_scope`, which counts loopback
as public.  kubo's side is kubo's own.  Found (kubo 0.22, go-libp2p-kad-dht 0.24.2): it
lists only ``/ipfs/lan/kad/1.0.0`` and refuses a ``/ipfs/kad/1.0.0`` stream, so the probe
stops at the PING; should a kubo serve it, the probe asks FIND_NODE, ADD_PROVIDER and
GET_PROVIDERS too."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import multiaddr

from ww.core.cid import CID, RAW
from ww.p2p.routing import WAN_PROTOCOL, Dht, _Peer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.p2p.dht_probe import BOUND, connected  # noqa: E402


def test_only_wan_scope(ip: Any) -> bool:
    """TEST ONLY: loopback stands for the public internet."""
    return bool(ip.is_loopback)


def main(kubo: str) -> dict:
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.peer.id import ID

    node, info, kad = connected(kubo)
    out: dict = {"ww": node.peer_id, "kubo_protocols": kad}
    try:
        wan = Dht(node, [kubo], WAN_PROTOCOL, scope=test_only_wan_scope)
        try:
            out["ping"] = node.submit(wan.ping, str(info.peer_id)).result(BOUND)
        except Exception as e:  # noqa: BLE001 - what fails is the finding
            out["ping"] = f"{type(e).__name__}: {e}"
            return out  # kubo does not serve its WAN DHT here: nothing more to ask
        me = node.submit(wan._rpc, _Peer(info.peer_id), Message(
            type=Message.FIND_NODE, key=info.peer_id.to_bytes())).result(BOUND)
        out["find_node_self"] = [{"id": ID(p.id).to_base58(),
                                  "addrs": [str(multiaddr.Multiaddr(a)) for a in p.addrs]}
                                 for p in me.closerPeers]
        cid = CID.v1(RAW, b"\x12\x20" + hashlib.sha256(b"ww on kubo's WAN DHT").digest())
        out["provide_told"] = node.submit(wan.provide, cid).result(BOUND)
        deadline = time.monotonic() + BOUND  # ADD_PROVIDER has no reply: poll, bounded
        while time.monotonic() < deadline:
            answer = node.submit(wan._rpc, _Peer(info.peer_id), Message(
                type=Message.GET_PROVIDERS, key=cid.multihash)).result(BOUND)
            out["kubo_lists"] = [{"id": ID(p.id).to_base58(),
                                  "addrs": [str(multiaddr.Multiaddr(a)) for a in p.addrs]}
                                 for p in answer.providerPeers]
            if out["kubo_lists"]:
                break
            time.sleep(0.05)
        out["wan_stats"] = dict(wan.stats)
    finally:
        node.stop()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
