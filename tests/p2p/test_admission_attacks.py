"""Remote peers that try to get past the host's admission (ww.p2p.admission) by how they
behave once let in, not by how many they are.

Real hosts (:class:`ww.p2p.host.Node` in this process, so that the bounds can be made small
and the counts looked at) and real libp2p connections of fresh peer ids from loopback
addresses 127.0.0.2, 127.0.0.3, ... (each counted as a remote address).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import pytest
import trio

from tests.conftest import HANG
from tests.p2p import test_admission_share
from tests.p2p.sybils import connect
from tests.p2p.test_stream_memory import HOLD, _on_host
from ww.p2p import admission
from ww.p2p.host import Node

pytest.importorskip("libp2p")

start = test_admission_share.start  # the fixture: hosts on 127.0.0.1, made small per test
PINGS = 2_000_000  # Yamux pings a deaf peer sends at most (a few thousand fill the buffers)


async def _deaf(addr: str, source: str) -> tuple[Any, Any]:
    """A new identity's connection (Noise and Yamux done) that never reads again, from a
    socket with a small receive buffer; returns the muxed connection (its reader not
    started) and the peer id."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.peer.id import ID
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from libp2p.transport.upgrader import TransportUpgrader

    keys = create_new_key_pair()
    upgrader = TransportUpgrader(
        {NOISE: Noise(keys, noise_privkey=new_x25519().private_key)}, {YAMUX: Yamux}
    )
    maddr = multiaddr.Multiaddr(addr)
    peer = ID.from_base58(maddr.value_for_protocol("p2p"))
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.bind((source, 0))
    await sock.connect((maddr.value_for_protocol("ip4"), int(maddr.value_for_protocol("tcp"))))
    raw = RawConnection(TrioTCPStream(trio.SocketStream(sock)), True)
    secured = await upgrader.upgrade_security(raw, True, peer)
    muxed = await upgrader.upgrade_connection(secured, peer)
    return muxed, ID.from_pubkey(keys.public_key)


async def _ping_without_reading(muxed: Any) -> None:
    """Yamux pings, each of which the host answers from its connection's reader: once the
    answers fill the socket buffers the host's writes to this connection block."""
    from libp2p.stream_muxer.yamux.yamux import FLAG_SYN, TYPE_PING, YAMUX_HEADER_FORMAT

    try:
        for i in range(PINGS):
            await muxed.secured_conn.write(
                struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, i)
            )
    except Exception:  # the host hung up
        pass


def _socket(conn: Any) -> Any:
    """The TCP socket under a SwarmConn (py-libp2p 0.8.1's layers: Yamux, Noise, msgio,
    raw connection, its TCP stream, trio's)."""
    layer = conn.muxed_conn
    for name in ("secured_conn", "conn", "read_writer", "read_write_closer", "stream", "stream"):
        layer = getattr(layer, name)
    return layer.socket


