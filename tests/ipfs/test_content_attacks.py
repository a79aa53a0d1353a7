"""Hostile content: DAGs and CARs shaped to make the host do far more than they are worth, or
to make `ww import` fail badly.  Each DAG is built block by block, as an attacker would."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WW, run_ww
from ww.caps.ipfs_scope import IpfsScope
from ww.core import multihash, varint
from ww.core.cid import CID, DAG_PB, RAW
from ww.ipfs import car, dagpb, exporter, unixfs
from ww.ipfs.api import CorruptBlockError, Entry, EntryType, UnsupportedError
from ww.ipfs.node import EmbeddedNode
from ww.ipfs.path import parse_path
from ww.p2p import host_for_ipfs

Blocks = list[tuple[CID, bytes]]


def _node_block(blocks: Blocks, links: list[dagpb.PBLink], fs: unixfs.UnixFSData) -> CID:
    block = dagpb.encode(dagpb.PBNode(tuple(links), unixfs.encode(fs)))
    cid = CID.v0(multihash.sha256(block))
    blocks.append((cid, block))
    return cid


def _raw_block(blocks: Blocks, data: bytes) -> CID:
    cid = CID.v1(RAW, multihash.sha256(data))
    blocks.append((cid, data))
    return cid


def _store(node: EmbeddedNode, blocks: Blocks) -> None:
    for cid, block in blocks:
        node._blocks.put_verified(cid, block)


def _write_car(path: Path, root: CID, blocks: Blocks) -> Path:
    with open(path, "wb") as out:
        car.write_car(out, [root], blocks)
    return path


def _import_car(path: Path, root: CID, blocks: Blocks) -> subprocess.CompletedProcess[str]:
    """`ww import` of a CAR of ``blocks`` into ``out`` beside it."""
    return run_ww("import", str(_write_car(path, root, blocks)), str(path.parent / "out"))


def _hamt_bomb(blocks: Blocks, levels: int) -> CID:
    """A HAMT whose every shard links all its 256 slots to one shard below: ``levels + 1``
    blocks that list as ``256 ** levels`` entries named ``x``."""
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22,
                              fanout=256)
    leaf = _raw_block(blocks, b"#!/bin/sh\necho hi\n")
    cid = _node_block(blocks, [dagpb.PBLink(leaf, b"00x", 1)], shard)
    for _ in range(levels):
        cid = _node_block(blocks, [dagpb.PBLink(cid, b"%02X" % i, 1) for i in range(256)],
                          shard)
    return cid


def test_a_hamt_linking_one_shard_many_times_is_corrupt_not_65536_entries(
    tmp_path: Path,
) -> None:
    """3 blocks, 25 KB: listed naively, 65,536 entries (three levels: 16 million; deeper:
    never ending, with the host's memory growing all along)."""
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    bomb = _hamt_bomb(blocks, levels=2)
    _store(node, blocks)
    with pytest.raises(CorruptBlockError, match="twice"):
        node.ls(str(bomb))
    with pytest.raises(CorruptBlockError, match="twice"):
        node.stat(str(bomb))
    # A capability limited to the bomb lists it to find what is reachable: refused, not hung.
    scope = IpfsScope(node, roots=[str(bomb)])
    assert not scope.contains(str(blocks[0][0]))


def test_ww_run_of_a_hamt_bomb_is_one_line(tmp_path: Path) -> None:
    """`ww run /ipfs/<cid>` stats the CID first; on a bomb that stat never ended."""
    blocks: Blocks = []
    bomb = _hamt_bomb(blocks, levels=3)  # 16 million entries as listed before
    r = _import_car(tmp_path / "bomb.car", bomb, blocks)
    assert r.returncode != 0 and not (tmp_path / "out").exists()
    r = run_ww("run", f"/ipfs/{bomb}")
    assert r.returncode != 0
    lowest = blocks[1][0]  # the shard met twice first
    assert r.stderr.strip().splitlines() == [f"ww: {bomb}: HAMT links the shard {lowest} twice"]


def test_a_hamt_of_empty_shards_is_corrupt_at_the_first_not_walked_whole() -> None:
    """(Found by attack) sub-shards that hold no entry were walked as any other: a cell's 256
    x 256 empty shards (differing in their bitfield only, 4 MB of blocks) cost the host
    1.9 s of CPU an `ls` or `stat` for no entry, and the answer's bound never stopped it (it
    counts entries).  No implementation keeps an empty sub-shard: the first is corrupt."""
    blocks: Blocks = []

    def shard(bits: bytes) -> unixfs.UnixFSData:
        return unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=bits, hash_type=0x22,
                                 fanout=256)

    mids = []
    for m in range(16):
        empty = [_node_block(blocks, [], shard((m * 256 + i).to_bytes(4, "big")))
                 for i in range(256)]
        mids.append(_node_block(blocks, [dagpb.PBLink(c, b"%02X" % i, 1)
                                         for i, c in enumerate(empty)], shard(b"m%d" % m)))
    root = _node_block(blocks, [dagpb.PBLink(c, b"%02X" % i, 1) for i, c in enumerate(mids)],
                       shard(b"r"))
    stored, read = dict(blocks), []

    def getter(cid: CID) -> bytes:
        read.append(cid)
        return stored[cid]

    with pytest.raises(CorruptBlockError, match=f"{blocks[0][0]}: an empty HAMT shard"):
        list(exporter.entries(getter, exporter.load(getter, root)))
    assert read == [root, mids[0], blocks[0][0]]  # not the 4,113 blocks


