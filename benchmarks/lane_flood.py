"""A remote peer flooding a lane server with stream openings, and the calls of an honest peer.

    .venv/bin/python benchmarks/lane_flood.py [--conns 4] [--seconds 8]

Three processes on 127.0.0.1: a lane server (``ww.p2p.lane.serve`` with
:class:`ww.p2p.protocol.Exports` exporting an echoing ``Service``, on one asyncio loop, as
the ww host serves lanes on the loop of the cell's fd 3), an honest peer calling ``echo``
every 20 ms over the lane, and an attacker (fresh keys) that opens ``--conns`` lane
connections and then streams on them as fast as it can (bare Yamux SYNs, each refused by the
server's bounds and reset).  Printed: the honest calls' count, median and worst latency
before and during the flood, both processes' CPU during it, and the server's worst loop lag
and longest single ``Conn.readable`` call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import capnp

from ww.core.identity import PrivateKey
from ww.p2p import _native, lane
from ww.p2p.protocol import Exports, hold
from ww.schema import load

_cell = load("cell")


class _Echo(_cell.Service.Server):  # type: ignore[name-defined,misc]
    async def call(self, method: str, args: Any, **kwargs: Any) -> str:
        return " ".join(args)


class _Ticket:  # what the host's admission would get told: nothing counted here
    streams = 0

    def handshaken(self) -> None: ...

    def ended(self) -> None: ...

    def on_close(self, _callback: Any) -> None: ...


async def _serve() -> None:
    longest = [0.0]
    readable = lane.LaneConn.readable

    def timed(self: lane.LaneConn) -> Any:
        start = time.perf_counter()
        try:
            return readable(self)
        finally:
            longest[0] = max(longest[0], time.perf_counter() - start)

    lane.LaneConn.readable = timed  # type: ignore[method-assign]
    exports = Exports()
    exports.set(_Echo())
    seed = PrivateKey.generate().seed
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    print(f"/ip4/127.0.0.1/tcp/{port}/p2p/{PrivateKey(seed).peer_id}", flush=True)
    loop = asyncio.get_running_loop()
    lag = [0.0]
    tasks: set[Any] = set()

    async def monitor() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            lag[0] = max(lag[0], loop.time() - start - 0.01)

    async def accept() -> None:
        while True:
            sock, (ip, _) = await loop.sock_accept(server)
            tasks.add(
                asyncio.ensure_future(
                    lane.serve(sock, seed, ip, _Ticket(), exports.serve_lane_stream)
                )
            )

    tasks.add(asyncio.ensure_future(monitor()))
    tasks.add(asyncio.ensure_future(accept()))
    eof = asyncio.Event()
    loop.add_reader(0, eof.set)
    await eof.wait()
    print(f"{lag[0] * 1000:.1f} {longest[0] * 1000:.1f}", flush=True)


async def _flood(addr: str, conns: int, seconds: float) -> None:
    lanes = [await lane.dial(addr, PrivateKey.generate().seed) for _ in range(conns)]
    syns = 0
    end = time.monotonic() + seconds
    start = time.process_time()
    while time.monotonic() < end:
        for conn in lanes:
            for _ in range(300):
                try:
                    _native.Conn.open(conn)
                except ConnectionError:
                    break
                syns += 1
            conn.flush()
        await asyncio.sleep(0)
    print(f"{syns} {time.process_time() - start:.2f}", flush=True)
    for conn in lanes:
        conn.close()


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _calls(addr: str, seconds: float) -> tuple[int, float, float]:
    conn = await lane.dial(addr, PrivateKey.generate().seed)
    client = capnp.TwoPartyClient(await conn.open_ww())
    gateway = client.bootstrap().cast_as(_cell.Gateway)
    service = hold((await gateway.service()).service).cast_as(_cell.Service)
    took = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        await service.call("echo", ["ok"])
        took.append(time.monotonic() - start)
        await asyncio.sleep(0.02)
    client.close()
    conn.close()
    took.sort()
    return len(took), took[len(took) // 2] * 1000, took[-1] * 1000


async def _measure(conns: int, seconds: float) -> None:
    me = [sys.executable, os.path.abspath(__file__)]
    server = subprocess.Popen(
        [*me, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    addr = server.stdout.readline().strip()  # type: ignore[union-attr]
    n, p50, worst = await _calls(addr, 3)
    print(f"before:   {n} calls, median {p50:.1f} ms, worst {worst:.1f} ms")
    cpu = _cpu(server.pid)
    attacker = subprocess.Popen(
        [*me, "--flood", addr, str(conns), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    await asyncio.sleep(1.5)
    n, p50, worst = await _calls(addr, seconds - 3)
    print(f"flooded:  {n} calls, median {p50:.1f} ms, worst {worst:.1f} ms")
    out, _ = await asyncio.to_thread(attacker.communicate)
    syns, attacker_cpu = out.split()
    print(
        f"attacker: {conns} connections, {syns} streams opened, {attacker_cpu} s CPU; "
        f"server {_cpu(server.pid) - cpu:.2f} s CPU"
    )
    out, _ = server.communicate("")
    lag, longest = out.split()
    print(f"server:   worst loop lag {lag} ms, longest Conn.readable {longest} ms")
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flood", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(capnp.run(_serve()))
    elif args.flood:
        addr, conns, seconds = args.flood
        asyncio.run(_flood(addr, int(conns), float(seconds)))
    else:
        asyncio.run(capnp.run(_measure(args.conns, args.seconds)))


if __name__ == "__main__":
    main()
