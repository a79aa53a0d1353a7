"""The RPC API's multipart bodies cut anywhere: a file's bytes reach the importer as views of
the body's pieces (not copies), and wherever the server's reads happen to split the body the
add gives the CID `ww export` gives.

The parser runs in-process on pieces this test cuts (a stand-in for the request, which in the
daemon pulls them from hypercorn: where its reads split a body is up to the socket)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import run_ww
from ww.ipfs.importer import ImportParams, NullSink, import_file
from ww.serve.rpc import ClientError, _parts

from .conftest import multipart

CHUNK = 262144


class _Pieces:
    """A request as ``_parts`` reads it (its Content-Type, its body in given pieces)."""

    def __init__(self, content_type: str, pieces: list[bytes]) -> None:
        self.content_type = content_type
        self.pieces = pieces

    def header(self, name: bytes) -> str | None:
        return self.content_type if name == b"content-type" else None

    def body(self) -> Iterator[bytes]:
        yield from self.pieces


def _cut(body: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _cid_of_the_part(content_type: str, pieces: list[bytes]) -> tuple[str, list[object]]:
    found = []
    seen: list[object] = []
    for _headers, data in _parts(_Pieces(content_type, pieces)):  # type: ignore[arg-type]
        def kept(data=data) -> Iterator[object]:
            for piece in data:
                seen.append(piece)
                yield piece
        found.append(str(import_file(kept(), ImportParams(), NullSink()).cid))
    assert len(found) == 1
    return found[0], seen


def test_a_body_cut_at_every_awkward_place_gives_ww_exports_cid(tmp_path):
    # the file holds pieces of its own boundary (python-multipart's look-behind), and its
    # length crosses the importer's chunks
    data = bytearray(os.urandom(2 * CHUNK + 1000))
    body, headers = multipart([("f.bin", "application/octet-stream", b"")])
    boundary = headers["Content-Type"].split("boundary=")[1].encode()
    lookalikes = [CHUNK - 7, CHUNK + 500, 2 * CHUNK + 10]
    for at in lookalikes:
        fake = b"\r\n--" + boundary[:-1]
        data[at:at + len(fake)] = fake
        # and not the boundary's last byte after it: a random one was, with a space or tab
        # next (transport padding), and the lookalike was a real boundary, the body
        # malformed (seen once in a CI run; made so by hand: the same failure)
        data[at + len(fake)] = boundary[-1] ^ 1
    data = bytes(data)
    (tmp_path / "f.bin").write_bytes(data)
    r = run_ww("export", "-n", str(tmp_path / "f.bin"))
    assert r.returncode == 0, r.stderr
    expected = r.stdout.split()[-1].removeprefix("/ipfs/")

    body, headers = multipart([("f.bin", "application/octet-stream", data)])
    start = body.index(data)
    end = start + len(data)
    near = [0, start, end, len(body)] + [start + at for at in lookalikes] \
        + [start + k * CHUNK for k in (1, 2)]
    places = sorted({p for n in near for p in range(n - len(boundary) - 8, n + len(boundary) + 8)
                     if 0 < p < len(body)})
    for place in places:
        cid, pieces = _cid_of_the_part(headers["Content-Type"], _cut(body, [place]))
        assert cid == expected, place
    # two cuts close together: a piece of a few bytes inside the boundary or the data
    for a in range(end - 4, end + 6):
        for b in (a + 1, a + 3, a + len(boundary)):
            cid, _ = _cid_of_the_part(headers["Content-Type"], _cut(body, [a, b]))
            assert cid == expected, (a, b)
    # the part's bytes are views of the body's pieces, not copies of them
    cid, seen = _cid_of_the_part(headers["Content-Type"], [body])
    assert cid == expected
    assert all(isinstance(piece, memoryview) and piece.obj is body for piece in seen)


def test_a_body_cut_into_single_bytes_still_parses_and_a_truncated_one_is_refused():
    data = os.urandom(3000)
    body, headers = multipart([("f.bin", "application/octet-stream", data)])
    whole, _ = _cid_of_the_part(headers["Content-Type"], [body])
    assert whole == str(import_file([data], ImportParams(), NullSink()).cid)
    single, _ = _cid_of_the_part(headers["Content-Type"], [body[i:i + 1]
                                                           for i in range(len(body))])
    assert single == whole
    with pytest.raises(ClientError, match="malformed multipart body"):
        _cid_of_the_part(headers["Content-Type"], _cut(body[:-10], [len(body) // 2]))
