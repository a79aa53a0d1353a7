"""What a request's head may make `ww daemon` hold: header fields, query fields, and HTTP/2
streams whose heads HPACK lets a client send for a few bytes each.  Real daemons, real
sockets."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import HANG

from .conftest import Daemon, multipart

MiB = 1 << 20


def _rss(daemon: Daemon) -> int:
    return _status(daemon, "VmRSS")


def _status(daemon: Daemon, field: str) -> int:
    """Bytes of the daemon's /proc status ``field`` (VmRSS: resident now; VmHWM: its peak)."""
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) << 10


def _address(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").split(":")
    return host, int(port)


def _reply(daemon: Daemon, request: bytes) -> bytes:
    """What the daemon answers ``request`` on a connection of its own, up to its end."""
    with socket.create_connection(_address(daemon), timeout=HANG) as sock:
        sock.sendall(request)
        got = b""
        for _ in range(1000):  # bounded: the replies here are a few hundred bytes
            piece = sock.recv(1 << 16)
            if not piece:
                break
            got += piece
        return got


def test_a_head_with_too_many_fields_is_refused_before_any_command(daemon):
    """A request with more than 100 header fields (a 431) or more than 1024 query fields (a
    414) is refused before the command sees it, and its connection ends: each field was a
    few Python objects held while the request was under way (one of 16,000 one-byte header
    fields held 1.8 MiB, one of 10,000 query fields 0.9 MiB, for as long as its upload
    waited; 128 connections).  The old daemon answered both.  At the bounds, served."""
    def head(fields: int, query: int) -> bytes:
        q = "&".join(f"q{i}=" for i in range(query))
        return (f"POST /api/v0/version?{q} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                + "".join(f"x{i}: \r\n" for i in range(fields - 2)) + "\r\n").encode()

    refused = _reply(daemon, head(101, 1))
    assert refused.startswith(b"HTTP/1.1 431 ") and b"more than 100 header fields" in refused
    refused = _reply(daemon, head(3, 1025))
    assert refused.startswith(b"HTTP/1.1 414 ") and b"more than 1024 query fields" in refused
    served = _reply(daemon, head(100, 1024).replace(b"HTTP/1.1\r\n",
                                                    b"HTTP/1.1\r\nConnection: close\r\n", 1)
                    .replace(b"x0: \r\n", b"", 1))
    assert served.startswith(b"HTTP/1.1 200 ") and b'"Version"' in served
    assert daemon.json("version")[0]["Version"]


def _growth_while_open(daemon: Daemon, opened: Callable[[int], socket.socket],
                       count: int) -> int:
    """How much the daemon's resident memory grows while ``count`` connections, each made
    by ``opened(i)``, are open (all closed after)."""
    start = _rss(daemon)
    socks = []
    try:
        for i in range(count):
            socks.append(opened(i))
        return _rss(daemon) - start
    finally:
        for sock in socks:
            sock.close()


def _h2_streams_held(daemon: Daemon, cookie: str) -> socket.socket:
    """An HTTP/2 connection with as many `add`s under way as the daemon lets it open, each
    head a 62 KiB cookie that HPACK sends once (16 indexed fields, combined again by the
    daemon), none sending a body; returned once the daemon has read them all (its answer to
    a PING sent after them)."""
    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(_address(daemon), timeout=HANG)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())

    def until(kind: type) -> None:
        for _ in range(1000):  # bounded: a few frames are awaited
            data = sock.recv(1 << 16)
            assert data, "the daemon ended the connection"
            events = conn.receive_data(data)
            sock.sendall(conn.data_to_send())
            if any(isinstance(event, kind) for event in events):
                return
        raise AssertionError(f"no {kind.__name__}")

    until(h2.events.RemoteSettingsChanged)  # how many streams the daemon allows
    for _ in range(min(100, conn.remote_settings.max_concurrent_streams)):
        conn.send_headers(conn.get_next_available_stream_id(), [
            (":method", "POST"), (":path", "/api/v0/add"), (":scheme", "http"),
            (":authority", "x"), ("content-type", "multipart/form-data; boundary=b"),
            *[("cookie", cookie)] * 16])
    conn.ping(b"12345678")
    sock.sendall(conn.data_to_send())
    until(h2.events.PingAckReceived)
    return sock


def test_http2_request_heads_hold_a_bounded_memory(daemon):
    """HTTP/2 (with prior knowledge, which the API and the gateway speak) multiplies what a
    head holds by the streams a connection may have under way, and HPACK lets a client send
    a 4 KiB header field again in one byte: 100 streams (hypercorn's bound) of `add`s whose
    heads were a 62 KiB cookie each cost the client a few KiB and held 8 MiB of the old
    daemon's per connection, waiting for an upload place; 128 such connections, 875 MiB
    (64 here: 530 MiB).  A connection now has at most 8 streams under way, each head at
    most 64 KiB decoded: what the 64 connections hold stays a small part of that, and once
    they end the daemon serves on."""
    warm = _h2_streams_held(daemon, "w" * 3900)  # the daemon's code for HTTP/2 loaded
    warm.close()
    grown = _growth_while_open(
        daemon, lambda i: _h2_streams_held(daemon, chr(ord("a") + i % 26) * 3900), 64)
    assert grown < 150 * MiB, f"{grown / MiB:.0f} MiB for 64 connections' heads"
    assert daemon.json("version")[0]["Version"]


def test_a_connection_kept_alive_after_a_reply_ends_once_idle(daemon):
    """hypercorn starts a connection's idle timer again once a reply is done, from inside
    the app's send of the reply's end; the RPC API cancelled that send as its request
    ended, and with it the timer's start: a connection kept alive after one command, idle
    or with half of its next request's head, was held until the client left (past the 5 s
    keep-alive timeout, and a stop's grace).  Now the daemon ends it (the client reads its
    end, no timing asserted)."""
    for rest in (b"", b"POST /api/v0/ver"):
        with socket.create_connection(_address(daemon), timeout=HANG) as sock:
            sock.sendall(b"POST /api/v0/version HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                         + rest)
            got = b""
            for _ in range(1000):  # bounded: a reply of a few hundred bytes, then the end
                piece = sock.recv(1 << 16)
                if not piece:
                    break
                got += piece
            else:
                raise AssertionError("the connection never ended")
            assert got.startswith(b"HTTP/1.1 200 ") and b'"Version"' in got


# Seconds a client waits for the end of a connection it asked to close, its reply whole: far
# past the 5 s keep-alive timeout, so one still open then is one the daemon never ends.
CLOSED_WITHIN = 60


def test_a_connection_whose_client_asked_close_ends_after_its_reply(daemon):
    """A client that asks `Connection: close` has its connection ended once its reply is
    whole, on the API and the gateway.  hypercorn closes it from inside the app's send of
    the reply's end, after putting the request's http.disconnect; the RPC API's watch (and
    Starlette's StreamingResponse, the gateway's files) cancelled that send on that
    disconnect, and the close's first checkpoint (``send_eof``, before the socket's
    ``aclose``) raised the Cancelled whenever trio ran the watch first: about half of the
    connections stayed open after their whole reply until their client left (15 to 21 of
    32 in three runs of the old daemon, 0 now).  32 requests at once, the ends waited for
    together."""
    body, headers = multipart([("f.txt", "text/plain", b"hello, closing")])
    status, _, out = daemon.post("add", body=body, headers=headers)
    assert status == 200, out
    cid = json.loads(out.splitlines()[-1])["Hash"]
    _, _, host, _, port = daemon.gateway.split("/")[:5]
    api = (_address(daemon), b"POST /api/v0/version HTTP/1.1\r\nHost: x\r\n"
           b"Connection: close\r\nContent-Length: 0\r\n\r\n", b'"Version"')
    gateway = ((host, int(port)), f"GET /ipfs/{cid} HTTP/1.1\r\nHost: x\r\n"
               "Connection: close\r\n\r\n".encode(), b"hello, closing")
    asked = [api] * 16 + [gateway] * 16
    socks = [socket.create_connection(address, timeout=HANG) for address, _, _ in asked]
    try:
        for sock, (_, request, _) in zip(socks, asked, strict=True):
            sock.sendall(request)
        deadline = time.monotonic() + CLOSED_WITHIN
        left_open = []
        for sock, (address, _, whole) in zip(socks, asked, strict=True):
            got = b""
            for _ in range(1000):  # bounded: a reply of a few hundred bytes, then the end
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    piece = sock.recv(1 << 16)
                except TimeoutError:
                    left_open.append("the API" if address == api[0] else "the gateway")
                    break
                if not piece:
                    break
                got += piece
            assert got.startswith(b"HTTP/1.1 200 ") and whole in got, got
    finally:
        for sock in socks:
            sock.close()
    assert not left_open, (
        f"{len(left_open)} of {len(asked)} connections ({left_open.count('the API')} to the "
        f"API) still open {CLOSED_WITHIN} s after their whole reply")


def _h2_connect(daemon: Daemon) -> tuple[socket.socket, Any]:
    import h2.config
    import h2.connection

    sock = socket.create_connection(_address(daemon), timeout=HANG)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _until_ping_ack(sock: socket.socket) -> list[Any]:
    """The frames the daemon sends up to its answer to our PING (or its end), as they are
    (the client's h2 would drop those on streams it reset itself)."""
    from h2.frame_buffer import FrameBuffer
    from hyperframe.frame import PingFrame

    frames = FrameBuffer()
    frames.max_frame_size = 1 << 24
    seen: list[Any] = []
    for _ in range(100_000):  # bounded: a few MiB of frames at most
        data = sock.recv(1 << 16)
        if not data:
            break
        frames.add_data(data)
        seen += list(frames)
        if any(isinstance(frame, PingFrame) and "ACK" in frame.flags for frame in seen):
            break
    return seen


def _sent_raw(daemon: Daemon, frames: bytes) -> socket.socket:
    """A connection that has sent HTTP/2's preface, an empty SETTINGS and ``frames``,
    returned once the daemon has answered a PING sent after them (or ended it)."""
    sock = socket.create_connection(_address(daemon), timeout=HANG)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
                 + frames + bytes.fromhex("000008060000000000") + b"12345678")
    _until_ping_ack(sock)
    return sock


def _opened_and_reset(conn: Any, streams: int, path: str, cookie: str,
                      end_stream: bool = False) -> bytes:
    """``streams`` requests for ``path``, each reset as soon as it is sent, then a PING."""
    out = bytearray()
    for _ in range(streams):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [
            (":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x"),
            ("content-type", "multipart/form-data; boundary=b"), *[("cookie", cookie)] * 16],
            end_stream=end_stream)
        conn.reset_stream(stream_id)
        out += conn.data_to_send()
    conn.ping(b"12345678")
    return bytes(out + conn.data_to_send())


