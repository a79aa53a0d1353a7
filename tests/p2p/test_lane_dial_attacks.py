"""Attacks on the dialing side of the native lane (issue 14): what a cell's `P2P.dial` (and
the remote servers it dials) can make its host do.  Real `ww run` hosts and cells, real
sockets on 127.0.0.1, real py-libp2p at the far end where one is named."""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import subprocess
import sys
import threading

from tests.conftest import HANG
from tests.p2p.conftest import LOOPBACK
from ww.core.addrs import PROTOCOL_ID
from ww.core.identity import PrivateKey
from ww.p2p import lane
from ww.p2p.lane import DIAL_TIMEOUT
from ww.p2p.protocol import MAX_DIALED, MAX_DIALING

ALLOW = ("--allow-dial", "127.0.0.0/8")

# Dials argv[1] argv[2] times at once; says how many failed, then calls each one it got.
BURST = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        n = int(sys.argv[2])
        got = await asyncio.gather(*(s.p2p.dial_service(sys.argv[1]) for _ in range(n)),
                                   return_exceptions=True)
        bad = [str(g) for g in got if isinstance(g, BaseException)]
        print("failed", len(bad), bad[:1], flush=True)
        ok = [g for g in got if not isinstance(g, BaseException)]
        res = await asyncio.gather(*(g.call("echo", "x") for g in ok), return_exceptions=True)
        print("calls", sum(1 for r in res if r == "x"), "of", len(ok), flush=True)

asyncio.run(main())
"""


def test_concurrent_dials_of_one_address_share_one_connection(exporter, start_host, cell_file):
    """A cell dialing one address many times at once gets one connection, shared: each dial
    used to open its own `/ww/0.1.0` stream, the last one made replacing the others in the
    Dialer (which kept nothing of them), and the remote host's per-peer bound
    (MAX_INBOUND_PER_PEER, 8) closed the ninth and later: those dials failed, saying the
    peer "serves nothing"."""
    b = exporter()
    a = start_host(
        "a", "--with-p2p", "--listen", LOOPBACK, *ALLOW, cell_file(BURST, "burst.py"), b.addr, "12"
    )
    assert a.addr == "failed 0 []"
    assert a.readline() == "calls 12 of 12"
    status, err = a.stop()
    assert status == 0, err


# Exports nothing; prints every address it listens on, on one line; runs until stdin closes.
SILENT_HOST = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        peer, addrs = await s.p2p.id()
        print(" ".join(addrs), flush=True)
        await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""

# Waits for a line, dials each address of argv[1] in turn (each fails), says how many failed,
# how many because the peer serves nothing, and the first other reason (or ""), waits.
SERIAL = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        whys = []
        for addr in sys.argv[1].split():
            try:
                await s.p2p.dial_service(addr)
            except ww.cell.RemoteError as e:
                whys.append(str(e))
        print("failed", len(whys), flush=True)
        print(sum("serves nothing on /ww/0.1.0" in why for why in whys), flush=True)
        print(next((why for why in whys if "serves nothing" not in why), ""), flush=True)
        print((await s.p2p.id())[0][:4], flush=True)
        await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""


def sockets(pid: int) -> int:
    """The sockets process ``pid`` holds open."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return n


def test_a_failed_dial_keeps_no_connection(start_host, cell_file):
    """Each dial that fails after the lane connection is made (the peer serves nothing on
    `/ww/0.1.0`, or its Gateway fails) left that connection open in the Dialer, outside
    MAX_DIALED's bound: a cell dialing many addresses (ports, hosts) of peers that refuse
    held one socket per address in its host, without end."""
    k = MAX_DIALED + 4
    listen = [a for i in range(k) for a in ("--listen", f"/ip4/127.0.0.{i + 1}/tcp/0")]
    target = start_host("t", "--with-p2p", *listen, cell_file(SILENT_HOST, "silent.py"))
    addrs = target.addr.split()
    assert len(addrs) == k
    a = start_host(
        "a",
        "--with-p2p",
        "--listen",
        LOOPBACK,
        *ALLOW,
        cell_file(SERIAL, "serial.py"),
        " ".join(addrs),
    )
    assert a.addr == "ready"
    before = sockets(a.proc.pid)
    a.proc.stdin.write("go\n")
    a.proc.stdin.flush()
    assert a.readline() == f"failed {k}"
    assert a.readline() == str(k), a.readline()  # every one because the peer serves nothing
    assert a.readline() == ""
    assert a.readline() == "12D3"  # the session goes on
    assert sockets(a.proc.pid) <= before + 2  # (slack: nothing of the dials)
    status, err = a.stop()
    assert status == 0, err
    assert "Traceback" not in err



