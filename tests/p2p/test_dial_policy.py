"""A capability is not network reach: the addresses a cell may make the host dial.

Real cells (`ww run`, jailed) against real loopback listeners: a plain TCP socket that
counts the connections it is offered, and a real embedded IPFS node.  Without
``--allow-dial`` a cell's IPFS ``connect`` and p2p ``dial`` of a loopback address are
refused before anything is sent (the listener sees nothing); with it they go through.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG, run_ww
from ww.core.identity import Identity, PrivateKey
from ww.ipfs.node import EmbeddedNode
from ww.p2p import P2PError, host_for_ipfs
from ww.p2p.dial_policy import STRICT, DialPolicy, special_use

pytest.importorskip("libp2p")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
PEER = "12D3KooWHzee5NhcNJVjZhUFZ23uqbHPzTkCfvD4yMj2mWmVEEWE"  # nobody


class Listener:
    """A TCP socket on 127.0.0.1 that accepts and at once closes every connection (so a
    libp2p dial to it fails fast), counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._take()

    def _take(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except (TimeoutError, BlockingIOError):
            return False
        conn.close()
        self.count += 1
        return True

    def offered(self) -> int:
        """Connections that reached it so far (the kernel's queue drained first)."""
        self._stop.set()
        self._thread.join()
        self.sock.setblocking(False)
        while self._take():
            pass
        return self.count

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    made = Listener()
    yield made
    made.close()


# --- the policy itself ------------------------------------------------------------------------

@pytest.mark.parametrize("ip, kind", [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private (RFC 1918)"), ("172.16.0.1", "private (RFC 1918)"),
    ("192.168.1.1", "private (RFC 1918)"), ("100.64.0.1", "shared address space"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fd00::1", "unique local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"), ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"), ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"), ("::ffff:127.0.0.1", "loopback, embedded"),
    ("2002:7f00:1::1", "loopback, embedded"), ("64:ff9b::a00:1", "private (RFC 1918), embedded"),
])
def test_special_use_addresses_are_named(ip: str, kind: str) -> None:
    found = special_use(ipaddress.ip_address(ip))
    assert found is not None and found[0].startswith(kind)
    addr = f"/ip{4 if '.' in ip and ':' not in ip else 6}/{ip}/tcp/4001/p2p/{PEER}"
    reason = STRICT.refusal(addr)
    assert reason is not None and reason.startswith(f"address not allowed: {addr} (")
    assert "--allow-dial" in reason and "\n" not in reason


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(ip: str) -> None:
    assert special_use(ipaddress.ip_address(ip)) is None
    assert STRICT.refusal(f"/ip{6 if ':' in ip else 4}/{ip}/tcp/4001/p2p/{PEER}") is None


@pytest.mark.parametrize("addr", [
    "/ip4/1.2.3.4/ip4/127.0.0.1/tcp/22",  # libp2p dials the last host: 127.0.0.1
    "/ip4/1.2.3.4/tcp/1/ip4/127.0.0.1/tcp/22",
    "/ip6/2606:4700::1/ip4/127.0.0.1/tcp/22",
    "/ip4/1.2.3.4/ip6/::1/tcp/22",
    f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}/p2p-circuit/p2p/{PEER}",
    "/ip4/1.2.3.4/udp/4001/quic-v1",
    "/ip6/2606:4700::1%lo/tcp/22",
])
def test_only_one_host_and_a_tcp_port_are_dialed(addr: str) -> None:
    """An address of any other shape is refused, whatever its first host: py-libp2p takes
    the host to dial from the end of the address, not from where the policy looked."""
    from libp2p.utils.multiaddr_utils import extract_ip_from_multiaddr

    reason = STRICT.refusal(addr)
    assert reason is not None and reason.startswith(f"address not allowed: {addr} (")
    if "/ip4/127.0.0.1/" in addr:  # what the transport would have dialed
        import multiaddr

        assert extract_ip_from_multiaddr(multiaddr.Multiaddr(addr)) == "127.0.0.1"


