"""The process-execution capability: a cell starts sub-cells (``--with-exec``).

Each sub-cell is a real ``ww run`` of its own, started by the host with exactly the flags that
encode what the parent hands down (``--with-console``, ``--with-ipfs --ipfs-read-only
--ipfs-root ...``, ``--with-exec --exec-allow ...``) and the parent's own jail, IPFS node and
resource-limit flags (the command line is rendered by :mod:`ww.app.argv`, from the table the
command line is parsed with).  So a child is jailed, limited and granted by the same code as
any cell, and has no more authority than its flags say: the child ``ww run`` gets no ``WW_*``
variable of the host's environment (``WW_WITH_ALL=1`` must not reach it), and the cell's
environment entries are passed as ``--env NAME=VALUE`` only (never ``NAME``, which would copy
the host's).

The child's stdin, stdout and stderr are pipes the parent cell reaches through ``Process``.
No orphans: each child ``ww run`` gets ``PR_SET_PDEATHSIG`` = SIGKILL (its own cell dies with
it, as every cell dies with its ``ww run``), and the host kills its children when the parent
cell exits or hangs up fd 3 (:meth:`ExecutorServer.close`), then reaps them
(:meth:`ExecutorServer.wait_closed`).

Children are started as a :class:`ww.host.process.Process`, as `ww run` starts its cell, and
reaped through its pidfd watched by the event loop (:class:`_Child`), not with
``asyncio.create_subprocess_exec`` (see :mod:`ww.host.process` for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ww.core import bridge
from ww.core.errors import CallError
from ww.host.answers import UNBOUNDED, AnswerBudget
from ww.host.audit import AUDIT_FD_ENV
from ww.host.denied import Caller
from ww.host.limits.subcells import SubcellBudget
from ww.host.policy import ExecGrant, GrantSet, IpfsGrant
from ww.host.process import PIPE, ChildSetupError, Process, exit_status
from ww.schema import load

_cell = load("cell")

MAX_READ = 1024 * 1024
MAX_CHILDREN = 32  # sub-cells one login may have running at once (see also SubcellBudget)
MAX_WRITE = 4 * 1024 * 1024
ALLOWED_SIGNALS = {signal.SIGHUP: "SIGHUP", signal.SIGINT: "SIGINT",
                   signal.SIGTERM: "SIGTERM", signal.SIGKILL: "SIGKILL"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The only WW_* variables a child `ww run` inherits: the repository, and the operator's cap
# on the size of /ipfs programs (ww.host.fetch), so the whole tree keeps it.
KEPT_HOST_VARIABLES = ("WW_HOME", "WW_MAX_PROGRAM_SIZE")


class ChildCommand(Protocol):
    """How the host starts a sub-cell's `ww run` (``ww.app.argv.SubcellCommand``)."""

    def argv(self, grants: GrantSet, env: list[str], program: str, args: list[str]
             ) -> list[str]: ...

    def grant_flags(self, grants: GrantSet) -> list[str]: ...


