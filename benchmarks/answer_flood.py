"""What a remote peer that asks for big answers and never reads them makes host B hold.

    .venv/bin/python benchmarks/answer_flood.py [--conns 1] [--streams 8] [--calls 64]
        [--size 4194304] [--watch 25] [--py] [--ipfs] [--compare ../main/src]

Host B is `ww run --with-p2p` with a Python cell exporting a ``Service`` whose ``blob N``
answers N bytes.  This process is the attacker (tests/p2p/deaf_peer.py): ``--conns`` lane
connections, each a new identity, ``--streams`` `/ww/0.1.0` streams each, on each a
bootstrap, ``service()`` and ``--calls`` pipelined ``blob --size`` calls (about 100 bytes
each), and not a byte of any answer read.  For ``--watch`` seconds host B's resident memory
is sampled every 50 ms (the `ww run` process; its cell apart).  Printed: the peak growth over
its resident memory before the attack, when the attacker's streams were cut off, whether
host B's memory guard hung up its cell's fd 3 (its stderr line), and whether an honest
`ww call` is still answered afterwards.  ``--py``: the attacker is a py-libp2p peer instead
(one bare :class:`ww.p2p.host.Node`, ``--streams`` streams, ``--conns`` ignored), which host B
serves through its splice rather than the lane.  ``--ipfs``: the cell adds an 8 MiB file and
exports its IPFS capability itself (the host's own object, so remote calls on it never cross
fd 3), and each of the attacker's ``--calls`` is a pipelined ``cat`` + ``read(--size)`` pair
on it (``--size`` at most 4 MiB).  ``--compare SRC``: the same against the ww
of SRC.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2p import stop_b  # noqa: E402

from tests.p2p.deaf_peer import (  # noqa: E402
    BLOB_EXPORTER,
    IPFS_EXPORTER,
    blob_calls,
    deaf_py_streams,
    deaf_streams,
    ipfs_read_calls,
)

WW = str(Path(sys.executable).with_name("ww"))
GUARD = "held more than"

def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def calls(args: argparse.Namespace) -> bytes:
    return (ipfs_read_calls(args.cid, args.calls, args.size) if args.ipfs
            else blob_calls(args.calls, args.size))


async def attack(pid: int, addr: str, args: argparse.Namespace) -> dict[str, object]:
    base = rss(pid)
    frames = calls(args)
    started = time.monotonic()
    made = [await deaf_streams(addr, args.streams, frames) for _ in range(args.conns)]
    lost = [p.lost for _, protocols in made for p in protocols]
    cut_at: list[float] = []
    for f in lost:
        f.add_done_callback(lambda _f: cut_at.append(time.monotonic() - started))
    peak = 0
    while time.monotonic() - started < args.watch:
        peak = max(peak, rss(pid) - base)
        await asyncio.sleep(0.05)
    for conn, _ in made:
        conn.close()
    return {"peak_growth_mib": round(peak / (1 << 20), 1),
            "streams_cut": f"{len(cut_at)}/{len(lost)}",
            "cut_after_s": [round(t, 1) for t in sorted(cut_at)[:1] + sorted(cut_at)[-1:]]}


def attack_py(pid: int, addr: str, args: argparse.Namespace,
              directory: str) -> dict[str, object]:
    """The same from a py-libp2p peer (host B's splice path)."""
    import threading

    from ww.core.identity import load_or_create
    from ww.p2p.host import Node

    node = Node(load_or_create(Path(directory) / "peer"), listen=[], serve_ww=False,
                announce=False, warn=lambda message: None)
    node.start()
    base = rss(pid)
    started = time.monotonic()
    done = threading.Event()
    watched = lambda: done.is_set() or time.monotonic() - started > args.watch  # noqa: E731
    try:
        future = node.submit(deaf_py_streams, node, addr, args.streams,
                             calls(args), watched, args.watch + 30)
        peak, cut_after = 0, None
        while time.monotonic() - started < args.watch:
            peak = max(peak, rss(pid) - base)
            if cut_after is None and future.done():
                cut_after = round(time.monotonic() - started, 1)
            time.sleep(0.05)
        done.set()
        cut = future.result(60)
    finally:
        node.stop()
    return {"peak_growth_mib": round(peak / (1 << 20), 1),
            "streams_cut": f"{cut}/{args.streams}",
            "all_cut_after_s": cut_after if cut == args.streams else None}


def run(src: str | None, args: argparse.Namespace, directory: str) -> dict[str, object]:
    home = os.path.join(directory, "home-b" + ("-compare" if src else ""))
    os.makedirs(home, exist_ok=True)
    env = {**os.environ, "WW_HOME": home}
    flags: list[str] = []
    if src:
        env["PYTHONPATH"] = src
        flags = ["--env", f"PYTHONPATH={src}"]
    cell = os.path.join(directory, "blob.py")
    with open(cell, "w") as f:
        f.write("#!/usr/bin/env python3\n"
                + (IPFS_EXPORTER if args.ipfs else BLOB_EXPORTER).lstrip())
    os.chmod(cell, 0o755)
    errors = open(os.path.join(directory, "b.err"), "w+")
    if args.ipfs:
        flags.append("--with-ipfs")
    b = subprocess.Popen([WW, "run", "--with-p2p", "--listen", "/ip4/127.0.0.1/tcp/0", *flags,
                          cell], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=errors, text=True, env=env)
    try:
        assert b.stdout is not None
        addr = b.stdout.readline().strip()
        if args.ipfs:
            args.cid = b.stdout.readline().split()[0]
        if not addr:
            raise SystemExit("host B did not start")
        out = (attack_py(b.pid, addr, args, directory) if args.py
               else asyncio.run(attack(b.pid, addr, args)))
        honest = subprocess.run([WW, "call", "--timeout", "60", addr, "echo", "still", "here"],
                                capture_output=True, text=True, timeout=120, env=env)
        errors.seek(0)
        out["fd3_hung_up"] = GUARD in errors.read()
        out["honest_call"] = honest.stdout.strip() or honest.stderr.strip()[-80:]
        return out
    finally:
        stop_b(b)
        errors.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--calls", type=int, default=64)
    p.add_argument("--size", type=int, default=4 << 20)
    p.add_argument("--watch", type=float, default=25.0)
    p.add_argument("--py", action="store_true", help="the attacker is a py-libp2p peer")
    p.add_argument("--ipfs", action="store_true",
                   help="the cell exports its IPFS capability; the calls are cat + read pairs")
    p.add_argument("--compare", metavar="SRC", help="also against the ww of this src directory")
    args = p.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
          f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.conns} connection(s) x {args.streams} streams x {args.calls} calls of "
          f"{args.size} bytes, answers never read, watched {args.watch:g} s")
    with tempfile.TemporaryDirectory() as directory:
        for src in [None, args.compare] if args.compare else [None]:
            print("this checkout" if src is None else src, run(src, args, directory),
                  flush=True)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
