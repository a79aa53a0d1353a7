"""Remote calls over /ww/0.1.0 on loopback: call rate and latency, cell to cell and shell to cell.

    .venv/bin/python benchmarks/p2p.py [--calls 2000] [--rounds 3] [--compare OTHER/src]

Host B is a real `ww run --with-p2p --listen /ip4/127.0.0.1/tcp/0` whose jailed cell exports
a `Service` that echoes.  Measurements of `Service.call("echo", [])`, each the median of
--rounds rounds:

- "cell -> cell": a jailed cell on host A (`ww run --with-p2p`) dials B and calls: the call
  crosses A's fd 3, A's host, TCP + Noise + Yamux, B's host and B's fd 3 (over the native
  lane at both ends where both have it, docs/p2p.md).
- "peer -> cell": this process is the remote peer, a py-libp2p node (`ww call`'s before the
  lane): the call crosses one py-libp2p connection and B's fd 3.
- "lane -> cell": the same, the peer dialing the native lane as `ww call` does (always this
  checkout's; with ``--compare``, against a B without the lane it falls back to `/noise`).
- "lane -> C++ cell": the same peer, calling a second host B whose cell is the C++ cell of
  tests/cxx/cell.c++ (`cell export`, built as tests/cxx/build.py builds it for the tests):
  no pycapnp in the cell, so what is left at B is the host's own cost.
- "C++ cell -> C++ cell": a jailed C++ cell on host A (`cell call`, the same measurement in
  C++) calling that C++ exporter: no pycapnp at either end but in the two hosts.  (The C++
  cell is one binary for both sides of ``--compare``: only the hosts differ.)
- "C++ peer -> cell", "C++ peer -> C++ cell": the remote peer is tests/cxx/lane_peer.c++ (the
  lane's own C connection, C++ Cap'n Proto, the measurement of `cell call`): no Python in
  the caller, so the figures are host B's and its cell's.  "C++ peer /noise -> C++ cell": the
  same peer proposing `/noise` alone, as any libp2p peer that is not ww does: host B serves
  it on its py-libp2p node (docs/p2p.md), not on the lane.  "... (--inbound calls)": the same
  against a host B started with `--inbound calls`, which serves it on the native connection
  (with ``--compare``, SRC's B is started without the flag, which it may not have: that row
  is then SRC's py-libp2p path).
- "fd 3 only": the same cell code calling its own host's console `ping` over fd 3, for
  scale (no network at all).
- "libp2p echo": two libp2p hosts in this process, a 100-byte echo on a bare stream: the
  part of a remote call that is py-libp2p's (TCP + Noise + Yamux, trio), nothing else.

Sequential calls give the latency (median, p99); "pipelined" keeps 64 calls in flight.
"B CPU" is the CPU time host B and its cell spent per call over the round (Linux /proc): far
less disturbed by a busy machine than the times are; "B host" the part of it that was host
B's own process (`ww run`: the host, its lane, its libp2p node), without the cell's.  Also
timed: one `ww call` from the shell, start to finish (process start-up included).
Everything listens on 127.0.0.1 only, and every peer is stopped at the end.

``--compare OTHER/src`` runs every round a second time, in turns, with the ww package of
another checkout (its host B, its `ww run` callers, and its libp2p node as the peer, each a
process started with ``PYTHONPATH=OTHER/src``): a before/after in one run, on the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.cxx.build import build_cell, build_lane_peer  # noqa: E402

WW = str(Path(sys.executable).with_name("ww"))
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
IN_FLIGHT = 64

EXPORTER = """
import asyncio, os
import ww.cell

class Echo(ww.cell.Service.Server):
    async def call(self, method, args, **kwargs):
        return " ".join(args)  # (echo: tests/cxx/lane_peer.c++ checks one)

async def main():
    async with ww.cell.connect() as s:
        await s.p2p.export(Echo())
        print((await s.p2p.id())[1][0], flush=True)
        eof = asyncio.Event()
        asyncio.get_running_loop().add_reader(0, lambda: os.read(0, 4096) or eof.set())
        await asyncio.wait_for(eof.wait(), 600)

