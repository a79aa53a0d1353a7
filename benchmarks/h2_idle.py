"""How long `ww daemon` keeps HTTP/2 connections that have no stream open, and how long its
stop takes with some open.

    .venv/bin/python benchmarks/h2_idle.py [--keep-alive 5] [--limit 40]

A fresh daemon (API only, ``ww.serve.server.KEEP_ALIVE`` set to ``--keep-alive``), and five
HTTP/2 connections (prior knowledge, the h2 library as the client) opened at once:
``preface``, its preface and SETTINGS only; ``reset``, one request opened and reset by its
client; ``done``, one `version` answered; ``pings``, a PING every second from its preface
on; ``done+pings``, the same once its `version` is answered.  For each, the seconds until
the daemon ended it, or ``still open`` after ``--limit`` seconds.  Then three ``preface``
connections are opened (each has had a PING answered) and the daemon is sent SIGTERM: the
seconds until it has stopped.  Run it on another checkout's code by putting that code in
this checkout's place (the daemon runs this checkout's ``ww``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.serve.conftest import Daemon  # noqa: E402

VERSION = [(":method", "POST"), (":path", "/api/v0/version"), (":scheme", "http"),
           (":authority", "x")]


def connect(daemon: Daemon) -> tuple[socket.socket, Any]:
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def until_end(sock: socket.socket, conn: Any, limit: float,
              ping_every: float | None = None) -> str:
    """How long until the daemon ends the connection, answering what it sends; a PING every
    ``ping_every`` seconds if given."""
    start = time.monotonic()
    try:
        while time.monotonic() - start < limit:
            sock.settimeout(ping_every or limit)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if ping_every:
                    conn.ping(b"pingpong")
                    sock.sendall(conn.data_to_send())
                    continue
                break
            except ConnectionResetError:
                return f"ended after {time.monotonic() - start:.1f} s (reset)"
            if not data:
                return f"ended after {time.monotonic() - start:.1f} s"
            conn.receive_data(data)
            sock.sendall(conn.data_to_send())
        return f"still open after {limit:.0f} s"
    finally:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-alive", type=float, default=5.0)
    parser.add_argument("--limit", type=float, default=40.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        daemon = Daemon(Path(home), gateway="off",
                        constants={"ww.serve.server.KEEP_ALIVE": args.keep_alive})
        try:
            def preface() -> str:
                return until_end(*connect(daemon), args.limit)

            def reset() -> str:
                sock, conn = connect(daemon)
                conn.send_headers(1, VERSION)
                conn.reset_stream(1)
                sock.sendall(conn.data_to_send())
                return until_end(sock, conn, args.limit)

            def done(ping_every: float | None = None) -> str:
                sock, conn = connect(daemon)
                conn.send_headers(1, VERSION, end_stream=True)
                sock.sendall(conn.data_to_send())
                return until_end(sock, conn, args.limit, ping_every)

            def pings() -> str:
                return until_end(*connect(daemon), args.limit, ping_every=1.0)

            results: dict[str, str] = {}
            cases = {"preface": preface, "reset": reset, "done": done, "pings": pings,
                     "done+pings": lambda: done(1.0)}
            threads = [threading.Thread(target=lambda n=name, f=case: results.__setitem__(
                n, f())) for name, case in cases.items()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for name in cases:
                print(f"keep-alive {args.keep_alive:g} s: {name:11s} {results[name]}")
            held = [connect(daemon) for _ in range(3)]
            for sock, conn in held:
                conn.ping(b"12345678")
                sock.sendall(conn.data_to_send())
                for _ in range(100):  # the daemon's SETTINGS first, then the answer
                    data = sock.recv(65536)
                    if not data or any(isinstance(event, h2.events.PingAckReceived)
                                       for event in conn.receive_data(data)):
                        break
            start = time.monotonic()
            status, _ = daemon.stop()
            print(f"SIGTERM with 3 preface-only connections open: stopped after "
                  f"{time.monotonic() - start:.1f} s, status {status}")
            for sock, _ in held:
                sock.close()
        finally:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()


if __name__ == "__main__":
    main()
