"""DAGs and directory trees of any depth, and DAGs that link one block many times.

Every walk over a DAG or a directory tree (import, export, cat, CAR, pin, gc, check) uses an
explicit stack, so the tests run with Python's recursion limit lowered far below the depths
they use: a walk that recursed once per level would raise RecursionError.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ww.core import multihash
from ww.core.cid import CID
from ww.ipfs import dagpb, unixfs
from ww.ipfs.api import CorruptBlockError
from ww.ipfs.importer import ImportParams, import_directory, import_file, import_symlink
from ww.ipfs.node import EmbeddedNode

from .conftest import DEEP_TREE_LEVELS, Corpus, make_deep_tree, remove_tree

LOW_RECURSION_LIMIT = 200  # far below the depths below; enough for pytest and the code


@pytest.fixture
def shallow_stack() -> Iterator[None]:
    """Python's recursion limit lowered for the test: a walk recursing per level fails."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(LOW_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory removed by the test itself: pytest's clean-up recurses per level."""
    path = tmp_path / "scratch"
    path.mkdir()
    yield path
    remove_tree(path)


def _deep_dag(node: EmbeddedNode, levels: int) -> str:
    """A directory with ``levels`` nested directories ``d/d/...`` under it and a file at the
    bottom, built straight into the repository (quicker than on disk)."""
    params = ImportParams()
    with node._blocks.writer() as sink:
        here = import_file([b"the bottom\n"], params, sink)
        name = b"bottom.txt"
        for _ in range(levels + 1):
            here = import_directory([(name, here)], params, sink)
            name = b"d"
    return str(here.cid)


def _depth_of(path: Path) -> int:
    depth = 0
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while "d" in os.listdir(fd):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
            depth += 1
        return depth
    finally:
        os.close(fd)


def test_a_1000_level_directory_gets_kubos_cid_and_round_trips(
    corpus: Corpus, node: EmbeddedNode, scratch: Path, shallow_stack: None
) -> None:
    root = node.add_path(corpus.paths["tree_deep"])
    assert root == corpus.kubo["tree_deep"]
    out = scratch / "out"
    node.get(root, out)
    assert _depth_of(out) == DEEP_TREE_LEVELS
    assert node.add_path(out) == root  # every name, byte and symlink came back
    assert len(b"".join(node.cat(f"{root}/" + "d/" * DEEP_TREE_LEVELS + "bottom.txt"))) == 11


def test_ww_export_and_import_of_a_1000_level_directory_round_trip(scratch: Path) -> None:
    """The command line at the default recursion limit, which 1000 levels exceed."""
    from tests.conftest import run_ww

    src = make_deep_tree(scratch / "src", DEEP_TREE_LEVELS)
    exported = run_ww("export", str(src), timeout=600)
    assert exported.returncode == 0, exported.stderr
    cid = exported.stdout.strip()
    imported = run_ww("import", cid, str(scratch / "out"), timeout=600)
    assert imported.returncode == 0, imported.stderr
    assert _depth_of(scratch / "out") == DEEP_TREE_LEVELS
    again = run_ww("export", str(scratch / "out"), timeout=600)
    assert again.stdout.strip() == cid


def test_a_1500_level_dag_goes_through_a_car_and_back_to_disk(
    tmp_path: Path, scratch: Path, shallow_stack: None
) -> None:
    first = EmbeddedNode(tmp_path / "first")
    root = _deep_dag(first, 1500)
    car = io.BytesIO()
    first.export_car([root], car)
    second = EmbeddedNode(tmp_path / "second")
    assert second.import_car(io.BytesIO(car.getvalue())) == [root]
    again = io.BytesIO()
    second.export_car([root], again)
    assert again.getvalue() == car.getvalue()
    second.get(root, scratch / "out")
    assert _depth_of(scratch / "out") == 1500
    assert second.add_path(scratch / "out") == root


def test_ww_import_of_a_1500_level_car_writes_the_tree(tmp_path: Path, scratch: Path) -> None:
    from tests.conftest import run_ww

    first = EmbeddedNode(tmp_path / "first")
    root = _deep_dag(first, 1500)
    car = scratch / "deep.car"
    with open(car, "wb") as f:
        first.export_car([root], f)
    done = run_ww("import", str(car), str(scratch / "out"), timeout=600)
    assert done.returncode == 0, done.stderr
    assert _depth_of(scratch / "out") == 1500


def test_pin_gc_and_check_walk_a_deep_dag(tmp_path: Path, shallow_stack: None) -> None:
    node = EmbeddedNode(tmp_path / "repo")
    root = _deep_dag(node, 1500)
    node.pin(root)
    garbage = node.add_stream([b"unpinned"], options=_no_pin())
    report = node.gc()
    assert report.removed_blocks == 1
    assert node.check().ok
    node.block(root)
    with pytest.raises(Exception):  # noqa: B017 - any "not found"
        node.block(garbage)
    bottom = node.resolve(f"{root}/" + "d/" * 1500 + "bottom.txt")
    name = CID.parse(bottom).multihash.hex()
    (node.repo_path / "blocks" / name[-3:-1] / name).unlink()
    assert node.check().missing_blocks == [bottom]


def _no_pin():  # type: ignore[no-untyped-def]
    from ww.ipfs.api import AddOptions

    return AddOptions(pin=False)


def _put(node: EmbeddedNode, links: list[dagpb.PBLink], fs: unixfs.UnixFSData) -> CID:
    block = dagpb.encode(dagpb.PBNode(tuple(links), unixfs.encode(fs)))
    cid = CID.v0(multihash.sha256(block))
    node._blocks.put(cid, (block,))
    return cid


def test_a_file_dag_1000_levels_deep_is_read_and_written(
    node: EmbeddedNode, scratch: Path, shallow_stack: None
) -> None:
    """A file node may link to one file node, and so on: cat walks it with a stack, down to
    ww.ipfs.exporter.MAX_FILE_DEPTH (1024) levels (deeper is corrupt: test_gateway's
    test_a_file_dag_deeper_than_any_importer_makes_is_refused)."""
    data = b"at the end of a long chain\n"
    cid = _put(node, [], unixfs.UnixFSData(unixfs.DataType.FILE, data=data, filesize=len(data)))
    for _ in range(1000):
        fs = unixfs.UnixFSData(unixfs.DataType.FILE, filesize=len(data), blocksizes=(len(data),))
        cid = _put(node, [dagpb.PBLink(cid, b"", 0)], fs)
    assert b"".join(node.cat(str(cid))) == data
    assert b"".join(node.cat(str(cid), offset=3, length=4)) == data[3:7]
    node.get(str(cid), scratch / "file")
    assert (scratch / "file").read_bytes() == data


def test_a_hamt_deeper_than_its_hash_is_corrupt_not_a_crash(
    node: EmbeddedNode, tmp_path: Path, shallow_stack: None
) -> None:
    leaf = CID.parse(node.add_stream([b"x"]))
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22, fanout=256)
    cid = _put(node, [dagpb.PBLink(leaf, b"00x", 1)], shard)
    for _ in range(500):
        cid = _put(node, [dagpb.PBLink(cid, b"00", 1)], shard)
    with pytest.raises(CorruptBlockError, match="deeper than its hash"):
        node.ls(str(cid))
    with pytest.raises(CorruptBlockError, match="deeper than its hash"):
        node.get(str(cid), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_block_linked_many_times_is_walked_once(tmp_path: Path, shallow_stack: None) -> None:
    """40 levels, each linking the level below twice: 2**40 paths, 41 blocks.  pin, gc, check
    and CAR export visit each block once (a walk following every path would never end)."""
    node = EmbeddedNode(tmp_path / "repo")
    params = ImportParams()
    with node._blocks.writer() as sink:
        here = import_symlink(b"target", params, sink)
        for _ in range(40):
            here = import_directory([(b"a", here), (b"b", here)], params, sink)
    root = str(here.cid)
    node.pin(root)
    assert node.gc().removed_blocks == 0
    assert node.check().ok
    car = io.BytesIO()
    node.export_car([root], car)
    fresh = EmbeddedNode(tmp_path / "fresh")
    fresh.import_car(io.BytesIO(car.getvalue()))
    assert fresh.check().blocks == 41
    assert node.stat(root).cumulative_size > 2**40  # what the DAG claims to stand for


def test_make_deep_tree_is_deeper_than_the_lowered_limit() -> None:
    assert DEEP_TREE_LEVELS > LOW_RECURSION_LIMIT * 4


def test_a_deep_tree_that_fails_half_way_leaves_nothing_behind(
    tmp_path: Path, scratch: Path, shallow_stack: None
) -> None:
    from ww.ipfs.api import NotFoundError

    node = EmbeddedNode(tmp_path / "repo")
    root = _deep_dag(node, 1500)
    bottom = CID.parse(node.resolve(f"{root}/" + "d/" * 1500 + "bottom.txt"))
    name = bottom.multihash.hex()
    (node.repo_path / "blocks" / name[-3:-1] / name).unlink()
    with pytest.raises(NotFoundError):
        node.get(root, scratch / "out")
    assert list(scratch.iterdir()) == []  # the 1500-level temp copy is gone too


def test_removing_a_deep_temp_tree_follows_no_symlink(
    tmp_path: Path, scratch: Path, shallow_stack: None
) -> None:
    from ww.ipfs.exporter import _remove

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_bytes(b"keep\n")
    tree = make_deep_tree(scratch / "tree", 1200)
    os.symlink(victim, tree / "d" / "to-victim")
    _remove(tree)
    assert not tree.exists()
    assert (victim / "keep.txt").read_bytes() == b"keep\n"
