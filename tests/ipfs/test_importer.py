"""Importer behaviour beyond kubo's defaults: options, streaming, memory, odd inputs."""

from __future__ import annotations

import os
import socket
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ww.core.cid import CID, DAG_PB, RAW
from ww.ipfs import dagpb, unixfs
from ww.ipfs.api import AddOptions, EntryType, NotFoundError, UnsupportedError
from ww.ipfs.importer import CHUNK_SIZE, ImportParams, NullSink, import_file, rechunk
from ww.ipfs.node import EmbeddedNode

from .conftest import deterministic_bytes

HASH_ONLY = AddOptions(only_hash=True)


def test_cid_version_1_gives_base32_cids_and_raw_leaves(node: EmbeddedNode) -> None:
    v1 = AddOptions(cid_version=1)
    assert node.add_stream([b"hello world\n"], v1) == (
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    )
    assert node.add_stream([], v1) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    data = deterministic_bytes(2 * CHUNK_SIZE + 9)
    root = CID.parse(node.add_stream([data], v1))
    assert (root.version, root.codec) == (1, DAG_PB)
    links = dagpb.decode(node.block(str(root))).links
    assert [link.cid.codec for link in links] == [RAW, RAW, RAW]
    assert node.block(str(links[2].cid)) == data[2 * CHUNK_SIZE :]
    assert [link.tsize for link in links] == [CHUNK_SIZE, CHUNK_SIZE, 9]


def test_cid_version_1_directory_of_nothing_is_the_known_empty_directory(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    (tmp_path / "d").mkdir()
    cid = node.add_path(tmp_path / "d", AddOptions(cid_version=1))
    assert cid == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


def test_raw_leaves_with_cid_version_0_keep_a_v0_root_over_raw_leaves(node: EmbeddedNode) -> None:
    data = deterministic_bytes(CHUNK_SIZE + 1)
    root = CID.parse(node.add_stream([data], AddOptions(raw_leaves=True)))
    assert root.version == 0
    links = dagpb.decode(node.block(str(root))).links
    assert all(link.cid.codec == RAW and link.cid.version == 1 for link in links)
    # a single chunk with raw leaves is just the raw block
    assert node.add_stream([b"x"], AddOptions(raw_leaves=True)).startswith("bafkrei")


def test_cid_version_1_without_raw_leaves_has_dag_pb_leaves(node: EmbeddedNode) -> None:
    data = deterministic_bytes(CHUNK_SIZE + 1)
    opts = AddOptions(cid_version=1, raw_leaves=False)
    root = CID.parse(node.add_stream([data], opts))
    links = dagpb.decode(node.block(str(root))).links
    assert all(link.cid.codec == DAG_PB and link.cid.version == 1 for link in links)
    assert b"".join(node.cat(str(root))) == data


def test_unsupported_cid_version_is_refused(node: EmbeddedNode) -> None:
    with pytest.raises(UnsupportedError, match="CID version 2"):
        node.add_stream([b"x"], AddOptions(cid_version=2))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=CHUNK_SIZE + 3), min_size=1, max_size=8))
def test_any_split_of_the_input_into_pieces_gives_the_same_cid(cuts: list[int]) -> None:
    data = deterministic_bytes(3 * CHUNK_SIZE + 11)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    whole = import_file([data], ImportParams(), NullSink()).cid
    assert import_file(pieces, ImportParams(), NullSink()).cid == whole
    assert import_file(map(bytearray, pieces), ImportParams(), NullSink()).cid == whole


def test_rechunk_copies_mutable_pieces_so_buffer_reuse_cannot_alter_chunks() -> None:
    buf = bytearray(b"a" * (CHUNK_SIZE + 10))
    chunks = []
    for chunk in rechunk([buf]):
        chunks.append(chunk)
        buf[:] = b"b" * len(buf)
    assert bytes(chunks[0]) == b"a" * CHUNK_SIZE and bytes(chunks[1]) == b"a" * 10


def test_rechunk_slices_views_of_bytes_without_copying_and_copies_views_of_buffers() -> None:
    """The RPC API's add hands the importer views of the body's bytes (not copies); a view of
    a mutable buffer is still copied, as the buffer itself is."""
    data = bytes(range(256)) * (CHUNK_SIZE // 128 + 1)
    chunks = list(rechunk([memoryview(data)[3:]]))
    assert all(isinstance(c, memoryview) and c.obj is data for c in chunks[:-1])
    assert b"".join(chunks) == data[3:]
    buf = bytearray(b"a" * (CHUNK_SIZE + 10))
    kept = []
    for chunk in rechunk([memoryview(buf)]):
        kept.append(chunk)
        buf[:] = b"b" * len(buf)
    assert bytes(kept[0]) == b"a" * CHUNK_SIZE and bytes(kept[1]) == b"a" * 10


def test_add_stream_memory_stays_bounded_for_a_large_stream(node: EmbeddedNode) -> None:
    piece = os.urandom(1 << 20)
    total_mib = 96

    def pieces():
        for i in range(total_mib):
            yield i.to_bytes(8, "big") + piece[8:]  # every MiB different, nothing dedups

    tracemalloc.start()
    try:
        cid = node.add_stream(pieces())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB while adding {total_mib} MiB"
    assert node.stat(cid).size == total_mib << 20


def test_only_hash_stores_no_block_and_no_pin(node: EmbeddedNode, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    node.add_path(tmp_path / "f", HASH_ONLY)
    cid = node.add_stream([b"more data"], HASH_ONLY)
    assert node.pins() == []
    assert node.check().blocks == 0
    with pytest.raises(NotFoundError):
        node.stat(cid)


def test_top_level_symlink_is_added_as_a_symlink_not_followed(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    (tmp_path / "target.txt").write_bytes(b"content\n")
    os.symlink("target.txt", tmp_path / "link")
    stat = node.stat(node.add_path(tmp_path / "link"))
    assert (stat.type, stat.target, stat.size) == (EntryType.SYMLINK, "target.txt", 10)


def test_adding_a_socket_is_refused_with_a_clear_error(node: EmbeddedNode, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "d" / "s.sock"))
        with pytest.raises(UnsupportedError, match="not a regular file"):
            node.add_path(tmp_path / "d")
    finally:
        sock.close()
    assert node.pins() == []


def test_adding_a_missing_path_raises_not_found(node: EmbeddedNode, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        node.add_path(tmp_path / "nope")


def test_internal_node_records_each_childs_content_size_as_blocksizes(node: EmbeddedNode) -> None:
    data = deterministic_bytes(2 * CHUNK_SIZE + 100)
    root = CID.parse(node.add_stream([data]))
    pb = dagpb.decode(node.block(str(root)))
    assert pb.data is not None
    fs = unixfs.decode(pb.data)
    assert (fs.type, fs.filesize, fs.blocksizes) == (
        unixfs.DataType.FILE,
        len(data),
        (CHUNK_SIZE, CHUNK_SIZE, 100),
    )
    assert fs.data is None and all(link.name == b"" for link in pb.links)
