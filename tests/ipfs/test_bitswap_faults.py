"""Providers that lie or are slow (issue 14, "Faults"): hostile Bitswap peers of
tests/ipfs/bitswap_hostile.py, real libp2p on 127.0.0.1, against an embedded node or the real
`ww import --peer`.

A liar's blocks never reach the repository (each block is hashed against what was asked), the
liar is asked nothing more, and the fetch goes on with an honest peer; alone, it fails at once
with one line.  A slow peer keeps a want :data:`ww.ipfs.bitswap.PEER_TIMEOUT` seconds at most,
then is asked last; alone, the fetch fails after that with one line.  No test waits on a clock
of its own: HANG only stops a hang.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, run_ww
from tests.ipfs.bitswap_hostile import FLOODS, GIVES_UP, LIES, SLOW, HostilePeer
from ww.core.cid import CID
from ww.core.errors import EXIT_FAILURE
from ww.core.multihash import sha256
from ww.ipfs import bitswap
from ww.ipfs.api import NotFoundError
from ww.ipfs.importer import CHUNK_SIZE
from ww.ipfs.node import EmbeddedNode
from ww.p2p import host_for_ipfs

pytest.importorskip("libp2p")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _data(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list]:
    things: list = []
    yield things
    for thing in reversed(things):
        thing.close()


def _blocks_holding(home: Path, needle: bytes) -> list[Path]:
    """The files under ``home`` (a repository) whose bytes contain ``needle``."""
    return [p for p in home.rglob("*") if p.is_file() and needle in p.read_bytes()]


# PEER_TIMEOUT (15 s) for the tests that wait one out in-process: what they show does not
# depend on its length, and an honest peer on this machine answers in far less
SHORT_TIMEOUT = 5.0


def _engine(node: EmbeddedNode) -> bitswap.Engine:
    assert node._net is not None and node._net._engine is not None
    return node._net._engine


def _fetch_past_a_hostile_peer(tmp_path: Path, made: list, behaviour: str,
                               peer_timeout: float | None = None
                               ) -> tuple[HostilePeer, EmbeddedNode, EmbeddedNode, str, bytes]:
    """``b`` connects to a hostile peer first (so the first want, the root's, is its), then to
    an honest one holding a file; ``b`` gets the file."""
    hostile = HostilePeer(tmp_path / "hostile", behaviour)
    honest = EmbeddedNode(tmp_path / "honest", new_host=host_for_ipfs())
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    made += [hostile, honest, b]
    data = _data(12 * CHUNK_SIZE + 7, 14)
    cid = honest.add_stream([data])
    b.connect(hostile.addr)
    b.connect(honest.listen([LOOPBACK]).addresses[0])
    if peer_timeout is not None:
        _engine(b).peer_timeout = peer_timeout
    b.get(cid, tmp_path / "out")
    return hostile, honest, b, cid, data


@pytest.mark.parametrize("lie", LIES)
def test_a_liar_is_asked_nothing_more_and_an_honest_peer_gives_the_file(
        tmp_path: Path, made: list, lie: str) -> None:
    """The peer timeout is made longer than the hang guard: only seeing the lie can move the
    root's want on.  A lie was ignored as an unwanted block, the want left with the liar."""
    liar, honest, b, cid, data = _fetch_past_a_hostile_peer(tmp_path, made, lie,
                                                            peer_timeout=10 * HANG)
    assert (tmp_path / "out").read_bytes() == data
    root = bytes(CID.parse(cid))
    assert liar.wants == [root] and liar.lies == 1  # asked once, never again
    assert _engine(honest).stats["blocks_out"] == 14
    assert _engine(b).stats["liars"] == 1
    assert b.check().ok
    assert not _blocks_holding(b.repo_path, b"not the block ")


@pytest.mark.parametrize("flood", FLOODS)
def test_a_message_of_millions_of_tiny_fields_is_refused_before_they_are_read(
        tmp_path: Path, made: list, flood: str) -> None:
    """A provider answers the root's want with one 4 MiB message of two-byte fields: two
    million empty blocks (the old engine decoded them on the libp2p thread, 3 s, then hashed
    every one, 11 s and 600 MB, and dropped them one by one), two million presences or a
    million wantlist fields (each 3-5 s of the thread every peer shares; the wantlist fields
    became a million wants, past the 1024 the decoder was to keep; the presences were no lie
    and left the want with the peer).  Now such a message is malformed from its 1025th
    block or presence (no honest peer answers more than it was asked) or its 2065th field:
    the peer is a liar, and the honest peer gives the file."""
    liar, honest, b, cid, data = _fetch_past_a_hostile_peer(tmp_path, made, flood,
                                                            peer_timeout=10 * HANG)
    assert (tmp_path / "out").read_bytes() == data
    assert liar.wants == [bytes(CID.parse(cid))] and liar.lies == 1
    stats = _engine(b).stats
    assert stats["liars"] == 1
    assert stats["dropped"] <= bitswap.MAX_WANTLIST  # MAX_BLOCKS; the old engine: 2,097,144
    assert b.check().ok


def _import(peer: str, cid: str, out: Path):  # type: ignore[no-untyped-def]
    return run_ww("import", "--no-progress", "--peer", peer, f"/ipfs/{cid}", "-o", str(out))


@pytest.mark.parametrize("lie", ["wrong", "other_hash", "oversize"])
def test_a_liar_alone_fails_the_import_with_one_line_and_writes_nothing(
        tmp_path: Path, made: list, ww_home: Path, lie: str) -> None:
    liar = HostilePeer(tmp_path / "liar", lie)
    made.append(liar)
    cid = str(CID.v0(sha256(b"the liar has not got this")))
    r = _import(liar.addr, cid, tmp_path / "out")
    assert r.returncode == EXIT_FAILURE, r.stderr
    assert r.stderr.count("\n") == 1 and cid in r.stderr, r.stderr
    assert "1 sent wrong data" in r.stderr, r.stderr
    assert liar.wants == [bytes(CID.parse(cid))]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert run_ww("repo", "check").returncode == 0
    assert not _blocks_holding(ww_home, b"not the block ")


def test_ww_import_past_a_liar_gets_the_file_from_an_honest_peer(
        tmp_path: Path, made: list, ww_home: Path) -> None:
    """The command line, a liar named first: the file arrives whole, the lie stored nowhere."""
    liar = HostilePeer(tmp_path / "liar", "wrong")
    honest = EmbeddedNode(tmp_path / "honest", new_host=host_for_ipfs())
    made += [liar, honest]
    data = _data(5 * CHUNK_SIZE + 3, 15)
    cid = honest.add_stream([data])
    r = run_ww("import", "--no-progress", "--peer", liar.addr, "--peer",
               honest.listen([LOOPBACK]).addresses[0], f"/ipfs/{cid}", "-o",
               str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == data
    assert liar.lies >= 1
    assert run_ww("repo", "check").returncode == 0
    assert not _blocks_holding(ww_home, b"not the block ")


def test_a_liar_stays_one_for_later_fetches_and_after_it_reconnects(
        tmp_path: Path, made: list) -> None:
    """A later fetch said "no peers connected" with the liar connected; a liar that hung up
    and came back was asked again."""
    liar = HostilePeer(tmp_path / "liar", "wrong")
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    made += [liar, b]
    first, second, third = (str(CID.v0(sha256(b"block %d" % i))) for i in range(3))
    b.connect(liar.addr)
    with pytest.raises(NotFoundError, match=f"{first} .*1 sent wrong data"):
        list(b.cat(first))
    with pytest.raises(NotFoundError, match=f"{second} .*1 sent wrong data"):
        list(b.cat(second))
    b.disconnect(liar.peer_id)
    deadline = time.monotonic() + HANG  # the hang-up is waited for, not slept on
    while b.peers() and time.monotonic() < deadline:
        time.sleep(0.05)
    b.connect(liar.addr)
    with pytest.raises(NotFoundError, match=f"{third} .*1 sent wrong data"):
        list(b.cat(third))
    assert liar.wants == [bytes(CID.parse(first))]


@pytest.mark.parametrize("slow", SLOW)
def test_a_slow_peer_loses_its_want_to_an_honest_one_and_is_asked_last(
        tmp_path: Path, made: list, slow: str) -> None:
    """After PEER_TIMEOUT the root's want goes to the honest peer; the leaves then go to the
    peer that delivers, not to the one that timed out (they went to both, half of them
    waiting another PEER_TIMEOUT)."""
    peer, honest, b, cid, data = _fetch_past_a_hostile_peer(tmp_path, made, slow,
                                                            peer_timeout=SHORT_TIMEOUT)
    assert (tmp_path / "out").read_bytes() == data
    assert peer.wants == [bytes(CID.parse(cid))]
    assert _engine(honest).stats["blocks_out"] == 14
    assert b.check().ok


def test_a_provider_that_gives_up_its_reply_loses_the_want_at_once_to_an_honest_one(
        tmp_path: Path, made: list) -> None:
    """A provider resets the stream its reply was on, half-way (a server giving up a reply:
    it drops our wants with it).  The old engine went on waiting for the block, PEER_TIMEOUT
    (made longer than the hang guard here); now the reset moves the want on at once, and the
    provider, having failed it, is asked last: the honest peer gives the file."""
    peer, honest, b, cid, data = _fetch_past_a_hostile_peer(tmp_path, made, GIVES_UP,
                                                            peer_timeout=10 * HANG)
    assert (tmp_path / "out").read_bytes() == data
    assert peer.wants == [bytes(CID.parse(cid))]
    assert _engine(honest).stats["blocks_out"] == 14
    assert _engine(b).stats["liars"] == 0  # half a message reset is no lie
    assert b.check().ok


def test_a_provider_that_gives_up_its_reply_alone_fails_the_fetch_at_once(
        tmp_path: Path, made: list) -> None:
    """Alone, the fetch fails on the reset, with the line naming it, not after the peer
    timeout (made longer than the hang guard here)."""
    peer = HostilePeer(tmp_path / "gives_up", GIVES_UP)
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    made += [peer, b]
    b.connect(peer.addr)
    _engine(b).peer_timeout = 10 * HANG
    cid = str(CID.v0(sha256(b"the provider gives this up")))
    with pytest.raises(NotFoundError, match=f"1 {bitswap.RESET}"):
        b.block(cid)
    assert peer.wants == [bytes(CID.parse(cid))]
    assert peer.peer_id in _engine(b).peers  # still connected, still a peer
    assert _engine(b).stats["resets_in"] == 1


def test_a_slow_peer_that_reconnects_is_asked_last_still(tmp_path: Path, made: list) -> None:
    """A silent peer lets the root's want time out (PEER_TIMEOUT) and is asked last; it
    hangs up and comes back: its record was new, so it was asked first again for the next
    file's blocks, another PEER_TIMEOUT each time it reconnected.  Its record (delivered,
    DONT_HAVEs, timeouts) now outlives the connection, as a liar's mark does."""
    peer, honest, b, cid, data = _fetch_past_a_hostile_peer(tmp_path, made, "silent",
                                                            peer_timeout=SHORT_TIMEOUT)
    assert peer.wants == [bytes(CID.parse(cid))]
    b.disconnect(peer.peer_id)
    deadline = time.monotonic() + HANG  # the hang-up is waited for, not slept on
    while peer.peer_id in _engine(b).peers and time.monotonic() < deadline:
        time.sleep(0.05)
    b.connect(peer.addr)
    second = _data(12 * CHUNK_SIZE + 7, 15)
    cid2 = honest.add_stream([second])
    b.get(cid2, tmp_path / "out2")
    assert (tmp_path / "out2").read_bytes() == second
    assert peer.wants == [bytes(CID.parse(cid))]  # the old engine: the new root, or a leaf


def test_a_slow_peer_alone_fails_the_import_with_one_line(
        tmp_path: Path, made: list) -> None:
    peer = HostilePeer(tmp_path / "slow", "silent")
    made.append(peer)
    cid = str(CID.v0(sha256(b"the slow peer has not got this")))
    r = _import(peer.addr, cid, tmp_path / "out")
    assert r.returncode == EXIT_FAILURE, r.stderr
    assert r.stderr.count("\n") == 1 and cid in r.stderr, r.stderr
    assert f"1 did not answer within {bitswap.PEER_TIMEOUT:g} s" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    assert run_ww("repo", "check").returncode == 0


def test_an_honest_peer_dropped_for_a_broken_stream_is_not_taken_for_a_liar(
        tmp_path: Path, made: list) -> None:
    """(found by attack) The stream ww writes its wants on breaks (the peer reset it: over its
    stream limits, restarting its Bitswap server) while the connection stays up: ww drops the
    peer's record, and with it what it had asked of it.  The peer, honest, then sends the
    block it was asked on a stream of its own: not wanted any more and not among the new
    record's asked blocks, it was taken for a lie, and the peer was asked nothing more, ever
    (the liar list outlives reconnections).  Now what was asked of a dropped peer is kept
    with the liar list's bound, so the late block is dropped as unwanted, and the peer serves
    the next fetch."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.ipfs.bitswap_hostile import ResettingPeer
    from ww.core.cid import RAW

    blocks = [_data(1000 + i, 40 + i) for i in range(3)]
    cids = [str(CID.v1(RAW, sha256(block))) for block in blocks]
    peer = ResettingPeer(tmp_path / "resetting", blocks)
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    made += [peer, b]
    b.connect(peer.addr)
    engine = _engine(b)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(b.block, cids[0])
        assert peer.reset_once.wait(HANG)
        # The next want is written on the reset stream: the write fails, the peer is dropped
        # and every want asked of it fails (it was the only peer).
        with pytest.raises(NotFoundError):
            b.block(cids[1])
        with pytest.raises(NotFoundError):
            first.result(HANG)
    peer.send_held()  # the honest answer to the first want, late
    deadline = time.monotonic() + HANG
    while engine.stats["dropped"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats["dropped"] == 1
    assert engine.stats["liars"] == 0
    assert b.block(cids[2]) == blocks[2]


def test_a_stream_this_host_resets_is_not_taken_for_the_peers_reset(
        tmp_path: Path, made: list) -> None:
    """(review) py-libp2p 0.8.1 flags a stream reset by this host as reset by the peer, so
    when the host reset a peer's Bitswap stream (admission giving its place to another) the
    engine took it for the peer giving up its reply: ``resets_in`` counted it and the peer's
    wants were moved on and failed.  Now the host's own reset is not the peer's: the want
    stays with the peer until it goes."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.ipfs.test_bitswap import _on_engine, _until
    from tests.ipfs.test_bitswap_slots import _connections

    peer = HostilePeer(tmp_path / "stall", "stall")  # half a reply, its stream held open
    b = EmbeddedNode(tmp_path / "b", new_host=host_for_ipfs())
    made += [peer, b]
    b.connect(peer.addr)
    _engine(b).peer_timeout = 10 * HANG
    cid = str(CID.v0(sha256(b"the host resets the stream this comes on")))
    with ThreadPoolExecutor(1) as pool:
        fetch = pool.submit(b.block, cid)
        assert peer.asked.wait(HANG), "the want never came"

        def reading() -> int:
            p = _on_engine(b, lambda e: e.peers.get(peer.peer_id))
            return 0 if p is None else p.inbound

        _until(lambda: reading() == 1, "the peer's reply stream was never read")

        async def reset_inbound() -> int:
            streams = [s for c in _connections(b._net._node, peer.peer_id)
                       for s in list(c.streams.values()) if not s.is_initiator]
            for s in streams:
                await s.reset()
            return len(streams)

        assert b._net._node.submit(reset_inbound).result(HANG) >= 1
        _until(lambda: reading() == 0, "the reset stream's reader never ended")
        assert _engine(b).stats["resets_in"] == 0
        assert _on_engine(b, lambda e: bool(e.peers[peer.peer_id].assigned))
        assert not fetch.done()
        peer.close()  # the peer goes: the want fails now
        with pytest.raises(NotFoundError):
            fetch.result(HANG)