def test_http2_streams_reset_at_once_count_until_their_requests_end(daemon):
    """h2 bounds the streams open, and one its client resets is closed at once, while its
    request goes on in the daemon (an `add` waiting for an upload place does not look at its
    client meanwhile): a client that opened streams and reset them at once ("rapid reset")
    had 1,000 requests of a connection under way, not 8 -- with the upload places taken,
    1,000 `add`s each holding a 62 KiB head, 83 MiB of the old daemon's a connection (8
    connections: 102 -> 763 MiB).  Now a stream counts until its request has ended: with 8
    under way, the next is refused (RST_STREAM, REFUSED_STREAM), its data only
    acknowledged.  The old daemon refused none."""
    import h2.errors
    from hyperframe.frame import PingFrame, RstStreamFrame

    held = [_h2_streams_held(daemon, "p" * 3900) for _ in range(2)]  # the 16 upload places
    try:
        sock, conn = _h2_connect(daemon)
        with sock:
            sock.sendall(_opened_and_reset(conn, 100, "/api/v0/add", "r" * 3900))
            frames = _until_ping_ack(sock)
            assert any(isinstance(frame, PingFrame) for frame in frames)
            refused = {frame.stream_id for frame in frames if isinstance(frame, RstStreamFrame)
                       and frame.error_code == h2.errors.ErrorCodes.REFUSED_STREAM}
            # 8 wait for a place; the rest refused (a few more may be taken in as a silent
            # upload gives its place up to one of the 8, after 5 s: not on a prompt run)
            assert len(refused) >= 60, f"{len(refused)} of 100 reset streams refused"
    finally:
        for sock in held:
            sock.close()
    assert daemon.json("version")[0]["Version"]


