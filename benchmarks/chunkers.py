"""kubo's chunkers in ww: `ww export -n --chunker X` of a random file, for the default size-262144
and the content-defined rabin and buzhash, and the chunker alone (cutting, no hashing).

    .venv/bin/python benchmarks/chunkers.py [--size-mib 64] [--dir /dev/shm]

Reports wall seconds and CPU seconds (user + system of the `ww` process; the CPU figure is the
one to compare on a busy machine) and MiB/s by each.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WW = str(Path(sys.executable).with_name("ww"))
MIB = 1024 * 1024
CHUNKERS = ("size-262144", "buzhash", "rabin")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def export(path: Path, chunker: str) -> tuple[float, float, str]:
    """`ww export -Q -n`: wall seconds, CPU seconds, the CID."""
    cpu, wall = _children_cpu(), time.perf_counter()
    r = subprocess.run([WW, "export", "-Q", "-n", "--chunker", chunker, str(path)],
                       capture_output=True, text=True, check=True)
    return time.perf_counter() - wall, _children_cpu() - cpu, r.stdout.strip()


def split_only(data: bytes, chunker: str) -> tuple[float, float, int]:
    """The chunker alone, in this process: wall seconds, CPU seconds, chunks."""
    from ww.ipfs.chunker import parse

    pieces = [data[i : i + MIB] for i in range(0, len(data), MIB)]
    cpu, wall = time.process_time(), time.perf_counter()
    count = sum(1 for _ in parse(chunker).split(pieces))
    return time.perf_counter() - wall, time.process_time() - cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where the test file goes (default: TMPDIR)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    data = random.Random(12).randbytes(size)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        path = Path(scratch) / "data"
        path.write_bytes(data)
        print(f"{args.size_mib} MiB of random data; load average {os.getloadavg()[0]:.1f}")
        print(f"{'chunker':<12} {'what':<12} {'wall s':>7} {'MiB/s':>7} {'CPU s':>7} "
              f"{'MiB/s':>7}  result")
        for chunker in CHUNKERS:
            for what, (wall, cpu, result) in (("ww export", export(path, chunker)),
                                              ("split only", split_only(data, chunker))):
                print(f"{chunker:<12} {what:<12} {wall:7.2f} {args.size_mib / wall:7.1f} "
                      f"{cpu:7.2f} {args.size_mib / cpu:7.1f}  {result}")


if __name__ == "__main__":
    main()
