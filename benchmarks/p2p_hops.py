"""Where one remote call's time goes, hop by hop: timestamps at each step of the `/ww/0.1.0` splice.

    .venv/bin/python benchmarks/p2p_hops.py [--calls 1000]

Two processes on 127.0.0.1, each a libp2p node on its trio thread and pycapnp on asyncio,
as `ww run` has them: a host whose export is an echoing `Service` served on its own asyncio
loop (no cell: the fd 3 hop is measured by benchmarks/p2p.py), and a peer that dials it and
makes sequential `Service.call`s.  In both, :func:`ww.p2p.splice.splice` is replaced by a
copy of it that notes the monotonic clock (shared by the two processes) after each read
from and write to the libp2p stream and the socketpair; the host notes when the call
reaches the `Service`.  Printed: for each step, its median time from the start of the call
(its first occurrence within each call; under load a later step can show a smaller median
than an earlier one, when the receiving thread runs before the sender returns), and how
many times per call it happened.
Only this benchmark's processes are patched; nothing of ww is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

LOG: list[tuple[int, str]] = []

# (a line of splice(), the step noted right after it)
STEPS = [
    ("data = await stream.read(CHUNK)  # type: ignore[attr-defined]", "stream read"),
    ("await send(memoryview(buf)[:size])", "to socketpair"),
    ("data = await tsock.recv(CHUNK)", "socketpair read"),
    ("await stream.write(data)  # type: ignore[attr-defined]", "stream written"),
]


ORDER = ["caller: call", "caller: socketpair read", "caller: stream written", "host: stream read",
         "host: to socketpair", "host: call served", "host: socketpair read",
         "host: stream written", "caller: stream read", "caller: to socketpair", "caller: answer"]


def note(step: str) -> None:
    LOG.append((time.perf_counter_ns(), step))


def patch_splice() -> None:
    """Replace ww.p2p.splice.splice with a copy that calls :func:`note` after each step."""
    from ww.p2p import splice

    source = inspect.getsource(splice.splice)
    for line, step in STEPS:
        at = source.index(line)  # a ValueError here: splice() changed, update STEPS
        start = source.rindex("\n", 0, at) + 1
        end = source.index("\n", at) + 1
        indent = source[start:at]
        source = source[:end] + f"{indent}_note({step!r})\n" + source[end:]
    scope = dict(vars(splice), _note=note)
    exec(source, scope)
    splice.splice = scope["splice"]


def host() -> None:
    """The serving host: prints its address, serves until stdin closes, prints its notes."""
    import capnp

    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node
    from ww.p2p.protocol import Exports
    from ww.schema import load

    patch_splice()
    cell = load("cell")

    class Echo(cell.Service.Server):  # type: ignore[name-defined,misc]
        async def call(self, method: str, args: Any, **kwargs: Any) -> str:
            note("call served")
            return ""

    async def main(node: Node) -> None:
        exports = Exports()
        exports.set(Echo())
        node.serve(exports.accept)
        print(node.addrs[0], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    node = Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.1/tcp/0"], announce=False)
    node.start()
    try:
        asyncio.run(capnp.run(main(node)))
    finally:
        node.stop()
    print(json.dumps(LOG), flush=True)


def peer(addr: str, calls: int) -> list[tuple[int, str]]:
    """This process as the caller: ``calls`` sequential calls, with the notes of each."""
    import capnp

    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node
    from ww.p2p.protocol import Dialer
    from ww.schema import load

    patch_splice()
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[])
    node.start()

    async def run() -> None:
        dialer = Dialer(node, lane=False)  # py-libp2p: the path this measures
        try:
            service = (await dialer.dial(addr)).cast_as(load("cell").Service)
            for _ in range(50):  # warm up
                await service.call("echo", [])
            LOG.clear()
            for _ in range(calls):
                note("call")
                await service.call("echo", [])
                note("answer")
        finally:
            dialer.close_all()

    try:
        asyncio.run(capnp.run(run()))
    finally:
        node.stop()
    return list(LOG)


def report(caller: list[tuple[int, str]], served: list[tuple[int, str]]) -> None:
    events = sorted([(t, f"caller: {s}") for t, s in caller]
                    + [(t, f"host: {s}") for t, s in served])
    calls: list[list[tuple[int, str]]] = []
    for t, step in events:
        if step == "caller: call":
            calls.append([(t, step)])
        elif calls and calls[-1][-1][1] != "caller: answer":
            calls[-1].append((t, step))
    calls = [c for c in calls if c[-1][1] == "caller: answer"]
    offsets: dict[str, list[float]] = collections.defaultdict(list)
    counts: collections.Counter[str] = collections.Counter()
    for c in calls:
        start, seen = c[0][0], set()
        for t, step in c:
            counts[step] += 1
            if step not in seen:
                seen.add(step)
                offsets[step].append((t - start) / 1000)
    print(f"{len(calls)} sequential calls, peer -> host (no cell); load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'step, in the order a call takes them':<38}{'median from call':>17}{'per call':>10}")
    previous = 0.0
    for step in ORDER:
        at = statistics.median(offsets[step])
        print(f"{step:<38}{at:>9.0f} us (+{at - previous:4.0f}){counts[step] / len(calls):>8.2f}")
        previous = at


def main() -> None:
    if sys.argv[1:] == ["--host"]:
        host()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    options = parser.parse_args()
    server = subprocess.Popen([sys.executable, __file__, "--host"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        addr = server.stdout.readline().strip()
        if not addr:
            raise SystemExit("the host did not start")
        caller = peer(addr, options.calls)
        server.stdin.close()
        served = [tuple(e) for e in json.loads(server.stdout.read().splitlines()[-1])]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    report(caller, served)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
