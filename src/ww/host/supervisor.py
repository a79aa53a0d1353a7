"""Spawning a cell, forwarding signals to it, serving fd 3, and mapping its exit status.

Start-up is kept short: the cell is started before anything it does not need.  pycapnp
and asyncio are imported only once the cell sends its first bytes on fd 3, so a cell
that never speaks RPC (``ww run /bin/true``) never pays for them.  The plain data on the way
(:class:`RunConfig`, ``FdGrant``, ``JailSpec``, ``Program``, ``Bind``) are NamedTuples, not
dataclasses: importing :mod:`dataclasses` (and :mod:`inspect` with it) would cost a `ww run`
a quarter of its start-up.

No orphans: the jail (or, with ``--jail=none``, the program) is a
:class:`ww.host.process.Process`, which gets ``PR_SET_PDEATHSIG`` = SIGKILL, and
bubblewrap's ``--die-with-parent`` carries that to everything inside, so a host killed even
by SIGKILL takes its cell with it.

Hardening (see docs/security.md): every jailed cell runs under the seccomp filter of
:mod:`ww.host.seccomp`; with ``--strict`` a thread waits for the kernel's report of a denied
call and stops the cell (exit 67).  With resource limits, the watchdog thread of
:mod:`ww.host.limits` stops a cell that goes over one (exit 66); ``--pids``, ``--memory``
and ``--cpu-time`` are enforced (or counted) by the kernel in a cgroup per cell
(:mod:`ww.host.cgroups`), and refused where the host cannot make one.  Neither thread
exists when it has nothing to do.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py imports enum, which costs `ww run` ms
import _socket  # socket's C module: the socket module costs `ww run` milliseconds
import _thread
import errno
import fcntl
import os
import select
import stat
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from ww.core.errors import (
    EXIT_AUTH_FAILED,
    EXIT_ISOLATION_VIOLATION,
    EXIT_RESOURCE_LIMIT,
    HostError,
    NotExecutableError,
    WwError,
)
from ww.core.records import NamedTuple
from ww.host import executable, fds, jail, limits, lines, seccomp
from ww.host.process import (
    FORWARDED_SIGNALS,
    ChildSetupError,
    Process,
    SignalForwarder,
    exit_status,
)

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    import socket
    import threading
    from types import FrameType
    from typing import Any, Protocol

    from ww.host.dirs import DirGrant
    from ww.host.limits.subcells import SubcellBudget
    from ww.host.limits.watchdog import Watchdog
    from ww.host.policy import Access

    class P2PHost(Protocol):
        """The libp2p host of a run (``ww.p2p.host.Node``, built by ww.app), as the host
        sees it."""

        def start(self) -> None: ...

        def stop(self) -> None: ...

        def end_session(self) -> None: ...


class RunConfig(NamedTuple):
    """Everything `ww run` decided from its configuration (built by ww.app.run)."""

    command: str
    args: list[str]
    env: dict[str, str]
    grants: Sequence[fds.FdGrant] = ()
    dirs: Sequence[DirGrant] = ()  # --dir: open handles, closed once the cell is started
    capabilities: Sequence[str] = ()
    # name -> factory(grants, caller, held): the capability servers (see ww.host.rpc.Grants)
    capability_factories: Mapping[str, Callable[..., object]] = MappingProxyType({})
    jailed: bool = True
    search_path: str | None = None
    interpreters: Sequence[str] = ()  # --interpreter: bound with prefix
    debug: bool = False
    strict: bool = False  # kill the cell on its first denied system call (exit 67)
    limits: limits.Limits | None = None
    # --with-exec: the tree's budget, which the exec capability shares (ww run makes it).
    subcells: SubcellBudget | None = None
    # Who may log in, what each gets, the login deadline (exit 64).
    access: Access | None = None
    # The libp2p host, started before the cell and stopped after it.
    p2p: P2PHost | None = None


class _Cell:
    """A started cell: the process we spawned and how to reach the program inside."""

    def __init__(self, proc: Process, status_fd: int | None) -> None:
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
        if self.child_pid is None:
            self.child_pid = _json_int(self._status, b'"child-pid"')
        if (code := _json_int(self._status, b'"exit-code"')) is not None:
            self.exit_code = code

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

    def forward(self, signum: int) -> None:
        if self.proc.returncode is not None:
            return
        pid = self.program_pid()
        self.proc.send_signal(signum, pid)
        # A cell that stopped itself would hold the signal pending for ever (its session
        # is not the operator's, so the shell never sees it stop): continued, it takes it,
        # as `kill` does for a stopped job.
        self.proc.send_signal(signal.SIGCONT, pid)


_SPACE = b" \t\n\r\f\v"


def _json_int(status: bytes, key: bytes) -> int | None:
    """The number after the first ``key`` followed by ``:`` and digits in bubblewrap's JSON
    status (as ``re.search(rb'"key"\\s*:\\s*(\\d+)')`` finds it, without importing re)."""
    at = status.find(key)
    while at >= 0:
        rest = status[at + len(key):].lstrip(_SPACE)
        if rest[:1] == b":":
            rest = rest[1:].lstrip(_SPACE)
            digits = len(rest) - len(rest.lstrip(b"0123456789"))
            if digits:
                return int(rest[:digits])
        at = status.find(key, at + 1)
    return None


def _spawn(argv: list[str], env: dict[str, str], rpc_fd: int, config: RunConfig,
           extra: list[int], cwd: str | None, cgroup: Any = None,
           drop: Callable[[], None] | None = None,
           stdio: tuple[int, int, int] = (0, 1, 2)) -> Process:
    """Start ``argv`` with ``stdio``, fd 3, the grants, and then ``extra`` fds right after
    the grants.

    ``extra`` are bubblewrap's own fds (its status pipe, the seccomp program, the strict
    helper's socket): bwrap_argv names them by the numbers they get here.  ``drop`` (when
    `ww` runs as root) makes the child unprivileged once it has joined the cgroup.
    """
    grants = config.grants
    first_extra = fds.FIRST_GRANTED_FD + len(grants)
    targets = list(range(first_extra, first_extra + len(extra)))
    keep = [fds.RPC_FD] + [g.target for g in grants] + targets
    floor = first_extra + len(extra)

    def install() -> None:
        # Move the extra fds above every target first, so that installing the grants
        # cannot overwrite one of them.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in extra]
        fds.install_fds(rpc_fd, grants)
        for fd, target in zip(high, targets, strict=True):
            os.dup2(fd, target, inheritable=True)

    from ww.host.limits.rlimits import preexec_setter

    try:
        return Process.spawn(
            argv, env=env,
            stdin=None if stdio[0] == 0 else stdio[0],
            stdout=None if stdio[1] == 1 else stdio[1],
            stderr=None if stdio[2] == 2 else stdio[2],
            pass_fds=keep, cwd=cwd,
            new_session=not config.jailed,  # bubblewrap does its own --new-session
            join=preexec_setter(config.limits, cgroup),  # joins the cgroup first
            drop=drop, install=install,
        )
    except OSError as e:
        if e.errno in (errno.ENOEXEC, errno.EACCES):  # changed since the host checked it
            raise NotExecutableError(f"{argv[0]}: cannot execute: {e.strerror}") from None
        raise HostError(f"cannot start {argv[0]}: {e.strerror}") from None
    except ChildSetupError:
        raise HostError("cannot start the cell: the kernel refused to move it into its "
                        "cgroup (--pids/--memory) or to make its bound paths reachable by "
                        "the unprivileged user it runs as") from None


class _Verdict:
    """The first reason the host stopped the cell: a limit (66) or a denied call (67)."""

    def __init__(self) -> None:
        self.message: str | None = None
        self.exit_code = 0
        self._lock = _thread.allocate_lock()

    def decide(self, message: str, exit_code: int) -> None:
        with self._lock:
            if self.message is None:
                self.message, self.exit_code = message, exit_code


# How long the host waits, after a denied call, for every process of the cell to be gone.
_STRICT_DRAIN = 10.0  # seconds


def _watch_strict(sock: socket.socket, verdict: _Verdict, stop_cell: Callable[[], None]) -> None:
    """Thread: wait for the strict helper's listener, then for the first denied call.

    The listener is closed only once no process runs under the filter any more: closing it
    earlier would answer a call still waiting for the host with ENOSYS and let it go on
    (the caller of a reported call is also killed directly, before anything else).
    `ww run` waits for this thread before it exits, so its own exit cannot close it early.
    """
    try:
        listener = seccomp.receive_listener(sock)
    finally:
        sock.close()
    if listener is None:
        return  # the helper failed (it said why) or the cell is gone
    try:
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        while True:
            for _, events in poller.poll():
                if events & select.POLLIN and (found := seccomp.receive_violation(listener)):
                    seccomp.kill_caller(listener, found)
                    verdict.decide(f"isolation violation: the cell called {found.name}, which "
                                   "the seccomp filter denies (--strict); it was stopped",
                                   EXIT_ISOLATION_VIOLATION)
                    stop_cell()
                    seccomp.wait_until_unused(listener, _STRICT_DRAIN)
                    return
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    return  # every process of the cell has exited
    finally:
        os.close(listener)


def run(config: RunConfig) -> int:
    """Run one cell to completion and return the exit status for `ww run`."""
    program = executable.prepare(config.command, config.args, config.search_path,
                                 config.interpreters, config.jailed)
    bwrap = jail.find_bwrap() if config.jailed else None
    host_sock, cell_sock = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    workdir: str | None = None
    drop: Callable[[], None] | None = None  # root: the cell's uid is nobody's, not root's
    status_r: int | None = None
    extra: list[int] = []  # host fds bubblewrap gets right after the grants
    strict_sock: socket.socket | None = None
    if bwrap is not None:
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        first = fds.FIRST_GRANTED_FD + len(config.grants)
        extra = [status_w, seccomp.program_fd(seccomp.STRICT if config.strict else seccomp.DENY)]
        argv_program, binds = program.argv, program.binds
        if config.strict:
            import socket

            strict_sock, helper_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            extra.append(helper_sock.detach())
            argv_program, binds = _strict_helper(first + 1, first + 2, program)
        dir_binds: tuple[str, ...] = ()
        if config.dirs:
            from ww.host.dirs import bwrap_args

            dir_binds = tuple(bwrap_args(config.dirs, first + len(extra)))
            extra += [g.fd for g in config.dirs]  # closed with the others once spawned
        spec = jail.JailSpec(
            binds=binds, status_fd=first,
            seccomp_fd=None if config.strict else first + 1,
            tmpfs_size=config.limits.memory if config.limits else None,
            dir_binds=dir_binds,
        )
        argv = jail.bwrap_argv(bwrap, spec, argv_program)
        ids = jail.host_ids()
        if ids is not None:
            jail.check_executable_by(argv_program[0], ids)
            for line in jail.dir_warnings(((g.name, g.fd, g.writable) for g in config.dirs),
                                          ids):
                print(f"ww: warning: {line}", file=sys.stderr)
            drop = jail.dropper(ids, binds, tuple((g.path, g.fd) for g in config.dirs))
    else:
        import tempfile

        print("ww: warning: --jail=none: the cell runs with the host's full authority "
              "(no namespaces, no private file system)", file=sys.stderr)
        workdir = tempfile.mkdtemp(prefix="ww-cell-")
        argv = program.argv
        for g in config.dirs:
            os.close(g.fd)  # unjailed, the cell gets the directory's host path (WW_DIR_*)
    # Signals are caught before the cell starts: one that arrives while it is being spawned
    # is held and delivered as soon as there is a cell to deliver it to.
    signals = SignalForwarder(FORWARDED_SIGNALS)
    terminals = _Terminals([0, 1, 2, *(g.source for g in config.grants)])
    # Regular files reach a jailed cell as pipes (ww.host.relay): opened anew through
    # /proc/self/fd, the file itself would give the cell any mode its host uid may use.
    # Imported only then: `ww run /bin/true` on a terminal or /dev/null pays one fstat a fd.
    relays = None
    spawn_config, stdio = config, (0, 1, 2)
    fsize = config.limits.fsize if config.limits else None
    if config.jailed and (any(fds.relay_mode(fd) for fd in [0, 1, 2, *(g.source for g in
                                                                         config.grants)])
                          or (fsize is not None and lines.stderr().file is not None)):
        from ww.host.relay import Relay

        relays = Relay(fsize=fsize)
        stdio = (relays.wrap(0, "stdin"), relays.wrap(1, "stdout"), relays.wrap(2, "stderr"))
        spawn_config = config._replace(grants=[
            g._replace(source=relays.wrap(g.source, f"--fd {g.name}")) for g in config.grants])
    watchdog: Watchdog | None = None
    verdict = _Verdict()
    cgroup = None  # ww.host.cgroups.CellCgroup: the kernel's --pids and --memory
    try:
        try:
            if config.p2p is not None:
                config.p2p.start()  # listening before the cell runs; a bad --listen fails here
            from ww.host.limits.cgroup import cgroup_for

            cgroup = cgroup_for(config.limits, config.jailed)
            if config.subcells is not None:
                config.subcells.share(cgroup)  # --with-exec: one budget
            if config.jailed and drop is None:  # unprivileged: the cell owns what we own
                drop = jail.terminal_reopener(
                    [*((fd, k) for k, fd in enumerate(stdio)),
                     *((g.source, g.source) for g in spawn_config.grants)])
            # From now on the cell can fill, stop or make non-blocking the stderr it shares
            # with us: our own lines go through the lines' writer too (ww.host.lines).
            lines.cell_shares_stderr()
            proc = _spawn(argv, config.env, cell_sock.fileno(), spawn_config, extra, workdir,
                          cgroup, drop, stdio)
        finally:
            cell_sock.close()
            if relays is not None:
                relays.start()  # our copies of the cell's ends closed first
            for fd in extra:
                os.close(fd)
            if cgroup is not None:
                cgroup.close()
        cell = _Cell(proc, status_r)
        stop_cell = _stopper(proc, config.jailed)
        if relays is not None and relays.fsize is not None:
            limits_ = config.limits
            assert limits_ is not None

            def over_fsize() -> None:  # the relay's thread: a file written up to --fsize
                verdict.decide(limits_.exceeded_message("fsize"), EXIT_RESOURCE_LIMIT)
                if cell.proc.returncode is None:  # (not reaped: its pid is still its own)
                    stop_cell()

            relays.on_fsize(over_fsize)
        strict_thread: threading.Thread | None = None
        if strict_sock is not None:
            import threading

            strict_thread = threading.Thread(target=_watch_strict,
                                             args=(strict_sock, verdict, stop_cell),
                                             name="ww-strict", daemon=True)
            strict_thread.start()
        if config.limits is not None and config.limits.watched:
            from ww.host.limits.watchdog import Watchdog

            watchdog = Watchdog(
                config.limits,
                on_exceeded=lambda message: verdict.decide(message, EXIT_RESOURCE_LIMIT),
                stop_cell=stop_cell, cgroup=cgroup,
            )
            watchdog.start()
        signals.to(cell.forward)  # those held first
        def refuse(message: str) -> None:
            verdict.decide(message, EXIT_AUTH_FAILED)
            stop_cell()

        _supervise(cell, host_sock, config, refuse)
        if relays is not None:
            relays.finish()  # the cell has exited: all it wrote reaches its files
        if strict_thread is not None:
            strict_thread.join(_STRICT_DRAIN + 1)  # the listener outlives the cell's processes
        if watchdog is not None:
            watchdog.stop()
        if cgroup is not None and (hit := cgroup.exceeded()) is not None:  # hit as it ended
            verdict.decide(config.limits.exceeded_message(hit),  # type: ignore[union-attr]
                           EXIT_RESOURCE_LIMIT)
        if verdict.message is not None:
            raise WwError(verdict.message, exit_code=verdict.exit_code)
        status = _exit_status(cell)
        hit = config.limits.killed_by_backstop(status) if config.limits else None
        if hit is not None:
            raise WwError(config.limits.exceeded_message(hit),  # type: ignore[union-attr]
                          exit_code=EXIT_RESOURCE_LIMIT)
        return status
    finally:
        if relays is not None:
            relays.finish(drain=False)  # on an error: what the pipes hold now, no waiting
        if cgroup is not None:
            cgroup.remove()  # kills whatever of the cell is left first
        signals.restore()
        terminals.restore()
        if config.p2p is not None:
            config.p2p.stop()
        host_sock.close()
        if workdir is not None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


# Signals whose default action would end `ww run` without restoring the terminal (SIGINT,
# SIGTERM and SIGHUP are forwarded to the cell instead, and `ww run` ends normally).
_FATAL_SIGNALS = (signal.SIGQUIT, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2)


# Terminal ioctls the termios module does not name (asm-generic/ioctls.h), and
# F_OFD_SETLK, which not every Python's fcntl module names.
_TIOCGETD, _TIOCSETD, _TIOCNXCL, _TIOCGEXCL = 0x5424, 0x5423, 0x540D, 0x80045440
_F_OFD_SETLK = 37


def _file_locks(fd: int) -> set[str]:
    """The kinds of lock held through this open file (``FLOCK``, ``OFDLCK``): the ones
    that outlive the process that took them, as long as the file stays open."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return {line.split()[2] for line in f if line.startswith("lock:")}
    except (OSError, IndexError):
        return set()


