"""A remote peer flooding a lane server with stream openings (or pings), and the calls of an
honest peer.

    .venv/bin/python benchmarks/lane_flood.py [--conns 4] [--seconds 8] [--kind syn|ping]
                                              [--batch 300]

Three processes on 127.0.0.1: a lane server (``ww.p2p.lane.serve`` with
:class:`ww.p2p.protocol.Exports` exporting an echoing ``Service``, on one asyncio loop, as
the ww host serves lanes on the loop of the cell's fd 3), an honest peer calling ``echo``
every 20 ms over the lane, and an attacker (fresh keys) that opens ``--conns`` lane
connections and then, as fast as it can, streams on them (``--kind syn``: bare Yamux SYNs,
each refused by the server's bounds and reset; past 4096 more than the server's rate, it
fails the connection) or Yamux pings (``--kind ping``: each answered; nothing fails the
connection), ``--batch`` frames to a write (one read of the server's may take them all:
4000 SYNs are 120 KB).  Printed: the honest calls' count, median and worst latency before
and during the flood, both processes' CPU during it, and the server's worst loop lag (a
10 ms sleep's overshoot) and longest single ``Conn.readable`` call, before the flood (the
honest peer's first call, pycapnp's bootstrap, is the longest) and during it (wall, and the
thread's CPU time, which the machine's other load does not lengthen); how many calls there
were, how many stopped at conn.c's budget with input left (``Conn.reads_cut``; each went on
soon) and the most frames one call parsed (``Conn.most_parsed``; both -1 in a build before
the budget).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
    longest = [0.0, 0.0]  # wall, and this thread's CPU (the machine's load is not in it)
    calls = [0]
    cuts: dict[int, int] = {}  # each connection's Conn.reads_cut, as last seen
    most = [-1]
    readable = lane.LaneConn.readable

    def timed(self: lane.LaneConn) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return readable(self)
        finally:
            longest[0] = max(longest[0], time.perf_counter() - start)
            longest[1] = max(longest[1], time.thread_time() - cpu)
            calls[0] += 1
            cuts[id(self)] = getattr(self, "reads_cut", -1)
            most[0] = max(most[0], getattr(self, "most_parsed", -1))

    lane.LaneConn.readable = timed  # type: ignore[method-assign]
    gc_pause = [0.0, 0.0]  # the longest collection of the cyclic GC (it may fall in a call)

    def gc_timed(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            gc_pause[1] = time.perf_counter()
        else:
            gc_pause[0] = max(gc_pause[0], time.perf_counter() - gc_pause[1])

    gc.callbacks.append(gc_timed)
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
    before: list[float] = []

    def stdin() -> None:  # a line as the flood starts (the worst so far kept apart), then EOF
        got = os.read(0, 4096)
        if not got:
            loop.remove_reader(0)
            eof.set()
        elif not before:
            before.extend([lag[0], longest[0]])
            lag[0] = longest[0] = longest[1] = 0.0

    loop.add_reader(0, stdin)
    await eof.wait()
    lag_before, longest_before = before or [lag[0], longest[0]]
    print(
        f"{lag_before * 1000:.1f} {longest_before * 1000:.1f} {lag[0] * 1000:.1f} "
        f"{longest[0] * 1000:.1f} {longest[1] * 1000:.1f} {calls[0]} "
        f"{sum(cuts.values()) if min(cuts.values(), default=0) >= 0 else -1} {most[0]} "
        f"{gc_pause[0] * 1000:.1f}",
        flush=True,
    )


async def _flood(addr: str, conns: int, seconds: float, kind: str, batch: int) -> None:
    lanes = [await lane.dial(addr, PrivateKey.generate().seed) for _ in range(conns)]
    sent = 0
    end = time.monotonic() + seconds
    start = time.process_time()
    while time.monotonic() < end:
        for conn in lanes:
            if kind == "ping":  # the answers taken as fast as they are made, whatever the build
                for _ in range(batch // 100 + 1):  # (a build with the budget: 128 a call)
                    conn.readable()
            for _ in range(batch):
                try:
                    if kind == "ping":
                        if conn.get_write_buffer_size() > 1 << 20:
                            break  # (the server stopped reading: its answers wait)
                        _native.Conn.ping(conn, sent)
                    else:
                        _native.Conn.open(conn)
                except ConnectionError:
                    break
                sent += 1
            conn.flush()
        await asyncio.sleep(0)
    print(f"{sent} {time.process_time() - start:.2f}", flush=True)
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


async def _measure(conns: int, seconds: float, kind: str, batch: int) -> None:
    me = [sys.executable, os.path.abspath(__file__)]
    server = subprocess.Popen(
        [*me, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    addr = server.stdout.readline().strip()  # type: ignore[union-attr]
    n, p50, worst = await _calls(addr, 3)
    print(f"before:   {n} calls, median {p50:.1f} ms, worst {worst:.1f} ms")
    cpu = _cpu(server.pid)
    server.stdin.write("flood\n")  # type: ignore[union-attr]
    server.stdin.flush()  # type: ignore[union-attr]
    attacker = subprocess.Popen(
        [*me, "--flood", addr, str(conns), str(seconds), kind, str(batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    await asyncio.sleep(1.5)
    n, p50, worst = await _calls(addr, seconds - 3)
    print(f"flooded:  {n} calls, median {p50:.1f} ms, worst {worst:.1f} ms")
    out, _ = await asyncio.to_thread(attacker.communicate)
    sent, attacker_cpu = out.split()
    what = "pings sent" if kind == "ping" else "streams opened"
    print(
        f"attacker: {conns} connections, {sent} {what}, {attacker_cpu} s CPU; "
        f"server {_cpu(server.pid) - cpu:.2f} s CPU"
    )
    out, _ = server.communicate("")
    lag_before, longest_before, lag, longest, longest_cpu, calls, cut, most, gc_ms = out.split()
    print(
        f"server:   before: worst loop lag {lag_before} ms, longest Conn.readable "
        f"{longest_before} ms"
    )
    print(
        f"          flooded: worst loop lag {lag} ms, longest Conn.readable {longest} ms "
        f"({longest_cpu} ms of CPU)"
    )
    print(
        f"          {calls} readable calls, {cut} cut at the budget, at most {most} frames "
        f"in one (-1: no budget in this build); longest GC collection {gc_ms} ms"
    )
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("syn", "ping"), default="syn")
    parser.add_argument("--batch", type=int, default=300, help="frames per write (300)")
    parser.add_argument("--flood", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(capnp.run(_serve()))
    elif args.flood:
        addr, conns, seconds, kind, batch = args.flood
        asyncio.run(_flood(addr, int(conns), float(seconds), kind, int(batch)))
    else:
        asyncio.run(capnp.run(_measure(args.conns, args.seconds, args.kind, args.batch)))


if __name__ == "__main__":
    main()
