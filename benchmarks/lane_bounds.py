"""What the bounds on a remote peer's stream cost on asyncio (``ww.p2p.bounds.bounded_capnp``).

    .venv/bin/python benchmarks/lane_bounds.py [--calls 2000] [--rounds 5]

A pycapnp ``TwoPartyServer`` (a Gateway handing out an echo ``Service``, as a ww host's
export) on one end of a unix socketpair, a ``TwoPartyClient`` on the other, both on one
loop in this process; the server's end is either pycapnp's own socket transport ("plain")
or the same transport through the shim ("bounded").  Timed: ``--calls`` sequential echo
calls (each awaited before the next) and ``--calls`` pipelined ones (all sent, then all
awaited); the median of ``--rounds`` rounds, the two kinds alternating.  Last, the shim's
sans-IO core alone per message: a 100-byte call framed, classified and passed, and its
Return seen on the way out (``Inbound.received/message/passed``, ``Outbound.feed``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import sys
import time
from typing import Any


def _schema() -> Any:
    from ww.schema import load

    return load("cell")


async def _round(kind: str, calls: int) -> tuple[float, float]:
    import capnp

    from ww.p2p import bounds

    cell = _schema()

    class Echo(cell.Service.Server):  # type: ignore[misc,name-defined]
        async def call(self, method: str, args: Any, **kwargs: Any) -> str:
            return args[0]

    class Gateway(cell.Gateway.Server):  # type: ignore[misc,name-defined]
        async def service(self, _context: Any, **kwargs: Any) -> None:
            _context.results.service = Echo()

    ours, theirs = socket.socketpair()
    if kind == "plain":
        stream = await capnp.AsyncIoStream.create_connection(sock=ours)
    else:
        protocol, stream = bounds.bounded_capnp(bounds.AsyncBudget())
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock=ours)
    server = capnp.TwoPartyServer(stream, bootstrap=Gateway())
    client = capnp.TwoPartyClient(await capnp.AsyncIoStream.create_connection(sock=theirs))
    gateway = client.bootstrap().cast_as(cell.Gateway)
    service = (await gateway.service()).service.as_interface(cell.Service)
    arg = "x" * 40  # a call of about 100 bytes framed
    assert (await service.call("echo", [arg])).result == arg
    start = time.perf_counter()
    for _ in range(calls):
        await service.call("echo", [arg])
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    promises = [service.call("echo", [arg]) for _ in range(calls)]
    for promise in promises:
        await promise
    pipelined = time.perf_counter() - start
    client.close()
    server.close()
    return sequential, pipelined


def core_per_message(n: int) -> float:
    """Microseconds of the sans-IO core per 100-byte call and its Return."""
    from tests.p2p.test_ww_bounds import a_return, echo  # the frames the tests build
    from ww.p2p import bounds

    budget = bounds.Count()
    state, out = bounds.Inbound(budget, 0.0), bounds.Outbound()
    call = echo(7, "x" * 20)
    answer = a_return(7)[:200]  # only the start of a Return is looked at
    start = time.perf_counter()
    for _ in range(n):
        state.received(call, 0.0)
        size, kept, ident = state.message()  # type: ignore[misc]
        state.passed(size, kept, ident, 0.0)
        out.feed(answer, state)
        out.skip = 0
        out.buf.clear()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import capnp

    results: dict[str, list[tuple[float, float]]] = {"plain": [], "bounded": []}
    for _ in range(args.rounds):
        for kind in results:
            results[kind].append(asyncio.run(capnp.run(_round(kind, args.calls))))
    print(
        f"# {args.calls} echo calls (about 100 bytes each) over a unix socketpair, one loop;"
        f" median of {args.rounds} rounds; {platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}"
    )
    for kind, rounds in results.items():
        seq = statistics.median(r[0] for r in rounds) / args.calls * 1e6
        pip = statistics.median(r[1] for r in rounds) / args.calls * 1e6
        print(f"{kind:8} sequential {seq:7.1f} µs/call   pipelined {pip:7.1f} µs/call")
    core = statistics.median(core_per_message(20_000) for _ in range(args.rounds))
    print(f"core     {core:.1f} µs per call passed and its Return seen (sans-IO, no I/O)")
    print("# load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + " at the end")


if __name__ == "__main__":
    main()
