"""Who can reach `ww daemon`'s RPC API, and who can keep others from it: an API on a unix
socket only its user may connect to (`--api /unix/<path>`, kubo's `Addresses.API` form),
places given up by connections that keep the daemon waiting for nothing, and a client that
half-closes its connection.  Real daemons, real sockets."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww

from .conftest import Daemon, _UnixConnection, multipart

NOBODY = 65534

# Run as another user: does connecting to the unix socket at argv[1] work?  (the system's
# Python: the test's virtualenv may be closed to that user)
_CONNECT = ("import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect(sys.argv[1])\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n"
            "else:\n"
            "    print('connected')\n")


@pytest.fixture
def open_place() -> Iterator[Path]:
    """A directory anyone may enter (as /tmp or /run are), for a socket."""
    place = Path(tempfile.mkdtemp(prefix="ww-api-"))
    place.chmod(0o755)
    try:
        yield place
    finally:
        shutil.rmtree(place, ignore_errors=True)


def _as_nobody_connects(path: Path) -> str:
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    r = subprocess.run([python, "-c", _CONNECT, str(path)], user=NOBODY, group=NOBODY,
                       extra_groups=[], capture_output=True, text=True, timeout=HANG,
                       check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_an_api_on_a_unix_socket_serves_its_users_clients_and_no_other_user(
        ww_home, open_place, tmp_path):
    """`--api /unix/<path>`: the API listens on a unix socket made mode 0600, so no other
    local user can connect (connecting takes write permission on the socket's file) while
    the user's clients -- ww's kubo client (`ww export`/`ww cat --ipfs /unix/...`), plain
    HTTP -- are served; `$WW_HOME/api` names it as kubo does, and it is removed on stop.
    The old daemon refused the address (exit 2)."""
    path = open_place / "api.sock"
    d = Daemon(ww_home, api=f"/unix{path}")
    try:
        assert d.api == f"/unix{path}"
        assert (ww_home / "api").read_text() == f"/unix{path}\n"
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert d.json("id")[0]["ID"] == d.peer_id
        (tmp_path / "f.txt").write_text("over the unix socket\n")
        added = run_ww("export", "--ipfs", d.api, str(tmp_path / "f.txt"))
        assert added.returncode == 0, added.stderr
        cid = added.stdout.strip()
        got = run_ww("cat", "--ipfs", d.api, cid)
        assert got.returncode == 0 and got.stdout == "over the unix socket\n", got.stderr
        if os.geteuid() == 0:
            # the check itself: another user reaches a socket left open to them ...
            other = socket.socket(socket.AF_UNIX)
            other.bind(str(open_place / "open.sock"))
            (open_place / "open.sock").chmod(0o666)
            other.listen()
            try:
                assert _as_nobody_connects(open_place / "open.sock") == "connected"
            finally:
                other.close()
            # ... but not the API's
            assert _as_nobody_connects(path) == "PermissionError"
    finally:
        code, events = d.stop()
    assert code == 0, events
    assert not path.exists() and not (ww_home / "api").exists()


def test_a_unix_socket_left_by_a_killed_daemon_is_replaced_anything_else_refused(
        ww_home, open_place):
    """A daemon killed outright leaves its socket file; the next one on the path replaces
    it (no one listens on it).  A file that is no such socket is refused with one line,
    exit 2, and left as it was; the gateway takes TCP only."""
    path = open_place / "api.sock"
    d = Daemon(ww_home, api=f"/unix{path}")
    d.stop(signal.SIGKILL)
    assert stat.S_ISSOCK(path.lstat().st_mode)  # left behind
    d = Daemon(ww_home, api=f"/unix{path}")
    assert d.json("id")[0]["ID"] == d.peer_id
    code, _ = d.stop()
    assert code == 0
    path.write_text("not a socket\n")
    r = run_ww("daemon", "--api", f"/unix{path}", "--gateway", "off",
               env={**os.environ, "WW_HOME": str(ww_home)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("ww: --api: cannot listen on /unix/"), r.stderr
    assert path.read_text() == "not a socket\n"
    r = run_ww("daemon", "--api", "/ip4/127.0.0.1/tcp/0",
               "--gateway", f"/unix{open_place}/gw.sock",
               env={**os.environ, "WW_HOME": str(ww_home)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert not (open_place / "gw.sock").exists()


def test_a_socket_whose_listener_accepts_nobody_is_refused_not_waited_on(ww_home, open_place):
    """A socket at the path whose listener is alive but accepts no one (a daemon of the
    user's that hangs, its backlog full): the next daemon's look for a stale socket used to
    wait in ``connect`` for as long as that lasted; it is refused at once, one line, exit 2,
    and left as it was."""
    path = open_place / "api.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(0)
        waiting.setblocking(False)
        waiting.connect(str(path))  # the backlog (0: one connection) is now full
        try:
            r = run_ww("daemon", "--api", f"/unix{path}", "--gateway", "off",
                       timeout=120, env={**os.environ, "WW_HOME": str(ww_home)})
        except subprocess.TimeoutExpired:
            pytest.fail("the daemon waited on a listener that accepts no one")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("ww: --api: cannot listen on /unix/"), r.stderr
        assert "in use" in r.stderr, r.stderr
        assert stat.S_ISSOCK(path.lstat().st_mode)  # still the listener's
    finally:
        waiting.close()
        listener.close()


def test_a_socket_path_another_user_could_repoint_is_refused(ww_home, open_place):
    """(found by attack) Another user who may rename entries on the socket's path -- in a
    directory of theirs, one others may write that is not sticky, or through a symlink of
    theirs -- could move the daemon's socket away once it listens and listen at its path
    themselves: the user's clients (`$WW_HOME/api`, `ww --ipfs /unix/...`) then sent their
    requests, their files, to them (done by hand as `nobody` against the old daemon, which
    listened there).  Now such a path is refused with one line, exit 2, before anything is
    made there; a directory of the user's own, or a sticky one such as /tmp, is taken."""
    env = {**os.environ, "WW_HOME": str(ww_home)}

    def refused(path: Path, why: str) -> None:
        r = run_ww("daemon", "--api", f"/unix{path}", "--gateway", "off", env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("ww: --api: cannot listen on /unix/"), r.stderr
        assert why in r.stderr, r.stderr
        assert not os.path.lexists(path) and not (ww_home / "api").exists()

    shared = open_place / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may rename what is in it
    refused(shared / "api.sock", f"others may write to {shared}")
    sticky = open_place / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /tmp: the user's entries are the user's to move
    d = Daemon(ww_home, api=f"/unix{sticky}/api.sock", gateway="off")
    assert d.json("id")[0]["ID"] == d.peer_id
    assert d.stop()[0] == 0
    if os.geteuid() == 0:
        theirs = open_place / "theirs"
        theirs.mkdir()
        os.chown(theirs, NOBODY, NOBODY)
        refused(theirs / "api.sock", f"{theirs} is another user's")
        # a symlink of theirs in the sticky directory, to a directory of the user's own
        own = open_place / "own"
        own.mkdir()
        (sticky / "link").symlink_to(own)
        os.lchown(sticky / "link", NOBODY, NOBODY)
        refused(sticky / "link" / "api.sock", f"{sticky / 'link'} is another user's")
        assert not (own / "api.sock").exists()


def _stalled_upload(daemon: Daemon) -> socket.socket:
    """A connection with an `add` under way whose client sent the head and the start of a
    1 GiB body, and nothing more (yet)."""
    body, headers = multipart([("big", "application/octet-stream", b"")])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    opening = body[:body.index(b"\r\n--wwtestboundary--")]
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=HANG)
    sock.sendall(f"POST /api/v0/add?pin=false HTTP/1.1\r\nHost: x\r\n{head}"
                 f"Content-Length: {1 << 30}\r\n\r\n".encode() + opening)
    return sock


def _ended(socks: list[socket.socket]) -> list[socket.socket]:
    """Those of ``socks`` the daemon has ended (read to their end, or reset), each read
    without waiting: what is there (a progress line, a GOAWAY) is read over."""
    ended = []
    for sock in socks:
        sock.setblocking(False)
        try:
            while sock.recv(1 << 16):
                pass
            ended.append(sock)
        except BlockingIOError:
            pass
        except OSError:
            ended.append(sock)
    return ended


@contextmanager
def _trickling(socks: list[socket.socket], every: float) -> Iterator[None]:
    """Within: a byte sent on each of ``socks`` every ``every`` seconds (in a thread)."""
    done = threading.Event()

    def trickle() -> None:
        while not done.wait(every):
            for sock in socks:
                try:
                    sock.send(b"x")
                except OSError:
                    pass  # cut off, or refused

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        yield
    finally:
        done.set()
        trickler.join(HANG)


def _add_served_while_trickling(daemon: Daemon, socks: list[socket.socket],
                                every: float) -> None:
    """Send a byte on each of ``socks`` every ``every`` seconds while a small `add` is
    posted, and check the `add` is served."""
    with _trickling(socks, every):
        body, headers = multipart([("s", "application/octet-stream", b"served\n")])
        status, _, reply = daemon.post("add", body=body, headers=headers)
        assert status == 200, reply
        assert b'"Name":"s"' in reply


def test_uploads_that_trickle_give_their_places_to_a_waiting_client(daemon):
    """A local process takes every one of the API's places (`CONNECTIONS`) with an `add`
    whose body it trickles, a byte every 10 s on each (under the 60 s after which a body
    that brings nothing is refused).  The old daemon served no one else for as long as it
    went on (the client below waited out its `HANG`); now, with every place taken and a
    client waiting, a connection whose request has kept the daemon waiting on its body for
    `EVICT_AFTER` seconds gives its place up: the client is served, and the trickled
    upload is cut off (the daemon shut its connection down)."""
    from ww.serve.server import CONNECTIONS

    socks = [_stalled_upload(daemon) for _ in range(CONNECTIONS)]
    _add_served_while_trickling(daemon, socks, 10)
    cut = _ended(socks)  # nothing is sent to a stalled upload: its end (or a reset)
    for sock in socks:
        sock.close()
    assert len(cut) >= 1


def test_connections_holding_half_a_head_give_their_places_up_at_once(ww_home):
    """(found by attack) every place taken by connections that sent half a request head,
    and more of them waiting to be accepted ahead of an honest client: each must give its
    place up at once.  hypercorn left a connection's idle timer running once its reading
    was over, and the connection ended only when the timer fired, so the place of one cut
    (or whose client hung up) stayed taken up to the keep-alive timeout; the daemon, which
    cuts one at a time, cut one every 5 s: behind 800 such connections, `version` waited
    30 s.  Here the timeout is out of reach (`KEEP_ALIVE`): the old daemon never served it."""
    from ww.serve.server import CONNECTIONS

    daemon = Daemon(ww_home, gateway="off", constants={"ww.serve.server.KEEP_ALIVE": 3600.0})
    host, port = daemon.url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(CONNECTIONS + 16):  # 16 more wait ahead of the client
            sock = socket.create_connection((host, int(port)), timeout=HANG)
            sock.sendall(b"POST /api/v0/version HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        client, served = _version_in_thread(daemon)
        client.join(HANG)  # only a hang
        assert served.is_set(), "the client was never served"
    finally:
        for sock in socks:
            sock.close()
        daemon.stop()


def _waiting_to_be_accepted(port: int) -> int:
    """How many connections wait in the backlog of the listening socket on 127.0.0.1:port
    (the kernel's count, /proc/net/tcp's rx_queue of a socket in LISTEN)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def _version_once_all_taken(daemon: Daemon, port: int
                            ) -> tuple[threading.Thread, threading.Event]:
    """Once the daemon has taken every connection waiting on 127.0.0.1:port (a place
    each), a client that asks for `version` (in a thread), and the event set once served."""
    for _ in range(HANG * 10):  # until the daemon took every one
        if not _waiting_to_be_accepted(port):
            break
        threading.Event().wait(0.1)
    return _version_in_thread(daemon)


def _version_in_thread(daemon: Daemon) -> tuple[threading.Thread, threading.Event]:
    """A client that asks for `version` (in a thread), and the event set once served."""
    served = threading.Event()

    def version() -> None:
        if daemon.post("version")[0] == 200:
            served.set()

    client = threading.Thread(target=version, daemon=True)
    client.start()
    return client, served


class _H2Cat:
    """A `cat` over HTTP/2 (prior knowledge, as `curl --http2-prior-knowledge` sends it) by
    a client that reads its reply at its own pace: :meth:`read` takes what has come, and
    the daemon may send more only as it gives the room back (HTTP/2's flow control)."""

    def __init__(self, daemon: Daemon, cid: str) -> None:
        import h2.config
        import h2.connection

        host, port = daemon.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=HANG)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                                   (":authority", "localhost"),
                                   (":path", f"/api/v0/cat?arg={cid}")], end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.body = b""
        self.status = ""
        self.ended = False

    def read(self, until: int) -> None:
        """Read (giving the room back) until ``until`` bytes of the reply came, it ended,
        or the connection did."""
        import h2.events

        while not self.ended and len(self.body) < until:
            data = self.sock.recv(1 << 16)
            if not data:
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.status = dict(event.headers)[b":status"].decode()
                elif isinstance(event, h2.events.DataReceived):
                    self.body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset,
                                        h2.events.ConnectionTerminated)):
                    self.ended = True
            self.sock.sendall(self.conn.data_to_send())


