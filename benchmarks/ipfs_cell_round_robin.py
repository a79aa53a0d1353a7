#!/usr/bin/env python3
"""A cell reading many IPFS files at once, round-robin: MiB/s and the readers' re-opens.

``ww run --with-ipfs benchmarks/ipfs_cell_round_robin.py [FILES] [FILE_KIB] [READ_KIB]``
adds FILES files of FILE_KIB KiB (default 128 of 1024), opens a reader on each and reads
them all READ_KIB KiB (default 64) at a time, one read per file in turn, every read of a
round in flight at once; prints the bytes, the seconds of the reads and whether every file
came back whole.  With small reads on many files, each reader holds the rest of its block
between reads: more than the cell's read buffers (``ww.caps.ipfs.READ_BUFFERS``) hold, so
the readers least recently read drop theirs and open their stream again when next read.
"""

import asyncio
import hashlib
import json
import random
import sys
import time

import ww.cell

FILES = int(sys.argv[1]) if len(sys.argv) > 1 else 128
FILE_KIB = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
READ_KIB = int(sys.argv[3]) if len(sys.argv) > 3 else 64


async def main() -> None:
    rng = random.Random(7)
    async with ww.cell.connect() as s:
        files = []
        for _ in range(FILES):
            data = rng.randbytes(FILE_KIB * 1024)
            files.append((await s.ipfs.add(data), hashlib.sha256(data).digest()))
        start = time.perf_counter()
        readers = [(await s.ipfs._cap.cat(cid, 0, -1)).reader for cid, _ in files]
        hashes = [hashlib.sha256() for _ in files]
        open_ = list(range(FILES))
        total = 0
        for _ in range(FILE_KIB // READ_KIB + 2):  # bounded: the rounds a file needs, and one
            if not open_:
                break
            got = await asyncio.gather(*[readers[i].read(READ_KIB * 1024) for i in open_])
            still = []
            for i, answer in zip(open_, got, strict=True):
                data = bytes(answer.data)
                hashes[i].update(data)
                total += len(data)
                if data:
                    still.append(i)
            open_ = still
        seconds = time.perf_counter() - start
        whole = all(h.digest() == want for h, (_, want) in zip(hashes, files, strict=True))
    print(json.dumps({"bytes": total, "seconds": seconds, "whole": whole,
                      "mib_s": total / seconds / 2**20}))


asyncio.run(main())
