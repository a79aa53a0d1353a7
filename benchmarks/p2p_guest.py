"""A `/ww/0.1.0` host with trio as a guest on pycapnp's asyncio loop, against a trio thread.

    .venv/bin/python benchmarks/p2p_guest.py [--calls 1000] [--rounds 6]

Today a host runs py-libp2p on a trio thread and pycapnp on an asyncio thread, and every
`/ww/0.1.0` stream is spliced between them through a socketpair.  Here the host side can
run instead as one thread: trio started with ``trio.lowlevel.start_guest_run`` on the
asyncio loop that runs pycapnp (trio's task steps run on the asyncio thread; only its epoll
waits run in trio's I/O helper thread), and each stream spliced *directly*: the bytes the
splice reads from the libp2p stream are handed to pycapnp's protocol by a call on the same
thread, and pycapnp's writes are queued for the splice's task, which writes them to the
stream (all of one loop turn's writes in one Yamux frame).  The splice is
:func:`ww.p2p.splice.splice` itself (its budget and limits), with a :class:`Pipe` in place
of the trio socket.

Three host processes run side by side on 127.0.0.1, one of each kind -- "thread": as `ww
run` has it today; "guest": the above; "guest-io": the above with trio's epoll waits moved
from its helper thread onto the asyncio loop too (:func:`wait_on_host_loop`), so the host
is one thread -- each serving an echoing `Service` on `/ww/0.1.0` (no cell: the fd 3 hop is
the same in all) and a bare libp2p echo protocol.  Every round measures each, in turns (the
order rotates each round), each from a fresh caller process that is today's peer (libp2p
on a trio thread, pycapnp through the socketpair):

- "peer -> host": sequential `Service.call("echo", [])` (median, 10th and 99th
  percentiles), then pipelined with 64 in flight (calls/s); the host's CPU per call and its
  threads' context switches per call (Linux /proc), both over the round.
- "libp2p echo": a 100-byte echo on a bare stream to the host's echo protocol: py-libp2p's
  share alone (no Cap'n Proto, no splice), the host's trio in its thread or as a guest.

``--both``: the caller of each guest host runs the same guest mode, its own stream spliced
directly too (:func:`guest_peer`), as landing the design would change both ends.

Printed: each round's figures, each figure's median over the rounds, and for each guest
mode its ratio to the thread's in the same round.  Nothing of ww is changed; only this
benchmark's host processes run the guest modes.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from p2p import ECHO, IN_FLIGHT, MEASURE, _tree_cpu, echo, peer_round, stop_b, time_echo  # noqa: E402

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
MODES = ("thread", "guest", "guest-io")


def wait_on_host_loop() -> None:
    """Make trio's guest runs wait for I/O on the asyncio loop itself, not in a helper thread.

    ``start_guest_run`` runs trio's task steps on the host loop but blocks in epoll on a
    helper thread whenever trio has nothing to run; every wake-up then crosses from that
    thread to the loop (and a wake-up from the loop's own callbacks, such as pycapnp's
    writes, crosses there and back).  trio's epoll descriptor is itself pollable, so here
    the loop watches it (``add_reader``) with a timer for trio's next deadline; trio's
    ``force_wakeup`` writes to a socket in that epoll, so it wakes the loop too.  Replaces
    ``GuestState.guest_tick`` (trio 0.35's, private) in this process: "guest-io" below."""
    from outcome import Error, capture
    from trio._core import _run

    def guest_tick(self: Any) -> None:
        prev_library, _run.sniffio_library.name = _run.sniffio_library.name, "trio"
        try:
            timeout = self.unrolled_run_next_send.send(self.unrolled_run_gen)
        except StopIteration:
            self.done_callback(self.runner.main_task_outcome)
            return
        except _run.TrioInternalError as exc:
            self.done_callback(Error(exc))
            return
        finally:
            _run.sniffio_library.name = prev_library
        io = self.runner.io_manager
        events_outcome = capture(io.get_events, 0)
        if timeout <= 0 or isinstance(events_outcome, Error) or events_outcome.value:
            self.unrolled_run_next_send = events_outcome
            self.runner.guest_tick_scheduled = True
            self.run_sync_soon_not_threadsafe(self.guest_tick)
            return
        self.runner.guest_tick_scheduled = False
        loop = asyncio.get_running_loop()
        fd = io._epoll.fileno()

        def wake() -> None:
            loop.remove_reader(fd)
            timer.cancel()
            self.unrolled_run_next_send = capture(io.get_events, 0)
            self.runner.guest_tick_scheduled = True
            self.guest_tick()

        loop.add_reader(fd, wake)
        timer = loop.call_later(timeout, wake)

    _run.GuestState.guest_tick = guest_tick


class Pipe:
    """Both ends of a direct splice, on the one thread that runs trio (as a guest) and asyncio.

    The trio side is what :func:`ww.p2p.splice.splice` uses of a trio socket (``send``,
    ``recv``, ``shutdown``, ``close``); the asyncio side is the transport under pycapnp's
    ``_PyAsyncIoStreamProtocol`` (``write``, ``pause_reading`` ...).  Bytes from the stream
    go into pycapnp's read buffer as soon as it has one; pycapnp's writes wait in a list
    for the splice's ``recv``.  Each direction holds at most :data:`LIMIT` bytes, as a
    socketpair's buffers would (pycapnp's writes are paused past it, the splice's sends
    wait)."""

    LIMIT = 256 * 1024

    def __init__(self) -> None:
        import trio

        self.protocol: Any = None
        self._reading = False  # pycapnp has a read under way (its buffer is ours to fill)
        self._inbox = bytearray()  # from the stream, not yet taken by pycapnp
        self._inbox_eof = False
        self._eof_given = False
        self._outbox: list[bytes] = []  # pycapnp's writes, not yet taken by the splice
        self._outsize = 0
        self._out_eof = False
        self._closed = False  # pycapnp's side closed the transport
        self._write_paused = False
        self._wake_out = trio.Event()
        self._wake_in = trio.Event()

    def connect(self, protocol: Any) -> None:
        """On the asyncio side: put pycapnp's ``protocol`` on this pipe."""
        self.protocol = protocol
        protocol.connection_made(self)
        self._deliver()

    # -- the splice's side (trio) --

    async def send(self, data: Any) -> int:
        import trio

        if self._closed:
            raise BrokenPipeError("pycapnp closed the connection")
        self._inbox += data
        self._deliver()
        while len(self._inbox) > self.LIMIT and not self._closed:
            event = self._wake_in = trio.Event()
            await event.wait()
        return len(data)

    async def recv(self, _size: int) -> bytes:
        import trio

        while not self._outbox and not self._out_eof and not self._closed:
            event = self._wake_out = trio.Event()
            await event.wait()
        if not self._outbox:
            return b""
        out = self._outbox
        data = out[0] if len(out) == 1 else b"".join(out)
        self._outbox = []
        self._outsize = 0
        if self._write_paused and self.protocol is not None and not self._closed:
            self._write_paused = False
            self.protocol.resume_writing()
        return data

    def shutdown(self, _how: int) -> None:
        self._inbox_eof = True
        self._deliver()

    def close(self) -> None:
        """From either side: from pycapnp (``transport.close``) the splice sees end of file
        and a broken pipe; from the splice (it ended), pycapnp sees the connection lost."""
        self._closed = True
        self._wake_out.set()
        self._wake_in.set()
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.connection_lost(None)

    # -- pycapnp's side (asyncio transport) --

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        self._outbox.append(data)
        self._outsize += len(data)
        if self._outsize > self.LIMIT and not self._write_paused:
            self._write_paused = True
            self.protocol.pause_writing()
        self._wake_out.set()

    def write_eof(self) -> None:
        self._out_eof = True
        self._wake_out.set()

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self._closed

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        self._deliver()

    def get_extra_info(self, _name: str, default: Any = None) -> Any:
        return default

    def _deliver(self) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        inbox = self._inbox
        while self._reading and inbox:
            buffer = protocol.get_buffer(len(inbox))
            n = min(len(buffer), len(inbox))
            buffer[:n] = inbox[:n]
            del inbox[:n]
            protocol.buffer_updated(n)
        if len(inbox) <= self.LIMIT:
            self._wake_in.set()
        if self._reading and not inbox and self._inbox_eof and not self._eof_given:
            self._eof_given = True
            protocol.eof_received()


def direct_splice() -> Any:
    """:func:`ww.p2p.splice.splice`, taking a :class:`Pipe` where it takes a socket."""
    from ww.p2p import splice

    source = inspect.getsource(splice.splice)
    line = "tsock = trio.socket.from_stdlib_socket(sock)"
    if line not in source:
        raise SystemExit("splice() changed: update direct_splice()")
    scope = dict(vars(splice))
    exec(source.replace(line, "tsock = sock"), scope)
    return scope["splice"]


def guest_node_class() -> Any:
    """ww's Node, its trio run a guest of the running asyncio loop (:meth:`start_guest`),
    its `/ww/0.1.0` streams spliced directly to pycapnp: each inbound one handed to the
    ``accept`` callback as a :class:`Pipe`, each outbound one from :meth:`open_pipe`."""
    import trio
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    from ww.core.addrs import PROTOCOL_ID
    from ww.p2p.host import MAX_STREAMS, Node

    splice_to_pipe = direct_splice()

    class GuestNode(Node):
        """Node whose trio run is a guest of the running asyncio loop, `/ww/0.1.0` streams
        spliced directly to pycapnp."""

        async def start_guest(self) -> asyncio.Future[Any]:
            loop = asyncio.get_running_loop()
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._ready = ready
            done: asyncio.Future[Any] = loop.create_future()

            def finished(outcome: Any) -> None:
                if not done.done():
                    done.set_result(outcome)

            trio.lowlevel.start_guest_run(
                self._main, ready, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=loop.call_soon, done_callback=finished,
                host_uses_signal_set_wakeup_fd=True)
            await asyncio.wrap_future(ready)
            return done

        async def _inbound(self, stream: Any) -> None:
            accept = self._accept
            if accept is None or self._streams >= MAX_STREAMS:
                await stream.reset()
                return
            pipe = Pipe()
            try:
                accept(pipe, str(stream.muxed_conn.peer_id))
            except Exception:
                await stream.reset()
                return
            self._streams += 1
            try:
                await splice_to_pipe(stream, pipe, self._budget)
            finally:
                self._streams -= 1

        async def _open_pipe(self, addr: str, future: concurrent.futures.Future[Pipe]) -> None:
            info = info_from_p2p_addr(Multiaddr(addr))
            try:
                await self.dial(info)
                stream = await self._host.new_stream(info.peer_id, [PROTOCOL_ID])
            except Exception as e:
                future.set_exception(e)
                return
            pipe = Pipe()
            future.set_result(pipe)
            self._streams += 1
            try:
                await splice_to_pipe(stream, pipe, self._budget)
            finally:
                self._streams -= 1

        def open_pipe(self, addr: str) -> concurrent.futures.Future[Pipe]:
            """Dial ``addr`` and open a `/ww/0.1.0` stream: the future gives a :class:`Pipe`."""
            future: concurrent.futures.Future[Pipe] = concurrent.futures.Future()
            self._portal.start_soon(self._open_pipe, addr, future)
            return future


    return GuestNode


def capnp_on(pipe: Pipe) -> Any:
    """On the asyncio loop: a pycapnp stream on ``pipe`` (what ``capnp.AsyncIoStream.
    create_connection(sock=...)`` gives on a socket), as the lane makes one on its streams."""
    from ww.p2p.lane import capnp_stream

    return capnp_stream(pipe)


def host(mode: str) -> None:
    """A serving host (``mode``: thread or guest): prints its address, serves until stdin
    closes."""
    import capnp

    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node
    from ww.p2p.protocol import Exports, GatewayServer
    from ww.schema import load

    cell = load("cell")

    class Echo(cell.Service.Server):  # type: ignore[name-defined,misc]
        async def call(self, method: str, args: Any, **kwargs: Any) -> str:
            return ""

    async def serve_pipe(exports: Exports, pipe: Pipe) -> None:
        server = capnp.TwoPartyServer(capnp_on(pipe), bootstrap=GatewayServer(exports))
        try:
            await server.on_disconnect()
        except Exception:
            pass
        finally:
            pipe.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        exports = Exports()
        exports.set(Echo())
        kind = Node if mode == "thread" else guest_node_class()
        node = kind(Identity.from_private_key(PrivateKey.generate()), listen=[LOOPBACK],
                    announce=False, handlers={ECHO: echo})
        if mode == "guest-io":
            wait_on_host_loop()
        if mode != "thread":
            done = await node.start_guest()  # type: ignore[attr-defined]
            node.serve(lambda pipe, peer: loop.call_soon(
                lambda: asyncio.ensure_future(serve_pipe(exports, pipe))))
        else:
            node.start()
            node.serve(exports.accept)
        print(node.addrs[0], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        exports.close_all()
        if mode != "thread":
            node._stop.set()  # type: ignore[union-attr]  # on this thread: trio's guest
            (await done).unwrap()
        else:
            node.stop()

    asyncio.run(capnp.run(main()))


def guest_peer(addr: str, calls: int, mode: str) -> dict[str, float]:
    """The remote peer in guest mode too (``mode``: guest or guest-io), its stream spliced
    directly: the same calls as :func:`p2p.peer_round`."""
    import capnp

    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.protocol import hold
    from ww.schema import load

    scope: dict[str, Any] = {}
    exec(MEASURE, scope)
    if mode == "guest-io":
        wait_on_host_loop()

    async def run() -> dict[str, float]:
        node = guest_node_class()(Identity.from_private_key(PrivateKey.generate()), listen=[])
        done = await node.start_guest()
        client = None
        try:
            pipe = await asyncio.wrap_future(node.open_pipe(addr))
            client = capnp.TwoPartyClient(capnp_on(pipe))
            gateway = client.bootstrap().cast_as(load("cell").Gateway)
            cap = hold((await gateway.service()).service).cast_as(load("cell").Service)
            return await scope["measure"](lambda: cap.call("echo", []), calls)  # type: ignore[no-any-return]
        finally:
            if client is not None:
                client.close()
            node._stop.set()
            (await done).unwrap()

    return asyncio.run(capnp.run(run()))


def echo_peer(addr: str, calls: int) -> dict[str, float]:
    """A 100-byte echo on a bare stream to the host's echo protocol, sequential."""
    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node

    client = Node(Identity.from_private_key(PrivateKey.generate()), listen=[],
                  serve_ww=False, announce=False)
    client.start()
    try:
        return client.submit(time_echo, client, addr, calls).result(300)  # type: ignore[no-any-return]
    finally:
        client.stop()


def switches(pid: int) -> int:
    """Context switches so far of every thread of ``pid`` (Linux /proc): each is a thread
    going to sleep (voluntary) or losing its core; a wake-up between threads costs one."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def child(kind: str, addr: str, calls: int, *more: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, f"--{kind}", addr, str(calls), *more],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--host":
        host(sys.argv[2])
        return
    children: dict[str, Any] = {"--peer": peer_round, "--echo": echo_peer,
                                "--guest-peer": guest_peer}  # ADDR CALLS [MODE]: one round
    if len(sys.argv) >= 4 and sys.argv[1] in children:
        addr, calls, *mode = sys.argv[2:]
        print(json.dumps(children[sys.argv[1]](addr, int(calls), *mode)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("--calls", 1000), ("--rounds", 6)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--both", action="store_true",
                        help="the caller of a guest host runs the same guest mode, its stream "
                             "spliced directly too (both ends changed, as landing it would)")
    options = parser.parse_args()
    calls = options.calls
    loads = [os.getloadavg()[0]]
    hosts: dict[str, tuple[subprocess.Popen[str], str]] = {}
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        (m, p): [] for m in MODES for p in ("peer", "echo")}
    try:
        for mode in MODES:
            server = subprocess.Popen([sys.executable, __file__, "--host", mode],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None
            addr = server.stdout.readline().strip()
            if not addr:
                raise SystemExit(f"the {mode} host did not start")
            hosts[mode] = (server, addr)
        for n in range(options.rounds):
            for mode in MODES[n % len(MODES):] + MODES[:n % len(MODES)]:
                server, addr = hosts[mode]
                before, switched = _tree_cpu(server.pid), switches(server.pid)
                got = (child("guest-peer", addr, calls, mode) if options.both and mode != "thread"
                       else child("peer", addr, calls))
                got["host_cpu_us"] = (_tree_cpu(server.pid) - before) / (2 * calls + 50) * 1e6
                got["host_switches"] = (switches(server.pid) - switched) / (2 * calls + 50)
                results[(mode, "peer")].append(got)
                results[(mode, "echo")].append(child("echo", addr, calls))
                print(f"round {n + 1} {mode:>8}: peer -> host {got['median_us']:5.0f} us "
                      f"(p10 {got['p10_us']:4.0f}), "
                      f"{got['pipelined_per_s']:5.0f}/s pipelined, host CPU "
                      f"{got['host_cpu_us']:4.0f} us/call, {got['host_switches']:.1f} "
                      "switches/call; libp2p echo "
                      f"{results[(mode, 'echo')][-1]['median_us']:4.0f} us; load "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
                loads.append(os.getloadavg()[0])
    finally:
        for server, _ in hosts.values():
            stop_b(server)  # stdin closed: the host stops
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, {calls} calls, "
          f"{IN_FLIGHT} in flight, median of {options.rounds} rounds, load average "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print(f"{'host':<9}{'path':<14}{'median':>8}{'p10':>9}{'p99':>9}{'seq calls/s':>13}"
          f"{'pipelined calls/s':>19}{'host CPU/call':>15}{'switches/call':>15}")
    for path, label in (("peer", "peer -> host"), ("echo", "libp2p echo")):
        for mode in MODES:
            rounds = results[(mode, path)]
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            line = (f"{mode:<9}{label:<14}{med['median_us']:>6.0f}us{med['p10_us']:>7.0f}us"
                    f"{med['p99_us']:>7.0f}us"
                    f"{med['sequential_per_s']:>13.0f}")
            if path == "peer":
                line += (f"{med['pipelined_per_s']:>19.0f}{med['host_cpu_us']:>13.0f}us"
                         f"{med['host_switches']:>15.1f}")
            print(line)
    # Per alternation: each guest mode's figures against the thread's of the same round.
    for mode in MODES[1:]:
        for path, key in (("peer", "median_us"), ("peer", "p10_us"), ("peer", "pipelined_per_s"),
                          ("peer", "host_cpu_us"), ("peer", "host_switches"),
                          ("echo", "median_us"), ("echo", "p10_us")):
            ratios = [g[key] / t[key] for g, t in
                      zip(results[(mode, path)], results[("thread", path)], strict=True)]
            print(f"{mode}/thread, {path} {key}, each round: "
                  + ", ".join(f"{r:.2f}" for r in ratios)
                  + f" (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
