"""Content routing through kubo's Kademlia DHT: who provides a CID, and telling peers we do.

A client of go-libp2p-kad-dht's wire protocol (what kubo runs), on a `ww` libp2p host
(:class:`ww.p2p.host.Node`).  py-libp2p 0.8.1 ships ``libp2p.kad_dht``, but it cannot speak
to kubo's LAN DHT: it opens and serves streams only under the hard-coded ``/ipfs/kad/1.0.0``
(its ``protocol_prefix`` argument is stored and never used), and kubo's WAN DHT refuses
loopback and private peers.  So the messages are ours (docs/p2p.md, "DHT", has the evidence);
the protobuf classes are py-libp2p's (``libp2p.kad_dht.pb.kademlia_pb2``: the same field
numbers as go-libp2p-kad-dht's ``pb/dht.proto``).

Framing: one message per stream each way, an unsigned-varint length then the protobuf
``Message`` (kubo reads and writes several per stream; one is allowed).  ``GET_PROVIDERS`` and
``ADD_PROVIDER`` key on the CID's multihash, ``FIND_NODE`` on the peer id's bytes; distance
is XOR of the SHA-256 of keys, as go-libp2p-kbucket computes it.

Bounded by design: a query contacts at most :data:`MAX_CONTACTED` peers, :data:`ALPHA` at a
time, each RPC within :data:`RPC_TIMEOUT` and the whole query within :data:`QUERY_TIMEOUT`; a
reply longer than :data:`MAX_MESSAGE` bytes is refused before it is read, and only the first
:data:`MAX_PEERS_PER_REPLY` peers of a reply, with :data:`MAX_ADDRS_PER_PEER` addresses each,
are looked at.  What peers say is checked: a peer id must parse as a libp2p peer id, an
address as a multiaddr ``/ip4|ip6/<ip>/tcp/<port>``, and the address must belong to the DHT's
scope -- on the LAN DHT (``/ipfs/lan/kad/1.0.0``) loopback and private addresses only, as
kubo's LAN DHT keeps them, on the WAN DHT public ones only; anything else is dropped, never
dialled.  The host's dial policy (`ww run`) still applies on top.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ww.core.cid import CID
from ww.core.identity import IdentityError, decode_peer_id
from ww.ipfs.api import PeerInfo

__all__ = [
    "LAN_PROTOCOL",
    "WAN_PROTOCOL",
    "Dht",
    "new_router",
]

LAN_PROTOCOL = "/ipfs/lan/kad/1.0.0"
WAN_PROTOCOL = "/ipfs/kad/1.0.0"

ALPHA = 3  # RPCs in flight per query (go-libp2p-kad-dht's default)
K = 20  # the closest peers a query converges on (the bucket size)
MAX_CONTACTED = 60  # peers one query may contact at most
RPC_TIMEOUT = 10.0  # seconds for one request and its reply, dial included
QUERY_TIMEOUT = 30.0  # seconds for a whole query
MAX_MESSAGE = 256 * 1024  # bytes a reply may have (kubo's are a few KiB)
MAX_PEERS_PER_REPLY = 40  # closer or provider peers looked at in one reply
MAX_ADDRS_PER_PEER = 16
MAX_KNOWN = 1000  # peers a query remembers as candidates


def _ip_of(addr: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of ``/ip4|ip6/<ip>/tcp/<port>`` (and nothing after it), else None."""
    protocols = [p.name for p in addr.protocols()]
    if protocols not in (["ip4", "tcp"], ["ip6", "tcp"]):
        return None
    try:
        return ipaddress.ip_address(addr.value_for_protocol(protocols[0]))
    except ValueError:
        return None


# go-multiaddr's private ranges (manet.IsPrivateAddr), which kubo's LAN DHT keeps
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "::1/128", "fc00::/7", "fe80::/10"))