@pytest.mark.parametrize("ip, kind", [
    ("::ffff:0:7f00:1", "loopback, embedded"), ("3fff::1", "documentation"),
    ("5f00::1", "segment routing"),
])
def test_more_special_use_ipv6(ip: str, kind: str) -> None:
    found = special_use(ipaddress.ip_address(ip))
    assert found is not None and found[0].startswith(kind)


def test_allowed_ranges_operator_addresses_names_and_bare_peer_ids() -> None:
    joined = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"
    policy = DialPolicy.from_flags(["10.0.0.0/8", "fd00::/8"], [joined])
    assert policy.refusal(joined) is None  # the operator named it
    assert policy.refusal(f"/ip4/127.0.0.1/tcp/4002/p2p/{PEER}") is not None  # not that one
    assert policy.refusal(f"/ip4/10.9.8.7/tcp/1/p2p/{PEER}") is None
    assert policy.refusal(f"/ip6/fd12::1/tcp/1/p2p/{PEER}") is None
    assert policy.refusal(f"/ip4/192.168.0.1/tcp/1/p2p/{PEER}") is not None
    dns = policy.refusal(f"/dns4/example.com/tcp/4001/p2p/{PEER}")
    assert dns is not None and "names are not resolved" in dns
    assert policy.refusal(PEER) is None and policy.refusal(f"/p2p/{PEER}") is None


def test_a_bad_allow_dial_is_a_usage_error() -> None:
    r = run_ww("run", "--allow-dial", "localhost", "/bin/true")
    assert r.returncode == 2
    assert "'localhost' is not an IP address or CIDR range" in r.stderr
    assert "Traceback" not in r.stderr


def test_sub_cells_are_started_with_the_operators_ranges() -> None:
    from ww.app.argv import SubcellCommand
    from ww.app.options import RunOptions
    from ww.host.policy import GrantSet

    parent = RunOptions("/bin/true", allow_dial=("127.0.0.0/8", "fd00::/8"))
    argv = SubcellCommand(parent, ww=["ww"]).argv(GrantSet(), [], "/bin/true", [])
    flags = argv[:argv.index("--")]
    assert flags[flags.index("--allow-dial"):] == [
        "--allow-dial", "127.0.0.0/8", "--allow-dial", "fd00::/8"]


# --- real cells ---------------------------------------------------------------------------

CONNECTOR = """
import sys
import ww.cell
with ww.cell.session() as s:
    for addr in sys.argv[1:]:
        try:
            if "{how}" == "ipfs":
                s.ipfs.connect(addr)
                print("connected", [p.id for p in s.ipfs.peers()])
            else:
                s.p2p.dial_service(addr)
                print("dialed")
        except ww.cell.RemoteError as e:
            print("error:", e)
"""


def test_a_cells_ipfs_connect_to_loopback_is_refused_without_touching_it(
        make_cell, listener: Listener) -> None:
    cell = make_cell(CONNECTOR.replace("{how}", "ipfs"))
    addr = f"/ip4/127.0.0.1/tcp/{listener.port}/p2p/{PEER}"
    r = run_ww("--json", "run", "--with-ipfs", cell, addr)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"error: capability denied: ipfs: connect: address not allowed: {addr} (127.0.0.1 is "
        "loopback; the operator can allow it with --allow-dial 127.0.0.0/8)"]
    assert listener.offered() == 0  # no SYN ever reached it
    assert '"event":"denied"' in r.stderr and "address not allowed" in r.stderr


def test_with_allow_dial_a_cells_ipfs_connect_reaches_loopback(
        make_cell, listener: Listener, tmp_path: Path) -> None:
    peer = EmbeddedNode(tmp_path / "peer", new_host=host_for_ipfs())
    try:
        real = peer.listen([LOOPBACK]).addresses[0]
        cell = make_cell(CONNECTOR.replace("{how}", "ipfs"))
        plain = f"/ip4/127.0.0.1/tcp/{listener.port}/p2p/{PEER}"
        r = run_ww("run", "--with-ipfs", "--allow-dial", "127.0.0.0/8", cell, plain, real)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"error: ipfs: cannot connect to {plain}")  # not libp2p
        assert lines[1] == f"connected {[peer.id().id]}"
        assert listener.offered() >= 1  # this time the host did dial it
    finally:
        peer.close()


