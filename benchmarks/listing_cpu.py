"""The host's CPU per ``stat`` and ``ls`` of a cell's IPFS capability, read from the scheduler.

    .venv/bin/python benchmarks/listing_cpu.py [--calls 5] [--rounds 3] [--compare OTHER/src]
                                               [--which huge,large,small,chain] [--chains 1100]

A `ww run --with-ipfs` cell makes its directories the way a cell can (dag-pb blocks added
as files of one raw leaf, named with the dag-pb codec): ``huge``, a HAMT of 8 shards of
20,000 entries (empty identity CIDs named with 3 bytes: 56 bytes of answer each, some 9 MB in
all, just over the 8 MiB an answer may have, so every call fails with one line); ``large``, a
directory of 4000 entries (100 files linked 40 times each, names of 20 bytes: some 480 KB of
answer, past an answer's first 64 KiB); ``small``, an honest directory of those 100 files;
and ``chain``, a HAMT of ``--chains`` entries each at the end of its own chain of 63
single-link sub-shards (63 blocks an entry the cell adds first, some 600 a second; kubo
writes such chains where names share a hash prefix, an entry 7 sub-shards down at most at
its fanout of 256): past 1040 entries a call fails at the bound on the shards a listing
reads.  For each directory and method the cell makes ``--calls`` calls one after the other,
and the host's CPU over them is read (nanoseconds on CPU of the `ww run` process's threads,
/proc/PID/task/*/schedstat: the cell is not counted).  ``--compare OTHER/src`` runs the same
against a host with the ww package of another checkout (``PYTHONPATH``), in turns.  Each
figure is the median over the rounds, per call.  Linux only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from p2p import stop_b  # noqa: E402
from p2p_host_cpu import add_compare, on_cpu, variants  # noqa: E402

WW = str(Path(sys.executable).with_name("ww"))

CELL = r'''
import asyncio, base64, sys, ww.cell

def b32(cid):
    text = cid[1:].upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))

def pb(field, data):
    n, size = len(data), b""
    while n >= 128:
        size, n = size + bytes([n & 127 | 128]), n >> 7
    return bytes([field << 3 | 2]) + size + bytes([n]) + data

SHARD = pb(1, bytes([8, 5, 0x28, 0x22, 0x30, 0x80, 2]))  # UnixFS HAMTShard, fanout 256
DIRECTORY = pb(1, bytes([8, 1]))
NOTHING = bytes([1, 0x55, 0, 0])  # an empty identity CID

async def block(s, body):  # a dag-pb block added as a raw leaf, named by its multihash
    return bytes([1, 0x70]) + b32(await s.ipfs.add(body, cid_version=1, raw_leaves=True))[2:]

def path(cid):
    return "/ipfs/b" + base64.b32encode(cid).decode().lower().rstrip("=")

DEPTH = 63

async def chain(s, i):  # an entry at the end of DEPTH single-link sub-shards
    cid = await block(s, pb(2, pb(1, NOTHING) + pb(2, b"00c%05d" % i)) + SHARD)
    for _ in range(DEPTH - 1):
        cid = await block(s, pb(2, pb(1, cid) + pb(2, b"00")) + SHARD)
    return cid

async def main():
    which, chains = sys.argv[1].split(","), int(sys.argv[2])
    async with ww.cell.connect() as s:
        paths = {}
        if "chain" in which:
            tops = []
            for k in range(0, chains, 16):
                tops += await asyncio.gather(*(chain(s, i)
                                               for i in range(k, min(chains, k + 16))))
            paths["chain"] = path(await block(s, b"".join(pb(2, pb(1, cid) + pb(2, b"00"))
                                                          for cid in tops) + SHARD))
        shards = [await block(s, b"".join(pb(2, pb(1, NOTHING) + pb(2, b"%02Xn" % i))
                                          for _ in range(20_000)) + SHARD) for i in range(8)]
        huge = await block(s, b"".join(pb(2, pb(1, cid) + pb(2, b"%02X" % i))
                                       for i, cid in enumerate(shards)) + SHARD)
        files = [b32(await s.ipfs.add(b"file %d" % i, cid_version=1)) for i in range(100)]
        small = await block(s, b"".join(pb(2, pb(1, cid) + pb(2, b"file-%015d" % i) + b"\x18\x10")
                                        for i, cid in enumerate(files)) + DIRECTORY)
        large = await block(s, b"".join(pb(2, pb(1, files[i % 100]) + pb(2, b"file-%015d" % i)
                                           + b"\x18\x10") for i in range(4000)) + DIRECTORY)
        paths.update(huge=path(huge), large=path(large), small=path(small))
        print("ready", flush=True)
        for line in sys.stdin:
            method, which, calls = line.split()
            for _ in range(int(calls)):
                try:
                    await getattr(s.ipfs, method)(paths[which])
                except Exception as e:
                    assert "more than 8 MiB" in str(e) or "HAMT shards" in str(e), e
            print("done", flush=True)

asyncio.run(main())
'''

WHICH = ("huge", "large", "small", "chain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--which", default=",".join(WHICH),
                        help="the directories to list, of " + ",".join(WHICH))
    parser.add_argument("--chains", type=int, default=1100,
                        help="entries of the chain HAMT (63 blocks the cell adds for each)")
    add_compare(parser, "a host")
    options = parser.parse_args()
    cases = [(method, which) for which in options.which.split(",") for method in ("stat", "ls")]
    hosts_of = variants(options)
    results: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ww-bench-listing-") as directory:
        cell = Path(directory, "cell.py")
        cell.write_text("#!/usr/bin/env python3\n" + CELL)
        cell.chmod(0o755)
        hosts = {}
        try:
            for variant, src in hosts_of.items():
                env = {**os.environ, "WW_HOME": os.path.join(directory, f"home-{variant}")}
                flags = []
                if src:
                    env["PYTHONPATH"] = src
                    flags = ["--env", f"PYTHONPATH={src}"]
                host = subprocess.Popen([WW, "run", "--with-ipfs", *flags, str(cell),
                                         options.which, str(options.chains)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
                assert host.stdout is not None
                if host.stdout.readline().strip() != "ready":
                    raise SystemExit(f"listing_cpu.py: the {variant} cell did not start")
                hosts[variant] = host
            for n in range(options.rounds):
                order = list(hosts_of)
                for variant in order if n % 2 == 0 else order[::-1]:
                    host = hosts[variant]
                    assert host.stdin is not None and host.stdout is not None
                    for method, which in cases:
                        before = on_cpu(host.pid)
                        host.stdin.write(f"{method} {which} {options.calls}\n")
                        host.stdin.flush()
                        if host.stdout.readline().strip() != "done":
                            raise SystemExit("listing_cpu.py: the cell stopped")
                        results.setdefault((variant, method, which), []).append(
                            (on_cpu(host.pid) - before) / options.calls / 1e6)
        finally:
            for host in hosts.values():
                stop_b(host)  # stdin closed: the cell ends
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{options.calls} calls a case, median of {options.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f} at the end"
          + (f"; SRC = {options.compare}" if options.compare else ""))
    print(f"{'':<18}{'host ms/call':>13}   each round")
    for (variant, method, which), rounds in results.items():
        each = " ".join(f"{r:.1f}" for r in rounds)
        print(f"{variant + ' ' + method + ' ' + which:<18}{statistics.median(rounds):>11.1f}ms"
              f"   {each}")


if __name__ == "__main__":
    main()
