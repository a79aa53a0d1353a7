"""The trustless gateway's rate: a large file downloaded whole and as a CAR (``?format=car``)
with curl, next to `ww cat` of the same file to /dev/null.

    .venv/bin/python benchmarks/gateway.py [--size-mib 300] [--runs 3]

Target (issue 13): each download at least 50 % of `ww cat`'s rate.  The gateway runs in a
process of its own (hypercorn on trio, as `ww daemon` serves it) over a fresh repository in
a temporary directory, removed afterwards; each figure is the best of ``--runs``, the
commands alternating.  CPU seconds (the client's and the gateway's) are shown too: on a busy
machine they are the steadier figure, since waiting for a core is not in them.
"""

from __future__ import annotations

import argparse
import os
import resource
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str], env: dict[str, str], server: int) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the command's and the gateway's) and stdout of ``argv``."""
    cpu = children_cpu() + cpu_seconds(server)
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        done = subprocess.run(argv, env=env, stdout=subprocess.PIPE if argv[0] == "curl"
                              else sink, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed: {done.stderr.decode()}")
    cpu = children_cpu() + cpu_seconds(server) - cpu
    return elapsed, cpu, (done.stdout or b"").decode()


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
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.runs):
                for name, argv in commands.items():
                    elapsed, cpu, out = run(argv, env, server.pid)
                    if out and int(out) < size:
                        raise SystemExit(f"{name}: {out} bytes, expected {size} or more")
                    if name not in best or elapsed < best[name][0]:
                        best[name] = (elapsed, cpu)
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(60)
    cat_wall, cat_cpu = best["ww cat > /dev/null"]
    print(f"{args.size_mib} MiB file, best of {args.runs} runs each; CPU: the command's and "
          "the gateway's, user + system")
    print(f"{'command':<24}{'wall s':>8}{'MiB/s':>8}{'of ww cat':>11}{'CPU s':>8}"
          f"{'MiB/CPU s':>11}{'of ww cat':>11}")
    for name, (wall, cpu) in best.items():
        print(f"{name:<24}{wall:>8.2f}{size / wall / MIB:>8.0f}{cat_wall / wall:>11.0%}"
              f"{cpu:>8.2f}{size / cpu / MIB:>11.0f}{cat_cpu / cpu:>11.0%}")

if __name__ == "__main__":
    main()
