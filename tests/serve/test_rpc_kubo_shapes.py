"""Replies byte for byte as current kubo (0.26 on) writes them, where they once differed:
`pin/ls` (kubo's omitempty fields and its sorted map), `repo/gc`'s error lines and options,
`get`'s tar entries (a directory's name, the time, the top entry's name as written)."""

from __future__ import annotations

import http.client
import io
import json
import tarfile
import time

import pytest

from .test_rpc import add, error_of


def test_pin_ls_is_kubos_bytes_empty_full_streamed_and_for_an_indirect_pin(daemon):
    """kubo's PinLsList has ``Keys`` omitempty: nothing pinned is ``{}`` (was ``{"Keys":{}}``);
    its PinLsObject has ``Name`` omitempty, so a streamed line is ``{"Cid","Type"}`` (was
    ``"Name":""`` besides); the Keys map is sorted, as Go writes a map; a CID pinned
    through a directory, asked for by name, is ``indirect through <root>``; a bad type is
    kubo's 500 (was a 400 in words of ours)."""
    for kind in ("all", "recursive", "direct", "indirect"):
        assert daemon.post("pin/ls", type=kind)[2] == b"{}\n", kind
        status, headers, body = daemon.post("pin/ls", type=kind, stream=True)
        assert (status, body) == (200, b""), kind
        assert headers["X-Chunked-Output"] == "1"
    assert daemon.post("pin/ls")[2] == b"{}\n"
    events = add(daemon, [("d", "application/x-directory", b""),
                          ("d/a", "application/octet-stream", b"a\n"),
                          ("d/b", "application/octet-stream", b"b\n")])
    files = sorted(e["Hash"] for e in events[:-1])
    root = events[-1]["Hash"]
    assert events[-1]["Name"] == "d"
    direct = add(daemon, [("x", "application/octet-stream", b"x\n")], pin=False)[0]["Hash"]
    assert daemon.json("pin/add", direct, recursive=False) == [{"Pins": [direct]}]
    kinds = {root: "recursive", direct: "direct", files[0]: "indirect", files[1]: "indirect"}
    whole = "".join(f'"{cid}":{{"Type":"{kinds[cid]}","Name":""}},' for cid in sorted(kinds))
    assert daemon.post("pin/ls")[2] == ('{"Keys":{' + whole[:-1] + "}}\n").encode()
    assert daemon.post("pin/ls", type="recursive")[2] == \
        f'{{"Keys":{{"{root}":{{"Type":"recursive","Name":""}}}}}}\n'.encode()
    streamed = daemon.post("pin/ls", stream=True)[2].splitlines()
    assert sorted(streamed) == sorted(
        f'{{"Cid":"{cid}","Type":"{kind}"}}'.encode() for cid, kind in kinds.items())
    assert daemon.post("pin/ls", type="direct", stream=True)[2] == \
        f'{{"Cid":"{direct}","Type":"direct"}}\n'.encode()
    assert daemon.post("pin/ls", files[0], stream=True)[2] == \
        f'{{"Cid":"{files[0]}","Type":"indirect through {root}"}}\n'.encode()
    assert daemon.post("pin/ls", files[1], type="indirect")[2] == \
        f'{{"Keys":{{"{files[1]}":{{"Type":"indirect through {root}","Name":""}}}}}}\n'.encode()
    status, err = error_of(daemon.post("pin/ls", files[0], type="recursive"))
    assert status == 500 and err["Message"] == f"path '{files[0]}' is not pinned"
    for bad in ("bogus", ""):  # kubo's error (a 500, Code 0), an empty type too
        assert daemon.post("pin/ls", type=bad)[:3:2] == (500, json.dumps({
            "Message": f"invalid type '{bad}', must be one of {{direct, indirect, recursive, "
                       "all}", "Code": 0, "Type": "error"}, separators=(",", ":")).encode()
            + b"\n")


def _stuck_block(daemon, content: bytes) -> str:
    """A block gc cannot remove (its name a directory); its name as kubo's gc writes it."""
    from ww.core import multihash
    from ww.core.cid import CID, RAW

    mh = multihash.sha256(content)
    (daemon.home / "blocks" / mh.hex()[-3:-1] / mh.hex()).mkdir(parents=True)
    return str(CID.v1(RAW, mh))


def test_repo_gc_errors_and_silent_as_kubo(daemon):
    """kubo's `repo gc`: a block it cannot remove is ``could not remove <cid>: <reason>``;
    with ``stream-errors`` each is a line, then the summary line ``garbage collection
    incomplete: could not delete some blocks``, and every removed block is streamed even
    with ``silent`` (kubo's silent is only for the other branch); without it the error
    names each failure and the summary, joined by ``; ``."""
    from ww.core.cid import CID, RAW

    stuck = _stuck_block(daemon, b"stuck")
    removed = add(daemon, [("h", "application/octet-stream", b"unpinned")], pin=False)[0]
    removed_key = str(CID.v1(RAW, CID.parse(removed["Hash"]).multihash))
    with pytest.raises(http.client.IncompleteRead) as cut:
        daemon.post("repo/gc", stream_errors=True, silent=True)
    lines = [json.loads(line) for line in cut.value.partial.splitlines()]
    assert {"Key": {"/": removed_key}} in lines
    errors = [line for line in lines if "Error" in line]
    assert len(errors) == 2 and lines[-1] == errors[1]  # the summary comes last
    assert all(list(line) in (["Key"], ["Key", "Error"]) for line in lines)
    assert errors[0]["Key"] is None and errors[0]["Error"].startswith(
        f"could not remove {stuck}: ")
    assert errors[1] == {"Key": None,
                         "Error": "garbage collection incomplete: could not delete some blocks"}
    # silent, no stream-errors: nothing streamed, so the error is a whole kubo error reply
    status, err = error_of(daemon.post("repo/gc", silent=True))
    assert status == 500
    assert err["Message"].startswith(f"could not remove {stuck}: ")
    assert err["Message"].endswith(
        "; garbage collection incomplete: could not delete some blocks")