@pytest.mark.parametrize("hash_type", [0x23, None])
def test_a_hamt_of_another_hash_is_refused_not_walked_for_each_lookup(hash_type) -> None:
    """(Found by attack) a lookup in a HAMT whose hash type is not murmur3 (0x22) walked the
    whole directory for each name, without the 64 shards a lookup reads at most: 256
    sub-shards of 2,000 entries each, 1.1 s of CPU and 257 blocks a `cat` (or a cell's
    `cat`, or a gateway path) of one missing name, and any larger HAMT more, a call.  kubo
    (boxo's NewHamtFromDag) refuses such a shard; so does ``load`` now, at the root."""
    blocks: Blocks = []
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=hash_type,
                              fanout=256)
    leaf = _raw_block(blocks, b"x")
    subs = [_node_block(blocks, [dagpb.PBLink(leaf, b"%02Xe%d_%d" % (j, i, j), 1)
                                 for j in range(64)], shard) for i in range(64)]
    root = _node_block(blocks, [dagpb.PBLink(c, b"%02X" % i, 1) for i, c in enumerate(subs)],
                       shard)
    stored, read = dict(blocks), []

    def getter(cid: CID) -> bytes:
        read.append(cid)
        return stored[cid]

    for walk in (lambda: exporter.resolve(getter, parse_path(f"/ipfs/{root}/missing")),
                 lambda: list(exporter.entries(getter, exporter.load(getter, root)))):
        read.clear()
        with pytest.raises(UnsupportedError, match=f"{root}: a HAMT shard of hash type "
                                                   f"{hash_type}, where only murmur3"):
            walk()
        assert read == [root]  # not the 65 shards


def _path_of_chains(blocks: Blocks, names: int, depth: int) -> str:
    """``/ipfs/<root>/a/a/...``: ``names`` directories, each a HAMT of fanout 2 whose one
    entry, ``a``, lies ``depth`` single-link sub-shards down (where its hash leads)."""
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22,
                              fanout=2)
    hashed = int.from_bytes(unixfs.hamt_hash(b"a"), "big")
    bits = [b"%X" % ((hashed >> (63 - i)) & 1) for i in range(64)]
    below = _raw_block(blocks, b"end")
    for _ in range(names):
        below = _node_block(blocks, [dagpb.PBLink(below, bits[depth] + b"a", 1)], shard)
        for level in range(depth - 1, -1, -1):
            below = _node_block(blocks, [dagpb.PBLink(below, bits[level], 1)], shard)
    return f"/ipfs/{below}/" + "/".join(["a"] * names)


def test_a_path_through_chains_of_sub_shards_reads_a_bounded_count() -> None:
    """(Found by attack) each name of a path could lead through 63 single-link sub-shards
    (a HAMT of fanout 2, the chain kubo writes where names share a hash prefix), and the
    path's names had no bound but the call's size: a 2 KB path of 1,000 such names read
    64,001 blocks, 1.4 s of CPU a `cat` (a cell's, `ww cat`, the gateway's).  A path now
    reads at most ``SHARD_SLACK + SHARDS_PER_ENTRY`` sub-shards a name: it stops after 18
    of them here, with one error.  A path of 200 names each 7 sub-shards down (what kubo
    writes at most at its fanout of 256, where names share 56 bits of hash) resolves."""
    blocks: Blocks = []
    path = _path_of_chains(blocks, 40, 63)
    stored, read = dict(blocks), []

    def getter(cid: CID) -> bytes:
        read.append(cid)
        return stored[cid]

    with pytest.raises(exporter.ShardRatioError,
                       match=r"a path through HAMTs of more than 1024 \+ 4 sub-shards a name "
                             r"\(1096 read for 18 names\)"):
        exporter.resolve(getter, parse_path(path))
    assert len(read) <= 1024 + 4 * 18 + 18 < 40 * 64  # and each name's HAMT root
    blocks = []
    deep = _path_of_chains(blocks, 200, 7)  # 1,400 sub-shards: past the slack alone
    stored = dict(blocks)
    assert exporter.resolve(getter, parse_path(deep)).block == b"end"