def _sent_at_once(daemon: Daemon, data: bytes) -> socket.socket:
    """A connection that has sent ``data`` in one corked write, room for all of it in its
    socket's buffer: loopback delivers up to 32 KiB of it as one segment, which the daemon
    takes in one read (a write of 62.7 KB came as reads of 32,741 and 29,967 bytes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(HANG)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.connect(_address(daemon))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(data)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    except BaseException:
        sock.close()
        raise
    return sock


def test_http2_request_heads_are_decoded_one_at_a_time(daemon):
    """h2 decoded every frame of a read before hypercorn took any up, each request head (a
    3.8 KiB cookie HPACK names 16 times in 16 bytes, which h2 joins into a new 61 KiB value)
    held in the list of events until hypercorn had handled them all: two connections each
    sending 700 streams opened and reset at once (43 bytes a stream, 32.6 KB, read at once)
    took the old daemon up 82 MiB at its peak (8 connections of 12,000: 98 -> 1460 MiB).
    Now h2 decodes one head, hypercorn takes it up (its app spawned, or its stream refused
    past 8 under way), then the next: what the daemon ever holds (its peak) stays a few
    MiB.  The preface goes in the same write: the frame buffer left h2's own (the fix's
    install line taken out), the daemon ends each connection once its first read is
    handled, and a preface sent alone left nothing decoded to measure."""
    import threading

    import h2.config
    import h2.connection
    from hyperframe.frame import PingFrame

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    frames = conn.data_to_send() + _opened_and_reset(conn, 700, "/api/v0/version", "c" * 3800,
                                                     end_stream=True)
    assert len(frames) <= 32_700  # one read (see _sent_at_once)
    start = _rss(daemon)
    answers: list[list[Any]] = []

    def attack() -> None:
        with _sent_at_once(daemon, frames) as sock:
            answers.append(_until_ping_ack(sock))

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for attacker in attackers:
        attacker.start()
    for attacker in attackers:
        attacker.join()
    peak = _status(daemon, "VmHWM")
    # the daemon took every head up: it answered the PING sent after them
    assert len(answers) == 2 and all(
        any(isinstance(frame, PingFrame) and "ACK" in frame.flags for frame in answer)
        for answer in answers), f"the daemon did not take the heads up: {answers}"
    assert peak - start < 25 * MiB, f"{(peak - start) / MiB:.0f} MiB more at the peak"
    assert daemon.json("version")[0]["Version"]


def test_an_http2_head_sent_in_more_bytes_than_a_head_holds_is_refused(daemon):
    """h2 buffers a head's HEADERS and CONTINUATION frames until the last (up to 64 frames
    of 16 KiB) before decoding any: 120 connections that each sent 63 of a head and nothing
    more held 1.3 MiB of the old daemon's each (98 -> 254 MiB), until they ended.  HPACK
    never needs more bytes for a head than the 64 KiB it may decode to, so a head past that
    ends its connection at once, as one that decodes to more than 64 KiB does."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    piece = b"\x00" * 16384  # what it would decode to does not matter: it is never decoded
    head = HeadersFrame(1, data=piece).serialize() + b"".join(
        ContinuationFrame(1, data=piece).serialize() for _ in range(62))
    def opened(i: int) -> socket.socket:
        sock, conn = _h2_connect(daemon)
        if i < 120:
            try:
                sock.sendall(head)
            except OSError:
                pass  # ended by the daemon
        else:  # the daemon has read what came before, as far as it reads
            conn.ping(b"12345678")
            sock.sendall(conn.data_to_send())
            _until_ping_ack(sock)
        return sock

    grown = _growth_while_open(daemon, opened, 121)
    assert grown < 60 * MiB, f"{grown / MiB:.0f} MiB for 120 connections' unfinished heads"
    assert daemon.json("version")[0]["Version"]


