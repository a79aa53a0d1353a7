"""What the progress bar costs: `ww export FILE` and `ww cat` with stderr on a terminal (the
bar drawn) and on /dev/null (no bar), alternately, in one run.

    .venv/bin/python benchmarks/progress.py [--size-mib 512] [--runs 5] [--dir /dev/shm]

The file and a fresh repository per run live under --dir (memory by default: on a disk the
disk's rate hides what the command itself costs).  Each line is the median wall time and CPU
time (user + system of the command) of the runs, and the rate.  The terminal is a
pseudo-terminal whose output is read and thrown away as it comes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WW = str(Path(sys.executable).with_name("ww"))


def timed(argv: list[str], env: dict[str, str], on_terminal: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one run; stderr on a pty (drained) or /dev/null."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    if on_terminal:
        master, slave = os.openpty()
        drained = threading.Thread(target=_drain, args=(master,), daemon=True)
        drained.start()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=slave, check=True)
        os.close(slave)
        drained.join()
        os.close(master)
    else:
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ww-progress-bench.", dir=args.dir))
    try:
        data = work / "data.bin"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        home = work / "home"
        env = {**os.environ, "WW_HOME": str(home)}
        cid = subprocess.run([WW, "export", "-Q", str(data)], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        cases = {
            "ww export, no bar (stderr /dev/null)": ("export", False),
            "ww export, bar (stderr a terminal)": ("export", True),
            "ww cat, no bar (stderr /dev/null)": ("cat", False),
            "ww cat, bar (stderr a terminal)": ("cat", True),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, (command, on_terminal) in cases.items():
                if command == "export":
                    shutil.rmtree(home, ignore_errors=True)  # every add stores every block
                    argv = [WW, "export", str(data)]
                else:
                    argv = [WW, "cat", f"/ipfs/{cid}"]
                    if not home.exists():
                        subprocess.run([WW, "export", "-Q", str(data)], env=env, check=True,
                                       capture_output=True)
                times[name].append(timed(argv, env, on_terminal))
        print(f"# {args.size_mib} MiB under {args.dir}, {args.runs} runs alternating; "
              f"{os.uname().machine}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        print(f"{'':40} {'wall s':>8} {'cpu s':>8} {'MiB/s':>8}")
        for name, runs in times.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"{name:40} {wall:8.2f} {cpu:8.2f} {args.size_mib / wall:8.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
