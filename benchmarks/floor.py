"""What a call costs on this machine before any of ww's code: the floor under benchmarks/p2p.py.

    .venv/bin/python benchmarks/floor.py [--calls 5000]

Rows, each a 100-byte (or one-argument) round trip, sequential (median) and, where it says,
with 64 in flight:

- "C, 2 processes": a C program (built here with gcc) bouncing 100 bytes over a unix
  socketpair between two processes, each waiting in epoll: the cost of waking a process on
  the other core, twice; "C, one core" the same with both pinned to CPU 0.
- "asyncio, 2 processes": the same bounce between two asyncio loops (protocols, no capnp).
- "pycapnp, 2 processes": a pycapnp client calling a pycapnp echo server in another process
  over a socketpair (what a Python cell and its caller cost at the least).
- "pycapnp, 1 process": client and server on one loop in one process: pycapnp's own CPU a
  call, with no wake-up at all.
- "uvloop, 2 C relays": the uvloop pair with two C programs between them, each copying
  bytes from one socketpair to the next (epoll, read, write): four processes on the path, as
  in a remote call through two hosts, with hosts that cost nothing but the copy. What a
  Python cell calling a Python cell could reach at best if the hosts did no more.
- "ww stream": the same two, each pycapnp stream through ``ww.core.capnp_stream`` (what a
  cell's and a host's fd 3 use); "uvloop": those on uvloop's event loop, as ``ww`` runs
  them (``ww.core.bridge.new_loop``).

A remote call in p2p.py wakes four processes in turn (peer, host, cell, host, peer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BOUNCE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y);
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]), sv[2]; char buf[100] = {0};
    double *ts = malloc(sizeof(double) * n);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 1;
    struct epoll_event ev = {.events = EPOLLIN};
    if (fork() == 0) {
        close(sv[0]);
        int e = epoll_create1(0); epoll_ctl(e, EPOLL_CTL_ADD, sv[1], &ev);
        for (;;) {
            epoll_wait(e, &ev, 1, -1);
            ssize_t got = read(sv[1], buf, sizeof buf);
            if (got <= 0) _exit(0);
            if (write(sv[1], buf, got) != got) _exit(1);
        }
    }
    close(sv[1]);
    int e = epoll_create1(0); epoll_ctl(e, EPOLL_CTL_ADD, sv[0], &ev);
    for (int i = 0; i < n; i++) {
        double t = now();
        if (write(sv[0], buf, sizeof buf) != sizeof buf) return 1;
        epoll_wait(e, &ev, 1, -1);
        if (read(sv[0], buf, sizeof buf) <= 0) return 1;
        ts[i] = now() - t;
    }
    qsort(ts, n, sizeof(double), cmp);
    printf("%.1f\n", ts[n / 2]);
    return 0;
}
"""

RELAY_C = r"""
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>
/* argv: FD_A FD_B.  Copies what each end sends to the other until either ends. */
int main(int argc, char **argv) {
    int fd[2] = {atoi(argv[1]), atoi(argv[2])}, e = epoll_create1(0);
    static char buf[1 << 16];
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(e, EPOLL_CTL_ADD, fd[i], &ev);
    }
    for (;;) {
        struct epoll_event ev[2];
        int n = epoll_wait(e, ev, 2, -1);
        for (int k = 0; k < n; k++) {
            int from = ev[k].data.u32;
            ssize_t got = read(fd[from], buf, sizeof buf);
            if (got <= 0) return 0;
            for (ssize_t off = 0; off < got;) {
                ssize_t put = write(fd[1 - from], buf + off, got - off);
                if (put <= 0) return 1;
                off += put;
            }
        }
    }
}
"""

ECHO_CAPNP = """@0xbf5147cbbecf40c1;
interface Echo { call @0 (x :Text) -> (y :Text); }
"""