def test_ls_reads_a_child_linked_many_times_once(tmp_path: Path) -> None:
    """A directory block of 4 MiB holds ~80,000 links to one 4 MiB block: read per entry,
    one `ls` hashed 300 GiB."""
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    child = _raw_block(blocks, b"y" * 100_000)
    directory = _node_block(
        blocks, [dagpb.PBLink(child, b"f%03d" % i, 100_000) for i in range(200)],
        unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    _store(node, blocks)
    reads: list[CID] = []

    def counting(cid: CID) -> bytes:
        reads.append(cid)
        return node._blocks.get(cid)

    entries = exporter.ls(counting, exporter.resolve(counting, parse_path(str(directory))),
                          "d")
    assert len(entries) == 200 and {e.size for e in entries} == {100_000}
    assert reads == [directory, child]


@pytest.mark.parametrize("target", [b"a\0b", b"", b"a" * 5000], ids=["nul", "empty", "long"])
def test_a_symlink_target_no_file_system_holds_is_one_line_and_writes_nothing(
    tmp_path: Path, target: bytes
) -> None:
    blocks: Blocks = []
    link = _node_block(blocks, [], unixfs.UnixFSData(unixfs.DataType.SYMLINK, data=target))
    root = _node_block(blocks, [dagpb.PBLink(link, b"link", 1)],
                       unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    r = _import_car(tmp_path / "link.car", root, blocks)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"ww: symlink {link}: its target "
                                             + {b"a\0b": "holds a NUL byte", b"": "is empty"}
                                             .get(target, "is 5000 bytes long")
                                             + ", unsafe on disk"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.car"]


def test_a_cell_lists_and_stats_names_that_are_not_utf8_and_sizes_past_uint64(
    tmp_path: Path, make_cell
) -> None:
    """Names are bytes in UnixFS and Text on the wire; Tsizes are the content's word and may
    add up past 2**64.  Either used to fail the whole ls or stat the cell asked for."""
    blocks: Blocks = []
    leaf = _raw_block(blocks, b"hi\n")
    sym = _node_block(blocks, [], unixfs.UnixFSData(unixfs.DataType.SYMLINK, data=b"caf\xe9"))
    big = (1 << 63) - 1  # the largest Tsize dag-pb allows
    root = _node_block(
        blocks,
        [dagpb.PBLink(leaf, b"big1", big), dagpb.PBLink(leaf, b"big2", big),
         dagpb.PBLink(leaf, b"caf\xe9", 3), dagpb.PBLink(sym, b"sym", 10)],
        unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    r = _import_car(tmp_path / "names.car", root, blocks)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(os.fsencode(tmp_path / "out"))) == [b"big1", b"big2",
                                                                 b"caf\xe9", b"sym"]
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            print([e.name for e in s.ipfs.ls("{root}")])
            st = s.ipfs.stat("{root}")
            print(st.cumulative_size, [l.name for l in st.links])
            print(s.ipfs.stat("{root}/sym").target)
    """)
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "['big1', 'big2', 'caf\ufffd', 'sym']",
        f"{2**64 - 1} ['big1', 'big2', 'caf\ufffd', 'sym']",
        "caf\ufffd",
    ]



def test_a_stat_over_bitswap_fetches_the_root_and_its_entries_not_the_whole_dag(
    tmp_path: Path,
) -> None:
    """Bitswap prefetched the links of every dag-pb block it received, prefetched ones too:
    one stat (or ls, resolve, a 10-byte cat) of a root a peer serves stored all of it."""
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    try:
        tree = tmp_path / "tree"
        for i in range(20):
            (tree / f"d{i}").mkdir(parents=True)
            (tree / f"d{i}" / "f").write_bytes(b"%d\n" % i)
        root = a.add_path(tree)  # 41 blocks: the root, 20 directories, 20 files
        b.connect(a.listen(["/ip4/127.0.0.1/tcp/0"]).addresses[0])
        assert len(b.stat(root).links) == 20
        assert b._net is not None
        engine = b._net._engine
        assert engine is not None

        async def outstanding() -> int:
            return len(engine.wants)

        for _ in range(600):  # until b wants nothing more: at most a minute
            if b._net._call(outstanding, timeout=10) == 0:
                break
            time.sleep(0.1)
        held = len(list(b._blocks.iter_multihashes()))
        assert held <= 21  # the root, and the entries it names (prefetched); not all 41
    finally:
        a.close()
        b.close()


def test_a_car_import_killed_while_staging_is_reported_by_check_and_removed_by_gc(
    tmp_path: Path, ww_home: Path
) -> None:
    """kill -9 while a CAR's blocks are being verified and staged: `ww repo check` said
    'clean' with the staged blocks (up to the whole CAR) left in $WW_HOME/staging."""
    blocks: Blocks = []
    leaves = [_raw_block(blocks, os.urandom(64 * 1024)) for _ in range(400)]
    root = _node_block(blocks, [dagpb.PBLink(c, b"f%03d" % i, 64 * 1024)
                                for i, c in enumerate(leaves)],
                       unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    car_file = _write_car(tmp_path / "big.car", root, [blocks[-1], *blocks[:-1]])
    staging = ww_home / "staging"
    proc = subprocess.Popen([WW, "import", str(car_file), str(tmp_path / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(6000):  # until the import has staged a few blocks: at most a minute
            if any(len(os.listdir(d)) > 3 for d in staging.glob("car-*")) or \
                    proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the import ended before it could be killed"
    finally:
        proc.kill()
        proc.wait()
    assert any(staging.iterdir())
    r = run_ww("repo", "check")
    assert r.returncode == 1 and "leftover temp file" in r.stdout, r.stdout
    assert run_ww("repo", "gc").returncode == 0
    assert not any(staging.iterdir())
    r = run_ww("repo", "check")
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout


@pytest.mark.parametrize("kind", ["file", "symlink", "slash"])
def test_a_megabyte_entry_name_is_a_short_line_naming_the_entry(tmp_path: Path,
                                                                 kind: str) -> None:
    """An entry name is as long as the content likes: the error line used to carry all of it
    (1 MB), and for a symlink named its target instead of the entry."""
    blocks: Blocks = []
    leaf = _raw_block(blocks, b"x")
    sym = _node_block(blocks, [], unixfs.UnixFSData(unixfs.DataType.SYMLINK, data=b"target"))
    name = b"a/" * 500_000 if kind == "slash" else b"n" * 1_000_000
    root = _node_block(blocks, [dagpb.PBLink(sym if kind == "symlink" else leaf, name, 1)],
                       unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    r = _import_car(tmp_path / "long.car", root, blocks)
    assert r.returncode == 1
    [line] = r.stderr.splitlines()
    assert len(line) < 400 and ("a/a/a/" if kind == "slash" else "nnnnnn") in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.car"]


def test_a_file_whose_sizes_lie_is_corrupt_before_a_byte_is_used(tmp_path: Path) -> None:
    """A root declaring 2**63 bytes over a 1-byte leaf, and one whose filesize disagrees with
    its blocksizes: `cat` anywhere in them and `ww import` are corrupt-block errors."""
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    leaf = _raw_block(blocks, b"x")
    huge = 1 << 63
    liar = _node_block(blocks, [dagpb.PBLink(leaf, b"", 1)],
                       unixfs.UnixFSData(unixfs.DataType.FILE, filesize=huge, blocksizes=(huge,)))
    mismatch = _node_block(blocks, [dagpb.PBLink(leaf, b"", 1)],
                           unixfs.UnixFSData(unixfs.DataType.FILE, filesize=5, blocksizes=(1,)))
    _store(node, blocks)
    assert node.stat(str(liar)).size == huge  # what it claims, without reading it
    for offset in (0, huge - 10):
        with pytest.raises(CorruptBlockError, match="parent says"):
            b"".join(node.cat(str(liar), offset=offset, length=10))
    with pytest.raises(CorruptBlockError, match="filesize disagrees"):
        node.stat(str(mismatch))
    with pytest.raises(CorruptBlockError):
        node.get(str(liar), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ls_learns_a_childs_kind_without_decoding_its_links(tmp_path: Path,
                                                           monkeypatch) -> None:
    """(Found by attack) `ls` decoded each child whole to show its type and size: 10 ms a
    child of 5,461 empty identity links (64 KiB), and entries cycling through one child more
    than ``KIND_CACHE`` (4,097) read each again: 85 s of CPU a `ww ls` of 8,194 entries,
    some 17 minutes for a cell's `ls` within its bounds.  The links are skipped now (3.8 s
    for those 8,194): here none of the children's 2,000 links each is decoded, however
    often the entries come back to them, and what is shown, and refused, is as before."""
    monkeypatch.setattr(exporter, "KIND_CACHE", 2)  # 4 children cycled: each read again
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    empty = CID.v1(RAW, b"\x00\x00")
    children = [_node_block(blocks, [dagpb.PBLink(empty, b"", 0)] * 2000,
                            unixfs.UnixFSData(unixfs.DataType.DIRECTORY, mode=i))
                for i in range(3)]
    leaf = _raw_block(blocks, b"z" * 300)
    children.append(_node_block(  # a file of 2,000 chunks, 600,000 bytes and data
        blocks, [dagpb.PBLink(leaf, b"", 300)] * 2000,
        unixfs.UnixFSData(unixfs.DataType.FILE, data=b"d" * 200, filesize=600_200,
                          blocksizes=(300,) * 2000)))
    root = _node_block(blocks, [dagpb.PBLink(children[i % 4], b"e%02d" % i, 1)
                                for i in range(40)],
                       unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    lying = _node_block(  # one blocksize short
        blocks, [dagpb.PBLink(leaf, b"", 300)] * 2000,
        unixfs.UnixFSData(unixfs.DataType.FILE, blocksizes=(300,) * 1999))
    bad = _node_block(blocks, [dagpb.PBLink(lying, b"x", 1)],
                      unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    _store(node, blocks)
    decoded = []
    decode_link = dagpb._decode_link
    monkeypatch.setattr(dagpb, "_decode_link", lambda body: decoded.append(1) or decode_link(body))
    try:
        entries = node.ls(str(root))
        assert len(decoded) <= 41  # the directory's own 40 links and its node's, not 80,000
        want = [exporter.load(node._blocks.get, children[i % 4]) for i in range(40)]
        assert [(e.type, e.size) for e in entries] == [(c.type, c.content_size) for c in want]
        assert entries[3].size == 600_200
        with pytest.raises(CorruptBlockError, match=f"{lying}: 2000 links but 1999 blocksizes"):
            node.ls(str(bad))
    finally:
        node.close()


def test_a_childs_kind_is_skimmed_whatever_its_links_lengths(monkeypatch) -> None:
    """(Found by attack) a link of 16 KiB or more (a name that long; its length a varint of
    three bytes) made ``skim`` decode the whole block: one first, then 5,461 empty links,
    12 ms a child, as slow as a full decode, so that a listing cycling through more children
    than ``KIND_CACHE`` cost what it did before ``skim``.  Such a block, which the decoder
    accepts, is skimmed now; one it refuses is still refused."""
    blocks: Blocks = []
    empty = CID.v1(RAW, b"\x00\x00")
    fs = unixfs.UnixFSData(unixfs.DataType.DIRECTORY)
    child = _node_block(blocks, [dagpb.PBLink(empty, b"n" * 16_400, 0)]
                        + [dagpb.PBLink(empty, b"", 0)] * 2000, fs)
    stored = dict(blocks)
    past = stored[child][:-1]  # the Data field one byte short: refused by both
    decoded = []
    decode_link = dagpb._decode_link
    monkeypatch.setattr(dagpb, "_decode_link", lambda body: decoded.append(1) or decode_link(body))
    assert exporter.entry_kind(stored.__getitem__, child) == (EntryType.DIRECTORY, 0)
    assert decoded == []  # none of its 2,001 links
    assert dagpb.skim(stored[child]) == (2001, unixfs.encode(fs))
    with pytest.raises(CorruptBlockError):
        dagpb.decode(past)
    with pytest.raises(CorruptBlockError):
        dagpb.skim(past)


def test_a_roots_limited_scope_admits_no_other_form_of_a_block_and_no_shard(
    tmp_path: Path,
) -> None:
    """Reachable means named by a directory entry under a root, compared as CIDv1 with its
    codec: not the raw-codec form of a reachable dag-pb block, not a HAMT shard, not a file's
    chunk."""
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    chunk = _raw_block(blocks, b"c" * 10)
    file = _node_block(blocks, [dagpb.PBLink(chunk, b"", 10)],
                       unixfs.UnixFSData(unixfs.DataType.FILE, filesize=10, blocksizes=(10,)))
    shard_fs = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22,
                                 fanout=256)
    inner = _node_block(blocks, [dagpb.PBLink(file, b"00f", 1)], shard_fs)
    hamt = _node_block(blocks, [dagpb.PBLink(inner, b"00", 1)], shard_fs)
    root = _node_block(blocks, [dagpb.PBLink(hamt, b"h", 1)],
                       unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    _store(node, blocks)
    scope = IpfsScope(node, roots=[str(root)])
    assert scope.contains(str(file)) and scope.contains(str(file.to_v1()))  # v0 or v1: one
    assert scope.contains(str(hamt))
    for outside in (inner, chunk, CID.v1(RAW, file.multihash), CID.v1(RAW, root.multihash)):
        assert scope.path_denied(f"/ipfs/{outside}") is not None, outside


def test_a_scope_walk_stops_within_a_directory_at_its_bound(tmp_path: Path, monkeypatch) -> None:
    """(Found by attack) the reachability walk listed each directory whole (``CoreAPI.ls``)
    and looked at its bound, :data:`MAX_WALK` entries, only between directories: a cell's
    HAMT of a million entries (identity CIDs, 18 MB of blocks), its capability narrowed to
    it four times, and a `cat` outside on each: the host grew past its guard (288 MiB) and
    hung up fd 3.  Now the walk takes entries one at a time and stops at the bound (500
    here, of 4,000)."""
    from ww.caps import ipfs_scope

    monkeypatch.setattr(ipfs_scope, "MAX_WALK", 500)
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22,
                              fanout=256)
    files = [CID.v1(RAW, b"\x00\x02%02d" % i) for i in range(100)]  # identity CIDs
    subs = [_node_block(blocks, [dagpb.PBLink(files[j], b"%02Xe%d_%d" % (j, i, j), 2)
                                 for j in range(100)], shard) for i in range(40)]
    root = _node_block(blocks, [dagpb.PBLink(c, b"%02X" % i, 1) for i, c in enumerate(subs)],
                       shard)
    _store(node, blocks)
    produced = []
    listing = node.iter_ls

    def counted(path: str) -> Iterator[Entry]:
        for entry in listing(path):
            produced.append(entry)
            yield entry

    node.iter_ls = counted  # type: ignore[method-assign]
    try:
        scope = IpfsScope(node, roots=[str(root)])
        assert scope.contains(str(files[99]))  # within the first 500 entries
        outside = CID.v1(RAW, b"\x00\x01y")
        assert scope.path_denied(f"/ipfs/{outside}") is not None
        assert len(produced) <= 501  # not the 4,000 (a list of them all, before)
    finally:
        node.close()


def test_the_scopes_of_one_cell_walk_a_bounded_count_together(tmp_path: Path,
                                                                monkeypatch) -> None:
    """(Found by attack) each narrowed capability's walk learnt up to ``MAX_WALK`` CIDs and
    kept them as long as it lived, and a cell narrows as often as it likes: 12 capabilities
    narrowed to a HAMT of a million distinct identity CIDs, each asked for a `cat` outside,
    held the host at 181 MB (some 24 reach its guard).  The scopes narrowed from one share
    what their walks may take, ``CELL_WALKS`` times ``MAX_WALK`` (2 x 500 here), and one
    gives its share back once it is gone."""
    import gc

    from ww.caps import ipfs_scope

    monkeypatch.setattr(ipfs_scope, "MAX_WALK", 500)
    monkeypatch.setattr(ipfs_scope, "CELL_WALKS", 2, raising=False)
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22,
                              fanout=256)
    subs = [_node_block(blocks, [dagpb.PBLink(CID.v1(RAW, b"\x00\x02%c%c" % (i, j)),
                                              b"%02Xe%d_%d" % (j, i, j), 2)
                                 for j in range(100)], shard) for i in range(40)]
    root = _node_block(blocks, [dagpb.PBLink(c, b"%02X" % i, 1) for i, c in enumerate(subs)],
                       shard)
    _store(node, blocks)
    outside = str(CID.v1(RAW, b"\x00\x01y"))
    try:
        cell = IpfsScope(node, roots=[str(root)])  # what a cell was granted
        narrowed = [cell.narrowed(False, []) for _ in range(3)]
        assert not any(scope.contains(outside) for scope in narrowed)
        walked = [scope._walked for scope in narrowed]
        assert walked == [0, 500, 500], walked  # the third had the first, idle, forget
        assert sum(scope._taken[0] for scope in narrowed) == 1000
        del narrowed[0]
        gc.collect()
        assert not narrowed[1].contains(outside) and narrowed[1]._walked == 500
    finally:
        node.close()


def test_a_walk_stopped_by_the_cells_bound_takes_its_directory_up_again(tmp_path: Path,
                                                                        monkeypatch) -> None:
    """(Found by attack) a walk stopped within a directory by the cell's bound (the other
    scopes, walking at the time, held the rest of ``CELL_WALKS``), or finding none left,
    let that directory go: once the cell had room again, the rest of the directory was
    refused for good, though within the roots and well within the scope's own bound, while
    directories after it were walked.  The walk now takes it up where it stopped."""
    from ww.caps import ipfs_scope

    monkeypatch.setattr(ipfs_scope, "MAX_WALK", 500)
    monkeypatch.setattr(ipfs_scope, "CELL_WALKS", 2)
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    plain = unixfs.UnixFSData(unixfs.DataType.DIRECTORY)

    def directory(tag: int, count: int) -> tuple[CID, list[CID]]:
        files = [CID.v1(RAW, b"\x00\x03%c%c%c" % (tag, i >> 8, i & 0xFF)) for i in range(count)]
        return _node_block(blocks, [dagpb.PBLink(f, b"e%04d" % i, 3)
                                    for i, f in enumerate(files)], plain), files

    big, big_files = directory(1, 800)
    small, _ = directory(2, 300)
    wide, wide_files = directory(3, 700)
    root = _node_block(blocks, [dagpb.PBLink(c, n, 1) for c, n in
                                ((big, b"a"), (small, b"b"), (wide, b"c"))], plain)
    _store(node, blocks)
    outside = str(CID.v1(RAW, b"\x00\x01y"))
    try:
        cell = IpfsScope(node, roots=[str(root)])  # what a cell was granted
        first = cell.narrowed(False, [str(big)])
        second = cell.narrowed(False, [str(small)])
        third = cell.narrowed(False, [str(wide)])
        assert not first.contains(outside) and not second.contains(outside)  # 500 + 300
        with first._walking, second._walking:  # walking in other threads: theirs is held
            assert not third.contains(str(wide_files[400]))  # 200 taken, the cell's bound
            with third._walking:
                assert not cell.contains(str(big_files[0]))  # none left: nothing taken
        assert third.contains(str(wide_files[400]))  # refused for good, before
        assert cell.contains(str(big_files[0]))
        assert third._walked <= 500 and not third.contains(str(wide_files[600]))  # its own
    finally:
        node.close()


def test_scopes_held_elsewhere_cannot_starve_the_cells_own_walk(tmp_path: Path,
                                                               monkeypatch) -> None:
    """(Found by attack) the cell's bound on its scopes' walks was first come, first
    served, each scope keeping its share as long as it lived: a peer holding a capability
    the cell exported over a large DAG narrows it ``CELL_WALKS`` times (``attenuate``), asks
    each for a CID outside, and keeps them; from then on every other scope of the cell, its
    own granted one included, refused whatever it had not yet seen within its roots, for as
    long as the peer liked.  What a walk found is a cache: an idle scope's is forgotten now
    (the least recently walked first), its share going to the scope that needs it, and
    learnt again by walking if it is asked again; the cell's bound on what is held stays."""
    from ww.caps import ipfs_scope

    monkeypatch.setattr(ipfs_scope, "MAX_WALK", 500)
    monkeypatch.setattr(ipfs_scope, "CELL_WALKS", 2)
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    plain = unixfs.UnixFSData(unixfs.DataType.DIRECTORY)
    files = [CID.v1(RAW, b"\x00\x02%c%c" % (i >> 8, i & 0xFF)) for i in range(600)]
    big = _node_block(blocks, [dagpb.PBLink(f, b"e%04d" % i, 3) for i, f in enumerate(files)],
                      plain)
    mine = CID.v1(RAW, b"\x00\x02me")
    root = _node_block(blocks, [dagpb.PBLink(big, b"big", 1), dagpb.PBLink(mine, b"me", 1)],
                       plain)
    _store(node, blocks)
    outside = str(CID.v1(RAW, b"\x00\x01y"))
    try:
        cell = IpfsScope(node, roots=[str(root)])  # what the cell was granted
        exported = cell.narrowed(False, [str(big)])
        held = [exported.narrowed(False, []) for _ in range(2)]  # the peer's
        assert not any(scope.contains(outside) for scope in held)
        assert [scope._walked for scope in held] == [500, 500]
        assert cell.contains(str(mine))  # refused before: the peer held the cell's 1,000
        assert held[1].contains(str(files[100]))  # its walk kept
        assert not held[0].contains(outside)  # walked again, within the bound
        assert sum(scope._taken[0] for scope in (cell, exported, *held)) <= 1000
    finally:
        node.close()


