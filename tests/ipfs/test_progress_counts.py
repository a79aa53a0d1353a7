"""What the IPFS layer reports to ww.core.progress, counted exactly (the command line only
draws it: tests/cli/test_progress.py)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from ww.core import progress
from ww.core.cid import CID
from ww.ipfs import exporter
from ww.ipfs.api import AddOptions
from ww.ipfs.importer import tree_size
from ww.ipfs.node import EmbeddedNode


class Recorder(progress.Progress):
    def __init__(self) -> None:
        self.expected: list[tuple[int | None, int | None]] = []
        self.bytes = self.files = self.blocks = 0

    def expect(self, nbytes: int | None = None, files: int | None = None) -> None:
        self.expected.append((nbytes, files))

    def advance(self, nbytes: int = 0, files: int = 0, blocks: int = 0) -> None:
        self.bytes += nbytes
        self.files += files
        self.blocks += blocks


@pytest.fixture
def node(tmp_path: Path):
    with EmbeddedNode(tmp_path / "repo") as n:
        yield n


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files of several sizes, two of them the same bytes (one DAG, linked twice), a hidden
    file, an empty file and a symlink."""
    root = tmp_path / "tree"
    (root / "d" / "e").mkdir(parents=True)
    rng = random.Random(3)
    same = rng.randbytes(300_000)
    (root / "a.bin").write_bytes(rng.randbytes(1_000_000))
    (root / "d" / "same1").write_bytes(same)
    (root / "d" / "e" / "same2").write_bytes(same)
    (root / "d" / "empty").write_bytes(b"")
    (root / ".hidden").write_bytes(b"h" * 5000)
    (root / "link").symlink_to("a.bin")
    return root


def test_nobody_listening_is_the_default():
    assert progress.active() is None
    recorder = Recorder()
    with progress.reporting(recorder):
        assert progress.active() is recorder
    assert progress.active() is None


def test_adding_a_tree_reports_every_byte_and_file_tree_size_counts(node, tree):
    for hidden in (False, True):
        recorder = Recorder()
        with progress.reporting(recorder):
            node.add_path(tree, AddOptions(hidden=hidden))
        files, nbytes = tree_size(tree, hidden)
        assert (recorder.files, recorder.bytes) == (files, nbytes)
        assert (files, nbytes) == ((5, 1_605_000) if hidden else (4, 1_600_000))


def test_getting_a_tree_reads_its_cumulative_size_exactly(node, tree, tmp_path):
    cid = node.add_path(tree, AddOptions(hidden=False))
    recorder = Recorder()
    with progress.reporting(recorder):
        node.get(f"/ipfs/{cid}", tmp_path / "out", force=False)
    size = node.stat(cid).cumulative_size
    assert recorder.expected == [(size, None)]
    assert recorder.bytes == size  # the shared file's blocks are read, and counted, twice
    assert recorder.files == 4  # regular files; the symlink is not one
    unique = sum(1 for _ in exporter.walk(lambda c: node.block(str(c)), CID.parse(cid)))
    assert recorder.blocks > unique


def test_a_car_written_and_read_back_is_counted_in_its_bytes_and_blocks(node, tree,
                                                                        tmp_path):
    cid = node.add_path(tree)
    out = io.BytesIO()
    written = Recorder()
    with progress.reporting(written):
        node.export_car([cid], out)
    car = out.getvalue()
    blocks = sum(1 for _ in exporter.walk(lambda c: node.block(str(c)), CID.parse(cid)))
    assert (written.bytes, written.blocks) == (len(car), blocks)
    with EmbeddedNode(tmp_path / "other") as other:
        read = Recorder()
        with progress.reporting(read):
            other.import_car(io.BytesIO(car))
    assert (read.bytes, read.blocks) == (len(car), blocks)
