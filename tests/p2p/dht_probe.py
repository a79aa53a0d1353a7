"""Run inside the test's network namespace (tests/p2p/kubo_dht.py): a ww libp2p host asks
kubo's LAN DHT, then py-libp2p's own ``kad_dht``, and prints what each got as one JSON line.

``python dht_probe.py BOOTSTRAP_ADDR PROVIDER_ID CID``: BOOTSTRAP_ADDR is a kubo node this
host connects to, PROVIDER_ID a kubo node it is not connected to that provides CID."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import multiaddr
from libp2p.peer.peerinfo import info_from_p2p_addr

from ww.core.cid import CID
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.routing import LAN_PROTOCOL, WAN_PROTOCOL, Dht, DualDht

BOUND = 60.0  # a bound that only stops a hang


def connected(kubo: str) -> tuple[Node, Any, list[str]]:
    """A started ww host on 127.0.0.1 connected to ``kubo`` (``/ip4/../p2p/<id>``): the host,
    kubo's peer info, and the DHT protocols kubo lists once identify has told them (the
    caller stops the host)."""
    node = Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.1/tcp/0"], serve_ww=False, announce=False,
                warn=lambda message: None)
    node.start()
    info = info_from_p2p_addr(multiaddr.Multiaddr(kubo))
    kad: list[str] = []
    try:
        node.submit(node.dial, info).result(BOUND)

        async def protocols() -> list[str]:
            return sorted(str(p) for p in node.host.get_peerstore().get_protocols(info.peer_id))

        deadline = time.monotonic() + BOUND  # identify runs after the connection is up
        while not kad and time.monotonic() < deadline:
            kad = [p for p in node.submit(protocols).result(BOUND) if "kad" in p]
            if not kad:
                time.sleep(0.05)
    except BaseException:
        node.stop()
        raise
    return node, info, kad


def main(bootstrap: str, provider: str, cid_text: str) -> dict:
    cid = CID.parse(cid_text)
    node, info, kad = connected(bootstrap)
    out: dict = {"ww": node.peer_id, "kubo_protocols": kad}
    try:
        dht = Dht(node, [bootstrap], LAN_PROTOCOL)
        out["ping"] = node.submit(dht.ping, str(info.peer_id)).result(BOUND)
        found = node.submit(dht.find_node, provider).result(BOUND)
        out["find_node"] = [p.id for p in found]
        t = time.perf_counter()
        providers = node.submit(dht.find_providers, cid, 5).result(BOUND)
        out["get_providers_seconds"] = time.perf_counter() - t
        out["get_providers"] = [{"id": p.id, "addrs": p.addresses} for p in providers]
        out["lan_stats"] = dict(dht.stats)
        wan = Dht(node, [bootstrap], WAN_PROTOCOL)
        out["wan_get_providers"] = [p.id for p in
                                    node.submit(wan.find_providers, cid, 5).result(BOUND)]
        out["wan_stats"] = dict(wan.stats)
        # kubo's dual DHT as ww runs it: the bootstrap peer is on loopback, so only the LAN
        # DHT starts from it; the merged lookup finds what the LAN DHT finds
        dual = DualDht(node, [bootstrap])
        out["dual_get_providers"] = [p.id for p in
                                     node.submit(dual.find_providers, cid, 5).result(BOUND)]
        out["dual_wan_rpcs"] = dual.wan.stats["rpcs"]
        # ADD_PROVIDER: tell the kubo nodes we provide a CID nobody else has, then ask again
        mine = CID.parse("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
        out["provide_told"] = node.submit(dht.provide, mine).result(BOUND)
        deadline = time.monotonic() + BOUND  # kubo stores it once it has read the message
        while time.monotonic() < deadline:
            out["kubo_lists_ww"] = node.submit(_providers_at, dht, info.peer_id, mine
                                               ).result(BOUND)
            if out["kubo_lists_ww"]:
                break
            time.sleep(0.05)
        out["py_libp2p"] = node.submit(_py_libp2p, node, info, cid).result(BOUND)
    finally:
        node.stop()
    return out


async def _providers_at(dht: Dht, peer_id: object, cid: CID) -> list[dict]:
    """One GET_PROVIDERS to one peer: the providers it lists, as it sent them."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.peer.id import ID

    from ww.p2p.routing import _Peer

    answer = await dht._rpc(_Peer(peer_id), Message(type=Message.GET_PROVIDERS,
                                                    key=cid.multihash))
    return [{"id": ID(p.id).to_base58(), "addrs": [str(multiaddr.Multiaddr(a)) for a in p.addrs]}
            for p in answer.providerPeers]


async def _py_libp2p(node: Node, info: object, cid: CID) -> dict:
    """py-libp2p 0.8.1's own KadDHT, client mode, told about the kubo peer."""
    import trio
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

    result: dict = {}
    dht = KadDHT(node.host, DHTMode.CLIENT, protocol_prefix="/ipfs/lan")  # type: ignore[arg-type]
    result["protocol_used"] = "/ipfs/kad/1.0.0"  # libp2p.kad_dht.common.PROTOCOL_ID
    try:
        with trio.move_on_after(20):
            await dht.add_peer(info.peer_id)  # type: ignore[attr-defined]
        result["routing_table"] = dht.get_routing_table_size()
        with trio.move_on_after(20) as scope:
            found = await dht.find_providers(cid.multihash.hex())
            result["providers"] = [str(p.peer_id) for p in found]
        result["timed_out"] = scope.cancelled_caught
    except Exception as e:  # noqa: BLE001 - what fails is the finding
        result["error"] = f"{type(e).__name__}: {e}"
    return result


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