getattr(ww.cell, "run", asyncio.run)(main())  # (SRC may have no run)
"""

# The measurement, shared by the caller cell and this process.
MEASURE = """
import asyncio, statistics, time

async def measure(one, calls):
    for _ in range(50):  # warm up
        await one()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await one()
        times.append(time.perf_counter() - started)
    # IN_FLIGHT chains of calls, each making its next call once its last is answered (as
    # echo_measure.h does): asyncio.wait(FIRST_COMPLETED) over the calls in flight instead
    # costs the caller a callback on each of them per call, which capped this figure
    left = [calls]

    async def chain():
        while left[0]:
            left[0] -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(chain() for _ in range(IN_FLIGHT)))
    pipelined = time.perf_counter() - started
    times.sort()
    return {"median_us": statistics.median(times) * 1e6,
            "p10_us": times[len(times) // 10] * 1e6,
            "p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
            "sequential_per_s": calls / sum(times),
            "pipelined_per_s": calls / pipelined}
""".replace("IN_FLIGHT", str(IN_FLIGHT))

# argv: ADDR CALLS ("-" as ADDR: console ping over fd 3 instead)
CALLER = """
import asyncio, json, sys, time
import ww.cell
""" + MEASURE + """

async def main():
    addr, calls = sys.argv[1], int(sys.argv[2])
    async with ww.cell.connect() as s:
        if addr == "-":
            cap = s._cap("console")
            one = lambda: cap.ping(b"")
        else:
            cap = await s.p2p.dial(addr, ww.cell.Service)
            one = lambda: cap.call("echo", [])
        print(json.dumps(await measure(one, calls)), flush=True)

getattr(ww.cell, "run", asyncio.run)(main())  # (SRC may have no run)
"""


def _cell(directory: str, name: str, body: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/usr/bin/env python3\n" + textwrap.dedent(body).lstrip())
    os.chmod(path, 0o755)
    return path


def _home(directory: str, name: str) -> dict[str, str]:
    home = os.path.join(directory, f"home-{name}")
    os.makedirs(home, exist_ok=True)
    return {**os.environ, "WW_HOME": home}


def _child(src: str | None, *args: str) -> dict[str, float]:
    """Run one in-process round (``--child ...``) in a process of its own, with the ww of
    ``src`` (None: this checkout)."""
    env = {**os.environ, "PYTHONPATH": src} if src else None
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True, timeout=600, env=env).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def _tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds used so far by ``pid`` and every process under it, and by ``pid`` alone
    (Linux /proc)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12]))
                                 / os.sysconf("SC_CLK_TCK"))
    total, todo = 0.0, [pid]
    while todo:
        here = todo.pop()
        total += stats.get(here, (0, 0.0))[1]
        todo += [child for child, (parent, _) in stats.items() if parent == here]
    return total, stats.get(pid, (0, 0.0))[1]


def peer_round(addr: str, calls: int, lane: bool = False) -> dict[str, float]:
    """This process as the remote peer: a libp2p node, one /ww/0.1.0 connection (``lane``:
    over the native lane, the way `ww call` dials, else over py-libp2p)."""

    from ww.core.bridge import run_capnp
    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node
    from ww.p2p.protocol import Dialer
    from ww.schema import load

    scope: dict[str, Any] = {}
    exec(MEASURE, scope)  # the same code the caller cell runs
    measure = scope["measure"]

    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[])
    node.start()

    async def run() -> dict[str, float]:
        # (a checkout from before the lane has no such argument: its one path is py-libp2p)
        dialer = Dialer(node, lane=lane) if lane else _py_dialer(Dialer, node)
        try:
            cap = (await dialer.dial(addr)).cast_as(load("cell").Service)
            return await measure(lambda: cap.call("echo", []), calls)
        finally:
            dialer.close_all()

    try:
        return run_capnp(run())  # (the event loop `ww call` runs on)
    finally:
        node.stop()


def _py_dialer(dialer: Any, node: Any) -> Any:
    try:
        return dialer(node, lane=False)
    except TypeError:
        return dialer(node)


ECHO = "/ww-bench/echo/1.0.0"


async def time_echo(client: Any, addr: str, calls: int) -> dict[str, float]:
    """On ``client``'s libp2p thread (a started Node): ``calls`` sequential 100-byte echoes
    on one bare stream to the :data:`ECHO` protocol of the host at ``addr``."""
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    info = info_from_p2p_addr(Multiaddr(addr))
    await client.dial(info)
    stream = await client.host.new_stream(info.peer_id, [ECHO])
    message, times = b"x" * 100, []
    for i in range(calls + 50):
        started = time.perf_counter()
        await stream.write(message)
        got = 0
        while got < len(message):
            got += len(await stream.read(65536))
        if i >= 50:  # warmed up
            times.append(time.perf_counter() - started)
    await stream.reset()
    times.sort()
    return {"median_us": statistics.median(times) * 1e6,
            "p10_us": times[len(times) // 10] * 1e6,
            "p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
            "sequential_per_s": calls / sum(times), "pipelined_per_s": float("nan")}


async def echo(stream: Any) -> None:
    """The :data:`ECHO` protocol's handler."""
    while data := await stream.read(65536):
        await stream.write(data)


def libp2p_round(calls: int) -> dict[str, float]:
    """Two libp2p hosts in this process (ww's Node: TCP + Noise + Yamux on trio threads), a
    100-byte echo on a bare stream: the libp2p part of a remote call, without Cap'n Proto,
    the splice to a socketpair or any cell."""
    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node

    server = Node(Identity.from_private_key(PrivateKey.generate()), listen=[LOOPBACK],
                  handlers={ECHO: echo}, serve_ww=False, announce=False)
    client = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                  serve_ww=False, announce=False)
    server.start()
    client.start()
    try:
        return client.submit(time_echo, client, server.addrs[0], calls).result(300)  # type: ignore[no-any-return]
    finally:
        client.stop()
        server.stop()