def test_a_peer_that_connects_again_and_again_is_never_refused(start_host, cell_file):
    """One peer id connecting to a host serially, each connection closed before the next,
    must find every one served.  py-libp2p's resource manager held each peer id to 10 new
    connections a second after a burst of 50, closing the rest right after their handshake:
    a cell dialing a host's 68 addresses (the test above) saw its last dial fail as
    "cannot reach ... (connection closed)" whenever its dials came faster than that.  Per
    peer id it bounds nothing (a peer id is a new key); admission bounds the connections
    held, per address and in all."""
    target = start_host("t", "--with-p2p", "--listen", LOOPBACK,
                        cell_file(SILENT_HOST, "silent.py"))
    addr = target.addr.split()[0]
    n = 200  # past the burst and anything refilled at 10 a second, however slow the dials

    async def main() -> dict[str, int]:
        seed = PrivateKey.generate().seed
        why: dict[str, int] = {}
        for _ in range(n):
            conn = await lane.dial(addr, seed)
            try:  # (py-libp2p agrees, then drops the stream: the cell exports nothing)
                await conn.open(PROTOCOL_ID).negotiated
                answer = "agreed"
            except ConnectionError as e:  # the connection was cut: "stream reset"
                answer = str(e)
            finally:
                conn.close()
            why[answer] = why.get(answer, 0) + 1
        return why

    assert asyncio.run(main()) == {"agreed": n}
    status, err = target.stop()
    assert status == 0, err

class SilentListener:
    """Accepts on 127.0.0.1, never writes; counts the connections open at once (exactly:
    one thread, each accept and each end seen as it happens)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self._stop = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self._stop[0], selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj is self._stop[0]:
                    for k in list(sel.get_map().values()):
                        k.fileobj.close()
                    return
                if key.fileobj is self.sock:
                    conn, _ = self.sock.accept()
                    sel.register(conn, selectors.EVENT_READ)
                    self.accepted += 1
                    self.open += 1
                    self.peak = max(self.peak, self.open)
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self.open -= 1

    def close(self) -> None:
        self._stop[1].send(b"x")
        self._thread.join(HANG)


# Dials every address of argv[1] at once; says how they failed; the session goes on.
FLOOD = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        got = await asyncio.gather(*(s.p2p.dial_service(a) for a in sys.argv[1].split()),
                                   return_exceptions=True)
        print(sorted({str(g).rsplit(": ", 1)[-1] for g in got}), flush=True)
        print((await s.p2p.id())[0][:4], flush=True)

asyncio.run(main())
"""


def test_a_cell_cannot_make_its_host_dial_without_bound(start_host, cell_file):
    """A cell's dials at once to many peers that never answer: the lane dialed each at once,
    one socket each (2000 dials held 2000 sockets for DIAL_TIMEOUT: with the usual 1024
    open files a process may hold, the host ran out, its other sockets with it, and the
    dials failed "internal error in the host (OSError)").  At most MAX_DIALING are dialed
    at once; the others wait their turn (here one waits: two rounds of DIAL_TIMEOUT)."""
    listener = SilentListener()
    try:
        n = MAX_DIALING + 1
        addrs = [
            f"/ip4/127.0.0.1/tcp/{listener.port}/p2p/{PrivateKey.generate().peer_id}"
            for _ in range(n)
        ]
        a = start_host(
            "a",
            "--with-p2p",
            "--listen",
            LOOPBACK,
            *ALLOW,
            cell_file(FLOOD, "flood.py"),
            " ".join(addrs),
        )
        assert a.addr == "['no answer within 10 s']"
        assert a.readline() == "12D3"
        status, err = a.stop()
        assert status == 0, err
        assert listener.accepted == n
        assert listener.peak <= MAX_DIALING
    finally:
        listener.close()


# A lane listener that agrees to `/ww/0.1.0` and then never answers: prints its address.
MUTE_SERVER = """
import asyncio, socket
import capnp
from ww.core.identity import PrivateKey
from ww.p2p import lane

class Ticket:  # admission's ticket, stood in for: this listener is the test's own
    streams = 0
    def handshaken(self): pass
    def ended(self): pass
    def on_close(self, callback): pass

async def main():
    seed = PrivateKey.generate().seed
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    print(f"/ip4/127.0.0.1/tcp/{srv.getsockname()[1]}/p2p/{PrivateKey(seed).peer_id}",
          flush=True)
    held = []
    loop = asyncio.get_running_loop()
    while True:
        sock, (ip, _) = await loop.sock_accept(srv)
        on_ww = lambda stream, peer: held.append(stream)  # never answered
        held.append(asyncio.ensure_future(lane.serve(sock, seed, ip, Ticket(), on_ww)))

asyncio.run(capnp.run(main()))
"""

# Dials argv[1] (bounded by argv[2] seconds, a stop against a hang only), says what came.
ONE_DIAL = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        try:
            await asyncio.wait_for(s.p2p.dial_service(sys.argv[1]), float(sys.argv[2]))
        except ww.cell.RemoteError as e:
            print("refused:", str(e).rsplit(": ", 1)[-1], flush=True)
        except TimeoutError:
            print("still no answer", flush=True)
        print((await s.p2p.id())[0][:4], flush=True)

