"""`ww run --inbound calls`: connections from libp2p peers that are not ww (they propose
``/noise``, as go-libp2p does) served by ww's native connection while the cell exports
something: `/ww/0.1.0` and ping, nothing else; and `--inbound full` (the default), where
py-libp2p serves them with everything the host has.

Real parts: a real `ww run --with-p2p` host with a jailed Python cell that exports, on
127.0.0.1; the dialer is ww's own C connection proposing ``/noise`` alone (its first write
is :data:`ww.core.addrs.NOISE_PROPOSAL`, byte for byte what go-libp2p sends first), a raw
socket for the simultaneous-open proposal.  What tells the two apart is a protocol only
py-libp2p serves: identify (``/ipfs/id/1.0.0``) is agreed on a connection py-libp2p holds,
refused (``na``) on a native one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import capnp
import pytest

from tests.conftest import HANG, run_ww
from tests.ipfs.kubo_peer import _Lines
from tests.p2p.conftest import LOOPBACK
from tests.p2p.test_lane_door import _read
from ww.core.addrs import NOISE_PROPOSAL, SIMOPEN_PROPOSAL
from ww.core.identity import PrivateKey
from ww.p2p import lane
from ww.schema import load

_cell = load("cell")
ROOT = Path(__file__).resolve().parents[2]
IDENTIFY = "/ipfs/id/1.0.0"


def run(main: Any) -> Any:
    return asyncio.run(capnp.run(asyncio.wait_for(main(), HANG)))


async def _agreed(stream: lane.LaneStream) -> bool:
    """Whether the peer agreed ``stream``'s protocol (False: it answered ``na``)."""
    try:
        async with asyncio.timeout(HANG):
            await stream.negotiated
    except ConnectionError:
        return False
    return True


async def _call_and_probe(addr: str) -> tuple[str, bool, bool]:
    """Dial ``addr`` proposing ``/noise`` alone, call the export's ``echo``, and open an
    identify stream: (the answer, whether the connection is a ww lane, identify agreed)."""
    conn = await lane.dial(addr, PrivateKey.generate().seed, timeout=HANG, lane=False)
    try:
        client = capnp.TwoPartyClient(await conn.open_ww(HANG))
        gateway = client.bootstrap().cast_as(_cell.Gateway)
        service = (await gateway.service()).service.as_interface(_cell.Service)
        answer = (await service.call("echo", ["over", "noise"])).result
        identify = await _agreed(conn.open(IDENTIFY))
        return answer, conn.lane, identify
    finally:
        conn.close()


@pytest.mark.parametrize("inbound, served_by_py_libp2p", [
    ((), True), (("--inbound", "full"), True), (("--inbound", "calls"), False)])
def test_a_noise_peer_s_calls_are_served_natively_only_with_inbound_calls(
        start_host, cell_file, inbound, served_by_py_libp2p) -> None:
    from tests.p2p.conftest import EXPORTER

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, *inbound,
                   cell_file(EXPORTER, "exporter.py"))
    answer, is_lane, identify = run(lambda: _call_and_probe(b.addr))
    # the call reaches the jailed cell either way; a /noise dialer never gets the ww lane
    assert (answer, is_lane) == ("over noise", False)
    assert identify is served_by_py_libp2p
    assert b.stop()[0] == 0


def test_a_first_write_that_arrives_in_two_pieces_still_goes_native(start_host,
                                                                     cell_file) -> None:
    """A dialer's header and ``/noise`` arriving apart (js-libp2p writes them in two sends)
    are given ``PROPOSAL_WAIT`` to come whole: here a relay between ww's C dialer and the
    host holds the proposal back a moment after the header.  Before, the door decided on the
    header alone and py-libp2p took the connection (identify agreed)."""
    from tests.p2p.conftest import EXPORTER

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound", "calls",
                   cell_file(EXPORTER, "exporter.py"))
    port = int(b.addr.split("/tcp/")[1].split("/")[0])
    relay = socket.create_server(("127.0.0.1", 0))
    relayed = b.addr.replace(f"/tcp/{port}/", f"/tcp/{relay.getsockname()[1]}/")

    def carry() -> None:
        inbound, _ = relay.accept()
        outbound = socket.create_connection(("127.0.0.1", port))
        for s in (inbound, outbound):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = _read(inbound, len(NOISE_PROPOSAL))
        outbound.sendall(first[:20])  # the header alone ...
        time.sleep(0.05)  # ... the proposal a moment later: the split this test is about
        outbound.sendall(first[20:])

        def pipe(a: socket.socket, z: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := a.recv(65536):
                    z.sendall(data)
            with contextlib.suppress(OSError):
                z.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pipe, args=(outbound, inbound), daemon=True)
        t.start()
        pipe(inbound, outbound)
        t.join(HANG)
        inbound.close()
        outbound.close()

    thread = threading.Thread(target=carry, daemon=True)
    thread.start()
    try:
        answer, is_lane, identify = run(lambda: _call_and_probe(relayed))
    finally:
        relay.close()
        thread.join(HANG)
    assert (answer, is_lane, identify) == ("over noise", False, False)
    assert b.stop()[0] == 0


