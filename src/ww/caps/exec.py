"""The process-execution capability: a cell starts sub-cells (``--with-exec``).

Each sub-cell is a real ``ww run`` of its own, started by the host with exactly the flags that
encode what the parent hands down (``--with-console``, ``--with-ipfs --ipfs-read-only
--ipfs-root ...``, ``--with-exec --exec-allow ...``) and the parent's own jail, IPFS node and
resource-limit flags.  So a child is jailed, limited and granted by the same code as any cell,
and has no more authority than its flags say: the child ``ww run`` gets no ``WW_*`` variable
of the host's environment (``WW_WITH_ALL=1`` must not reach it), and the cell's environment
entries are passed as ``--env NAME=VALUE`` only (never ``NAME``, which would copy the host's).

The child's stdin, stdout and stderr are pipes the parent cell reaches through ``Process``.
No orphans: each child ``ww run`` gets ``PR_SET_PDEATHSIG`` = SIGKILL (its own cell dies with
it, as every cell dies with its ``ww run``), and the host kills its children when the parent
cell exits or hangs up fd 3 (:meth:`ExecutorServer.close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ww.caps.denied import Caller
from ww.host.audit import AUDIT_FD_ENV
from ww.host.policy import ExecGrant, GrantSet, IpfsGrant
from ww.schema import load

_cell = load("cell")

MAX_READ = 1024 * 1024
MAX_CHILDREN = 32  # sub-cells one login may have running at once (they are outside its --pids)
MAX_WRITE = 4 * 1024 * 1024
ALLOWED_SIGNALS = {signal.SIGHUP: "SIGHUP", signal.SIGINT: "SIGINT",
                   signal.SIGTERM: "SIGTERM", signal.SIGKILL: "SIGKILL"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PR_SET_PDEATHSIG = 1
KEPT_HOST_VARIABLES = ("WW_HOME",)  # the only WW_* variable a child `ww run` inherits


def ww_command() -> list[str]:
    """How to start `ww`: the console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("ww")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ww.cli.main import main; main(sys.argv[1:])"]


@dataclass
class ExecSetup:
    """What every child `ww run` of this host shares, decided from the host's command line."""

    global_flags: list[str] = field(default_factory=list)  # before `run`: --json, --debug
    run_flags: list[str] = field(default_factory=list)  # --jail, --ipfs, limits, --strict
    audit: bool = False  # pass the host's stderr on for the child's audit lines
    ww: list[str] = field(default_factory=ww_command)

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items()
                if not k.startswith("WW_") or k in KEPT_HOST_VARIABLES}


def child_flags(grants: GrantSet) -> list[str]:
    """The `ww run` flags that grant exactly ``grants``."""
    flags: list[str] = []
    if grants.console:
        flags.append("--with-console")
    if grants.ipfs is not None:
        flags.append("--with-ipfs")
        if grants.ipfs.read_only:
            flags.append("--ipfs-read-only")
        for root in grants.ipfs.roots:
            flags += ["--ipfs-root", root]
    if grants.exec is not None:
        flags.append("--with-exec")
        for path in grants.exec.allow:
            flags += ["--exec-allow", path]
    return flags


