"""One child process of the host: spawn, pidfd, signals, reaping, exit status.

`ww run` spawns its cell (bubblewrap, or the program itself with ``--jail=none``) and the
exec capability spawns each sub-cell (a child `ww run`) through the same :class:`Process`,
so the rules every child of the host obeys are written once:

- No orphans: the child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so a host killed even by
  SIGKILL takes it with it (bubblewrap's ``--die-with-parent`` carries that into a jail, a
  child `ww run` to its own cell).  It is set *after* the child changes its uid (``drop``),
  because the kernel clears it then; a child whose host died before that exits rather
  than execute (the signal would never come).
- Between fork and exec the child runs, in this order: ``join`` (the cell's cgroup and
  rlimits, or a sub-cell's share of its parent's cgroup: first, so that no process of a cell
  ever runs outside it), ``drop`` (when `ww` runs as root: become ``nobody``, see
  :func:`ww.host.jail.dropper`), the parent-death signal, then ``install`` (placing fds at
  their numbers).  Each is prepared in the host, so the child only makes system calls.
- The child is watched through a pidfd, opened at once (the pid is ours until we reap it,
  so it cannot name another process); :meth:`Process.watch` reaps it from an asyncio loop
  without asyncio's child watcher, which on Python 3.11 reaps in a thread and logs ``Loop
  ... that handles pid N is closed`` whenever a child outlives the loop.
- A signal is sent only while the child is not reaped (so its pid is still its own), and
  :func:`exit_status` maps a return code as a shell does: 128+n for death by signal n.

:class:`SignalForwarder` is the host's side of SIGINT, SIGTERM and SIGHUP: caught from
before the spawn and handed on to the child.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py imports enum, which costs `ww run` ms
import errno
import fcntl
import os
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    import asyncio
    from types import FrameType
    from typing import IO, Any

    Stdio = int | IO[Any] | None  # None inherits the host's; PIPE; DEVNULL; an fd; a file

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

PIPE = -1  # as subprocess.PIPE: a pipe to the child, its end in the host
DEVNULL = -3  # as subprocess.DEVNULL

_PR_SET_PDEATHSIG = 1


class ChildSetupError(Exception):
    """A step the forked child runs before exec (``join``, ``drop``, ``install``) failed."""


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


def exit_status(returncode: int) -> int:
    """A return code as `ww run` (and a shell) reports it: 128+n when killed by signal n."""
    return 128 - returncode if returncode < 0 else returncode


def _executables(argv0: str, env: dict[str, str]) -> list[str]:
    """Where ``argv0`` is looked for, as subprocess looks (the PATH of ``env``)."""
    if os.path.dirname(argv0):
        return [argv0]
    return [os.path.join(d, argv0) for d in os.get_exec_path(env)]


class Process:
    """A child the host spawned, until it is reaped.

    Made by :meth:`spawn`.  :attr:`pidfd` becomes readable when the child exits; :meth:`wait`
    (blocking) or :meth:`watch` (an asyncio loop) reap it.  :attr:`stdin`, :attr:`stdout`
    and :attr:`stderr` are the host's ends of the pipes asked for with :data:`PIPE`.

    The child is forked and executed here (:func:`os.fork`, :func:`os.execve`), not by
    :mod:`subprocess`, whose import (with :mod:`threading`, :mod:`locale`, :mod:`re`,
    :mod:`selectors` and more) costs `ww run /bin/true` several milliseconds.  It does
    what :class:`subprocess.Popen` did with ``close_fds=True``, ``restore_signals=True``
    and a ``preexec_fn``: stdio first, then the working directory, SIGPIPE and SIGXFSZ back
    to their defaults, the new session, the steps of :meth:`spawn`, every fd but stdio and
    ``pass_fds`` closed, exec; a failed exec is an :class:`OSError` in the host, a failed
    step a :class:`ChildSetupError`.
    """

    def __init__(self, pid: int, stdin: IO[bytes] | None = None,
                 stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None) -> None:
        self.pid = pid
        self.pidfd: int | None = os.pidfd_open(pid)
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._returncode: int | None = None

    @classmethod
    def spawn(cls, argv: Sequence[str], *, env: dict[str, str],
              stdin: Stdio = None, stdout: Stdio = None, stderr: Stdio = None,
              pass_fds: Sequence[int] = (), cwd: str | None = None,
              new_session: bool = True,
              join: Callable[[], None] | None = None,
              drop: Callable[[], None] | None = None,
              install: Callable[[], None] | None = None) -> Process:
        """Start ``argv``; ``join``, ``drop`` and ``install`` run in the forked child in
        that order around the parent-death signal (see the module's docstring).

        Raises OSError when ``argv[0]`` cannot be executed and :class:`ChildSetupError`
        when one of the child's steps failed (the kernel refused the cgroup, or the drop);
        the caller says what that means to its user.
        """
        set_pdeathsig = _pdeathsig_setter()
        args = [os.fsencode(a) for a in argv]
        envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
        executables = [os.fsencode(e) for e in _executables(os.fsdecode(args[0]), env)]
        keep = sorted(set(pass_fds))
        for name, value in envb.items():  # refused here, as Popen does, not in the child
            if not name or b"=" in name or b"\0" in name or b"\0" in value:
                raise ValueError(f"illegal environment variable: {os.fsdecode(name)!r}")
        if any(b"\0" in a for a in args):
            raise ValueError("embedded null byte")
        closing: list[int] = []  # fds of ours that the host closes once the child is forked
        ours: list[int] = []  # the host's ends of PIPE, closed if the spawn fails
        sources: list[int | None] = []
        try:
            for i, given in enumerate((stdin, stdout, stderr)):
                if given is None:
                    sources.append(None)
                elif given == PIPE:
                    r, w = os.pipe()
                    child_end, our_end = (r, w) if i == 0 else (w, r)
                    closing.append(child_end)
                    ours.append(our_end)
                    sources.append(child_end)
                elif given == DEVNULL:
                    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    closing.append(fd)
                    sources.append(fd)
                else:
                    sources.append(given if isinstance(given, int) else given.fileno())
            err_r, err_w = os.pipe()  # close-on-exec: EOF tells the exec succeeded
            closing.append(err_w)
            host = os.getpid()
            try:
                pid = os.fork()
            except BaseException:
                os.close(err_r)
                raise
            if pid == 0:  # the child: system calls and our steps only, then exec or exit
                _child(err_w, executables, args, envb, sources, cwd, new_session, keep,
                       join, drop, set_pdeathsig, install, host)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in closing:
                os.close(fd)
        try:
            report = b""
            while chunk := os.read(err_r, 64):
                report += chunk
        finally:
            os.close(err_r)
        if report:
            os.waitpid(pid, 0)  # it exited without exec: reaped, no zombie left
            for fd in ours:
                os.close(fd)
            kind, _, number = report.partition(b":")
            if kind == b"exec":
                code = int(number)
                raise OSError(code, os.strerror(code), os.fsdecode(args[0]))
            raise ChildSetupError("a step of the child before exec failed: "
                                  + number.decode(errors="replace"))
        files: list[IO[bytes] | None] = [None, None, None]
        it = iter(ours)
        for i, given in enumerate((stdin, stdout, stderr)):
            if given == PIPE:
                files[i] = open(next(it), "wb" if i == 0 else "rb")  # noqa: SIM115
        return cls(pid, *files)

    @property
    def returncode(self) -> int | None:
        """The return code once reaped (negative: killed by that signal), else None."""
        return self._returncode

    def send_signal(self, signum: int, pid: int | None = None) -> None:
        """Send ``signum`` to the child (or to ``pid``, a process inside it) unless it is
        already reaped; a child that has just exited is no error."""
        if self._returncode is not None:
            return
        try:
            os.kill(self.pid if pid is None else pid, signum)
        except ProcessLookupError:
            pass

    def _reap(self) -> int:
        if self._returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self._returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped by someone else (as Popen takes it)
                self._returncode = 0
        return self._returncode

    def wait(self) -> int:
        """Block until the child exits; reap it; its return code."""
        rc = self._reap()
        self.close()
        return rc

    def watch(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        """A future of ``loop`` that gets the return code once the child exits and is
        reaped there.  A child still running when the loop closes is reaped by whoever
        outlives it (:meth:`wait`), silently."""
        exited: asyncio.Future[int] = loop.create_future()
        pidfd = self.pidfd
        assert pidfd is not None, "already reaped"

        def reap() -> None:
            loop.remove_reader(pidfd)
            self.close()
            if not exited.done():
                exited.set_result(self._reap())  # it has exited: does not block

        loop.add_reader(pidfd, reap)
        return exited

    def close(self) -> None:
        """Close the pidfd (the child itself is left alone)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _child(err_w: int, executables: list[bytes], argv: list[bytes], env: dict[bytes, bytes],
           sources: list[int | None], cwd: str | None, new_session: bool, keep: list[int],
           join: Callable[[], None] | None, drop: Callable[[], None] | None,
           set_pdeathsig: Callable[[], None], install: Callable[[], None] | None,
           host: int) -> None:
    """The forked child: set up, exec; on any failure tell the host on ``err_w`` and exit."""
    step = b"stdio"
    try:
        try:
            # Every source above stdio first, so that placing one cannot overwrite another.
            high = [None if fd is None else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                    for fd in sources]
            for target, fd in enumerate(high):
                if fd is not None:
                    os.dup2(fd, target)  # inheritable
            if cwd is not None:
                step = b"cwd"
                os.chdir(cwd)
            for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores them; the program does not
                signal.signal(getattr(signal, name), signal.SIG_DFL)
            if new_session:
                os.setsid()
            step = b"join"
            if join is not None:
                join()
            step = b"drop"
            if drop is not None:
                drop()
            set_pdeathsig()  # after drop: changing uid clears it
            if os.getppid() != host:  # the host died before: the signal will never come
                raise ChildSetupError("the host exited")
            step = b"install"
            if install is not None:
                install()
            for fd in keep:
                os.set_inheritable(fd, True)
            spared = sorted({*keep, err_w})  # err_w is close-on-exec: closed by the exec
            low = 3
            for fd in [*spared, max(os.sysconf("SC_OPEN_MAX"), spared[-1] + 1)]:
                if fd > low:
                    os.closerange(low, fd)
                low = max(low, fd + 1)
            # An fd above the soft limit (inherited, the limit lowered since) is closed too.
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 2 and int(name) not in spared:
                    try:
                        os.close(int(name))
                    except OSError as e:  # the listing's own fd, closed by now
                        if e.errno != errno.EBADF:
                            raise
        except OSError as e:
            if step in (b"stdio", b"cwd"):  # as subprocess reports them: an OSError
                os.write(err_w, b"exec:%d" % (e.errno or 0))
            else:
                os.write(err_w, b"setup:" + step)
            raise
        except BaseException:
            os.write(err_w, b"setup:" + step)
            raise
        failure = errno.ENOENT
        for path in executables:
            try:
                os.execve(path, argv, env)
            except OSError as e:
                if e.errno is not None and e.errno not in (errno.ENOENT, errno.ENOTDIR):
                    failure = e.errno
        os.write(err_w, b"exec:%d" % failure)
    finally:
        os._exit(255)


class SignalForwarder:
    """SIGINT, SIGTERM and SIGHUP of the host, for the child rather than for the host.

    Installed before the child is spawned: a signal that arrives meanwhile is held and
    handed on by :meth:`to` as soon as there is a child to hand it to.  :meth:`restore`
    puts the previous handlers back.
    """

    def __init__(self, signals: Sequence[int] = FORWARDED_SIGNALS) -> None:
        self._pending: list[int] = []
        self._forward: Callable[[int], None] | None = None
        self._previous = {s: signal.signal(s, self._on_signal) for s in signals}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._forward is not None:
            self._forward(signum)
        else:
            self._pending.append(signum)

    def to(self, forward: Callable[[int], None]) -> None:
        """From now on every such signal goes to ``forward``; those held go first."""
        self._forward = forward
        pending, self._pending = self._pending, []
        for signum in pending:
            forward(signum)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
