"""Remote calls over /ww/0.1.0 on loopback: call rate and latency, cell to cell and shell to cell.

    .venv/bin/python benchmarks/p2p.py [--calls 2000] [--rounds 3]

Host B is a real `ww run --with-p2p --listen /ip4/127.0.0.1/tcp/0` whose jailed cell exports
a `Service` that echoes.  Three measurements of `Service.call("echo", [])`, best of --rounds:

- "cell -> cell": a jailed cell on host A (`ww run --with-p2p`) dials B and calls: the call
  crosses A's fd 3, A's libp2p host, TCP + Noise + Yamux, B's libp2p host and B's fd 3.
- "peer -> cell": this process is the remote peer (a libp2p node as `ww call` runs one):
  the call crosses one libp2p connection and B's fd 3.
- "fd 3 only": the same cell code calling its own host's console `ping` over fd 3, for
  scale (no network at all).
- "libp2p echo": two libp2p hosts in this process, a 100-byte echo on a bare stream: the
  part of a remote call that is py-libp2p's (TCP + Noise + Yamux, trio), nothing else.

Sequential calls give the latency (median, p99); "pipelined" keeps 64 calls in flight.
Also timed: one `ww call` from the shell, start to finish (process start-up included).
Everything listens on 127.0.0.1 only, and every peer is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

WW = str(Path(sys.executable).with_name("ww"))
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
IN_FLIGHT = 64

EXPORTER = """
import asyncio, os
import ww.cell

class Echo(ww.cell.Service.Server):
    async def call(self, method, args, **kwargs):
        return ""

async def main():
    async with ww.cell.connect() as s:
        await s.p2p.export(Echo())
        print((await s.p2p.id())[1][0], flush=True)
        eof = asyncio.Event()
        asyncio.get_running_loop().add_reader(0, lambda: os.read(0, 4096) or eof.set())
        await asyncio.wait_for(eof.wait(), 600)

asyncio.run(main())
"""

# The measurement, shared by the caller cell and this process.
MEASURE = """
import asyncio, statistics, time

async def measure(one, calls):
    for _ in range(50):  # warm up
        await one()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await one()
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    pending = set()
    for _ in range(calls):
        if len(pending) >= IN_FLIGHT:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(asyncio.ensure_future(one()))
    await asyncio.gather(*pending)
    pipelined = time.perf_counter() - started
    times.sort()
    return {"median_us": statistics.median(times) * 1e6,
            "p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
            "sequential_per_s": calls / sum(times),
            "pipelined_per_s": calls / pipelined}
""".replace("IN_FLIGHT", str(IN_FLIGHT))

# argv: ADDR CALLS ("-" as ADDR: console ping over fd 3 instead)
CALLER = """
import asyncio, json, sys, time
import ww.cell
""" + MEASURE + """

async def main():
    addr, calls = sys.argv[1], int(sys.argv[2])
    async with ww.cell.connect() as s:
        if addr == "-":
            cap = s._cap("console")
            one = lambda: cap.ping(b"")
        else:
            cap = await s.p2p.dial(addr, ww.cell.Service)
            one = lambda: cap.call("echo", [])
        print(json.dumps(await measure(one, calls)), flush=True)

