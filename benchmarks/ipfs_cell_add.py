#!/usr/bin/env python3
"""The cell half of benchmarks/ipfs.py's add: add stdin through the IPFS capability, report
its CID and the seconds it took (the SDK writes 1 MiB pieces, 8 in flight)."""

import json
import sys
import time

import ww.cell

with ww.cell.session() as session:
    start = time.perf_counter()
    cid = session.ipfs.add(sys.stdin.buffer)
    elapsed = time.perf_counter() - start
print(json.dumps({"cid": cid, "seconds": elapsed}))