def cell_round(directory: str, caller: str, addr: str, calls: int,
               src: str | None = None) -> dict[str, float]:
    """The Python caller cell on host A: ``addr``'s export, or ("-") its console's ping."""
    return _on_a(directory, [caller, addr, str(calls)], addr != "-", src)


def cxx_round(directory: str, cxx_cell: str, addr: str, calls: int,
              src: str | None = None) -> dict[str, float]:
    """The C++ cell on host A (`cell call`): its answers checked, its figures."""
    got = _on_a(directory, [cxx_cell, "call", addr, str(calls), str(IN_FLIGHT)], True, src)
    if (got.pop("echo"), got.pop("answers")) != ("hello from C++", 2 * calls + 51):
        raise SystemExit("the C++ cell got wrong answers")
    return got


def peer_cxx_round(lane_peer: str, addr: str, calls: int, noise: bool) -> dict[str, float]:
    """tests/cxx/lane_peer.c++ calling ``addr``: its answers checked, its figures."""
    r = subprocess.run([lane_peer, *(["--noise"] if noise else []), addr, str(calls),
                        str(IN_FLIGHT)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"p2p.py: {r.stderr.strip()}")
    got: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
    if (got.pop("echo"), got.pop("answers")) != ("hello from C++", 2 * calls + 51):
        raise SystemExit("the C++ peer got wrong answers")
    return got


def _on_a(directory: str, argv: list[str], p2p: bool, src: str | None) -> dict[str, Any]:
    """Host A (`ww run`) with the cell ``argv``; the last line the cell printed, as JSON."""
    flags = ["--with-p2p", "--listen", LOOPBACK, "--allow-dial", "127.0.0.0/8"] if p2p else [
        "--with-console"]
    env = _home(directory, "a")
    if src:  # the host's ww, and its cell's (the jail shows the package the host runs)
        env["PYTHONPATH"] = src
        flags += ["--env", f"PYTHONPATH={src}"]
    out = subprocess.run([WW, "run", *flags, "--env", "PYTHONDONTWRITEBYTECODE=1", *argv],
                         check=True, capture_output=True, text=True, timeout=300,
                         env=env).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def on_b(b: subprocess.Popen[str], calls: int, one: Any, *args: Any) -> dict[str, float]:
    """``one(*args)``'s result, with the CPU host B and its cell spent per call meanwhile,
    and the host alone."""
    tree, host = _tree_cpu(b.pid)
    result = one(*args)
    tree_after, host_after = _tree_cpu(b.pid)
    result["b_cpu_us"] = (tree_after - tree) / (2 * calls + 50) * 1e6
    result["b_host_cpu_us"] = (host_after - host) / (2 * calls + 50) * 1e6
    return result  # type: ignore[no-any-return]


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(r.get(key, float("nan")) for r in rounds)
            for key in rounds[0]}


