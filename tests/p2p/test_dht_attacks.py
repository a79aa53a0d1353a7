"""Attacks on the DHT (ww.p2p.routing) by a hostile peer, each once a finding: the state a
server keeps for others, the routing table a lookup keeps, the streams a peer may hold.  Real
ww libp2p hosts on 127.0.0.1 where the wire matters; the tables alone for the bounds."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import varint
from libp2p.peer.id import ID

from tests.p2p.kubo_dht import script_in_namespace
from ww.core.cid import CID
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.routing import (
    LAN_PROTOCOL,
    MAX_INBOUND_PER_PEER,
    RPC_TIMEOUT,
    Dht,
    ProviderStore,
    _distance,
    _Peer,
)


def test_one_peer_cannot_fill_the_provider_store_and_lock_everyone_out() -> None:
    """A peer (or a few sybil ids) announcing a record for each of 10 000 random keys used to
    fill the store for 48 h: every other provider was refused.  When full, a newcomer's
    record takes the room of a record of the peer holding the most, so one peer can hold no
    more than its share; the hog itself gains nothing by adding more."""
    now = [0.0]
    store = ProviderStore(ttl=100.0, per_key=20, total=100, clock=lambda: now[0])
    for i in range(100):
        assert store.add(b"junk%d" % i, b"hog", [])
    assert len(store) == 100
    assert not store.add(b"junk-more", b"hog", [])  # the hog holds the most: refused
    for honest in (b"alice", b"bob", b"carol"):
        now[0] += 1.0
        assert store.add(b"real", honest, [])  # refused by the old store
    assert sorted(p for p, _ in store.get(b"real")) == [b"alice", b"bob", b"carol"]
    assert len(store) == 100  # still bounded
    # sybils: 4 ids of 25 records each fill it; an honest newcomer still gets in
    store = ProviderStore(ttl=100.0, per_key=20, total=100, clock=lambda: now[0])
    for i in range(100):
        assert store.add(b"k%d" % i, b"sybil%d" % (i % 4), [])
    assert store.add(b"real", b"alice", []) and len(store) == 100
    assert [p for p, _ in store.get(b"real")] == [b"alice"]
    # records of a key that gives way to newer ones leave no count behind
    now[0] += 200.0  # everything expired
    assert store.add(b"x", b"alice", []) and len(store) == 1


BOUND = 120.0  # a bound that only stops a hang
ROOT = Path(__file__).resolve().parents[2]


def _node(**kwargs: Any) -> Node:
    return Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.1/tcp/0"], serve_ww=False, announce=False,
                warn=lambda message: None, **kwargs)


def _ma(text: str) -> Any:
    import multiaddr

    return multiaddr.Multiaddr(text)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(**kwargs: Any) -> Node:
        made.append(_node(**kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for node in made:
            node.stop()


def _answering(answer: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any], Any]:
    """A DHT stream handler of a peer of ours (a stand-in for a hostile kubo peer): it reads
    one request, fills the reply (``await answer(request, reply)``) and sends it."""

    async def handle(stream: Any) -> None:
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        request = Message()
        request.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1 << 16))
        reply = Message(type=request.type, key=request.key)
        await answer(request, reply)
        data = reply.SerializeToString()
        await stream.write(varint.encode(len(data)) + data)
        await stream.close()

    return handle


def test_a_liar_cannot_evict_honest_peers_from_the_routing_table(
        nodes: Callable[..., Node]) -> None:
    """A peer answering a lookup names an honest peer of our routing table (one not among the
    20 closest to the key, so not a seed) at an address where nothing listens.  The old lookup
    dialled that address, failed, and removed the honest peer from the table: a liar could
    empty a table, bucket by bucket, for its sybils to fill.  Now a peer the table knows is
    dialled at the table's addresses, never at what a third peer says."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message

    closed = _closed_port()
    honest_node = nodes()
    honest = ID.from_base58(honest_node.peer_id)

    async def liar(request: Any, reply: Any) -> None:
        reply.closerPeers.add(id=honest.to_bytes(),
                              addrs=[_ma(f"/ip4/127.0.0.1/tcp/{closed}").to_bytes()])

    liar_node = nodes(handlers={LAN_PROTOCOL: _answering(liar)})
    victim = nodes()
    Dht(honest_node, server=True)
    for node in (honest_node, liar_node, victim):
        node.start()
    dht = Dht(victim, [liar_node.addrs[0]])
    honest_addr = _ma(honest_node.addrs[0].split("/p2p/")[0])
    assert dht.table.add(_Peer(honest, [honest_addr]))
    # a key far from the honest peer, and 20 table peers closer to it (nobody listens there)
    key = next(k for k in (secrets.token_bytes(34) for _ in range(1000))
               if _distance(honest.to_bytes(), k) >> 255)
    closer = 0
    while closer < 20:
        fake = ID.from_base58(PrivateKey.generate().peer_id)
        if _distance(fake.to_bytes(), key) < _distance(honest.to_bytes(), key):
            closer += dht.table.add(_Peer(fake, [_ma(f"/ip4/127.0.0.1/tcp/{closed}")]))
    victim.submit(dht._lookup, key, Message.FIND_NODE).result(BOUND)
    kept = dht.table.get(honest)
    assert kept is not None, "the liar evicted an honest peer from the routing table"
    assert kept.addrs == [honest_addr]