def test_a_car_with_several_roots_is_refused_before_anything_is_stored_or_pinned(
    tmp_path: Path, ww_home: Path
) -> None:
    """It used to be imported and every root pinned, then refused (exit 2) without saying
    so: a CAR naming thousands of roots left thousands of pins behind a failed command."""
    blocks: Blocks = [(CID.v1(RAW, multihash.sha256(b"%d" % i)), b"%d" % i) for i in range(5)]
    car_file = tmp_path / "roots.car"
    with open(car_file, "wb") as out:
        car.write_car(out, [cid for cid, _ in blocks], blocks)
    r = run_ww("import", str(car_file), str(tmp_path / "out"))
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert "has 5 roots" in line and str(blocks[0][0]) in line and "nothing was imported" in line
    assert not any((ww_home / "pins" / "recursive").iterdir())
    assert "clean (0 blocks)" in run_ww("repo", "check").stdout
    assert not (tmp_path / "out").exists()


def test_ww_run_never_follows_a_symlink_in_an_ipfs_program_path(tmp_path: Path) -> None:
    """`bin -> real` and `sh -> /bin/sh` in the program's tree: neither is followed (on the
    host, `/bin/sh` would be the host's shell, not content)."""
    tree = tmp_path / "prog"
    (tree / "real").mkdir(parents=True)
    (tree / "real" / "run").write_text("#!/bin/sh\necho real\n")
    os.symlink("real", tree / "bin")
    os.symlink("/bin/sh", tree / "sh")
    r = run_ww("export", str(tree))
    assert r.returncode == 0, r.stderr
    root = r.stdout.strip()
    assert run_ww("run", f"{root}/real/run").stdout == "real\n"
    r = run_ww("run", f"{root}/bin/run")
    assert (r.returncode, r.stderr.count("\n")) == (127, 1) and "is a symlink" in r.stderr
    r = run_ww("run", f"{root}/sh")
    assert (r.returncode, r.stderr.count("\n")) == (126, 1) and "is a symlink" in r.stderr


