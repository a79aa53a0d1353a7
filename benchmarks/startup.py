"""Median wall time of `ww run /bin/true` next to `python -c pass` and a bare `bwrap`, in one run.

    .venv/bin/python benchmarks/startup.py [--runs 50]

All commands run alternately, so machine noise hits them alike.  The last two lines are the
ratio of the medians of `ww run /bin/true` and `python -c pass` of the same virtualenv (the
target: at most 3), in wall time and in CPU time (user + system of the command and of what
it waited for): on a busy machine CPU time is the steadier, since waiting for a core is not
in it.  The bare bubblewrap line uses the same namespaces and mounts as the jail, so the
difference is what `ww` itself costs: Python start-up, checking the command line and
supervising the cell.  The "through click" line is the same `ww run` parsed by the click
command (as every `ww run` was before the console script's fast path, ww.cli.entry).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

WW = str(Path(sys.executable).with_name("ww"))
CLICK = "import sys; from ww.cli.main import main; main(sys.argv[1:])"
WW_RUN, PASS = "ww run /bin/true", "python -c pass (same venv)"

BARE = [
    "bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
    "--unshare-uts", "--unshare-cgroup", "--cap-drop", "ALL", "--die-with-parent",
    "--new-session", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin", "--proc", "/proc",
    "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true",
]  # fmt: skip


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the command and every process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stderr=subprocess.DEVNULL if "--jail=none" in argv else None)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    commands = {
        WW_RUN: [WW, "run", "/bin/true"],
        "ww run --jail=none /bin/true": [WW, "run", "--jail=none", "/bin/true"],
        "bare bwrap /bin/true": BARE,
        "ww run /bin/true (through click)": [sys.executable, "-c", CLICK, "run", "/bin/true"],
        PASS: [sys.executable, "-c", "pass"],
    }
    # Byte-compile the package first, as an installed package is: with
    # PYTHONDONTWRITEBYTECODE set or stale .pyc files, every run would compile it again.
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "src"), quiet=1)
    for argv in commands.values():  # warm the page cache
        subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            w, c = timed(argv)
            wall[name].append(w)
            cpu[name].append(c)
    print(f"{'command':34} {'median':>9} {'p10':>9} {'p90':>9} {'cpu':>9}   "
          f"({args.runs} runs each)")
    for name, xs in wall.items():
        xs.sort()
        p10, p90 = xs[len(xs) // 10], xs[(len(xs) * 9) // 10]
        print(f"{name:34} {statistics.median(xs) * 1000:7.1f}ms {p10 * 1000:7.1f}ms "
              f"{p90 * 1000:7.1f}ms {statistics.median(cpu[name]) * 1000:7.1f}ms")
    for what, samples in (("wall", wall), ("cpu", cpu)):
        ratio = statistics.median(samples[WW_RUN]) / statistics.median(samples[PASS])
        print(f"{WW_RUN} / python -c pass, {what} time: {ratio:.1f}x (medians)")


if __name__ == "__main__":
    main()