def _pdeathsig_setter() -> Callable[[], None]:
    """For the forked child: die by SIGKILL when the host (this thread) dies."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return setup


class ExecutorServer(_cell.Executor.Server):  # type: ignore[name-defined,misc]
    """``spawn`` for one login: hands down at most what that login holds."""

    def __init__(self, setup: ExecSetup, grants: GrantSet, caller: Caller,
                 held: dict[str, Any]) -> None:
        assert grants.exec is not None
        self._setup = setup
        self._grants = grants
        self._exec: ExecGrant = grants.exec
        self._caller = caller
        self._ipfs = held.get("ipfs")  # the login's IpfsServer, to narrow from
        self._children: set[ProcessServer] = set()
        self._closed = False

    def _deny(self, reason: str) -> Exception:
        return self._caller.deny("exec", "spawn", reason)

    def _program(self, executable: str) -> str:
        if executable.startswith("/ipfs/"):
            return executable
        path = os.path.normpath(executable) if os.path.isabs(executable) else None
        if path is None or path not in self._exec.allow:
            raise self._deny(f"{executable} is not an allowed executable (an /ipfs/ path, or a "
                             "local path the operator allowed with --exec-allow)")
        return path

    def _child_grants(self, grant: Any) -> GrantSet:
        """What the child gets: never more than this login holds."""
        holds = {"console": self._grants.console, "ipfs": self._grants.ipfs is not None,
                 "exec": True}
        for name, held in holds.items():
            if getattr(grant, name) and not held:
                raise self._deny(f"cannot hand down {name!r}, which this cell does not hold")
        ipfs = None
        if grant.ipfs:
            assert self._ipfs is not None
            scope = self._ipfs.narrowed("spawn", grant.ipfsReadOnly,
                                        [str(r) for r in grant.ipfsRoots])
            ipfs = IpfsGrant(scope.read_only, scope.roots)
        return GrantSet(console=bool(grant.console), ipfs=ipfs,
                        exec=self._exec if grant.exec else None)

    async def spawn(self, executable: str, args: Any, env: Any, grant: Any, _context: Any,
                    **kwargs: Any) -> None:
        if self._closed:
            raise ValueError("this cell's session is over")
        self._children = {c for c in self._children if c.running}
        if len(self._children) >= MAX_CHILDREN:
            raise self._deny(f"{MAX_CHILDREN} sub-cells are already running; wait for one")
        program = self._program(executable)
        child = self._child_grants(grant)
        env_flags: list[str] = []
        for entry in env:
            name, sep, _ = str(entry).partition("=")
            if not sep or not _ENV_NAME.match(name):
                raise ValueError(f"environment entry {str(entry)!r}: expected NAME=VALUE")
            env_flags += ["--env", str(entry)]
        setup = self._setup
        argv = [*setup.ww, *setup.global_flags, "run", *setup.run_flags, *child_flags(child),
                *env_flags, "--", program, *map(str, args)]
        environment = setup.environment()
        pass_fds: tuple[int, ...] = ()
        if setup.audit:
            audit_fd = os.dup(self._caller.audit.fd)
            environment[AUDIT_FD_ENV] = str(audit_fd)
            pass_fds = (audit_fd,)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=environment, pass_fds=pass_fds,
                start_new_session=True, preexec_fn=_pdeathsig_setter(),
            )
        finally:
            for fd in pass_fds:
                os.close(fd)
        server = ProcessServer(proc, self._caller, program)
        self._children.add(server)
        self._caller.audit.emit("spawn", peer=self._caller.peer, program=program,
                                args=list(map(str, args)), granted=child.names(),
                                flags=child_flags(child), pid=proc.pid)
        _context.results.process = server

    def close(self) -> None:
        self._closed = True
        for child in self._children:
            child.stop()


class ProcessServer(_cell.Process.Server):  # type: ignore[name-defined,misc]
    """One running sub-cell: its stdio as streams, its exit status, signals."""

    def __init__(self, proc: asyncio.subprocess.Process, caller: Caller, program: str) -> None:
        self._proc = proc
        self._caller = caller
        self._program = program
        assert proc.stdin and proc.stdout and proc.stderr
        self._stdin = ByteWriterServer(proc.stdin)
        self._stdout = ByteReaderServer(proc.stdout)
        self._stderr = ByteReaderServer(proc.stderr)
        self._reported = False

    async def stdin(self, _context: Any, **kwargs: Any) -> None:
        _context.results.stream = self._stdin

    async def stdout(self, _context: Any, **kwargs: Any) -> None:
        _context.results.stream = self._stdout

    async def stderr(self, _context: Any, **kwargs: Any) -> None:
        _context.results.stream = self._stderr

    async def wait(self, **kwargs: Any) -> int:
        rc = await self._proc.wait()
        status = 128 - rc if rc < 0 else rc
        if not self._reported:
            self._reported = True
            self._caller.audit.emit("exit", peer=self._caller.peer, program=self._program,
                                    pid=self._proc.pid, status=status)
        return status

    async def kill(self, signum: int, **kwargs: Any) -> None:
        if signum not in ALLOWED_SIGNALS:
            raise ValueError(f"signal {signum}: only SIGHUP (1), SIGINT (2), SIGTERM (15) and "
                             "SIGKILL (9) can be sent to a sub-cell")
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)

    @property
    def running(self) -> bool:
        return self._proc.returncode is None

    def stop(self) -> None:
        """Kill the child `ww run` (its cell and its own children die with it)."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()


class ByteReaderServer(_cell.ByteReader.Server):  # type: ignore[name-defined,misc]
    """Reads of a pipe; a cell may keep several in flight, answered in order."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._lock = asyncio.Lock()  # a StreamReader serves one reader at a time

    async def read(self, count: int, **kwargs: Any) -> bytes:
        if count == 0:
            return b""
        async with self._lock:
            return await self._stream.read(min(count, MAX_READ))


class ByteWriterServer(_cell.ByteWriter.Server):  # type: ignore[name-defined,misc]
    """Writes to a pipe, applied in the order they were sent."""

    def __init__(self, stream: asyncio.StreamWriter) -> None:
        self._stream = stream

    async def write(self, data: bytes, **kwargs: Any) -> None:
        if len(data) > MAX_WRITE:
            raise ValueError(f"write of {len(data)} bytes: at most {MAX_WRITE} per call")
        if self._stream.is_closing():
            raise ValueError("the sub-cell's stdin is closed")
        try:
            self._stream.write(bytes(data))
            await self._stream.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise ValueError("the sub-cell closed its stdin") from None

    async def close(self, **kwargs: Any) -> None:
        if not self._stream.is_closing():
            self._stream.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self._stream.wait_closed()
