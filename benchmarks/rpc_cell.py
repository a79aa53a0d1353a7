#!/usr/bin/env python3
"""The client half of benchmarks/rpc.py: measures console.ping round trips.

Run inside a cell (`ww run --with-console benchmarks/rpc_cell.py`) it talks to the host
over fd 3; run with `--raw FD` it talks to a bare pycapnp server on that socket instead.
Prints one JSON line: sequential and pipelined calls per second.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

import capnp

from ww.schema import load

CALLS = int(sys.argv[sys.argv.index("--calls") + 1]) if "--calls" in sys.argv else 5000
WINDOW = 100  # calls kept in flight when pipelining


async def measure(console) -> dict[str, float]:
    payload = b"x" * 16
    for _ in range(200):  # warm up
        await console.ping(payload)
    start = time.perf_counter()
    for _ in range(CALLS):
        await console.ping(payload)
    sequential = CALLS / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(CALLS // WINDOW):
        await asyncio.gather(*(console.ping(payload) for _ in range(WINDOW)))
    pipelined = (CALLS // WINDOW) * WINDOW / (time.perf_counter() - start)
    return {"sequential": sequential, "pipelined": pipelined}


async def main() -> None:
    cell = load("cell")
    if "--raw" in sys.argv:
        sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--raw") + 1]))
        stream = await capnp.AsyncIoStream.create_connection(sock=sock)
        console = capnp.TwoPartyClient(stream).bootstrap().cast_as(cell.Console)
    else:
        stream = await capnp.AsyncIoStream.create_connection(sock=socket.socket(fileno=3))
        host = capnp.TwoPartyClient(stream).bootstrap().cast_as(cell.Host)
        console = (await host.login()).session.console
    print(json.dumps(await measure(console)))


if __name__ == "__main__":
    asyncio.run(capnp.run(main()))