def test_a_py_libp2p_dialer_still_reaches_a_calls_host_through_py_libp2p(
        start_host, cell_file, header_alone, peer) -> None:
    """py-libp2p's own dialer (not ww's: ``header_alone``) sends multistream's header alone
    and waits for ours: the door gives it ``PROPOSAL_WAIT`` to say more, then py-libp2p
    takes the connection as before, and the call goes through."""
    from tests.p2p.conftest import EXPORTER

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound", "calls",
                   cell_file(EXPORTER, "exporter.py"))

    async def call() -> str:
        sock = await asyncio.wrap_future(peer.open(b.addr))
        client = capnp.TwoPartyClient(await capnp.AsyncIoStream.create_connection(sock=sock))
        try:
            gateway = client.bootstrap().cast_as(_cell.Gateway)
            service = (await gateway.service()).service.as_interface(_cell.Service)
            return str((await service.call("echo", ["py", "libp2p"])).result)
        finally:
            client.close()
            sock.close()

    assert run(call) == "py libp2p"
    assert b.stop()[0] == 0


def test_a_simultaneous_open_proposal_is_answered_na_then_noise_natively(
        start_host, cell_file) -> None:
    """go-libp2p's dialers that offer simultaneous open send :data:`SIMOPEN_PROPOSAL` first;
    with `--inbound calls` the native connection answers it ``na`` and agrees ``/noise``
    next, as py-libp2p does."""
    from tests.p2p.conftest import EXPORTER

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound", "calls",
                   cell_file(EXPORTER, "exporter.py"))
    port = int(b.addr.split("/tcp/")[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as sock:
        sock.sendall(SIMOPEN_PROPOSAL)
        header = NOISE_PROPOSAL[:20]
        assert _read(sock, len(header) + 4) == header + b"\x03na\n"
        sock.sendall(NOISE_PROPOSAL[20:])
        assert _read(sock, 8) == NOISE_PROPOSAL[20:]
    assert b.stop()[0] == 0


@pytest.mark.parametrize("args, line", [
    (["--inbound", "calls"], "ww: --inbound calls is how remote peers reach what the cell "
                             "exports: it needs the p2p capability (--with-p2p)"),
    (["--inbound", "some"], None),
])
def test_inbound_refuses_a_bad_value_and_a_missing_p2p_capability(args, line) -> None:
    r = run_ww("run", *args, "true", timeout=HANG)
    assert r.returncode == 2, r.stderr
    if line is not None:
        assert r.stderr.splitlines() == [line]
    else:
        assert "--inbound" in r.stderr and "'some' is not one of 'full', 'calls'" in r.stderr


# --- a js-libp2p peer nobody here wrote ------------------------------------------------------

JS = Path(__file__).resolve().parents[1] / "ipfs" / "js_helia"

CLIENT = """
import asyncio, json, socket, sys
import capnp
from ww.schema import load
cell = load("cell")

async def main():
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    client = capnp.TwoPartyClient(await capnp.AsyncIoStream.create_connection(sock=sock))
    gateway = client.bootstrap().cast_as(cell.Gateway)
    service = (await gateway.service()).service.as_interface(cell.Service)
    answers = [(await service.call("echo", ["from", "js", str(i)])).result for i in range(3)]
    many = await asyncio.gather(*(service.call("echo", [str(i)]) for i in range(64)))
    print(json.dumps({"answers": answers, "many": [m.result for m in many]}))

asyncio.run(capnp.run(main()))
"""


@pytest.fixture
def js_peer(tmp_path: Path) -> Iterator[Callable[[str, str], tuple[_Lines, dict]]]:
    """``start(key_type, addr)``: tests/ipfs/js_helia/ww_forward.mjs, a js-libp2p peer with
    an identity of ``key_type`` carrying local connections to ``addr`` on `/ww/0.1.0`."""
    if not shutil.which("node") or not (JS / "node_modules" / "libp2p").is_dir():
        pytest.skip("js-libp2p is not installed: run ./dev test (it runs npm ci)")
    started: list[_Lines] = []
    logs: list[Any] = []

    def start(key_type: str, addr: str) -> tuple[_Lines, dict]:
        stderr = open(tmp_path / f"js-{len(logs)}.stderr", "w")
        logs.append(stderr)
        proc = subprocess.Popen(["node", "--import", "./node20.mjs", "ww_forward.mjs", key_type,
                                 addr], cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, text=True)
        lines = _Lines(proc, "js-libp2p peer")
        started.append(lines)
        ready = lines.ready(HANG)
        assert ready.get("ready"), ready
        return lines, ready

    yield start
    for lines in started:
        lines.close()
    for f in logs:
        f.close()


@pytest.mark.parametrize("inbound, key_type", [
    ("calls", "Ed25519"), ("calls", "RSA"), ("calls", "secp256k1"), ("full", "Ed25519")])
def test_a_js_libp2p_peer_calls_a_cell(start_host, cell_file, js_peer, inbound,
                                       key_type) -> None:
    """js-libp2p dials with its own first write (multistream's header and ``/noise``), its
    own Noise (identities of each kind js-libp2p makes: RSA and secp256k1 are checked by
    the host after the C handshake) and its own Yamux; three calls one by one and 64 at
    once reach the jailed cell.  With `--inbound calls` identify is refused (the native
    connection), with `full` py-libp2p answers it.  (js-libp2p 3 makes no ECDSA peer id:
    ``UnsupportedKeyTypeError``; py-libp2p 0.8.1 reads no ECDSA key either.)"""
    from tests.p2p.conftest import EXPORTER

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound", inbound,
                   cell_file(EXPORTER, "exporter.py"))
    peer, ready = js_peer(key_type, b.addr)
    r = subprocess.run([sys.executable, "-c", CLIENT, str(ready["port"])], capture_output=True,
                       text=True, timeout=HANG, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout) == {"answers": [f"from js {i}" for i in range(3)],
                                    "many": [str(i) for i in range(64)]}
    # what the js peer's store knows the host serves: with calls, only the protocol it
    # agreed itself (identify refused); with full, what identify told, identify among them
    if inbound == "calls":
        assert peer.call("protocols", timeout=HANG)["protocols"] == ["/ww/0.1.0"]
    else:
        deadline = time.monotonic() + HANG
        while IDENTIFY not in peer.call("protocols", timeout=HANG)["protocols"]:
            assert time.monotonic() < deadline, "identify never told the js peer"
            time.sleep(0.05)  # a poll: js-libp2p tells nothing when identify ends
    assert b.stop()[0] == 0


# --- identities the C takes unchecked, checked by the host: attacked ---------------------


@pytest.fixture
def calls_host(start_host, cell_file) -> Any:
    from tests.p2p.conftest import EXPORTER

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound", "calls",
                   cell_file(EXPORTER, "exporter.py"))
    b.port = int(b.addr.split("/tcp/")[1].split("/")[0])
    yield b
    assert b.stop()[0] == 0