def test_a_cells_p2p_dial_to_loopback_is_refused_unless_allowed(
        make_cell, listener: Listener) -> None:
    cell = make_cell(CONNECTOR.replace("{how}", "p2p"))
    addr = f"/ip4/127.0.0.1/tcp/{listener.port}/p2p/{PEER}"
    r = run_ww("run", "--with-p2p", "--listen", LOOPBACK, cell, addr)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"error: capability denied: p2p: dial: address not allowed: {addr} (127.0.0.1 is "
        "loopback; the operator can allow it with --allow-dial 127.0.0.0/8)"]
    assert listener.offered() == 0
    r = run_ww("run", "--with-p2p", "--listen", LOOPBACK, "--allow-dial", "127.0.0.1",
               cell, addr)
    assert r.returncode == 0, r.stderr
    # Dialed this time: it does not speak libp2p, so the dial fails, as a dial does.
    assert r.stdout.startswith("error: p2p: ") and "not allowed" not in r.stdout, r.stdout
    assert listener.offered() >= 1


# --- the host's own dials -------------------------------------------------------------------

def test_a_host_with_a_policy_never_dials_a_refused_address(listener: Listener) -> None:
    """Every outbound connection of a `ww run` host passes the policy: by full address,
    and by peer id alone with addresses only a peer announced (the transport refuses)."""
    from ww.p2p.host import Node

    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                dial_policy=STRICT)
    node.start()
    try:
        addr = f"/ip4/127.0.0.1/tcp/{listener.port}/p2p/{PEER}"
        with pytest.raises(P2PError, match="address not allowed"):
            node.open(addr).result(HANG)

        async def learned() -> None:  # as if identify had told us this address
            import multiaddr
            from libp2p.peer.id import ID

            node.host.get_peerstore().add_addrs(
                ID.from_base58(PEER), [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{listener.port}")],
                3600)

        node.submit(learned).result(HANG)
        with pytest.raises(P2PError, match="address not allowed"):
            node.open(f"/p2p/{PEER}").result(HANG)

        async def swarm_dial() -> None:  # py-libp2p's own path (new_stream to a stranger)
            from libp2p.peer.id import ID

            await node.host.get_network().dial_peer(ID.from_base58(PEER))

        with pytest.raises(Exception):  # noqa: B017 - py-libp2p's error, whatever its type
            node.submit(swarm_dial).result(HANG)
        assert listener.offered() == 0
    finally:
        node.stop()


def test_a_dial_tries_a_refused_address_once_and_a_cut_handshake_again(
        listener: Listener) -> None:
    """py-libp2p's default tried every failed dial three times more, 0.1, 0.2 and 0.4 s
    apart: a closed port cost 0.7 s and four connects, and every dead end a peer, a cell or
    mDNS handed the host cost that.  Now a refused address is tried once (counted: the
    connects the host's TCP transport makes), as go-libp2p's swarm does; a handshake the
    remote cut (here the listener closes each connection; a busy host cuts handshakes past
    its bounds) is tried again, UPGRADE_RETRIES times more: a crowd dialing one host at once
    gets in on a later try."""
    from ww.p2p.host import UPGRADE_RETRIES, Node

    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                serve_ww=False, announce=False, warn=lambda message: None)
    node.start()
    try:
        connects: list[object] = []
        _count_connects(node, connects)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
            with pytest.raises(P2PError):
                node.open(f"/ip4/127.0.0.1/tcp/{closed.getsockname()[1]}/p2p/{PEER}"
                          ).result(HANG)
        refused = len(connects)
        with pytest.raises(P2PError):
            node.open(f"/ip4/127.0.0.1/tcp/{listener.port}/p2p/{PEER}").result(HANG)
    finally:
        node.stop()
    assert refused == 1
    assert listener.offered() == 1 + UPGRADE_RETRIES


ANNOUNCED_DIALER = """
import sys
import ww.cell
with ww.cell.session() as s:
    for line in sys.stdin:
        try:
            s.p2p.dial_service("/p2p/" + line.strip())
            print("dialed", flush=True)
        except ww.cell.RemoteError as e:
            print("error:", e, flush=True)
"""