@dataclass
class ExecSetup:
    """What every child `ww run` of this host shares, decided from the host's configuration."""

    command: ChildCommand  # the child's command line: the host's shared flags, its grants
    audit: bool = False  # pass the host's stderr on for the child's audit lines
    subcells: SubcellBudget = field(default_factory=SubcellBudget)  # the tree's, shared

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items()
                if not k.startswith("WW_") or k in KEPT_HOST_VARIABLES}


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

    async def _program(self, executable: str) -> str:
        if executable.startswith("/ipfs/"):
            # Running it makes the host fetch it: with IPFS narrowed to roots, only a program
            # the cell could `cat`.  Without IPFS at all, exec implies fetching its programs.
            if self._ipfs is not None and (reason := await self._ipfs.program_denied(executable)):
                raise self._deny(f"{reason}; a sub-cell's /ipfs/ program must lie under this "
                                 "cell's IPFS roots")
            return executable
        path = os.path.normpath(executable) if os.path.isabs(executable) else None
        if path is None or path not in self._exec.allow:
            raise self._deny(f"{executable} is not an allowed executable (an /ipfs/ path, or a "
                             "local path the operator allowed with --exec-allow)")
        return path

    async def _child_grants(self, grant: Any) -> GrantSet:
        """What the child gets: never more than this login holds."""
        holds = {"console": self._grants.console, "ipfs": self._grants.ipfs is not None,
                 "exec": True}
        for name, held in holds.items():
            if getattr(grant, name) and not held:
                raise self._deny(f"cannot hand down {name!r}, which this cell does not hold")
        ipfs = None
        if grant.ipfs:
            assert self._ipfs is not None
            scope = await self._ipfs.narrow("spawn", grant.ipfsReadOnly,
                                            [str(r) for r in grant.ipfsRoots])
            ipfs = IpfsGrant(scope.read_only, scope.roots)
        return GrantSet(console=bool(grant.console), ipfs=ipfs,
                        exec=self._exec if grant.exec else None)

    async def spawn(self, executable: str, args: Any, env: Any, grant: Any, _context: Any,
                    **kwargs: Any) -> None:
        if self._closed:
            raise CallError("this cell's session is over")
        program = await self._program(executable)
        child = await self._child_grants(grant)
        self._children = {c for c in self._children if c.running}
        if len(self._children) >= MAX_CHILDREN:
            raise self._deny(f"{MAX_CHILDREN} sub-cells are already running; wait for one")
        env_entries: list[str] = []
        for entry in env:
            name, sep, _ = str(entry).partition("=")
            if not sep or not _ENV_NAME.match(name):
                raise CallError(f"environment entry {str(entry)!r}: expected NAME=VALUE")
            env_entries.append(str(entry))
        setup = self._setup
        argv = setup.command.argv(child, env_entries, program, list(map(str, args)))
        # The whole tree of sub-cells shares the parent's budget (ww.host.limits.subcells).
        lease = self._setup.subcells.take()
        if lease is None:
            raise self._deny("this tree of cells already runs as many sub-cells at once as "
                             "it may (32, and no more than --pids); wait for one")
        environment = {**setup.environment(), **lease.environment()}
        pass_fds: tuple[int, ...] = ()
        try:
            if setup.audit:
                audit_fd = os.dup(self._caller.audit.fd)
                environment[AUDIT_FD_ENV] = str(audit_fd)
                pass_fds = (audit_fd,)
            proc = await _Child.start(argv, environment, pass_fds + lease.pass_fds,
                                      lease.preexec())
        except ChildSetupError:
            lease.release()
            raise self._deny("the kernel refused to start the sub-cell in this cell's "
                             "cgroup") from None
        except BaseException:
            lease.release()
            raise
        finally:
            lease.spawned()
            for fd in pass_fds:
                os.close(fd)
        proc.exited.add_done_callback(lambda _: lease.release())
        server = ProcessServer(proc, self._caller, program)
        self._children.add(server)
        self._caller.audit.emit("spawn", peer=self._caller.peer, program=program,
                                args=list(map(str, args)), granted=child.names(),
                                flags=setup.command.grant_flags(child), pid=proc.pid)
        _context.results.process = server

    def close(self) -> None:
        self._closed = True
        for child in self._children:
            child.stop()

    async def wait_closed(self, timeout: float) -> None:
        """After :meth:`close`: reap the killed children (at most ``timeout`` seconds)."""
        exits = [child.exited for child in self._children if child.running]
        if exits:
            await asyncio.wait(exits, timeout=timeout)


class _Child:
    """A child `ww run` with its stdio as asyncio streams, reaped through its pidfd.

    ``exited`` completes with its return code once it is reaped (see
    :meth:`ww.host.process.Process.watch`).
    """

    def __init__(self, process: Process, stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:
        self.process = process
        self.pid = process.pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.exited: asyncio.Future[int] = process.watch(asyncio.get_running_loop())

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...],
                    join_budget: Callable[[], None] | None = None) -> _Child:
        # join_budget: the parent cell's cgroup, before the child runs anything
        process = Process.spawn(
            argv, env=env, stdin=PIPE, stdout=PIPE, stderr=PIPE, pass_fds=pass_fds,
            new_session=True, join=join_budget,
        )
        assert process.stdin and process.stdout and process.stderr
        loop = asyncio.get_running_loop()
        readers = []
        for pipe in (process.stdout, process.stderr):
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r),
                                         bridge.loop_pipe(loop, pipe))
            readers.append(reader)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
            bridge.loop_pipe(loop, process.stdin))
        stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(process, stdin, readers[0], readers[1])

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    def send_signal(self, signum: int) -> None:
        if not self.exited.done():
            self.process.send_signal(signum)  # not reaped yet, so the pid is still its


