"""ww.host.process: the one way the host spawns, watches and reaps a child; and what serving
fd 3 leaves of the process's shared state (nothing)."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import HANG
from ww.host.process import PIPE, ChildSetupError, Process, SignalForwarder, exit_status


def test_exit_status_is_the_code_or_128_plus_the_signal():
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGKILL) == 128 + 9


def test_a_child_is_reaped_from_an_event_loop_through_its_pidfd_with_its_signal():
    async def main() -> int:
        child = Process.spawn(["/bin/sh", "-c", "kill -TERM $$"], env={})
        return await child.watch(asyncio.get_running_loop())

    rc = asyncio.run(main())
    assert exit_status(rc) == 128 + signal.SIGTERM


def test_the_steps_in_the_child_run_join_then_drop_then_install(tmp_path):
    log = tmp_path / "steps"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        child = Process.spawn(
            ["/bin/true"], env={},
            join=lambda: os.write(fd, b"join "),
            drop=lambda: os.write(fd, b"drop "),
            install=lambda: os.write(fd, b"install"),
        )
        assert child.wait() == 0
    finally:
        os.close(fd)
    assert log.read_bytes() == b"join drop install"
    assert child.pidfd is None  # closed once reaped


def test_a_step_that_fails_in_the_child_fails_the_spawn():
    def refuse() -> None:
        raise OSError("refused")

    with pytest.raises(ChildSetupError):
        Process.spawn(["/bin/true"], env={}, join=refuse)


def test_a_child_dies_with_the_process_that_spawned_it():
    # The spawner is itself a process killed by SIGKILL: it has no chance to clean up.
    spawner = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from ww.host.process import Process
        child = Process.spawn(["/bin/sleep", "60"], env={}, stdout=subprocess.DEVNULL)
        print(child.pid, flush=True)
        sys.stdin.read()
    """).replace("subprocess.DEVNULL", "-3")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    # Orphaned, it gets the parent-death signal: its pidfd becomes readable.
    assert _child_exits_once_its_spawner_is_killed(spawner, 30)


def _child_exits_once_its_spawner_is_killed(spawner: subprocess.Popen[str],
                                            bound: float) -> bool:
    """Kill ``spawner`` (SIGKILL), which printed its child's pid: has the child exited
    within ``bound`` seconds?"""
    try:
        pidfd = os.pidfd_open(int(spawner.stdout.readline()))
    finally:
        spawner.kill()
        spawner.wait()
    try:
        return select.select([pidfd], [], [], bound)[0] == [pidfd]
    finally:
        os.close(pidfd)