def test_http2_settings_the_daemon_does_not_know_are_ignored(daemon):
    """HTTP/2 has an endpoint ignore a setting it does not know (RFC 9113, 6.5.2); h2 kept
    each a client sent, a deque apiece, and looked all of them over at every SETTINGS frame
    after: a connection that sent all 65,520 unknown identifiers (393 KB) held 57 MiB of the
    old daemon's for as long as it stayed (8: 96 -> 536 MiB, and 2,000 empty SETTINGS each
    after them 20 s of CPU).  Now they are dropped as they are read."""
    import struct

    def settings(pairs: list[tuple[int, int]]) -> bytes:
        body = b"".join(struct.pack(">HI", code, value) for code, value in pairs)
        return struct.pack(">I", len(body))[1:] + b"\x04\x00\x00\x00\x00\x00" + body

    unknown = list(range(0x10, 0x10000))
    frames = (b"".join(settings([(code, 1) for code in unknown[i:i + 2700]])
                       for i in range(0, len(unknown), 2700)) + settings([]) * 100)
    grown = _growth_while_open(daemon, lambda _: _sent_raw(daemon, frames), 2)
    assert grown < 30 * MiB, f"{grown / MiB:.0f} MiB for 2 connections' settings"
    assert daemon.json("version")[0]["Version"]