@pytest.fixture
def daemon_without_send_grace(ww_home: Path) -> Iterator[Daemon]:
    """A daemon whose paused readers never meet SEND_GRACE, however slow this machine is."""
    d = Daemon(ww_home, constants={"ww.serve.server.SEND_GRACE": 3600.0})
    yield d
    if d.proc.poll() is None:
        d.stop()


def test_an_http2_reply_the_daemon_is_sending_keeps_its_place(daemon_without_send_grace):
    """(found by attack) With every place taken and a client waiting, a connection gives its
    place up only while the daemon waits on its client.  Over HTTP/1.1 a request read whole
    is the daemon's to answer, but over HTTP/2 the old daemon counted any connection whose
    read loop waited as one waiting on its client: a `cat` whose reader paused (its reply
    piped into something slow) for `EVICT_AFTER` seconds was cut off midway to let another
    client in.  Now an HTTP/2 connection with a request read whole keeps its place as an
    HTTP/1.1 one does, past `EVICT_AFTER` (a reader that takes nothing for `SEND_GRACE`
    seconds while a client waits gives it up: the next tests); the reply is read in full
    once the reader goes on."""
    from ww.serve.server import CONNECTIONS, EVICT_AFTER

    daemon = daemon_without_send_grace
    data = os.urandom(16 << 20)  # more than the sockets' buffers hold
    body, headers = multipart([("big", "application/octet-stream", data)])
    status, _, reply = daemon.post("add", body=body, headers=headers)
    assert status == 200, reply
    cid = json.loads(reply)["Hash"]
    h2 = _H2Cat(daemon, cid)
    h2.read(until=1)
    assert h2.status == "200" and not h2.ended
    # the other places: HTTP/1.1 `cat`s of the same file whose clients read nothing (the
    # daemon holds them up: their replies, or the workers they wait for)
    host, port = daemon.url.removeprefix("http://").split(":")
    others = []
    for _ in range(CONNECTIONS - 1):
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        other.settimeout(HANG)
        other.connect((host, int(port)))
        other.sendall(f"POST /api/v0/cat?arg={cid} HTTP/1.1\r\nHost: x\r\n"
                      "Content-Length: 0\r\n\r\n".encode())
        others.append(other)
    waiting, served = _version_once_all_taken(daemon, int(port))
    try:
        # the old daemon cut the paused HTTP/2 reply off after EVICT_AFTER seconds and let
        # the waiting client in; now the client waits until a place frees (a while to see
        # that no place is taken from the reply, not a time anything must happen within)
        served.wait(2 * EVICT_AFTER)
    finally:
        for other in others:
            other.close()
    waiting.join(HANG)
    assert served.is_set()
    h2.read(until=len(data))
    h2.sock.close()
    assert len(h2.body) == len(data)
    assert h2.body == data


