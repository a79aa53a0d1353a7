#!/usr/bin/env python3
"""The cell half of benchmarks/ipfs.py: read a file through the IPFS capability, report MiB/s."""

import json
import sys
import time

import ww.cell

with ww.cell.session() as session:
    start = time.perf_counter()
    total = 0
    for piece in session.ipfs.cat_stream(sys.argv[1]):
        total += len(piece)
    elapsed = time.perf_counter() - start
print(json.dumps({"bytes": total, "seconds": elapsed}))
