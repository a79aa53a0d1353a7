"""What the seccomp filter and the resource limits cost: start-up and RPC rate, A/B.

    .venv/bin/python benchmarks/hardening.py --baseline DIR [--runs 40] [--rounds 3]

DIR holds a copy of the tree before hardening (for example
``mkdir DIR && git archive <commit> src | tar -x -C DIR``); its ``src`` is put first on
PYTHONPATH for the "before" rows, for the host and for the cell alike.  Every variant runs
alternately with the others, so machine noise hits them alike.

Rows:
  before              the baseline tree: no seccomp filter, no limits
  seccomp (default)   this tree, `ww run` with no flags: the seccomp filter, no watchdog
  + all limits        this tree with --memory, --cpu-time, --pids, --fsize and --timeout
                      (the watchdog thread reading the cell's cgroup every 10 ms)
  pids+mem cgroup     this tree with --pids and --memory only: the cell's cgroup
                      (--pids, --memory and --cpu-time are refused without a cgroup, so
                      there is no /proc variant any more)
  --strict            this tree with --strict (a Python helper installs the filter)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WW = str(Path(sys.executable).with_name("ww"))
CELL = str(HERE / "rpc_cell.py")
LIMITS = ["--memory", "1G", "--cpu-time", "600", "--pids", "1000", "--fsize", "1G",
          "--timeout", "600"]
PIDS_MEMORY = ["--memory", "1G", "--pids", "1000"]


def variants(baseline: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    before = dict(os.environ, PYTHONPATH=f"{baseline}/src", WW_ENV=f"PYTHONPATH={baseline}/src")
    now = dict(os.environ)
    return {
        "before": ([], before),
        "seccomp (default)": ([], now),
        "+ all limits": (LIMITS, now),
        "pids+mem cgroup": (PIDS_MEMORY, now),
        "--strict": (["--strict"], now),
    }


def startup(runs: int, vs: dict[str, tuple[list[str], dict[str, str]]]) -> None:
    samples: dict[str, list[float]] = {name: [] for name in vs}
    for flags, env in vs.values():  # warm up
        subprocess.run([WW, "run", *flags, "/bin/true"], env=env, check=True)
    for _ in range(runs):
        for name, (flags, env) in vs.items():
            start = time.perf_counter()
            subprocess.run([WW, "run", *flags, "/bin/true"], env=env, check=True)
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["before"])
    print(f"{'ww run /bin/true':20} {'median':>9} {'p10':>9} {'p90':>9} {'vs before':>10}"
          f"   ({runs} runs each)")
    for name, xs in samples.items():
        xs.sort()
        med = statistics.median(xs)
        print(f"{name:20} {med * 1000:7.1f}ms {xs[len(xs) // 10] * 1000:7.1f}ms "
              f"{xs[len(xs) * 9 // 10] * 1000:7.1f}ms {(med - base) / base:+10.1%}")


def rpc(rounds: int, calls: int, vs: dict[str, tuple[list[str], dict[str, str]]]) -> None:
    best: dict[str, dict[str, float]] = {name: {} for name in vs}
    for _ in range(rounds):
        for name, (flags, env) in vs.items():
            out = subprocess.run([WW, "run", "--with-console", *flags, CELL, "--calls",
                                  str(calls)], env=env, check=True, capture_output=True,
                                 text=True).stdout
            for kind, rate in json.loads(out).items():
                best[name][kind] = max(best[name].get(kind, 0.0), rate)
    print(f"\n{'RPC calls/s':20} {'sequential':>11} {'vs before':>10} {'pipelined':>11} "
          f"{'vs before':>10}   (best of {rounds})")
    for name, rates in best.items():
        row = f"{name:20}"
        for kind in ("sequential", "pipelined"):
            base = best["before"][kind]
            row += f" {rates[kind]:11,.0f} {(rates[kind] - base) / base:+10.1%}"
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a copy of the tree before hardening")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    vs = variants(os.path.abspath(args.baseline))
    startup(args.runs, vs)
    rpc(args.rounds, args.calls, vs)


if __name__ == "__main__":
    main()
