"""The importer gives kubo's CIDs, byte for byte, on the inputs where layouts differ."""

from __future__ import annotations

import pytest

from ww.ipfs import dagpb, unixfs
from ww.ipfs.api import AddOptions
from ww.ipfs.node import EmbeddedNode

from .conftest import FILE_SIZES, Corpus

TREES = [
    "tree",
    "tree_sort",
    "tree_wide",
    "tree_empty_dirs",
    "empty_dir",
    "tree_below_sharding",
    "tree_sharded",
]


@pytest.mark.parametrize("name", [*FILE_SIZES, "hello"])
def test_file_cid_matches_kubo_at_chunk_and_fanout_boundaries(
    corpus: Corpus, node: EmbeddedNode, name: str
) -> None:
    assert node.add_path(corpus.paths[name], AddOptions(only_hash=True)) == corpus.kubo[name]


@pytest.mark.parametrize("name", ["size_fanout+1", "size_10chunks+17", "size_random_0"])
def test_streamed_file_cid_matches_kubo_whatever_the_piece_sizes(
    corpus: Corpus, node: EmbeddedNode, name: str
) -> None:
    data = corpus.paths[name].read_bytes()
    pieces = [data[i : i + 100_003] for i in range(0, len(data), 100_003)]
    assert node.add_stream(iter(pieces)) == corpus.kubo[name]


@pytest.mark.parametrize("name", TREES)
def test_directory_tree_cid_matches_kubo(corpus: Corpus, node: EmbeddedNode, name: str) -> None:
    assert node.add_path(corpus.paths[name]) == corpus.kubo[name]


def test_symlink_inside_a_tree_is_stored_as_its_target_like_kubo(
    corpus: Corpus, node: EmbeddedNode
) -> None:
    root = node.add_path(corpus.paths["tree"])
    assert node.stat(f"{root}/link-relative").target == "a/one.txt"
    assert node.stat(f"{root}/link-dangling").target == "does/not/exist"


def test_known_vectors_for_hello_world_empty_file_and_empty_directory(
    node: EmbeddedNode,
) -> None:
    assert node.add_stream([b"hello world\n"]) == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert node.add_stream([]) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert node.add_stream([b"", b""]) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"


def test_a_directory_at_the_sharding_threshold_becomes_a_hamt_that_reads_back(
    corpus: Corpus, node: EmbeddedNode, tmp_path
) -> None:
    root = node.add_path(corpus.paths["tree_sharded"])
    pb = dagpb.decode(node.block(root))
    assert pb.data is not None and unixfs.decode(pb.data).type is unixfs.DataType.HAMT_SHARD
    assert any(len(link.name) == 2 for link in pb.links)  # collisions made sub-shards
    names = sorted(p.name for p in corpus.paths["tree_sharded"].iterdir())
    assert sorted(e.name for e in node.ls(root)) == names
    assert b"".join(node.cat(f"{root}/{names[1234]}")) == b"1234\n"
    node.get(root, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    below = node.add_path(corpus.paths["tree_below_sharding"])
    pb = dagpb.decode(node.block(below))
    assert pb.data is not None and unixfs.decode(pb.data).type is unixfs.DataType.DIRECTORY
