"""The repository on disk: verified reads, atomic writes, check(), several processes, kill -9."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import HANG
from ww.core.cid import CID
from ww.ipfs import dagpb
from ww.ipfs.api import AddOptions, CorruptBlockError
from ww.ipfs.importer import CHUNK_SIZE
from ww.ipfs.node import EmbeddedNode

from .conftest import deterministic_bytes

DATA = deterministic_bytes(4 * CHUNK_SIZE + 1)


def _block_files(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "blocks").rglob("*") if p.is_file())


def _tamper(path: Path, at: int = 100) -> None:
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[at % len(raw)] ^= 0x01
    path.write_bytes(bytes(raw))


def _leaf_file(node: EmbeddedNode, root: str, index: int) -> Path:
    cid = dagpb.decode(node.block(root)).links[index].cid
    name = cid.multihash.hex()
    return node.repo_path / "blocks" / name[-3:-1] / name


def test_a_tampered_block_is_never_returned_cat_and_get_raise_corrupt_block(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    cid = node.add_stream([DATA])
    _tamper(_leaf_file(node, cid, 2))
    with pytest.raises(CorruptBlockError, match="corrupt"):
        b"".join(node.cat(cid))
    assert b"".join(node.cat(cid, 0, 2 * CHUNK_SIZE)) == DATA[: 2 * CHUNK_SIZE]
    with pytest.raises(CorruptBlockError):
        node.get(cid, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_truncated_block_counts_as_corrupt(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA])
    path = _leaf_file(node, cid, 0)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptBlockError):
        b"".join(node.cat(cid))
    assert node.check().corrupt_blocks == [path]


def test_check_reports_corrupt_blocks_and_adding_again_repairs_them(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA])
    assert node.check().ok and node.check().blocks == 6
    bad = _leaf_file(node, cid, 1)
    _tamper(bad)
    report = node.check()
    assert report.corrupt_blocks == [bad] and not report.ok
    assert node.add_stream([DATA]) == cid
    assert node.check().ok
    assert b"".join(node.cat(cid)) == DATA


def test_check_reports_blocks_a_pin_needs_that_are_missing(node: EmbeddedNode) -> None:
    cid = node.add_stream([DATA])
    _leaf_file(node, cid, 3).unlink()
    missing = node.check().missing_blocks
    assert len(missing) == 1 and CID.parse(missing[0]) == dagpb.decode(node.block(cid)).links[3].cid


def test_check_reports_temp_files_of_dead_writers_and_gc_removes_them(
    node: EmbeddedNode,
) -> None:
    node.add_stream([DATA])
    shard = next(p for p in (node.repo_path / "blocks").iterdir() if p.is_dir())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = shard / f".tmp-{dead}-abc"
    stale.write_bytes(b"partial")
    live = shard / f".tmp-{os.getpid()}-def"  # a writer that is still running
    live.write_bytes(b"partial")
    report = node.check()
    assert report.temp_files == [stale] and not report.ok
    live.unlink()
    assert node.gc().removed_temp_files == 1
    assert node.check().ok


def test_adding_leaves_no_temp_files_and_block_files_are_read_only(node: EmbeddedNode) -> None:
    node.add_stream([DATA])
    files = _block_files(node.repo_path)
    assert len(files) == 6 and not [f for f in files if f.name.startswith(".")]
    assert all(f.stat().st_mode & 0o777 == 0o444 for f in files)


# --- several processes ------------------------------------------------------------------

SHARED = deterministic_bytes(3 * CHUNK_SIZE + 50, seed=11)


def _unique(worker: int, round_: int) -> bytes:
    return deterministic_bytes(CHUNK_SIZE + 1000 * round_ + worker, seed=100 * worker + round_)


def _adder(repo: str, worker: int, rounds: int) -> list[str]:
    node = EmbeddedNode(Path(repo))
    return [node.add_stream([data]) for r in range(rounds) for data in (SHARED, _unique(worker, r))]


def _collector(repo: str, rounds: int) -> int:
    node = EmbeddedNode(Path(repo))
    removed = 0
    for _ in range(rounds):
        removed += node.gc().removed_blocks
        time.sleep(0.01)
    return removed


def test_several_processes_add_into_one_repo_while_gc_runs_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    EmbeddedNode(repo)
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has kubo loaded
    with ctx.Pool(5) as pool:
        gc_job = pool.apply_async(_collector, (str(repo), 15))
        jobs = [pool.apply_async(_adder, (str(repo), w, 4)) for w in range(4)]
        results = [job.get(timeout=HANG) for job in jobs]
        gc_job.get(timeout=HANG)
    node = EmbeddedNode(repo)
    cids = {cid for result in results for cid in result}
    assert len(cids) == 1 + 4 * 4
    assert set(node.pins()) == cids
    for w in range(4):
        for r in range(4):
            data = _unique(w, r)
            assert b"".join(node.cat(node.add_stream([data], AddOptions(only_hash=True)))) == data
    report = node.check()
    assert report.ok, report
    assert node.gc().removed_blocks == 0


# --- kill -9 ----------------------------------------------------------------------------

_SLOW_ADDER = """
import sys
from pathlib import Path
from ww.ipfs.node import EmbeddedNode
piece = bytes(range(256)) * 4096
def pieces():
    for i in range(1 << 20):  # 1 TiB: it is killed long before the end
        yield i.to_bytes(8, "big") + piece[8:]
node = EmbeddedNode(Path(sys.argv[1]))
node.add_stream(pieces())
"""


def test_kill_9_mid_add_leaves_no_corrupt_block_and_gc_cleans_up(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    node = EmbeddedNode(repo)
    kept = node.add_stream([DATA])
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_ADDER, str(repo)])
    try:
        deadline = time.monotonic() + HANG  # waited for; the bound only stops a hang
        while len(_block_files(repo)) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the adder ended before it was killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG)
    report = node.check()
    assert report.corrupt_blocks == [] and report.missing_blocks == []
    assert report.blocks >= 100
    assert node.pins() == [kept]
    node.gc()
    after = node.check()
    assert after.ok and after.blocks == 6 and after.temp_files == []
    assert b"".join(node.cat(kept)) == DATA


def test_a_batch_writer_remembers_a_bounded_number_of_blocks_and_still_writes_repeats_once(
        tmp_path: Path) -> None:
    """The writer skips a block it queued a moment ago (a file of zeros repeats one block),
    but what it remembers for that is bounded, not a multihash per block of the upload."""
    from ww.core.multihash import sha256
    from ww.ipfs.blockstore import BatchWriter, Blockstore

    store = Blockstore(tmp_path / "blocks")
    writes = []
    real_put = store.put

    def counting_put(cid, parts, sync=True):  # type: ignore[no-untyped-def]
        writes.append(cid.multihash)
        return real_put(cid, parts, sync=sync)

    store.put = counting_put  # type: ignore[method-assign]
    count = BatchWriter._REMEMBERED * 2 + 10
    with BatchWriter(store) as writer:
        zero = b"\0" * 64
        for _ in range(3):
            writer.put(CID.v0(sha256(zero)), [zero])
        for i in range(count):
            data = b"%d" % i
            writer.put(CID.v0(sha256(data)), [data])
        remembered = len(writer._queued)
    assert remembered <= BatchWriter._REMEMBERED
    assert len(writes) == count + 1  # the repeated block once, every other block once
    assert store.has(CID.v0(sha256(b"%d" % (count - 1))))