def _attempt(port: int, identity: Any, proposal: bytes = NOISE_PROPOSAL,
             **spoil: bytes) -> bool:
    """Whether a `/noise` dialer with ``identity`` (its payload spoiled by ``spoil``) gets a
    connection that answers a Yamux ping (False: the host ended it, in or after the
    handshake); ``proposal``: its first write (ww's lane proposal, say)."""
    from tests.p2p.noise_dialer import NoiseDialer

    dialer = NoiseDialer(port, HANG, proposal)
    try:
        try:
            dialer.handshake(identity, **spoil)
        except (ConnectionError, OSError):
            return False
        return dialer.ping()
    finally:
        dialer.close()


@pytest.mark.parametrize("kind", ["rsa", "secp256k1", "ed25519"])
def test_an_honest_identity_of_each_kind_gets_its_connection(calls_host, kind) -> None:
    from tests.p2p.noise_dialer import Identity

    assert _attempt(calls_host.port, getattr(Identity, kind)())


@pytest.mark.parametrize("kind", ["rsa", "secp256k1", "ed25519"])
def test_a_signature_that_does_not_verify_ends_the_connection(calls_host, kind) -> None:
    """The signature of another static key (or of nothing) is refused: for RSA and
    secp256k1 by the host's check after the C handshake, before any stream is read."""
    from tests.p2p.noise_dialer import Identity

    identity = getattr(Identity, kind)()
    wrong = identity.sign(b"noise-libp2p-static-key:" + bytes(32))
    assert not _attempt(calls_host.port, identity, signature=wrong)
    assert not _attempt(calls_host.port, identity, signature=b"\x01")
    assert _attempt(calls_host.port, identity)  # and the host serves on


