"""How `ww daemon`'s HTTP server reads its sockets (the rate itself: benchmarks/daemon.py)."""

from __future__ import annotations

import trio

from ww.serve import server


def test_hypercorn_reads_a_connection_in_pieces_of_read_size():
    """hypercorn's own 64 KiB reads made a large `add` cost twice `ww export`'s CPU time."""
    from hypercorn.trio import tcp_server

    stop = trio.Event()
    stop.set()
    trio.run(server.serve, [], stop)
    assert tcp_server.MAX_RECV > 64 * 1024
    assert tcp_server.MAX_RECV == server.READ_SIZE


def _bodies(requests: list[bytes], size: int) -> list[tuple[bytes, list[bytes]]]:
    """What h11 server connections make of ``requests`` (one each) fed ``size`` bytes at a
    time: each request's target and its body's pieces."""
    return [piece for data in requests for piece in _body(data, size)]


def _body(data: bytes, size: int) -> list[tuple[bytes, list[bytes]]]:
    import h11

    conn = h11.Connection(h11.SERVER)
    requests: list[tuple[bytes, list[bytes]]] = []
    for at in range(0, len(data) + 1, size):
        conn.receive_data(data[at:at + size] or b"")  # b"": the end
        while True:
            event = conn.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.Request):
                requests.append((event.target, []))
            elif isinstance(event, h11.Data):
                requests[-1][1].append(bytes(event.data))
    return requests


def test_h11_hands_a_body_over_with_one_copy_and_the_same_bytes():
    """h11 copied each byte of a body three times on the event loop (with hypercorn's
    `bytes()`); the daemon's one-copy `maybe_extract_at_most` gives bytes, and the same
    requests, bodies and piece boundaries as h11's own, with a length or chunked."""
    import importlib.util
    import os

    from h11._receivebuffer import ReceiveBuffer

    # h11's own, from a fresh copy of its module (another test may have patched this one)
    spec = importlib.util.find_spec("h11._receivebuffer")
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)

    body = os.urandom(300_000)
    data = [b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 70_000]), body[i:i + 70_000])
                       for i in range(0, len(body), 70_000)) + b"0\r\n\r\n"]
    before = ReceiveBuffer.maybe_extract_at_most
    own = fresh.ReceiveBuffer.maybe_extract_at_most
    try:
        stop = trio.Event()
        stop.set()
        trio.run(server.serve, [], stop)
        patched = ReceiveBuffer.maybe_extract_at_most
        assert patched is not own
        buffer = ReceiveBuffer()
        buffer += b"abcdef"
        assert type(buffer.maybe_extract_at_most(4)) is bytes
        got = {size: _bodies(data, size) for size in (1000, 65536, 1 << 20)}
        ReceiveBuffer.maybe_extract_at_most = own  # type: ignore[method-assign]
        expected = {size: _bodies(data, size) for size in (1000, 65536, 1 << 20)}
    finally:
        ReceiveBuffer.maybe_extract_at_most = before  # type: ignore[method-assign]
    assert got == expected
    assert [(target, b"".join(pieces)) for target, pieces in got[1000]] == [
        (b"/a", body), (b"/b", body)]