def test_prefetching_a_huge_directory_stops_at_the_cap(tmp_path: Path) -> None:
    """A 4 MiB directory block links 80,000 blocks: prefetching its links looked each one up
    in the repository and recounted the outstanding wants for each (2 s on the thread that
    serves every peer); it stops once MAX_PREFETCH are wanted."""
    from ww.ipfs import bitswap
    from ww.ipfs.blockstore import Blockstore

    class CountingStore(Blockstore):
        lookups = 0

        def has(self, cid: CID) -> bool:
            CountingStore.lookups += 1
            return super().has(cid)

    engine = bitswap.Engine(CountingStore(tmp_path / "blocks"), self_id="me",
                            open_stream=None)  # not started: wants are queued, not sent
    engine.peer_connected("a-peer")
    links = [CID.v1(RAW, multihash.sha256(b"%d" % i)) for i in range(80_000)]
    engine.prefetch(links)
    assert len(engine.wants) == bitswap.MAX_PREFETCH
    assert CountingStore.lookups <= bitswap.MAX_PREFETCH + 1


def test_a_unixfs_mode_in_the_content_never_makes_a_setuid_file(tmp_path: Path) -> None:
    """UnixFS 1.5 nodes may carry a mode (04777: setuid, world-writable): ww import uses its
    own (0666, or 0777 with -x, less the umask), as kubo's ipfs get does by default."""
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    blocks: Blocks = []
    data = b"#!/bin/sh\nid\n"
    file = _node_block(blocks, [], unixfs.UnixFSData(unixfs.DataType.FILE, data=data,
                                                     filesize=len(data), mode=0o4777))
    root = _node_block(blocks, [dagpb.PBLink(file, b"tool", 1)],
                       unixfs.UnixFSData(unixfs.DataType.DIRECTORY, mode=0o7777))
    _store(node, blocks)
    old = os.umask(0o022)
    try:
        node.get(str(root), tmp_path / "out", executable=True)
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "tool").read_bytes() == data
    assert (tmp_path / "out" / "tool").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "out").stat().st_mode & 0o7777 == 0o755