@pytest.mark.parametrize("spoiled", ["too_long_a_key", "too_long_a_signature",
                                     "ecdsa", "unknown_type", "garbage_key", "empty_sig"])
def test_identities_the_host_cannot_check_are_refused(calls_host, spoiled) -> None:
    from tests.p2p.noise_dialer import Identity, public_key_message

    rsa = Identity.rsa()
    spoil = {
        "too_long_a_key": {"key": public_key_message(0, bytes(1200))},
        "too_long_a_signature": {"signature": bytes(1025)},
        "ecdsa": {"key": public_key_message(3, bytes(91))},
        "unknown_type": {"key": public_key_message(9, bytes(32))},
        "garbage_key": {"key": public_key_message(0, b"\x30\x82" + bytes(200))},
        "empty_sig": {"signature": b""},
    }[spoiled]
    assert not _attempt(calls_host.port, rsa, **spoil)
    assert _attempt(calls_host.port, rsa)


@pytest.mark.parametrize("inbound", ["calls", "full"])
@pytest.mark.parametrize("bits, exponent_bits", [(4096, 4000), (2048, 40), (1024, 0)])
def test_an_rsa_key_outside_go_libp2ps_bounds_is_refused_on_either_path(
        start_host, cell_file, inbound, bits, exponent_bits) -> None:
    """An RSA key whose public exponent is long makes its signature costly to check (17 ms
    a handshake with 4000 bits, 0.15 ms with 65537, on the cell's loop or py-libp2p's
    thread); one under 2048 bits is one go-libp2p refuses.  Both paths refuse them, before
    checking anything with them; an honest RSA peer is served."""
    from tests.p2p.conftest import EXPORTER
    from tests.p2p.noise_dialer import Identity

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound", inbound,
                   cell_file(EXPORTER, "exporter.py"))
    port = int(b.addr.split("/tcp/")[1].split("/")[0])
    assert not _attempt(port, Identity.rsa(bits, exponent_bits))
    assert _attempt(port, Identity.rsa())
    assert b.stop()[0] == 0


@pytest.mark.parametrize("inbound", ["calls", "full"])
def test_an_rsa_key_go_libp2p_does_not_read_is_no_identity_on_either_path(
        start_host, cell_file, inbound) -> None:
    """go-libp2p reads an RSA identity as a PKIX public key only, its rsaEncryption with
    NULL parameters (Go's ``x509.ParsePKIXPublicKey``); pycryptodome's reader, py-libp2p's,
    takes a private key (PKCS#1, PKCS#8) too, and the host served a peer whose identity was
    its private key's encoding; and the host took a bare PKCS#1 public key, or PKIX without
    the NULL (or with a NULL holding content, which pycryptodome's DerNull reads): one key,
    another peer id than go-libp2p's.  Refused on both paths."""
    from tests.p2p.conftest import EXPORTER
    from tests.p2p.noise_dialer import Identity

    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound", inbound,
                   cell_file(EXPORTER, "exporter.py"))
    port = int(b.addr.split("/tcp/")[1].split("/")[0])
    for refused in (Identity.rsa_private_encoded(), Identity.rsa_pkcs1(),
                    Identity.rsa_pkcs1(null_params=False),
                    Identity.rsa_pkcs1(null_params=b"\x05\x01\x00")):
        assert not _attempt(port, refused)
    assert _attempt(port, Identity.rsa())
    assert b.stop()[0] == 0


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("inbound, kind, bits, attempts", [
    ("calls", "private", 4150, 20), ("full", "private", 16000, 1),
    ("calls", "dh", 4150, 20), ("full", "dh", 16000, 1), ("full", "long", 480000, 1),
    ("lane", "private", 4150, 20)])