def test_http2_priority_frames_and_streams_reset_by_the_hundred_leave_the_daemon_serving(daemon):
    """hypercorn put every stream a PRIORITY frame named in its priority tree, opened or not,
    never taken out, and a stream reset by its client whose request then never ended its
    reply (an `add` cancelled as its client left) stayed there too, with its reply's buffer,
    for as long as the connection lasted: the tree's 1,000th raised out of the connection
    and ended the old daemon -- 1,001 PRIORITY frames (14 KB), or 999 `add`s opened and
    reset one after the other on one connection.  Now PRIORITY signals are ignored (RFC
    9113, 5.3.2), a reset stream's buffer is dropped, and a defect in serving one
    connection ends only that connection."""
    import struct

    import h2.events

    priority = b"".join(struct.pack(">I", 5)[1:] + b"\x02\x00" + struct.pack(">IIB", 2 * i + 1,
                                                                             0, 15)
                        for i in range(1001))
    _sent_raw(daemon, priority).close()
    assert daemon.json("version")[0]["Version"]

    sock, conn = _h2_connect(daemon)
    with sock:
        for i in range(1000):  # hypercorn ends a connection after 1,000 requests
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, [
                (":method", "POST"), (":path", "/api/v0/add"), (":scheme", "http"),
                (":authority", "x"), ("content-type", "multipart/form-data; boundary=b")])
            conn.reset_stream(stream_id)
            conn.ping(b"%08d" % i)
            sock.sendall(conn.data_to_send())
            answered = []
            for _ in range(1000):  # bounded: a few frames are awaited
                data = sock.recv(1 << 16)
                answered += conn.receive_data(data) if data else [None]
                if any(isinstance(event, (h2.events.PingAckReceived,
                                          h2.events.ConnectionTerminated))
                       or event is None for event in answered):
                    break
            if not any(isinstance(event, h2.events.PingAckReceived) for event in answered):
                break  # the connection's end (GOAWAY), or the old daemon's
    assert daemon.proc.poll() is None, "the daemon ended"
    assert daemon.json("version")[0]["Version"]


# hypercorn's keep-alive timeout for the tests that wait one out (read as a site starts:
# ww.serve.server._config), and a body stall out of their reach
SHORT_KEEP_ALIVE = {"ww.serve.server.KEEP_ALIVE": 1.0, "ww.serve.rpc.BODY_STALL": 3600.0}


def _ended(sock: socket.socket, deadline: float) -> bool:
    """Whether the daemon ends the connection (its end read, or a reset) before ``deadline``
    (``time.monotonic()``), what it sends meanwhile read and dropped."""
    for _ in range(100_000):  # bounded: a few frames come before the end
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(1 << 16):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def _h2_answered(sock: socket.socket, conn: Any, events: tuple[type, ...]) -> list[Any]:
    """The h2 events the daemon's frames make, read up to one of ``events`` (or its end:
    None last)."""
    got: list[Any] = []
    for _ in range(1000):  # bounded: a few frames are awaited
        data = sock.recv(1 << 16)
        got += conn.receive_data(data) if data else [None]
        sock.sendall(conn.data_to_send())
        if data == b"" or any(isinstance(event, events) for event in got):
            break
    return got


def _h2_version_answered(daemon: Daemon) -> tuple[socket.socket, Any]:
    """An HTTP/2 connection whose one request, a `version`, has been answered whole."""
    import h2.events

    sock, conn = _h2_connect(daemon)
    try:
        conn.send_headers(1, [(":method", "POST"), (":path", "/api/v0/version"),
                              (":scheme", "http"), (":authority", "x")], end_stream=True)
        sock.sendall(conn.data_to_send())
        assert any(isinstance(event, h2.events.StreamEnded) for event in
                   _h2_answered(sock, conn, (h2.events.StreamEnded,)))
    except BaseException:
        sock.close()
        raise
    return sock, conn