def test_a_client_that_half_closes_after_its_request_gets_it_cancelled_as_kubos(daemon):
    """A client that sends a whole request (here an `add`, with its body) and then shuts
    down its side for writing (`shutdown(SHUT_WR)`) gets no reply: the daemon reads the
    end of its connection as the client having hung up, and cancels the request, as kubo's
    server (Go's net/http cancels a request's context when its connection reads EOF) does.
    A client that really went away looks the same at that point -- one FIN either way --
    and is told apart only by the reset a write to it draws, so keeping such requests
    running would keep running those of clients that are gone (docs/daemon.md).  The same
    request without the shutdown is answered, and the daemon serves on."""
    # a body larger than the sockets' buffers: the end of the connection reaches the daemon
    # while the add is still at work on the body's last pieces
    body, headers = multipart([("h", "application/octet-stream", os.urandom(8 << 20))])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST /api/v0/add?pin=false HTTP/1.1\r\nHost: x\r\n{head}"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    host, port = daemon.url.removeprefix("http://").split(":")

    def send(half_close: bool) -> bytes:
        with socket.create_connection((host, int(port)), timeout=HANG) as sock:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            got = b""
            while b'"Name":"h"' not in got and (piece := sock.recv(1 << 16)):
                got += piece
            return got

    assert send(half_close=True) == b""  # closed, unanswered
    answered = send(half_close=False)
    assert answered.startswith(b"HTTP/1.1 200 ") and b'"Name":"h"' in answered


