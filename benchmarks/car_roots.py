"""`dag import` of a CAR with many roots: seconds to import (and pin) a CAR whose header
names ``--roots`` tiny raw blocks, each a root, into a fresh repository.

    .venv/bin/python benchmarks/car_roots.py [--roots 20000] [--rounds 3] [--src OTHER/src]

``--src`` runs another checkout's ww (``git archive main src | tar -x -C /tmp/main``, this
checkout's compiled extensions copied beside it) for a before/after pair.  The repository is
in a temporary directory on the file system of ``$TMPDIR`` (its syncs are what is measured:
say which file system in docs/benchmarks.md), removed afterwards.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", help="another checkout's src directory")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    from ww.core import multihash
    from ww.core.cid import CID, RAW
    from ww.ipfs import car
    from ww.ipfs.node import EmbeddedNode

    blocks = [b"root %d" % i for i in range(args.roots)]
    roots = [CID.v1(RAW, multihash.sha256(block)) for block in blocks]
    out = io.BytesIO()
    car.write_car(out, roots, zip(roots, blocks, strict=True))
    data = out.getvalue()
    times = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            node = EmbeddedNode(Path(tmp) / "repo")
            start = time.perf_counter()
            pinned = node.import_car(io.BytesIO(data))
            times.append(time.perf_counter() - start)
            assert len(pinned) == args.roots and len(node.pins()) == args.roots
            node.close()
    print(f"{args.roots} roots: import and pin {statistics.median(times):.2f} s median "
          f"(min {min(times):.2f}, max {max(times):.2f}, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
