"""Content and peer routing through kubo's Kademlia DHT: who provides a CID, where a peer
is, telling peers we provide one, and (server mode) answering them.

A client, and optionally a server (``--routing dhtserver``), of go-libp2p-kad-dht's wire
protocol (what kubo runs), on a `ww` libp2p host (:class:`ww.p2p.host.Node`).  A run has
kubo's dual DHT (:class:`DualDht`): a :class:`Dht` on the LAN protocol and one on the WAN
protocol, each keeping a :class:`RoutingTable` of the peers in its scope for the run; a
server keeps a :class:`ProviderStore` too, all bounded, each DHT on its own.

py-libp2p 0.8.1 ships ``libp2p.kad_dht``, but it cannot speak to kubo's LAN DHT: it opens and
serves streams only under the hard-coded ``/ipfs/kad/1.0.0`` (its ``protocol_prefix``
argument is stored and never used), and kubo's WAN DHT refuses loopback and private peers.
So the messages are ours (docs/p2p.md, "DHT", has the evidence); the protobuf classes are
py-libp2p's (``libp2p.kad_dht.pb.kademlia_pb2``: the same field numbers as
go-libp2p-kad-dht's ``pb/dht.proto``).

Framing: one message per stream each way when asking, an unsigned-varint length then the
protobuf ``Message`` (kubo reads and writes several per stream; one is allowed); as a server,
several requests on one stream are answered in order.  ``GET_PROVIDERS`` and
``ADD_PROVIDER`` key on the CID's multihash, ``FIND_NODE`` on the peer id's bytes; distance
is XOR of the SHA-256 of keys, as go-libp2p-kbucket computes it.

Bounded by design: a query contacts at most :data:`MAX_CONTACTED` peers, :data:`ALPHA` at a
time, each RPC within :data:`RPC_TIMEOUT` and the whole query within :data:`QUERY_TIMEOUT`; a
reply longer than :data:`MAX_MESSAGE` bytes is refused before it is read, and only the first
:data:`MAX_PEERS_PER_REPLY` peers of a reply, with :data:`MAX_ADDRS_PER_PEER` addresses each,
are looked at.  What peers say is checked: a peer id must parse as a libp2p peer id, an
address as a multiaddr ``/ip4|ip6/<ip>/tcp/<port>``, and the address must belong to the DHT's
scope -- on the LAN DHT (``/ipfs/lan/kad/1.0.0``) loopback and private addresses only, as
kubo's LAN DHT keeps them (loopback ones only from a peer reached over loopback), on the WAN
DHT public ones only; anything else is dropped, never dialled.  The host's dial policy
(`ww run`) still applies on top.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ww.core.cid import CID
from ww.core.identity import IdentityError, decode_peer_id
from ww.ipfs.api import PeerInfo
from ww.p2p.host import open_connections

__all__ = [
    "LAN_PROTOCOL",
    "WAN_PROTOCOL",
    "Dht",
    "DualDht",
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
MAX_CLAIMS = 4  # addresses of a peer looked up, as peers told them, tried at most

# Server mode (kubo's Routing.Type dhtserver): what this host keeps for others, bounded.
PROVIDER_TTL = 48 * 3600.0  # seconds a provider record lives (go-libp2p-kad-dht's 48 h)
MAX_PROVIDERS_PER_KEY = 20  # providers kept for one key; the oldest record gives way
MAX_PROVIDER_RECORDS = 10_000  # provider records kept in all; new keys are refused beyond
SWEEP_EVERY = 60.0  # seconds between sweeps of a full provider store, at least
MAX_KEY = 80  # bytes of a provider key (go-libp2p-kad-dht refuses longer ones)
MAX_REQUESTS_PER_STREAM = 32  # requests answered on one inbound stream, then it is closed
MAX_INBOUND_PER_PEER = 8  # inbound streams one peer may have open at a time
MAX_INBOUND = 128  # inbound streams all peers together may have open at a time
INBOUND_IDLE = 60.0  # seconds an inbound stream may sit between requests
MAX_FAILURES = 3  # requests in a row a peer of the routing table fails before it leaves
MAX_CHECKS = 8  # candidates for the routing table checked (a FIND_NODE) at a time
CHECK_BACKOFF = 600.0  # seconds a peer whose check did not admit it is not checked again
MAX_BACKOFF = 1024  # such peers remembered at most; the oldest is forgotten first
FIND_PROVIDER_ADDRS = 4  # providers named without an address looked up (FIND_NODE) at most
# Reproviding (a long-running host announces what it pins again, as kubo's Reprovider does)
REPROVIDE_INTERVAL = 22 * 3600.0  # seconds between rounds (kubo's Reprovider.Interval)
REPROVIDE_FIRST = 60.0  # seconds after the start the first round begins, at most
MAX_REPROVIDE = 10_000  # CIDs announced in one round at most
MAX_PENDING_PROVIDES = 1024  # CIDs waiting to be announced (provide_soon); more are dropped
REPROVIDE_AT_ONCE = 8  # CIDs of a round announced at a time


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


Scope = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]


@dataclass
class _Peer:
    id: Any  # libp2p.peer.id.ID
    addrs: list[Any] = field(default_factory=list)  # multiaddr.Multiaddr, checked
    distance: int = 0
    failures: int = 0  # requests failed in a row (a peer of the routing table)


def _distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(hashlib.sha256(a).digest(), "big") ^ int.from_bytes(
        hashlib.sha256(b).digest(), "big")


def _hashed(key: bytes) -> int:
    return int.from_bytes(hashlib.sha256(key).digest(), "big")


class RoutingTable:
    """Kademlia k-buckets: peers that serve the DHT, by the length of the prefix the SHA-256
    of their id shares with ours (go-libp2p-kbucket's keyspace), at most ``k`` a bucket.

    A full bucket keeps the peers it has (Kademlia's preference for peers long seen) until
    one of them fails to answer :data:`MAX_FAILURES` requests in a row over a connection
    (:meth:`failed`: one failure may be a busy or slow moment, a stream reset because the
    peer had no room for it), cannot be dialled, or answers wrongly (:meth:`remove`); a peer
    seen again moves to the bucket's end and its failures are forgotten.  Bounded: 257
    buckets of ``k``."""

    def __init__(self, self_id: bytes, k: int = K) -> None:
        self._me = _hashed(self_id)
        self.k = k
        self._buckets: dict[int, OrderedDict[bytes, _Peer]] = {}

    def _bucket(self, peer_id: bytes) -> int:
        return 256 - (self._me ^ _hashed(peer_id)).bit_length()

    def add(self, peer: _Peer) -> bool:
        """Keep ``peer`` (with its addresses, if it came with some); False if its bucket is
        full or it is us."""
        raw = peer.id.to_bytes()
        index = self._bucket(raw)
        if index == 256:
            return False
        bucket = self._buckets.setdefault(index, OrderedDict())
        if raw in bucket:
            if peer.addrs:
                bucket[raw].addrs = list(peer.addrs)
            bucket[raw].failures = 0
            bucket.move_to_end(raw)
            return True
        if len(bucket) >= self.k:
            return False
        bucket[raw] = _Peer(peer.id, list(peer.addrs))
        return True

    def failed(self, peer_id: Any) -> bool:
        """Count a request ``peer_id`` failed over a connection (no answer, a reset stream);
        it is removed at the :data:`MAX_FAILURES`-th in a row.  Whether it was removed."""
        kept = self.get(peer_id)
        if kept is None:
            return False
        kept.failures += 1
        if kept.failures < MAX_FAILURES:
            return False
        self.remove(peer_id)
        return True

    def answered(self, peer_id: Any) -> None:
        """``peer_id`` answered a request: its failures in a row are forgotten."""
        kept = self.get(peer_id)
        if kept is not None:
            kept.failures = 0

    def remove(self, peer_id: Any) -> None:
        raw = peer_id.to_bytes()
        self._buckets.get(self._bucket(raw), {}).pop(raw, None)  # type: ignore[call-overload]

    def get(self, peer_id: Any) -> _Peer | None:
        raw = peer_id.to_bytes()
        return self._buckets.get(self._bucket(raw), {}).get(raw)

    def closest(self, key: bytes, count: int = K) -> list[_Peer]:
        """The ``count`` peers closest to ``key`` (XOR of SHA-256s)."""
        target = _hashed(key)
        peers = [p for bucket in self._buckets.values() for p in bucket.values()]
        peers.sort(key=lambda p: _hashed(p.id.to_bytes()) ^ target)
        return [_Peer(p.id, list(p.addrs)) for p in peers[:count]]

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())


class ProviderStore:
    """Who said they provide a key (``ADD_PROVIDER``), each record for :data:`PROVIDER_TTL`.

    Bounded: :data:`MAX_PROVIDERS_PER_KEY` a key (the record that expires first gives way
    to a new provider), :data:`MAX_PROVIDER_RECORDS` in all.  While the store is full of live
    records, a record from a new provider takes the room of the oldest record of the peer
    holding the most (if that peer holds more than the newcomer would): one peer, or a few
    sybil ids, cannot fill the store and lock every other provider out for 48 h.  Expired
    records are swept when the store is full, at most once every :data:`SWEEP_EVERY`
    seconds (a sweep walks every key)."""

    def __init__(self, ttl: float = PROVIDER_TTL, per_key: int = MAX_PROVIDERS_PER_KEY,
                 total: int = MAX_PROVIDER_RECORDS,
                 clock: Any = time.monotonic) -> None:
        self.ttl, self.per_key, self.total = ttl, per_key, total
        self._clock = clock
        self._keys: dict[bytes, dict[bytes, tuple[float, list[Any]]]] = {}
        # each peer's keys, oldest first: whose record gives way when the store is full
        self._of_peer: dict[bytes, OrderedDict[bytes, None]] = {}
        self._count = 0
        self._next_sweep = -float("inf")

    def _drop(self, key: bytes, peer: bytes) -> None:
        records = self._keys.get(key, {})
        if records.pop(peer, None) is None:
            return
        self._count -= 1
        if not records:
            self._keys.pop(key, None)
        keys = self._of_peer.get(peer)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._of_peer[peer]

    def _expire(self, key: bytes, now: float) -> dict[bytes, tuple[float, list[Any]]]:
        for peer in [p for p, (until, _) in self._keys.get(key, {}).items() if until <= now]:
            self._drop(key, peer)
        return self._keys.get(key, {})

    def _make_room(self, peer_id: bytes, now: float) -> bool:
        """Room for one more record of ``peer_id`` in a full store: expired records swept
        (not too often), else the oldest record of the peer holding the most given up."""
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            for key in list(self._keys):
                self._expire(key, now)
            if self._count < self.total:
                return True
        hog = max(self._of_peer, key=lambda p: len(self._of_peer[p]))
        if len(self._of_peer[hog]) <= len(self._of_peer.get(peer_id, ())) + 1:
            return False  # the newcomer would hold as many as anyone: refused
        self._drop(next(iter(self._of_peer[hog])), hog)
        return True

    def add(self, key: bytes, peer_id: bytes, addrs: list[Any]) -> bool:
        """Record that ``peer_id`` provides ``key`` (at ``addrs``); False if refused."""
        now = self._clock()
        records = self._expire(key, now)
        if peer_id not in records:
            if len(records) >= self.per_key:
                self._drop(key, min(records, key=lambda p: records[p][0]))
            elif self._count >= self.total and not self._make_room(peer_id, now):
                return False
            self._count += 1
        self._keys.setdefault(key, {})[peer_id] = (now + self.ttl, list(addrs))
        keys = self._of_peer.setdefault(peer_id, OrderedDict())
        keys[key] = None
        keys.move_to_end(key)
        return True

    def get(self, key: bytes) -> list[tuple[bytes, list[Any]]]:
        """The live providers of ``key`` and the addresses each gave."""
        return [(peer, addrs) for peer, (_, addrs) in self._expire(key, self._clock()).items()]

    def __len__(self) -> int:
        return self._count


class Backoff:
    """Keys not to try again for a while: each for ``ttl`` seconds after it is
    :meth:`add`-ed.  Bounded: at most ``size`` keys, the one added longest ago forgotten
    first (a key is then tried sooner, no harm done)."""

    def __init__(self, ttl: float = CHECK_BACKOFF, size: int = MAX_BACKOFF,
                 clock: Any = time.monotonic) -> None:
        self.ttl, self.size = ttl, size
        self._clock = clock
        self._until: OrderedDict[Any, float] = OrderedDict()  # oldest first

    def add(self, key: Any) -> None:
        self._until[key] = self._clock() + self.ttl
        self._until.move_to_end(key)
        while len(self._until) > self.size:
            self._until.popitem(last=False)

    def __contains__(self, key: Any) -> bool:
        until = self._until.get(key)
        if until is not None and self._clock() >= until:
            del self._until[key]
            return False
        return until is not None

    def __len__(self) -> int:
        return len(self._until)


class _Announcer:
    """Announcing in the background (:meth:`provide_soon`) and on a schedule
    (:meth:`reprovide`) through ``self.provide``: shared by :class:`Dht` and
    :class:`DualDht`."""

    _node: Any
    stats: dict[str, int]

    async def provide(self, cid: CID) -> int:
        raise NotImplementedError

    def _init_announcer(self) -> None:
        # provide_soon's queue: CIDs in arrival order, announced one at a time by one task
        self._pending: dict[str, None] = {}
        self._pending_lock = threading.Lock()
        self._draining = False

    def provide_soon(self, cids: Iterable[str]) -> int:
        """Announce ``cids`` (text CIDs) in the background, off the caller's path: from any
        thread, without waiting.  One task on the host's thread announces them one after
        another, in order; at most :data:`MAX_PENDING_PROVIDES` wait, and one more is dropped
        (counted in ``stats["dropped_provides"]``: the reprovide schedule announces what is
        pinned anyway).  How many were queued (0 if the host has stopped)."""
        queued = 0
        with self._pending_lock:
            for text in cids:
                if text in self._pending:
                    continue
                if len(self._pending) >= MAX_PENDING_PROVIDES:
                    self.stats["dropped_provides"] += 1
                    continue
                self._pending[text] = None
                queued += 1
            start = bool(self._pending) and not self._draining
            self._draining = self._draining or start
        if start:
            try:
                self._node.submit(self._drain)
            except Exception:  # the host has stopped: nobody to tell
                with self._pending_lock:
                    self._pending.clear()
                    self._draining = False
                return 0
        return queued

    async def _drain(self) -> None:
        while True:
            with self._pending_lock:
                if not self._pending:
                    self._draining = False
                    return
                text = next(iter(self._pending))
                del self._pending[text]
            try:
                self.stats["provided"] += bool(await self.provide(CID.parse(text)))
            except Exception:  # a bad CID, a lookup that failed: the next round tries again
                self.stats["failed"] += 1

    def reprovide(self, roots: Callable[[], Iterable[str]],
                  interval: float | None = REPROVIDE_INTERVAL,
                  first: float | None = None) -> None:
        """Announce the CIDs ``roots()`` names (what the node pins; called on a worker
        thread) every ``interval`` seconds while the host runs (None: only the first round),
        the first round ``first`` seconds after it starts (None: ``min(interval,
        REPROVIDE_FIRST)``; `ww daemon`'s: 0, at once).  A round announces at most
        :data:`MAX_REPROVIDE` CIDs, :data:`REPROVIDE_AT_ONCE` at a time; the next round
        starts ``interval`` after it ends, so rounds never overlap."""
        if first is None:
            first = min(interval if interval is not None else REPROVIDE_FIRST, REPROVIDE_FIRST)

        async def start() -> None:
            self._node.submit(self._reprovide, roots, interval, first)  # ends with the host

        self._node.when_started(start)

    async def _reprovide(self, roots: Callable[[], Iterable[str]], interval: float | None,
                         first: float) -> None:
        import itertools

        import trio

        await trio.sleep(first)  # the schedule, not a wait
        while True:
            cids = await trio.to_thread.run_sync(
                lambda: list(itertools.islice(roots(), MAX_REPROVIDE)))
            await self._reprovide_round(cids)
            if interval is None:
                return
            await trio.sleep(interval)

    async def _reprovide_round(self, cids: list[str]) -> None:
        """Announce ``cids``, :data:`REPROVIDE_AT_ONCE` at a time (one at a time, peers that
        stall every request until it times out made 10 000 take days)."""
        import trio

        queue = iter(cids)

        async def worker() -> None:
            for text in queue:
                try:
                    self.stats["reprovided"] += bool(await self.provide(CID.parse(text)))
                except Exception:  # a bad CID in the pin set, a lookup that failed
                    self.stats["failed"] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(REPROVIDE_AT_ONCE):
                nursery.start_soon(worker)


class DialFailed(ConnectionError):
    """No connection to a peer could be made: no address, refused, unreachable, no handshake
    within :data:`RPC_TIMEOUT` (a process stopped: the kernel takes the connection, nothing
    answers), refused by the dial policy."""


async def _reset(stream: Any) -> None:
    """Reset ``stream`` (a request given up), within :data:`RPC_TIMEOUT`; run in the host's
    nursery, so it ends with the host."""
    import trio

    with trio.move_on_after(RPC_TIMEOUT):
        try:
            await stream.reset()
        except Exception:  # the connection went meanwhile
            pass


class Dht(_Announcer):
    """One DHT (``protocol``) on a ww libp2p host: provider lookups and announcements,
    starting from the ``bootstrap`` peers (``/ip4/../tcp/../p2p/<id>``) and the peers this
    host is connected to that serve ``protocol`` and have an address in its scope.  Its
    coroutines run on the host's thread.  A run uses two, as kubo does: :class:`DualDht`."""

    def __init__(self, node: Any, bootstrap: Iterable[str] = (),
                 protocol: str = LAN_PROTOCOL, max_contacted: int = MAX_CONTACTED,
                 server: bool = False, *, scope: Scope | None = None) -> None:
        """``server``: answer other peers' queries on ``protocol`` too and keep their
        provider records (kubo's ``dhtserver``); set before the host starts.  ``scope``: the
        addresses this DHT keeps and dials (default: :func:`lan_scope` for
        :data:`LAN_PROTOCOL`, else :func:`wan_scope`)."""
        self._node = node
        self._max_contacted = max_contacted
        self.protocol = protocol
        self._in_scope: Scope = scope or (lan_scope if protocol == LAN_PROTOCOL
                                          else wan_scope)
        self._bootstrap = list(bootstrap)
        self.stats = {"rpcs": 0, "failed": 0, "wrong_reply": 0, "dropped_addrs": 0,
                      "answered": 0, "refused": 0, "wrong_provider": 0, "reprovided": 0,
                      "provided": 0, "dropped_provides": 0, "not_servers": 0,
                      "backed_off": 0}
        # the peers serving the DHT this host has met, with an address in its scope, kept
        # for the whole run
        self.table = RoutingTable(decode_peer_id(str(node.peer_id)))
        self.server = server
        self.providers = ProviderStore() if server else None
        self._init_announcer()
        self._checks: Any = None  # trio channel of peers to check for the table (server)
        self._checking: set[Any] = set()
        self._backoff = Backoff()  # peers whose check did not admit them, for a while
        self._inbound_streams: dict[Any, list[Any]] = {}  # open inbound, by peer, oldest 1st
        if server:
            node.add_protocol(protocol, self._inbound, self._setup)
            node.when_identified(self._consider)  # a peer serving the DHT may join the table

    # -- checking what peers say -------------------------------------------------------------

    def _peer(self, pb: Any, loopback: bool = True) -> _Peer | None:
        """A peer of a reply, its id and addresses checked; None if its id is not one.
        ``loopback``: the peer that named it was reached over loopback; if not, a loopback
        address it names is dropped (it would be the asker's own: go-libp2p's identify
        keeps loopback addresses only from peers on loopback)."""
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
                # py-multiaddr checks bytes only when printed: a truncated address would
                # pass here, then fail every later use (the lookup that returns it)
                addr = multiaddr.Multiaddr(str(multiaddr.Multiaddr(bytes(raw))))
            except Exception:
                self.stats["dropped_addrs"] += 1
                continue
            ip = _ip_of(addr)
            if ip is None or not self._in_scope(ip) or (ip.is_loopback and not loopback):
                self.stats["dropped_addrs"] += 1
                continue
            addrs.append(addr)
        return _Peer(peer_id, addrs)

    def _scoped(self, addrs: Iterable[Any]) -> list[Any]:
        """Those of ``addrs`` in this DHT's scope."""
        return [a for a in addrs if (ip := _ip_of(_strip_p2p(a))) is not None
                and self._in_scope(ip)]

    def _member_addrs(self, peer_id: Any) -> list[Any]:
        """:meth:`_known_addrs` of a connected peer this DHT would ask or keep in its table:
        none unless a connection to it has its far end in scope.

        What identify says is the peer's own claim: a peer reached over the internet that
        claimed a LAN address was asked by the LAN DHT, which then dialled the LAN addresses
        it named (an internal network probed from outside).  As kubo's routing table filters
        (go-libp2p-kad-dht's ``PrivateRoutingTableFilter``, ``PublicRoutingTableFilter``),
        the connection decides which DHT a connected peer belongs to."""
        return self._known_addrs(peer_id) if self._connected_in_scope(peer_id) else []

    def _connected_in_scope(self, peer_id: Any) -> bool:
        """Whether a connection of the host's to ``peer_id`` has its far end in scope."""
        return any((ip := _far_ip(conn.muxed_conn)) is not None and self._in_scope(ip)
                   for conn in self._node.host.get_network().get_connections(peer_id))

    def _serves(self, peer_id: Any) -> bool | None:
        """Whether ``peer_id`` serves this DHT's protocol, as its identify said; None if
        identify has told nothing of it yet."""
        try:
            protocols = [str(p) for p in self._node.host.get_peerstore().get_protocols(peer_id)]
        except Exception:  # not in the peerstore
            return None
        return self.protocol in protocols if protocols else None

    def _over_loopback(self, peer_id: Any) -> bool:
        """Whether the host's connection to ``peer_id`` is over loopback (False if none)."""
        conns = self._node.host.get_network().get_connections(peer_id)
        return bool(conns) and _loopback_end(conns[0].muxed_conn)

    # -- the wire --------------------------------------------------------------------------

    async def _rpc(self, peer: _Peer, message: Any, reply: bool = True) -> Any:
        """Send ``message`` to ``peer`` on a stream of its own; its reply, or None (no reply
        wanted).  Dials ``peer`` at its checked addresses if not connected: :class:`DialFailed`
        if no connection can be made (no address, refused, unreachable, no handshake within
        :data:`RPC_TIMEOUT`, the dial policy).  The stream is closed once answered (reset if the
        close fails: the answer stands), reset if given up."""
        import trio
        from libp2p.peer.peerinfo import PeerInfo as LibPeerInfo

        network = self._node.host.get_network()
        self.stats["rpcs"] += 1
        dialling = False
        try:
            with trio.fail_after(RPC_TIMEOUT):
                if not open_connections(network, peer.id):  # closing ones: dial anew
                    dialling = True
                    if not peer.addrs:
                        raise ConnectionError(f"no address in scope for {peer.id}")
                    await self._node.dial(LibPeerInfo(peer.id, peer.addrs))
                    dialling = False
                return await self._exchange(peer, message, reply)
        except Exception as e:  # a cancellation (the lookup ended) is no failure of the peer
            if dialling:  # refused, unreachable, no handshake within RPC_TIMEOUT, the policy
                raise DialFailed(f"cannot connect to {peer.id}: {e}") from e
            raise

    async def _exchange(self, peer: _Peer, message: Any, reply: bool) -> Any:
        """:meth:`_rpc`'s request and reply, over a connection the host has."""
        import varint
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        stream = await self._node.host.new_stream(peer.id, [self.protocol])
        try:
            data = message.SerializeToString()
            await stream.write(varint.encode(len(data)) + data)
            answer = None
            if reply:
                answer = Message()
                answer.ParseFromString(await read_varint_prefixed_bytes_limited(
                    stream, MAX_MESSAGE))
        except BaseException:
            # given up (a failure, a timeout, a lookup cancelled): reset, or the peer
            # counts the stream as ours until it idles out -- in the host's nursery, not
            # here: a reset waits on the connection's writes, which a peer that stops
            # reading holds up, and the request must end when given up
            self._node.submit(_reset, stream)
            raise
        try:
            await stream.close()
        except BaseException as e:  # an answer received is an answer: the stream is reset
            self._node.submit(_reset, stream)
            if not isinstance(e, Exception):  # a cancellation goes on
                raise
        return answer

    async def _seeds(self, key: bytes) -> list[_Peer]:
        """Where a query starts: the :data:`K` peers of the routing table closest to ``key``,
        the bootstrap peers and the connected peers serving the protocol."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        seeds: dict[Any, _Peer] = {p.id: p for p in self.table.closest(key)}
        for text in self._bootstrap:
            info = info_from_p2p_addr(multiaddr.Multiaddr(text))
            seeds[info.peer_id] = _Peer(info.peer_id, list(info.addrs))
        host = self._node.host
        for conn in host.get_network().get_connections():
            peer_id = conn.muxed_conn.peer_id
            # a peer of this DHT: one with an address in its scope (kubo's query filters)
            if self._serves(peer_id) and peer_id not in seeds and (
                    addrs := self._member_addrs(peer_id)):
                seeds[peer_id] = _Peer(peer_id, addrs)
        return list(seeds.values())

    async def _lookup(self, key: bytes, kind: int, want_providers: int = 0,
                      target: Any = None, claims: list[_Peer] | None = None,
                      ) -> tuple[list[_Peer], dict[Any, _Peer]]:
        """Iterative lookup of ``key``: the closest peers that answered (at most :data:`K`) and
        the providers found (a ``GET_PROVIDERS`` lookup stops once ``want_providers``).  A
        ``FIND_NODE`` lookup of ``target`` stops once the target itself answered (it is then
        the first of the closest); what each peer said of it (one claim a peer, addresses
        unproven) is appended to ``claims``."""
        import trio
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        known: dict[Any, _Peer] = {}
        queried: set[Any] = set()
        answered: dict[Any, _Peer] = {}
        providers: dict[Any, _Peer] = {}
        claimed: set[Any] = set()  # the peers that said where ``target`` is
        me = self._node.host.get_id()

        def learn(peer: _Peer) -> None:
            if peer.id == me or peer.id in known or len(known) >= MAX_KNOWN:
                return
            kept = self.table.get(peer.id)
            if kept is not None and kept.addrs:  # what the table knows, not what others say:
                peer = _Peer(peer.id, list(kept.addrs))  # failures would remove it
            peer.distance = _distance(peer.id.to_bytes(), key)
            known[peer.id] = peer

        for seed in await self._seeds(key):
            learn(seed)

        async def ask(peer: _Peer) -> None:
            request = Message(type=kind, key=key)
            try:
                answer = await self._rpc(peer, request)
            except Exception as e:
                self.stats["failed"] += 1
                if isinstance(e, DialFailed):  # gone, or stopped: go-libp2p-kad-dht's rule
                    self.table.remove(peer.id)
                else:  # over a live connection: busy, slow, closing; MAX_FAILURES in a row
                    self.table.failed(peer.id)
                return
            if answer.type != kind or (answer.key and bytes(answer.key) != key):
                # A reply to another question (kubo and js-libp2p echo the key, rust-libp2p
                # leaves it out): what it names is not about ``key``.
                self.stats["wrong_reply"] += 1
                self.table.remove(peer.id)
                return
            answered[peer.id] = peer
            self.table.answered(peer.id)  # its failures in a row end here, kept or not
            loopback = self._over_loopback(peer.id)
            # the table keeps a peer only at addresses in this DHT's scope: a peer reached
            # over the LAN goes into the LAN DHT's table, one with a public address into
            # the WAN DHT's (kubo's routing table filters)
            kept = self._scoped(peer.addrs) or self._member_addrs(peer.id)
            if kept:
                self.table.add(_Peer(peer.id, kept))
            for pb in list(answer.providerPeers)[:MAX_PEERS_PER_REPLY]:
                found = self._peer(pb, loopback)
                if found is not None and found.id != me and (
                        found.addrs or found.id not in providers):
                    if found.id == peer.id and not found.addrs:
                        found.addrs = peer.addrs
                    providers[found.id] = found
            for pb in list(answer.closerPeers)[:MAX_PEERS_PER_REPLY]:
                found = self._peer(pb, loopback)
                if found is not None and found.addrs:
                    if found.id == target and claims is not None and len(claims) < MAX_CLAIMS \
                            and peer.id not in claimed and all(c.addrs != found.addrs
                                                               for c in claims):
                        claimed.add(peer.id)  # one claim a peer
                        claims.append(_Peer(found.id, list(found.addrs)))
                    learn(found)

        with trio.move_on_after(QUERY_TIMEOUT):
            while len(queried) < self._max_contacted:
                if want_providers and len(providers) >= want_providers:
                    break
                if target is not None and target in answered:
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
        ``limit``).  A provider named without an address in scope is looked up
        (``FIND_NODE``, at most :data:`FIND_PROVIDER_ADDRS` of them, within
        :data:`QUERY_TIMEOUT` together); one still without an address is left out."""
        import trio
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        _, providers = await self._lookup(cid.multihash, Message.GET_PROVIDERS, limit)
        bare = [p for p in providers.values() if not p.addrs][:FIND_PROVIDER_ADDRS]
        if bare and len(providers) - len(bare) < limit:

            async def locate(peer: _Peer) -> None:
                known = self.table.get(peer.id)
                if known is not None and known.addrs:
                    peer.addrs = list(known.addrs)
                    return
                peer.addrs = await self._addrs_of(peer.id)

            with trio.move_on_after(QUERY_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for peer in bare:
                        nursery.start_soon(locate, peer)
        found = [PeerInfo(id=p.id.to_base58(), addresses=[str(a) for a in p.addrs],
                          protocols=[]) for p in providers.values() if p.addrs]
        return found[:limit]

    async def provide(self, cid: CID) -> int:
        """Tell the :data:`K` peers closest to ``cid`` that this host provides it, at its
        listening addresses in scope; how many were told."""
        import trio
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        host = self._node.host
        addrs = self._scoped(host.get_addrs())
        if not addrs:
            return 0
        if self.providers is not None:  # a server answers for itself too
            self.providers.add(cid.multihash, host.get_id().to_bytes(),
                               [_strip_p2p(a) for a in addrs])
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
        from libp2p.peer.id import ID

        return [str(a) for a in await self._addrs_of(ID.from_base58(peer_id))]

    async def _addrs_of(self, target: Any) -> list[Any]:
        """Where ``target`` is, by a ``FIND_NODE`` lookup: where it answered the lookup, else
        the first of what peers said of it (at most :data:`MAX_CLAIMS`, in the order heard)
        at which it can be connected to (Noise proves its id); empty if none.  A peer that
        names it at a wrong address (a liar, an old record) does not end the search."""
        import trio
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.peerinfo import PeerInfo as LibPeerInfo

        claims: list[_Peer] = []
        closest, _ = await self._lookup(target.to_bytes(), Message.FIND_NODE, target=target,
                                        claims=claims)
        if closest and closest[0].id == target and closest[0].addrs:
            return list(closest[0].addrs)
        for claim in claims:
            try:
                with trio.fail_after(RPC_TIMEOUT):
                    await self._node.dial(LibPeerInfo(target, claim.addrs))
                return list(claim.addrs)
            except Exception:  # a wrong address, refused by the dial policy, unreachable
                self.stats["failed"] += 1
        return []

    async def find_node(self, peer_id: str) -> list[PeerInfo]:
        """The closest peers to ``peer_id`` that answered a ``FIND_NODE`` lookup."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.id import ID

        closest, _ = await self._lookup(ID.from_base58(peer_id).to_bytes(), Message.FIND_NODE)
        return [PeerInfo(id=p.id.to_base58(), addresses=[str(a) for a in p.addrs],
                         protocols=[]) for p in closest]

    # -- server mode (``dhtserver``) -------------------------------------------------------

    def _known_addrs(self, peer_id: Any) -> list[Any]:
        """The addresses in scope the host's peerstore has for ``peer_id`` (from identify)."""
        try:
            addrs = list(self._node.host.get_peerstore().addrs(peer_id))
        except Exception:
            return []
        loopback = self._over_loopback(peer_id)
        return [a for a in addrs[:MAX_ADDRS_PER_PEER]
                if (ip := _ip_of(_strip_p2p(a))) is not None and self._in_scope(ip)
                and (loopback or not ip.is_loopback)]

    async def _setup(self) -> None:
        """On the host's thread as it starts: check for the routing table each peer that
        identify says serves the DHT (:meth:`_consider`), then join the DHT (bootstrap peers,
        a lookup of our own id)."""
        import trio

        send, receive = trio.open_memory_channel[Any](64)
        self._checks = send
        self._node.submit(self._maintain, receive)  # on the host's nursery: ends with it

    async def _maintain(self, receive: Any) -> None:
        import trio
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        async with trio.open_nursery() as nursery:
            if self._bootstrap:  # join: the lookup fills the table and makes us known
                nursery.start_soon(self._lookup, self._node.host.get_id().to_bytes(),
                                   Message.FIND_NODE)
            async for peer_id in receive:
                nursery.start_soon(self._check, peer_id)

    def _consider(self, peer_id: Any) -> None:
        """Check ``peer_id`` for the routing table soon (on the host's thread), if it serves
        this DHT (go-libp2p-kad-dht's rule): identify says it serves the protocol, and it is
        connected in scope at an address in scope.  A client, which asks and does not answer,
        is never checked (``stats["not_servers"]``); nor a peer identify has told nothing of
        yet: identify calls this again when it has (:meth:`Node.when_identified`).  Nothing
        to do either for a peer already there, or being checked, or whose check did not
        admit it in the last :data:`CHECK_BACKOFF` seconds (``stats["backed_off"]``), or
        with :data:`MAX_CHECKS` checks at a time."""
        import trio

        if (self._checks is None or peer_id in self._checking
                or len(self._checking) >= MAX_CHECKS or self.table.get(peer_id) is not None):
            return
        serves = self._serves(peer_id)
        if not serves:
            self.stats["not_servers"] += serves is False
            return
        if peer_id in self._backoff:
            self.stats["backed_off"] += 1
            return
        if not self._member_addrs(peer_id):
            return
        self._checking.add(peer_id)
        try:
            self._checks.send_nowait(peer_id)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._checking.discard(peer_id)

    async def _check(self, peer_id: Any) -> None:
        """A peer joins the table once it answers a ``FIND_NODE`` on the DHT's protocol
        (as go-libp2p-kad-dht checks a peer), at its addresses in scope."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        admitted = False
        try:
            answer = await self._rpc(_Peer(peer_id), Message(
                type=Message.FIND_NODE, key=self._node.host.get_id().to_bytes()))
            addrs = self._member_addrs(peer_id)
            if answer.type == Message.FIND_NODE and addrs:
                admitted = self.table.add(_Peer(peer_id, addrs))
        except Exception:
            self.stats["failed"] += 1
        finally:
            self._checking.discard(peer_id)
            if not admitted:  # not checked again for a while, however often it asks
                self._backoff.add(peer_id)

    async def _inbound(self, stream: Any) -> None:
        """Answer a peer's requests on one stream: at most :data:`MAX_REQUESTS_PER_STREAM`,
        each at most :data:`MAX_MESSAGE` bytes, the stream closed after
        :data:`INBOUND_IDLE` seconds without one.  A peer has at most
        :data:`MAX_INBOUND_PER_PEER` such streams at a time (a stream beyond is reset at
        once), all peers :data:`MAX_INBOUND` (Yamux sets no limit): when all are taken, a
        newcomer's stream takes the place of the oldest stream of the peer holding the most,
        if that peer holds more than the newcomer would; otherwise it is reset."""
        import trio

        requester = stream.muxed_conn.peer_id
        open_ = self._inbound_streams
        mine = open_.setdefault(requester, [])
        evicted = None
        if len(mine) < MAX_INBOUND_PER_PEER and sum(map(len, open_.values())) >= MAX_INBOUND:
            hog = max(open_.values(), key=len)
            if len(hog) > len(mine) + 1:
                evicted = hog.pop(0)
        if len(mine) >= MAX_INBOUND_PER_PEER or (
                evicted is None and sum(map(len, open_.values())) >= MAX_INBOUND):
            if not mine:
                del open_[requester]
            evicted = stream
        if evicted is not None:
            self.stats["refused"] += 1
            with trio.move_on_after(RPC_TIMEOUT):
                await evicted.reset()
            if evicted is stream:
                return
        mine.append(stream)
        try:
            await self._serve(stream, requester)
        finally:
            if stream in mine:
                mine.remove(stream)
            if not mine and open_.get(requester) is mine:
                del open_[requester]

    async def _serve(self, stream: Any, requester: Any) -> None:
        import trio
        import varint
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        try:
            for _ in range(MAX_REQUESTS_PER_STREAM):
                with trio.move_on_after(INBOUND_IDLE):
                    try:
                        raw = await read_varint_prefixed_bytes_limited(stream, MAX_MESSAGE)
                    except Exception:  # the stream ended, or said too much
                        break
                    request = Message()
                    request.ParseFromString(raw)
                    answer = self._answer(requester, request, _loopback_end(stream))
                    if answer is None:
                        if request.type != Message.ADD_PROVIDER:
                            self.stats["refused"] += 1
                            await stream.reset()
                            return
                        continue
                    self.stats["answered"] += 1
                    data = answer.SerializeToString()
                    await stream.write(varint.encode(len(data)) + data)
                    self._consider(requester)  # a server asking us may join the table
                    continue
                break  # idle too long
            await stream.close()
        except Exception:  # a message that does not parse, a peer that went away
            self.stats["refused"] += 1
            with trio.move_on_after(RPC_TIMEOUT):
                await stream.reset()

    def _pb_peer(self, peer_id: Any, addrs: list[Any]) -> Any:
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        connected = bool(self._node.host.get_network().get_connections(peer_id))
        return Message.Peer(id=peer_id.to_bytes(),
                            addrs=[_strip_p2p(a).to_bytes() for a in addrs],
                            connection=Message.CONNECTED if connected
                            else Message.NOT_CONNECTED)

    def _closer(self, key: bytes, requester: Any) -> list[Any]:
        """The peers of the table closest to ``key``, with addresses; never the requester."""
        found = []
        for peer in self.table.closest(key, K + 1):
            if peer.id == requester:
                continue
            addrs = peer.addrs or self._known_addrs(peer.id)
            if addrs:
                found.append(self._pb_peer(peer.id, addrs))
        return found[:K]

    def _answer(self, requester: Any, request: Any, loopback: bool = True) -> Any:
        """The reply to ``request`` from ``requester``; None: no reply (``ADD_PROVIDER``),
        or refused (the stream is reset), as go-libp2p-kad-dht does."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.id import ID

        kind, key = request.type, bytes(request.key)
        me = self._node.host.get_id()
        if kind == Message.PING:
            return Message(type=Message.PING)
        if kind == Message.FIND_NODE:
            answer = Message(type=kind, key=key)
            if key == me.to_bytes():
                addrs = self._scoped(self._node.host.get_addrs())
                answer.closerPeers.append(self._pb_peer(me, addrs))
                return answer
            closer = self._closer(key, requester)
            try:  # a connected peer asked for by id is named too (go-libp2p-kad-dht does)
                target = ID(key)
            except Exception:
                target = None
            if target is not None and target != requester and all(
                    bytes(p.id) != key for p in closer) and \
                    self._node.host.get_network().get_connections(target):
                addrs = self._known_addrs(target)
                if addrs:
                    closer.append(self._pb_peer(target, addrs))
            answer.closerPeers.extend(closer)
            return answer
        if kind == Message.GET_VALUE:  # no record kept here: only closer peers
            answer = Message(type=kind, key=key)
            answer.closerPeers.extend(self._closer(key, requester))
            return answer
        if kind not in (Message.GET_PROVIDERS, Message.ADD_PROVIDER) or not key \
                or len(key) > MAX_KEY or self.providers is None:
            return None  # PUT_VALUE: no record type is accepted here (kubo's validators)
        if kind == Message.GET_PROVIDERS:
            answer = Message(type=kind, key=key)
            for raw, addrs in self.providers.get(key)[:MAX_PEERS_PER_REPLY]:
                answer.providerPeers.append(self._pb_peer(ID(raw), addrs))
            answer.closerPeers.extend(self._closer(key, requester))
            return answer
        for pb in list(request.providerPeers)[:MAX_PEERS_PER_REPLY]:
            if bytes(pb.id) != requester.to_bytes():  # a peer announces itself only
                self.stats["wrong_provider"] += 1
                continue
            peer = self._peer(pb, loopback)
            if peer is not None and peer.addrs:  # go-libp2p-kad-dht drops one without
                self.providers.add(key, bytes(pb.id), peer.addrs)
        return None


class DualDht(_Announcer):
    """kubo's dual DHT (go-libp2p-kad-dht's ``dual``): a :class:`Dht` on the LAN protocol
    (:attr:`lan`, private and loopback addresses) and one on the WAN protocol (:attr:`wan`,
    public addresses), each with its own routing table and bounds.  Lookups ask both at once
    and merge what they find; announcements go to both.  ``bootstrap`` peers go to the DHT
    whose scope their address is in (an address without an IP, such as ``/dns4``, to both).

    ``server`` (``--routing dhtserver``): the LAN DHT answers other peers' queries; the WAN
    DHT only if the host is told to listen on an address in the WAN scope (a public
    address): a host nobody on the internet can reach is not named to others (kubo's WAN
    DHT is in server mode only when it believes itself publicly reachable).  Else both are
    clients.

    ``scopes`` (LAN, WAN): which addresses each DHT keeps; the default is kubo's
    (:func:`lan_scope`, :func:`wan_scope`).  Tests, which may dial no public address, pass
    a stand-in that splits loopback in two."""

    def __init__(self, node: Any, bootstrap: Iterable[str] = (), server: bool = False, *,
                 max_contacted: int = MAX_CONTACTED,
                 scopes: tuple[Scope, Scope] = (lan_scope, wan_scope)) -> None:
        lan, wan = scopes
        boot = list(bootstrap)
        public = any(_scope_of(a, wan) for a in node.listen_addrs)
        self._node = node
        self.lan = Dht(node, [b for b in boot if _scope_of(b, lan) is not False],
                       LAN_PROTOCOL, max_contacted, server, scope=lan)
        self.wan = Dht(node, [b for b in boot if _scope_of(b, wan) is not False],
                       WAN_PROTOCOL, max_contacted, server and public, scope=wan)
        self.stats = {"failed": 0, "reprovided": 0, "provided": 0, "dropped_provides": 0}
        self._init_announcer()

    @property
    def dhts(self) -> tuple[Dht, Dht]:
        return self.lan, self.wan

    async def _both(self, call: Callable[[Dht], Any],
                    done: Callable[[Any], bool] = lambda result: False) -> list[Any]:
        """``call`` on both DHTs at once; their results in the order they came (a DHT that
        failed gives none; both failed: the first error).  Once a result is ``done``, the
        other call is cancelled."""
        import trio

        results: list[Any] = []
        errors: list[Exception] = []

        async with trio.open_nursery() as nursery:

            async def one(dht: Dht) -> None:
                try:
                    result = await call(dht)
                except Exception as e:  # the other DHT may still answer (kubo's rule)
                    errors.append(e)
                    return
                results.append(result)
                if done(result):
                    nursery.cancel_scope.cancel()

            for dht in self.dhts:
                nursery.start_soon(one, dht)
        if errors and not results:
            raise errors[0]
        return results

    async def find_providers(self, cid: CID, limit: int) -> list[PeerInfo]:
        """The providers of ``cid`` both DHTs find (at most ``limit``), each peer once with
        the addresses both gave (at most :data:`MAX_ADDRS_PER_PEER`); once one DHT alone has
        found ``limit``, the other lookup is cancelled (kubo's stops at the count)."""
        found = await self._both(lambda dht: dht.find_providers(cid, limit),
                                 lambda result: len(result) >= limit)
        merged: dict[str, PeerInfo] = {}
        for providers in found:
            for info in providers:
                seen = merged.get(info.id)
                if seen is None:
                    if len(merged) < limit:
                        merged[info.id] = PeerInfo(id=info.id, addresses=list(info.addresses),
                                                   protocols=[])
                    continue
                for addr in info.addresses:
                    if addr not in seen.addresses and len(seen.addresses) < MAX_ADDRS_PER_PEER:
                        seen.addresses.append(addr)
        return list(merged.values())

    async def provide(self, cid: CID) -> int:
        """Announce ``cid`` on both DHTs at once (each at this host's listening addresses in
        its scope; a DHT with none announces nothing); how many peers were told in all."""
        return sum(await self._both(lambda dht: dht.provide(cid)))

    async def find_peer(self, peer_id: str) -> list[str]:
        """Where ``peer_id`` is: the first address list either DHT finds (each proved by a
        connection to the peer, so the first answer is used and the other lookup
        cancelled); empty if neither knows."""
        from libp2p.peer.id import ID

        ID.from_base58(peer_id)  # a bad id fails once, here, not in each DHT
        found = await self._both(lambda dht: dht.find_peer(peer_id), bool)
        return next((addrs for addrs in found if addrs), [])


def _scope_of(addr: str, scope: Scope) -> bool | None:
    """Whether the IP of ``addr`` (a multiaddr, ``/p2p/..`` or not) is in ``scope``; None if
    it has none (``/dns4/..``, or not a multiaddr)."""
    import multiaddr

    try:
        ip = _ip_of(_strip_p2p(multiaddr.Multiaddr(addr)))
    except Exception:
        return None
    return None if ip is None else scope(ip)


def _far_ip(conn: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP at the far end of ``conn`` (a muxed connection or stream of py-libp2p's), None
    if unknown, read from its TCP socket as :func:`ww.p2p.admission._remote_ip` reads it:
    py-libp2p 0.8.1's ``get_remote_address`` gives None for every IPv6 socket (its peer name
    is a 4-tuple), which left every peer connected over IPv6 out of every DHT's scope.  A
    global IPv6 address comes as its /56's first address, in the same scope (no range the
    scopes tell apart is narrower than a /56)."""
    from ww.p2p.admission import _remote_ip

    tcp = conn  # down to py-libp2p's TCP stream: the one whose ``stream`` has a socket
    for _ in range(8):  # stream, muxed connection, session, noise, packets, raw, TCP
        if tcp is None or hasattr(getattr(tcp, "stream", None), "socket"):
            break
        tcp = next((getattr(tcp, a) for a in ("muxed_conn", "secured_conn", "conn",
                                               "read_writer", "read_write_closer", "stream")
                    if hasattr(tcp, a)), None)
    ip = _remote_ip(conn if tcp is None else tcp)
    try:
        return None if ip is None else ipaddress.ip_network(ip, strict=False).network_address
    except ValueError:
        return None


def _loopback_end(conn: Any) -> bool:
    """Whether the far end of ``conn`` (a connection or stream) is a loopback address."""
    ip = _far_ip(conn)
    return ip is not None and ip.is_loopback


def _strip_p2p(addr: Any) -> Any:
    """``addr`` without a trailing ``/p2p/<id>``."""
    import multiaddr

    text = str(addr)
    return multiaddr.Multiaddr(text.split("/p2p/")[0]) if "/p2p/" in text else addr


def new_router(bootstrap: Iterable[str], server: bool = False) -> Any:
    """How a ``ww.ipfs`` network makes its router on the host it has (``NewRouter``): kubo's
    dual DHT (:class:`DualDht`); ``server``: it answers other peers' queries too."""
    addrs = list(bootstrap)

    def make(node: Any) -> DualDht:
        return DualDht(node, addrs, server)

    return make