def start_b(directory: str, exporter: list[str], name: str,
            src: str | None) -> tuple[subprocess.Popen[str], str]:
    """Host B: `ww run --with-p2p` of ``exporter`` (the cell and its arguments)."""
    env, flags = _home(directory, name), []
    if src:
        env["PYTHONPATH"] = src
        flags = ["--env", f"PYTHONPATH={src}"]
    b = subprocess.Popen([WW, "run", "--with-p2p", "--listen", LOOPBACK, *flags, *exporter],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env)
    assert b.stdout is not None
    addr = b.stdout.readline().strip()
    if not addr:
        raise SystemExit("host B did not start")
    return b, addr


def stop_b(b: subprocess.Popen[str]) -> None:
    if b.stdin:
        b.stdin.close()
    try:
        b.wait(15)
    except subprocess.TimeoutExpired:
        b.kill()
        b.wait()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # one in-process round, as JSON
        kind, rest = sys.argv[2], sys.argv[3:]
        result = (peer_round(rest[0], int(rest[1]), kind == "lane") if kind in ("peer", "lane")
                  else libp2p_round(int(rest[0])))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", metavar="SRC",
                        help="also run every round with the ww of SRC (another checkout's "
                             "src directory), in turns with this one")
    parser.add_argument("--only", metavar="PATHS",
                        help="only these rows (their names, comma-separated, as printed)")
    options = parser.parse_args()
    variants: dict[str, str | None] = (
        {"": None} if not options.compare
        else {"this ": None, "SRC ": os.path.abspath(options.compare)})
    paths = ["cell -> cell", "peer -> cell", "lane -> cell", "lane -> C++ cell",
             "C++ cell -> C++ cell", "C++ peer -> cell", "C++ peer -> C++ cell",
             "C++ peer /noise -> C++ cell", "C++ peer /noise -> C++ cell (--inbound calls)",
             "fd 3 only", "libp2p echo"]
    if options.only:
        only = [p.strip() for p in options.only.split(",")]
        unknown = [p for p in only if p not in paths]
        if unknown:
            parser.error(f"--only: no row named {unknown[0]!r} (rows: {', '.join(paths)})")
        paths = [p for p in paths if p in only]
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {
        (v, p): [] for v in variants for p in paths}
    shell: dict[str, list[float]] = {v: [] for v in variants}
    calls = options.calls
    with tempfile.TemporaryDirectory(prefix="ww-bench-p2p-") as directory:
        exporter = _cell(directory, "exporter.py", EXPORTER)
        caller = _cell(directory, "caller.py", CALLER)
        try:
            cxx_cell = str(build_cell(Path(directory, "cxx-build"), WW))
            lane_peer = str(build_lane_peer(Path(directory, "cxx-build"), WW))
        except RuntimeError as e:  # (the tools missing, or the build failed: one line)
            raise SystemExit(f"p2p.py: the C++ programs: {str(e).splitlines()[0]}") from None
        hosts: dict[str, tuple[subprocess.Popen[str], str]] = {}
        cxx_hosts: dict[str, tuple[subprocess.Popen[str], str]] = {}
        calls_hosts: dict[str, tuple[subprocess.Popen[str], str]] = {}
        try:
            for i, (variant, src) in enumerate(variants.items()):
                hosts[variant] = start_b(directory, [exporter], f"b{i}", src)
                cxx_hosts[variant] = start_b(directory, [cxx_cell, "export"], f"cxx-b{i}", src)
                if "C++ peer /noise -> C++ cell (--inbound calls)" in paths:
                    inbound = [] if src else ["--inbound", "calls"]
                    calls_hosts[variant] = start_b(directory, [*inbound, cxx_cell, "export"],
                                                   f"calls-b{i}", src)
            for n in range(options.rounds):
                order = list(variants.items())
                for variant, src in order if n % 2 == 0 else order[::-1]:
                    b, addr = hosts[variant]
                    cxx_b, cxx_addr = cxx_hosts[variant]
                    calls_b, calls_addr = calls_hosts.get(variant, (None, ""))
                    runs: dict[str, tuple[Any, ...]] = {  # each row's round, if asked for
                        "cell -> cell": (b, cell_round, directory, caller, addr, calls, src),
                        "peer -> cell": (b, _child, src, "peer", addr, str(calls)),
                        # the peer dials the lane: taken where B has one, else /noise
                        "lane -> cell": (b, _child, None, "lane", addr, str(calls)),
                        "lane -> C++ cell": (cxx_b, _child, None, "lane", cxx_addr, str(calls)),
                        "C++ cell -> C++ cell": (cxx_b, cxx_round, directory, cxx_cell, cxx_addr,
                                                 calls, src),
                        "C++ peer -> cell": (b, peer_cxx_round, lane_peer, addr, calls, False),
                        "C++ peer -> C++ cell": (cxx_b, peer_cxx_round, lane_peer, cxx_addr,
                                                 calls, False),
                        "C++ peer /noise -> C++ cell": (cxx_b, peer_cxx_round, lane_peer,
                                                        cxx_addr, calls, True),
                        "C++ peer /noise -> C++ cell (--inbound calls)": (
                            calls_b, peer_cxx_round, lane_peer, calls_addr, calls, True),
                        "fd 3 only": (None, cell_round, directory, caller, "-", calls, src),
                        "libp2p echo": (None, _child, src, "libp2p", str(calls)),
                    }
                    for path in paths:
                        host, round_, *args = runs[path]
                        rounds[(variant, path)].append(
                            on_b(host, calls, round_, *args) if host else round_(*args))
                    env = {**os.environ, "PYTHONPATH": src} if src else None
                    started = time.perf_counter()
                    subprocess.run([WW, "call", addr, "echo"], check=True,
                                   capture_output=True, timeout=60, env=env)
                    shell[variant].append(time.perf_counter() - started)
        finally:
            for b, _ in [*hosts.values(), *cxx_hosts.values(), *calls_hosts.values()]:
                stop_b(b)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{calls} calls, median of {options.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.1f} at the end"
          + (f"; SRC = {options.compare}" if options.compare else ""))
    print(f"{'path':<52}{'median':>9}{'p99':>10}{'seq calls/s':>13}"
          f"{'pipelined calls/s':>19}{'B CPU/call':>12}{'B host':>9}")
    for path in paths:
        for variant in variants:
            r = median_round(rounds[(variant, path)])
            cpu, host = r.get("b_cpu_us", float("nan")), r.get("b_host_cpu_us", float("nan"))
            print(f"{variant + path:<52}{r['median_us']:>7.0f}us{r['p99_us']:>8.0f}us"
                  f"{r['sequential_per_s']:>13.0f}{r['pipelined_per_s']:>19.0f}"
                  + (f"{cpu:>10.0f}us{host:>7.0f}us" if cpu == cpu else ""))
    for variant in variants:
        print(f"{variant}one `ww call` from the shell, start to finish: "
              f"{statistics.median(shell[variant]) * 1000:.0f} ms (median)")


if __name__ == "__main__":
    main()