asyncio.run(main())
"""


def _cell(directory: str, name: str, body: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/usr/bin/env python3\n" + textwrap.dedent(body).lstrip())
    os.chmod(path, 0o755)
    return path


def _home(directory: str, name: str) -> dict[str, str]:
    home = os.path.join(directory, f"home-{name}")
    os.makedirs(home, exist_ok=True)
    return {**os.environ, "WW_HOME": home}


def peer_round(addr: str, calls: int) -> dict[str, float]:
    """This process as the remote peer: a libp2p node, one /ww/0.1.0 connection."""
    import capnp

    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node
    from ww.p2p.protocol import Dialer
    from ww.schema import load

    scope: dict[str, Any] = {}
    exec(MEASURE, scope)  # the same code the caller cell runs
    measure = scope["measure"]

    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[])
    node.start()

    async def run() -> dict[str, float]:
        dialer = Dialer(node)
        try:
            cap = (await dialer.dial(addr)).cast_as(load("cell").Service)
            return await measure(lambda: cap.call("echo", []), calls)
        finally:
            dialer.close_all()

    try:
        return asyncio.run(capnp.run(run()))
    finally:
        node.stop()


ECHO = "/ww-bench/echo/1.0.0"


def libp2p_round(calls: int) -> dict[str, float]:
    """Two libp2p hosts in this process (ww's Node: TCP + Noise + Yamux on trio threads), a
    100-byte echo on a bare stream: the libp2p part of a remote call, without Cap'n Proto,
    the splice to a socketpair or any cell."""
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node

    async def echo(stream: Any) -> None:
        while data := await stream.read(65536):
            await stream.write(data)

    server = Node(Identity.from_private_key(PrivateKey.generate()), listen=[LOOPBACK],
                  handlers={ECHO: echo}, serve_ww=False, announce=False)
    client = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                  serve_ww=False, announce=False)

    async def run() -> dict[str, float]:
        info = info_from_p2p_addr(Multiaddr(server.addrs[0]))
        await client.dial(info)
        stream = await client.host.new_stream(info.peer_id, [ECHO])
        message, times = b"x" * 100, []
        for i in range(calls + 50):
            started = time.perf_counter()
            await stream.write(message)
            got = 0
            while got < len(message):
                got += len(await stream.read(65536))
            if i >= 50:  # warmed up
                times.append(time.perf_counter() - started)
        await stream.reset()
        times.sort()
        return {"median_us": statistics.median(times) * 1e6,
                "p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
                "sequential_per_s": calls / sum(times), "pipelined_per_s": float("nan")}

    server.start()
    client.start()
    try:
        return client.submit(run).result(300)
    finally:
        client.stop()
        server.stop()


def cell_round(directory: str, caller: str, addr: str, calls: int) -> dict[str, float]:
    flags = ["--with-console"] if addr == "-" else [
        "--with-p2p", "--listen", LOOPBACK, "--allow-dial", "127.0.0.0/8"]
    out = subprocess.run([WW, "run", *flags, "--env", "PYTHONDONTWRITEBYTECODE=1", caller,
                          addr, str(calls)],
                         check=True, capture_output=True, text=True, timeout=300,
                         env=_home(directory, "a")).stdout
    return json.loads(out.splitlines()[-1])


def best(rounds: list[dict[str, float]]) -> dict[str, float]:
    return min(rounds, key=lambda r: r["median_us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ww-bench-p2p-") as directory:
        exporter = _cell(directory, "exporter.py", EXPORTER)
        caller = _cell(directory, "caller.py", CALLER)
        b = subprocess.Popen([WW, "run", "--with-p2p", "--listen", LOOPBACK, exporter],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=_home(directory, "b"))
        try:
            assert b.stdout is not None
            addr = b.stdout.readline().strip()
            if not addr:
                raise SystemExit("host B did not start")
            results: dict[str, Any] = {
                "cell -> cell": best([cell_round(directory, caller, addr, options.calls)
                                      for _ in range(options.rounds)]),
                "peer -> cell": best([peer_round(addr, options.calls)
                                      for _ in range(options.rounds)]),
                "fd 3 only": best([cell_round(directory, caller, "-", options.calls)
                                   for _ in range(options.rounds)]),
                "libp2p echo": best([libp2p_round(options.calls)
                                     for _ in range(options.rounds)]),
            }
            shell = []
            for _ in range(options.rounds):
                started = time.perf_counter()
                subprocess.run([WW, "call", addr, "echo"], check=True, capture_output=True,
                               timeout=60)
                shell.append(time.perf_counter() - started)
        finally:
            if b.stdin:
                b.stdin.close()
            try:
                b.wait(15)
            except subprocess.TimeoutExpired:
                b.kill()
                b.wait()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{options.calls} calls, best of {options.rounds}")
    print(f"{'path':<14}{'median':>10}{'p99':>10}{'seq calls/s':>13}"
          f"{'pipelined calls/s':>19}")
    for name, r in results.items():
        print(f"{name:<14}{r['median_us']:>8.0f}us{r['p99_us']:>8.0f}us"
              f"{r['sequential_per_s']:>13.0f}{r['pipelined_per_s']:>19.0f}")
    print(f"one `ww call` from the shell, start to finish: "
          f"{statistics.median(shell) * 1000:.0f} ms (median)")


if __name__ == "__main__":
    main()