class _Terminals:
    """What the cell could leave changed in the files it shares with the host, put back.

    A cell can change a terminal it holds as stdin, stdout, stderr or a granted fd: modes
    such as echo and canonical input, rows and columns, the line discipline (the null one
    throws away everything typed), stopped output (as by ^S), exclusive mode (every later
    open by anyone but root fails); and, terminal or not, the file status flags of the
    open file it shares with the operator's shell (``O_NONBLOCK`` makes the shell's next
    read fail with ``EAGAIN``) and the locks held through it (``flock`` and open file
    description locks outlive the cell while the shell keeps the file open); and, where
    the cell's host uid owns the file (always, for an unprivileged `ww`: the operator's
    terminal, a read-write ``--fd`` grant), its permissions and group (``chmod 666`` opened
    the operator's terminal to every local user).  `ww run`
    saves all of it before the cell starts and restores it (a lock the cell took is
    released) when the cell has exited, on every way out of `ww run` but SIGKILL: a
    normal exit, an error, a forwarded signal, or one of ``_FATAL_SIGNALS`` (restored,
    then the signal's default action).  Nothing is imported or installed when no fd is a
    terminal.
    """

    def __init__(self, fds: list[int]) -> None:
        self._saved: list[tuple[int, list[Any], bytes, bytes, bytes | None]] = []
        self._flags: list[tuple[int, int]] = []  # (fd, file status flags)
        self._unlocked: list[int] = []  # regular files holding no lock before the cell
        self._owners: list[tuple[int, int, int, int]] = []  # (fd, mode bits, uid, gid)
        self._previous: dict[int, Any] = {}
        ttys = []
        seen = set()
        for fd in dict.fromkeys(fds):
            try:
                self._flags.append((fd, fcntl.fcntl(fd, fcntl.F_GETFL)))
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and not _file_locks(fd):
                    self._unlocked.append(fd)
                if not stat.S_ISSOCK(st.st_mode):
                    self._owners.append((fd, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
                if not os.isatty(fd):
                    continue
                key = os.fstat(fd).st_rdev
            except OSError:
                continue
            if key not in seen:
                seen.add(key)
                ttys.append(fd)
        if not ttys:
            return
        import termios

        for fd in ttys:
            try:
                attrs = termios.tcgetattr(fd)
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8))
                ldisc = fcntl.ioctl(fd, _TIOCGETD, bytes(4))
            except (OSError, termios.error):
                continue
            try:
                excl: bytes | None = fcntl.ioctl(fd, _TIOCGEXCL, bytes(4))
            except OSError:
                excl = None  # before Linux 3.8: not asked, cleared on restore
            self._saved.append((fd, attrs, size, ldisc, excl))
        if self._saved:
            self._previous = {s: signal.signal(s, self._on_fatal) for s in _FATAL_SIGNALS}

    def _on_fatal(self, signum: int, frame: FrameType | None) -> None:
        self.restore()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def restore(self) -> None:
        for fd, flags in self._flags:
            try:
                if fcntl.fcntl(fd, fcntl.F_GETFL) != flags:
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                pass
        self._flags = []
        for fd in self._unlocked:  # locks the cell left on the open file: released
            try:
                kinds = _file_locks(fd)
                if "FLOCK" in kinds:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                if "OFDLCK" in kinds:
                    fcntl.fcntl(fd, _F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_UNLCK, 0, 0, 0, 0))
            except OSError:
                pass
        self._unlocked = []
        for fd, mode, uid, gid in self._owners:  # what only the file's owner may change
            try:
                st = os.fstat(fd)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    try:
                        os.fchown(fd, -1 if st.st_uid == uid else uid, gid)
                    except OSError:  # a group `ww`'s user is not in (tty): none at all
                        mode &= ~0o070
                if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                    os.fchmod(fd, mode)
            except OSError:
                pass
        self._owners = []
        if not self._saved:
            return
        import contextlib
        import termios

        for s, handler in self._previous.items():
            signal.signal(s, handler)
        # From a background process group, changing a terminal raises SIGTTOU, which would
        # stop `ww run`; ignored, the change is made.
        ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            for fd, attrs, size, ldisc, excl in self._saved:
                with contextlib.suppress(OSError, termios.error):
                    # The line discipline first: the null one refuses the rest.
                    if fcntl.ioctl(fd, _TIOCGETD, bytes(4)) != ldisc:
                        fcntl.ioctl(fd, _TIOCSETD, ldisc)
                    if excl is None or excl == bytes(4):
                        fcntl.ioctl(fd, _TIOCNXCL)
                    termios.tcsetattr(fd, termios.TCSANOW, attrs)
                    termios.tcflow(fd, termios.TCOON)  # output the cell stopped flows again
                    if fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)) != size:
                        fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
        finally:
            signal.signal(signal.SIGTTOU, ttou)
        self._saved = []