def test_a_peer_cannot_announce_a_public_looking_address_that_reaches_loopback(
        make_cell, listener: Listener, tmp_path: Path) -> None:
    """A peer connects to a `ww run` host and announces, through identify,
    /ip4/<public>/ip4/127.0.0.1/tcp/<port>; the cell then dials that peer by id.  The host
    must not connect to 127.0.0.1:<port> (py-libp2p dials the last host of the address)."""
    import subprocess
    import threading

    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from tests.conftest import WW
    from ww.core.identity import load_or_create
    from ww.p2p.host import Node

    crafted = f"/ip4/1.2.3.4/ip4/127.0.0.1/tcp/{listener.port}"
    cell = make_cell(ANNOUNCED_DIALER)
    host = subprocess.Popen([WW, "run", "--with-p2p", "--listen", LOOPBACK, cell],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peer = Node(load_or_create(tmp_path / "peer"), listen=[], serve_ww=False, announce=False,
                warn=lambda message: None)
    try:
        assert host.stderr is not None and host.stdin is not None and host.stdout is not None
        line = host.stderr.readline()
        assert "listening on " in line, line
        target = info_from_p2p_addr(multiaddr.Multiaddr(line.split("listening on ")[1].strip()))
        peer.start()
        asked = threading.Event()

        def announce() -> list:
            asked.set()  # the host is identifying us
            return [multiaddr.Multiaddr(crafted)]

        async def rig() -> None:
            peer.host.get_addrs = announce

        async def connect() -> None:
            await peer.dial(target)

        async def leave() -> None:
            await peer.host.get_network().close_peer(target.peer_id)

        peer.submit(rig).result(HANG)
        peer.submit(connect).result(HANG)
        assert asked.wait(HANG), "the host never identified the peer"
        answer = ""
        for _ in range(50):  # until the host has stored what we announced (bounded)
            peer.submit(leave).result(HANG)
            host.stdin.write(peer.peer_id + "\n")
            host.stdin.flush()
            answer = host.stdout.readline().strip()
            if "no address known" not in answer:
                break
            peer.submit(connect).result(HANG)
        assert answer.startswith("error:"), answer
        assert "address not allowed" in answer, answer
        assert listener.offered() == 0  # never dialed 127.0.0.1
    finally:
        peer.stop()
        if host.stdin is not None:
            host.stdin.close()
        try:
            host.wait(HANG)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait()


HUGE_CONNECT = """
import ww.cell
with ww.cell.session() as s:
    for addr in ["/ip4/127.0.0.1/tcp/1\\n{\\"event\\":\\"login\\"}", "/" + "a" * (4 << 20)]:
        try:
            s.ipfs.connect(addr)
        except ww.cell.RemoteError as e:
            print(len(str(e)), len(str(e).splitlines()), flush=True)
"""


def test_a_refused_address_is_audited_as_one_short_line(make_cell, tmp_path: Path) -> None:
    """The cell chooses the address a refusal shows: a 4 MiB one made a 12 MB audit line (and
    error) per call, so a cell could fill the operator's audit file at will; one with a
    newline made the refusal two lines."""
    import json

    audit = tmp_path / "audit.log"
    r = run_ww("run", "--with-ipfs", "--audit", str(audit), make_cell(HUGE_CONNECT))
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        length, lines = map(int, line.split())
        assert length < 1000 and lines == 1
    denied = [json.loads(line) for line in audit.read_text().splitlines()
              if '"denied"' in line]
    assert len(denied) == 2
    for event in denied:
        assert event["reason"].startswith("address not allowed: ")
        assert "\n" not in event["reason"] and len(event["reason"]) < 1000


SLOW_CONNECT = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        slow = asyncio.ensure_future(s.ipfs.connect(sys.argv[1]))
        await asyncio.sleep(0)  # the connect is sent first
        await s.ipfs.id()
        print("connect still under way when id answered:", not slow.done(), flush=True)
        try:
            await slow
        except ww.cell.RemoteError as e:
            print("connect:", str(e).split(" (")[0])

asyncio.run(main())
"""


def test_a_connect_that_waits_on_the_network_does_not_hold_up_the_cells_other_calls(
        make_cell) -> None:
    """A peer that accepts TCP and never answers: the dial waits for its timeout.  The old
    host dialed on the loop that serves fd 3 (and the export's remote peers), so the cell's
    next call was answered only after the dial gave up."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel completes the handshake; nobody ever speaks
    try:
        addr = f"/ip4/127.0.0.1/tcp/{silent.getsockname()[1]}/p2p/{PEER}"
        r = run_ww("run", "--with-ipfs", "--allow-dial", "127.0.0.1", make_cell(SLOW_CONNECT),
                   addr)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            "connect still under way when id answered: True",
            f"connect: ipfs: cannot connect to {addr}"], r.stdout
    finally:
        silent.close()


def test_each_run_hands_its_own_dial_policy_to_its_capability_servers(tmp_path: Path) -> None:
    """The policy a cell's dials are held to is the one its run built, passed to the IPFS
    and p2p servers (ww.app.build), not a process-wide setting the last run overwrote."""
    from ww.app import build
    from ww.app.options import RunOptions
    from ww.host.denied import NOBODY
    from ww.host.policy import GrantSet, IpfsGrant

    loopback = "/ip4/127.0.0.1/tcp/4001"
    widened = build.dial_policy(RunOptions("/bin/true", allow_dial=("127.0.0.0/8",)))
    api = build.open_embedded(tmp_path / "repo")
    factories = build.capability_factories(["ipfs"], api, lambda: None,  # type: ignore[arg-type,return-value]
                                           policy=widened)
    build.dial_policy(RunOptions("/bin/true"))  # another run in the same process: strict
    strict_factories = build.capability_factories(["ipfs"], api, lambda: None)  # type: ignore[arg-type,return-value]
    grants = GrantSet(ipfs=IpfsGrant())
    server = factories["ipfs"](grants, NOBODY, {})
    strict_server = strict_factories["ipfs"](grants, NOBODY, {})
    assert server.dial_policy.refusal(loopback) is None  # type: ignore[attr-defined]
    refusal = strict_server.dial_policy.refusal(loopback)  # type: ignore[attr-defined]
    assert refusal is not None and refusal.startswith("address not allowed")
    import ww.p2p.dial_policy as module

    assert not hasattr(module, "set_for_cells")  # no module-global policy left to set


def test_a_join_tries_again_a_peer_that_listens_a_moment_later() -> None:
    """A dial tries a refused address once; a ``--join`` (at start, once) tries it again a
    few times (0.1, 0.2, 0.4 s apart): a peer started with this host by one script may
    listen a moment later.  Here its port refuses the first connect (bound, not listening),
    and listens as soon as that connect has failed (a relay to the peer, on the same
    socket): the join connects, with no warning.  Without the join's tries it failed."""
    from ww.p2p.host import Node

    peer = Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.1/tcp/0"], serve_ww=False, announce=False)
    peer.start()
    port_of_peer = int(peer.addrs[0].split("/tcp/")[1].split("/")[0])
    late = socket.socket()
    late.bind(("127.0.0.1", 0))  # refuses until it listens
    warnings: list[str] = []
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                serve_ww=False, announce=False, warn=warnings.append,
                join=[f"/ip4/127.0.0.1/tcp/{late.getsockname()[1]}/p2p/{peer.peer_id}"])
    connects: list[object] = []

    def relay() -> None:  # the late port's one connection, to the peer's
        conn, _ = late.accept()
        upstream = socket.create_connection(("127.0.0.1", port_of_peer), timeout=HANG)

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    b.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    def peer_starts(connected: int) -> None:
        if connected == 1:  # refused; the peer "starts" now
            late.listen(1)
            threading.Thread(target=relay, daemon=True).start()

    async def listen_after_the_first_connect() -> None:  # on the host, before the join
        _count_connects(node, connects, then=peer_starts)

    node.add_protocol("/ww-test/unused/1.0.0", lambda stream: None,
                      setup=listen_after_the_first_connect)
    node.start()
    try:
        node.wait_joined(HANG)
        joined = node.submit(lambda: _connected(node, peer.peer_id)).result(HANG)
    finally:
        node.stop()
        peer.stop()
        late.close()
    assert (warnings, len(connects) >= 2, joined) == ([], True, True)


