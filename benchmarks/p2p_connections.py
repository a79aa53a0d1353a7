"""What remote peers' connections cost a ww libp2p host, and what it holds at its bounds.

    .venv/bin/python benchmarks/p2p_connections.py [--compare OTHER/src]

A host (:class:`ww.p2p.host.Node` listening on 127.0.0.1, a process of its own, a fresh one
for each of the three phases below, so that memory one phase freed does not hide what the
next costs) is connected to from this process; its open file descriptors and resident
memory are read from /proc (``VmRSS``, and ``VmHWM``: the peak), memory as MiB over the
idle host's:

1. ``stalled handshakes``: 300 TCP connections that never send a byte, read after 2 s;
2. ``peer ids``: ``MAX_INBOUND + 20`` new peer ids connect (Noise and Yamux, as
   :mod:`tests.p2p.sybils` does) and stay (the cost of one connection: the RSS grown,
   divided by the connections held): from 127.0.0.1 up to its ``MAX_PER_LOOPBACK``, then
   ``MAX_PER_IP`` from each of 127.0.0.2, 127.0.0.3, ... (``sybils.filling``), the 20 past
   the cap from 127.0.0.1 and 127.0.0.2, each at its bound; then ``+ streams``: each held
   connection opens ``MAX_NEGOTIATING + 16`` streams that never name a protocol;
3. ``one conn's streams``: one connection opens 4000 such streams at once.

Streams are read when the host has ended all it will end at once, or 8 s after they were
opened (before its 10 s negotiation timeout ends the rest).

``--compare OTHER/src`` runs the same phases against a host built from another checkout's
package (its process started with ``PYTHONPATH=OTHER/src``): before and after, in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.p2p.sybils import connect, filling  # noqa: E402
from ww.p2p.admission import MAX_INBOUND, MAX_NEGOTIATING  # noqa: E402

ONE_CONN_STREAMS = 4000

HOST = """
import sys
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
node = Node(Identity.from_private_key(PrivateKey.generate()), ["/ip4/127.0.0.1/tcp/0"],
            announce=False, warn=lambda message: None)
node.start()
print(node.addrs[0], flush=True)
sys.stdin.read()
node.stop()
"""


def _status(pid: int) -> tuple[int, float, float]:
    """(open fds, VmRSS MiB, VmHWM MiB) of ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    mib = lambda key: int(fields[key].split()[0]) / 1024  # noqa: E731
    return len(os.listdir(f"/proc/{pid}/fd")), mib("VmRSS"), mib("VmHWM")


Row = tuple[str, int, float, float, str]


class Host:
    """A fresh host process (its memory starts clean for each phase)."""

    def __init__(self, src: str | None) -> None:
        env = {**os.environ, "PYTHONPATH": src} if src else None
        self.proc = subprocess.Popen([sys.executable, "-c", HOST], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.addr = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        self.port = int(self.addr.split("/tcp/")[1].split("/")[0])
        self.idle = self.status()

    def status(self) -> tuple[int, float, float]:
        return _status(self.proc.pid)

    def row(self, phase: str, notes: str) -> Row:
        fds, rss, hwm = self.status()
        return phase, fds, rss - self.idle[1], hwm - self.idle[1], notes

    def stop(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _hold(stream: Any, ended: list[int]) -> None:
    """Read ``stream`` until the host ends it (a reset, or its negotiation timeout)."""
    try:
        while await stream.read(4096):
            pass
    except Exception:
        pass
    ended.append(1)


async def _open(conn: Any, n: int, nursery: trio.Nursery, ended: list[int]) -> None:
    for _ in range(n):
        nursery.start_soon(_hold, await conn.open_stream(), ended)


async def _settle(ended: list[int], expected: int, opened: float) -> None:
    """Wait until ``expected`` streams have ended, but not into the host's 10 s timeout."""
    while len(ended) < expected and time.monotonic() - opened < 8:
        await trio.sleep(0.1)


def stalled_handshakes(src: str | None) -> list[Row]:
    host = Host(src)
    try:
        socks = [socket.create_connection(("127.0.0.1", host.port)) for _ in range(300)]
        time.sleep(2)  # a benchmark: let the host accept what it will
        row = host.row("stalled handshakes", "300 opened, held 2 s")
        for sock in socks:
            sock.close()
        return [("idle", *host.idle, ""), row]
    finally:
        host.stop()


def _on_host(src: str | None, phase: Any) -> list[Row]:
    """``await phase(host, rows)`` on a fresh host; the rows it added."""
    host = Host(src)
    rows: list[Row] = []
    try:
        trio.run(phase, host, rows)
    finally:
        host.stop()
    return rows


async def peer_ids(host: Host, rows: list[Row]) -> None:
    held = []
    async with trio.open_nursery() as nursery:
        for source in filling(MAX_INBOUND) + ["127.0.0.1", "127.0.0.2"] * 10:
            try:
                with trio.fail_after(30):
                    held.append(await connect(host.addr, nursery, source=source))
            except Exception:
                pass
        await trio.sleep(1)
        row = host.row("peer ids", f"{len(held)} held")
        rows.append((*row[:-1], f"{len(held)} held, {row[2] / len(held):.3f} MiB each"))
        ended: list[int] = []
        per_conn = MAX_NEGOTIATING + 16
        async with trio.open_nursery() as streams:
            for conn in held:
                await _open(conn, per_conn, streams, ended)
            opened = time.monotonic()
            await _settle(ended, len(held) * (per_conn - MAX_NEGOTIATING), opened)
            rows.append(host.row("+ streams", f"{per_conn} a connection, "
                                 f"{len(ended)} ended by the host"))
            streams.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def one_connection(host: Host, rows: list[Row]) -> None:
    async with trio.open_nursery() as nursery:
        conn = await connect(host.addr, nursery)
        # py-libp2p's Yamux opens at most 256 streams at a time; an attacker need not.
        conn.stream_backlog_semaphore = trio.Semaphore(ONE_CONN_STREAMS)
        ended: list[int] = []
        await _open(conn, ONE_CONN_STREAMS, nursery, ended)
        await _settle(ended, ONE_CONN_STREAMS - MAX_NEGOTIATING, time.monotonic())
        rows.append(host.row("one conn's streams",
                             f"{ONE_CONN_STREAMS} opened, {len(ended)} ended by the host"))
        nursery.cancel_scope.cancel()


def measure(src: str | None) -> list[Row]:
    return (stalled_handshakes(src) + _on_host(src, peer_ids)
            + _on_host(src, one_connection))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", metavar="SRC",
                        help="also measure a host built from SRC (another checkout's src)")
    options = parser.parse_args()
    variants = {"this": None} | ({"SRC": os.path.abspath(options.compare)}
                                 if options.compare else {})
    results = {name: measure(src) for name, src in variants.items()}
    print(f"# x86_64, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()) + " at the end"
          + (f"; SRC = {options.compare}" if options.compare else ""))
    print("# RSS and peak: MiB over the idle host's RSS (idle: the host's own)")
    print(f"{'host':<6}{'phase':<20}{'fds':>6}{'RSS':>8}{'peak':>8}  notes")
    for name, rows in results.items():
        for phase, fds, rss, hwm, notes in rows:
            print(f"{name:<6}{phase:<20}{fds:>6}{rss:>8.1f}{hwm:>8.1f}  {notes}")


if __name__ == "__main__":
    main()
