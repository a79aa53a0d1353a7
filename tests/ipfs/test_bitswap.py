"""Bitswap 1.2.0 between embedded nodes on 127.0.0.1, and the wire format.

Real libp2p hosts (TCP + Noise + Yamux) in this process, each with its own repository and node
key; they dial only each other on the loopback interface.  Interop with a real kubo peer is in
``test_bitswap_kubo.py``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG
from ww.core.cid import CID, RAW
from ww.core.multihash import sha256
from ww.ipfs import bitswap
from ww.ipfs.api import AddOptions, NotFoundError
from ww.ipfs.bitswap import Message, Presence, WantEntry, WantType
from ww.ipfs.importer import CHUNK_SIZE
from ww.ipfs.node import EmbeddedNode
from ww.p2p import host_for_ipfs

pytest.importorskip("libp2p")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


# --- the wire format ------------------------------------------------------------------------


def test_block_prefix_is_go_cids_prefix() -> None:
    v0 = CID.v0(sha256(b"x"))
    v1 = CID.v1(RAW, sha256(b"x"))
    assert bitswap.prefix_of(v0) == bytes([0x00, 0x70, 0x12, 0x20])
    assert bitswap.prefix_of(v1) == bytes([0x01, 0x55, 0x12, 0x20])
    assert bitswap.cid_from_block(bitswap.prefix_of(v1), b"x") == v1
    assert bitswap.cid_from_block(bitswap.prefix_of(v0), b"x") == v0


def test_block_with_an_unsupported_hash_is_refused() -> None:
    blake3_prefix = bytes([0x01, 0x55, 0x1E, 0x20])
    with pytest.raises(bitswap.BitswapError):
        bitswap.cid_from_block(blake3_prefix, b"x")


def test_message_round_trips_every_field() -> None:
    cid = bytes(CID.v1(RAW, sha256(b"block")))
    msg = Message(
        wants=[WantEntry(cid, 7, want_type=WantType.HAVE, send_dont_have=True),
               WantEntry(cid, 1, cancel=True)],
        full=True,
        blocks=[(bitswap.prefix_of(CID.v1(RAW, sha256(b"block"))), b"block")],
        presences=[(cid, Presence.DONT_HAVE), (cid, Presence.HAVE)],
        pending_bytes=12,
    )
    assert bitswap.decode(bitswap.encode(msg)) == msg


def test_message_bytes_match_kubos_protobuf_layout() -> None:
    """One want-block entry with send-dont-have, as go-bitswap encodes it (fields 1,2,4,5)."""
    cid = bytes(CID.v0(sha256(b"a")))
    wire = bitswap.encode(Message(wants=[WantEntry(cid, 1, send_dont_have=True)]))
    entry = b"\x0a\x22" + cid + b"\x10\x01" + b"\x28\x01"
    assert wire == b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry


def test_malformed_message_is_an_error() -> None:
    with pytest.raises(bitswap.BitswapError):
        bitswap.decode(b"\x0a\xff\x01")


def test_bitswap_1_0_blocks_are_read_as_cidv0() -> None:
    msg = bitswap.decode(b"\x12\x03abc")
    assert msg.blocks == [(b"\x00\x70\x12\x20", b"abc")]


# --- two and three embedded nodes --------------------------------------------------------


def _node(tmp_path: Path, name: str, **kw: object) -> EmbeddedNode:
    return EmbeddedNode(tmp_path / name, new_host=host_for_ipfs())


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[EmbeddedNode]]:
    made: list[EmbeddedNode] = []
    yield made
    for node in made:
        node.close()


def _data(size: int, seed: int = 1) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


def test_id_peers_and_connect_are_real(tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    offline = b.id()
    assert offline.addresses == [] and b.peers() == []
    info = a.listen([LOOPBACK])
    assert info.addresses and info.addresses[0].startswith("/ip4/127.0.0.1/tcp/")
    assert info.addresses[0].endswith(f"/p2p/{info.id}")
    assert bitswap.PROTOCOL in info.protocols
    b.connect(info.addresses[0])
    assert [p.id for p in b.peers()] == [info.id]
    assert b.id().id == offline.id  # the same node key, now on the network
    assert [p.id for p in a.peers()] == [b.id().id]


def test_connect_to_nobody_is_one_line(tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    a = EmbeddedNode(tmp_path / "a", new_host=host_for_ipfs())
    nodes.append(a)
    peer = EmbeddedNode(tmp_path / "p", new_host=host_for_ipfs()).id().id
    with pytest.raises(Exception) as err:
        a.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{peer}")
    assert "cannot connect" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(Exception, match="expected /ip4"):
        a.connect("/ip4/127.0.0.1/tcp/1")


def test_missing_blocks_are_fetched_verified_and_stored(tmp_path: Path,
                                                        nodes: list[EmbeddedNode]) -> None:
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    data = _data(20 * CHUNK_SIZE + 123)
    cid = a.add_stream([data])
    raw = a.add_stream([data[:1000]], AddOptions(cid_version=1))
    b.connect(a.listen([LOOPBACK]).addresses[0])
    assert b"".join(b.cat(cid)) == data
    assert b"".join(b.cat(raw)) == data[:1000]
    assert b._net is not None and b._net.stats()["blocks_in"] >= 22
    a.close()  # everything is local now: no network needed
    assert b"".join(b.cat(cid, offset=5, length=10)) == data[5:15]
    assert b.check().ok


def test_a_flush_waits_for_blocks_stored_but_not_yet_counted(
        tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    """A block is in the repository a moment before the engine has counted it: a reader can
    find it there first.  A flush (which ends every read) waits for that moment to pass, so
    that the blocks are both durable and counted -- `ww cat --peer`'s bar once showed 37 of
    38 blocks fetched."""
    import threading

    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs()) for n in ("a", "b"))
    nodes += [a, b]
    cid = a.add_stream([_data(3 * CHUNK_SIZE)])
    root = a.block(cid)
    leaves = bitswap.links_of(root)
    b.connect(a.listen([LOOPBACK]).addresses[0])
    assert b._net is not None
    engine = b._net._engine
    stored, release = threading.Event(), threading.Event()
    store_and_wait = engine._hash_and_store

    def gated(blocks: Any, wanted: Any) -> Any:  # in the worker thread, after storing
        out = store_and_wait(blocks, wanted)
        stored.set()
        release.wait(HANG)
        return out

    engine._hash_and_store = gated  # type: ignore[method-assign]
    events: list[str] = []
    flushing = threading.Thread(target=lambda: (b._net.flush(), events.append("flushed")))
    try:
        b._net.prefetch(root)
        assert stored.wait(HANG)
        assert any(b._blocks.has(leaf) for leaf in leaves)  # in the repository, uncounted
        flushing.start()
        flushing.join(0.5)  # only gives a flush that would not wait the time to return
        events.append("released")
    finally:
        release.set()
        flushing.join(HANG)
    engine._hash_and_store = store_and_wait  # type: ignore[method-assign]
    assert events == ["released", "flushed"]
    _until(lambda: all(b._blocks.has(leaf) for leaf in leaves), "the other leaves")
    b._net.flush()
    assert b._net.received()[0] == len(leaves)


def test_directory_get_over_bitswap(tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.bin").write_bytes(_data(3 * CHUNK_SIZE, 2))
    (src / "y.txt").write_bytes(b"y\n")
    os.symlink("y.txt", src / "link")
    cid = a.add_path(src)
    a.listen([LOOPBACK])
    b.connect(a.id().addresses[0])
    b.get(cid, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "x.bin").read_bytes() == _data(3 * CHUNK_SIZE, 2)
    assert os.readlink(tmp_path / "out" / "link") == "y.txt"


def test_content_nobody_has_fails_cleanly(tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    b.connect(a.listen([LOOPBACK]).addresses[0])
    missing = CID.v0(sha256(b"nobody has this"))
    with pytest.raises(NotFoundError, match="none of 1 connected peer") as err:
        b.get(str(missing), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_without_peers_missing_content_is_the_offline_error(tmp_path: Path,
                                                            nodes: list[EmbeddedNode]) -> None:
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    nodes.append(b)
    with pytest.raises(NotFoundError, match="not in the local repository"):
        list(b.cat(str(CID.v0(sha256(b"nothing")))))
    assert b._net is None  # no host was started for it


def _one_block_replies(node: EmbeddedNode) -> tuple[Any, Any, Any]:
    """``node``'s network, engine and reply method, its replies made one block each."""
    net = node._net
    assert net is not None
    engine = net._engine
    assert engine is not None
    engine.target_message = 1
    return net, engine, engine._reply


