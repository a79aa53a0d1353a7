"""The Bitswap server's reply slots: a peer that reads its replies slowly, or not at all,
holds no slot another peer waits for; a stalled write is given up, a slow one is not.

Real libp2p peers on 127.0.0.1 throughout (tests/ipfs/bitswap_flood.py: a peer that never
reads, and one that reads slowly and gives window back as it reads).  The server has one
reply slot (``REPLY_SLOTS`` = 1), so that one peer holding it would stop every other; the
outcomes are asserted in the order events happen, never against a clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG
from tests.ipfs.bitswap_flood import Flooder, Freezer, SlowReader, want_blocks
from tests.ipfs.test_bitswap import _on_engine, _until
from ww.core.cid import CID, RAW
from ww.core.multihash import sha256
from ww.ipfs import bitswap, dagpb
from ww.ipfs.blockstore import Blockstore
from ww.ipfs.importer import CHUNK_SIZE
from ww.ipfs.node import EmbeddedNode
from ww.p2p import host_for_ipfs

pytest.importorskip("libp2p")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
LEAVES = 16  # 4 MiB asked by a peer that reads slowly or not at all: more than any window
STOP_HANG = 60  # seconds; only stops a hang (the host stops within STOP_TIMEOUT, 3 s)


def _data(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


@pytest.fixture
def one_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """One reply slot; Yamux's own wait for window made long, so that a stalled write is
    ended by Bitswap's bounds, the ones under test (its 5 s would end it first)."""
    from ww.p2p import yamux

    monkeypatch.setattr(bitswap, "REPLY_SLOTS", 1)
    monkeypatch.setattr(yamux, "WINDOW_WAIT", 600.0)


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[Any]]:
    """Nodes and peers to close at the end, last made first."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.close()


def _serving(tmp_path: Path, made: list[Any]) -> tuple[EmbeddedNode, str, list[bytes],
                                                       str, bytes]:
    """A listening server holding a file of LEAVES leaves (what the hostile peers ask for)
    and a file of 4 leaves (what an honest peer fetches): the server, its address, the big
    file's leaves, the small file's CID and its bytes."""
    server = EmbeddedNode(tmp_path / "server", new_host=host_for_ipfs())
    made.append(server)
    big = server.add_stream([_data(LEAVES * CHUNK_SIZE, 1)])
    leaves = [bytes(link.cid) for link in
              dagpb.decode(server._blocks.get(CID.parse(big))).links]
    assert len(leaves) == LEAVES
    small = _data(4 * CHUNK_SIZE + 7, 2)
    small_cid = server.add_stream([small])
    return server, server.listen([LOOPBACK]).addresses[0], leaves, small_cid, small


def _window_shut(server: EmbeddedNode, peer: str) -> bool:
    """Whether the server's writing to ``peer`` waits for window: ``peer`` takes nothing
    more until it reads (on the host's thread, where the connections live)."""
    from libp2p.peer.id import ID

    def shut(engine: Any) -> bool:
        host = server._net._node.host  # type: ignore[union-attr]
        for conn in host.get_network().get_connections(ID.from_base58(peer)):
            if any(s.send_window <= 0 for s in conn.muxed_conn.streams.values()):
                return True
        return False

    return bool(_on_engine(server, shut))


def test_a_peer_that_never_reads_does_not_hold_the_reply_slot_others_wait_for(
        tmp_path: Path, made: list[Any], one_slot: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The old engine held the slot for the whole write, until the peer was given up (10 s
    plus 1 s per 100 KiB: 15 s for a 512 KiB reply; or Yamux's 5 s without window, made
    long here): with 8 such peers (here 1, for the 1 slot), every other peer's fetch waited
    for that.  Now the write goes on outside the slot past REPLY_SLICE, and
    the other peer's fetch completes while the stalled one is still held."""
    monkeypatch.setattr(bitswap, "STALL_TIMEOUT", 600.0, raising=False)  # never, here
    server, addr, leaves, small_cid, small = _serving(tmp_path, made)
    flooder = Flooder(tmp_path / "flooder")
    made.append(flooder)
    idle = flooder.connect(addr)
    flooder.send(idle, [want_blocks(leaves)])
    _until(lambda: _window_shut(server, flooder.node.peer_id),
           "the server's replies to the flooder wait for window")

    fetcher = EmbeddedNode(tmp_path / "fetcher", new_host=host_for_ipfs())
    made.append(fetcher)
    fetcher.connect(addr)
    assert b"".join(fetcher.cat(small_cid)) == small

    def still_held(engine: Any) -> bool:  # the flooder's reply is being written still
        peer = engine.peers.get(flooder.node.peer_id)
        return peer is not None and not peer.gone and engine.stats["reply_bytes"] > 0

    assert _on_engine(server, still_held), "the fetch waited for the flooder to be given up"
    assert _window_shut(server, flooder.node.peer_id)


def test_a_slow_reader_gets_everything_and_a_stalled_one_is_given_up_meanwhile(
        tmp_path: Path, made: list[Any], one_slot: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that reads 12 KiB every 0.25 s (48 KiB/s, under the old engine's 100 KiB/s:
    its reply was cut, the peer dropped, 6 s into a 512 KiB reply with SEND_TIMEOUT at 1 s
    as here) gets all it asked for; one that reads nothing is given up after STALL_TIMEOUT
    (its stream reset, its slot freed, its ledger gone with it); and neither holds up a
    third peer's fetch."""
    monkeypatch.setattr(bitswap, "SEND_TIMEOUT", 1.0)
    monkeypatch.setattr(bitswap, "STALL_TIMEOUT", 5.0, raising=False)
    server, addr, leaves, small_cid, small = _serving(tmp_path, made)
    slow = SlowReader(tmp_path / "slow", expected=LEAVES)
    staller = Flooder(tmp_path / "staller")
    made += [slow, staller]
    for peer in (slow, staller):
        peer.send(peer.connect(addr), [want_blocks(leaves)])
    for peer in (slow, staller):
        _until(lambda p=peer: _window_shut(server, p.node.peer_id),
               "the server's replies wait for the peer's window")

    fetcher = EmbeddedNode(tmp_path / "fetcher", new_host=host_for_ipfs())
    made.append(fetcher)
    fetcher.connect(addr)
    assert b"".join(fetcher.cat(small_cid)) == small
    assert not slow.broken.is_set(), "the slow reader was given up"
    assert not slow.complete.is_set()  # it had 4 MiB to take at 48 KiB/s: it is taking it

    _until(lambda: _on_engine(server, lambda e: staller.node.peer_id not in e.peers),
           "the stalled peer was given up")
    assert not slow.broken.is_set(), "the slow reader was given up"
    slow.release()  # it reads at full speed now
    _until(lambda: slow.complete.is_set() or slow.broken.is_set(), "the slow reader ended")
    assert slow.complete.is_set(), "the slow reader did not get everything"
    assert slow.blocks == {CID.decode(leaf)[0] for leaf in leaves}

    def settled(engine: Any) -> bool:
        return engine.stats["reply_bytes"] == 0

    _until(lambda: _on_engine(server, settled), "the replies ended")

    def state(engine: Any) -> tuple[int, int, int, int]:
        return (engine._reply_slots.value, engine._overdue_slots.value,
                engine.stats["replies_given_up"], engine.stats["replies_overdue"])

    free, overdue_free, given_up, overdue = _on_engine(server, state)
    assert (free, overdue_free) == (1, bitswap.OVERDUE_SLOTS)  # every slot back
    assert given_up == 1  # the staller's, and only its
    assert overdue >= 2  # the staller's reply and the slow reader's went on outside the slot


# -- a full wantlist cut short -----------------------------------------------------------


def _absent(n: int, seed: str) -> list[bytes]:
    return [bytes(CID.v1(RAW, sha256(b"%s %d" % (seed.encode(), i)))) for i in range(n)]


def _wantlist(cids: list[bytes], full: bool) -> bitswap.Message:
    """A wantlist of ``cids`` as a peer sends it, read back as the server reads it."""
    sent = bitswap.Message(wants=[bitswap.WantEntry(c) for c in cids], full=full)
    return bitswap.decode(bitswap.encode(sent))


def test_a_full_wantlist_past_what_is_read_is_taken_as_full() -> None:
    """Its `full` flag comes after the entries: the old decode stopped reading before it and
    took the message as an update."""
    entries = _absent(3000, "full")
    got = _wantlist(entries, full=True)
    assert got.full
    assert [w.cid for w in got.wants] == entries[:bitswap.MAX_WANTLIST]
    for full in (True, False):  # one that fits is read as it is, full or not
        assert _wantlist(entries[:100], full).full is full


def test_a_full_wantlist_cut_short_replaces_the_ledger(tmp_path: Path) -> None:
    """A peer's ledger after a few wants, then its whole wantlist of 3000 entries: the
    wants kept (the first 1024) replace the ledger; the old engine kept the old ones
    beside them."""
    engine = bitswap.Engine(Blockstore(tmp_path / "blocks"), self_id="us",
                            open_stream=lambda peer: None)
    engine.peer_connected("them")
    old = _absent(10, "old")
    engine._serve("them", _wantlist(old, full=False).wants)
    assert list(engine.peers["them"].ledger) == old
    whole = _absent(3000, "whole")
    msg = _wantlist(whole, full=True)
    engine._serve("them", msg.wants, msg.full)
    assert list(engine.peers["them"].ledger) == whole[:bitswap.MAX_WANTLIST]


# -- (found by attack) peers that keep taking, just fast enough -----------------------------


def test_peers_that_read_just_fast_enough_do_not_hold_every_slot_while_others_wait(
        tmp_path: Path, made: list[Any], one_slot: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that reads its reply slowly but above MIN_SEND_RATE is never given up: one
    such peer filled the overdue slots, the next held its reply slot until the first one's
    write ended (here 768 KiB at 16 KiB/s, some 48 s; 16 sybil peer ids at 13 kB/s held all
    8 + 8 for a minute a reply, again and again, and a third peer's fetch waited that long
    for each of its replies).  Now, while a peer waits for a reply slot and the overdue
    slots are full, the slowest of those writes is given up: the fetch completes while the
    peer that was not given up is still taking its first reply."""
    monkeypatch.setattr(bitswap, "OVERDUE_SLOTS", 1)
    monkeypatch.setattr(bitswap, "MIN_SEND_RATE", 1_000)  # they are never too slow for it
    server, addr, leaves, small_cid, small = _serving(tmp_path, made)
    first = SlowReader(tmp_path / "first", expected=LEAVES, step=4 << 10)
    second = SlowReader(tmp_path / "second", expected=LEAVES, step=4 << 10)
    made += [first, second]
    first.send(first.connect(addr), [want_blocks(leaves)])
    _until(lambda: _on_engine(server, lambda e: e.stats["replies_overdue"] >= 1),
           "the first peer's reply went on in the overdue slot")
    second.send(second.connect(addr), [want_blocks(leaves)])
    _until(lambda: _window_shut(server, second.node.peer_id)
           and _on_engine(server, lambda e: e._reply_slots.value == 0),
           "the second peer's reply holds the reply slot")

    fetcher = EmbeddedNode(tmp_path / "fetcher", new_host=host_for_ipfs())
    made.append(fetcher)
    fetcher.connect(addr)
    assert b"".join(fetcher.cat(small_cid)) == small
    # Neither slow write had ended: the fetch did not wait for one of them to end ...
    assert not first.blocks and not second.blocks, "the fetch waited for a slow reply"
    # ... one of them was given up for it, and the other is still being written to.
    _until(lambda: first.broken.is_set() or second.broken.is_set(),
           "one of the slow peers was given up")
    assert not (first.broken.is_set() and second.broken.is_set())
    assert _on_engine(server, lambda e: e.stats["replies_given_up"]) == 1


# -- a reply given up mid-frame ------------------------------------------------------------


def _connections(node: Any, peer: str) -> list[Any]:
    """The Yamux connections of ``node`` (a host's Node) to ``peer``; on its thread."""
    from libp2p.peer.id import ID

    return [c.muxed_conn for c in node.host.get_network().get_connections(ID.from_base58(peer))]


def _server_connections(server: EmbeddedNode, peer: str) -> list[Any]:
    return list(_on_engine(server, lambda e: _connections(server._net._node, peer)))


def _small_send_buffer(server: EmbeddedNode, peer: str) -> None:
    """Make the server's socket to ``peer`` buffer little (16 KiB asked): a peer that stops
    reading fills it within a frame, as it does on a slow link, rather than within the
    megabytes a loopback socket may grow to."""
    import socket

    def shrink(engine: Any) -> None:
        for muxed in _connections(server._net._node, peer):
            raw = muxed.secured_conn.conn.read_writer.read_write_closer  # the TCP connection
            raw.stream.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)

    _on_engine(server, shrink)


def _freeze_mid_reply(tmp_path: Path, made: list[Any], monkeypatch: pytest.MonkeyPatch,
                      ) -> tuple[EmbeddedNode, Freezer, str, list[bytes], str]:
    """A server, and a peer that asks for LEAVES blocks and stops reading its connection
    once their reply is under way: the server's write of it waits, half-way through a frame,
    for the socket.  Returns the server, the peer, the server's peer id, the big file's
    leaves and the small file's CID."""
    monkeypatch.setattr(bitswap, "STALL_TIMEOUT", 1.0, raising=False)
    server, addr, leaves, small_cid, _ = _serving(tmp_path, made)
    freezer = Freezer(tmp_path / "freezer")
    made.append(freezer)
    server_id = freezer.connect(addr)
    _small_send_buffer(server, freezer.node.peer_id)
    freezer.send(server_id, [want_blocks(leaves)])
    assert freezer.frozen.wait(HANG), "the server's reply never came"
    return server, freezer, server_id, leaves, small_cid


def test_a_reply_given_up_mid_frame_leaves_the_peers_connection_usable(
        tmp_path: Path, made: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Giving a reply up cancelled its write wherever it was: inside a Yamux frame, after
    Noise had taken the frame's nonce or half-way through the socket's send (as here: the
    peer stopped reading its socket), so the rest of the connection was garbage to the peer,
    which closed it: every other stream of that peer died with the one given up.  Now the
    write stops at the frame's end and only the stream is reset: once the peer reads again,
    the same connection carries its next want and the reply."""
    from ww.p2p import yamux

    monkeypatch.setattr(yamux, "CONNECTION_WRITE_TIMEOUT", 600.0, raising=False)  # not here
    server, freezer, server_id, leaves, small_cid = _freeze_mid_reply(tmp_path, made,
                                                                      monkeypatch)
    _until(lambda: _on_engine(server, lambda e: e.stats["replies_given_up"]) >= 1,
           "the reply to the peer that stopped reading was given up")
    [before] = _server_connections(server, freezer.node.peer_id)
    freezer.thaw()
    _until(lambda: _on_engine(server, lambda e: freezer.node.peer_id not in e.peers),
           "the server dropped the peer it gave up")

    leaf = dagpb.decode(server._blocks.get(CID.parse(small_cid))).links[0].cid
    freezer.send(server_id, [want_blocks([bytes(leaf)])])
    _until(lambda: leaf in freezer.blocks or not _server_connections(
        server, freezer.node.peer_id), "the peer's next want was answered")
    assert leaf in freezer.blocks, "the connection was lost with the reply given up"
    assert _server_connections(server, freezer.node.peer_id) == [before]
    assert not before.is_closed


def test_a_peer_that_stops_reading_its_connection_is_cut_off(
        tmp_path: Path, made: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The reset that follows a reply given up waits for the frame under way, and that
    waited for as long as the peer read nothing (the old engine: its reset, shielded,
    forever, the peer never dropped).  Now a frame whose send takes longer than
    CONNECTION_WRITE_TIMEOUT closes the connection, and the peer is dropped."""
    from ww.p2p import yamux

    monkeypatch.setattr(yamux, "CONNECTION_WRITE_TIMEOUT", 2.0, raising=False)
    server, freezer, _, _, _ = _freeze_mid_reply(tmp_path, made, monkeypatch)
    peer = freezer.node.peer_id
    _until(lambda: not _server_connections(server, peer), "the connection was closed")
    _until(lambda: _on_engine(server, lambda e: peer not in e.peers
                              and e.stats["reply_bytes"] == 0), "the peer was dropped")


def test_stopping_the_host_does_not_wait_for_a_frame_a_frozen_peer_holds(
        tmp_path: Path, made: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by attack.  A frame's send is shielded (a give-up never cuts one short) and may
    take CONNECTION_WRITE_TIMEOUT; stopping the host waited for it too -- Bitswap's sender,
    whose frame a frozen peer held, and then each connection's GO_AWAY, written one
    connection after the other, each shielded as well -- so the host's thread outlived
    ``stop()`` (STOP_TIMEOUT) by CONNECTION_WRITE_TIMEOUT for every peer that stopped
    reading.  Nothing is left to protect once the host closes its connections: their frames
    under way are cut, and the thread ends with ``stop()``."""
    from ww.p2p import yamux

    # made longer than the bound below, so that only the stop can end the frame's send
    monkeypatch.setattr(yamux, "CONNECTION_WRITE_TIMEOUT", 10 * HANG, raising=False)
    server, freezer, _, _, _ = _freeze_mid_reply(tmp_path, made, monkeypatch)
    _until(lambda: _on_engine(server, lambda e: e.stats["replies_given_up"]) >= 1,
           "the reply to the peer that stopped reading was given up")
    net = server._net
    assert net is not None and net._node._thread is not None
    thread = net._node._thread
    server.close()  # stop() returns after STOP_TIMEOUT at most, the thread ended or not
    thread.join(STOP_HANG)
    assert not thread.is_alive(), "the host's thread waited for the frozen peer's frame"
    assert not freezer._thaw.is_set()  # the peer was frozen all along


def test_a_peer_that_reset_its_reply_is_asked_the_wants_waiting_in_turn_at_once(
        tmp_path: Path) -> None:
    """(review) A peer resets the stream its reply was on with its window of wants full and
    one more waiting in turn: the wants it held fail (no other peer to try), and the one
    waiting is asked of it at once, its window empty now.  The reset's wants were moved on
    while the peer's window still counted them, and emptied only after: the want in turn
    waited for the next timeout round (or, had it been asked, the peer's window would not
    have counted it)."""
    engine = bitswap.Engine(Blockstore(tmp_path / "blocks"), self_id="us",
                            open_stream=lambda peer: None)
    engine.peer_connected("them")
    cids = [CID.decode(c)[0] for c in _absent(bitswap.START_WANTS + 1, "reset")]
    for cid in cids:
        engine.want(cid, None)
    peer = engine.peers["them"]
    assert len(peer.assigned) == bitswap.START_WANTS
    last = cids[-1].multihash
    assert engine.wants[last].queued
    engine._reply_reset("them")
    assert engine.wants[last].peer == "them"
    assert peer.assigned == {last}