def _stopper(proc: Process, jailed: bool) -> Callable[[], None]:
    """Kill the whole cell at once.

    Jailed: first bubblewrap's init inside the jail, whose death makes the kernel kill
    every process of the jail's pid namespace, then bubblewrap itself.  Unjailed: the
    program's process group.
    """

    def stop() -> None:
        import contextlib

        with contextlib.suppress(ProcessLookupError, PermissionError):
            if not jailed:
                os.killpg(proc.pid, signal.SIGKILL)
                return
            for init in jail.children(proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(init, signal.SIGKILL)
            os.kill(proc.pid, signal.SIGKILL)

    return stop


def _strict_helper(filter_fd: int, sock_fd: int,
                   program: executable.Program
                   ) -> tuple[list[str], list[executable.Bind]]:
    """The jail's argv and binds when the strict helper runs first (see ww.host.seccomp)."""
    python = os.path.realpath(sys.executable)
    binds = list(program.binds)
    for path in [python, *executable.prefix_dirs(python)]:
        extra = executable.bind(path)
        if not executable.is_system(path) and extra not in binds:
            binds.append(extra)
    argv = [python, "-I", "-S", "-c", seccomp.STRICT_HELPER, str(filter_fd), str(sock_fd),
            *program.argv]
    return argv, binds


def _supervise(cell: _Cell, host_sock: _socket.socket, config: RunConfig,
               auth_failed: Callable[[str], object]) -> None:
    """Wait for the cell to exit; start serving RPC if it speaks on fd 3 first.

    When the policy requires a login, RPC is served at once instead, so that the login
    deadline also stops a cell that never speaks; a failed login calls ``auth_failed``.
    """
    pidfd = cell.proc.pidfd
    assert pidfd is not None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(host_sock, select.POLLIN)
        login_required = config.access is not None and config.access.login_timeout is not None
        if login_required:
            _serve_rpc(pidfd, host_sock, config, auth_failed)
        while not login_required:
            ready = {fd for fd, _ in poller.poll()}
            if pidfd in ready:
                break
            if host_sock.fileno() in ready:
                try:
                    spoke = host_sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT) != b""
                except (BlockingIOError, ConnectionError):
                    spoke = False
                if spoke:
                    _serve_rpc(pidfd, host_sock, config, auth_failed)
                    break
                # The cell closed fd 3 without a word (or is exiting): just wait for it.
                poller.unregister(host_sock)
        cell.proc.wait()  # reaps it and closes the pidfd
    finally:
        cell.proc.close()
    cell.read_status()


