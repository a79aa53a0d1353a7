"""IPFS throughput: `ww export` of a large random file next to hashlib.sha256 over the same
bytes, and a jailed cell reading that file through the IPFS capability, then adding it
through the capability; peak memory.

    .venv/bin/python benchmarks/ipfs.py [--size-mib 1024]

Targets: export at >= 50 % of the hashing rate (stretch 70 %); a cell reads >= 500 MiB/s;
memory flat while the file passes through add.
Uses a fresh repository ($WW_HOME) in a temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WW = str(Path(sys.executable).with_name("ww"))
MIB = 1024 * 1024

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
elapsed = time.perf_counter() - start
sys.stderr.write(r.stderr)
print(r.returncode, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(r.stdout, end="")
"""


def measured(argv: list[str], env: dict[str, str], stdin: str | None = None
             ) -> tuple[float, int, str]:
    """Run argv in a fresh wrapper process (stdin from the file ``stdin``); wall seconds, peak
    RSS (KiB) of its tree, stdout."""
    with open(stdin or os.devnull, "rb") as src:
        r = subprocess.run([sys.executable, "-c", MEASURE, *argv], env=env, check=True,
                           capture_output=True, text=True, stdin=src)
    head, _, out = r.stdout.partition("\n")
    status, elapsed, rss = head.split()
    if status != "0":
        raise SystemExit(f"{argv} failed: {r.stderr}")
    return float(elapsed), int(rss), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None,
                        help="where to put the data and the repository (default: the system's "
                             "temporary directory); /dev/shm takes the disk out of the picture")
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="ww-bench-", dir=args.dir) as tmp:
        env = dict(os.environ, WW_HOME=os.path.join(tmp, "home"))
        data = os.path.join(tmp, "random.bin")
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        # Warm the page cache, then hash the same bytes the same way (1 MiB reads).
        start = time.perf_counter()
        h = hashlib.sha256()
        with open(data, "rb") as f:
            while piece := f.read(MIB):
                h.update(piece)
        start = time.perf_counter()
        h = hashlib.sha256()
        with open(data, "rb") as f:
            while piece := f.read(MIB):
                h.update(piece)
        sha_rate = size / (time.perf_counter() - start) / MIB

        # What the disk takes: the same bytes copied to one new file, then made durable.
        copy = os.path.join(tmp, "copy.bin")
        start = time.perf_counter()
        with open(data, "rb") as src, open(copy, "wb") as dst:
            while piece := src.read(MIB):
                dst.write(piece)
            dst.flush()
            os.fsync(dst.fileno())
        disk_rate = size / (time.perf_counter() - start) / MIB
        os.unlink(copy)

        export_s, export_rss, out = measured([WW, "export", data], env)
        path = out.strip()
        export_rate = size / export_s / MIB

        _, read_rss, out = measured(
            [WW, "run", "--with-ipfs", str(HERE / "ipfs_cell_read.py"), path], env)
        result = json.loads(out)
        assert result["bytes"] == size, result
        read_rate = size / result["seconds"] / MIB

        # The same file added by a cell, into a repository of its own (none of it stored yet).
        add_env = dict(env, WW_HOME=os.path.join(tmp, "add-home"))
        _, add_rss, out = measured(
            [WW, "run", "--with-ipfs", str(HERE / "ipfs_cell_add.py")], add_env, stdin=data)
        result = json.loads(out)
        assert f"/ipfs/{result['cid']}" == path, (result, path)
        add_rate = size / result["seconds"] / MIB

    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"file: {args.size_mib} MiB of random bytes ({path})")
    print(f"{'':34} {'MiB/s':>8} {'vs sha256':>10} {'peak RSS':>10}")
    print(f"{'hashlib.sha256 (1 MiB reads)':34} {sha_rate:8.0f} {'100%':>10} "
          f"{self_rss / 1024:8.0f}MiB")
    print(f"{'copy to one file + fsync (disk)':34} {disk_rate:8.0f} "
          f"{disk_rate / sha_rate:10.0%} {'':>10}")
    print(f"{'ww export (whole command)':34} {export_rate:8.0f} "
          f"{export_rate / sha_rate:10.0%} {export_rss / 1024:8.0f}MiB")
    print(f"{'cell reads via IPFS capability':34} {read_rate:8.0f} "
          f"{read_rate / sha_rate:10.0%} {read_rss / 1024:8.0f}MiB")
    print(f"{'cell adds via IPFS capability':34} {add_rate:8.0f} "
          f"{add_rate / sha_rate:10.0%} {add_rss / 1024:8.0f}MiB")
    print("peak RSS: the largest process of the command (ww itself, or the cell)")


if __name__ == "__main__":
    main()