def c_bounce(directory: str, calls: int, pin: bool) -> float | None:
    """The C bounce's median in µs (None: no gcc here)."""
    exe = _gcc(directory, "bounce", BOUNCE_C)
    if exe is None:
        return None
    cmd = ["taskset", "-c", "0", exe] if pin else [exe]
    return float(subprocess.run([*cmd, str(calls)], check=True, capture_output=True,
                                text=True).stdout)


def _gcc(directory: str, name: str, source: str) -> str | None:
    """``source`` built with gcc as ``name`` in ``directory`` (None: no gcc here)."""
    exe = os.path.join(directory, name)
    if not os.path.exists(exe):
        if shutil.which("gcc") is None:
            return None
        with open(exe + ".c", "w") as f:
            f.write(source)
        subprocess.run(["gcc", "-O2", "-o", exe, exe + ".c"], check=True)
    return exe


class _Bounce(asyncio.Protocol):
    def __init__(self, serve: bool) -> None:
        self.serve = serve
        self.got: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.serve:
            self.transport.write(data)  # type: ignore[attr-defined]
        elif self.got is not None and not self.got.done():
            self.got.set_result(data)


async def _asyncio_side(sock: socket.socket, serve: bool, calls: int) -> float:
    loop = asyncio.get_running_loop()
    _, p = await loop.connect_accepted_socket(lambda: _Bounce(serve), sock=sock)
    if serve:
        done = loop.create_future()
        p.connection_lost = lambda exc: done.done() or done.set_result(None)  # type: ignore
        await done
        return 0.0
    times = []
    for _ in range(calls):
        p.got = loop.create_future()
        started = time.perf_counter()
        p.transport.write(b"x" * 100)
        await p.got  # (100 bytes on a unix socket arrive in one read)
        times.append(time.perf_counter() - started)
    p.transport.close()
    return statistics.median(times) * 1e6


def _forked(run_server, run_client, ends=None) -> float:  # type: ignore[no-untyped-def]
    """``run_server(sock)`` in a child process, ``run_client(sock)`` here; its result.  The
    two ends of a new socketpair, or ``ends`` (the client's, the server's)."""
    a, b = ends or socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        try:
            run_server(b)
        finally:
            os._exit(0)
    b.close()
    try:
        return run_client(a)  # type: ignore[no-any-return]
    finally:
        a.close()
        os.waitpid(pid, 0)


def asyncio_bounce(calls: int) -> float:
    return _forked(lambda s: asyncio.run(_asyncio_side(s, True, calls)),
                   lambda s: asyncio.run(_asyncio_side(s, False, calls)))


def _capnp(directory: str):  # type: ignore[no-untyped-def]
    import capnp

    path = os.path.join(directory, "echo.capnp")
    with open(path, "w") as f:
        f.write(ECHO_CAPNP)
    return capnp, capnp.load(path)