def _serve_rpc(pidfd: int, host_sock: _socket.socket, config: RunConfig,
               auth_failed: Callable[[str], object]) -> None:
    import asyncio
    import contextlib
    import socket

    from ww.core import bridge
    from ww.core.foreign import send_one_line_errors
    from ww.host import rpc

    # fd 3's socket as the socket module makes it, for asyncio (a duplicate: the caller's
    # object keeps the socket open as long as before).
    sock = socket.socket(fileno=os.dup(host_sock.fileno()))
    grants = rpc.Grants(names=list(config.capabilities), factories=config.capability_factories,
                        access=config.access)
    # Before anything is served: pycapnp would send the cell the host's tracebacks.
    send_one_line_errors(config.debug)
    quiet = _QuietAsyncio()
    # A cell that exits (or hangs up) while replies are still queued makes every pending
    # send fail; asyncio would log "socket.send() raised exception." for each on stderr.
    quiet.on = not config.debug

    async def main() -> None:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, _settle, exited)
        # Serving stops when the cell exits or when its calls hold too much of our memory.
        stop: asyncio.Future[None] = loop.create_future()
        exited.add_done_callback(lambda _: _settle(stop))
        guard = asyncio.ensure_future(_guard_memory(stop))
        try:
            # A failed login stops the cell at once (`ww run` exits 64).
            await rpc.serve(sock, grants, stop, on_failure=auth_failed)
        finally:
            guard.cancel()
            if config.p2p is not None:
                config.p2p.end_session()  # the cell's export lives only as long as fd 3
        if not exited.done():  # over budget: hang up, and keep supervising the cell
            quiet.on = True  # replies still queued then fail to send; asyncio logs each one
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await exited  # the cell may hang up fd 3 and keep running

    try:
        with quiet.installed():
            bridge.run_capnp(main())
    finally:
        sock.close()


