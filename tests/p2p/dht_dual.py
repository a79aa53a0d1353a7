"""Run inside a network namespace of the test's own (tests/p2p/kubo_dht.py, no kubo node): ww
hosts with kubo's dual DHT (ww.p2p.routing.DualDht) over real sockets, both protocols on
the wire; prints one JSON line of what each host did.

The one stand-in: nothing here may dial a public address (and kubo's WAN DHT drops every
address that is not public), so the hosts are built with :data:`TEST_ONLY_SCOPES`, which
splits loopback in two: 127.0.2.0/24 stands for the public internet (the WAN DHT's scope),
the rest of the private ranges is the LAN.  Everything else is what `ww run` uses.

- ``lan_server`` listens on 127.0.0.1 only, with ``server=True``: it serves the LAN DHT and
  not the WAN one (no address in the WAN scope);
- ``wan_server`` listens on 127.0.2.1 (the stand-in for a public address): it serves both;
- ``p_lan`` (127.0.0.2, bootstraps from ``lan_server``), ``p_wan`` (127.0.2.2, from
  ``wan_server``) and ``p_both`` (127.0.0.3 and 127.0.2.3, from both) announce a CID each,
  and ``p_both`` the ``shared`` CID too;
- ``asker`` (127.0.0.4, bootstraps from both servers) looks them up.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import sys
import time
from typing import Any

from ww.core.cid import CID, RAW
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.routing import LAN_PROTOCOL, WAN_PROTOCOL, DualDht, lan_scope

BOUND = 120.0  # only stops a hang
FLOOD_BOUND = 10
STANDS_FOR_THE_INTERNET = ipaddress.ip_network("127.0.2.0/24")


def test_only_wan_scope(ip: Any) -> bool:
    """TEST ONLY: 127.0.2.0/24 stands for the public internet (no public address may be
    dialled here)."""
    return ip in STANDS_FOR_THE_INTERNET


def test_only_lan_scope(ip: Any) -> bool:
    """TEST ONLY: kubo's LAN scope, less the loopback range standing for the internet."""
    return lan_scope(ip) and ip not in STANDS_FOR_THE_INTERNET


TEST_ONLY_SCOPES = (test_only_lan_scope, test_only_wan_scope)

CIDS = {name: CID.v1(RAW, b"\x12\x20" + hashlib.sha256(name.encode()).digest())
        for name in ("lan", "wan", "shared")}


def main() -> dict:
    nodes: list[Node] = []

    def host(*ips: str, bootstrap: tuple[Node, ...] = (), server: bool = False,
             ) -> tuple[Node, DualDht]:
        node = Node(Identity.from_private_key(PrivateKey.generate()),
                    listen=[f"/ip4/{ip}/tcp/0" for ip in ips], serve_ww=False,
                    announce=False, warn=lambda message: None)
        dht = DualDht(node, [a for b in bootstrap for a in b.addrs], server,
                      scopes=TEST_ONLY_SCOPES)
        nodes.append(node)
        node.start()
        return node, dht

    out: dict = {}
    try:
        lan_node, lan_server = host("127.0.0.1", server=True)
        wan_node, wan_server = host("127.0.2.1", server=True)
        out["served"] = {"lan_server": [p for p in lan_node.protocols if "kad" in p],
                         "wan_server": [p for p in wan_node.protocols if "kad" in p]}
        p_lan_node, p_lan = host("127.0.0.2", bootstrap=(lan_node,))
        p_wan_node, p_wan = host("127.0.2.2", bootstrap=(wan_node,))
        p_both_node, p_both = host("127.0.0.3", "127.0.2.3", bootstrap=(lan_node, wan_node))
        told = {}
        for name, (node, dht, cid) in {"p_lan": (p_lan_node, p_lan, CIDS["lan"]),
                                       "p_wan": (p_wan_node, p_wan, CIDS["wan"]),
                                       "p_both": (p_both_node, p_both, CIDS["shared"])
                                       }.items():
            before = (dht.lan.stats["rpcs"], dht.wan.stats["rpcs"])
            total = node.submit(dht.provide, cid).result(BOUND)
            told[name] = {"total": total,
                          "lan_rpcs": dht.lan.stats["rpcs"] - before[0],
                          "wan_rpcs": dht.wan.stats["rpcs"] - before[1]}
        out["told"] = told

        def records() -> dict:
            return {server: {name: [_id_of(raw) for raw, _ in store.get(cid.multihash)]
                             for name, cid in CIDS.items()}
                    for server, store in (("lan_server", lan_server.lan.providers),
                                          ("wan_server", wan_server.wan.providers))}

        # ADD_PROVIDER has no reply: a server stores the record once it has read it
        deadline = time.monotonic() + BOUND
        while len(sum((v for r in records().values() for v in r.values()), [])) < 4 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        out["records"] = records()
        asker_node, asker = host("127.0.0.4", bootstrap=(lan_node, wan_node))
        found = {}
        for name, cid in CIDS.items():
            providers = asker_node.submit(asker.find_providers, cid, 20).result(BOUND)
            found[name] = [{"id": p.id, "addrs": sorted(p.addresses)} for p in providers]
        out["found"] = found
        out["found_limit_1"] = [p.id for p in asker_node.submit(
            asker.find_providers, CIDS["shared"], 1).result(BOUND)]
        out["find_peer_wan_only"] = asker_node.submit(
            asker.find_peer, p_wan_node.peer_id).result(BOUND)
        out["find_peer_lan_only"] = asker_node.submit(
            asker.find_peer, p_lan_node.peer_id).result(BOUND)
        out["asker_tables"] = {"lan": sorted(_ids(asker.lan)), "wan": sorted(_ids(asker.wan))}
        out["asker_stats"] = {"lan": dict(asker.lan.stats), "wan": dict(asker.wan.stats)}
        out["servers_answered"] = {
            "lan_server": {"lan": lan_server.lan.stats["answered"],
                           "wan": lan_server.wan.stats["answered"]},
            "wan_server": {"lan": wan_server.lan.stats["answered"],
                           "wan": wan_server.wan.stats["answered"]}}
        out["ids"] = {name: node.peer_id for name, node in {
            "lan_server": lan_node, "wan_server": wan_node, "p_lan": p_lan_node,
            "p_wan": p_wan_node, "p_both": p_both_node}.items()}
        out["addrs"] = {name: [a.split("/p2p/")[0] for a in node.addrs] for name, node in {
            "p_lan": p_lan_node, "p_wan": p_wan_node, "p_both": p_both_node}.items()}
        out["stall"] = stall(host, lan_node, p_lan_node)
        out["flood"] = flood(host)
    finally:
        for node in nodes:
            node.stop()
    return out


