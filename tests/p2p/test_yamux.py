"""ww.p2p.yamux: py-libp2p's Yamux as the host runs it, between two real hosts on 127.0.0.1."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.yamux import MAX_FRAME_PAYLOAD, RECEIVE_WINDOW, Stream

BULK = "/ww-test/bulk/1.0.0"
SIZE = 6 * RECEIVE_WINDOW + 12345  # several windows' worth, not a whole number of frames
TIMEOUT = 300  # a bound that only stops a hang (tests/conftest.py HANG)


def _payload() -> bytes:
    return hashlib.shake_256(b"yamux").digest(SIZE)


def _started_pair(protocol: str, handler: Any) -> tuple[Node, Node]:
    """A host on 127.0.0.1 serving ``protocol`` with ``handler``, and a host to dial it."""
    server = Node(Identity.from_private_key(PrivateKey.generate()),
                  listen=["/ip4/127.0.0.1/tcp/0"], handlers={protocol: handler},
                  serve_ww=False, announce=False)
    client = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                  serve_ww=False, announce=False)
    server.start()
    client.start()
    return server, client


def test_a_bulk_stream_arrives_whole_on_our_streams_in_batched_credit() -> None:
    """Several receive windows cross intact; both ends are ww's Stream; the receiver gives
    window back in batches (py-libp2p's own stream sent an update for every read)."""
    seen: dict[str, object] = {}

    async def sink(stream: object) -> None:
        muxed = stream.muxed_stream  # type: ignore[attr-defined]
        seen["server_stream"] = muxed
        updates = 0
        send_update = muxed.send_window_update

        async def counting(increment: int, skip_lock: bool = False) -> None:
            nonlocal updates
            updates += 1
            await send_update(increment, skip_lock)

        muxed.send_window_update = counting
        digest = hashlib.sha256()
        got = reads = 0
        while True:
            try:
                data = await stream.read(65536)  # type: ignore[attr-defined]
            except Exception:
                break
            if not data:
                break
            reads += 1
            got += len(data)
            digest.update(data)
        seen.update(reads=reads, updates=updates)
        await stream.write(f"{got} {digest.hexdigest()}".encode())  # type: ignore[attr-defined]
        await stream.close()  # type: ignore[attr-defined]

    server, client = _started_pair(BULK, sink)
    try:
        async def send() -> bytes:
            from libp2p.peer.peerinfo import info_from_p2p_addr
            from multiaddr import Multiaddr

            info = info_from_p2p_addr(Multiaddr(server.addrs[0]))
            await client.dial(info)
            stream = await client.host.new_stream(info.peer_id, [BULK])
            seen["client_stream"] = stream.muxed_stream
            await stream.write(_payload())
            await stream.close_write()
            reply = b""
            while True:
                try:
                    data = await stream.read()
                except Exception:
                    break
                if not data:
                    break
                reply += data
            return reply

        reply = client.submit(send).result(TIMEOUT)
    finally:
        client.stop()
        server.stop()
    assert reply.decode() == f"{SIZE} {hashlib.sha256(_payload()).hexdigest()}"
    assert isinstance(seen["client_stream"], Stream)
    assert isinstance(seen["server_stream"], Stream)
    # Credit goes back once half the window is read: far fewer updates than reads.
    assert seen["reads"] > SIZE // 65536
    assert seen["updates"] <= SIZE // (RECEIVE_WINDOW // 2) + 2  # type: ignore[operator]


def test_a_frame_with_its_header_fits_one_noise_message() -> None:
    from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
    from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE

    assert MAX_FRAME_PAYLOAD + HEADER_SIZE == MAX_PLAINTEXT_LENGTH


HOLD = "/ww-test/hold/1.0.0"


async def _holder(stream: object) -> None:
    """HOLD's handler: sends nothing; reads until the reset."""
    try:
        while await stream.read():  # type: ignore[attr-defined]
            pass
    except Exception:
        pass


async def _read_once(stream: Any, ended: list[str]) -> None:
    """One read of ``stream``; how it ended goes to ``ended``."""
    try:
        await stream.read()
        ended.append("read returned")
    except Exception as e:
        ended.append(type(e).__name__)


def test_a_stream_reset_here_ends_the_read_waiting_on_it() -> None:
    """A task reads a stream the peer sends nothing on; another task of this host resets it
    (admission giving its place to another, Bitswap giving up a stalled peer).  py-libp2p
    dropped the stream's event without setting it: the read waited on until something else
    woke it (a Bitswap reader 30 s; here, with nothing else, for ever).  Now the read ends
    with the reset, and nothing of the stream is left in the connection's tables."""
    server, client = _started_pair(HOLD, _holder)
    try:
        async def reset_while_reading() -> tuple[str, bool, bool, bool]:
            import trio
            import trio.testing
            from libp2p.peer.peerinfo import info_from_p2p_addr
            from multiaddr import Multiaddr

            info = info_from_p2p_addr(Multiaddr(server.addrs[0]))
            await client.dial(info)
            stream = await client.host.new_stream(info.peer_id, [HOLD])
            muxed = stream.muxed_stream
            ended: list[str] = []

            async with trio.open_nursery() as nursery:  # ends once the read has
                nursery.start_soon(_read_once, stream, ended)
                await trio.testing.wait_all_tasks_blocked()  # the read waits for data
                assert not ended
                await stream.reset()
            conn = muxed.conn
            return (ended[0], muxed.stream_id in conn.stream_events,
                    muxed.stream_id in conn.streams, muxed.reset_sent)

        how, event_left, stream_left, ours = client.submit(reset_while_reading).result(TIMEOUT)
    finally:
        client.stop()
        server.stop()
    assert how == "StreamReset"
    assert (event_left, stream_left, ours) == (False, False, True)


def test_a_stream_reset_here_ends_its_read_while_the_peer_keeps_sending() -> None:
    """The same while the peer keeps sending on the stream (a Bitswap peer sending blocks, a
    `/ww/0.1.0` caller its messages): data arriving while the reset waits for its frame's turn
    wakes the read, which reads it and waits again, on a new event, which py-libp2p then
    dropped unset (the reset set only the one it had seen: 14 of 100 reads waited for ever,
    measured).  Every read ends, and no stream leaves its event behind."""
    flood = "/ww-test/flood/1.0.0"
    rounds = 100

    async def flooder(stream: object) -> None:  # sends until the reset
        try:
            while True:
                await stream.write(b"y" * 100)  # type: ignore[attr-defined]
        except Exception:
            pass

    server, client = _started_pair(flood, flooder)
    try:
        async def reset_while_sent_to() -> tuple[int, list[int]]:
            import trio
            from libp2p.peer.peerinfo import info_from_p2p_addr
            from multiaddr import Multiaddr

            info = info_from_p2p_addr(Multiaddr(server.addrs[0]))
            await client.dial(info)
            ended = 0
            left: list[int] = []
            for _ in range(rounds):
                stream = await client.host.new_stream(info.peer_id, [flood])
                muxed = stream.muxed_stream
                got = trio.Event()
                done = trio.Event()

                async def read(stream: Any = stream, got: Any = got, done: Any = done) -> None:
                    try:
                        while await stream.read():
                            got.set()
                    except Exception:
                        pass
                    done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    await got.wait()  # the peer's data is coming in
                    await stream.reset()
                    with trio.move_on_after(60):  # ms needed; the first read left ends it
                        await done.wait()
                    nursery.cancel_scope.cancel()
                if not done.is_set():
                    break
                ended += 1
                if muxed.stream_id in muxed.conn.stream_events:
                    left.append(muxed.stream_id)
            return ended, left

        ended, left = client.submit(reset_while_sent_to).result(TIMEOUT)
    finally:
        client.stop()
        server.stop()
    assert ended == rounds
    assert left == []


def test_a_reset_given_up_while_its_frame_waits_its_turn_ends_the_read() -> None:
    """A reset given up while its RST frame waits for its turn (the DHT bounds its resets by
    ``RPC_TIMEOUT``; another frame holds the connection meanwhile, here the test holding the
    connection's write lock, a stand-in for a frame to a slow reader) has flagged the stream
    reset, but py-libp2p's reset never got to drop the stream and its event: the read waiting
    on the stream waited on (for py-libp2p's sweeper, up to 30 s) unless :meth:`Stream.reset`
    set the event itself."""
    server, client = _started_pair(HOLD, _holder)
    try:
        async def reset_given_up_while_reading() -> tuple[str, bool, bool]:
            import trio
            import trio.testing
            from libp2p.peer.peerinfo import info_from_p2p_addr
            from multiaddr import Multiaddr

            info = info_from_p2p_addr(Multiaddr(server.addrs[0]))
            await client.dial(info)
            stream = await client.host.new_stream(info.peer_id, [HOLD])
            muxed = stream.muxed_stream
            conn = muxed.conn
            ended: list[str] = []

            async def reset(giving_up: Any) -> None:
                with giving_up:
                    await stream.reset()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_once, stream, ended)
                await trio.testing.wait_all_tasks_blocked()  # the read waits for data
                giving_up = trio.CancelScope()
                async with conn._write_lock:  # a frame under way: the RST waits its turn
                    nursery.start_soon(reset, giving_up)
                    await trio.testing.wait_all_tasks_blocked()
                    giving_up.cancel()
                    await trio.testing.wait_all_tasks_blocked()
                assert giving_up.cancelled_caught and muxed.reset_received
                # the read, woken, ends with no I/O: by the time every task waits again
                # (without the event set, py-libp2p's sweeper woke it, up to 30 s later)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            return (ended[0] if ended else "still waiting",
                    muxed.stream_id in conn.stream_events, muxed.stream_id in conn.streams)

        how, event_left, stream_left = client.submit(
            reset_given_up_while_reading).result(TIMEOUT)
    finally:
        client.stop()
        server.stop()
    assert how == "StreamReset"
    assert (event_left, stream_left) == (False, False)


