"""Run inside a network namespace of the test's own (tests/p2p/kubo_dht.py, no kubo node),
whose loopback interface this script gives the address 10.99.0.1 too, so that peers meet
over an address that is not a loopback one.  Prints one JSON line:

- ``stored``: what a DHT server hands out after a peer, connected over 10.99.0.1, announced
  itself (``ADD_PROVIDER``) at ``127.0.0.1:5001`` and at its 10.99.0.1 address;
- ``found``: the providers a ww host's lookup returns when a peer it reaches over 10.99.0.1
  names one at ``127.0.0.1:5001`` (a loopback service of the asker, not of the peer);
- ``liar_on_loopback``: the same provider named by a peer reached over loopback.
"""

from __future__ import annotations

import json
import subprocess
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
CID_ = CID.parse("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
SERVICE = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/5001").to_bytes()
NAMED = ID.from_base58(PrivateKey.generate().peer_id).to_bytes()


def _node(listen: str, **kwargs: object) -> Node:
    return Node(Identity.from_private_key(PrivateKey.generate()), listen=[listen],
                serve_ww=False, announce=False, warn=lambda message: None, **kwargs)


async def liar(stream: object) -> None:
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    request = Message()
    request.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1 << 16))
    reply = Message(type=request.type, key=request.key)
    reply.providerPeers.add(id=NAMED, addrs=[SERVICE])
    data = reply.SerializeToString()
    await stream.write(varint.encode(len(data)) + data)  # type: ignore[attr-defined]
    await stream.close()  # type: ignore[attr-defined]


def main() -> dict:
    subprocess.run("ip addr add 10.99.0.1/32 dev lo".split(), check=True)
    out: dict = {}
    server_node = _node("/ip4/10.99.0.1/tcp/0")
    announcer = _node("/ip4/10.99.0.1/tcp/0")
    Dht(server_node, server=True)
    server_node.start()
    announcer.start()
    try:
        announcer_dht = Dht(announcer)
        mine = multiaddr.Multiaddr(announcer.addrs[0].split("/p2p/")[0]).to_bytes()

        async def announce_then_get() -> list[str]:
            from libp2p.peer.peerinfo import info_from_p2p_addr
            from libp2p.utils.varint import read_varint_prefixed_bytes_limited

            await announcer.dial(info_from_p2p_addr(multiaddr.Multiaddr(server_node.addrs[0])))
            stream = await announcer.host.new_stream(ID.from_base58(server_node.peer_id),
                                                     [announcer_dht.protocol])
            me = ID.from_base58(announcer.peer_id).to_bytes()
            for message in (
                    Message(type=Message.ADD_PROVIDER, key=CID_.multihash,
                            providerPeers=[Message.Peer(id=me, addrs=[SERVICE, mine])]),
                    Message(type=Message.GET_PROVIDERS, key=CID_.multihash)):
                data = message.SerializeToString()
                await stream.write(varint.encode(len(data)) + data)
            answer = Message()
            answer.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1 << 16))
            await stream.close()
            return [str(multiaddr.Multiaddr(a)) for p in answer.providerPeers for a in p.addrs]

        out["stored"] = announcer.submit(announce_then_get).result(BOUND)
        out["announcer"] = str(multiaddr.Multiaddr(mine))
    finally:
        announcer.stop()
        server_node.stop()
    for where, listen in (("found", "/ip4/10.99.0.1/tcp/0"),
                          ("liar_on_loopback", "/ip4/127.0.0.1/tcp/0")):
        liar_node = _node(listen, handlers={LAN_PROTOCOL: liar})
        asker = _node("/ip4/10.99.0.1/tcp/0")
        liar_node.start()
        asker.start()
        try:
            dht = Dht(asker, [liar_node.addrs[0]])
            found = asker.submit(dht.find_providers, CID_, 20).result(BOUND)
            out[where] = [a for p in found for a in p.addresses]
        finally:
            for node in (asker, liar_node):
                node.stop()
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
    print()