def test_the_end_of_a_request_takes_the_place_of_all_its_unread_body():
    """What the test above met now and then (one CI run in several): hypercorn puts
    ``http.disconnect`` in the app's full queue of body reads, and only the oldest read was
    dropped to make room for it, so the app went on to read the later ones, the body's last
    included, and parsed a body with a hole in it (a 400 about a malformed body, or a file
    added without its middle).  A real trio channel of hypercorn's queue size: once the
    disconnect is put, it is the next and only thing the app reads."""
    import trio

    from ww.serve.server import _in_place_of_unread

    async def main() -> list[dict]:
        put_end, take_end = trio.open_memory_channel(10)
        for i in range(10):  # a full queue, the body's last read among them
            put_end.send_nowait({"type": "http.request", "body": b"%d" % i,
                                 "more_body": i < 9})
        _in_place_of_unread(put_end, take_end, {"type": "http.disconnect"}, 10)
        put_end.close()
        return [message async for message in take_end]

    assert trio.run(main) == [{"type": "http.disconnect"}]


def _start_daemon(home: Path, api: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [WW, "--json", "daemon", "--api", api, "--gateway", "off",
         "--listen", "/ip4/127.0.0.1/tcp/0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "WW_HOME": str(home)}, text=True)


def _serves_or_ends(proc: subprocess.Popen[str]) -> tuple[dict[str, str] | None, list[str]]:
    """Read the daemon's stderr until its `api` line (it serves: that event and the lines
    before) or its end (None, and its lines)."""
    lines = []
    while line := proc.stderr.readline():  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("{") and json.loads(line)["event"] == "api":
            return json.loads(line), lines
    proc.wait(HANG)
    return None, lines


def _refused_to_start(home: Path, path: Path, served: str) -> str:
    """Start a daemon on `/unix<path>`; it must be refused (``served`` says what it did
    otherwise) with one line, exit 2: that line."""
    proc = _start_daemon(home, f"/unix{path}")
    try:
        api, lines = _serves_or_ends(proc)
        assert api is None, f"{served}: {lines}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(HANG)
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"ww: --api: cannot listen on /unix{path}: "), lines
    return lines[0]


def test_a_daemon_starting_on_a_socket_path_another_is_starting_on_leaves_it_alone(
        ww_home, open_place):
    """A daemon between `bind` and `listen` on `/unix/<path>` (its socket file made,
    nobody listening on it yet) holds the path's lock (`<path>.lock`).  The old daemon
    took such a socket for one left by a killed daemon (connecting to it is refused) and
    replaced it: two daemons starting at once on a path could remove each other's socket,
    and one served on a socket no client could reach.  Now the next daemon is refused with
    one line, exit 2, and the socket is left as it was.  (The first daemon is played here
    by the test: it holds the lock and the bound socket, as a daemon does at that point.)"""
    import fcntl

    path = open_place / "api.sock"
    starting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        starting.bind(str(path))  # not listening yet
        made = path.lstat().st_ino
        line = _refused_to_start(ww_home, path, "it replaced the socket of a daemon starting")
        assert "in use by another daemon" in line, line
        assert path.lstat().st_ino == made  # still the first daemon's
    finally:
        starting.close()
        os.close(lock)


def test_two_daemons_started_at_once_on_one_socket_path_one_serves(tmp_path, open_place):
    """Two daemons (each its own $WW_HOME) started at the same moment on one
    `--api /unix/<path>`, a few times over: exactly one serves, and its socket, the one at
    the path, answers; the other is refused with one line, exit 2.  The old daemons could
    each take the other's socket, bound but not yet listening, for a stale one and replace
    it (both then said they served, one on a socket removed from the path), or fail with
    an error about the socket's file rather than that another daemon has it."""
    path = open_place / "api.sock"
    for round_ in range(3):
        homes = [tmp_path / f"home-{round_}-{i}" for i in range(2)]
        for home in homes:
            home.mkdir(mode=0o700)
        procs = [_start_daemon(home, f"/unix{path}") for home in homes]
        try:
            outcomes = [_serves_or_ends(proc) for proc in procs]
            serving = [i for i, (served, _) in enumerate(outcomes) if served is not None]
            assert len(serving) == 1, outcomes
            winner, loser = serving[0], 1 - serving[0]
            lines = outcomes[loser][1]
            assert procs[loser].returncode == 2 and len(lines) == 1, lines
            assert lines[0].startswith(f"ww: --api: cannot listen on /unix{path}: "), lines
            assert "in use by another daemon" in lines[0], lines
            conn = _UnixConnection(str(path))
            try:
                conn.request("POST", "/api/v0/id")
                answer = conn.getresponse()
                status, reply = answer.status, answer.read()
            finally:
                conn.close()
            peer_id = json.loads(outcomes[winner][1][0])["peer_id"]
            assert status == 200 and json.loads(reply)["ID"] == peer_id, reply
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=HANG)
        assert not path.exists() and not os.path.exists(f"{path}.lock")