@pytest.mark.parametrize("peer_resets", [False, True])
def test_a_reset_stream_leaves_no_unread_data_behind(peer_resets: bool) -> None:
    """A peer opens streams one after another, each sending 250 KB of garbage where
    multistream-select's header belongs: the host's negotiation fails and resets it (or the
    peer resets it first).  py-libp2p kept a reset stream whose data was not all read, with
    its buffer, for its sweeper (60 to 90 s), past every bound admission counts streams by
    (300 streams: 75 MB held; 2,000: 500 MB in 8 s, one connection).  A reset stream's data
    goes with it, as go-yamux drops it: at most the last stream's is left."""
    rounds = 20
    server, client = _started_pair(BULK, lambda stream: None)
    try:
        async def garbage_streams() -> None:
            import trio
            from libp2p.peer.peerinfo import info_from_p2p_addr
            from multiaddr import Multiaddr

            info = info_from_p2p_addr(Multiaddr(server.addrs[0]))
            await client.dial(info)
            muxed = client.host.get_network().get_connections(info.peer_id)[0].muxed_conn
            for _ in range(rounds):
                stream = await muxed.open_stream()  # a bare Yamux stream: no negotiation
                try:
                    await stream.write(b"\xff" * 250_000)
                    if peer_resets:
                        await stream.reset()
                        continue
                    with trio.fail_after(60):  # until the host resets it
                        while await stream.read():
                            pass
                except trio.TooSlowError:
                    raise
                except Exception:
                    pass

        async def held() -> int:
            conn = server.host.get_network().get_connections()[0].muxed_conn
            return sum(len(b) for b in conn.stream_buffers.values())

        client.submit(garbage_streams).result(TIMEOUT)
        held_bytes = server.submit(held).result(TIMEOUT)
    finally:
        client.stop()
        server.stop()
    assert held_bytes <= 250_000, held_bytes  # the streams': 5 MB
