"""`ww daemon`'s life: start, one per repository, a clean stop, the log."""

from __future__ import annotations

import json
import os
import signal

from tests.conftest import HANG, run_ww

from .conftest import Daemon, multipart


def test_a_second_daemon_on_the_repository_names_the_first_ones_pid(daemon):
    r = run_ww("daemon", "--api", "/ip4/127.0.0.1/tcp/0", "--gateway", "off", "--listen",
               "/ip4/127.0.0.1/tcp/0")
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"pid {daemon.proc.pid}" in r.stderr and "another ww daemon" in r.stderr


def test_sigterm_and_sigint_stop_it_cleanly_and_the_repository_checks_clean(ww_home):
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = Daemon(ww_home)
        body, headers = multipart([("a.bin", "application/octet-stream", b"x" * 700_000)])
        status, _, reply = d.post("add", body=body, headers=headers)
        assert status == 200, reply
        assert (ww_home / "api").read_text().strip() == d.api.removesuffix("/http")
        code, events = d.stop(sig)
        assert code == 0, events
        names = [e["event"] for e in events]
        assert names[-2:] == ["stopping", "stopped"], names
        assert events[-2]["signal"] == signal.Signals(sig).name
        assert not (ww_home / "api").exists()
        r = run_ww("repo", "check")
        assert r.returncode == 0, r.stdout + r.stderr
    # the lock went with it: a new daemon starts
    Daemon(ww_home).stop()