def _every_upload_place_taken(daemon: Daemon
                              ) -> tuple[str, int, bytes, list[socket.socket]]:
    """The daemon's host and port, the head and body opening of an `add` of 1 GiB (with
    progress lines), and `UPLOADS` connections sending it that each have an upload place
    (its first progress line came back)."""
    from ww.serve.rpc import UPLOADS

    host, port = daemon.url.removeprefix("http://").split(":")
    body, headers = multipart([("big", "application/octet-stream", b"")])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    opening = body[:body.index(b"\r\n--wwtestboundary--")]
    request = (f"POST /api/v0/add?pin=false&progress=true HTTP/1.1\r\nHost: x\r\n{head}"
               f"Content-Length: {1 << 30}\r\n\r\n").encode() + opening
    placed = []
    for _ in range(UPLOADS):
        sock = socket.create_connection((host, int(port)), timeout=HANG)
        sock.sendall(request + bytes(2 << 20))  # a piece for its worker: a progress line
        got = b""
        while b'"Bytes"' not in got:  # it has a place
            piece = sock.recv(1 << 16)
            assert piece, got
            got += piece
        placed.append(sock)
    return host, int(port), request, placed


def test_a_connection_slow_to_end_once_cut_is_the_only_one_cut_for_a_waiting_client(daemon):
    """With every place taken and a client waiting, the daemon cuts one connection that
    keeps it waiting on its client -- and that one may be slow to end: an `add` waiting for
    an upload place saw the end of its connection only once it had a place (it is cancelled
    now).  The old daemon cut another each second meanwhile (five or so here for the one
    client); now a connection being cut counts as a place about to free, and it is the only
    one cut.
    Here the 16 upload places are held by uploads that keep sending (so they are not cut)
    and the other 112 connections by uploads waiting for a place, silent; once one of
    those is cut the senders go silent, are refused after `EVICT_AFTER` seconds, and the
    waiting client is served."""
    from ww.serve.server import CONNECTIONS

    host, port, request, placed = _every_upload_place_taken(daemon)
    stop_sending = threading.Event()

    def send_on() -> None:
        while not stop_sending.wait(0.5):
            for sock in placed:
                sock.sendall(b"x")

    sender = threading.Thread(target=send_on, daemon=True)
    sender.start()
    waiting = []
    try:
        for _ in range(CONNECTIONS - len(placed)):
            sock = socket.create_connection((host, int(port)), timeout=HANG)
            sock.sendall(request)
            waiting.append(sock)
        client, served = _version_once_all_taken(daemon, int(port))
        readable, _, _ = select.select(waiting, [], [], HANG)  # the first cut
        assert readable, "no connection gave its place up"
    finally:
        stop_sending.set()
        sender.join(HANG)
    client.join(HANG)
    assert served.is_set()
    readable, _, _ = select.select(waiting, [], [], 0)
    cut = []
    for sock in readable:
        try:
            if sock.recv(1 << 16) == b"":
                cut.append(sock)
        except OSError:
            cut.append(sock)
    for sock in placed + waiting:
        sock.close()
    assert len(cut) == 1, f"{len(cut)} connections were cut for one client"


