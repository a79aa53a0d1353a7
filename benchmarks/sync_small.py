"""A small write to `ww daemon` while another writer has left data unsynced on the same file
system: how long a `dag import` of a one-block CAR, or an `add` of 100 bytes, takes.

    .venv/bin/python benchmarks/sync_small.py [--dirty-mb 2000] [--rounds 3]

A fresh daemon (API only) with its repository in a temporary directory on the file system of
``$TMPDIR``; each round writes ``--dirty-mb`` MiB to a file there without syncing it (another
client's upload, another program), then times one request of each kind, then removes the file
and syncs.  A ``syncfs`` writes out all of it; an ``fsync`` of the request's own files does
not.  Run another checkout's code with ``PYTHONPATH=<its src>`` (its compiled extensions
copied beside it).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.serve.conftest import Daemon, multipart  # noqa: E402
from ww.core import multihash  # noqa: E402
from ww.core.cid import CID, RAW  # noqa: E402
from ww.ipfs import car  # noqa: E402


def timed(url: str, name: str, data: bytes, content_type: str) -> float:
    body, headers = multipart([(name, content_type, data)])
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers),
                                timeout=300) as reply:
        reply.read()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dirty-mb", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        daemon = Daemon(Path(home), gateway="off")
        try:
            for _ in range(args.rounds):
                for kind in ("dag import", "add"):
                    dirty = Path(home) / "dirty"
                    with open(dirty, "wb") as out:
                        for _ in range(args.dirty_mb):
                            out.write(os.urandom(1) * (1 << 20))
                    block = os.urandom(100)
                    if kind == "add":
                        took = timed(f"{daemon.url}/api/v0/add", "a.bin", block,
                                     "application/octet-stream")
                    else:
                        cid = CID.v1(RAW, multihash.sha256(block))
                        out_car = io.BytesIO()
                        car.write_car(out_car, [cid], [(cid, block)])
                        took = timed(f"{daemon.url}/api/v0/dag/import", "c.car",
                                     out_car.getvalue(), "application/vnd.ipld.car")
                    print(f"{args.dirty_mb} MiB unsynced: {kind:10s} of 100 bytes "
                          f"{took * 1000:.0f} ms", flush=True)
                    dirty.unlink()
                    os.sync()
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