def lan_scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Kept on the LAN DHT: loopback, RFC 1918, CGNAT, link-local and ULA addresses (what
    kubo's LAN DHT keeps)."""
    return any(ip in net for net in _PRIVATE)


def wan_scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Kept on the WAN DHT: globally routable unicast addresses."""
    return ip.is_global and not ip.is_multicast


@dataclass
class _Peer:
    id: Any  # libp2p.peer.id.ID
    addrs: list[Any] = field(default_factory=list)  # multiaddr.Multiaddr, checked
    distance: int = 0


def _distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(hashlib.sha256(a).digest(), "big") ^ int.from_bytes(
        hashlib.sha256(b).digest(), "big")


class Dht:
    """One DHT (``protocol``) on a ww libp2p host: provider lookups and announcements,
    starting from the ``bootstrap`` peers (``/ip4/../tcp/../p2p/<id>``) and the peers this
    host is connected to that serve ``protocol``.  Its coroutines run on the host's thread."""

    def __init__(self, node: Any, bootstrap: Iterable[str] = (),
                 protocol: str = LAN_PROTOCOL, max_contacted: int = MAX_CONTACTED) -> None:
        self._node = node
        self._max_contacted = max_contacted
        self.protocol = protocol
        self._in_scope = lan_scope if protocol == LAN_PROTOCOL else wan_scope
        self._bootstrap = list(bootstrap)
        self.stats = {"rpcs": 0, "failed": 0, "dropped_addrs": 0}

    # -- checking what peers say -------------------------------------------------------------

    def _peer(self, pb: Any) -> _Peer | None:
        """A peer of a reply, its id and addresses checked; None if its id is not one."""
        import multiaddr
        from libp2p.peer.id import ID

        try:
            peer_id = ID(bytes(pb.id))
            # an identity or sha2-256 multihash of a key, as go-libp2p's peer.IDFromBytes
            if decode_peer_id(peer_id.to_base58()) != bytes(pb.id):
                return None
        except (IdentityError, ValueError):
            return None
        addrs = []
        for raw in list(pb.addrs)[:MAX_ADDRS_PER_PEER]:
            try:
                addr = multiaddr.Multiaddr(bytes(raw))
            except Exception:
                self.stats["dropped_addrs"] += 1
                continue
            ip = _ip_of(addr)
            if ip is None or not self._in_scope(ip):
                self.stats["dropped_addrs"] += 1
                continue
            addrs.append(addr)
        return _Peer(peer_id, addrs)

    # -- the wire --------------------------------------------------------------------------

    async def _rpc(self, peer: _Peer, message: Any, reply: bool = True) -> Any:
        """Send ``message`` to ``peer`` on a stream of its own; its reply, or None (no reply
        wanted).  Dials ``peer`` at its checked addresses if not connected."""
        import trio
        import varint
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.peerinfo import PeerInfo as LibPeerInfo
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        host = self._node.host
        self.stats["rpcs"] += 1
        with trio.fail_after(RPC_TIMEOUT):
            if not host.get_network().get_connections(peer.id):
                if not peer.addrs:
                    raise ConnectionError(f"no address in scope for {peer.id}")
                await self._node.dial(LibPeerInfo(peer.id, peer.addrs))
            stream = await host.new_stream(peer.id, [self.protocol])
            try:
                data = message.SerializeToString()
                await stream.write(varint.encode(len(data)) + data)
                if not reply:
                    return None
                answer = Message()
                answer.ParseFromString(await read_varint_prefixed_bytes_limited(
                    stream, MAX_MESSAGE))
                return answer
            finally:
                await stream.close()

    async def _seeds(self) -> list[_Peer]:
        """Where a query starts: the bootstrap peers and the connected peers serving the
        protocol."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        seeds: dict[Any, _Peer] = {}
        for text in self._bootstrap:
            info = info_from_p2p_addr(multiaddr.Multiaddr(text))
            seeds[info.peer_id] = _Peer(info.peer_id, list(info.addrs))
        host = self._node.host
        store = host.get_peerstore()
        for conn in host.get_network().get_connections():
            peer_id = conn.muxed_conn.peer_id
            try:
                speaks = self.protocol in [str(p) for p in store.get_protocols(peer_id)]
            except Exception:
                speaks = False
            if speaks and peer_id not in seeds:
                seeds[peer_id] = _Peer(peer_id)
        return list(seeds.values())

    async def _lookup(self, key: bytes, kind: int, want_providers: int = 0,
                      target: Any = None) -> tuple[list[_Peer], dict[Any, _Peer]]:
        """Iterative lookup of ``key``: the closest peers that answered (at most :data:`K`) and
        the providers found (a ``GET_PROVIDERS`` lookup stops once ``want_providers``; a
        ``FIND_NODE`` lookup once a peer names ``target`` with an address, which is then
        the one peer returned)."""
        import trio
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        known: dict[Any, _Peer] = {}
        queried: set[Any] = set()
        answered: dict[Any, _Peer] = {}
        providers: dict[Any, _Peer] = {}
        me = self._node.host.get_id()

        def learn(peer: _Peer) -> None:
            if peer.id == me or peer.id in known or len(known) >= MAX_KNOWN:
                return
            peer.distance = _distance(peer.id.to_bytes(), key)
            known[peer.id] = peer

        for seed in await self._seeds():
            learn(seed)

        async def ask(peer: _Peer) -> None:
            request = Message(type=kind, key=key)
            try:
                answer = await self._rpc(peer, request)
            except Exception:
                self.stats["failed"] += 1
                return
            answered[peer.id] = peer
            for pb in list(answer.providerPeers)[:MAX_PEERS_PER_REPLY]:
                found = self._peer(pb)
                if found is not None and found.id != me and (
                        found.addrs or found.id not in providers):
                    if found.id == peer.id and not found.addrs:
                        found.addrs = peer.addrs
                    providers[found.id] = found
            for pb in list(answer.closerPeers)[:MAX_PEERS_PER_REPLY]:
                found = self._peer(pb)
                if found is not None and found.addrs:
                    if found.id == target:
                        providers[found.id] = found
                    learn(found)

        with trio.move_on_after(QUERY_TIMEOUT):
            while len(queried) < self._max_contacted:
                if want_providers and len(providers) >= want_providers:
                    break
                if target is not None and target in providers:
                    break
                closest = sorted(known.values(), key=lambda p: p.distance)
                # converged: the K closest that may still answer have all been asked
                live = [p for p in closest if p.id not in queried or p.id in answered][:K]
                batch = [p for p in live if p.id not in queried][:ALPHA]
                batch = batch[:self._max_contacted - len(queried)]
                if not batch:
                    break
                async with trio.open_nursery() as nursery:
                    for peer in batch:
                        queried.add(peer.id)
                        nursery.start_soon(ask, peer)
        closest = sorted(answered.values(), key=lambda p: p.distance)[:K]
        return closest, providers

    # -- the Router protocol (ww.ipfs.net.Router) -------------------------------------------

    async def find_providers(self, cid: CID, limit: int) -> list[PeerInfo]:
        """Peers that say they provide ``cid``, with their checked addresses (at most
        ``limit``; those with no address in scope are left out)."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        _, providers = await self._lookup(cid.multihash, Message.GET_PROVIDERS, limit)
        found = [PeerInfo(id=p.id.to_base58(), addresses=[str(a) for a in p.addrs],
                          protocols=[]) for p in providers.values() if p.addrs]
        return found[:limit]

    async def provide(self, cid: CID) -> int:
        """Tell the :data:`K` peers closest to ``cid`` that this host provides it, at its
        listening addresses in scope; how many were told."""
        import trio
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        host = self._node.host
        addrs = [a for a in host.get_addrs() if (ip := _ip_of(_strip_p2p(a))) is not None
                 and self._in_scope(ip)]
        if not addrs:
            return 0
        closest, _ = await self._lookup(cid.multihash, Message.FIND_NODE)
        me = Message.Peer(id=host.get_id().to_bytes(),
                          addrs=[_strip_p2p(a).to_bytes() for a in addrs])
        told = 0

        async def tell(peer: _Peer) -> None:
            nonlocal told
            try:
                await self._rpc(peer, Message(type=Message.ADD_PROVIDER, key=cid.multihash,
                                              providerPeers=[me]), reply=False)
                told += 1
            except Exception:
                self.stats["failed"] += 1

        async with trio.open_nursery() as nursery:
            for peer in closest:
                nursery.start_soon(tell, peer)
        return told

    async def ping(self, peer_id: str) -> bool:
        """A DHT ``PING`` to a connected peer: True if it answered with a ``PING``."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.id import ID

        answer = await self._rpc(_Peer(ID.from_base58(peer_id)), Message(type=Message.PING))
        return bool(answer.type == Message.PING)

    async def find_peer(self, peer_id: str) -> list[str]:
        """Addresses (in scope) that the DHT knows for ``peer_id``; empty if none."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.id import ID

        target = ID.from_base58(peer_id)
        _, named = await self._lookup(target.to_bytes(), Message.FIND_NODE, target=target)
        return [str(a) for a in named[target].addrs] if target in named else []

    async def find_node(self, peer_id: str) -> list[PeerInfo]:
        """The closest peers to ``peer_id`` that answered a ``FIND_NODE`` lookup."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.id import ID

        closest, _ = await self._lookup(ID.from_base58(peer_id).to_bytes(), Message.FIND_NODE)
        return [PeerInfo(id=p.id.to_base58(), addresses=[str(a) for a in p.addrs],
                         protocols=[]) for p in closest]


def _strip_p2p(addr: Any) -> Any:
    """``addr`` without a trailing ``/p2p/<id>``."""
    import multiaddr

    text = str(addr)
    return multiaddr.Multiaddr(text.split("/p2p/")[0]) if "/p2p/" in text else addr


def new_router(bootstrap: Iterable[str], protocol: str = LAN_PROTOCOL) -> Any:
    """How a ``ww.ipfs`` network makes its router on the host it has (``NewRouter``)."""
    addrs = list(bootstrap)

    def make(node: Any) -> Dht:
        return Dht(node, addrs, protocol)

    return make
