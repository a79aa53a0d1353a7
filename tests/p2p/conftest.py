"""Real `ww run` hosts on 127.0.0.1 (port 0), each with its own $WW_HOME, and real cells."""

from __future__ import annotations

import os
import queue
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, host_env

LOOPBACK = "/ip4/127.0.0.1/tcp/0"

# A cell that exports a generic Service, prints the address to dial it, and serves until its
# stdin closes (or HANG seconds pass: a bound against a leak only).  argv[1] == "hangup":
# close fd 3 right after printing, and keep running until stdin closes.
EXPORTER = """
import asyncio, os, sys
import ww.cell

class Echo(ww.cell.Service.Server):
    async def call(self, method, args, **kwargs):
        if method == "echo":
            return " ".join(args)
        if method == "upper":
            return " ".join(args).upper()
        raise ValueError(f"unknown method {method!r}")

async def wait_for_stdin_eof():
    eof = asyncio.Event()
    def readable():
        if not os.read(0, 4096):
            eof.set()
    asyncio.get_running_loop().add_reader(0, readable)
    try:
        await asyncio.wait_for(eof.wait(), HANG)
    except TimeoutError:
        pass

async def main():
    async with ww.cell.connect() as s:
        await s.p2p.export(Echo())
        peer, addrs = await s.p2p.id()
        print(addrs[0], flush=True)
        if sys.argv[1:] != ["hangup"]:
            await wait_for_stdin_eof()
            return
    print("hung up", flush=True)
    await wait_for_stdin_eof()

asyncio.run(main())
""".replace("HANG", str(HANG))


class Host:
    """A running `ww run`; its stdout and stderr lines are collected by two threads."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lines = {name: queue.Queue() for name in ("stdout", "stderr")}
        self._stderr: list[str] = []
        self._pumps = [threading.Thread(target=self._pump, args=(name,), daemon=True)
                       for name in self._lines]
        for pump in self._pumps:
            pump.start()
        self.addr = ""

    def _pump(self, name: str) -> None:
        stream = getattr(self.proc, name)
        for line in stream:
            if name == "stderr":
                self._stderr.append(line)
            self._lines[name].put(line.rstrip("\n"))
        self._lines[name].put(None)

    def _next(self, name: str, timeout: float) -> str:
        try:
            line = self._lines[name].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line on the cell's {name} within {timeout} s") from None
        if line is None:
            raise AssertionError(f"the cell's {name} ended: {''.join(self._stderr)}")
        return line

    def readline(self, timeout: float = HANG) -> str:
        return self._next("stdout", timeout)

    def stderr_line(self, timeout: float = HANG) -> str:
        return self._next("stderr", timeout)

    def stop(self, timeout: float = HANG) -> tuple[int, str]:
        """Close the cell's stdin (it exits), wait; (status, all of stderr)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pump in self._pumps:  # the streams end when the last process holding them does
            pump.join(HANG)
        return self.proc.returncode, "".join(self._stderr)


@pytest.fixture
def cell_file(tmp_path: Path):
    def make(body: str, name: str) -> str:
        path = tmp_path / name
        path.write_text("#!/usr/bin/env python3\n" + textwrap.dedent(body).lstrip("\n"))
        path.chmod(0o755)
        return str(path)

    return make


@pytest.fixture
def home(tmp_path: Path):
    """A separate $WW_HOME (so a separate node key and peer id) per host name."""

    def make(name: str) -> dict[str, str]:
        path = tmp_path / f"home-{name}"
        path.mkdir(exist_ok=True)
        return host_env(WW_HOME=str(path))

    return make


@pytest.fixture
def start_host(home) -> Iterator:
    started: list[Host] = []

    def start(name: str, *args: str, timeout: float = HANG) -> Host:
        proc = subprocess.Popen([WW, "run", *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=home(name))
        host = Host(proc)
        try:
            host.addr = host.readline(timeout)
        except AssertionError as e:
            proc.kill()
            proc.wait()
            raise AssertionError(f"host {name} did not start: {e}") from None
        started.append(host)
        return host

    yield start
    for host in started:
        if host.proc.poll() is None:
            host.stop()


@pytest.fixture
def header_alone() -> Iterator[None]:
    """py-libp2p's own multistream-select client for the test (every py-libp2p dialer of
    the process writes the header alone and waits for the listener's, as py-libp2p 0.8.1
    does), instead of ww's, which proposes with the header (ww.p2p.host)."""
    from libp2p.protocol_muxer.multiselect_client import MultiselectClient

    ours = MultiselectClient.select_one_of
    MultiselectClient.select_one_of = ours._ww_original  # type: ignore[attr-defined]
    try:
        yield
    finally:
        MultiselectClient.select_one_of = ours  # type: ignore[method-assign]


@pytest.fixture
def peer(tmp_path: Path):
    """A bare libp2p node of our own (py-libp2p, no lane): ``peer.open(addr)`` gives a raw
    `/ww/0.1.0` socket, through the host's splice."""
    from ww.core.identity import load_or_create
    from ww.p2p.host import Node

    node = Node(load_or_create(tmp_path / "peer"), listen=[], serve_ww=False, announce=False,
                warn=lambda message: None)
    node.start()
    yield node
    node.stop()


@pytest.fixture
def exporter(start_host, cell_file):
    """Host B: `ww run --with-p2p` with the EXPORTER cell; its address is `.addr`."""

    def start(*cell_args: str) -> Host:
        cell = cell_file(EXPORTER, "exporter.py")
        return start_host("b", "--with-p2p", "--listen", LOOPBACK, cell, *cell_args)

    return start


def ww_call(*args: str, timeout: float = HANG) -> subprocess.CompletedProcess[str]:
    """`ww call ARGS...`; unless the test passes its own, with a --timeout generous by design
    instead of the product's 10 s (a call on a loaded machine may take longer)."""
    env = dict(os.environ)
    if "--timeout" not in args:
        args = ("--timeout", str(HANG), *args)
    return subprocess.run([WW, "call", *args], capture_output=True, text=True,
                          timeout=timeout + 60, env=env)
