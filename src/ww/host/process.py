"""One child process of the host: spawn, pidfd, signals, reaping, exit status.

`ww run` spawns its cell (bubblewrap, or the program itself with ``--jail=none``) and the
exec capability spawns each sub-cell (a child `ww run`) through the same :class:`Process`,
so the rules every child of the host obeys are written once:

- No orphans: the child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so a host killed even by
  SIGKILL takes it with it (bubblewrap's ``--die-with-parent`` carries that into a jail, a
  child `ww run` to its own cell).  It is set *after* the child changes its uid (``drop``),
  because the kernel clears it then.
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

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1

Stdio = int | IO[Any] | None  # as subprocess.Popen takes it: None inherits the host's


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


class Process:
    """A child the host spawned, until it is reaped.

    Made by :meth:`spawn`.  :attr:`pidfd` becomes readable when the child exits; :meth:`wait`
    (blocking) or :meth:`watch` (an asyncio loop) reap it.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pidfd: int | None = os.pidfd_open(popen.pid)

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

        Raises OSError when ``argv[0]`` cannot be executed and
        :class:`subprocess.SubprocessError` when one of the child's steps failed (the kernel
        refused the cgroup, or the drop); the caller says what that means to its user.
        """
        set_pdeathsig = _pdeathsig_setter()

        def child_setup() -> None:
            if join is not None:
                join()
            if drop is not None:
                drop()
            set_pdeathsig()  # after drop: changing uid clears it
            if install is not None:
                install()

        popen = subprocess.Popen(
            list(argv), env=env, stdin=stdin, stdout=stdout, stderr=stderr,
            pass_fds=tuple(pass_fds), close_fds=True, preexec_fn=child_setup,
            start_new_session=new_session, cwd=cwd,
        )
        return cls(popen)

    @property
    def returncode(self) -> int | None:
        """``Popen``'s return code once reaped (negative: killed by that signal), else None."""
        return self.popen.returncode

    def send_signal(self, signum: int, pid: int | None = None) -> None:
        """Send ``signum`` to the child (or to ``pid``, a process inside it) unless it is
        already reaped; a child that has just exited is no error."""
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid if pid is None else pid, signum)

    def wait(self) -> int:
        """Block until the child exits; reap it; its return code."""
        rc = self.popen.wait()
        self.close()
        return rc

    def watch(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        """A future of ``loop`` that gets the return code once the child exits and is
        reaped there.  A child still running when the loop closes is reaped by whoever
        outlives it (:meth:`wait`, or the interpreter), silently."""
        exited: asyncio.Future[int] = loop.create_future()
        pidfd = self.pidfd
        assert pidfd is not None, "already reaped"

        def reap() -> None:
            loop.remove_reader(pidfd)
            self.close()
            if not exited.done():
                exited.set_result(self.popen.wait())  # it has exited: does not block

        loop.add_reader(pidfd, reap)
        return exited

    def close(self) -> None:
        """Close the pidfd (the child itself is left alone)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


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