asyncio.run(main())
"""


def test_a_peer_that_never_answers_the_gateway_fails_the_dial(start_host, cell_file):
    """A peer that agrees to `/ww/0.1.0` and then says nothing: the connect and the stream
    were bounded (10 s each) but the `Gateway.service` call was not, so the cell's dial
    waited for ever.  It fails after DIAL_TIMEOUT, saying so, and the session goes on."""
    server = subprocess.Popen(
        [sys.executable, "-c", MUTE_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        addr = server.stdout.readline().strip()
        assert addr.startswith("/ip4/127.0.0.1/tcp/"), addr
        a = start_host(
            "a",
            "--with-p2p",
            "--listen",
            LOOPBACK,
            *ALLOW,
            cell_file(ONE_DIAL, "one.py"),
            addr,
            str(6 * DIAL_TIMEOUT),
        )
        assert a.addr == f"refused: no answer within {DIAL_TIMEOUT:g} s"
        assert a.readline() == "12D3"
        status, err = a.stop()
        assert status == 0, err
    finally:
        server.kill()
        server.wait()


# Dials each address of argv[1] in turn; prints one line per dial: how it was refused.
EACH = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        for addr in sys.argv[1].split():
            try:
                await s.p2p.dial_service(addr)
                print("dialed", addr, flush=True)
            except ww.cell.RemoteError as e:
                print(str(e)[:120], flush=True)
        print((await s.p2p.id())[0][:4], flush=True)

asyncio.run(main())
"""


def test_loopback_in_any_form_is_refused_before_the_lane_dials(start_host, cell_file):
    """Without --allow-dial, no form of the loopback address makes the host dial on the lane
    (nor on py-libp2p for what the lane cannot take): IPv4-mapped, IPv4-compatible, NAT64,
    6to4, ::1, a name, a peer id the lane cannot take (RSA's Qm...)."""
    listener = SilentListener()
    try:
        p, peer = listener.port, PrivateKey.generate().peer_id
        rsa = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
        hosts = [
            "/ip4/127.0.0.1",
            "/ip6/::ffff:127.0.0.1",
            "/ip6/::ffff:7f00:1",
            "/ip6/::127.0.0.1",
            "/ip6/64:ff9b::7f00:1",
            "/ip6/2002:7f00:1::1",
            "/ip6/::1",
            "/ip4/0.0.0.0",
            "/dns4/localhost",
        ]
        addrs = [f"{h}/tcp/{p}/p2p/{peer}" for h in hosts] + [f"/ip4/127.0.0.1/tcp/{p}/p2p/{rsa}"]
        a = start_host(
            "a", "--with-p2p", "--listen", LOOPBACK, cell_file(EACH, "each.py"), " ".join(addrs)
        )
        lines = [a.addr] + [a.readline() for _ in addrs[1:]]
        refused = ("capability denied: p2p: dial: address not allowed", "peer address")
        assert all(line.startswith(refused) for line in lines), lines
        assert a.readline() == "12D3"
        status, err = a.stop()
        assert status == 0, err
        assert listener.accepted == 0
    finally:
        listener.close()


def test_a_dial_as_the_kept_connection_ends_makes_a_new_one() -> None:
    """The peer ends the connection a Dialer keeps (it restarted, or evicted it) just as the
    cell dials it again, before the loop has seen the end: the dial reused the dead
    connection and failed, saying the peer "serves nothing"; it dials again instead.
    (Two lane ends in this process: real sockets on 127.0.0.1, the listener test_lane's.)"""
    from tests.p2p.test_lane import Echo, Listener, RecordingDialer, run
    from ww.p2p.protocol import Exports
    from ww.schema import load

    service = load("cell").Service

    async def main() -> None:
        exports = Exports()
        exports.set(Echo())
        listener = Listener(exports.lane_acceptor)
        dialer = RecordingDialer()
        try:
            first = (await dialer.dial(listener.addr)).cast_as(service)
            assert (await first.call("echo", ["a"])).result == "a"
            listener.tickets[0].close()  # the listener ends it (on its next loop turn)
            again = (await dialer.dial(listener.addr)).cast_as(service)
            assert (await again.call("echo", ["b"])).result == "b"
            assert len(listener.tickets) == 2
        finally:
            dialer.close_all()
            listener.close()

    run(main)


def test_ww_call_waits_for_a_silent_peer_as_long_as_its_timeout_says() -> None:
    """`ww call --timeout T` against a peer that takes the TCP connection and says nothing:
    the lane dial is bounded by T, not by a 10 s of its own (with T past 10 s the call gave
    up at 10 s, naming 10 s)."""
    from tests.p2p.conftest import ww_call

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        peer = PrivateKey.generate().peer_id
        addr = f"/ip4/127.0.0.1/tcp/{listener.getsockname()[1]}/p2p/{peer}"
        wait = DIAL_TIMEOUT + 1
        r = ww_call("--timeout", f"{wait:g}", addr, "echo", timeout=wait)
        assert r.returncode == 1, r.stderr
        assert f"no answer within {wait:g} s" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    finally:
        listener.close()
