"""The CPU each end of a Python cell's pipelined remote calls spends, per call.

    .venv/bin/python benchmarks/p2p_chain_cpu.py [--calls 20000] [--rounds 3]
                                                [--compare OTHER/src]

benchmarks/p2p.py's "cell -> cell" row: a Python cell on host A calling, 64 calls in flight,
the Python exporter behind host B (`ww run --with-p2p` each, on loopback).  Here the caller
makes its warm-up calls and then only ``--calls`` pipelined ones, and the CPU of each side is
read apart: host A with its cell (the children's rusage of this process: `ww run` and what
it waited for), host B alone and its cell (/proc/PID/task/*/schedstat), each less what a
round of no calls costs (start-up, the warm-up), divided by the calls.  The sum over the four
processes is what a call costs the machine: on two cores the pipelined rate cannot pass
two seconds divided by it.  ``--compare OTHER/src`` runs the rounds of another checkout's
ww (``PYTHONPATH``) in turns with this one's.  Linux only.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import p2p  # noqa: E402  (host B, the exporter, the caller cell)
from p2p_host_cpu import add_compare, variants  # noqa: E402

# the caller with its sequential calls taken out: warm-up, then the pipelined ones alone
CALLER = p2p.CALLER.replace("""    times = []
    for _ in range(calls):""", """    times = [1e-6]  # (none measured)
    for _ in range(0):""")
assert CALLER != p2p.CALLER, "p2p.CALLER changed: mend the replace above"


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def one_round(directory: str, caller: str, host_b: object, addr: str, calls: int,
              src: str | None) -> tuple[float, float, float, float]:
    """(host A and its cell, host B, B's cell: CPU seconds; calls a second)."""
    a_before = children_cpu()
    b_tree, b_host = p2p._tree_cpu(host_b.pid)  # type: ignore[attr-defined]
    got = p2p._on_a(directory, [caller, addr, str(calls)], True, src)
    b_tree_after, b_host_after = p2p._tree_cpu(host_b.pid)  # type: ignore[attr-defined]
    return (children_cpu() - a_before, b_host_after - b_host,
            (b_tree_after - b_tree) - (b_host_after - b_host),
            got["pipelined_per_s"] if calls else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    add_compare(parser, "both hosts and cells")
    options = parser.parse_args()
    trees = variants(options)
    results: dict[str, list[list[float]]] = {v: [] for v in trees}
    with tempfile.TemporaryDirectory(prefix="ww-bench-chain-") as directory:
        exporter = p2p._cell(directory, "exporter.py", p2p.EXPORTER)
        caller = p2p._cell(directory, "caller.py", CALLER)
        hosts = {}
        try:
            for i, (variant, src) in enumerate(trees.items()):
                hosts[variant] = p2p.start_b(directory, [exporter], f"b{i}", src)
            for n in range(options.rounds):
                order = list(trees.items())
                for variant, src in order if n % 2 == 0 else order[::-1]:
                    b, addr = hosts[variant]
                    empty = one_round(directory, caller, b, addr, 0, src)
                    full = one_round(directory, caller, b, addr, options.calls, src)
                    per_call = [(f - e) / options.calls * 1e6
                                for f, e in zip(full[:3], empty[:3], strict=True)]
                    results[variant].append([*per_call, full[3]])
        finally:
            for b, _ in hosts.values():
                p2p.stop_b(b)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{options.calls} pipelined calls, median of {options.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f} at the end"
          + (f"; SRC = {options.compare}" if options.compare else ""))
    print(f"{'':<6}{'A+cell/call':>12}{'B host/call':>12}{'B cell/call':>12}{'sum':>9}"
          f"{'calls/s':>9}   calls/s each round")
    for variant, rounds in results.items():
        cols = [statistics.median(r[i] for r in rounds) for i in range(4)]
        each = " ".join(f"{r[3]:.0f}" for r in rounds)
        print(f"{variant:<6}{cols[0]:>10.1f}us{cols[1]:>10.1f}us{cols[2]:>10.1f}us"
              f"{sum(cols[:3]):>7.1f}us{cols[3]:>9.0f}   {each}")


if __name__ == "__main__":
    main()