def _drop_after(node: EmbeddedNode, victim: str, blocks: int) -> None:
    """Make ``node`` hang up on ``victim`` right after serving it ``blocks`` blocks."""
    net, engine, reply = _one_block_replies(node)

    async def replying(peer: Any, stream: Any) -> None:
        if engine.stats["blocks_out"] >= blocks:
            peer.ledger.clear()  # past the limit: the connection is going away
            return
        await reply(peer, stream)
        if engine.stats["blocks_out"] >= blocks:
            from libp2p.peer.id import ID

            host = net._node.host
            engine._nursery.start_soon(host.get_network().close_peer, ID.from_base58(victim))

    engine._reply = replying  # type: ignore[method-assign]


def test_peer_dropping_mid_transfer_is_resumed_from_another(
        tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    first, second, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
                        for n in ("first", "second", "b"))
    nodes += [first, second, b]
    data = _data(30 * CHUNK_SIZE, 3)
    cid = first.add_stream([data])
    assert second.add_stream([data]) == cid
    b.connect(first.listen([LOOPBACK]).addresses[0])
    b.connect(second.listen([LOOPBACK]).addresses[0])
    _drop_after(first, b.id().id, 5)
    # b asks `first` (or `second`) for each block; `first` hangs up after 5 blocks
    b.get(cid, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    served = [n._net._engine.stats["blocks_out"] for n in (first, second)]  # type: ignore
    assert served[0] == 5 and served[1] >= 26


def test_wants_are_spread_over_the_peers_that_hold_a_file(
        tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    """Three peers holding a file each send part of it (issue 14: three peers at once are
    to be faster than one); it arrives whole and verified."""
    servers = [EmbeddedNode(tmp_path / f"s{i}", new_host=host_for_ipfs()) for i in range(3)]
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    nodes += [*servers, b]
    data = _data(30 * CHUNK_SIZE, 5)
    cids = {server.add_stream([data]) for server in servers}
    assert len(cids) == 1
    for server in servers:
        b.connect(server.listen([LOOPBACK]).addresses[0])
    b.get(cids.pop(), tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    served = [s._net._engine.stats["blocks_out"] for s in servers]  # type: ignore[union-attr]
    assert sum(served) == 31 and all(n > 0 for n in served), served
    assert b.check().ok


def test_peer_dropping_mid_transfer_alone_fails_cleanly(
        tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    data = _data(30 * CHUNK_SIZE, 4)
    cid = a.add_stream([data])
    b.connect(a.listen([LOOPBACK]).addresses[0])
    _drop_after(a, b.id().id, 5)
    with pytest.raises(NotFoundError) as err:
        b.get(cid, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert b.check().ok  # the blocks that did arrive are whole


def test_a_peer_that_hangs_up_is_not_redialled(tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    """py-libp2p's auto-connector would dial peers it merely heard of; ours dials nobody."""
    import time

    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    b.connect(a.listen([LOOPBACK]).addresses[0])
    a.disconnect(b.id().id)
    deadline = time.monotonic() + HANG  # the hang-up reaches both: waited for, not slept on
    while (a.peers() or b.peers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.peers() == [] and b.peers() == []
    net = b._net
    assert net is not None
    connector = net._node.host.get_network().auto_connector

    async def its_periodic_round() -> None:  # what it does every 30 s, without the wait
        connector.clear_all_cooldowns()
        await connector.maybe_connect()

    net._node.submit(its_periodic_round).result(HANG)
    time.sleep(0.5)
    assert a.peers() == [] and b.peers() == []


def test_a_dead_address_of_a_peer_does_not_spoil_a_good_one(tmp_path: Path,
                                                           nodes: list[EmbeddedNode]) -> None:
    """py-libp2p alone would keep dialling the dead address, and block the peer for 60 s."""
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    good = a.listen([LOOPBACK]).addresses[0]
    with pytest.raises(Exception, match="cannot connect"):
        b.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{a.id().id}")
    b.connect(good)
    assert [p.id for p in b.peers()] == [a.id().id]


def test_a_node_on_a_shared_host_serves_bitswap_once_the_host_runs(
        tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    """`ww run`'s case: the embedded node is given the p2p host before it starts."""
    from ww.core.identity import load_or_create
    from ww.p2p.host import Node

    (tmp_path / "a").mkdir()
    host = Node(load_or_create(tmp_path / "a"), listen=[LOOPBACK], announce=False)
    a = EmbeddedNode(tmp_path / "a", host=host, new_host=host_for_ipfs())
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    nodes += [a, b]
    try:
        cid = a.add_stream([_data(3 * CHUNK_SIZE, 6)])
        assert a.peers() == [] and a.id().addresses == []  # not started: offline
        host.start()
        host.start()  # whoever needs it first starts it; the others wait, then go on
        info = a.id()
        assert info.addresses == host.addrs
        assert "/ww/0.1.0" in info.protocols and bitswap.PROTOCOL in info.protocols
        with pytest.raises(Exception, match="use --listen"):
            a.listen([LOOPBACK])
        b.connect(info.addresses[0])
        assert b"".join(b.cat(cid)) == _data(3 * CHUNK_SIZE, 6)
        assert [p.id for p in a.peers()] == [b.id().id]
        a.close()  # the host is its owner's: still up
        assert host.running
    finally:
        host.stop()
    assert not host.running


def test_a_peers_streams_past_the_fourth_wait_their_turn(tmp_path: Path,
                                                         nodes: list[EmbeddedNode]) -> None:
    """kubo sends each Bitswap message on a stream of its own.  Streams a peer opens while
    four of its streams are being read wait their turn; they were reset, and the blocks in
    them lost until the want timed out and failed."""
    import concurrent.futures
    import threading
    import time

    from tests.ipfs.bitswap_flood import Flooder

    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    nodes.append(b)
    addr = b.listen([LOOPBACK]).addresses[0]
    net = b._net
    assert net is not None
    blocks = [_data(1000, 40 + i) for i in range(6)]
    cids = [CID(1, RAW, sha256(block)) for block in blocks]
    peer = Flooder(tmp_path / "peer")
    release = threading.Event()

    def until(condition: Any, what: str) -> None:  # a bound that only stops a hang
        deadline = time.monotonic() + HANG
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    async def each_on_a_stream_of_its_own() -> None:
        import trio
        from libp2p.peer.id import ID

        streams = []
        for cid, block in zip(cids, blocks, strict=True):
            stream = await peer.node.host.new_stream(ID.from_base58(b_id), [bitswap.PROTOCOL])
            streams.append(stream)
            try:
                await stream.write(bitswap.frame(Message(blocks=[
                    (bitswap.prefix_of(cid), block)])))
            except Exception:
                pass  # reset by b
        await trio.to_thread.run_sync(release.wait)  # all held open until b took four
        for stream in streams:
            try:
                await stream.close()
            except Exception:
                pass

    try:
        b_id = peer.connect(addr)
        until(lambda: b.peers(), "b sees the peer")
        with concurrent.futures.ThreadPoolExecutor(len(cids)) as pool:
            fetches = [pool.submit(net.fetch, cid) for cid in cids]
            until(lambda: len(net._engine.wants) == len(cids), "b wants the blocks")
            sent = peer.node.submit(each_on_a_stream_of_its_own)
            until(lambda: net.stats()["blocks_in"] >= 4, "b takes four blocks")
            release.set()
            assert [f.result(HANG) for f in fetches] == blocks
            sent.result(HANG)
    finally:
        release.set()
        peer.close()


def _held(node: EmbeddedNode, first: int) -> Any:
    """Make ``node`` serve ``first`` blocks, one per reply, then hold its replies until the
    returned function is called (a peer behind a link that has stalled; nothing is slept)."""
    import trio

    net, engine, reply = _one_block_replies(node)
    gate: dict[str, Any] = {}

    async def make() -> None:
        gate["open"] = trio.Event()

    async def open_() -> None:
        gate["open"].set()

    net._node.submit(make).result(HANG)

    async def replying(peer: Any, stream: Any) -> None:
        if engine.stats["blocks_out"] >= first:
            await gate["open"].wait()
        await reply(peer, stream)

    engine._reply = replying  # type: ignore[method-assign]
    return lambda: net._node.submit(open_).result(HANG)


def _on_engine(node: EmbeddedNode, fn: Any) -> Any:
    """``fn(engine)`` on ``node``'s libp2p thread, where its engine lives."""
    net = node._net
    assert net is not None

    async def call() -> Any:
        return fn(net._engine)

    return net._node.submit(call).result(HANG)


def _until(condition: Any, what: str) -> None:
    import time

    deadline = time.monotonic() + HANG  # a bound that only stops a hang
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_peer_that_answers_keeps_its_wants_however_long_its_queue(
        tmp_path: Path, nodes: list[EmbeddedNode]) -> None:
    """A peer behind a slow link works through our wants in turn: the last of them wait
    longer than PEER_TIMEOUT.  They stay with it while it answers; they were given up after
    PEER_TIMEOUT from the ask, so a fetch from one such peer failed (ww <- kubo at 1 MiB/s,
    20 MiB: "none of 1 connected peer(s) gave it")."""
    import concurrent.futures
    import time

    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs()) for n in ("a", "b"))
    nodes += [a, b]
    data = _data(20 * CHUNK_SIZE, 7)
    cid = a.add_stream([data])
    b.connect(a.listen([LOOPBACK]).addresses[0])
    a_id = a.id().id
    release = _held(a, 3)  # the root and two leaves, then a stall
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fetch = pool.submit(lambda: b"".join(b.cat(cid)))
        try:
            _until(lambda: b._net is not None and b._net.stats()["blocks_in"] >= 3,
                   "b has the first three blocks")
            # ... and has asked a for the other 18 (on a busy machine the last are asked a
            # moment later: a want not yet asked has no peer, and nothing to give up)
            _until(lambda: _on_engine(b, lambda engine: [
                want.peer for want in engine.wants.values()]) == [a_id] * 18,
                   "b asked a for the other 18 blocks")

            def long_ago(engine: Any) -> list[str | None]:  # the wants were asked long ago;
                now = time.monotonic()  # the peer answered just now (the blocks above)
                engine.peers[a_id].heard = now
                for want in engine.wants.values():
                    want.asked_at = now - 2 * engine.peer_timeout
                engine._expire()
                return [want.peer for want in engine.wants.values()]

            assert _on_engine(b, long_ago) == [a_id] * 18  # none given up
        finally:
            release()
        assert fetch.result(HANG) == data
    assert a._net is not None and a._net.stats()["blocks_out"] == 21  # each block once

    def silent(engine: Any) -> None:  # but a peer silent that long is given up on
        from ww.core.cid import CID as Cid

        engine.want(Cid.v0(sha256(b"a has not got this")), None)
        want = next(iter(engine.wants.values()))
        assert want.peer == a_id
        engine.peers[a_id].heard = want.asked_at = time.monotonic() - 2 * engine.peer_timeout
        engine._expire()

    _on_engine(b, silent)
    assert _on_engine(b, lambda engine: len(engine.wants)) == 0


def test_a_stalled_peer_holds_at_most_its_window(tmp_path: Path,
                                                 nodes: list[EmbeddedNode]) -> None:
    """Three peers hold a file; one stalls.  The other two take all but the stalled one's
    window of wants (asked as they answer), no block is asked twice, and once the third
    goes on the file arrives whole.  Wants were dealt out a third each when the file's root
    arrived: a slow peer held a third of the file (issue 14: three peers faster than one)."""
    import concurrent.futures

    servers = [EmbeddedNode(tmp_path / f"s{i}", new_host=host_for_ipfs()) for i in range(3)]
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    nodes += [*servers, b]
    count = 4 * bitswap.PEER_WANTS  # leaves
    data = _data(count * 1024, 8)
    cids = {s.add_stream([data], AddOptions(chunker="size-1024")) for s in servers}
    assert len(cids) == 1
    cid = cids.pop()
    for server in servers:
        b.connect(server.listen([LOOPBACK]).addresses[0])
    stalled = servers[2].id().id
    release = _held(servers[2], 1)  # one block (the root, if it is asked first), then a stall

    def outstanding(engine: Any) -> tuple[set[str | None], int, int]:
        return ({w.peer for w in engine.wants.values()}, len(engine.wants),
                engine.stats["blocks_in"])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fetch = pool.submit(lambda: b"".join(b.cat(cid)))
        try:
            # until every block not asked of the stalled peer has arrived
            _until(lambda: (lambda o: o[2] > 1 and o[0] == {stalled})(_on_engine(b, outstanding)),
                   "the other two peers have sent what they were asked")
            held = _on_engine(b, lambda engine: len(engine.peers[stalled].assigned))
            assert 0 < held <= bitswap.PEER_WANTS
            before = servers[2]._net._engine.stats["blocks_out"]  # type: ignore[union-attr]
        finally:
            release()
        assert fetch.result(HANG) == data
    served = [s._net._engine.stats["blocks_out"] for s in servers]  # type: ignore[union-attr]
    assert sum(served) == count + 1, served  # no block asked (or sent) twice
    assert served[2] == before + held and all(n > 0 for n in served[:2]), served
    assert b._net is not None and b._net.stats()["dropped"] == 0


def test_a_peers_window_is_what_it_answers_in_queue_seconds() -> None:
    """How many wants a peer holds at once follows the pace of its answers while it has
    wants of ours, not the time it had none: a slow peer holds few, so that when the last
    wants of a file are out it is not left holding the end of it long after the others."""
    fast, slow = bitswap._Peer("fast"), bitswap._Peer("slow")
    assert fast.window() == bitswap.START_WANTS  # before it has answered
    for peer, gap in ((fast, 0.01), (slow, 0.3)):  # 100 answers a second, and 3.3
        peer.assigned = {b"one", b"more"}  # it always has more to answer
        for i in range(20):
            peer.answered(1000.0 + i * gap)
    pace = math.ceil(bitswap.QUEUE_SECONDS / 0.3)
    assert fast.window() == bitswap.PEER_WANTS
    assert bitswap.MIN_WANTS < slow.window() == pace < bitswap.START_WANTS
    slow.assigned = set()
    slow.answered(1006.0)  # its last want answered, at its pace; then nothing for an hour
    slow.idle()
    slow.assigned = {b"again"}
    slow.answered(4610.0)  # the first answer after: its latency, not its pace
    slow.answered(4610.3)
    assert slow.window() == pace
