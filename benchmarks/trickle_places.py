"""`ww daemon`'s API held by uploads that trickle: how long a `version` waits beside N `add`s
whose clients each send a byte of their body every ``--every`` seconds (never silent for
``EVICT_AFTER``, 5 s).

    .venv/bin/python benchmarks/trickle_places.py [--uploads 200] [--every 1]
                                                  [--connections N] [--limit 120]
                                                  [--src OTHER/src]

The clients open their `add`s one after the other (the 16 first take the upload places,
``ww.serve.rpc.UPLOADS``; beyond ``ww.serve.server.CONNECTIONS``, 128, or ``--connections``,
they wait in the kernel's backlog), each sending its head and the start of a body of 1 GiB;
a client the daemon cuts opens its `add` again, as an attacker would (not with
``--no-reopen``).  Once all are open a
`version` is posted, and the seconds until it is answered printed (or ``--limit`` and "not
served").  ``--src`` runs another checkout's ww (``git archive main src | tar -x -C
/tmp/main``, this checkout's compiled extensions copied beside it).  A fresh daemon on a
fresh repository in a temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from daemon import start_daemon  # benchmarks/daemon.py, beside this script

HERE = Path(__file__).resolve().parent
BOUNDARY = "trickleboundary"
HEAD = (f"POST /api/v0/add?pin=false HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        f"boundary={BOUNDARY}\r\nContent-Length: {1 << 30}\r\n\r\n--{BOUNDARY}\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n").encode()


def ww_command(src: Path, connections: int | None) -> list[str]:
    """The command that runs the ww of ``src``, with ``CONNECTIONS`` set if given."""
    setup = f"import sys; sys.path.insert(0, {str(src)!r}); import ww.serve.server as s; "
    if connections is not None:
        setup += f"s.CONNECTIONS = {connections}; "
    return [sys.executable, "-c", setup + "from ww.cli.entry import main; main(sys.argv[1:])"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--limit", type=float, default=120.0)
    parser.add_argument("--src", type=Path, default=HERE.parent / "src")
    parser.add_argument("--no-reopen", action="store_true",
                        help="a client cut does not open its `add` again")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ww-trickle-"))
    proc, host, port = start_daemon(work / "home", ww_command(args.src.resolve(),
                                                              args.connections))
    done = threading.Event()
    socks: list[socket.socket] = []
    reopened = [0]

    def open_upload() -> socket.socket:
        sock = socket.create_connection((host, port))
        sock.sendall(HEAD)
        sock.setblocking(False)
        return sock

    def trickle() -> None:
        while not done.wait(args.every):
            for i, sock in enumerate(socks):
                try:
                    sock.send(b"x")
                except OSError:  # cut: open it again
                    if args.no_reopen or sock.fileno() < 0:
                        continue
                    sock.close()
                    socks[i] = open_upload()
                    reopened[0] += 1

    try:
        socks.extend(open_upload() for _ in range(args.uploads))
        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        time.sleep(2 * args.every)  # every upload has trickled
        start = time.monotonic()
        conn = http.client.HTTPConnection(host, port, timeout=args.limit)
        try:
            conn.request("POST", "/api/v0/version")
            reply = conn.getresponse()
            reply.read()
            took = f"answered after {time.monotonic() - start:.1f} s (status {reply.status})"
        except TimeoutError:
            took = f"not answered in {args.limit:g} s"
        print(f"{args.uploads} uploads trickling a byte every {args.every:g} s, "
              f"connections {args.connections or 'default'}: version {took}; "
              f"{reopened[0]} uploads cut and opened again")
    finally:
        done.set()
        for sock in socks:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