def test_a_join_whose_handshakes_are_cut_is_tried_as_a_dial_is(listener: Listener) -> None:
    """A dial already tries a cut handshake again (UPGRADE_RETRIES times more); a ``--join``
    tried every failed dial again three times on top: a join to a host that cuts every
    handshake (here the listener closes each connection at once) cost 16 connects.  The
    join tries again only a dial that made no connection (refused, unreachable), so a cut
    handshake costs what it costs a dial: 1 + UPGRADE_RETRIES connects, then the warning."""
    from ww.p2p.host import UPGRADE_RETRIES, Node

    warnings: list[str] = []
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                serve_ww=False, announce=False, warn=warnings.append,
                join=[f"/ip4/127.0.0.1/tcp/{listener.port}/p2p/{PEER}"])
    node.start()
    try:
        node.wait_joined(HANG)
    finally:
        node.stop()
    assert len(warnings) == 1 and "cannot connect" in warnings[0], warnings
    assert listener.offered() == 1 + UPGRADE_RETRIES


def _count_connects(node: Any, connects: list[object],
                    then: Callable[[int], None] | None = None) -> None:
    """Count the connects ``node``'s TCP transport makes: each one's address goes to
    ``connects``, then it is dialed for real; ``then(len(connects))`` runs once it is done
    (connected or failed)."""
    (tcp,) = node.host.get_network().transport_manager.get_transports()
    dial = tcp.dial

    async def counted(maddr: object) -> object:
        connects.append(maddr)
        try:
            return await dial(maddr)
        finally:
            if then is not None:
                then(len(connects))

    tcp.dial = counted