class ProcessServer(_cell.Process.Server):  # type: ignore[name-defined,misc]
    """One running sub-cell: its stdio as streams, its exit status, signals."""

    def __init__(self, proc: _Child, caller: Caller, program: str) -> None:
        self._proc = proc
        self._caller = caller
        self._program = program
        self._stdin = ByteWriterServer(proc.stdin)
        self._stdout = ByteReaderServer(proc.stdout, caller.answers)
        self._stderr = ByteReaderServer(proc.stderr, caller.answers)
        self._reported = False

    async def stdin(self, _context: Any, **kwargs: Any) -> None:
        _context.results.stream = self._stdin

    async def stdout(self, _context: Any, **kwargs: Any) -> None:
        _context.results.stream = self._stdout

    async def stderr(self, _context: Any, **kwargs: Any) -> None:
        _context.results.stream = self._stderr

    async def wait(self, **kwargs: Any) -> int:
        status = exit_status(await asyncio.shield(self._proc.exited))
        if not self._reported:
            self._reported = True
            self._caller.audit.emit("exit", peer=self._caller.peer, program=self._program,
                                    pid=self._proc.pid, status=status)
        return status

    async def kill(self, signum: int, **kwargs: Any) -> None:
        if signum not in ALLOWED_SIGNALS:
            raise CallError(f"signal {signum}: only SIGHUP (1), SIGINT (2), SIGTERM (15) and "
                             "SIGKILL (9) can be sent to a sub-cell")
        self._proc.send_signal(signum)

    @property
    def running(self) -> bool:
        return self._proc.returncode is None

    @property
    def exited(self) -> asyncio.Future[int]:
        return self._proc.exited

    def stop(self) -> None:
        """Kill the child `ww run` (its cell and its own children die with it)."""
        self._proc.send_signal(signal.SIGKILL)


class ByteReaderServer(_cell.ByteReader.Server):  # type: ignore[name-defined,misc]
    """Reads of a pipe; a cell may keep several in flight, answered in order, each within
    the cell's :class:`~ww.host.answers.AnswerBudget`.  A read takes its share once the
    sub-cell's output is there, not while it waits for it: the sub-cell may be waiting for
    the cell, and the cell for an answer that needs the share (reads of 16 workers'
    output, each waiting for its input, held the whole budget, and the cell's read of the
    17th worker, fed first, waited for ever).  Held meanwhile: what one read of the pipe
    gave, beside what asyncio buffers of it anyway; a read cancelled then leaves it to the
    next."""

    def __init__(self, stream: asyncio.StreamReader, answers: AnswerBudget = UNBOUNDED) -> None:
        self._stream = stream
        self._answers = answers
        self._lock = asyncio.Lock()  # a StreamReader serves one reader at a time
        self._kept = b""  # read from the pipe for a read cancelled while it waited for room

    async def read(self, count: int, **kwargs: Any) -> bytes:
        if count == 0:
            return b""
        count = min(count, MAX_READ)
        async with self._lock:
            if self._kept:
                data, self._kept = self._kept[:count], self._kept[count:]
            else:
                data = await self._stream.read(count)
            try:
                async with self._answers.answer(len(data)):
                    return data
            except asyncio.CancelledError:  # only while it waited: the next read gets them
                self._kept = data + self._kept
                raise


class ByteWriterServer(_cell.ByteWriter.Server):  # type: ignore[name-defined,misc]
    """Writes to a pipe, applied in the order they were sent."""

    def __init__(self, stream: asyncio.StreamWriter) -> None:
        self._stream = stream

    async def write(self, data: bytes, **kwargs: Any) -> None:
        if len(data) > MAX_WRITE:
            raise CallError(f"write of {len(data)} bytes: at most {MAX_WRITE} per call")
        if self._stream.is_closing():
            raise CallError("the sub-cell's stdin is closed")
        try:
            self._stream.write(bytes(data))
            await self._stream.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise CallError("the sub-cell closed its stdin") from None

    async def close(self, **kwargs: Any) -> None:
        if not self._stream.is_closing():
            self._stream.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self._stream.wait_closed()
