"""CAR v1 export and all-or-nothing, verified import."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ww.core import varint
from ww.core.cid import CID
from ww.ipfs import _dagcbor, car
from ww.ipfs.api import AddOptions, CorruptBlockError, NotFoundError
from ww.ipfs.car import CarReader, InvalidCarError
from ww.ipfs.importer import CHUNK_SIZE
from ww.ipfs.node import EmbeddedNode

from .conftest import deterministic_bytes, make_tree

DATA = deterministic_bytes(3 * CHUNK_SIZE + 7)
EMPTY_DIR = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


def _export(node: EmbeddedNode, roots: list[str]) -> bytes:
    out = io.BytesIO()
    node.export_car(roots, out)
    return out.getvalue()


def _sections(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the header and of each block section."""
    spans, pos = [], 0
    while pos < len(data):
        length, body = varint.decode(data, pos)
        spans.append((pos, body + length))
        pos = body + length
    return spans


def test_car_round_trip_restores_identical_content_and_pins_the_roots(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    tree = node.add_path(make_tree(tmp_path / "t"))
    file_cid = node.add_stream([DATA])
    blob = _export(node, [tree, file_cid])
    other = EmbeddedNode(tmp_path / "other")
    assert other.import_car(io.BytesIO(blob)) == [tree, file_cid]
    assert sorted(other.pins()) == sorted([tree, file_cid])
    assert b"".join(other.cat(file_cid)) == DATA
    other.get(tree, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b" / "c" / "deep.txt").read_bytes() == b"deep\n"
    assert other.check().ok
    assert _export(other, [tree, file_cid]) == blob


def test_car_header_is_canonical_dag_cbor_roots_then_version(node: EmbeddedNode) -> None:
    node.add_stream([b"x"])
    cid = CID.parse(EMPTY_DIR)
    out = io.BytesIO()
    car.write_header(out, [cid])
    header = b"\xa2eroots\x81\xd8\x2a\x58\x23\x00" + bytes(cid) + b"gversion\x01"
    assert out.getvalue() == varint.encode(len(header)) + header
    assert _dagcbor.decode(header) == {"roots": [cid], "version": 1}


def test_export_writes_each_block_once_root_first(node: EmbeddedNode) -> None:
    first = node.add_stream([DATA])
    second = node.add_stream([DATA[: 2 * CHUNK_SIZE] + b"tail"])
    reader = CarReader(io.BytesIO(_export(node, [first, second])))
    cids = [cid for cid, _ in reader.blocks()]
    assert str(cids[0]) == first
    assert len(cids) == len({c.multihash for c in cids}) == 5 + 2
    assert [str(r) for r in reader.roots] == [first, second]


def test_import_of_a_car_with_a_corrupt_block_stores_nothing(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    blob = bytearray(_export(node, [node.add_stream([DATA])]))
    start, end = _sections(bytes(blob))[3]
    blob[end - 10] ^= 0xFF
    other = EmbeddedNode(tmp_path / "other")
    with pytest.raises(InvalidCarError, match="does not match its CID"):
        other.import_car(io.BytesIO(bytes(blob)))
    assert other.check().blocks == 0 and other.pins() == []
    assert list((tmp_path / "other" / "staging").iterdir()) == []


@pytest.mark.parametrize("cut", [0, 1, 5, 40, 60, -1, -100, -(CHUNK_SIZE + 20)])
def test_import_of_a_truncated_car_fails_clearly_and_stores_nothing(
    node: EmbeddedNode, tmp_path: Path, cut: int
) -> None:
    blob = _export(node, [node.add_stream([DATA])])
    other = EmbeddedNode(tmp_path / "other")
    with pytest.raises(InvalidCarError, match="truncated|header"):
        other.import_car(io.BytesIO(blob[:cut]))
    assert other.check().blocks == 0 and other.pins() == []


def test_import_of_a_car_missing_part_of_a_root_dag_stores_nothing(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    blob = _export(node, [node.add_stream([DATA])])
    start, end = _sections(blob)[2]
    other = EmbeddedNode(tmp_path / "other")
    with pytest.raises(NotFoundError, match="nothing was imported"):
        other.import_car(io.BytesIO(blob[:start] + blob[end:]))
    assert other.check().blocks == 0 and other.pins() == []


def test_import_completes_a_dag_from_blocks_already_in_the_repository(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    cid = node.add_stream([DATA])
    blob = _export(node, [cid])
    start, end = _sections(blob)[2]
    other = EmbeddedNode(tmp_path / "other")
    other.add_stream([DATA], AddOptions(pin=False))
    assert other.import_car(io.BytesIO(blob[:start] + blob[end:])) == [cid]
    assert other.pins() == [cid] and other.check().ok


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"roots": [CID.parse(EMPTY_DIR)], "version": 2}, "not a CAR v1"),
        ({"roots": [], "version": 1}, "at least one root"),
        ({"roots": [CID.parse(EMPTY_DIR)], "version": 1, "x": 1}, "nothing else"),
        ({"roots": ["Qm"], "version": 1}, "must be CIDs"),
    ],
)
def test_import_rejects_headers_that_are_not_car_v1(
    node: EmbeddedNode, header: dict, message: str
) -> None:
    raw = _dagcbor.encode(header)
    with pytest.raises(InvalidCarError, match=message):
        node.import_car(io.BytesIO(varint.encode(len(raw)) + raw))


def test_import_rejects_non_canonical_cbor_and_unsupported_codecs(node: EmbeddedNode) -> None:
    indefinite = b"\xbf\x65roots\x80\xff"
    with pytest.raises(InvalidCarError, match="indefinite"):
        node.import_car(io.BytesIO(varint.encode(len(indefinite)) + indefinite))
    cbor_cid = b"\x01\x71\x12\x20" + bytes(32)
    header = b"\xa2eroots\x81\xd8\x2a\x58\x25\x00" + cbor_cid + b"gversion\x01"
    with pytest.raises(CorruptBlockError, match="dag-cbor"):
        node.import_car(io.BytesIO(varint.encode(len(header)) + header))
    assert node.check().blocks == 0


def test_the_roots_of_a_car_are_pinned_with_one_sync_of_the_pin_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CAR's roots were pinned one at a time, each pin file and its directory synced (1.7
    ms a root here: a CAR header of 20,000 tiny roots, 33 s of syncs).  Now the pins are
    made together and the directory synced once: the syncs of an import do not grow with its
    roots (counted: each ``os.fsync`` of a pin file or directory; the pins are all there, and
    stay); the blocks' own syncs are not counted."""
    import os

    from ww.core import multihash
    from ww.core.cid import RAW

    blocks = [b"root %d" % i for i in range(300)]
    roots = [CID.v1(RAW, multihash.sha256(block)) for block in blocks]
    out = io.BytesIO()
    car.write_car(out, roots, zip(roots, blocks, strict=True))
    node = EmbeddedNode(tmp_path / "repo")
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:  # counts the pins' syncs, then syncs for real
        if "/pins/" in os.readlink(f"/proc/self/fd/{fd}") + "/":
            synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    assert node.import_car(io.BytesIO(out.getvalue())) == [str(r) for r in roots]
    monkeypatch.undo()
    assert len(synced) == 1, len(synced)  # two a root before: 600
    assert sorted(node.pins()) == sorted(str(r) for r in roots)
    node.close()
    again = EmbeddedNode(tmp_path / "repo")
    assert sorted(again.pins()) == sorted(str(r) for r in roots)
    again.close()


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """Spies (the syncs still made) on the two ways a batch of blocks is made durable: a
    ``syncfs`` of the whole file system (any module's name for it) and an ``fsync`` of a block
    file (a regular file in ``blocks/`` or ``staging/``); each appends its path."""
    import os
    import stat

    import ww.ipfs.blockstore
    import ww.ipfs.node
    from ww.core import fsutil

    whole: list[str] = []
    files: list[str] = []
    real_syncfs, real_fsync = fsutil.sync_filesystem, os.fsync

    def counting_syncfs(path: Path) -> None:
        whole.append(str(path))
        real_syncfs(path)

    def counting_fsync(fd: int) -> None:
        where = os.readlink(f"/proc/self/fd/{fd}")
        if stat.S_ISREG(os.fstat(fd).st_mode) and ("/blocks/" in where or "/staging/" in where):
            files.append(where)
        real_fsync(fd)

    for module in (fsutil, ww.ipfs.node, ww.ipfs.blockstore):
        if hasattr(module, "sync_filesystem"):
            monkeypatch.setattr(module, "sync_filesystem", counting_syncfs)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    return whole, files


