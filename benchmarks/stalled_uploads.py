"""`ww daemon`'s memory under uploads that stall: its resident size at rest, while N `add`s of
a large file each send part of their body and then nothing, and after they end.

    .venv/bin/python benchmarks/stalled_uploads.py [--uploads 40] [--mib 32]
                                                   [--end close|cut] [--dir DIR]

Each client sends the start of a multipart `add` of a file of 1 TiB, then as much of the
file as the daemon reads, up to ``--mib`` MiB, until no client has been able to send for 3
seconds: the 16 that hold an upload place (``ww.serve.rpc.UPLOADS``) are taken in by their
`add`s, the others wait for a place with what hypercorn read of their bodies (and beyond
``ww.serve.server.CONNECTIONS``, 128, in the kernel's backlog, not yet accepted). Then they
end: ``close``, the clients hang up; ``cut``, the clients stay and the daemon refuses each
body that brought nothing for 60 s (``BODY_STALL``), 16 at a time, so about three minutes
for 40. The daemon's resident size (VmRSS) is printed each second until it has not changed
for 5 seconds (``close``), or once every upload has been answered (``cut``), with its peak
(VmHWM). A fresh daemon on a fresh repository in a temporary directory under DIR (default:
the system's temporary directory), removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from daemon import start_daemon  # benchmarks/daemon.py, beside this script

BOUNDARY = "stalledboundary"


def status(pid: int, key: str) -> float:
    """A field of /proc/PID/status (VmRSS, VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_upload(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.sendall(
        f"POST /api/v0/add HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        f"boundary={BOUNDARY}\r\nContent-Length: {1 << 40}\r\n\r\n--{BOUNDARY}\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode())
    sock.setblocking(False)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--mib", type=int, default=32, help="MiB each client sends at most")
    parser.add_argument("--end", choices=["close", "cut"], default="close")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ww-stalled-", dir=args.dir))
    proc, host, port = start_daemon(work / "home")
    try:
        time.sleep(1)  # the start-up's own allocations settle
        rest = status(proc.pid, "VmRSS")
        print(f"at rest                 {rest:5.0f} MiB")
        socks = [open_upload(host, port) for _ in range(args.uploads)]
        sent = dict.fromkeys(socks, 0)
        piece = os.urandom(1 << 20)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 3:
            sending = [s for s in socks if sent[s] < args.mib << 20]
            _, writable, _ = select.select([], sending, [], 0.2)
            for sock in writable:
                try:
                    sent[sock] += sock.send(piece)
                    idle_since = time.monotonic()
                except BlockingIOError:
                    pass
        mib = sorted(n / (1 << 20) for n in sent.values())
        print(f"stalled                 {status(proc.pid, 'VmRSS'):5.0f} MiB   "
              f"(sent {sum(mib):.0f} MiB, {mib[0]:.1f}-{mib[-1]:.1f} a client)")
        if args.end == "close":
            for sock in socks:
                sock.close()
        else:
            open_socks = list(socks)
            while open_socks:  # each is answered (a 400) and closed by the daemon
                readable, _, _ = select.select(open_socks, [], [], 10)
                for sock in readable:
                    try:
                        if sock.recv(1 << 16) == b"":
                            open_socks.remove(sock)
                            sock.close()
                    except ConnectionError:
                        open_socks.remove(sock)
                        sock.close()
                print(f"  {len(open_socks)} left  {status(proc.pid, 'VmRSS'):5.0f} MiB")
        last, steady = status(proc.pid, "VmRSS"), time.monotonic()
        while time.monotonic() - steady < 5:
            time.sleep(1)
            now = status(proc.pid, "VmRSS")
            if abs(now - last) >= 1:
                last, steady = now, time.monotonic()
        print(f"after they ended        {last:5.0f} MiB   (peak {status(proc.pid, 'VmHWM'):.0f} "
              f"MiB; {last - rest:+.0f} MiB against at rest)")
        print(f"# {args.uploads} uploads, up to {args.mib} MiB each, end: {args.end}; "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
