"""What unread data remote peers can make a host buffer, host-wide: streams counted across all
connections (ww.p2p.admission.MAX_INBOUND_STREAMS) and receive windows grown past the
protocol's 256 KiB out of one budget (ww.p2p.yamux.GROWN_WINDOWS).

Real hosts (:class:`ww.p2p.host.Node` on 127.0.0.1, in this process so that the bounds can be
made small and the host's buffers looked at) and real libp2p connections of fresh peer ids
(:mod:`tests.p2p.sybils`).  Both bounds are made small here so that a few streams reach them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.conftest import HANG
from tests.p2p.sybils import connect
from ww.core.identity import Identity, PrivateKey
from ww.p2p import admission, yamux
from ww.p2p.host import Node

pytest.importorskip("libp2p")

HOLD = "/ww-test/hold/1.0.0"  # reads one byte, then never again until the peer goes
ECHO = "/ww-test/echo/1.0.0"
INITIAL = 256 * 1024  # the protocol's initial receive window


async def _hold(stream: Any) -> None:
    await stream.read(1)  # past negotiation: the first read that may grow the window
    await stream.muxed_conn.event_closed.wait()  # the peer has gone


async def _echo(stream: Any) -> None:
    await stream.write(await stream.read(1024))
    await stream.close()


@pytest.fixture
def server() -> Iterator[Node]:
    node = Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.1/tcp/0"], handlers={HOLD: _hold, ECHO: _echo},
                serve_ww=False, announce=False, warn=lambda message: None)
    node.start()
    yield node
    node.stop()


def _echoed(server: Node, word: bytes) -> bytes | None:
    """What a well-behaved peer gets back from ``server``'s echo (None: its stream was
    reset)."""
    client = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                  serve_ww=False, announce=False, warn=lambda message: None)
    client.start()
    try:
        async def call() -> bytes | None:
            from libp2p.peer.peerinfo import info_from_p2p_addr
            from multiaddr import Multiaddr

            info = info_from_p2p_addr(Multiaddr(server.addrs[0]))
            await client.dial(info)
            try:
                stream = await client.host.new_stream(info.peer_id, [ECHO])
                await stream.write(word)
                return bytes(await stream.read(1024))
            except Exception:
                return None

        return client.submit(call).result(HANG)
    finally:
        client.stop()


async def _open(conn: Any) -> Any:
    """A stream of ``conn`` that has chosen HOLD and sent its byte, or None if reset."""
    from libp2p.protocol_muxer.multiselect_client import MultiselectClient
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    stream = await conn.open_stream()
    try:
        await MultiselectClient().select_one_of([HOLD], MultiselectCommunicator(stream))
        await stream.write(b"!")
    except Exception:
        return None
    return stream


def _on_host(server: Node, fn: Any) -> Any:
    async def run() -> Any:
        return fn(server.host)

    return server.submit(run).result(HANG)


def test_inbound_streams_past_the_host_wide_cap_are_reset(server, monkeypatch) -> None:
    """Three connections of fresh peer ids open 4 streams each, all held open: with the cap
    at 8 for the whole host, 4 are reset (each connection is far under its own 256), a
    well-behaved peer's stream is reset too while the host is full, and is served once the
    flood has gone."""
    monkeypatch.setattr(admission, "MAX_INBOUND_STREAMS", 8, raising=False)
    counts: dict[str, Any] = {}

    async def main() -> int:
        held = 0
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                conns = [await connect(server.addrs[0], nursery) for _ in range(3)]
                for conn in conns:
                    for _ in range(4):
                        held += await _open(conn) is not None
                # the stream handler counts a stream before negotiating it: all are counted
                counts["full"] = await trio.to_thread.run_sync(_echoed, server, b"early")
                for conn in conns:
                    await conn.close()
                while _on_host(server, lambda h: h.get_network().admission.all_streams):
                    await trio.sleep(0.05)  # bounded by fail_after
            nursery.cancel_scope.cancel()
        return held

    assert trio.run(main) == 8
    assert counts["full"] is None  # reset: the host was full
    assert _echoed(server, b"still here") == b"still here"


def test_grown_receive_windows_stay_within_the_host_wide_budget(server, monkeypatch) -> None:
    """One connection opens 32 streams whose handler reads one byte and never again, and
    sends each as much as flow control lets it.  py-libp2p grew every stream's window at
    its first read (to 2 MiB, auto-tuned), so the host buffered 64 MiB; now the windows grow
    only out of GROWN_WINDOWS (made 4 MiB here), so the host buffers at most 32 x 256 KiB +
    4 MiB, and the budget comes back when the streams go."""
    budget = 4 << 20
    monkeypatch.setattr(yamux, "GROWN_WINDOWS", budget, raising=False)
    n = 32
    counts: dict[str, int] = {}

    def buffered(host: Any) -> int:
        return sum(len(data) for conn in host.get_network().connections.values()
                   for swarm_conn in (conn if isinstance(conn, list) else [conn])
                   for data in swarm_conn.muxed_conn.stream_buffers.values())

    async def flood(stream: Any) -> None:
        chunk = bytes(1 << 16)
        try:
            while True:  # ends once the window stays spent for 5 s (py-libp2p's wait)
                await stream.write(chunk)
        except Exception:
            pass

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                conn = await connect(server.addrs[0], nursery)
                streams = [await _open(conn) for _ in range(n)]
                assert None not in streams
                async with trio.open_nursery() as writers:
                    for stream in streams:
                        writers.start_soon(flood, stream)
                held = await trio.to_thread.run_sync(_on_host, server, buffered)
                counts["grown"] = _on_host(server, lambda host: yamux.grown())
                await conn.close()
                while _on_host(server, lambda host: yamux.grown()):  # given back
                    await trio.sleep(0.05)  # bounded by fail_after
            nursery.cancel_scope.cancel()
        return held

    held = trio.run(main)
    assert n * (INITIAL - 1) <= held <= n * INITIAL + budget, held
    assert 0 < counts["grown"] <= budget