def _unsent(conn: Any) -> int:
    """Bytes the host has queued on ``conn``'s socket that the peer has not taken."""
    return struct.unpack("i", fcntl.ioctl(_socket(conn).fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _writing(peer: Any) -> Callable[[Any], int | None]:
    """What the host has queued and not sent to ``peer`` while a write to it waits, or None
    if none waits."""

    def look(host: Any) -> int | None:
        conns = host.get_network().get_connections(peer)
        if len(conns) != 1 or not conns[0].muxed_conn._write_lock.locked():
            return None
        return _unsent(conns[0])

    return look


async def _until_stuck(server: Node, peer: Any, deadline: float) -> None:
    """Until the host's writes to ``peer`` block: a write waits and what is queued for the
    peer stays as it was over 5 looks (a peer that does not read never takes it)."""
    seen: list[int | None] = []
    while len(seen) < 5 or None in seen[-5:] or len(set(seen[-5:])) != 1 or not seen[-1]:
        assert time.monotonic() < deadline, seen[-5:]
        seen.append(await trio.to_thread.run_sync(_on_host, server, _writing(peer)))
        await trio.sleep(0.1)


def _live(host: Any) -> dict[str, int]:
    """The inbound connections the host still holds (in its swarm, socket open), and those
    admission counts."""
    live = len(host.get_network().get_connections())  # this host dials none
    return {"live": live, "counted": host.get_network().admission.inbound}


def test_a_trimmed_peer_that_does_not_read_lets_go_of_its_connection(start, monkeypatch) -> None:
    """MAX_INBOUND made 2, EVICT_GRACE 0.  127.0.0.2 holds both places: its oldest
    connection stops reading and floods Yamux pings, so the host's answers fill the socket
    buffers and its writes to it block.  A newcomer from 127.0.0.3 takes that connection's
    place: it is given back at once, and closed -- its GO_AWAY cannot be written.  Checked
    that it goes all the same (were it given back but left open, each round of this would
    let one more connection past MAX_INBOUND and MAX_PER_IP, and py-libp2p's 300 in all would
    fill): its handler returns once the connection is marked closed, and trio's listener then
    closes the socket by force, which fails the blocked write."""
    monkeypatch.setattr(admission, "MAX_INBOUND", 2, raising=False)
    monkeypatch.setattr(admission, "EVICT_GRACE", 0.0, raising=False)
    server = start()

    async def main() -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                deaf, peer = await _deaf(server.addrs[0], "127.0.0.2")
                await connect(server.addrs[0], nursery, source="127.0.0.2")
                nursery.start_soon(_ping_without_reading, deaf)
                deadline = time.monotonic() + HANG / 2  # before fail_after: show what was seen
                await _until_stuck(server, peer, deadline)
                await connect(server.addrs[0], nursery, source="127.0.0.3")  # trims `deaf`
                while (await trio.to_thread.run_sync(_on_host, server, _live))["live"] > 2:
                    assert time.monotonic() < deadline, "the trimmed connection stayed"
                    await trio.sleep(0.05)
                counts = await trio.to_thread.run_sync(_on_host, server, _live)
                gone = not await trio.to_thread.run_sync(
                    _on_host, server, lambda h: h.get_network().get_connections(peer)
                )
            nursery.cancel_scope.cancel()
        return {"gone": gone, **counts}

    assert trio.run(main) == {"gone": True, "live": 2, "counted": 2}


async def _hold_without_reading(muxed: Any) -> None:
    """A stream of ``muxed`` (its reader not started) that names HOLD and sends its byte,
    the host's answers never read."""
    stream = await muxed.open_stream()
    for line in (b"/multistream/1.0.0\n", HOLD.encode() + b"\n"):
        await stream.write(bytes([len(line)]) + line)
    await stream.write(b"!")


def _stream_counts(host: Any) -> dict[str, Any]:
    a = host.get_network().admission
    return {"ip_streams": dict(a.ip_streams), "all_streams": a.all_streams}


def test_a_stream_that_gives_its_place_goes_though_its_peer_does_not_read(
    start, monkeypatch
) -> None:
    """MAX_INBOUND_STREAMS made 2, MAX_STREAMS_PER_IP 2: 127.0.0.2 holds both streams on one
    connection, then stops reading and floods Yamux pings until the host's writes to it
    block.  A stream from 127.0.0.3 takes the place of 127.0.0.2's oldest, whose reset
    cannot be written.  Were the reset merely given up, the stream would stay -- counted by
    nobody, its 256 KiB window of data held, the peer free to resume it once it read again,
    and one more such past MAX_INBOUND_STREAMS at each round.  Its connection is closed
    instead, and the newcomer is served."""
    monkeypatch.setattr(admission, "MAX_INBOUND_STREAMS", 2, raising=False)
    monkeypatch.setattr(admission, "MAX_STREAMS_PER_IP", 2, raising=False)
    server = start()

    async def main() -> tuple[bool, bool, dict[str, Any]]:
        from tests.p2p.test_stream_memory import _open

        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                deadline = time.monotonic() + HANG / 2  # before fail_after: show what was seen
                deaf, peer = await _deaf(server.addrs[0], "127.0.0.2")
                for _ in range(2):
                    await _hold_without_reading(deaf)
                while await trio.to_thread.run_sync(_on_host, server, _stream_counts) != {
                    "ip_streams": {"127.0.0.2": 2},
                    "all_streams": 2,
                }:
                    assert time.monotonic() < deadline
                    await trio.sleep(0.05)
                nursery.start_soon(_ping_without_reading, deaf)
                await _until_stuck(server, peer, deadline)
                newcomer = await connect(server.addrs[0], nursery, source="127.0.0.3")
                served = await _open(newcomer) is not None
                while await trio.to_thread.run_sync(
                    _on_host, server, lambda h: h.get_network().get_connections(peer)
                ):
                    assert time.monotonic() < deadline, "the stream's connection stayed"
                    await trio.sleep(0.05)
                counts = await trio.to_thread.run_sync(_on_host, server, _stream_counts)
            nursery.cancel_scope.cancel()
        return served, True, counts

    assert trio.run(main) == (True, True, {"ip_streams": {"127.0.0.3": 1}, "all_streams": 1})
