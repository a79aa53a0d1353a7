"""Pins decide what garbage collection keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from ww.ipfs import dagpb
from ww.ipfs.api import AddOptions, IpfsError, NotFoundError
from ww.ipfs.importer import CHUNK_SIZE
from ww.ipfs.node import EmbeddedNode

from .conftest import deterministic_bytes, make_tree

DATA = deterministic_bytes(3 * CHUNK_SIZE + 7)
UNPINNED = AddOptions(pin=False)


def test_add_pins_recursively_by_default_and_gc_keeps_the_whole_dag(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    file_cid = node.add_stream([DATA])
    tree = node.add_path(make_tree(tmp_path / "t"))
    assert node.pins_by_kind() == {"recursive": sorted([file_cid, tree]), "direct": []}
    blocks = node.check().blocks
    assert node.gc().removed_blocks == 0
    assert node.check().blocks == blocks
    assert b"".join(node.cat(file_cid)) == DATA
    node.get(tree, tmp_path / "out")


def test_gc_removes_unpinned_content_and_reports_what_it_freed(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA], UNPINNED)
    size = node.stat(cid).cumulative_size
    assert node.pins() == []
    report = node.gc()
    assert (report.removed_blocks, report.freed_bytes) == (5, size)
    with pytest.raises(NotFoundError):
        node.stat(cid)


def test_unpin_then_gc_removes_the_dag_but_keeps_blocks_shared_with_other_pins(
    node: EmbeddedNode,
) -> None:
    shared_prefix = DATA[: 2 * CHUNK_SIZE]
    first = node.add_stream([DATA])
    second = node.add_stream([shared_prefix + b"different tail"])
    node.unpin(first)
    node.gc()
    assert b"".join(node.cat(second)) == shared_prefix + b"different tail"
    with pytest.raises(NotFoundError):
        b"".join(node.cat(first))


def test_direct_pin_keeps_only_the_root_block(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA], UNPINNED)
    node.pin(cid, recursive=False)
    assert node.pins_by_kind() == {"recursive": [], "direct": [cid]}
    node.gc()
    assert node.check().blocks == 1
    assert node.stat(cid).size == len(DATA)  # the root alone knows the size
    with pytest.raises(NotFoundError):
        b"".join(node.cat(cid))


def test_recursive_pin_replaces_a_direct_pin_and_a_direct_pin_does_not_downgrade(
    node: EmbeddedNode,
) -> None:
    cid = node.add_stream([DATA], UNPINNED)
    node.pin(cid, recursive=False)
    node.pin(cid)
    assert node.pins_by_kind() == {"recursive": [cid], "direct": []}
    node.pin(cid, recursive=False)
    assert node.pins_by_kind() == {"recursive": [cid], "direct": []}


def test_pinning_a_sub_path_pins_that_subtree(node: EmbeddedNode, tmp_path: Path) -> None:
    tree = node.add_path(make_tree(tmp_path / "t"), UNPINNED)
    node.pin(f"/ipfs/{tree}/a")
    sub = node.resolve(f"{tree}/a")
    assert node.pins() == [sub]
    node.gc()
    assert b"".join(node.cat(f"{sub}/b/c/deep.txt")) == b"deep\n"
    with pytest.raises(NotFoundError):
        node.stat(tree)


def test_recursive_pin_of_an_incomplete_dag_fails_and_records_nothing(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA], UNPINNED)
    leaf = dagpb.decode(node.block(cid)).links[1].cid
    name = leaf.multihash.hex()
    (node.repo_path / "blocks" / name[-3:-1] / name).unlink()
    with pytest.raises(NotFoundError, match="not in the local repository"):
        node.pin(cid)
    assert node.pins() == []


def test_unpin_of_something_not_pinned_raises_not_found(node: EmbeddedNode) -> None:
    cid = node.add_stream([b"x"], UNPINNED)
    with pytest.raises(NotFoundError, match="not pinned"):
        node.unpin(cid)


def test_unpin_needs_no_blocks_so_a_damaged_pin_can_still_be_removed(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA])
    for path in (node.repo_path / "blocks").rglob("*"):
        if path.is_file():
            path.unlink()
    node.unpin(cid)
    assert node.pins() == []


def test_gc_refuses_to_run_when_a_pinned_dag_is_damaged_and_removes_nothing(
    node: EmbeddedNode,
) -> None:
    cid = node.add_stream([DATA])
    node.add_stream([b"garbage"], UNPINNED)
    leaf = dagpb.decode(node.block(cid)).links[0].cid
    name = leaf.multihash.hex()
    (node.repo_path / "blocks" / name[-3:-1] / name).unlink()
    before = node.check().blocks
    with pytest.raises(IpfsError, match="nothing was removed"):
        node.gc()
    assert node.check().blocks == before


def test_pins_survive_reopening_the_repository(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA])
    again = EmbeddedNode(node.repo_path)
    assert again.pins() == [cid]
    assert again.gc().removed_blocks == 0


def test_gc_names_each_block_it_removes_as_kubo_does(node: EmbeddedNode, tmp_path: Path) -> None:
    """Each removed block is told as it goes, as kubo's ``repo gc`` names it: the CIDv1 of
    its multihash with the raw codec (a dag-pb root too: the store keeps no codec)."""
    from ww.core.cid import CID, RAW

    kept = node.add_stream([b"kept"])
    cid = node.add_stream([DATA], UNPINNED)
    root = CID.parse(cid)
    told: list[str] = []
    report = node.gc(told.append)
    assert report.removed_blocks == len(told) == 5
    assert len(set(told)) == 5 and all(c.startswith("bafkrei") for c in told)
    assert str(CID.v1(RAW, root.multihash)) in told  # the dag-pb root, named raw
    assert str(CID.v1(RAW, CID.parse(kept).multihash)) not in told
    assert node.gc(told.append).removed_blocks == 0 and len(told) == 5


def test_a_block_gc_cannot_remove_is_reported_and_gc_goes_on(node: EmbeddedNode) -> None:
    """A name gc cannot unlink (here a directory where a block file would be: root may
    unlink any file) is told to ``failed`` and the other blocks still go; without
    ``failed`` gc ends with one error naming it, after removing the rest."""
    from ww.core import multihash
    from ww.core.cid import CID, RAW

    blocks = node._repo.blocks
    stuck = multihash.sha256(b"stuck")
    blocks.path_for(stuck).parent.mkdir(parents=True, exist_ok=True)
    blocks.path_for(stuck).mkdir()
    node.add_stream([DATA], UNPINNED)
    removed: list[str] = []
    failures: list[tuple[str, str]] = []
    report = node.gc(removed.append, lambda c, why: failures.append((c, why)))
    assert (report.removed_blocks, report.failed_blocks) == (5, 1)
    assert [c for c, _ in failures] == [str(CID.v1(RAW, stuck))]
    node.add_stream([b"more" * 1000], UNPINNED)
    with pytest.raises(IpfsError, match="could not be removed"):
        node.gc()
    assert [str(CID.v1(RAW, mh)) for mh in blocks.iter_multihashes()] == [
        str(CID.v1(RAW, stuck))]


def test_gc_leaves_the_temp_files_of_writers_still_running(node: EmbeddedNode) -> None:
    """(found by attack) Bitswap stores the blocks it fetches (for a ``cat``, in the daemon
    or in any ``ww`` sharing the repository) without the repository's writer lock, so gc's
    exclusive lock does not mean no writer runs: gc removed every temp file, an in-flight
    fetch's included, and the fetch failed ("cannot store block ...: No such file").  A temp
    file is named after its writer's pid: gc now removes those of writers that are gone (as
    ``repo check`` counts them), never those of a live one."""
    import os
    import subprocess

    node.add_stream([b"a block to make a shard directory"], UNPINNED)
    shard = next(p for p in (node.repo_path / "blocks").iterdir() if p.is_dir())
    in_flight = shard / f".tmp-{os.getpid()}-0123456789abcdef"  # this process's Bitswap
    in_flight.write_bytes(b"half a block")
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = shard / f".tmp-{gone.pid}-fedcba9876543210"  # a writer killed mid-write
    left.write_bytes(b"left by a crash")
    report = node.gc()
    assert in_flight.exists()
    assert not left.exists()
    assert report.removed_temp_files == 1