def stall(host: Any, lan_node: Node, p_lan_node: Node) -> dict:
    """The WAN DHT's only peer takes every request and never answers (each request would
    fail after its 10 s); the LAN DHT finds the peer and the provider looked up.  The first
    useful answer ends the dual lookup: the WAN request is cancelled, not failed."""
    import trio

    async def never_answer(stream: Any) -> None:
        await stream.read(1)
        await trio.sleep_forever()  # until the asker gives up, or the host stops

    node = Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.2.7/tcp/0"], serve_ww=False, announce=False,
                warn=lambda message: None, handlers={WAN_PROTOCOL: never_answer})
    node.start()
    try:
        asker_node, _ = host("127.0.0.7")
        asker = DualDht(asker_node, [*lan_node.addrs, *node.addrs], scopes=TEST_ONLY_SCOPES)
        out: dict = {"find_peer": asker_node.submit(
            asker.find_peer, p_lan_node.peer_id).result(BOUND)}
        out["find_peer_wan"] = dict(asker.wan.stats)
        out["find_providers"] = [p.id for p in asker_node.submit(
            asker.find_providers, CIDS["lan"], 1).result(BOUND)]
        out["find_providers_wan"] = dict(asker.wan.stats)
        return out
    finally:
        node.stop()


def flood(host: Any) -> dict:
    """A peer serving both protocols answers every request with 40 new closer peers in the
    scope of the protocol asked (at a port nobody listens on); an asker with a bound of
    :data:`FLOOD_BOUND` peers a lookup: each DHT stops at its own bound."""
    import varint
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    def liar(ip: str) -> Any:
        async def answer(stream: Any) -> None:
            await read_varint_prefixed_bytes_limited(stream, 1 << 16)
            reply = Message(type=Message.GET_PROVIDERS)
            for _ in range(40):
                reply.closerPeers.add(
                    id=ID.from_base58(PrivateKey.generate().peer_id).to_bytes(),
                    addrs=[multiaddr.Multiaddr(f"/ip4/{ip}/tcp/9").to_bytes()])
            data = reply.SerializeToString()
            await stream.write(varint.encode(len(data)) + data)
            await stream.close()

        return answer

    import multiaddr
    from libp2p.peer.id import ID

    node = Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.5/tcp/0", "/ip4/127.0.2.5/tcp/0"], serve_ww=False,
                announce=False, warn=lambda message: None,
                handlers={LAN_PROTOCOL: liar("127.0.0.9"), WAN_PROTOCOL: liar("127.0.2.9")})
    node.start()
    try:
        asker_node, _ = host("127.0.0.6")
        asker = DualDht(asker_node, node.addrs, max_contacted=FLOOD_BOUND,
                        scopes=TEST_ONLY_SCOPES)
        found = asker_node.submit(asker.find_providers, CIDS["lan"], 20).result(BOUND)
        return {"found": [p.id for p in found], "bound": FLOOD_BOUND,
                "lan": dict(asker.lan.stats), "wan": dict(asker.wan.stats)}
    finally:
        node.stop()


def _id_of(raw: bytes) -> str:
    from libp2p.peer.id import ID

    return ID(raw).to_base58()


def _ids(dht: Any) -> list[str]:
    return [p.id.to_base58() for p in dht.table.closest(b"any", 1000)]


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(main()))