def test_an_rsa_key_that_is_no_rsa_public_key_costs_the_host_nothing(
        start_host, cell_file, inbound, kind, bits, attempts) -> None:
    """An "RSA key" that py-libp2p's reader checked at length before any bound was looked
    at, whatever the signature: a PKCS#1 private key whose p is a big odd number with no
    small factor (pycryptodome runs Miller-Rabin on p), or an X9.42 Diffie-Hellman key
    (pycryptodome refuses it, and py-libp2p gives it to `cryptography`, whose OpenSSL checks
    its parameters), or a public key whose modulus has 480000 bits (60 KB: pycryptodome
    decodes an INTEGER in quadratic time, before it looks at the key's size; py-libp2p's
    Noise takes 64 KiB).  Measured (/proc/PID/stat of the host): 41 ms (private) and 29 ms (DH)
    of the cell's loop a handshake on the native path (4150 bits: within the C's 1100
    bytes), 1.8 s and 3.1 s of py-libp2p's thread on py-libp2p's (16000 bits), and 9.2 s
    (the long modulus), as often as a stranger likes.  ``lane``: a default host
    (``--inbound full``) whose cell exports, dialed with ww's lane proposal, which takes RSA
    and secp256k1 identities as ``/noise`` does with ``--inbound calls``: 40 ms of the
    cell's loop a handshake.  Now refused as decoded: 2.5 ms a handshake, all of it
    included."""
    from tests.p2p.conftest import EXPORTER
    from tests.p2p.noise_dialer import Identity
    from ww.core.addrs import LANE_PROPOSAL

    proposal = LANE_PROPOSAL if inbound == "lane" else NOISE_PROPOSAL
    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, "--inbound",
                   "full" if inbound == "lane" else inbound, cell_file(EXPORTER, "exporter.py"))
    port = int(b.addr.split("/tcp/")[1].split("/")[0])
    costly = Identity.rsa_costly(bits, kind)
    assert _attempt(port, Identity.rsa(), proposal)  # warmed up: imports done
    before = _cpu_seconds(b.proc.pid)
    for _ in range(attempts):
        assert not _attempt(port, costly, proposal)
    spent = _cpu_seconds(b.proc.pid) - before
    assert spent < 0.01 * attempts + 0.2, f"{spent:.2f} s of the host's CPU"
    assert _attempt(port, Identity.rsa(), proposal)
    assert b.stop()[0] == 0


def test_a_signed_peer_record_s_rsa_key_is_read_as_a_handshake_s() -> None:
    """An identify push (any py-libp2p peer's, once connected) carries a signed peer record
    whose key py-libp2p reads with ``RSAPublicKey.from_bytes`` itself, not through the
    deserializer table: a PKCS#1 private key there was taken, and one whose p has 16,000
    bits cost 1.8 s of CPU before.  Read as the handshake reads it: refused at once."""
    from libp2p.crypto.exceptions import CryptographyError
    from libp2p.peer.envelope import pub_key_from_protobuf
    from libp2p.peer.pb import crypto_pb2

    from tests.p2p.noise_dialer import Identity
    from ww.p2p.host import _bound_rsa_keys

    _bound_rsa_keys()

    def read(identity: Identity) -> Any:
        message = crypto_pb2.PublicKey()
        message.ParseFromString(identity.key)
        return pub_key_from_protobuf(message)

    read(Identity.rsa())  # an honest key is read
    with pytest.raises(CryptographyError):
        read(Identity.rsa_private_encoded())
    for kind in ("private", "dh"):
        costly = Identity.rsa_costly(16000, kind)
        before = time.process_time()
        with pytest.raises(CryptographyError):
            read(costly)
        assert time.process_time() - before < 0.2, kind
