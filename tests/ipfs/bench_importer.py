"""Importer throughput against plain ``hashlib.sha256`` on the same bytes.

Run: ``.venv/bin/python tests/ipfs/bench_importer.py [MiB]`` (not collected by pytest).
Prints MB/s for: sha256 alone, add_stream with only_hash (chunking, encoding, hashing,
tree building), and a real add into a fresh repository (plus block files and fsyncs).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from ww.ipfs.api import AddOptions
from ww.ipfs.node import EmbeddedNode


def _pieces(data: bytes, size: int = 1 << 20):
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield bytes(view[i : i + size])


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    data = os.urandom(mib << 20)
    pieces = list(_pieces(data))

    def rate(seconds: float) -> float:
        return len(data) / seconds / 1e6

    t = time.perf_counter()
    for piece in pieces:
        h = hashlib.sha256()
        for i in range(0, len(piece), 262144):
            h.update(piece[i : i + 262144])
    sha = rate(time.perf_counter() - t)
    print(f"hashlib.sha256           : {sha:8.0f} MB/s")

    with tempfile.TemporaryDirectory() as tmp:
        node = EmbeddedNode(Path(tmp) / "repo")
        t = time.perf_counter()
        node.add_stream(iter(pieces), AddOptions(only_hash=True))
        only = rate(time.perf_counter() - t)
        print(f"add_stream only_hash     : {only:8.0f} MB/s  ({only / sha:.0%} of sha256)")
        t = time.perf_counter()
        node.add_stream(iter(pieces))
        stored = rate(time.perf_counter() - t)
        print(f"add_stream into the repo : {stored:8.0f} MB/s  ({stored / sha:.0%} of sha256)")
        t = time.perf_counter()
        fd = os.open(Path(tmp) / "plain", os.O_WRONLY | os.O_CREAT, 0o644)
        for piece in pieces:
            os.write(fd, piece)
        os.fsync(fd)
        os.close(fd)
        print(f"plain file write (disk)  : {rate(time.perf_counter() - t):8.0f} MB/s")


if __name__ == "__main__":
    main()
