"""Median wall time of `ww run /bin/true` next to a bare `bwrap ... /bin/true`, in one run.

    .venv/bin/python benchmarks/startup.py [--runs 50]

Both commands run alternately, so machine noise hits them alike.  The bare bubblewrap line
uses the same namespaces and mounts as the jail, so the difference is what `ww` itself
costs: Python start-up, the CLI, checking the command line and supervising the cell.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

WW = str(Path(sys.executable).with_name("ww"))

BARE = [
    "bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
    "--unshare-uts", "--unshare-cgroup", "--cap-drop", "ALL", "--die-with-parent",
    "--new-session", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin", "--proc", "/proc",
    "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true",
]  # fmt: skip


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    commands = {
        "ww run /bin/true": [WW, "run", "/bin/true"],
        "ww run --jail=none /bin/true": [WW, "run", "--jail=none", "/bin/true"],
        "bare bwrap /bin/true": BARE,
        "python -c pass (same venv)": [sys.executable, "-c", "pass"],
    }
    # Byte-compile the package first, as an installed package is: with
    # PYTHONDONTWRITEBYTECODE set or stale .pyc files, every run would compile it again.
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "src"), quiet=1)
    for argv in commands.values():  # warm the page cache
        subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            if "jail=none" in name:
                start = time.perf_counter()
                subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
                samples[name].append(time.perf_counter() - start)
            else:
                samples[name].append(timed(argv))
    print(f"{'command':32} {'median':>9} {'p10':>9} {'p90':>9}   ({args.runs} runs each)")
    for name, xs in samples.items():
        xs.sort()
        p10, p90 = xs[len(xs) // 10], xs[(len(xs) * 9) // 10]
        print(f"{name:32} {statistics.median(xs) * 1000:7.1f}ms {p10 * 1000:7.1f}ms "
              f"{p90 * 1000:7.1f}ms")


if __name__ == "__main__":
    main()
