"""The cell's end of fd 3 alone: the SDK's CPU per console ping, against a plain pycapnp host.

    .venv/bin/python benchmarks/cell_fd3.py [--calls 5000] [--rounds 5] [--compare OTHER/src]

Each round runs in a process of its own: a socket pair, a forked plain pycapnp server
(tests/cell/test_fd3_stream.py's ``Host``, whose session holds an echoing ``Console``,
the same code on both sides of ``--compare``) on one end, and the SDK's ``open_session``
(what ``ww.cell.connect`` runs) on the other, which makes ``--calls`` sequential pings,
then as many with 64 in flight.  Reported: the cell process's own CPU time per call
(``time.process_time``: the SDK, pycapnp and the system calls it makes), which the host's
side does not touch, and the wall time per call, which it does.  ``--compare OTHER/src``
runs every round a second time, in turns, with the ww package of another checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

IN_FLIGHT = 64


def _child(calls: int) -> dict[str, float]:
    import asyncio
    import socket
    import time

    host_end, cell_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the host: plain pycapnp
        cell_end.close()
        import capnp

        from tests.cell.test_fd3_stream import _Host  # the tests' host: identity, login

        async def serve() -> None:
            async with capnp.kj_loop():
                stream = await capnp.AsyncIoStream.create_connection(sock=host_end)
                server = capnp.TwoPartyServer(stream, bootstrap=_Host())
                await server.on_disconnect()

        try:
            asyncio.run(serve())
        finally:
            os._exit(0)
    host_end.close()

    import capnp

    from ww.cell._session import open_session

    async def main() -> dict[str, float]:
        async with capnp.kj_loop():
            client, session = await open_session(cell_end, identity=False)
            cap = session._cap("console")
            for _ in range(50):  # warm up
                await cap.ping(b"")
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                await cap.ping(b"")
            seq_wall, seq_cpu = time.perf_counter() - wall, time.process_time() - cpu
            wall, cpu = time.perf_counter(), time.process_time()
            pending: set = set()
            for _ in range(calls):
                if len(pending) >= IN_FLIGHT:
                    _, pending = await asyncio.wait(pending,
                                                    return_when=asyncio.FIRST_COMPLETED)
                pending.add(asyncio.ensure_future(cap.ping(b"")))
            await asyncio.gather(*pending)
            pip_wall, pip_cpu = time.perf_counter() - wall, time.process_time() - cpu
            client.close()
        return {"seq_cpu_us": seq_cpu / calls * 1e6, "seq_wall_us": seq_wall / calls * 1e6,
                "pip_cpu_us": pip_cpu / calls * 1e6, "pip_wall_us": pip_wall / calls * 1e6}

    result = asyncio.run(main())
    cell_end.close()
    os.waitpid(pid, 0)
    return result


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", metavar="SRC",
                        help="another checkout's src/, run in turns with this one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.calls < 1 or options.rounds < 1:
        print("cell_fd3.py: --calls and --rounds must be at least 1", file=sys.stderr)
        sys.exit(2)
    if options.child:
        print(json.dumps(_child(options.calls)), flush=True)
        return
    sides = {"this": None} if not options.compare else \
        {"this": None, "SRC": os.path.abspath(options.compare)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for _ in range(options.rounds):
        for name, src in sides.items():
            env = {**os.environ, "PYTHONPATH": src} if src else None
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--calls", str(options.calls)],
                check=True, capture_output=True, text=True, timeout=600, env=env).stdout
            results[name].append(json.loads(out.splitlines()[-1]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPython "
          f"{platform.python_version()}, {options.calls} calls, median of {options.rounds} "
          f"rounds, load average {os.getloadavg()[0]:.1f} at the end"
          + (f"; SRC = {options.compare}" if options.compare else ""))
    print(f"{'':6}{'cell CPU/call us':>20}{'wall/call us':>20}")
    print(f"{'':6}{'seq':>10}{'pipelined':>10}{'seq':>10}{'pipelined':>10}")
    for name, rounds in results.items():
        values = [statistics.median(r[key] for r in rounds)
                  for key in ("seq_cpu_us", "pip_cpu_us", "seq_wall_us", "pip_wall_us")]
        print(f"{name:6}" + "".join(f"{v:10.1f}" for v in values))


if __name__ == "__main__":
    main()
