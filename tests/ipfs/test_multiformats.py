"""Varints, multibase, multihash, CIDs and IPFS paths: round trips and strict rejection."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ww.core import multibase, multihash, varint
from ww.core.cid import CID, DAG_PB, RAW
from ww.ipfs.api import InvalidPathError
from ww.ipfs.path import parse_path

EMPTY_DIR = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
EMPTY_DIR_V1 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
HELLO_RAW = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_varint_round_trips_every_63_bit_value(value: int) -> None:
    encoded = varint.encode(value)
    assert varint.decode(encoded) == (value, len(encoded))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\x80\x00", "minimal"),
        (b"\xff" * 9 + b"\x01", "longer"),
    ],
)
def test_varint_rejects_truncated_non_minimal_and_overlong(data: bytes, message: str) -> None:
    with pytest.raises(varint.VarintError, match=message):
        varint.decode(data)


@given(st.binary(max_size=64))
def test_base58_and_base32_round_trip_any_bytes(data: bytes) -> None:
    assert multibase.b58decode(multibase.b58encode(data)) == data
    assert multibase.b32decode(multibase.b32encode(data)) == data
    assert multibase.decode(multibase.encode(data, "base32")) == data
    assert multibase.decode(multibase.encode(data, "base58btc")) == data


def test_base32_decoding_refuses_upper_case_padding_and_stray_bits() -> None:
    for bad in ["MFRGG", "mfrgg===", "mfrgh", "a"]:
        with pytest.raises(multibase.MultibaseError):
            multibase.b32decode(bad)


def test_multihash_of_known_bytes_is_sha256_with_its_prefix() -> None:
    mh = multihash.sha256(b"abc")
    assert mh == b"\x12\x20" + hashlib.sha256(b"abc").digest()
    assert multihash.verify(mh, b"abc") and not multihash.verify(mh, b"abd")
    with pytest.raises(multihash.MultihashError, match="unsupported hash function"):
        multihash.decode(b"\x13\x40" + bytes(64))


def test_cidv0_and_cidv1_parse_format_and_convert() -> None:
    v0 = CID.parse(EMPTY_DIR)
    assert (v0.version, v0.codec, str(v0)) == (0, DAG_PB, EMPTY_DIR)
    v1 = CID.parse(EMPTY_DIR_V1)
    assert v0.to_v1() == v1 and str(v1) == EMPTY_DIR_V1
    assert v0 != v1 and v0.multihash == v1.multihash
    assert CID.decode(bytes(v1)) == (v1, len(bytes(v1)))
    assert CID.decode(bytes(v0)) == (v0, 34)
    raw = CID.parse(HELLO_RAW)
    assert raw.codec == RAW and raw.digest == hashlib.sha256(b"hello world\n").digest()
    base58_v1 = multibase.encode(bytes(v1), "base58btc")
    assert CID.parse(base58_v1) == v1
    assert len({v0, CID.parse(EMPTY_DIR), v1}) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3N0", "base58"),
        ("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3N", "prefix"),
        ("bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "dag-cbor"),
        ("BAFYBEICZSSCDSBS7FFQZ55ASQDF3SMV6KLCW3GOFSZVWLYARCI47BGF354", "prefix"),
        ("bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf35", "base32|truncated"),
        ("mAXASIA", "prefix"),
        ("hello", "prefix"),
    ],
)
def test_invalid_cid_strings_raise_invalid_path_error_saying_why(text: str, message: str) -> None:
    with pytest.raises(InvalidPathError, match=message):
        CID.parse(text)


def test_invalid_cid_error_is_one_line() -> None:
    with pytest.raises(InvalidPathError) as info:
        CID.parse("bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    assert "\n" not in str(info.value)


def test_ipfs_paths_with_and_without_prefix_parse_to_root_and_segments() -> None:
    for text in [f"/ipfs/{EMPTY_DIR}/a/b", f"{EMPTY_DIR}/a/b", f"/ipfs/{EMPTY_DIR}/a/b/"]:
        path = parse_path(text)
        assert str(path.root) == EMPTY_DIR and path.segments == ("a", "b")
        assert path.last_name == "b"
    assert parse_path(EMPTY_DIR).segments == ()
    assert parse_path(EMPTY_DIR).last_name == EMPTY_DIR
    assert str(parse_path(f"{EMPTY_DIR}/ü")) == f"/ipfs/{EMPTY_DIR}/ü"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"/ipns/{EMPTY_DIR}", "namespace"),
        ("/ipfs/", "no CID"),
        (f"/ipfs/{EMPTY_DIR}//a", "component"),
        (f"{EMPTY_DIR}/../etc", "component"),
        (f"{EMPTY_DIR}/./a", "component"),
        ("", "empty"),
        ("/ipfs/notacid/a", "prefix"),
    ],
)
def test_malformed_paths_raise_invalid_path_error(text: str, message: str) -> None:
    with pytest.raises(InvalidPathError, match=message):
        parse_path(text)


# Inputs the PyPI libraries accept (varint, py-multihash, py-multibase, py-cid: see the comment
# at the top of each module in ww/core) and ww refuses, with its own error type: blocks, CARs
# and cells are hostile, and two encodings of one CID would be two names for one block.
@pytest.mark.parametrize(
    ("decode", "data", "error"),
    [
        (varint.decode, b"\x80\x00", varint.VarintError),  # PyPI varint: 0
        (varint.decode, b"\xff" * 19 + b"\x01", varint.VarintError),  # PyPI varint: 141 bits
        (varint.decode, b"\x80", varint.VarintError),  # PyPI varint: TypeError
        (multihash.decode, b"\x11\x14" + bytes(20), multihash.MultihashError),  # sha1
        (multihash.decode, b"\x00\x03abc", multihash.MultihashError),  # identity
        (multihash.decode, b"\x92\x00\x20" + bytes(32), multihash.MultihashError),  # non-minimal
        (multibase.decode, "baf", multibase.MultibaseError),  # base32 with stray bits
        (CID.decode, b"\x01\x71\x12\x20" + bytes(32), InvalidPathError),  # dag-cbor CID
        (CID.decode, b"\x01\x55\x00\x03abc", InvalidPathError),  # identity-multihash CID
    ],
)
def test_what_the_pypi_libraries_accept_ww_refuses_with_its_own_error(
    decode: object, data: bytes | str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        decode(data)  # type: ignore[operator]
    assert "\n" not in str(info.value)