def _names(tar: bytes) -> list[bytes]:
    """Each member's raw name field, as written (``tarfile`` strips a directory's trailing
    slash when it reads)."""
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r|") as archive:
        offsets = [member.offset for member in archive]
    return [tar[offset:offset + 100].rstrip(b"\0") for offset in offsets]


def test_get_writes_directories_without_a_slash_the_time_and_the_top_name_as_written(daemon):
    """boxo's TarWriter (kubo's `get`) writes ``path.Join``'s names: a directory's without
    the trailing ``/`` tarfile adds; each entry's time is when it is written (UnixFS here
    keeps none: kubo's time.Now(), not 0); the top entry is named by the argument as the
    client wrote it (a CID in base36 stays base36); ``X-Content-Length`` is the node's size
    as kubo's (a directory's cumulative DAG size, a file's bytes, a symlink's target's)."""
    from ww.core import multibase
    from ww.core.cid import CID

    events = add(daemon, [("t", "application/x-directory", b""),
                          ("t/sub", "application/x-directory", b""),
                          ("t/sub/f", "application/octet-stream", b"f\n"),
                          ("t/l", "application/symlink", b"sub/f")])
    root = events[-1]["Hash"]
    base36 = multibase.encode(bytes(CID.parse(root).to_v1()), "base36")
    before = int(time.time())
    status, headers, tar = daemon.post("get", f"/ipfs/{base36}/")
    assert status == 200
    # kubo's X-Content-Length: the directory's cumulative DAG size (add's Size of it)
    assert headers["X-Content-Length"] == events[-1]["Size"]
    after = int(time.time())
    assert _names(tar) == [n.encode() for n in (base36, f"{base36}/l", f"{base36}/sub",
                                                f"{base36}/sub/f")]
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = archive.getmembers()
        assert [(m.type, m.mode) for m in members] == [
            (tarfile.DIRTYPE, 0o755), (tarfile.SYMTYPE, 0o777), (tarfile.DIRTYPE, 0o755),
            (tarfile.REGTYPE, 0o644)]
        assert all(before <= m.mtime <= after for m in members)
        assert members[1].linkname == "sub/f"
    status, headers, tar = daemon.post("get", f"{root}/sub/f")
    assert status == 200 and _names(tar) == [b"f"]
    assert headers["X-Content-Length"] == "2"  # a file's bytes
    status, headers, tar = daemon.post("get", f"{root}/l")
    assert status == 200 and _names(tar) == [b"l"]
    assert headers["X-Content-Length"] == "5"  # a symlink's target's


def _h2_post(daemon, command: str, **query: str) -> tuple[dict, bytes, dict | None, bool]:
    """POST /api/v0/<command> over HTTP/2 (prior knowledge, as Go's h2c clients speak it),
    accepting trailers (``te: trailers``): the reply's headers, body, trailers (None when
    it sent none) and whether it was reset rather than ended."""
    import socket
    import urllib.parse

    import h2.config
    import h2.connection
    import h2.events

    from tests.conftest import HANG

    host, port = daemon.url.removeprefix("http://").split(":")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                          (":authority", f"{host}:{port}"),
                          (":path", f"/api/v0/{command}?{urllib.parse.urlencode(query)}"),
                          ("te", "trailers")], end_stream=True)
    headers: dict = {}
    body = b""
    trailers = None
    reset = ended = False
    with socket.create_connection((host, int(port)), timeout=HANG) as sock:
        sock.sendall(conn.data_to_send())
        while not ended:  # until the stream ends, the server hangs up, or HANG (a hang)
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    reset = ended = True
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    return headers, body, trailers, reset


def test_an_error_after_the_reply_began_is_kubos_x_stream_error_trailer_over_http2(daemon):
    """kubo ends a streamed reply that fails midway with the ``X-Stream-Error`` trailer
    (its ``Trailer`` header announces it).  hypercorn sends trailers over HTTP/2 only, to a
    request that accepts them: there the error is that trailer and the stream ends cleanly;
    a reply that succeeds ends without one.  (Over HTTP/1.1 the connection is cut: see
    test_rpc's gc test.)"""
    stuck = _stuck_block(daemon, b"stuck over h2")
    add(daemon, [("h", "application/octet-stream", b"unpinned over h2")], pin=False)
    headers, body, trailers, reset = _h2_post(daemon, "repo/gc", **{"stream-errors": "true"})
    assert headers[b":status"] == b"200" and headers[b"trailer"] == b"X-Stream-Error"
    assert not reset
    assert trailers == {b"x-stream-error": b"encountered errors during gc run"}
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[-1] == {"Key": None,
                         "Error": "garbage collection incomplete: could not delete some blocks"}
    assert any(line["Error"].startswith(f"could not remove {stuck}: ")
               for line in lines if "Error" in line)
    headers, body, trailers, reset = _h2_post(daemon, "pin/ls", stream="true")
    assert headers[b":status"] == b"200" and not reset
    assert not trailers  # no error: none (or an empty block)
