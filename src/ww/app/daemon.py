"""`ww daemon`: the embedded node as a long-running service on ``$WW_HOME``.

It composes what exists: the libp2p host with Bitswap serving (as `ww run --listen` builds
it, :mod:`ww.app.build`), the embedded node on it, and the HTTP faces of :mod:`ww.serve`
(the kubo RPC API; a gateway plugs in as one more :class:`ww.serve.server.Site`), served by
hypercorn on a trio run in the main thread until SIGINT or SIGTERM.  One daemon per
repository: it holds ``$WW_HOME/daemon.lock`` (an flock, with its pid in it) and, like
kubo, writes its API address to ``$WW_HOME/api`` while it runs (and the gateway's URL to
``$WW_HOME/gateway``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ww.app.options import RunOptions
from ww.core.errors import AddressError, HostError, IpfsError, WwError
from ww.core.fsutil import private_directory
from ww.core.records import NamedTuple
from ww.ipfs.api import CancelToken, PeerInfo

DEFAULT_API = "/ip4/127.0.0.1/tcp/5001"  # kubo's
DEFAULT_GATEWAY = "/ip4/127.0.0.1/tcp/8080"  # kubo's Addresses.Gateway


class DaemonOptions(NamedTuple):
    api: str = DEFAULT_API
    gateway: str | None = DEFAULT_GATEWAY  # None: no gateway (--gateway off)
    listen: tuple[str, ...] = ()
    join: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    node_key: str | None = None
    allow_dial: tuple[str, ...] = ()
    # content routing, as on `ww run`: the DHT peers to start from, dht|dhtserver|none
    # (None: dht if bootstrap), the reprovide schedule (None: 22 h; "0": never), mDNS
    bootstrap: tuple[str, ...] = ()
    routing: str | None = None
    reprovide_interval: str | None = None
    mdns: bool = False
    json: bool = False
    # The fields whose value came from their WW_* variable ("api", "gateway", "node_key"),
    # so that an error about such a value names the variable.
    from_env: tuple[str, ...] = ()


def _bind(options: DaemonOptions, field: str, addr: str) -> tuple[socket.socket, bool]:
    """:func:`ww.serve.server.bind`, its error naming the flag (and the variable that gave
    the address): ``--api (from WW_API) '...': expected ...``."""
    from ww.serve.server import bind

    try:
        return bind(addr, unix=field == "api")  # a unix socket: for the API (kubo's too)
    except AddressError as e:
        flag = f"--{field}"
        if field in options.from_env:
            flag += f" (from WW_{field.upper()})"
        message = str(e)
        raise AddressError(f"{flag} {message}" if message.startswith("'") else
                           f"{flag}: {message}") from None


class EventLog:
    """One line per event on stderr: ``ww daemon: <what>``, or with ``--json`` one JSON
    object (``ts``, ``event``, ``daemon``: the pid, and the event's fields).

    Written as `ww run` writes its audit lines (:mod:`ww.host.lines`): at once on a regular
    file, else by one thread, never on the event loop, at most a MiB of them waiting, then
    dropped and counted: a pipe nobody reads (a supervisor that stopped reading it) stopped
    the daemon serving once full (about 600 failed requests' lines, each with its argument),
    and its lines are the daemon's, not its clients'.  :meth:`drain` writes what waits as the
    daemon stops."""

    def __init__(self, json_lines: bool) -> None:
        from ww.host import lines

        self.json = json_lines
        self.pid = os.getpid()
        self._lines = lines
        self._out = lines.stderr()

    def __call__(self, event: str, **fields: Any) -> None:
        if self.json:
            record = {"ts": round(time.time(), 6), "event": event, "daemon": self.pid, **fields}
            line = json.dumps(record, separators=(",", ":"))
        else:
            from ww.serve.server import event_text

            line = event_text(event, **fields)
        self._lines.put(self._out, (line + "\n").encode(errors="backslashreplace"), "event",
                        self.json)

    def drain(self) -> None:
        """The lines still waiting written, in their order, before anything said after them
        (bounded: :func:`ww.host.lines.drain`)."""
        self._lines.drain()


class RepoLock:
    """``$WW_HOME/daemon.lock``: held (flock) by the one daemon of a repository."""

    def __init__(self, repo: Path) -> None:
        import fcntl

        self.path = repo / "daemon.lock"
        try:  # not through a symlink: the pid written would truncate whatever it names
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as err:
            raise HostError(f"cannot open {self.path}: "
                            f"{'it is a symlink' if err.errno == errno.ELOOP else err.strerror}"
                            "; remove it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HostError(f"the repository {repo} is served by another ww daemon "
                            f"(pid {holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        os.ftruncate(self._fd, 0)
        os.close(self._fd)


class DhtRouting:
    """The RPC API's content routing (:class:`ww.serve.rpc.Routing`) on the host's DHT."""

    def __init__(self, dht: Any, host: Any) -> None:
        self._dht = dht
        self._host = host

    def announce(self, cids: Iterable[str]) -> None:
        self._dht.provide_soon(cids)  # bounded, on the host's thread, in the background

    def find_providers(self, cid: str, limit: int, token: CancelToken) -> list[PeerInfo]:
        import threading

        from ww.core.cid import CID
        from ww.core.errors import CallCancelled
        from ww.p2p.routing import QUERY_TIMEOUT, RPC_TIMEOUT

        done = threading.Event()
        future = self._host.submit(self._dht.find_providers, CID.parse(cid), limit)
        future.add_done_callback(lambda _: done.set())
        forget = token.on_cancel(done.set)
        try:
            # the lookup ends within its own bounds (a query, then finding addresses)
            if not done.wait(2 * QUERY_TIMEOUT + RPC_TIMEOUT):
                raise IpfsError("routing: the DHT lookup did not end in time")
        finally:
            forget()
        if not future.done():
            raise CallCancelled("routing/findprovs was cancelled")
        try:
            return list(future.result())
        except WwError:
            raise
        except Exception as err:
            raise IpfsError(f"routing: {err}") from None


def _publish(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a reader never sees half of it), replacing what is
    there -- a file left by a daemon that was killed, or a symlink, never followed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def run(options: DaemonOptions) -> int:
    """Serve until SIGINT or SIGTERM; 0 after a clean stop."""
    import signal

    import trio

    from ww.app import build
    from ww.ipfs.repo import default_repo_path
    from ww.serve.gateway import gateway_app
    from ww.serve.rpc import RpcApi
    from ww.serve.server import Site, SocketFile, serve

    log = EventLog(options.json)
    run_options = RunOptions(executable="", listen=options.listen, join=options.join,
                             peers=options.peers, node_key=options.node_key,
                             allow_dial=options.allow_dial, bootstrap=options.bootstrap,
                             routing=options.routing,
                             reprovide_interval=options.reprovide_interval,
                             mdns=options.mdns,
                             from_env=("node_key",) if "node_key" in options.from_env else ())
    repo = default_repo_path()
    private_directory(repo)
    lock = RepoLock(repo)
    sites: list[Site] = []
    node = host = None
    api_file: SocketFile | None = None  # --api /unix/<path>: removed once stopped
    try:
        # A bad or taken address fails before anything starts.
        api_socket = _bind(options, "api", options.api)
        api_file = SocketFile.of(api_socket[0])
        gateway_socket = _bind(options, "gateway", options.gateway) \
            if options.gateway is not None else None
        policy = build.dial_policy(run_options)
        key = build.node_key(run_options)
        host = build.p2p_node(run_options, ["p2p"], policy, key, announce=False,
                              serve_ww=False, warn=lambda m: log("warning", p2p=m))
        assert host is not None
        # With routing, the host's one DHT: it finds providers of missing blocks, announces
        # what is pinned (at start, after each pin, on the reprovide schedule) and answers
        # routing/findprovs; as dhtserver it also answers other peers.
        dht = build.host_dht(run_options, host)
        build.mdns(run_options, host)
        node = build.open_ipfs(None, peers=options.peers, host=host, dial_policy=policy,
                               identity=key, routing=options.routing,
                               bootstrap=options.bootstrap, dht=dht)
        build.reprovide(run_options, dht, node, at_start=True,
                        needs="--bootstrap or --routing dht|dhtserver")
        host.start()
        rpc = RpcApi(node, dial_refusal=policy.refusal, log=log,  # type: ignore[arg-type]
                     routing=DhtRouting(dht, host) if dht is not None else None)
        api = Site(rpc, *api_socket, "api")
        if api_file is None:  # no browser reaches a unix socket: no origin to allow
            rpc.allow_port(api.sock.getsockname()[1])
        sites.append(api)
        # Each HTTP face is one Site (an ASGI app on its bound socket); serve() below serves
        # them all and stops them together.
        if gateway_socket is not None:
            gateway = gateway_app(node, log=lambda line: log("gateway-error", error=line))
            # logged before the API, whose line tells a client that everything is up
            sites.insert(0, Site(gateway, *gateway_socket, "gateway"))
        info = node.id()

        def announce() -> None:
            """The start's log lines: once they are out, SIGINT and SIGTERM stop it cleanly."""
            log("started", peer_id=info.id, repo=str(repo), pid=os.getpid())
            for addr in info.addresses:
                log("p2p", listening=f"{addr}/p2p/{info.id}" if "/p2p/" not in addr else addr)
            for site in sites:
                log(site.name, listening=site.multiaddr)
            for site in sites:
                if not site.loopback:
                    log("warning", **{site.name: f"{site.multiaddr} is reachable beyond this "
                                      "machine: anyone who can reach it may use it"})

        _publish(repo / "api", api.multiaddr.removesuffix("/http") + "\n")
        for site in sites:
            if site.name == "gateway":  # its URL, for scripts (kubo writes no such file)
                address, port = site.sock.getsockname()[:2]
                bracketed = f"[{address}]" if ":" in address else address
                _publish(repo / "gateway", f"http://{bracketed}:{port}\n")

        async def main() -> None:
            stop = trio.Event()

            async def on_signal(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    task_status.started()
                    async for signum in signals:
                        log("stopping", signal=signal.Signals(signum).name)
                        stop.set()
                        return

            async with trio.open_nursery() as nursery:
                await nursery.start(on_signal)
                announce()
                await serve(sites, stop, log=log)
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        for name in ("api", "gateway"):
            try:
                (repo / name).unlink()
            except FileNotFoundError:
                pass
        if api_file is not None:
            api_file.remove()
        if node is not None:
            node.close()
        if host is not None:
            host.stop()
        lock.release()
        log.drain()  # (before the line an error ends it with, which is written at once)
    log("stopped")
    log.drain()
    return 0