def _server_side_unread(port: int, client: socket.socket) -> int:
    """How many bytes ``client`` sent the daemon on 127.0.0.1:port that it has not read yet
    (the kernel's count, /proc/net/tcp's rx_queue of the daemon's end)."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{client.getsockname()[1]:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError("no such connection")


def _read_by_the_daemon(port: int, sock: socket.socket, data: bytes) -> None:
    """Send ``data`` on ``sock`` and wait until the daemon has read it: one read of its."""
    sock.sendall(data)
    for _ in range(HANG * 100):
        if not _server_side_unread(port, sock):
            return
        threading.Event().wait(0.01)
    raise AssertionError("the daemon never read it")


@pytest.mark.parametrize("queue_full", [False, True], ids=["silent", "queue-full"])
def test_uploads_that_keep_their_places_and_silent_ones_waiting_lock_no_one_out(
        daemon, queue_full):
    """(found by attack) The 16 upload places are held by uploads that keep sending (a byte
    every 0.5 s: they hold their places, as docs/security.md says), and the 112 other
    places by `add`s waiting for an upload place that send nothing more -- their body's
    start only (`silent`), or enough that hypercorn holds what it read for the app and
    reads no more (`queue-full`).  The old daemon cut one of the silent ones for a client
    waiting to be accepted, but its `add`, waiting for a place, saw that end only once it
    had one (never), and the cut counted as a place about to free for good: no one else was
    served, `version` waited out `HANG`; one that hypercorn did not read from counted as
    held up by the daemon and was never cut.  Now cutting a connection cancels its request,
    and an upload that has waited `EVICT_AFTER` seconds for a place gives its connection's
    place up as one that brings nothing does: 16 connections that keep sending no longer
    shut everyone out."""
    from ww.serve.server import CONNECTIONS

    host, port, request, placed = _every_upload_place_taken(daemon)
    waiting: list[socket.socket] = []
    try:
        with _trickling(placed, 0.5):
            for _ in range(CONNECTIONS - len(placed)):
                sock = socket.create_connection((host, port), timeout=HANG)
                waiting.append(sock)
                if queue_full:  # one read queued, a second, and a third waits for room
                    _read_by_the_daemon(port, sock, request)
                    _read_by_the_daemon(port, sock, b"x" * 1000)
                    _read_by_the_daemon(port, sock, b"x" * 1000)
                    sock.sendall(b"x" * 1000)
                else:
                    sock.sendall(request)
            client, served = _version_once_all_taken(daemon, port)
            assert served.wait(HANG), "version was never served"
            client.join(HANG)
    finally:
        for sock in placed + waiting:
            sock.close()


@pytest.mark.parametrize("kind", ["symlink", "directory", "socket", "hard link"])
def test_a_lock_path_that_is_no_lock_file_of_the_users_own_is_refused_and_named(
        ww_home, open_place, tmp_path, kind):
    """(found by attack) `<path>.lock` is something other than a lock file of the user's
    with that one name: a symlink (to a file of the user's), a directory, a socket, or a
    hard link to a file of the user's (mode 0600: its key, say; another user who may make
    one, where `fs.protected_hardlinks` is 0, or a mistake of the user's).  The old daemon
    refused the first three with a line naming the socket's path only (`Too many levels of
    symbolic links`, `Is a directory`, `No such device or address`, as if the socket were
    at fault), and took the hard link for its lock: it held the other file locked for as
    long as it served (whoever locks that file waited) and unlinked the name when it
    stopped.  Now each is refused with one line naming `api.sock.lock`, exit 2, and left as
    it was."""
    path = open_place / "api.sock"
    lock = open_place / "api.sock.lock"
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other = tmp_path / "key"
    other.write_bytes(b"the user's own\n")
    other.chmod(0o600)
    if kind == "symlink":
        lock.symlink_to(other)
    elif kind == "directory":
        lock.mkdir()
    elif kind == "socket":
        held.bind(str(lock))
    else:
        os.link(other, lock)
    before = lock.lstat()
    try:
        line = _refused_to_start(ww_home, path, f"it served with a {kind} as its lock")
        assert line.startswith(f"ww: --api: cannot listen on /unix{path}: {lock}"), line
        after = lock.lstat()
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
        assert other.read_bytes() == b"the user's own\n"
        assert not path.exists()
    finally:
        held.close()


def _h2_never_reading(daemon: Daemon) -> socket.socket:
    """An HTTP/2 connection that asks for a page (`GET /`, the API's 404, answered on the
    event loop) and opens no flow-control window for the reply (`SETTINGS_INITIAL_WINDOW_SIZE`
    0), once the reply's head came: the body is the daemon's to send, and it never may."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=HANG)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "localhost"),
                          (":path", "/")], end_stream=True)
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(1 << 16)
        assert data, "the daemon ended the connection"
        events = conn.receive_data(data)
        sock.sendall(conn.data_to_send())  # the settings' acknowledgement
        if any(isinstance(event, h2.events.ResponseReceived) for event in events):
            return sock


def test_http2_clients_that_never_open_their_window_give_their_places_up(daemon):
    """(found by attack) Every one of the API's places (`CONNECTIONS`) is taken by an HTTP/2
    client that asks for a page and never opens its flow-control window for the reply.  The
    old daemon held each such reply for good (hypercorn waits for the window; the kernel's
    `STALL` never sees it, TCP flows) and served no one else: the client below waited out
    its `HANG`.  Now, with every place taken and a client waiting, a connection whose client
    has taken its reply at less than `MIN_SEND_RATE` for `SEND_GRACE` seconds gives its
    place up: the client is served, and one such connection is cut."""
    from ww.serve.server import CONNECTIONS

    host, port = daemon.url.removeprefix("http://").split(":")
    socks = [_h2_never_reading(daemon) for _ in range(CONNECTIONS)]
    try:
        client, served = _version_once_all_taken(daemon, int(port))
        client.join(HANG)
        assert served.is_set()
        cut = _ended(socks)  # a GOAWAY, perhaps, then the end
        assert len(cut) == 1, f"{len(cut)} connections were cut for one client"
    finally:
        for sock in socks:
            sock.close()


def test_uploads_that_trickle_faster_than_the_silence_limit_give_their_places_up(daemon):
    """(found by attack) The 16 upload places (`UPLOADS`) are held by `add`s whose client
    sends a byte of its body each second, never silent for `EVICT_AFTER` seconds.  The old
    daemon kept them placed for as long as they went on, and every other upload waited (the
    one below waited out its `HANG`); now, while an upload waits for a place, a placed one
    whose body has come at less than `MIN_SEND_RATE` for `SEND_GRACE` seconds is refused
    (a 400 naming the rate), the slowest first, one at a time: the waiting upload is
    served, and one trickling upload is refused."""
    *_, placed = _every_upload_place_taken(daemon)
    _add_served_while_trickling(daemon, placed, 1)
    cut = len(_ended(placed))  # a refused upload's reply had begun (its progress): cut short
    for sock in placed:
        sock.close()
    assert cut == 1, f"{cut} uploads were refused for one"
    _, events = daemon.stop()
    refused = [event["error"] for event in events if event["event"] == "rpc-error"]
    assert len(refused) == 1, refused
    assert "bytes/s, under" in refused[0] and "while other uploads waited" in refused[0]


def test_uploads_with_a_place_that_trickle_give_their_places_to_a_waiting_client(ww_home):
    """Every one of the API's places (`CONNECTIONS`, made `UPLOADS` here, so that uploads
    with an upload place can take them all) is held by an `add` with an upload place whose
    client sends a byte of its body each second: never silent for `EVICT_AFTER` seconds,
    and no other upload waits for a place, so none is refused for its rate.  The old daemon
    kept them for as long as they went on: `version` waited out its `HANG`.  Now, with every
    place taken and a client waiting, a connection whose request body has come at less than
    `MIN_SEND_RATE` for `SEND_GRACE` seconds gives its place up, the slowest first, one at
    a time: `version` is served, and an honest upload posted beside it is added whole."""
    from ww.serve.rpc import UPLOADS

    daemon = Daemon(ww_home, gateway="off", constants={"ww.serve.server.CONNECTIONS": UPLOADS})
    try:
        _, port, _, placed = _every_upload_place_taken(daemon)
        data = os.urandom(8 << 20)
        added: list[bytes] = []

        def honest_add() -> None:
            body, headers = multipart([("honest", "application/octet-stream", data)])
            status, _, reply = daemon.post("add", body=body, headers=headers)
            if status == 200:
                added.append(reply)

        uploader = threading.Thread(target=honest_add, daemon=True)
        try:
            with _trickling(placed, 1):
                client, served = _version_once_all_taken(daemon, port)
                uploader.start()
                assert served.wait(HANG), "version was never served"
                uploader.join(HANG)
                assert added, "the honest upload was not added"
                client.join(HANG)
        finally:
            for sock in placed:
                sock.close()
        cid = json.loads(added[0].splitlines()[-1])["Hash"]
        status, _, content = daemon.post("cat", cid)
        assert status == 200 and content == data
    finally:
        daemon.stop()



def _replies(socks: list[socket.socket]) -> list[bytes]:
    """What each of ``socks`` read until the daemon ended it (or reset it), read together."""
    got = dict.fromkeys(socks, b"")
    open_ = list(socks)
    for _ in range(HANG * 10):
        if not open_:
            break
        readable, _, _ = select.select(open_, [], [], 0.1)
        for sock in readable:
            try:
                piece = sock.recv(1 << 16)
            except OSError:
                piece = b""  # reset
            got[sock] += piece
            if not piece:
                open_.remove(sock)
    assert not open_, "the daemon never ended some of them"
    return list(got.values())


def test_a_client_just_accepted_is_not_cut_as_idle_before_its_request_is_read(ww_home):
    """(found by measuring) Every place (`CONNECTIONS`, made `UPLOADS` here) is held by an
    upload with an upload place that trickles, and 128 clients have each sent a `version`
    request and wait to be accepted.  Each is accepted once a place frees, and the daemon
    looks for the next client's place at once: the old daemon often did so before the new
    connection's read loop had had its turn to take the request its client had sent,
    counted it as idle and cut it, its client given no reply (6-11 of the 128, 4 runs; and
    an `add` cut so had its head read after the cut and waited for an upload place, its
    connection's place counted as about to free: beside 200 uploads that trickle,
    `version` waited 28-48 s, `benchmarks/trickle_places.py`).  Now a connection that has
    read nothing yet counts as idle only once waited on `FIRST_READ` seconds: every
    client is answered."""
    from ww.serve.rpc import UPLOADS

    daemon = Daemon(ww_home, gateway="off", constants={"ww.serve.server.CONNECTIONS": UPLOADS})
    try:
        host, port, _, placed = _every_upload_place_taken(daemon)
        clients = []
        try:
            with _trickling(placed, 1):
                for _ in range(128):
                    sock = socket.create_connection((host, port), timeout=HANG)
                    sock.sendall(b"POST /api/v0/version HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                    clients.append(sock)
                replies = _replies(clients)
            unanswered = sum(not reply.startswith(b"HTTP/1.1 200") for reply in replies)
            assert not unanswered, f"{unanswered} of 128 clients got no reply"
        finally:
            for sock in placed + clients:
                sock.close()
    finally:
        daemon.stop()
