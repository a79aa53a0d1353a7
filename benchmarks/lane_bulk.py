"""Honest bulk over one native lane stream: large calls pipelined on a dialed `/ww/0.1.0`.

    .venv/bin/python benchmarks/lane_bulk.py [--calls 256] [--size 1048576] [--inflight 24]
                                             [--rounds 5] [--compare OTHER/src]

Two processes on 127.0.0.1: a lane server (:func:`ww.p2p.lane.serve` with
:class:`ww.p2p.protocol.Exports` exporting a ``Service`` that answers each call with its
argument's length), and a client that dials it (:func:`ww.p2p.lane.dial`, then
``open_ww``: the bounded stream a cell's ``P2P.dial`` and `ww call` use) and makes
``--calls`` calls of ``--size`` bytes, ``--inflight`` of them pipelined at once.  Printed per
round: MiB/s of arguments carried, and whether the client's stream writer was paused
(``writing_paused`` seen, in a build that has it).  ``--inflight`` stays under 32 MiB by
default so that a build whose dialed streams were cut past 32 MiB unsent (before the lane
paused its writers) is measured on the same load.  ``--compare SRC``: every round a second
time with the ww package of SRC (its extension built in place), in turns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import asyncio, socket
import capnp
from ww.core.identity import PrivateKey
from ww.p2p import lane
from ww.p2p.protocol import Exports
from ww.schema import load

_cell = load("cell")

class Size(_cell.Service.Server):
    async def call(self, method, args, **kwargs):
        return str(sum(len(a) for a in args))

class Ticket:
    streams = 0
    def handshaken(self): ...
    def ended(self): ...
    def on_close(self, callback): ...

async def main():
    exports = Exports()
    exports.set(Size())
    key = PrivateKey.generate()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    print(f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}/p2p/{key.peer_id}", flush=True)
    loop = asyncio.get_running_loop()
    held = set()
    while True:
        conn, (ip, _) = await loop.sock_accept(sock)
        task = asyncio.ensure_future(
            lane.serve(conn, key.seed, ip, Ticket(), exports.serve_lane_stream))
        held.add(task)
        task.add_done_callback(held.discard)

asyncio.run(capnp.run(main()))
"""

CLIENT = """
import asyncio, sys, time
import capnp
from ww.core.identity import PrivateKey
from ww.p2p import lane
from ww.schema import load

_cell = load("cell")
addr, calls, size, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def main():
    conn = await lane.dial(addr, PrivateKey.generate().seed)
    client = capnp.TwoPartyClient(await conn.open_ww())
    gateway = client.bootstrap().cast_as(_cell.Gateway)
    service = (await gateway.service()).service.as_interface(_cell.Service)
    (stream,) = conn.streams.values()
    arg = "x" * size
    paused = False
    sem = asyncio.Semaphore(inflight)

    async def one():
        nonlocal paused
        async with sem:
            r = await service.call("m", [arg])
            paused = paused or getattr(stream, "writing_paused", False)
            assert r.result == str(size), r.result

    await one()  # warm
    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    took = time.perf_counter() - t
    print(f"{calls * size / took / (1 << 20):.1f} {int(paused)}", flush=True)
    conn.close()

asyncio.run(capnp.run(main()))
"""


def one_round(src: str, options: argparse.Namespace) -> tuple[float, bool]:
    env = dict(os.environ, PYTHONPATH=src)
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        addr = server.stdout.readline().strip()  # type: ignore[union-attr]
        r = subprocess.run(
            [sys.executable, "-c", CLIENT, addr, str(options.calls), str(options.size),
             str(options.inflight)],
            capture_output=True, text=True, env=env, timeout=600)
        if r.returncode:
            raise SystemExit(f"client failed ({src}):\n{r.stderr[-2000:]}")
        rate, paused = r.stdout.split()
        return float(rate), paused == "1"
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=256)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--inflight", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", metavar="SRC")
    options = parser.parse_args()
    builds = {"this": str(ROOT / "src")}
    if options.compare:
        builds["SRC"] = os.path.abspath(options.compare)
    rates: dict[str, list[float]] = {name: [] for name in builds}
    for _ in range(options.rounds):
        for name, src in builds.items():
            rate, paused = one_round(src, options)
            rates[name].append(rate)
            print(f"{name:5} {rate:8.1f} MiB/s  writer paused: {paused}", flush=True)
    print(f"{options.calls} calls of {options.size} bytes, {options.inflight} in flight;"
          " median of", options.rounds, "rounds")
    for name, got in rates.items():
        print(f"  {name:5} {statistics.median(got):8.1f} MiB/s (min {min(got):.1f}, "
              f"max {max(got):.1f})")


if __name__ == "__main__":
    main()
