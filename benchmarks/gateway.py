"""The trustless gateway's rate: a large file downloaded whole and as a CAR (``?format=car``)
with curl, next to `ww cat` of the same file to /dev/null.

    .venv/bin/python benchmarks/gateway.py [--size-mib 300] [--runs 3]

Target (issue 13): each download at least 50 % of `ww cat`'s rate.  The gateway runs in a
process of its own (hypercorn on trio, as `ww daemon` serves it) over a fresh repository in
a temporary directory, removed afterwards; each figure is the best of ``--runs``, the
commands alternating.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WW = str(Path(sys.executable).with_name("ww"))
MIB = 1024 * 1024

SERVE = """
import sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve
from ww.ipfs.node import EmbeddedNode
from ww.serve.gateway import gateway_app

async def main():
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    with EmbeddedNode(sys.argv[1]) as node:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: serve(
                gateway_app(node), config, task_status=task_status,
                shutdown_trigger=lambda: trio.to_thread.run_sync(sys.stdin.read)))
            print(binds[0], flush=True)

trio.run(main)
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed: {done.stderr}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="ww-gateway-") as tmp:
        home = os.path.join(tmp, "home")
        env = dict(os.environ, WW_HOME=home)
        data = os.path.join(tmp, "random.bin")
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        cid = subprocess.run([WW, "export", "-Q", data], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        os.unlink(data)
        server = subprocess.Popen([sys.executable, "-c", SERVE, home], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url:
                raise SystemExit("the gateway did not start")
            commands = {
                "ww cat > /dev/null": [WW, "cat", f"/ipfs/{cid}"],
                "gateway: the file": ["curl", "-sf", "-o", "/dev/null", "-w",
                                      "%{size_download}", f"{url}/ipfs/{cid}"],
                "gateway: ?format=car": ["curl", "-sf", "-o", "/dev/null", "-w",
                                         "%{size_download}", f"{url}/ipfs/{cid}?format=car"],
            }
            best: dict[str, float] = {}
            for _ in range(args.runs):
                for name, argv in commands.items():
                    if name.startswith("ww cat"):
                        with open(os.devnull, "wb") as sink:
                            start = time.perf_counter()
                            subprocess.run(argv, env=env, check=True, stdout=sink)
                            elapsed = time.perf_counter() - start
                    else:
                        elapsed, out = timed(argv, env)
                        if int(out) < size:
                            raise SystemExit(f"{name}: {out} bytes, expected {size} or more")
                    best[name] = min(best.get(name, elapsed), elapsed)
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(60)
    cat_rate = size / best["ww cat > /dev/null"] / MIB
    print(f"{args.size_mib} MiB file, best of {args.runs} runs each")
    print(f"{'command':<24}{'seconds':>9}{'MiB/s':>9}{'of ww cat':>11}")
    for name, seconds in best.items():
        rate = size / seconds / MIB
        print(f"{name:<24}{seconds:>9.2f}{rate:>9.0f}{rate / cat_rate:>10.0%}")


if __name__ == "__main__":
    main()