async def _connected(node: Any, peer_id: str) -> bool:
    from libp2p.peer.id import ID

    return bool(node.host.get_network().get_connections(ID.from_base58(peer_id)))


def test_a_join_that_gets_no_answer_says_so_in_its_warning(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """(found by attack) A ``--join`` of a peer that accepts TCP and never speaks ends at
    JOIN_TIMEOUT (here made 1 s: the peer never answers, however long); its warning gave the
    cancelled dial's reason, "Exceptions from Trio nursery (1 sub-exception)", not that
    nothing answered.  One connect (the first try waited the whole bound)."""
    import ww.p2p.host
    from ww.p2p.host import Node

    monkeypatch.setattr(ww.p2p.host, "JOIN_TIMEOUT", 1.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever speaks
    addr = f"/ip4/127.0.0.1/tcp/{silent.getsockname()[1]}/p2p/{PEER}"
    warnings: list[str] = []
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[], serve_ww=False,
                announce=False, warn=warnings.append, join=[addr])
    node.start()
    try:
        node.wait_joined(HANG)
    finally:
        node.stop()
        silent.close()
    assert warnings == [f"p2p: --join {addr}: cannot connect (no answer within 1 s)"], warnings


def test_a_peer_that_answers_the_header_and_stalls_holds_a_dial_once_and_briefly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(found by attack) A listener that answers multistream's header and then says nothing
    held a dial 30 s (py-libp2p's selection timeout, three times the dial's bound), and the
    dial tried it again 3 times: 4 connects, 2 minutes.  The selection is bounded by
    DIAL_TIMEOUT (here made 2 s) and a timed-out handshake is not tried again: 1 connect."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from ww.p2p import host as host_module
    from ww.p2p.host import Node

    monkeypatch.setattr(host_module, "DIAL_TIMEOUT", 2.0)
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:  # each connection: the header answered, then silence
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            held.append(conn)
            conn.sendall(b"\x13/multistream/1.0.0\n")

    threading.Thread(target=serve, daemon=True).start()
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                serve_ww=False, announce=False, warn=lambda m: None)
    node.start()
    connects: list[object] = []
    _count_connects(node, connects)
    addr = f"/ip4/127.0.0.1/tcp/{server.getsockname()[1]}/p2p/{PEER}"
    try:
        async def dial() -> str:
            try:
                await node.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            except Exception as e:  # noqa: BLE001 - what the test looks at
                return type(e).__name__
            return "connected"

        assert node.submit(dial).result(HANG) != "connected"
    finally:
        node.stop()
        server.close()
        for conn in held:
            conn.close()
    assert len(connects) == 1