def test_a_child_whose_host_died_before_its_parent_death_signal_never_executes(tmp_path):
    """The host killed (SIGKILL) after the fork but before the child set its parent-death
    signal (during ``join`` or ``drop``, say): the orphan's signal never comes, so it went on
    to execute the program (for `ww run`, bubblewrap: a cell no one supervises).  The child
    checks its parent after setting the signal and exits instead."""
    marker = tmp_path / "ran"
    spawner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, select
        from ww.host.process import Process
        report = os.dup(1)

        def drop():  # the child: tell its pid, then wait until the host has exited
            host = os.pidfd_open(os.getppid())
            os.write(report, b"%d\\n" % os.getpid())
            select.select([host], [], [])  # readable once it has exited and we are reparented

        Process.spawn(["/bin/sh", "-c", "echo ran > {marker}"], env={{}}, drop=drop)
    """)], stdout=subprocess.PIPE, text=True)
    assert _child_exits_once_its_spawner_is_killed(spawner, HANG)
    assert not marker.exists()


def test_signals_that_arrive_before_the_child_are_held_then_forwarded():
    got: list[int] = []
    forwarder = SignalForwarder([signal.SIGUSR1])
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert got == []
        forwarder.to(got.append)
        assert got == [signal.SIGUSR1]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert got == [signal.SIGUSR1, signal.SIGUSR1]
    finally:
        forwarder.restore()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_serving_a_cell_leaves_asyncios_logger_as_it_found_it(make_cell):
    """`ww run` silences asyncio's complaints about a cell that hung up (see
    ww.host.supervisor), but only while it serves fd 3, and only on that thread: the
    process-wide ``asyncio`` logger is not changed (it was set to CRITICAL for good)."""
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as session:
            session.console.ping(b"x")
    """)
    # In a process of its own, `ww run` in-process (without its os._exit at the end), then
    # a warning on asyncio's logger, as any other event loop in the process might log.
    script = textwrap.dedent(f"""
        import logging, sys
        import ww.cli.main
        ww.cli.main._exit = lambda status: print("status", status)
        ww.cli.main.main(["run", "--with-console", {cell!r}])
        logging.getLogger("asyncio").warning("after serving, heard")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=HANG)
    assert "status 0" in r.stdout, r.stderr
    assert "after serving, heard" in r.stderr


def test_while_serving_asyncios_log_is_dropped_for_the_serving_thread_only():
    import logging
    import threading

    from ww.host.supervisor import _QuietAsyncio

    heard: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    logger = logging.getLogger("asyncio")
    handler = Keep()
    logger.addHandler(handler)
    try:
        quiet = _QuietAsyncio()
        quiet.on = True
        with quiet.installed():
            logger.warning("socket.send() raised exception.")  # this thread's: dropped
            logger.critical("critical")  # as a level of CRITICAL let through
            other = threading.Thread(target=logger.warning, args=("another loop's",))
            other.start()
            other.join()
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    assert heard == ["critical", "another loop's", "after"]


# What subprocess.Popen did for the host before Process forked and executed the child itself
# (issue 11, start-up): the same, checked on the real child.


def test_a_program_that_cannot_be_executed_is_an_oserror_and_leaves_no_child(tmp_path):
    # In an interpreter of its own: os.waitpid(-1) sees every child of the process, and the
    # test worker may still have children of other tests.
    (tmp_path / "data").write_text("not a program\n")
    (tmp_path / "data").chmod(0o644)
    code = f"""
import os
from ww.host.process import Process
for argv, error in ((["/nonexistent/program"], FileNotFoundError),
                    ([{str(tmp_path / "data")!r}], PermissionError)):
    try:
        Process.spawn(argv, env={{}})
    except error:
        pass
    else:
        raise SystemExit(f"{{argv}} did not raise {{error.__name__}}")
try:
    os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    print("no child left")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=HANG)
    assert (r.returncode, r.stdout, r.stderr) == (0, "no child left\n", "")


def test_the_child_gets_stdio_and_pass_fds_only_with_sigpipe_at_its_default(tmp_path):
    r, w = os.pipe()  # close-on-exec, as every fd Python opens
    kept, dropped = os.pipe()
    try:
        child = Process.spawn(
            ["/bin/sh", "-c", "ls /proc/self/fd; grep SigIgn /proc/self/status"],
            env={"PATH": "/usr/bin:/bin"}, stdout=PIPE, pass_fds=[kept],
        )
        assert child.stdout is not None
        out = child.stdout.read().decode().split()
        child.stdout.close()
        assert child.wait() == 0
    finally:
        for fd in (r, w, kept, dropped):
            os.close(fd)
    fds = {int(x) for x in out if x.isdigit()}
    assert {0, 1, 2, kept} <= fds and dropped not in fds and w not in fds
    ignored = int(out[out.index("SigIgn:") + 1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))  # Python ignores it; the program not


def test_a_program_is_looked_up_on_the_path_of_its_environment():
    child = Process.spawn(["true"], env={"PATH": "/nonexistent:/bin"})
    assert child.wait() == 0
    with pytest.raises(FileNotFoundError):
        Process.spawn(["true"], env={"PATH": "/nonexistent"})
