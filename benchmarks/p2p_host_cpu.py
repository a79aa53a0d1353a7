"""Host B's own CPU per remote call, sequential and pipelined apart, read from the scheduler.

    .venv/bin/python benchmarks/p2p_host_cpu.py [--calls 2000] [--rounds 5] [--cell cxx|python]
                                               [--compare OTHER/src]

benchmarks/p2p.py's "B host" column is host B's CPU over a round's sequential and
pipelined calls together, read in clock ticks (10 ms) from /proc/PID/stat: a change that
helps one kind of call and not the other hardly shows in it.  Here host B is the same
`ww run --with-p2p` of an echoing exporter (``--cell cxx``: the C++ cell of tests/cxx/cell.c++,
no pycapnp behind the host; ``python``: benchmarks/p2p.py's Python exporter), a lane peer
(this checkout's code, a process of its own) makes ``--calls`` sequential calls in one turn
and ``--calls`` with 64 in flight in another, and each turn reads the nanoseconds on CPU of
host B's threads (/proc/PID/task/*/schedstat) and of the processes under it (its cell)
before and after.  The peer connects and warms up before the reading starts.

``--compare OTHER/src`` starts a second host B with the ww package of another checkout
(``PYTHONPATH``); the rounds alternate which host goes first.  Each figure is the median
over the rounds, with every round's host figure after it.  Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import p2p  # noqa: E402  (benchmarks/p2p.py: host B, its exporter)

from tests.cxx.build import build_cell  # noqa: E402

# argv: ADDR CALLS seq|pipe.  Says "ready" once connected and warm, then waits for a line;
# prints the result and waits for another line before it disconnects.
PEER = """
import asyncio, json, statistics, sys, time
import capnp
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.protocol import Dialer
from ww.schema import load

addr, calls, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[])
node.start()

async def run():
    dialer = Dialer(node, lane=True)
    cap = (await dialer.dial(addr)).cast_as(load("cell").Service)
    for _ in range(50):
        await cap.call("echo", [])
    print("ready", flush=True)
    sys.stdin.readline()
    times, started = [], time.perf_counter()
    if mode == "seq":
        for _ in range(calls):
            one = time.perf_counter()
            await cap.call("echo", [])
            times.append(time.perf_counter() - one)
    else:
        pending = set()
        for _ in range(calls):
            if len(pending) >= 64:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.add(asyncio.ensure_future(cap.call("echo", [])))
        await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    print(json.dumps({"per_s": calls / elapsed,
                      "median_us": statistics.median(times) * 1e6 if times else 0.0}),
          flush=True)
    sys.stdin.readline()
    dialer.close_all()

try:
    asyncio.run(capnp.run(run()))
finally:
    node.stop()
"""


def on_cpu(pid: int) -> int:
    """Nanoseconds on CPU of every thread of ``pid`` so far (0 once it is gone)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue
    return total


def add_compare(parser: argparse.ArgumentParser, what: str) -> None:
    """``--compare SRC``: also run against ``what`` with the ww of another checkout."""
    parser.add_argument("--compare", metavar="SRC",
                        help=f"also run every round against {what} with the ww of SRC "
                             "(another checkout's src directory), in turns with this one")


def variants(options: argparse.Namespace) -> dict[str, str | None]:
    """This checkout's ww ("this": None) and, with ``--compare``, SRC's (its path)."""
    found: dict[str, str | None] = {"this": None}
    if options.compare:
        found["SRC"] = os.path.abspath(options.compare)
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        found.append(here)
        todo += children.get(here, [])
    return found


def turn(host: Any, addr: str, calls: int, mode: str) -> dict[str, float]:
    """One peer's ``calls`` (``mode`` seq or pipe), with host B's CPU and its cell's."""
    peer = subprocess.Popen([sys.executable, "-c", PEER, addr, str(calls), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert peer.stdin is not None and peer.stdout is not None
    try:
        if peer.stdout.readline().strip() != "ready":
            raise SystemExit("p2p_host_cpu.py: the peer did not connect")
        pids = tree(host.pid)
        host_before, all_before = on_cpu(host.pid), sum(on_cpu(p) for p in pids)
        peer.stdin.write("\n")
        peer.stdin.flush()
        result: dict[str, float] = json.loads(peer.stdout.readline())
        host_ns = on_cpu(host.pid) - host_before
        cell_ns = sum(on_cpu(p) for p in pids) - all_before - host_ns
        result["host_us"] = host_ns / calls / 1000
        result["cell_us"] = cell_ns / calls / 1000
        peer.stdin.write("\n")
        peer.stdin.flush()
        peer.wait(60)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cell", choices=("cxx", "python"), default="cxx")
    add_compare(parser, "a host B")
    options = parser.parse_args()
    hosts_b = variants(options)
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        (v, m): [] for v in hosts_b for m in ("seq", "pipe")}
    with tempfile.TemporaryDirectory(prefix="ww-bench-hostcpu-") as directory:
        if options.cell == "cxx":
            try:
                exporter = [str(build_cell(Path(directory, "cxx-build"), p2p.WW)), "export"]
            except RuntimeError as e:
                raise SystemExit(f"p2p_host_cpu.py: the C++ cell: {str(e).splitlines()[0]}"
                                 ) from None
        else:
            exporter = [p2p._cell(directory, "exporter.py", p2p.EXPORTER)]
        hosts = {}
        try:
            for i, (variant, src) in enumerate(hosts_b.items()):
                hosts[variant] = p2p.start_b(directory, exporter, f"b{i}", src)
            for n in range(options.rounds):
                order = list(hosts_b)
                for variant in order if n % 2 == 0 else order[::-1]:
                    host, addr = hosts[variant]
                    for mode in ("seq", "pipe"):
                        results[(variant, mode)].append(turn(host, addr, options.calls, mode))
        finally:
            for host, _ in hosts.values():
                p2p.stop_b(host)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{options.calls} calls, {options.cell} cell, median of {options.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f} at the end"
          + (f"; SRC = {options.compare}" if options.compare else ""))
    print(f"{'':<11}{'B host/call':>12}{'B cell/call':>12}{'calls/s':>9}{'median':>9}"
          "   B host each round")
    for (variant, mode), rounds in results.items():
        def median(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)
        each = " ".join(f"{r['host_us']:.0f}" for r in rounds)
        latency = f"{median('median_us'):>7.0f}us" if mode == "seq" else f"{'':>9}"
        print(f"{variant + ' ' + mode:<11}{median('host_us'):>10.1f}us"
              f"{median('cell_us'):>10.1f}us{median('per_s'):>9.0f}{latency}   {each}")


if __name__ == "__main__":
    main()