def test_an_http2_connection_with_no_stream_open_ends_once_idle(ww_home):
    """An HTTP/2 connection with no stream open is idle, ended after the keep-alive timeout
    as an idle HTTP/1.1 one is: one that sent its preface (and SETTINGS, and a PING, which
    the daemon answered) and nothing more, one whose only stream its client reset, one
    whose request was answered.  hypercorn stopped the idle timer on the preface and started
    it again only as a stream's app ended: the first two were never ended by the old daemon
    (open after 40 s with a 5 s keep-alive, PINGs answered), whatever the keep-alive.  One
    with a request under way (an `add` whose body is to come) is not idle: it still answers
    a PING once the others, opened after it, have ended.  The end is waited for, no timing
    asserted."""
    import h2.events

    daemon = Daemon(ww_home, gateway="off", constants=SHORT_KEEP_ALIVE)
    socks: list[socket.socket] = []
    try:
        busy, busy_conn = _h2_connect(daemon)
        socks.append(busy)
        busy_conn.send_headers(1, [(":method", "POST"), (":path", "/api/v0/add"),
                                   (":scheme", "http"), (":authority", "x"),
                                   ("content-type", "multipart/form-data; boundary=b")])
        busy_conn.send_data(1, b"--b\r\nContent-Disposition: form-data; name=\"file\"; "
                               b"filename=\"f\"\r\n\r\nthe rest is to come")
        busy_conn.ping(b"12345678")
        busy.sendall(busy_conn.data_to_send())
        assert any(isinstance(event, h2.events.PingAckReceived) for event in
                   _h2_answered(busy, busy_conn, (h2.events.PingAckReceived,)))

        preface = _sent_raw(daemon, b"")  # preface, SETTINGS, a PING answered
        socks.append(preface)
        reset, conn = _h2_connect(daemon)
        socks.append(reset)
        reset.sendall(_opened_and_reset(conn, 1, "/api/v0/version", "c"))
        assert _until_ping_ack(reset)
        done, _ = _h2_version_answered(daemon)
        socks.append(done)

        deadline = time.monotonic() + HANG
        left_open = [name for name, sock in (("preface only", preface), ("its stream reset",
                                                                         reset),
                                             ("its request answered", done))
                     if not _ended(sock, deadline)]
        assert not left_open, f"still open after {HANG} s: {left_open}"
        busy_conn.ping(b"87654321")
        busy.sendall(busy_conn.data_to_send())
        assert any(isinstance(event, h2.events.PingAckReceived) for event in
                   _h2_answered(busy, busy_conn, (h2.events.PingAckReceived,))), \
            "a connection with a request under way was ended as idle"
    finally:
        for sock in socks:
            sock.close()
        if daemon.proc.poll() is None:
            daemon.stop()


def test_an_http2_client_that_only_pings_is_ended_once_idle(ww_home):
    """A PING is not a request: a connection with no stream open that keeps sending PINGs
    (a PING answered, the next 50 ms after) is ended after the keep-alive timeout all the
    same, as Go's HTTP/2 server (kubo's) ends it after its IdleTimeout: from its preface,
    or once its last stream has closed.  The old daemon answered the first such client's
    PINGs for as long as it sent them (40 s with a 5 s keep-alive)."""
    import h2.events

    daemon = Daemon(ww_home, gateway="off", constants=SHORT_KEEP_ALIVE)
    clients: list[tuple[socket.socket, Any]] = []
    try:
        clients.append(_h2_connect(daemon))  # pings from its preface on
        clients.append(_h2_version_answered(daemon))  # pings once its request is answered

        deadline = time.monotonic() + HANG
        open_ = list(range(len(clients)))
        pings = 0
        while open_ and time.monotonic() < deadline:
            for i in list(open_):
                sock, conn = clients[i]
                conn.ping(b"%08d" % pings)
                pings += 1
                try:
                    sock.sendall(conn.data_to_send())
                    got = _h2_answered(sock, conn, (h2.events.PingAckReceived,))
                except (BrokenPipeError, ConnectionResetError):
                    got = [None]
                if None in got or any(isinstance(event, h2.events.ConnectionTerminated)
                                      for event in got):
                    open_.remove(i)
            time.sleep(0.05)  # the client's pace, not a wait for the daemon
        assert not open_, f"{len(open_)} pinging connections still open after {HANG} s"
    finally:
        for sock, _ in clients:
            sock.close()
        if daemon.proc.poll() is None:
            daemon.stop()


def test_a_stop_ends_http2_connections_with_no_stream_open_at_once(ww_home):
    """A stop ends idle connections at once, those that sent an HTTP/2 preface and nothing
    more too: with three open, the old daemon stopped only once the grace was over (10 s;
    here the grace and the keep-alive timeout are out of reach, so it never stopped).  The
    daemon's stop is waited for, no timing asserted."""
    daemon = Daemon(ww_home, gateway="off", constants={"ww.serve.server.KEEP_ALIVE": 3600.0,
                                                       "ww.serve.server.GRACE": 3600.0})
    socks = []
    try:
        socks = [_sent_raw(daemon, b"") for _ in range(3)]  # each answered a PING
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not stop within {HANG} s of SIGTERM") from None
        status, _ = daemon.stop()
        assert status == 0
        assert all(_ended(sock, time.monotonic() + HANG) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
