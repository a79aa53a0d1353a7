"""RPC calls per second from a Python cell to the host, next to a raw pycapnp echo.

    .venv/bin/python benchmarks/rpc.py [--calls 5000] [--rounds 3]

Both measurements use the same client code (benchmarks/rpc_cell.py) and the same
`Console.ping` method.  "raw" is two plain processes over a socketpair: this process
serves, a child process calls.  "ww" is a real jailed cell calling `ww run`'s host over
fd 3.  The best of --rounds is kept for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WW = str(Path(sys.executable).with_name("ww"))
CLIENT = str(HERE / "rpc_cell.py")


def raw_round(calls: int) -> dict[str, float]:
    import capnp

    from ww.schema import load

    cell = load("cell")

    class Echo(cell.Console.Server):
        async def println(self, line: str, **kwargs: Any) -> None:
            pass

        async def ping(self, payload: bytes, **kwargs: Any) -> bytes:
            return payload

    async def serve() -> dict[str, float]:
        ours, theirs = socket.socketpair()
        child = await asyncio.create_subprocess_exec(
            sys.executable, CLIENT, "--raw", str(theirs.fileno()), "--calls", str(calls),
            pass_fds=(theirs.fileno(),), stdout=subprocess.PIPE,
        )
        theirs.close()
        stream = await capnp.AsyncIoStream.create_connection(sock=ours)
        server = capnp.TwoPartyServer(stream, bootstrap=Echo())
        out, _ = await child.communicate()
        server.close()
        return json.loads(out)

    return asyncio.run(capnp.run(serve()))


def ww_round(calls: int) -> dict[str, float]:
    out = subprocess.run([WW, "run", "--with-console", CLIENT, "--calls", str(calls)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {"raw": {}, "ww": {}}
    for _ in range(args.rounds):
        for name, fn in (("raw", raw_round), ("ww", ww_round)):
            for kind, rate in fn(args.calls).items():
                best[name][kind] = max(best[name].get(kind, 0.0), rate)
    print(f"{'calls/s':12} {'raw pycapnp':>12} {'ww cell':>12} {'ww/raw':>8}")
    for kind in ("sequential", "pipelined"):
        raw, ww = best["raw"][kind], best["ww"][kind]
        print(f"{kind:12} {raw:12,.0f} {ww:12,.0f} {ww / raw:8.0%}")


if __name__ == "__main__":
    main()