def test_log_lines_are_json_with_json_and_one_line_per_event_without(ww_home, tmp_path):
    d = Daemon(ww_home)
    assert d.post("cat", "not-a-cid")[0] == 500  # an event of its own: rpc-error
    _, events = d.stop()
    assert d.other_lines == []  # every line JSON
    assert "rpc-error" in [e["event"] for e in events]
    for event in events:
        assert {"ts", "event", "daemon"} <= event.keys()
        assert event["daemon"] == d.proc.pid
    assert [e["event"] for e in events][:1] == ["started"]
    import subprocess

    from tests.conftest import WW

    proc = subprocess.Popen([WW, "daemon", "--api", "/ip4/127.0.0.1/tcp/0", "--gateway",
                             "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/tcp/0"],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WW_HOME": str(ww_home)})
    lines = []
    while not any(" api: " in line for line in lines):
        line = proc.stderr.readline()
        assert line, lines
        lines.append(line)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    lines += rest.splitlines(keepends=True)
    assert proc.returncode == 0
    assert all(line.startswith("ww daemon: ") for line in lines), lines
    assert lines[-1] == "ww daemon: stopped\n"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            continue
        raise AssertionError(f"a JSON line without --json: {line}")


def test_a_bad_api_address_is_a_usage_error_and_leaves_no_lock_held(ww_home):
    r = run_ww("daemon", "--api", "/ip4/127.0.0.1/udp/5001")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("ww: ") and r.stderr.count("\n") == 1, r.stderr
    Daemon(ww_home).stop()


def test_it_serves_bitswap_to_peers_and_swarm_connect_reaches_another_daemon(
        daemon, tmp_path):
    data = os.urandom(600_000)
    body, headers = multipart([("f", "application/octet-stream", data)])
    status, _, reply = daemon.post("add", body=body, headers=headers)
    assert status == 200, reply
    cid = json.loads(reply.splitlines()[-1])["Hash"]
    p2p = next(e["listening"] for e in daemon.events if e["event"] == "p2p")
    # another node, another repository: it can only get the blocks from the daemon
    other = tmp_path / "other-home"
    r = run_ww("import", "--peer", p2p, f"/ipfs/{cid}", "-o", str(tmp_path / "copy"),
               env={**os.environ, "WW_HOME": str(other)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "copy").read_bytes() == data
    # a second daemon (its own repository and key) dials the first through swarm/connect
    second = Daemon(tmp_path / "second-home", "--allow-dial", "127.0.0.0/8")
    try:
        assert second.json("swarm/connect", p2p) == [
            {"Strings": [f"connect {daemon.peer_id} success"]}]
        peers = second.json("swarm/peers")[0]["Peers"]
        assert [p["Peer"] for p in peers] == [daemon.peer_id]
        # kubo's connInfo (0.20 on): its omitempty fields, none asked for, left out, and its
        # Identify (not omitempty) the zero IdOutput, in Go's field order; sorted by Addr
        assert [list(p) for p in peers] == [["Addr", "Peer", "Identify"]]
        assert peers[0]["Addr"].startswith("/ip4/127.0.0.1/tcp/")
        assert second.post("swarm/peers")[2] == json.dumps(
            {"Peers": [{"Addr": peers[0]["Addr"], "Peer": daemon.peer_id, "Identify": {
                "ID": "", "PublicKey": "", "Addresses": None, "AgentVersion": "",
                "Protocols": None}}]}, separators=(",", ":")).encode() + b"\n"
        status, _, got = second.post("cat", f"/ipfs/{cid}")  # fetched over Bitswap
        assert (status, got) == (200, data)
    finally:
        second.stop()


def test_sigterm_during_an_upload_stops_cleanly_with_nothing_half_written(ww_home):
    import socket

    d = Daemon(ww_home)
    body, headers = multipart([("big", "application/octet-stream", os.urandom(8 << 20))])
    host, port = d.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /api/v0/add HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}"
                 f"\r\n\r\n".encode() + body[: len(body) // 2])  # then it stalls
    status, _, _ = d.post("version")  # the upload is under way beside other requests
    assert status == 200
    code, events = d.stop()  # the upload never finishes: it is cancelled after the grace
    sock.close()
    assert code == 0, events
    assert [e["event"] for e in events][-1] == "stopped"
    r = run_ww("repo", "check")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_ww("pin", "ls")
    assert r.returncode == 0 and r.stdout == "", r.stdout


def test_the_daemon_serves_the_gateway_beside_the_api_and_off_means_none(tmp_path):
    """What is added through the RPC API is served by the daemon's trustless gateway: the
    file, its raw block (hashed against its CID) and a CAR; `--gateway off` serves none."""
    import hashlib
    import urllib.request

    from ww.core.cid import CID

    d = Daemon(tmp_path / "home")
    try:
        assert d.gateway.startswith("/ip4/127.0.0.1/tcp/") and d.gateway.endswith("/http")
        body, headers = multipart([("a.txt", "application/octet-stream", b"via the gateway\n")])
        status, _, reply_body = d.post("add", body=body, headers=headers, cid_version=1)
        assert status == 200, reply_body
        cid = json.loads(reply_body.splitlines()[-1])["Hash"]
        parts = d.gateway.split("/")
        base = f"http://{parts[2]}:{parts[4]}/ipfs/{cid}"
        with urllib.request.urlopen(base, timeout=HANG) as reply:
            assert reply.read() == b"via the gateway\n"
        with urllib.request.urlopen(base + "?format=raw", timeout=HANG) as reply:
            block = reply.read()
        assert CID.parse(cid).digest == hashlib.sha256(block).digest()
        with urllib.request.urlopen(base + "?format=car", timeout=HANG) as reply:
            assert reply.headers["Content-Type"].startswith("application/vnd.ipld.car")
            assert block in reply.read()
    finally:
        assert d.stop()[0] == 0
    off = Daemon(tmp_path / "home", gateway="off")
    try:
        assert off.gateway == "" and not any(e["event"] == "gateway" for e in off.events)
    finally:
        assert off.stop()[0] == 0


def test_sigterm_with_clients_that_stopped_reading_stops_after_the_grace(ww_home):
    """Clients that stop reading a large `cat` (their TCP window shut) must not keep the
    daemon alive: hypercorn's trio server shields its socket writes from cancellation, so the
    old daemon, told to stop, waited for them forever.  After the grace its connections are
    closed, and it stops."""
    import socket

    d = Daemon(ww_home)
    body, headers = multipart([("big", "application/octet-stream", os.urandom(24 << 20))])
    status, _, reply = d.post("add", body=body, headers=headers)
    assert status == 200, reply
    cid = json.loads(reply.splitlines()[-1])["Hash"]
    host, port = d.url.removeprefix("http://").split(":")
    stalled = []
    for _ in range(3):
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"POST /api/v0/cat?arg={cid} HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        assert sock.recv(1)  # the reply has begun; it is never read further
        stalled.append(sock)
    assert d.post("version")[0] == 200  # served beside them
    d.proc.send_signal(signal.SIGTERM)
    try:
        d.proc.wait(timeout=HANG)  # (the kernel's own STALL bound is not what ends it)
    finally:
        for sock in stalled:
            sock.close()
    code, events = d.stop()
    assert code == 0 and [e["event"] for e in events][-1] == "stopped", events


def test_symlinks_planted_for_the_lock_and_api_files_are_never_written_through(ww_home,
                                                                              tmp_path):
    """$WW_HOME/api (a stale one, or a symlink) is replaced, never written through; a
    daemon.lock that is a symlink is refused with one line: the old daemon truncated and
    overwrote the files they named."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    ww_home.mkdir(parents=True, exist_ok=True)
    (ww_home / "api").symlink_to(victim)
    (ww_home / "gateway").symlink_to(victim)
    d = Daemon(ww_home)
    try:
        assert victim.read_text() == "precious\n"
        assert (ww_home / "api").read_text().strip() == d.api.removesuffix("/http")
        assert not (ww_home / "api").is_symlink()
    finally:
        code, _ = d.stop()
    assert code == 0 and not (ww_home / "api").exists()
    (ww_home / "daemon.lock").unlink()
    (ww_home / "daemon.lock").symlink_to(victim)
    r = run_ww("daemon", "--api", "/ip4/127.0.0.1/tcp/0", "--gateway", "off", "--listen",
               "/ip4/127.0.0.1/tcp/0", env={**os.environ, "WW_HOME": str(ww_home)})
    assert r.returncode != 0 and "daemon.lock" in r.stderr and "symlink" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert victim.read_text() == "precious\n"


def test_shutting_down_connections_leaks_no_descriptor():
    """After the grace period the daemon shuts down its sites' connections once a second, by
    looking at every descriptor it holds: each one that was not a socket leaked the
    duplicate made to look at it (1024 descriptors in about 20 s with 50 files open)."""
    from ww.serve import server

    files = [open(os.devnull, "rb") for _ in range(5)]  # noqa: SIM115 (closed below)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            server._shut_down_connections(set())
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        for f in files:
            f.close()


def test_event_lines_on_a_stderr_nobody_reads_never_stop_it_serving(daemon):
    """The fixture reads the daemon's stderr until it listens, then never again, as a
    supervisor that stopped reading its pipe.  Each failed request logs an event line;
    written on the event loop, the lines of some 600 requests filled the pipe and the daemon
    answered nothing more.  They are written by a thread now: every request is answered,
    and every line comes, in order, once the pipe is read."""
    for n in range(1000):  # event lines of some 250 bytes: four pipes' worth
        status, _, body = daemon.post("cat", f"{n:04}" + "x" * 2000)
        assert status == 500 and b"text too long" in body, body
    assert daemon.json("version")[0]["Version"]
    code, events = daemon.stop()
    assert code == 0, daemon.other_lines
    failed = [e["error"] for e in events if e["event"] == "rpc-error"]
    assert [line[13:17] for line in failed] == [f"{n:04}" for n in range(1000)], failed[:3]
    assert [e["event"] for e in events[-2:]] == ["stopping", "stopped"]


def test_a_defect_serving_one_connection_is_an_event_line_and_the_site_serves_on(monkeypatch):
    """A defect in serving one connection ends that connection only, and is told as the
    event ``connection-error`` through the daemon's event log (one JSON object with
    ``--json``; never a blocking write on the loop, which a stderr nobody reads held).  The
    defect is injected (a connection server that raises): the ones found by attack are
    fixed, and this checks where such a line goes and that the site serves on."""
    import socket as socketlib

    import trio

    from ww.serve import server

    class Defective:
        def __init__(self, *_args: object) -> None:
            self.given_up = False
            self.stretch = None

        def __await__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("a defect\nover two lines")
            yield  # (a generator)

    monkeypatch.setattr(server, "_server_class", lambda: Defective)
    sock, _ = server.bind("/ip4/127.0.0.1/tcp/0")
    port = sock.getsockname()[1]
    events: list[tuple[str, dict[str, str]]] = []

    async def main() -> None:
        stop = trio.Event()

        def clients() -> None:  # a thread of its own: blocking sockets
            for _ in range(3):  # each served by a defective server: the site goes on
                with socketlib.create_connection(("127.0.0.1", port)) as c:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    try:
                        assert c.recv(100) == b""  # closed, nothing said
                    except ConnectionResetError:
                        pass  # (closed with the request unread: a reset)
            trio.from_thread.run_sync(stop.set)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, clients)
            await server.serve([server.Site(lambda *a: None, sock, True, "api")], stop,
                               grace=0.1, log=lambda event, **f: events.append((event, f)))

    trio.run(main)
    assert events == [("connection-error",
                       {"site": "api", "error": "RuntimeError: a defect over two lines"})] * 3


def test_a_defect_in_looking_for_a_waiting_clients_place_is_told_and_the_site_serves_on(
        monkeypatch):
    """With every place taken and a client waiting, the daemon looks for a connection to
    give its place up (``_longest_waited_on``).  A defect there (injected here: no trigger
    is known) ended the whole site with no line: its listener closed and every waiting
    client was reset while the daemon ran on.  It is told as the event ``place-error`` and
    the waiting client gets the next place that frees."""
    import socket as socketlib
    import threading

    import trio

    from ww.serve import server

    def defect(*_args: object) -> None:
        raise RuntimeError("a defect in the look")

    monkeypatch.setattr(server, "_longest_waited_on", defect)
    sock, _ = server.bind("/ip4/127.0.0.1/tcp/0")
    port = sock.getsockname()[1]
    events: list[tuple[str, dict[str, str]]] = []
    told = threading.Event()
    answers: list[bytes] = []

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    def log(event: str, **fields: str) -> None:
        events.append((event, fields))
        told.set()

    async def main() -> None:
        stop = trio.Event()

        def clients() -> None:  # a thread of its own: blocking sockets
            request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            with socketlib.create_connection(("127.0.0.1", port), timeout=HANG) as first:
                first.sendall(request)
                answers.append(first.recv(100).split(b"\r\n")[0])  # served; kept open
                second = socketlib.create_connection(("127.0.0.1", port), timeout=HANG)
                second.sendall(request)  # waits: the one place is the first's
                assert told.wait(HANG), "no place-error event"
            with second:  # the first has gone: its place is the second's
                answers.append(second.recv(100).split(b"\r\n")[0])
            trio.from_thread.run_sync(stop.set)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, clients)
            await server.serve([server.Site(app, sock, True, "api")], stop, grace=0.1,
                               connections=1, log=log)

    trio.run(main)
    assert answers == [b"HTTP/1.1 200 "] * 2
    assert events[0] == ("place-error", {"site": "api",
                                         "error": "RuntimeError: a defect in the look"})
