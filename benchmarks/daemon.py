"""`ww daemon`'s kubo RPC API: `add` of a large file through it next to `ww export` of the same
file, and requests per second for a small `cat`.

    .venv/bin/python benchmarks/daemon.py [--size-mib 300] [--runs 3] [--requests 500] [--dir DIR]
                                          [--client curl|python|both]

Target (issue 13): `add` through the RPC API within 80 % of `ww export`'s rate, the daemon's
memory flat (its peak resident size is printed).  The CPU time each side used is printed too:
on a busy machine it varies less than the rates.  The two sides alternate, ``--runs`` times
each (the median is printed, then every run), each on a fresh repository ($WW_HOME) and, for
the daemon, a fresh daemon, in a temporary directory under DIR (default: the system's
temporary directory), removed afterwards.  The `cat`s go one after the other over one
keep-alive connection, and over a new connection each, as most of kubo's clients make them.

The upload's client (``--client``): ``curl`` (the default) sends ``curl -F file=@FILE``, a
native client like kubo's own command line and most tools that talk to the API; ``python``
streams the multipart body from this script with ``http.client`` (chunked, 1 MiB pieces),
which on a machine of two CPUs takes a good part of one of them (its CPU time is printed
beside the daemon's), so the daemon's rate measures the client too; ``both`` runs each.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

WW = str(Path(sys.executable).with_name("ww"))
MIB = 1024 * 1024
BOUNDARY = "benchmarkboundary"


def start_daemon(home: Path, ww: list[str] | None = None
                 ) -> tuple[subprocess.Popen[str], str, int]:
    """`ww daemon` (``ww``: the command that runs ww, by default the virtualenv's) on a port
    of 127.0.0.1's, without a gateway; the process, its API's host and port."""
    proc = subprocess.Popen(
        [*(ww or [WW]), "--json", "daemon", "--api", "/ip4/127.0.0.1/tcp/0", "--gateway", "off",
         "--listen", "/ip4/127.0.0.1/tcp/0"], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WW_HOME": str(home)})
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("ww daemon did not start")
        event = json.loads(line)
        if event["event"] == "api":
            parts = event["listening"].split("/")
            return proc, parts[2], int(parts[4])


def body(path: Path) -> Iterator[bytes]:
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
           f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
           ).encode()
    with open(path, "rb") as f:
        while piece := f.read(MIB):
            yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def rpc_add(host: str, port: int, path: Path, client: str = "python"
            ) -> tuple[float, float, str]:
    """`add` of ``path`` through the API at ``host:port`` with ``client``: wall seconds, the
    client's CPU seconds, the CID."""
    if client == "curl":
        start, cpu = time.perf_counter(), _children_cpu()
        r = subprocess.run(["curl", "-sS", "--fail-with-body", "-F", f"file=@{path}",
                            f"http://{host}:{port}/api/v0/add"], capture_output=True)
        elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu
        if r.returncode != 0:
            raise SystemExit(f"add failed: {r.stdout!r} {r.stderr!r}")
        return elapsed, cpu, json.loads(r.stdout.splitlines()[-1])["Hash"]
    conn = http.client.HTTPConnection(host, port, timeout=3600)
    start, cpu = time.perf_counter(), time.process_time()
    conn.request("POST", "/api/v0/add", body=body(path), encode_chunked=True, headers={
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Transfer-Encoding": "chunked"})
    reply = conn.getresponse()
    lines = reply.read().splitlines()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if reply.status != 200:
        raise SystemExit(f"add failed: {lines}")
    return elapsed, cpu, json.loads(lines[-1])["Hash"]


def cats(host: str, port: int, cid: str, n: int, keep_alive: bool) -> float:
    conn = http.client.HTTPConnection(host, port, timeout=600)
    start = time.perf_counter()
    for _ in range(n):
        if not keep_alive:
            conn = http.client.HTTPConnection(host, port, timeout=600)
        conn.request("POST", f"/api/v0/cat?arg={cid}")
        reply = conn.getresponse()
        if reply.read() != b"hello world\n" or reply.status != 200:
            raise SystemExit("cat failed")
        if not keep_alive:
            conn.close()
    return n / (time.perf_counter() - start)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib(pid: int) -> float:
    """The daemon's peak resident memory so far (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def export(data: Path, home: Path) -> tuple[float, float, str]:
    """`ww export` of ``data``: wall seconds, CPU seconds, the CID."""
    start, cpu = time.perf_counter(), _children_cpu()
    r = subprocess.run([WW, "export", str(data)], capture_output=True, text=True,
                       env={**os.environ, "WW_HOME": str(home)})
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return wall, cpu, r.stdout.split()[-1].removeprefix("/ipfs/")


def daemon_add(data: Path, home: Path, client: str) -> tuple[float, float, float, str, float]:
    """`add` of ``data`` through a fresh daemon: wall seconds, the daemon's CPU seconds, the
    client's, the CID, the daemon's peak resident MiB."""
    proc, host, port = start_daemon(home)
    try:
        cpu = _cpu_seconds(proc.pid)
        wall, client_cpu, cid = rpc_add(host, port, data, client)
        return wall, _cpu_seconds(proc.pid) - cpu, client_cpu, cid, _peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--dir", default=None, help="where the file and repositories go")
    parser.add_argument("--client", choices=("curl", "python", "both"), default="curl",
                        help="what sends the add (default: curl)")
    args = parser.parse_args()
    clients = ["curl", "python"] if args.client == "both" else [args.client]
    if "curl" in clients and shutil.which("curl") is None:
        raise SystemExit("curl is not installed: use --client python")
    exports: list[tuple[float, float]] = []
    adds: dict[str, list[tuple[float, float, float]]] = {client: [] for client in clients}
    peak = 0.0
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        root = Path(scratch)
        data = root / "data.bin"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        for run in range(args.runs):  # alternating, so that a change of load hits both
            sides = ["export", *clients]
            if run % 2:
                sides.reverse()
            for side in sides:
                home = root / f"{side}-home"
                if side == "export":
                    wall, cpu, export_cid = export(data, home)
                    exports.append((wall, cpu))
                else:
                    wall, cpu, client_cpu, add_cid, rss = daemon_add(data, home, side)
                    adds[side].append((wall, cpu, client_cpu))
                    peak = max(peak, rss)
                    if add_cid != export_cid:  # run 0 begins with export
                        raise SystemExit(f"CIDs differ: {add_cid} != {export_cid}")
                shutil.rmtree(home)
        proc, host, port = start_daemon(root / "daemon-home")
        try:
            (root / "hello").write_bytes(b"hello world\n")
            conn = http.client.HTTPConnection(host, port)
            conn.request("POST", "/api/v0/add", body=b"".join(body(root / "hello")),
                         headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            hello = json.loads(conn.getresponse().read().splitlines()[-1])["Hash"]
            kept = cats(host, port, hello, args.requests, keep_alive=True)
            fresh = cats(host, port, hello, args.requests, keep_alive=False)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=600)
    size = args.size_mib
    export_s = statistics.median(wall for wall, _ in exports)
    export_cpu = statistics.median(cpu for _, cpu in exports)
    print(f"# {size} MiB of random bytes (/ipfs/{export_cid}); {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; median of "
          f"{args.runs} runs, alternating; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':38}{'MiB/s':>8}{'vs export':>11}{'CPU s':>8}{'vs export':>11}"
          f"{'client CPU s':>14}")
    print(f"{'ww export (whole command)':38}{size / export_s:8.0f}{100:10.0f}%"
          f"{export_cpu:8.2f}{100:10.0f}%")
    for client, runs in adds.items():
        add_s = statistics.median(wall for wall, _, _ in runs)
        add_cpu = statistics.median(cpu for _, cpu, _ in runs)
        client_cpu = statistics.median(cpu for _, _, cpu in runs)
        print(f"{'add through the RPC API, ' + client:38}{size / add_s:8.0f}"
              f"{100 * export_s / add_s:10.0f}%{add_cpu:8.2f}"
              f"{100 * export_cpu / add_cpu:10.0f}%{client_cpu:14.2f}")
    print(f"# daemon peak RSS {peak:.0f} MiB; the second \"vs export\": ww export's CPU s over "
          "the daemon's")
    print("# export runs (wall s, CPU s): "
          + ", ".join(f"{wall:.2f} {cpu:.2f}" for wall, cpu in exports))
    for client, runs in adds.items():
        print(f"# add runs, {client} (wall s, daemon CPU s, client CPU s): "
              + ", ".join(f"{wall:.2f} {cpu:.2f} {c:.2f}" for wall, cpu, c in runs))
    print(f"small cat, one keep-alive connection: {kept:6.0f} requests/s "
          f"({args.requests} requests)")
    print(f"small cat, a new connection each:     {fresh:6.0f} requests/s")


if __name__ == "__main__":
    main()
