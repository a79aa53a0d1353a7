"""The gateway (or another ASGI app) served for real: hypercorn on trio, in a thread of its
own, on 127.0.0.1 at a port the system picks; stopped (gracefully, its connections closed)
when the block ends."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ww.serve.gateway import STALL_TIMEOUT, gateway_app
from ww.serve.server import limit_stalls

HANG = 300  # a bound that only stops a hang


@contextmanager
def served(api: Any, log: list[str] | None = None,
           stall_timeout: float = STALL_TIMEOUT) -> Iterator[str]:
    """Serve ``api``'s gateway; yields its base URL (``http://127.0.0.1:<port>``).  As the
    daemon does: on a socket bound here (given to hypercorn as ``fd://``), its stalled
    clients dropped after ``stall_timeout`` seconds (the socket's and the app's)."""
    app = gateway_app(api, log=log.append if log is not None else None,
                      stall_timeout=stall_timeout)
    with served_app(app, stall_timeout) as url:
        yield url


@contextmanager
def served_app(app: Any, stall_timeout: float = STALL_TIMEOUT) -> Iterator[str]:
    """Serve the ASGI ``app`` as :func:`served` serves the gateway; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limit_stalls(sock, stall_timeout)
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.graceful_timeout = 5
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        state["token"] = trio.lowlevel.current_trio_token()
        state["stop"] = stop
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status))
            state["url"] = binds[0]
            started.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as err:  # shown by the test that waits for the start
            state["error"] = err
            started.set()

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    assert started.wait(HANG), "the gateway did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield state["url"]
    finally:
        state["token"].run_sync_soon(state["stop"].set)
        thread.join(HANG)
        assert not thread.is_alive(), "the gateway did not stop"
