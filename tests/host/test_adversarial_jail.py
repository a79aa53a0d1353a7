"""Attacks on the jail from a cell with no flags, against real `ww run` processes.

Each test runs as root and as the unprivileged test user (the ``who`` fixture): the
victim is always a host process of the uid the cell has on the host (``nobody`` when `ww`
runs as root, the operator's own uid otherwise).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import subprocess

import pytest

from tests.conftest import HANG

# A cell that takes kernel objects the kernel counts per host uid until it is refused,
# says how many it holds, and keeps them until its stdin closes.
HOARD = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
held = []
while len(held) < 100000:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    held.append(fd)
print("held", len(held), flush=True)
sys.stdin.read()
"""


def inotify_as(ids: tuple[int, int] | None) -> int:
    """errno of inotify_init1 in a process of the given host uid (0: it worked)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if ids is not None:
                os.setgroups([])
                os.setresgid(ids[1], ids[1], ids[1])
                os.setresuid(ids[0], ids[0], ids[0])
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(0)
            os.write(w, str(0 if fd >= 0 else ctypes.get_errno()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return int(answer)


def test_a_cell_cannot_take_every_inotify_instance_of_its_host_uid(who, make_cell):
    cell = make_cell(HOARD, shebang="#!/usr/bin/python3")
    victim = who.ids if who.unprivileged else (65534, 65534)
    proc = who.popen("run", cell, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("held "), line
        refused = inotify_as(victim)
        assert line == "held 0\n", line  # the filter answers ENOSYS: none taken
        proc.stdin.close()
        assert proc.wait(timeout=HANG) == 0
    finally:
        proc.kill()
        proc.wait()
    assert refused == 0, f"host uid's inotify_init1: {os.strerror(refused)} ({line.strip()})"


def test_a_directory_cannot_be_granted_with_fd(who, make_cell, tmp_path):
    """attack: a cell granted a directory with ``--fd`` (meant: that directory) opened
    ``../../..`` from it and listed the host's root and read /etc/passwd, as its host uid:
    a directory fd is the whole file system.  Refused: exit 2, one line naming the flag,
    and the cell never runs."""
    granted = tmp_path / "granted"
    granted.mkdir()
    cell = make_cell("""
        import os
        fd = int(os.environ["WW_FD_D"])
        print("ran", flush=True)
        up = os.open("../../../../../../../..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        print(sorted(os.listdir(up)))
    """, shebang="#!/usr/bin/python3")
    fd = os.open(granted, os.O_RDONLY | os.O_DIRECTORY)
    try:
        r = who.run("run", "--fd", f"d={fd}", cell, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert "ran" not in r.stdout and "etc" not in r.stdout, r.stdout
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--fd" in r.stderr and "directory" in r.stderr


# Every name under which the kernel reopens a file the process holds as fd N.
REOPEN_NAMES = ["/proc/self/fd/{n}", "/dev/fd/{n}", "/proc/thread-self/fd/{n}"]


def _owned_by_the_cells_host_uid(who, path) -> None:
    """``path`` owned by the uid the cell has on the host: reopened, it would be the cell's."""
    os.chown(path, *(who.ids if who.unprivileged else (65534, 65534)))
    path.chmod(0o644)


def test_stdin_from_a_file_cannot_be_opened_for_writing_through_proc_self_fd(who, make_cell,
                                                                            tmp_path):
    """attack: /proc/self/fd/0 (or /dev/stdin, /dev/fd/0, /proc/thread-self/fd/0) opened
    the file behind the cell's stdin anew, with any mode the cell's host uid may use: for
    an unprivileged `ww` that uid owns the operator's files, so `ww run cell < file` let
    the cell rewrite the file.  A read-only regular file now reaches the cell as a pipe."""
    data = tmp_path / "input.txt"
    data.write_text("the operator's data\n")
    _owned_by_the_cells_host_uid(who, data)
    cell = make_cell(f"""
        import os
        print(os.read(0, 100).decode().strip(), flush=True)
        for name in {REOPEN_NAMES + ["/dev/stdin"]!r}:
            name = name.format(n=0)
            for mode in (os.O_WRONLY | os.O_TRUNC, os.O_RDWR):
                try:
                    fd = os.open(name, mode)
                    os.write(fd, b"overwritten by the cell\\n")
                    print("wrote", name, flush=True)
                except OSError as e:
                    print("refused", e.errno, flush=True)
    """, shebang="#!/usr/bin/python3")
    with open(data, "rb") as stdin:
        r = who.run("run", cell, stdin=stdin)
    assert r.stdout.splitlines()[0] == "the operator's data", r.stderr
    assert data.read_text() == "the operator's data\n"
    assert r.returncode == 0, r.stderr


def test_a_log_given_as_append_only_stdout_cannot_be_read_back(who, make_cell, tmp_path):
    """attack: `ww run cell >> log`: reopening /proc/self/fd/1 read-only read the whole
    log, written before the cell by others.  A write-only file reaches the cell as a pipe
    `ww run` drains into it: reopened, that pipe holds only what the cell wrote itself."""
    log = tmp_path / "log.txt"
    log.write_text("earlier secret line\n")
    _owned_by_the_cells_host_uid(who, log)
    cell = make_cell(f"""
        import os, sys
        seen = []
        for name in {REOPEN_NAMES + ["/dev/stdout"]!r}:
            name = name.format(n=1)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    seen.append(os.read(fd, 4096).decode(errors="replace"))
                except BlockingIOError:
                    pass
            except OSError as e:
                seen.append(f"refused {{e.errno}}")
        print("seen:", repr(seen), file=sys.stderr, flush=True)
        print("the cell's line", flush=True)
    """, shebang="#!/usr/bin/python3")
    with open(log, "a") as stdout:
        r = who.run("run", cell, stdout=stdout, stderr=subprocess.PIPE, capture_output=False)
    assert r.returncode == 0, r.stderr
    assert "earlier secret" not in r.stderr, r.stderr
    assert log.read_text() == "earlier secret line\nthe cell's line\n"


def test_fsize_bounds_what_a_cell_writes_into_a_relayed_file(who, tmp_path):
    """attack: `ww run --fsize 1M cell > out`: the cell writes into a pipe and the relay,
    in `ww run`, into the file, where the cell's RLIMIT_FSIZE does not hold: the cell wrote
    5 MB (any amount: the operator's disk) and exited 0.  The relay writes up to the size,
    as the kernel does, and the cell is stopped, exit 66 naming --fsize; the same through a
    write-only `--fd` grant appended to a file that already holds most of the size."""
    out = tmp_path / "out.bin"
    with open(out, "wb") as stdout:
        r = who.run("run", "--fsize", "1M", "/bin/sh", "-c",
                    "head -c 5000000 /dev/zero",
                    stdout=stdout, stderr=subprocess.PIPE, capture_output=False)
    assert r.returncode == 66, r.stderr
    assert "--fsize" in r.stderr, r.stderr
    assert out.stat().st_size == 1 << 20

    log = tmp_path / "log.bin"
    log.write_bytes(b"x" * 3000)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        r = who.run("run", "--fsize", "4K", "--fd", f"log={fd}", "/bin/sh", "-c",
                    "head -c 4000 /dev/zero >&4",
                    pass_fds=(fd,))
    finally:
        os.close(fd)
    assert r.returncode == 66, r.stderr
    assert "--fsize" in r.stderr, r.stderr
    assert log.stat().st_size == 4096

    # (no attack) a cell writing exactly the size runs as before
    with open(out, "wb") as stdout:
        r = who.run("run", "--fsize", "1M", "/bin/sh", "-c", "head -c 1048576 /dev/zero",
                    stdout=stdout, stderr=subprocess.PIPE, capture_output=False)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == 1 << 20


def test_fsize_bounds_the_console_lines_a_cell_puts_into_a_stderr_file(who, make_cell,
                                                                        tmp_path):
    """attack: `ww run --fsize 1M --with-console cell 2> err`: the host writes the cell's
    console lines into the operator's file itself, where neither the cell's RLIMIT_FSIZE nor
    the relay's bound held: 80 lines of 60,000 characters, 4.8 MB, exit 0.  They count as
    the cell's own writes into the file do: written up to the size, then the cell is
    stopped, exit 66 naming --fsize (in `ww`'s own line after the size)."""
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as session:
            for i in range(80):
                session.console.println(f"{i:02} " + "x" * 60000)
    """)
    err = tmp_path / "err.txt"
    with open(err, "wb") as f:
        r = who.run("run", "--fsize", "1M", "--with-console", cell, stderr=f,
                    capture_output=False, stdout=subprocess.PIPE)
    data = err.read_bytes()
    assert r.returncode == 66, data[-2000:]
    assert data[:16] == b"[cell] 00 " + b"x" * 6
    assert len(data) < (1 << 20) + 4096, len(data)  # the size, and `ww`'s own line
    assert b"--fsize" in data[1 << 20:], data[-2000:]


@pytest.mark.parametrize("how", ["> out 2> out", "> out 2>> out", "2<> err"])
def test_fsize_bounds_console_lines_on_a_stderr_file_of_its_own(who, make_cell, tmp_path, how):
    """attack: the console's bound was reckoned at the offset of the fd the relay writes
    (stdout's, for a file stdout and stderr both name through two opens), not at that of
    stderr, where the host writes the line: ``> out 2> out`` with nothing on stdout left
    the room at --fsize for ever, and 4.8 MB of console lines went into a file of 1M.  A
    stderr open read-write (``2<> err``) is not relayed at all, and there no bound held."""
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as session:
            for i in range(80):
                session.console.println(f"{i:02} " + "x" * 60000)
    """)
    path = tmp_path / "out.txt"
    path.write_bytes(b"")
    out = open(path, "wb") if how != "2<> err" else subprocess.PIPE
    err = open(path, {"> out 2> out": "wb", "> out 2>> out": "ab", "2<> err": "r+b"}[how])
    try:
        r = who.run("run", "--fsize", "1M", "--with-console", cell, stdout=out, stderr=err,
                    capture_output=False)
    finally:
        err.close()
        if out is not subprocess.PIPE:
            out.close()
    size = path.stat().st_size
    assert size < (1 << 20) + 4096, size
    assert r.returncode == 66, path.read_bytes()[-2000:]


def test_a_read_only_fd_grant_cannot_be_opened_for_writing(who, make_cell, tmp_path):
    """attack: the same upgrade through `--fd NAME=N` of a file open read-only: fd 4
    reopened for writing rewrote the operator's file."""
    data = tmp_path / "granted.txt"
    data.write_text("granted read-only\n")
    _owned_by_the_cells_host_uid(who, data)
    cell = make_cell(f"""
        import os
        print(os.read(4, 100).decode().strip(), flush=True)
        for name in {REOPEN_NAMES!r}:
            try:
                fd = os.open(name.format(n=4), os.O_WRONLY | os.O_TRUNC)
                os.write(fd, b"overwritten by the cell\\n")
                print("wrote", name, flush=True)
            except OSError as e:
                print("refused", e.errno, flush=True)
    """, shebang="#!/usr/bin/python3")
    fd = os.open(data, os.O_RDONLY)
    try:
        r = who.run("run", "--fd", f"data={fd}", cell, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert r.stdout.splitlines()[0] == "granted read-only", r.stderr
    assert data.read_text() == "granted read-only\n"
    assert r.returncode == 0, r.stderr


def test_an_o_path_handle_cannot_be_granted_with_fd(who, make_cell, tmp_path):
    """attack: an O_PATH fd reads and writes nothing, but reopened through /proc/self/fd
    it is the file with any mode: refused as a grant, usage error, exit 2, no cell."""
    data = tmp_path / "handle.txt"
    data.write_text("behind an O_PATH handle\n")
    _owned_by_the_cells_host_uid(who, data)
    cell = make_cell("""
        print("ran", flush=True)
    """, shebang="#!/usr/bin/python3")
    fd = os.open(data, os.O_PATH)
    try:
        r = who.run("run", "--fd", f"h={fd}", cell, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert "ran" not in r.stdout
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--fd" in r.stderr and "O_PATH" in r.stderr


def test_kill_minus_one_in_a_cell_spares_host_processes_of_its_own_host_uid(who, make_cell):
    """A host process of the uid the cell has on the host (nobody, or the operator) is
    one the kernel would let the cell signal by uid alone: kill(-1, SIGKILL) in the cell
    reaches only the cell's own pid namespace, and the host process lives."""
    ids = who.ids if who.unprivileged else (65534, 65534)

    def as_victim() -> None:
        os.setgroups([])
        os.setresgid(ids[1], ids[1], ids[1])
        os.setresuid(ids[0], ids[0], ids[0])

    victim = subprocess.Popen(["sleep", "600"], preexec_fn=as_victim)
    try:
        cell = make_cell("""
            import os, signal
            try:
                os.kill(-1, signal.SIGKILL)
                print("sent", flush=True)
            except OSError as e:
                print("refused", e.errno, flush=True)
        """, shebang="#!/usr/bin/python3")
        r = who.run("run", cell)
        assert victim.poll() is None, "the host process of the cell's host uid was killed"
        assert r.stdout.split()[0] in ("sent", "refused"), r.stderr
    finally:
        victim.kill()
        victim.wait()


def test_a_cell_cannot_reach_another_cell_of_the_same_host_uid(who, make_cell):
    """Two cells at once are the same host uid (nobody with `ww` as root): one sees no
    process of the other and its kill(-1, SIGKILL) does not reach it."""
    other = make_cell("""
        import sys
        print("ready", flush=True)
        sys.stdin.read()
        print("lived", flush=True)
    """, name="other.py", shebang="#!/usr/bin/python3")
    attacker = make_cell("""
        import os, signal
        print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), flush=True)
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    """, name="attacker.py", shebang="#!/usr/bin/python3")
    proc = who.popen("run", other, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        r = who.run("run", attacker)
        seen = r.stdout.splitlines()[0]
        proc.stdin.close()
        assert proc.stdout.read() == "lived\n"
        assert proc.wait(timeout=HANG) == 0
    finally:
        proc.kill()
        proc.wait()
    assert seen == "[1, 2]", seen  # bubblewrap's init and the cell itself, nothing else


def test_a_cell_cannot_watch_host_processes_use_the_bound_system_files(who, make_cell):
    cell = make_cell("""
        import ctypes, os, struct, sys
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK)
        if fd < 0 or libc.inotify_add_watch(fd, b"/usr/bin", 0x1 | 0x20) < 0:  # IN_ACCESS, IN_OPEN
            print("refused", os.strerror(ctypes.get_errno()), flush=True)
            sys.exit(0)
        print("watching", flush=True)
        sys.stdin.read()  # the host has run its command
        names = set()
        try:
            while buf := os.read(fd, 65536):
                i = 0
                while i < len(buf):
                    n = struct.unpack_from("iIII", buf, i)[3]
                    names.add(buf[i + 16:i + 16 + n].rstrip(b"\\0").decode())
                    i += 16 + n
        except BlockingIOError:
            pass
        print("getconf" if "getconf" in names else "nothing", flush=True)
    """, shebang="#!/usr/bin/python3")
    proc = who.popen("run", cell, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        seen = proc.stdout.readline().strip()
        if seen == "watching":
            subprocess.run(["/usr/bin/getconf", "PAGESIZE"], capture_output=True, check=True)
            proc.stdin.close()
            seen = proc.stdout.read().strip()
        assert proc.wait(timeout=HANG) == 0
    finally:
        proc.kill()
        proc.wait()
    # inotify is absent in the jail (ENOSYS), so nothing is watched at all.
    assert seen == "refused Function not implemented", seen


def test_tail_f_in_a_cell_falls_back_to_polling(who, make_cell):
    """inotify is ENOSYS in the jail, as on a kernel built without it: `tail -f` still
    follows a file, by polling (coreutils says so in one line)."""
    cell = make_cell("""
        import subprocess
        with open("/tmp/f", "w") as f:
            f.write("one\\n")
        tail = subprocess.Popen(["tail", "-f", "-s", "0.05", "/tmp/f"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = tail.stdout.readline()
        with open("/tmp/f", "a") as f:
            f.write("two\\n")
        second = tail.stdout.readline()  # only arrives if tail polls the file
        tail.kill()
        print(repr(first + second), flush=True)
        print(tail.stderr.read(), end="", flush=True)
    """, shebang="#!/usr/bin/python3")
    r = who.run("run", cell)
    assert r.returncode == 0, r.stderr
    followed, *said = r.stdout.splitlines()
    assert followed == "'one\\ntwo\\n'", r.stdout
    assert all("reverting to polling" in line for line in said), said


F_OFD_SETLK = 37  # fcntl.F_OFD_SETLK, not in every Python


def test_a_cell_cannot_leave_a_lock_on_a_file_it_shares_with_the_host(who, make_cell,
                                                                      tmp_path):
    """attack: flock() and an open file description lock are held by the open file, not by
    the process: one the cell takes on its stdout (the operator's `>> log`) outlived the
    cell for as long as the operator's shell kept the file open, and every other program
    locking the log waited.  `ww run` releases the locks the cell left."""
    log = tmp_path / "log.txt"
    log.write_text("")
    cell = make_cell(f"""
        import fcntl, struct
        fcntl.flock(1, fcntl.LOCK_EX)
        fcntl.fcntl(1, {F_OFD_SETLK}, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
        print("locked", flush=True)
    """, shebang="#!/usr/bin/python3")
    # read-write: the cell holds the host's open file itself (write-only would be relayed)
    with open(log, "a+") as shared:
        r = who.run("run", cell, stdout=shared, stderr=subprocess.PIPE, capture_output=False)
        assert r.returncode == 0, r.stderr
        with open(log, "a") as other:  # another program opening the log
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still locked
            fcntl.fcntl(other, F_OFD_SETLK,
                        struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
    assert log.read_text() == "locked\n"
