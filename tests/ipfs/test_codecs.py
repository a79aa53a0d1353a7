"""dag-pb and UnixFS: kubo's exact bytes, and strict refusal of anything non-canonical."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ww.core import multihash
from ww.core.cid import CID
from ww.ipfs import dagpb, unixfs
from ww.ipfs.api import CorruptBlockError
from ww.ipfs.unixfs import DataType, UnixFSData

HELLO = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
A_CID = CID.parse(HELLO)


def test_empty_directory_block_is_kubos_four_bytes() -> None:
    block = dagpb.encode(dagpb.PBNode((), unixfs.encode(UnixFSData(DataType.DIRECTORY))))
    assert block == b"\x0a\x02\x08\x01"
    assert str(CID.v0(multihash.sha256(block))) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


def test_file_leaf_block_bytes_hash_to_kubos_hello_world_cid() -> None:
    data = unixfs.encode(UnixFSData(DataType.FILE, data=b"hello world\n", filesize=12))
    assert data == b"\x08\x02\x12\x0chello world\n\x18\x0c"
    block = dagpb.encode(dagpb.PBNode((), data))
    assert str(CID.v0(multihash.sha256(block))) == HELLO


def test_links_are_encoded_before_data_with_name_and_tsize_always_present() -> None:
    block = dagpb.encode(dagpb.PBNode((dagpb.PBLink(A_CID, b"", 20),), b"\x08\x01"))
    link_body = b"\x0a\x22" + bytes(A_CID) + b"\x12\x00" + b"\x18\x14"
    assert block == b"\x12" + bytes([len(link_body)]) + link_body + b"\x0a\x02\x08\x01"


@given(
    st.lists(st.tuples(st.binary(max_size=20), st.integers(0, 1 << 62)), max_size=5),
    st.one_of(st.none(), st.binary(max_size=50)),
)
def test_dagpb_decode_inverts_encode(links: list[tuple[bytes, int]], data: bytes | None) -> None:
    node = dagpb.PBNode(tuple(dagpb.PBLink(A_CID, n, t) for n, t in links), data)
    assert dagpb.decode(dagpb.encode(node)) == node


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x0a\x02\x08\x01" + b"\x12\x24\x0a\x22" + bytes(A_CID), "link follows the Data"),
        (b"\x0a\x00\x0a\x00", "duplicate Data"),
        (b"\x1a\x00", "unexpected field 3"),
        (b"\x08\x01", "unexpected field 1"),
        (b"\x12\x02\x12\x00", "no Hash"),
        (b"\x12\x26\x12\x00\x0a\x22" + bytes(A_CID), "out of order"),
        (b"\x12\x10\x0a\x0e" + b"\x01" * 14, "CID|multihash|truncated"),
        (b"\x0a\x05\x08", "past the end"),
        (b"\x0a", "truncated"),
    ],
)
def test_dagpb_decoder_rejects_non_canonical_or_broken_blocks(block: bytes, message: str) -> None:
    with pytest.raises(CorruptBlockError, match=message):
        dagpb.decode(block)


def test_unixfs_round_trips_every_field() -> None:
    value = UnixFSData(
        DataType.FILE,
        data=b"xy",
        filesize=10,
        blocksizes=(4, 4),
        hash_type=0x22,
        fanout=256,
        mode=0o755,
        mtime=(-5, 7),
    )
    assert unixfs.decode(unixfs.encode(value)) == value


def test_unixfs_accepts_packed_blocksizes_as_protobuf_allows() -> None:
    packed = b"\x08\x02\x18\x06\x22\x02\x03\x03"
    assert unixfs.decode(packed).blocksizes == (3, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "Type field is missing"),
        (b"\x08\x09", "unknown UnixFS type"),
        (b"\x08\x02\x08\x02", "repeated"),
        (b"\x08\x02\x48\x01", "unexpected field 9"),
        (b"\x08\x02\x1a\x00", "unexpected field 3"),
        (b"\x08\x02\x12\x05ab", "past the end"),
    ],
)
def test_unixfs_decoder_rejects_malformed_data(data: bytes, message: str) -> None:
    with pytest.raises(CorruptBlockError, match=message):
        unixfs.decode(data)


@pytest.mark.parametrize(
    ("name", "h1"),
    [
        # MurmurHash3_x64_128 reference values, first 64 bits, seed 0 (as spaolacci/murmur3).
        (b"", "0000000000000000"),
        (b"hello", "cbd8a7b341bd9b02"),
        (b"a.txt", "59a0c46995547089"),
        ("é".encode() * 20, "07b73ec7c6ead59b"),  # > 16 bytes: the block loop and a tail
    ],
)
def test_hamt_hash_is_murmur3_x64_128_h1_big_endian(name: bytes, h1: str) -> None:
    assert unixfs.hamt_hash(name).hex() == h1


def test_car_header_with_cbor_shared_values_is_refused_at_once() -> None:
    """CBOR value sharing (tags 28/29) doubles a value per level: 60 levels in 300 bytes.

    cbor2 resolves those tags itself, and walking or re-encoding the result never ends; the
    header decoder refuses every tag but 42 before anything is built.
    """
    import io

    from ww.core import varint
    from ww.ipfs.car import CarReader, InvalidCarError

    items = [b"\xd8\x1c\x82\x00\x00"]  # shareable([0, 0])
    for i in range(1, 60):  # shareable([ref(i-1), ref(i-1)])
        ref = b"\xd8\x1d\x18" + bytes([i - 1])
        items.append(b"\xd8\x1c\x82" + ref + ref)
    roots = b"\x98" + bytes([len(items)]) + b"".join(items)
    header = b"\xa2eroots" + roots + b"gversion\x01"
    with pytest.raises(InvalidCarError, match="unsupported dag-cbor item"):
        CarReader(io.BytesIO(varint.encode(len(header)) + header))


def _strict(body: bytes) -> object:
    try:
        return dagpb._decode_fields(memoryview(body))
    except Exception as e:  # the error, as the strict reader gives it
        return (type(e), str(e))


def _straight(body: bytes) -> object:
    try:
        return dagpb._decode_link(memoryview(body))
    except Exception as e:
        return (type(e), str(e))


_LINK = dagpb.encode_link(dagpb.PBLink(CID.v1(0x55, multihash.sha256(b"x")), b"name", 300))


@given(st.lists(st.tuples(st.integers(0, len(_LINK)), st.integers(0, 255)), max_size=4),
       st.integers(0, len(_LINK)), st.binary(max_size=3))
def test_a_link_read_straight_is_what_the_strict_reader_makes_of_it(
        edits: list[tuple[int, int]], cut: int, tail: bytes) -> None:
    """``dagpb._decode_link`` reads a link in the usual form without the generic field reader:
    on any bytes near that form (bytes changed, cut short, trailing) it gives what the
    strict reader gives, the same link or the same error."""
    body = bytearray(_LINK[1 + 1:])  # the link's own bytes, after its key and length
    for at, value in edits:
        if at < len(body):
            body[at] = value
    body = body[:cut] + tail
    assert _straight(bytes(body)) == _strict(bytes(body))


_CIDS = [bytes(CID.v1(0x55, multihash.sha256(b"x"))), bytes(CID.v0(multihash.sha256(b"x"))),
         bytes([1, 0x70, 0, 3]) + b"abc"]


@given(st.sampled_from(_CIDS), st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)),
                                        max_size=3), st.integers(0, 40))
def test_a_cid_read_straight_is_one_the_checking_constructor_makes(
        cid: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    """``CID.decode`` reads the usual forms without checking the parts again: what it reads
    from bytes near them is a CID its checking constructor makes, of those very bytes."""
    data = bytearray(cid)
    for at, value in edits:
        if at < len(data):
            data[at] = value
    data = bytes(data[:cut])
    try:
        got, end = CID.decode(data)
    except Exception:
        return
    assert CID(got.version, got.codec, got.multihash) == got
    assert bytes(got) == data[:end]


def _strict_block(block: bytes) -> object:
    """``dagpb._decode`` as the strict reader alone does it (field by field)."""
    from ww.core.protobuf import LEN, fields

    try:
        links, data = [], None
        for num, wire, value in fields(block):
            if num == 2 and wire == LEN:
                if data is not None:
                    raise dagpb.ProtobufError("a link follows the Data field")
                if len(links) >= dagpb.MAX_LINKS:
                    raise dagpb.ProtobufError(f"more than {dagpb.MAX_LINKS} links")
                links.append(dagpb._decode_fields(value))
            elif num == 1 and wire == LEN:
                if data is not None:
                    raise dagpb.ProtobufError("duplicate Data field")
                data = bytes(value)
            else:
                raise dagpb.ProtobufError(f"unexpected field {num} (wire type {wire}) in PBNode")
        return dagpb.PBNode(tuple(links), data)
    except Exception as e:
        return (type(e), str(e))


def _straight_block(block: bytes) -> object:
    try:
        return dagpb._decode(block)
    except Exception as e:
        return (type(e), str(e))


_BLOCK = dagpb.encode(dagpb.PBNode(
    (dagpb.PBLink(CID.v1(0x55, multihash.sha256(b"x")), b"n" * 100, 300),
     dagpb.PBLink(CID.v0(multihash.sha256(b"y")), b"m", 0)), b"\x08\x01"))


@given(st.lists(st.tuples(st.integers(0, len(_BLOCK)), st.integers(0, 255)), max_size=4),
       st.integers(0, len(_BLOCK)), st.binary(max_size=3))
def test_a_block_read_straight_is_what_the_strict_reader_makes_of_it(
        edits: list[tuple[int, int]], cut: int, tail: bytes) -> None:
    """``dagpb._decode`` takes links in the usual form without the generic field reader: on
    any bytes near a block (bytes changed, cut short, trailing) it gives what the strict
    reader gives, the same node or the same error."""
    block = bytearray(_BLOCK)
    for at, value in edits:
        if at < len(block):
            block[at] = value
    block = block[:cut] + tail
    assert _straight_block(bytes(block)) == _strict_block(bytes(block))