class _QuietAsyncio:
    """Silences asyncio's log for the thread serving fd 3, while it does, once :attr:`on`.

    A filter on asyncio's logger that drops the records of this one thread (every record
    carries the id of the thread that made it), put on for :meth:`installed` and taken off
    after, rather than a level set on that logger: the logger is the whole process's, and a
    level would silence every other event loop (the libp2p side's, a test's) too, and stay
    after serving ends.  Only records below CRITICAL are dropped, as such a level did.
    """

    def __init__(self) -> None:
        self.on = False
        self._thread = _thread.get_ident()

    def filter(self, record: Any) -> bool:
        import logging

        return not (self.on and record.thread == self._thread
                    and record.levelno < logging.CRITICAL)

    def installed(self) -> _QuietAsyncio:
        """The filter on asyncio's logger for the ``with`` block it opens."""
        return self

    def __enter__(self) -> _QuietAsyncio:
        import logging

        logging.getLogger("asyncio").addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        logging.getLogger("asyncio").removeFilter(self)


# The most memory a cell's RPC connection (and the remote peers its export serves) may make
# the host hold: past it the host hangs up fd 3.  A backstop, not the bound: what a cell or a
# peer can make the host hold is bounded where it is held, and those bounds added up are
#   fd 3's calls in flight (ww.host.wire.FLOW_LIMIT)                     32 MiB
#   the cell's large answers (ww.host.answers.ANSWER_LIMIT)              16 MiB
#   its readers' and its writers' buffers (ww.caps.ipfs.READ_BUFFERS,
#     WRITE_BUFFERS)                                                      32 MiB
#   remote peers' messages held, the node's answers they have not taken
#     (ww.p2p.bounds.BUDGET, ANSWER_BUDGET)                               64 MiB
# 144 MiB, and a byte held may be held twice on its way (a message in the lane's buffer and in
# KJ's; an answer as Python bytes and as pycapnp's message): the guard is twice that
# (tests/host/test_memory_guard.py checks the sum).  At 128 MiB it hung up the cell's fd 3
# when remote peers filled several of the bounds at once (writes and reads on an exported IPFS
# capability: 148-158 MiB, docs/security.md), each bound holding.
RPC_MEMORY_BUDGET = 288 << 20
_GUARD_INTERVAL = 0.05  # seconds