async def _measure(client, calls: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for _ in range(200):  # warm up
        await client.call("hi")
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.call("hi")
        times.append(time.perf_counter() - started)
    room = asyncio.Semaphore(64)

    async def one() -> None:
        async with room:
            await client.call("hi")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return statistics.median(times) * 1e6, calls / (time.perf_counter() - started)


def _runner(loop: str):  # type: ignore[no-untyped-def]
    """asyncio.run on the standard library's loop ("asyncio") or uvloop's."""
    if loop == "asyncio":
        return asyncio.run
    import uvloop

    return uvloop.run


async def _stream(sock: socket.socket, ours: bool):  # type: ignore[no-untyped-def]
    """A pycapnp stream on ``sock``: pycapnp's own protocol, or ww's (ww.core.capnp_stream,
    what a cell's and a host's fd 3 use; pycapnp's own crashes uvloop, ww.core.bridge)."""
    import capnp

    if ours:
        from ww.core import capnp_stream

        return await capnp_stream.connect(sock)
    return await capnp.AsyncIoStream.create_connection(sock=sock)


def relayed(directory: str, calls: int, loop: str = "uvloop",
            ours: bool = True) -> tuple[float, float] | None:
    """:func:`pycapnp_two` with two C relays between its ends (None: no gcc here)."""
    relay = _gcc(directory, "relay", RELAY_C)
    if relay is None:
        return None
    a, b1 = socket.socketpair()
    b2, c1 = socket.socketpair()
    c2, d = socket.socketpair()
    relays = [subprocess.Popen([relay, str(x.fileno()), str(y.fileno())],
                               pass_fds=(x.fileno(), y.fileno())) for x, y in ((b1, b2), (c1, c2))]
    for s in (b1, b2, c1, c2):
        s.close()
    try:
        return pycapnp_two(directory, calls, loop, ours, (a, d))
    finally:
        a.close()
        d.close()
        for r in relays:
            r.wait()


def pycapnp_two(directory: str, calls: int, loop: str = "asyncio", ours: bool = False,
                ends: tuple[socket.socket, socket.socket] | None = None) -> tuple[float, float]:
    capnp, schema = _capnp(directory)
    run = _runner(loop)

    class Echo(schema.Echo.Server):  # type: ignore[name-defined,misc]
        async def call(self, x, **kwargs):  # type: ignore[no-untyped-def]
            return x

    async def server(sock: socket.socket) -> None:
        stream = await _stream(sock, ours)
        await capnp.TwoPartyServer(stream, bootstrap=Echo()).on_disconnect()

    async def client(sock: socket.socket) -> tuple[float, float]:
        stream = await _stream(sock, ours)
        c = capnp.TwoPartyClient(stream)
        return await _measure(c.bootstrap().cast_as(schema.Echo), calls)

    return _forked(lambda s: run(capnp.run(server(s))),  # type: ignore[return-value]
                   lambda s: run(capnp.run(client(s))), ends)


def pycapnp_one(directory: str, calls: int, loop: str = "asyncio",
                ours: bool = False) -> tuple[float, float]:
    capnp, schema = _capnp(directory)

    class Echo(schema.Echo.Server):  # type: ignore[name-defined,misc]
        async def call(self, x, **kwargs):  # type: ignore[no-untyped-def]
            return x

    async def main() -> tuple[float, float]:
        a, b = socket.socketpair()
        ours_, theirs = await _stream(a, ours), await _stream(b, ours)
        server = capnp.TwoPartyServer(theirs, bootstrap=Echo())
        try:
            c = capnp.TwoPartyClient(ours_).bootstrap().cast_as(schema.Echo)
            return await _measure(c, calls)
        finally:
            server.close()

    return _runner(loop)(capnp.run(main()))  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    calls = parser.parse_args().calls
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPython "
          f"{platform.python_version()}, {calls} calls, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    print(f"{'path':24}{'median':>10}{'pipelined calls/s':>20}")
    with tempfile.TemporaryDirectory(prefix="ww-bench-floor-") as directory:
        for name, pin in (("C, 2 processes", False), ("C, one core", True)):
            median = c_bounce(directory, calls * 4, pin)
            print(f"{name:24}" + (f"{median:>8.1f}us" if median is not None else "  (no gcc)"))
        print(f"{'asyncio, 2 processes':24}{asyncio_bounce(calls):>8.1f}us")
        for name, run, loop, ours in (
                ("pycapnp, 2 processes", pycapnp_two, "asyncio", False),
                ("pycapnp, 1 process", pycapnp_one, "asyncio", False),
                ("ww stream, 2 processes", pycapnp_two, "asyncio", True),
                ("ww stream, 1 process", pycapnp_one, "asyncio", True),
                ("uvloop, 2 processes", pycapnp_two, "uvloop", True),
                ("uvloop, 1 process", pycapnp_one, "uvloop", True),
                ("uvloop, 2 C relays", relayed, "uvloop", True)):
            measured = run(directory, calls, loop, ours)
            if measured is None:
                print(f"{name:24}  (no gcc)")
                continue
            median, rate = measured
            print(f"{name:24}{median:>8.1f}us{rate:>20.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