def test_one_peer_cannot_hold_more_than_its_share_of_inbound_dht_streams(
        nodes: Callable[..., Node]) -> None:
    """A peer opens 16 streams to a DHT server and keeps them open (a request each, then
    idle, or a message of 256 KiB sent a byte at a time).  The old server served every one
    (Yamux sets no limit), each for up to 32 requests of 256 KiB with 60 s between: as many
    streams, and as much memory, as the peer liked.  Now a peer has at most 8 streams at a
    time (all peers together 128): the others are reset at once, and the server still
    answers once the peer gives some up."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    server_node, attacker = nodes(), nodes()
    Dht(server_node, server=True)
    server_node.start()
    attacker.start()
    server = ID.from_base58(server_node.peer_id)
    ping = Message(type=Message.PING).SerializeToString()

    async def attack() -> tuple[int, int, bool]:
        import trio
        from libp2p.peer.peerinfo import info_from_p2p_addr

        await attacker.dial(info_from_p2p_addr(_ma(server_node.addrs[0])))
        streams = []
        held = reset = 0
        for _ in range(16):
            try:
                stream = await attacker.host.new_stream(server, [LAN_PROTOCOL])
                streams.append(stream)
                await stream.write(varint.encode(len(ping)) + ping)
                await read_varint_prefixed_bytes_limited(stream, 1024)
                held += 1  # answered, and the server waits for its next request
            except Exception:  # noqa: BLE001 - py-libp2p's stream errors: reset
                reset += 1
        # a fresh stream once the held ones are given up: the server still answers
        for stream in streams:
            await stream.reset()
        answered = False
        for _ in range(50):  # the server notices the resets: a bound, not a deadline
            try:
                stream = await attacker.host.new_stream(server, [LAN_PROTOCOL])
                await stream.write(varint.encode(len(ping)) + ping)
                answer = Message()
                answer.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1024))
                answered = answer.type == Message.PING
                break
            except Exception:  # noqa: BLE001 - still counted: try again
                await trio.sleep(0.1)
        return held, reset, answered

    held, reset, answered = attacker.submit(attack).result(BOUND)
    assert held <= MAX_INBOUND_PER_PEER, f"the server held {held} streams of one peer"
    assert reset == 16 - held and answered


def test_a_remote_peer_cannot_point_askers_at_their_own_loopback(tmp_path: Path) -> None:
    """A peer reached over the LAN (here at 10.99.0.1, an address the test gives the loopback
    interface of a namespace of its own) names a provider at ``127.0.0.1:5001``: a loopback
    address of the peer is nobody else's, so each asker would connect to a service of its own
    (kubo's RPC API, sshd)
    -- a `ww import` or `ww call` with no dial policy did, and a DHT server kept such an
    address from the announcer and handed it to every asker.  Now a loopback address is kept
    only from a peer reached over loopback (go-libp2p's identify keeps loopback addresses
    from such peers only); from one on loopback it is still kept."""
    out = script_in_namespace(tmp_path, "tests/p2p/dht_loopback.py")
    assert out["stored"] == [out["announcer"]]
    assert out["found"] == []
    assert out["liar_on_loopback"] == ["/ip4/127.0.0.1/tcp/5001"]


def _slow_dht(nodes: Callable[..., Node]) -> tuple[Node, Dht, list[int]]:
    """A started host, its DHT knowing one started peer that holds each lookup a while, and
    [lookups held now, the most at once]."""
    import trio

    active = [0, 0]

    async def slow(request: Any, reply: Any) -> None:
        active[0] += 1
        active[1] = max(active)
        await trio.sleep(0.5)  # holds the lookup a while: overlap, not a deadline
        active[0] -= 1

    peer_node = nodes(handlers={LAN_PROTOCOL: _answering(slow)})
    host = nodes()
    peer_node.start()
    host.start()
    return host, Dht(host, [peer_node.addrs[0]]), active


def test_a_cell_dialling_many_peer_ids_at_once_runs_few_lookups_at_a_time(
        nodes: Callable[..., Node]) -> None:
    """A cell may have thousands of calls in flight (the fd-3 flow limit counts bytes): 16
    `P2P.dial("/p2p/<peer id>")` at once for peers nobody knows were 16 DHT lookups at once,
    each up to 60 peers and 30 s (a cell could make its host flood the LAN with thousands).
    Now a cell's lookups run 4 at a time; the others wait their turn (flow control, not a
    failure), and each still ends in one line saying the DHT knows no address."""
    import asyncio

    from ww.caps.p2p import MAX_LOOKUPS, P2PServer
    from ww.core.errors import P2PError

    host, dht, active = _slow_dht(nodes)
    server = P2PServer(host, dht=dht)

    async def dial_all() -> list[BaseException | str]:
        wanted = [PrivateKey.generate().peer_id for _ in range(16)]
        return await asyncio.gather(*(server._locate(p) for p in wanted),
                                    return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(dial_all(), BOUND))
    assert all(isinstance(r, P2PError) and "knows no address" in str(r) for r in results)
    assert active[1] <= MAX_LOOKUPS, f"{active[1]} lookups at once"


def test_a_cell_logging_in_with_many_identities_still_runs_few_lookups_at_a_time(
        nodes: Callable[..., Node]) -> None:
    """attack: the bound above was per capability server, and the host makes one per
    identity a cell logs in with (any identity is let in without --allow): a cell logging in
    with fresh keys ran 4 lookups more for each.  The servers of one cell share its lookups
    (``ww.app.build``): 4 identities, 16 dials, still 4 at once."""
    import asyncio

    from ww.app.build import capability_factories
    from ww.caps.p2p import MAX_LOOKUPS
    from ww.core.errors import P2PError
    from ww.host.denied import Caller

    host, dht, active = _slow_dht(nodes)
    make = capability_factories(["p2p"], None, lambda: None,  # type: ignore[arg-type,return-value]
                                node=host, dht=dht)["p2p"]

    async def dial_all() -> list[BaseException | str]:
        servers = [make(None, Caller(PrivateKey.generate().peer_id), {})  # type: ignore[arg-type]
                   for _ in range(4)]
        wanted = [(s, PrivateKey.generate().peer_id) for s in servers for _ in range(4)]
        return await asyncio.gather(*(s._locate(p) for s, p in wanted),  # type: ignore[attr-defined]
                                    return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(dial_all(), BOUND))
    assert all(isinstance(r, P2PError) and "knows no address" in str(r) for r in results)
    assert active[1] <= MAX_LOOKUPS, f"{active[1]} lookups at once"


def test_a_liar_naming_the_peer_looked_up_at_a_wrong_address_does_not_end_the_lookup(
        nodes: Callable[..., Node]) -> None:
    """Looking a peer id up (a cell's `P2P.dial("/p2p/<id>")`, a provider without address):
    the first peer to answer names the target at an address where nothing listens, and an
    honest DHT server it names too.  The old lookup stopped at the first peer naming the
    target and returned what it said: one liar on the path made every dial of that peer
    fail.  Now the lookup goes on; what each peer said of the target is tried (a connection
    proves the id: Noise), and the first that connects is returned."""
    from libp2p.peer.peerinfo import info_from_p2p_addr

    closed = _closed_port()
    target, honest_node = nodes(), nodes()
    Dht(honest_node, server=True)
    target.start()
    honest_node.start()
    honest_addr = honest_node.addrs[0].split("/p2p/")[0]

    async def liar(request: Any, reply: Any) -> None:
        reply.closerPeers.add(id=ID.from_base58(target.peer_id).to_bytes(),
                              addrs=[_ma(f"/ip4/127.0.0.1/tcp/{closed}").to_bytes()])
        reply.closerPeers.add(id=ID.from_base58(honest_node.peer_id).to_bytes(),
                              addrs=[_ma(honest_addr).to_bytes()])

    liar_node = nodes(handlers={LAN_PROTOCOL: _answering(liar)})
    asker = nodes()
    liar_node.start()
    asker.start()
    # the target is connected to the honest server, which names it to whoever asks
    target.submit(target.dial, info_from_p2p_addr(_ma(honest_node.addrs[0]))).result(BOUND)
    dht = Dht(asker, [liar_node.addrs[0]])
    found = asker.submit(dht.find_peer, target.peer_id).result(BOUND)
    assert found == [target.addrs[0].split("/p2p/")[0]]


def test_providers_that_cannot_be_reached_do_not_hide_one_that_can(
        tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """A DHT peer answers GET_PROVIDERS with three made-up providers at an address where
    nothing listens, then the real one.  The old fetch took the first three the DHT named,
    failed to reach any and gave up ("none of the 3 provider(s) ... could be reached"): three
    lies hid every real provider.  Now the search goes down the list until three providers
    are connected (or the list, at most 20, ends) and the block arrives."""
    from ww.ipfs.node import EmbeddedNode
    from ww.p2p import host_for_ipfs
    from ww.p2p.routing import new_router

    closed = _closed_port()
    provider = EmbeddedNode(tmp_path / "provider", new_host=host_for_ipfs())
    made = [provider]
    try:
        info = provider.listen(["/ip4/127.0.0.1/tcp/0"])
        cid = provider.put_block(b"what the real provider has", codec=0x55)
        where = _ma(info.addresses[0].split("/p2p/")[0]).to_bytes()

        async def liar(request: Any, reply: Any) -> None:
            for _ in range(3):
                reply.providerPeers.add(
                    id=ID.from_base58(PrivateKey.generate().peer_id).to_bytes(),
                    addrs=[_ma(f"/ip4/127.0.0.1/tcp/{closed}").to_bytes()])
            reply.providerPeers.add(id=ID.from_base58(info.id).to_bytes(), addrs=[where])

        liar_node = nodes(handlers={LAN_PROTOCOL: _answering(liar)})
        liar_node.start()
        fetcher = EmbeddedNode(tmp_path / "fetcher", new_host=host_for_ipfs(),
                               router=new_router([liar_node.addrs[0]]))
        made.append(fetcher)
        fetcher.listen(["/ip4/127.0.0.1/tcp/0"])
        assert fetcher.block(cid) == b"what the real provider has"
    finally:
        for node in made:
            node.close()


def test_peers_holding_every_inbound_dht_stream_do_not_shut_out_a_newcomer(
        nodes: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """All inbound DHT streams taken (128: 16 sybil ids of 8 streams; here the total is
    lowered to 8 so that one peer fills it): the old server reset every other peer's stream
    while the hog kept its own open.  Now a newcomer's stream takes the place of the oldest
    stream of the peer holding the most, if that peer holds more than the newcomer would."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    from ww.p2p import routing

    monkeypatch.setattr(routing, "MAX_INBOUND", MAX_INBOUND_PER_PEER)
    server_node, hog, newcomer = nodes(), nodes(), nodes()
    Dht(server_node, server=True)
    for node in (server_node, hog, newcomer):
        node.start()
    server = ID.from_base58(server_node.peer_id)
    ping = Message(type=Message.PING).SerializeToString()

    async def pinged(node: Node, count: int) -> int:
        """Streams opened that the server answered a PING on (and keeps open)."""
        await node.dial(info_from_p2p_addr(_ma(server_node.addrs[0])))
        answered = 0
        for _ in range(count):
            try:
                stream = await node.host.new_stream(server, [LAN_PROTOCOL])
                await stream.write(varint.encode(len(ping)) + ping)
                await read_varint_prefixed_bytes_limited(stream, 1024)
                answered += 1
            except Exception:  # noqa: BLE001 - py-libp2p's stream errors: reset
                pass
        return answered

    assert hog.submit(pinged, hog, MAX_INBOUND_PER_PEER).result(BOUND) == MAX_INBOUND_PER_PEER
    assert newcomer.submit(pinged, newcomer, 1).result(BOUND) == 1


def test_a_stalling_peer_does_not_make_a_reprovide_round_go_one_cid_at_a_time(
        nodes: Callable[..., Node]) -> None:
    """A DHT peer that holds every request until the asker gives up (10 s) made each CID of a
    reprovide round cost a lookup's worth of timeouts, one CID after another: 10 000 pins
    took days, longer than the 48 h a record lives.  Now a round announces several CIDs at
    a time.  The stalling peer here lets requests go once two are held at once (else after
    8 s, within the asker's timeout), so the old one-at-a-time round shows as one held at
    most."""
    import trio

    held = [0, 0]  # requests held now, the most at once
    both: list[Any] = []  # the event, made on the peer's own thread

    async def stall(request: Any, reply: Any) -> None:
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        if request.type != Message.FIND_NODE:  # the lookups stall, not the announcements
            return
        if not both:
            both.append(trio.Event())
        held[0] += 1
        held[1] = max(held)
        if held[0] >= 2:
            both[0].set()
        with trio.move_on_after(0.8 * RPC_TIMEOUT):  # a bound, within the asker's timeout
            await both[0].wait()
        held[0] -= 1

    peer_node = nodes(handlers={LAN_PROTOCOL: _answering(stall)})
    host = nodes()
    peer_node.start()
    host.start()
    dht = Dht(host, [peer_node.addrs[0]])
    cids = [str(CID.parse("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")),
            "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"]
    host.submit(dht._reprovide_round, cids).result(BOUND)
    assert held[1] >= 2, "the round announced one CID at a time"


def _socket_of(conn: Any) -> Any:
    """The TCP socket under a py-libp2p connection (Yamux over Noise over TCP)."""
    seen = [conn]
    for _ in range(12):  # a bounded walk down the layers
        layer = seen[-1]
        if hasattr(layer, "socket") and hasattr(layer.socket, "fileno"):
            return layer.socket
        below = next((getattr(layer, name) for name in (
            "secured_conn", "conn", "read_writer", "read_write_closer", "stream")
            if getattr(layer, name, None) is not None), None)
        if below is None:
            break
        seen.append(below)
    raise AssertionError(f"no socket under {conn!r}")


def test_a_peer_that_stops_reading_cannot_hold_up_a_request_given_up(
        nodes: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """(attack on wip/dhtflake's reset of a stream given up) A peer takes our DHT request,
    sends a flood of Yamux pings (each answered by the asker's connection) and stops reading,
    as a stopped process: the asker's writes on that connection wait for a socket that never
    drains.  The request given up (cancelled: a dual lookup ends the other DHT's, a lookup
    reaches its QUERY_TIMEOUT, the host stops) reset its stream in a shielded scope, waiting
    on those writes for up to RPC_TIMEOUT more: a lookup's 30 s became 40 s, a stop waited,
    every request to such a peer cost two RPC_TIMEOUTs.  Here RPC_TIMEOUT is set far beyond
    the bound, so the old wait shows as a hang; now the request ends when given up and the
    reset goes on in the host's nursery, bounded by RPC_TIMEOUT."""
    import fcntl
    import select
    import struct
    import termios
    import threading

    import trio
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from ww.p2p import routing

    monkeypatch.setattr(routing, "RPC_TIMEOUT", 3600.0)  # only the cancel ends the request
    asked, frozen, release = threading.Event(), threading.Event(), threading.Event()
    ping = struct.pack("!BBHII", 0, 2, 1, 0, 7)  # Yamux PING with SYN: the far end answers

    async def flood(stream: Any) -> None:
        await stream.read(1)  # the asker's request came: it waits for a reply
        # the peer's own socket, its own choice: a small receive window
        _socket_of(stream.muxed_conn).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        asked.set()
        await stream.muxed_conn._write_frame(ping * 300_000)

    async def stop_reading() -> None:
        frozen.set()
        release.wait(BOUND)  # the whole host stands still (reads nothing), as if stopped

    asker_node, hostile = nodes(), nodes(handlers={LAN_PROTOCOL: flood})
    try:
        hostile.start()
        asker_node.start()
        asker = Dht(asker_node)
        hostile_id = ID.from_base58(hostile.peer_id)
        asker_node.submit(asker_node.dial, info_from_p2p_addr(_ma(hostile.addrs[0]))).result(
            BOUND)
        conn = asker_node.host.get_network().get_connections(hostile_id)[0]
        sock = _socket_of(conn.muxed_conn)
        stalled = threading.Event()

        async def ask_then_give_up() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker._rpc, _Peer(hostile_id), Message(type=Message.PING))
                await trio.to_thread.run_sync(stalled.wait, BOUND)
                nursery.cancel_scope.cancel()  # given up, as a dual lookup does

        def fill() -> None:
            for _ in range(int(BOUND / 0.05)):  # a state polled: the asker's socket is full
                if not select.select([], [sock], [], 0)[1]:
                    return
                threading.Event().wait(0.05)
            raise AssertionError("the asker's socket never filled")

        def queued() -> tuple[int, int]:  # bytes the asker has yet to read, yet to send
            return (struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0],
                    struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0])

        given_up = asker_node.submit(ask_then_give_up)
        assert asked.wait(BOUND)
        fill()  # the asker answers pings faster than the peer reads
        hostile.submit(stop_reading)
        assert frozen.wait(BOUND)
        # the peer reading nothing more: the asker's reader, pings still to answer, stops
        # for good on a write (nothing it sends leaves; what it has to read stays)
        before, same = queued(), 0
        for _ in range(int(BOUND / 0.05)):
            threading.Event().wait(0.05)
            now = queued()
            same = same + 1 if now == before and now[0] > 0 else 0
            before = now
            if same >= 20:
                break
        else:
            raise AssertionError(f"the asker's connection never stood still: {before}")
        stalled.set()
        given_up.result(BOUND / 2)  # the old code: waiting on the full socket (a hang here)
    finally:
        release.set()