def _settle(future: Any) -> None:
    """Resolve ``future`` unless it is already."""
    if not future.done():
        future.set_result(None)


async def _guard_memory(stop: Any) -> None:
    """Set ``stop`` when the host's resident memory grows by more than RPC_MEMORY_BUDGET.

    What counts is memory held: past half the budget the C allocator is first asked to give
    back the pages it keeps free (:func:`ww.core.heap.trimmer`), and the growth read again.
    Without that the guard counted as held what the answers' copies had left in the heap
    (:mod:`ww.core.heap`): remote peers reading a cell's exported IPFS capability grew the
    host by 126-195 MiB and the guard hung up fd 3, while the bounds on those answers held
    (the heap 95 MiB, 21 of them in use).  A fixed ``mmap`` threshold of 2 or 4 MiB kept
    such answers out of the heap instead, but cost a cell's reads 12-30 % of their rate
    (benchmarks/ipfs.py); a trim costs about 0.1 ms and runs only past half the budget."""
    import asyncio

    from ww.core import heap

    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    give_back = heap.trimmer() or (lambda: None)
    try:
        def rss() -> int:
            return int(os.pread(fd, 128, 0).split()[1]) * page

        base = rss()
        while not stop.done():
            await asyncio.sleep(_GUARD_INTERVAL)
            growth = rss() - base
            if growth > RPC_MEMORY_BUDGET // 2:
                give_back()
                growth = rss() - base
            if growth > RPC_MEMORY_BUDGET and not stop.done():
                # Through the lines' writer, never written here: this is the loop serving
                # fd 3, and a terminal the cell stopped held it in write for good.
                lines.say(f"ww: the cell's calls on fd 3 held more than "
                          f"{RPC_MEMORY_BUDGET >> 20} MiB of the host's memory: the host hung "
                          "up fd 3 (the cell runs on)\n")
                stop.set_result(None)
    finally:
        os.close(fd)


def _exit_status(cell: _Cell) -> int:
    rc = cell.proc.returncode
    assert rc is not None
    if rc < 0:
        return exit_status(rc)  # the process we spawned was killed by a signal
    if not cell.jailed:
        return rc
    if cell.exit_code is not None:
        return cell.exit_code
    raise HostError("the jail could not be set up (bubblewrap failed; see its message above)")
