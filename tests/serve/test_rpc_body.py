"""An upload's body on its way to the worker (ww.serve.rpc.Request): the event loop reads it
ahead of the worker, pushed into a bounded hand-off.  Served for real (hypercorn on trio, a
socket on 127.0.0.1) to an app that does what RpcApi does with a command's body: a task on
the loop pumps it, a worker thread reads it."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests.serve.gateway_server import HANG, served_app
from ww.core.errors import CallCancelled
from ww.serve.rpc import BODY_AHEAD, BODY_PIECE, Request
from ww.serve.server import READ_SIZE, lifespan


class SlowReader:
    """An ASGI app whose worker takes one piece of the body, then waits for ``release``;
    counts the bytes the loop took from the server."""

    def __init__(self) -> None:
        self.received = 0
        self.request: Request | None = None
        self.took_one = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return

        async def counted() -> dict[str, Any]:
            message = await receive()
            self.received += len(message.get("body", b""))
            return message  # type: ignore[no-any-return]

        request = self.request = Request(scope, counted, send)

        def work() -> None:
            try:
                for piece in request.body():
                    self.digest.update(piece)
                    self.size += len(piece)
                    if not self.took_one.is_set():
                        self.took_one.set()
                        assert self.release.wait(HANG)
                request.start("text/plain", streamed=False)
                request.write(b"ok")
                request.send({"type": "http.response.body", "body": b"", "more_body": False})
            except CallCancelled as err:
                self.error = err
            finally:
                self.done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request.pump_body)
            await anyio.to_thread.run_sync(work)
            tasks.cancel_scope.cancel()

    def pump_waits(self) -> bool:
        """Whether the loop has stopped reading: it waits for room in the hand-off."""
        request = self.request
        room = request._room if request is not None else None
        return (room is not None and not room.is_set()
                and request._body_put >= request._body_allowed)


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + HANG  # only stops a hang
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _upload(url: str, data: bytes, length: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=HANG)
    sock.sendall(f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    threading.Thread(target=lambda: _send(sock, data), daemon=True).start()
    return sock


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the test closed it


@pytest.mark.parametrize("hang_up", [False, True])
def test_a_slow_worker_makes_the_loop_read_only_a_few_pieces_ahead(hang_up):
    """While the worker holds its first piece, the loop reads at most BODY_AHEAD more pieces
    (and one being gathered, and a read) of a 64 MiB body, then waits; released, the worker
    gets every byte in order.  A client that hangs up while the loop waits still cancels the
    command once the worker has taken the pieces already there."""
    data = os.urandom(64 << 20)
    app = SlowReader()
    with served_app(app) as url:
        sock = _upload(url, data, len(data))
        try:
            assert app.took_one.wait(HANG)
            _wait_for(app.pump_waits)
            # each message is at most one read of the server's (64 KiB here, unless a test
            # before served the daemon's way in this process: ww.serve.server.READ_SIZE)
            # (a piece is BODY_PIECE and at most one message more)
            assert app.received <= (BODY_AHEAD + 1) * (BODY_PIECE + READ_SIZE), app.received
            if hang_up:
                sock.close()
            app.release.set()
            assert app.done.wait(HANG)
            if hang_up:
                assert isinstance(app.error, CallCancelled), app.error
                assert app.request is not None and app.request.token.cancelled
                assert app.size < len(data)  # what the sockets held, not the rest
            else:
                assert app.error is None
                reply = b""
                while not reply.endswith(b"\r\n0\r\n\r\n"):
                    piece = sock.recv(65536)
                    assert piece, reply
                    reply += piece
                assert reply.startswith(b"HTTP/1.1 200")
                assert (app.size, app.digest.digest()) == (len(data),
                                                          hashlib.sha256(data).digest())
        finally:
            sock.close()


def test_an_add_cut_short_is_freed_without_the_garbage_collector(tmp_path, monkeypatch):
    """An `add` (RpcApi's own, served for real) whose client hangs up halfway: its request,
    and the pieces of body its frames held, are freed as soon as it ends, the garbage
    collector off.  The old code left each upload cut short in a reference cycle (the
    exception that ended its body, held by locals of frames in its own traceback, and by
    trio's to_thread.run_sync), freed only by a full collection, which an idle daemon need
    never make: 40 stalled uploads kept 150 MiB so (docs/benchmarks.md)."""
    import gc
    import weakref

    from tests.serve.conftest import multipart
    from ww.ipfs import EmbeddedNode
    from ww.serve import rpc

    requests: list[weakref.ref[Request]] = []

    class Tracked(Request):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            requests.append(weakref.ref(self))

    monkeypatch.setattr(rpc, "Request", Tracked)
    body, headers = multipart([("big", "application/octet-stream", b"")])
    opening = body[:body.index(b"\r\n--wwtestboundary--")]  # the part's data follows
    with EmbeddedNode(tmp_path / "repo") as node, served_app(rpc.RpcApi(node)) as url:
        host, port = url.removeprefix("http://").split(":")
        gc.collect()
        gc.disable()
        try:
            with socket.create_connection((host, int(port)), timeout=HANG) as sock:
                sock.sendall(f"POST /api/v0/add HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             f"{headers['Content-Type']}\r\nContent-Length: {1 << 40}\r\n\r\n"
                             .encode() + opening)
                threading.Thread(target=lambda: _send(sock, os.urandom(16 << 20)),
                                 daemon=True).start()
                # the worker has taken pieces of the body: its frames hold some
                _wait_for(lambda: bool(requests) and requests[0]() is not None
                          and requests[0]()._body_put >= BODY_AHEAD + 2)
            _wait_for(lambda: all(ref() is None for ref in requests))
        finally:
            gc.enable()