def _tiny_link(cid: CID) -> bytes:
    """A PBLink with a Hash and nothing else: 8 bytes for an empty identity CID."""
    body = b"\x0a" + bytes([len(bytes(cid))]) + bytes(cid)
    return b"\x12" + bytes([len(body)]) + body


def _pb_data(fs: unixfs.UnixFSData, extra: bytes = b"") -> bytes:
    data = unixfs.encode(fs) + extra
    return b"\x0a" + varint.encode(len(data)) + data


def test_a_block_of_tiny_links_is_refused_at_the_first_link_past_the_cap(
    tmp_path: Path, ww_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 4 MiB block holds 524,000 8-byte links (an empty identity CID each): every read
    decoded all of them, 4.3 s and 92 MiB (`ww ls`: 8.6 s, 122 MiB; the Bitswap thread, to
    prefetch, 4.3 s); and 4 million packed blocksizes in a node linking nothing, 2 s and
    66 MiB.  Now a node is refused at the first link past MAX_LINKS, at the first blocksize
    past its link count, and a prefetch decodes only the links it can want."""
    from ww.ipfs import bitswap

    empty = CID.v1(RAW, b"\x00\x00")
    directory = _tiny_link(empty) * (dagpb.MAX_LINKS + 1000) + _pb_data(
        unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
    sizes = 1 << 20  # one byte each, packed: all in one field
    no_links = _pb_data(unixfs.UnixFSData(unixfs.DataType.FILE),
                        b"\x22" + varint.encode(sizes) + b"\x01" * sizes)
    node = EmbeddedNode(ww_home)
    dir_cid = node.put_block(directory, DAG_PB)
    file_cid = node.put_block(no_links, DAG_PB)

    decoded = 0
    decode_link = dagpb._decode_link

    def counting(body: memoryview) -> dagpb.PBLink:
        nonlocal decoded
        decoded += 1
        return decode_link(body)

    with monkeypatch.context() as patch:
        patch.setattr(dagpb, "_decode_link", counting)
        for read in (node.ls, node.stat, lambda cid: b"".join(node.cat(cid))):
            decoded = 0
            with pytest.raises(CorruptBlockError,
                               match=f"^{dir_cid}: invalid dag-pb block: more than "
                                     f"{dagpb.MAX_LINKS} links$"):
                read(dir_cid)
            assert decoded == dagpb.MAX_LINKS
            with pytest.raises(CorruptBlockError,
                               match=f"^{file_cid}: invalid UnixFS data: more blocksizes than the "
                                     "node's 0 links$"):
                read(file_cid)
        decoded = 0
        assert bitswap.links_of(directory, bitswap.MAX_PREFETCH) == [empty] * bitswap.MAX_PREFETCH
        assert decoded == bitswap.MAX_PREFETCH

    for cid in (dir_cid, file_cid):  # the CLI: one line each
        for command in ("ls", "cat"):
            r = run_ww(command, f"/ipfs/{cid}")
            assert r.returncode == 1 and r.stdout == ""
            [line] = r.stderr.splitlines()
            assert line.startswith(f"ww: {cid}: invalid "), line


def test_reading_a_block_online_looks_up_a_bounded_number_of_its_links(tmp_path: Path) -> None:
    """Online, a dag-pb block read from the repository has its missing links prefetched: all
    its links were decoded and looked up until 512 missing ones were found, so a block of
    131,000 links all present cost each read (a gateway request: 4-5 s of CPU) a lookup
    each.  Now at most PREFETCH_SCAN links are looked at."""
    from ww.ipfs import bitswap

    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    try:
        node.listen(["/ip4/127.0.0.1/tcp/0"])
        net = node._net
        assert net is not None and net.running
        blocks: Blocks = []
        child = _raw_block(blocks, b"here")
        links = 3 * bitswap.PREFETCH_SCAN
        directory = _node_block(blocks, [dagpb.PBLink(child, b"f%06d" % i, 4)
                                         for i in range(links)],
                                unixfs.UnixFSData(unixfs.DataType.DIRECTORY))
        _store(node, blocks)
        lookups = 0
        has = net._store.has

        def counting(cid: CID) -> bool:
            nonlocal lookups
            lookups += 1
            return has(cid)

        net._store.has = counting  # type: ignore[method-assign]
        assert node.stat(str(directory), links=False).cid == str(directory)
        assert 0 < lookups <= bitswap.PREFETCH_SCAN
    finally:
        node.close()
