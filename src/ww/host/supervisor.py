"""Spawning a cell, forwarding signals to it, serving fd 3, and mapping its exit status.

Start-up is kept short: the cell is started before anything it does not need.  pycapnp
and asyncio are imported only once the cell sends its first bytes on fd 3, so a cell
that never speaks RPC (``ww run /bin/true``) never pays for them.

No orphans: the jail (or, with ``--jail=none``, the program) gets ``PR_SET_PDEATHSIG``
= SIGKILL, and bubblewrap's ``--die-with-parent`` carries that to everything inside, so
a host killed even by SIGKILL takes its cell with it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ww.errors import HostError
from ww.host import executable, fds, jail

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1


@dataclass
class RunConfig:
    """Everything `ww run` decided from its command line."""

    command: str
    args: list[str]
    env: dict[str, str]
    grants: list[fds.FdGrant] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    capability_factories: dict[str, Callable[[], Any]] = field(default_factory=dict)
    jailed: bool = True
    search_path: str | None = None
    debug: bool = False


def _pdeathsig_setter() -> Callable[[], None]:
    """A function for the forked child: die by SIGKILL when the host dies.

    The library is loaded here, in the host, so that the child between fork and exec does
    nothing but one system call.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return set_pdeathsig


class _Cell:
    """A started cell: the process we spawned and how to reach the program inside."""

    def __init__(self, proc: subprocess.Popen[bytes], status_fd: int | None) -> None:
        self.proc = proc
        self.jailed = status_fd is not None
        self._status_fd = status_fd
        self._status = b""
        self.exit_code: int | None = None  # as reported by bubblewrap
        self.child_pid: int | None = None  # bubblewrap's init, in our pid namespace

    def read_status(self) -> None:
        """Drain bubblewrap's JSON status pipe (non-blocking)."""
        if self._status_fd is None:
            return
        while True:
            try:
                chunk = os.read(self._status_fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                os.close(self._status_fd)
                self._status_fd = None
                break
            self._status += chunk
        if self.child_pid is None and (m := re.search(rb'"child-pid"\s*:\s*(\d+)', self._status)):
            self.child_pid = int(m.group(1))
        if m := re.search(rb'"exit-code"\s*:\s*(\d+)', self._status):
            self.exit_code = int(m.group(1))

    def program_pid(self) -> int:
        """The pid to signal: the cell's program itself, not bubblewrap around it."""
        if not self.jailed:
            return self.proc.pid  # we spawned the program directly
        self.read_status()
        if self.child_pid is not None:
            try:
                with open(f"/proc/{self.child_pid}/task/{self.child_pid}/children") as f:
                    children = f.read().split()
                if children:
                    return int(children[0])
            except OSError:
                pass
        return self.proc.pid  # not started yet: stopping bubblewrap stops the jail

    def forward(self, signum: int, frame: FrameType | None = None) -> None:
        if self.proc.returncode is not None:
            return
        try:
            os.kill(self.program_pid(), signum)
        except ProcessLookupError:
            pass


def _spawn(argv: list[str], env: dict[str, str], rpc_fd: int, config: RunConfig,
           status_w: int | None, cwd: str | None) -> subprocess.Popen[bytes]:
    grants = config.grants
    status_target = fds.FIRST_GRANTED_FD + len(grants)
    keep = [fds.RPC_FD] + [g.target for g in grants]
    if status_w is not None:
        keep.append(status_target)

    set_pdeathsig = _pdeathsig_setter()

    def child_setup() -> None:
        set_pdeathsig()
        fds.install_fds(rpc_fd, grants)
        if status_w is not None:
            os.dup2(status_w, status_target, inheritable=True)

    try:
        return subprocess.Popen(
            argv,
            env=env,
            pass_fds=keep,
            close_fds=True,
            preexec_fn=child_setup,
            start_new_session=status_w is None,  # bubblewrap does its own --new-session
            cwd=cwd,
        )
    except OSError as e:
        raise HostError(f"cannot start {argv[0]}: {e.strerror}") from None


def run(config: RunConfig) -> int:
    """Run one cell to completion and return the exit status for `ww run`."""
    program = executable.prepare(config.command, config.args, config.search_path)
    bwrap = jail.find_bwrap() if config.jailed else None
    host_sock, cell_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    workdir: str | None = None
    status_r: int | None = None
    status_w: int | None = None
    if bwrap is not None:
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        spec = jail.JailSpec(binds=program.binds,
                             status_fd=fds.FIRST_GRANTED_FD + len(config.grants))
        argv = jail.bwrap_argv(bwrap, spec, program.argv)
    else:
        import tempfile

        print("ww: warning: --jail=none: the cell runs with the host's full authority "
              "(no namespaces, no private file system)", file=sys.stderr)
        workdir = tempfile.mkdtemp(prefix="ww-cell-")
        argv = program.argv
    # Signals are caught before the cell starts: one that arrives while it is being spawned
    # is held and delivered as soon as there is a cell to deliver it to.
    pending: list[int] = []
    target: list[_Cell] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if target:
            target[0].forward(signum)
        else:
            pending.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in FORWARDED_SIGNALS}
    try:
        proc = _spawn(argv, config.env, cell_sock.fileno(), config, status_w, workdir)
        cell_sock.close()
        if status_w is not None:
            os.close(status_w)
        cell = _Cell(proc, status_r)
        target.append(cell)
        for signum in pending:
            cell.forward(signum)
        _supervise(cell, host_sock, config)
        return _exit_status(cell)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        host_sock.close()
        if workdir is not None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def _supervise(cell: _Cell, host_sock: socket.socket, config: RunConfig) -> None:
    """Wait for the cell to exit; start serving RPC if it speaks on fd 3 first."""
    pidfd = os.pidfd_open(cell.proc.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(host_sock, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if pidfd in ready:
                break
            if host_sock.fileno() in ready:
                try:
                    spoke = host_sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
                except (BlockingIOError, ConnectionError):
                    spoke = False
                if spoke:
                    _serve_rpc(pidfd, host_sock, config)
                    break
                # The cell closed fd 3 without a word (or is exiting): just wait for it.
                poller.unregister(host_sock)
        cell.proc.wait()
    finally:
        os.close(pidfd)
    cell.read_status()


def _serve_rpc(pidfd: int, host_sock: socket.socket, config: RunConfig) -> None:
    import asyncio

    import capnp

    from ww.host import rpc

    grants = rpc.Grants(names=list(config.capabilities), factories=config.capability_factories)
    rpc.report_internal_errors(config.debug)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        await rpc.serve(host_sock, grants, exited)
        await exited  # the cell may hang up fd 3 and keep running

    asyncio.run(capnp.run(main()))


def _exit_status(cell: _Cell) -> int:
    rc = cell.proc.returncode
    assert rc is not None
    if rc < 0:
        return 128 - rc  # the process we spawned was killed by a signal
    if not cell.jailed:
        return rc
    if cell.exit_code is not None:
        return cell.exit_code
    raise HostError("the jail could not be set up (bubblewrap failed; see its message above)")
