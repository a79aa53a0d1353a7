"""Garbage collection's memory: what `ww repo gc` holds while it sweeps a repository of N
unpinned blocks, with the sweep naming each block as it goes (`repo/gc`'s stream).

    .venv/bin/python benchmarks/gc_memory.py [--blocks 50000]

Writes N small distinct blocks (unpinned) into a scratch repository, then runs
``Repo.gc(removed=...)`` under tracemalloc, and, for comparison, the listing gc made before
issue 13's fix (``list(iter_multihashes())``, every stored name held at once).  Prints the
peak Python allocation of each, in KiB, and the time gc took.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def main() -> None:
    from ww.core import multihash
    from ww.core.cid import CID, RAW
    from ww.ipfs.repo import Repo

    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repo = Repo(Path(scratch) / "repo")
        for i in range(args.blocks):
            data = b"block %d" % i
            repo.blocks.put(CID.v1(RAW, multihash.sha256(data)), (data,), sync=False)

        tracemalloc.start()
        listed = list(repo.blocks.iter_multihashes())
        _, listing_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(listed) == args.blocks
        del listed

        named = [0]

        def removed(cid: str) -> None:
            named[0] += 1

        tracemalloc.start()
        start = time.perf_counter()
        report = repo.gc(removed)
        took = time.perf_counter() - start
        _, gc_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert report.removed_blocks == named[0] == args.blocks
    print(f"# {args.blocks} unpinned blocks; {platform.machine()}, Python "
          f"{platform.python_version()}")
    print(f"gc (naming each block) peak      {gc_peak / 1024:10.0f} KiB  {took:.1f} s")
    print(f"the old whole listing alone peak {listing_peak / 1024:10.0f} KiB")


if __name__ == "__main__":
    main()
