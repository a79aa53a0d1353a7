"""Run inside a network namespace of the test's own (tests/p2p/kubo_dht.py, no kubo node): a
DHT peer of ours that lies, and a ww host asking it; prints one JSON line of what the asker
did.  The liar is a stand-in for a hostile kubo peer (kubo cannot be made to lie).

Each phase sets what the liar answers to every request:
- ``addresses``: closer and provider peers at public, documentation, DNS and relay addresses
  and with ids that are no peer id, and one honest provider at a loopback address;
- ``flood``: 40 new closer peers in every reply, each at a loopback port nobody listens on
  (asked with a query bound of :data:`FLOOD_BOUND` peers, so that the bound is reached);
- ``huge``: a length prefix of 10 MiB;
- ``other_key``: the honest provider, in a reply naming another key than the one asked;
- ``self``: the asker itself as closer peer and as provider, at a loopback address;
- ``many``: 200 providers, each at a malformed address and 24 loopback ones.
"""

from __future__ import annotations

import json
import os
import sys

import multiaddr
import varint
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID

from ww.core.cid import CID
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.routing import LAN_PROTOCOL, Dht

BOUND = 120.0  # only stops a hang
FLOOD_BOUND = 10
CID_ = CID.parse("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
phase = {"now": ""}
dialled: list[str] = []


def _peer_id() -> bytes:
    return ID.from_base58(PrivateKey.generate().peer_id).to_bytes()


def _ma(text: str) -> bytes:
    return multiaddr.Multiaddr(text).to_bytes()


async def liar(stream: object) -> None:
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    request = Message()
    request.ParseFromString(await read_varint_prefixed_bytes_limited(
        stream, 1 << 16))  # type: ignore[arg-type]
    now = phase["now"]
    if now == "huge":
        await stream.write(varint.encode(10 * 1024 * 1024) + b"\0" * 1024)  # type: ignore
        await stream.close()  # type: ignore[attr-defined]
        return
    reply = Message(type=request.type, key=request.key)  # as kubo's replies
    if now == "addresses":
        bad = [_ma("/ip4/8.8.8.8/tcp/4001"), _ma("/ip4/192.0.2.1/tcp/4001"),
               _ma("/dns4/example.com/tcp/4001"), _ma("/ip6/2001:4860::8888/tcp/4001"),
               _ma("/ip4/127.0.0.1/udp/4001")]
        reply.closerPeers.add(id=_peer_id(), addrs=bad)
        reply.closerPeers.add(id=b"not a peer id", addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
        reply.providerPeers.add(id=_peer_id(), addrs=bad)
        reply.providerPeers.add(id=b"\x12\x20short", addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
        reply.providerPeers.add(id=HONEST, addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
    elif now == "flood":
        for _ in range(40):
            reply.closerPeers.add(id=_peer_id(), addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
    elif now == "other_key":
        reply.key = CID.parse(OTHER).multihash
        reply.providerPeers.add(id=HONEST, addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
        reply.closerPeers.add(id=_peer_id(), addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
    elif now == "self":
        me = ID.from_base58(asker_id["id"]).to_bytes()
        reply.closerPeers.add(id=me, addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
        reply.providerPeers.add(id=me, addrs=[_ma("/ip4/127.0.0.1/tcp/9")])
    elif now == "many":
        addrs = [MALFORMED] + [_ma(f"/ip4/127.0.0.1/tcp/{port}") for port in range(1, 25)]
        for _ in range(200):
            reply.providerPeers.add(id=_peer_id(), addrs=addrs)
    data = reply.SerializeToString()
    await stream.write(varint.encode(len(data)) + data)  # type: ignore[attr-defined]
    await stream.close()  # type: ignore[attr-defined]


HONEST = _peer_id()
OTHER = "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"  # not CID_
MALFORMED = b"\x04\x7f\x00\x00\x01\x06\x00"  # /ip4/127.0.0.1/tcp/ cut short
asker_id: dict[str, str] = {}


def main() -> dict:
    liar_node = Node(Identity.from_private_key(PrivateKey.generate()),
                     listen=["/ip4/127.0.0.1/tcp/0"], serve_ww=False, announce=False,
                     handlers={LAN_PROTOCOL: liar}, warn=lambda message: None)
    asker = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                 serve_ww=False, announce=False, warn=lambda message: None)
    liar_node.start()
    asker.start()
    asker_id["id"] = str(asker.peer_id)
    real_dial = asker.dial

    async def counting_dial(info: object) -> None:
        dialled.extend(str(a) for a in info.addrs)  # type: ignore[attr-defined]
        await real_dial(info)

    asker.dial = counting_dial  # type: ignore[method-assign]
    out: dict = {}
    try:
        for now in ("addresses", "flood", "huge", "other_key", "self", "many"):
            phase["now"] = now
            dialled.clear()
            dht = Dht(asker, [liar_node.addrs[0]], LAN_PROTOCOL,
                      max_contacted=FLOOD_BOUND if now == "flood" else 60)
            found = asker.submit(dht.find_providers, CID_, 20).result(BOUND)
            out[now] = {"providers": [{"id": p.id, "addrs": p.addresses} for p in found],
                        "stats": dict(dht.stats), "dialled": sorted(set(dialled))}
        out["flood_bound"] = FLOOD_BOUND
        out["liar"] = liar_node.addrs[0]
        out["honest"] = ID(HONEST).to_base58()
    finally:
        asker.stop()
        liar_node.stop()
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(main()))