@pytest.mark.parametrize("how", ["dag import", "add"])
def test_a_few_new_blocks_are_synced_each_not_with_the_whole_file_system(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """(found by attack) A `dag import` of a one-block CAR, an `add` of 100 bytes, made their
    blocks durable with a ``syncfs``: it writes out everything on the file system not yet
    written, other writers' too, so with 2 GiB left unsynced by another writer each took 0.1
    to 0.8 s (an fsync each: 7-27 ms; benchmarks/sync_small.py), and a client sending small
    CARs or files one after another made the daemon sync the whole file system for each.
    Now a batch of up to SYNC_EACH new blocks is synced with an fsync each, a larger one with
    one syncfs (counted; the blocks are there after the node is opened again)."""
    from ww.core import multihash
    from ww.core.cid import RAW
    from ww.core.fsutil import SYNC_EACH

    node = EmbeddedNode(tmp_path / "repo")
    whole, files = _count_syncs(monkeypatch)
    counts = []
    roots = []
    for n in (1, SYNC_EACH + 1):
        blocks = [b"%s block %d of %d" % (how.encode(), i, n) for i in range(n)]
        if how == "dag import":
            cids = [CID.v1(RAW, multihash.sha256(block)) for block in blocks]
            out = io.BytesIO()
            car.write_car(out, cids, zip(cids, blocks, strict=True))
            roots += node.import_car(io.BytesIO(out.getvalue()))
        else:  # a file of n chunks of 32 bytes, each its own block (and a root over many)
            data = b"".join(block.ljust(32, b".") for block in blocks)
            roots.append(node.add_stream([data], AddOptions(raw_leaves=True, chunker="size-32")))
        counts.append((len(whole), len(files)))
        whole.clear()
        files.clear()
    monkeypatch.undo()
    node.close()
    # a few: an fsync each, no syncfs (before: one syncfs); many: one syncfs
    assert counts == [(0, 1), (1, 0)], counts
    again = EmbeddedNode(tmp_path / "repo")
    for root in roots:
        assert again.block(root)
    assert again.check().blocks == (SYNC_EACH + 2 if how == "dag import" else SYNC_EACH + 3)
    again.close()
