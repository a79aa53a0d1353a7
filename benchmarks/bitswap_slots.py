"""A peer's fetch while other peers ask for blocks and never read the replies.

    .venv/bin/python benchmarks/bitswap_slots.py [--stallers 8] [--mib 8] [--runs 3]
                                                 [--trickle] [--src OTHER/src]

A server (an embedded node, ww's own libp2p host, on 127.0.0.1) holds a file of 16 leaves,
which each staller asks for (tests/ipfs/bitswap_flood.py's peer that never reads a reply),
and again every second on a stream of its own (as a peer that was given up comes back), and
a file of ``--mib`` MiB, which a fetcher then fetches.  With ``--trickle`` the stallers read
their replies at 16 KiB/s, just fast enough never to be given up for it (SlowReader, 4 KiB
every 0.25 s).  Prints the fetch's time without the stallers and with them (median of
``--runs``, a new fetcher each time; a fetch that fails counts as its time, and is said).
``--src`` runs another checkout's ww (``git archive main src | tar -x -C /tmp/main``), to
compare.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LEAVES = 16


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stallers", type=int, default=8)
    parser.add_argument("--mib", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trickle", action="store_true")
    parser.add_argument("--src", type=Path, default=HERE.parent / "src")
    args = parser.parse_args()
    sys.path[:0] = [str(args.src.resolve()), str(HERE.parent)]

    from tests.ipfs.bitswap_flood import Flooder, SlowReader, want_blocks
    from ww.core.cid import CID
    from ww.ipfs import bitswap, dagpb
    from ww.ipfs.node import EmbeddedNode
    from ww.p2p import host_for_ipfs

    def data(size: int, seed: int) -> bytes:
        return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)

    failed: list[str] = []

    def fetch(base: Path, name: str, addr: str, cid: str) -> float:
        with EmbeddedNode(base / name, new_host=host_for_ipfs()) as fetcher:
            fetcher.connect(addr)
            started = time.perf_counter()
            try:
                size = sum(len(chunk) for chunk in fetcher.cat(cid))
            except Exception as e:  # noqa: BLE001 - the outcome measured
                failed.append(f"{name}: {e}")
                size = args.mib << 20
            seconds = time.perf_counter() - started
        assert size == args.mib << 20
        return seconds

    def ask(flooder: Any, peer: str, frame: bytes) -> None:
        """The wants on a stream of their own, closed once written."""
        from libp2p.peer.id import ID

        async def write() -> None:
            stream = await flooder.node.host.new_stream(ID.from_base58(peer),
                                                        [bitswap.PROTOCOL])
            await stream.write(frame)
            await stream.close()

        flooder.node.submit(write)

    with tempfile.TemporaryDirectory(prefix="ww-bitswap-slots-") as tmp:
        base = Path(tmp)
        server = EmbeddedNode(base / "server", new_host=host_for_ipfs())
        stallers: list[Any] = []
        stop = threading.Event()
        try:
            held = server.add_stream([data(LEAVES * 256 * 1024, 1)])
            leaves = [bytes(link.cid) for link in
                      dagpb.decode(server._blocks.get(CID.parse(held))).links]
            cid = server.add_stream([data(args.mib << 20, 2)])
            addr = server.listen(["/ip4/127.0.0.1/tcp/0"]).addresses[0]
            alone = [fetch(base, f"alone{i}", addr, cid) for i in range(args.runs)]
            frame = want_blocks(leaves)
            for i in range(args.stallers):
                staller = (SlowReader(base / f"staller{i}", expected=LEAVES, step=4 << 10)
                           if args.trickle else Flooder(base / f"staller{i}"))
                stallers.append((staller, staller.connect(addr)))

            def again() -> None:
                while not stop.is_set():
                    for staller, peer in stallers:
                        ask(staller, peer, frame)
                    stop.wait(1.0)

            asker = threading.Thread(target=again, daemon=True)
            asker.start()
            time.sleep(2.0)  # their replies written as far as their windows go
            stalled = [fetch(base, f"stalled{i}", addr, cid) for i in range(args.runs)]
            stats = server._net.stats()  # type: ignore[union-attr]
        finally:
            stop.set()
            for staller, _ in stallers:
                staller.close()
            server.close()
    kind = "trickling" if args.trickle else "stalling"
    print(f"# {args.stallers} {kind} stallers, fetch of {args.mib} MiB, {args.runs} runs; ww from "
          f"{args.src}; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"fetch alone                {statistics.median(alone):6.2f} s  "
          f"({', '.join(f'{s:.2f}' for s in alone)})")
    print(f"fetch beside the stallers  {statistics.median(stalled):6.2f} s  "
          f"({', '.join(f'{s:.2f}' for s in stalled)})")
    for line in failed:
        print(f"FAILED {line}")
    print(f"server: replies given up {stats.get('replies_given_up', '-')}, "
          f"gone overdue {stats.get('replies_overdue', '-')}")


if __name__ == "__main__":
    main()
