"""Regular files given to a jailed cell as stdio or `--fd` grants, relayed through pipes.

The attacks the relay stops are in test_adversarial_jail.py; these are what it must keep:
every byte in order, the file's offset, and `ww run`'s exit when the cell does not read.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess

from tests.conftest import HANG, WW, run_ww

BIG = 3 * (1 << 20) + 12345  # several pipe buffers and relay chunks, not a round number


def _pattern(n: int) -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


def test_a_large_stdin_file_reaches_the_cell_whole_through_a_pipe(tmp_path):
    data = tmp_path / "in.bin"
    data.write_bytes(_pattern(BIG))
    with open(data, "rb") as stdin:
        r = subprocess.run([WW, "run", "/bin/sh", "-c",
                            "readlink /proc/self/fd/0 | cut -d: -f1 >&2; sha256sum"],
                           stdin=stdin, capture_output=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().strip() == "pipe"
    expected = subprocess.run(["sha256sum"], input=_pattern(BIG), capture_output=True)
    assert r.stdout.split()[0] == expected.stdout.split()[0]


def test_all_a_cell_writes_to_files_is_there_when_ww_exits_in_order(tmp_path):
    """`> out 2>&1`: one pipe for both, so the order of the cell's writes is kept, and
    everything is in the file when `ww run` has exited, even when the cell exits at once."""
    out = tmp_path / "out.txt"
    script = ("i=0; while [ $i -lt 2000 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; "
              "head -c 1000000 /dev/zero | tr '\\0' x; echo; exit 7")
    with open(out, "w") as f:
        r = subprocess.run([WW, "run", "/bin/sh", "-c", script], stdout=f, stderr=f,
                           timeout=HANG)
    assert r.returncode == 7
    lines = out.read_text().split("\n")
    expected = [f"{kind} {i}" for i in range(2000) for kind in ("out", "err")]
    assert lines[:4000] == expected
    assert lines[4000] == "x" * 1_000_000


def test_append_keeps_what_the_file_held(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("before\n")
    with open(log, "a") as f:
        r = subprocess.run([WW, "run", "/bin/echo", "from the cell"], stdout=f, timeout=HANG)
    assert r.returncode == 0
    assert log.read_text() == "before\nfrom the cell\n"


def test_the_offset_is_left_past_what_the_cell_read(tmp_path):
    """As with the file itself: `{ ww run cell; cat; } < file` goes on where the cell
    stopped, although the relay read ahead."""
    data = tmp_path / "in.txt"
    data.write_bytes(b"12345" + b"rest" * 50000)
    with open(data, "rb") as stdin:
        r = subprocess.run([WW, "run", "/usr/bin/head", "-c", "5"], stdin=stdin,
                           capture_output=True, timeout=HANG)
        offset = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"12345"
    assert offset == 5


def test_a_cell_that_never_reads_its_input_still_lets_ww_exit(tmp_path):
    data = tmp_path / "in.bin"
    data.write_bytes(_pattern(BIG))
    with open(data, "rb") as stdin:
        r = subprocess.run([WW, "run", "/bin/sh", "-c", "exec 0<&-; exit 3"], stdin=stdin,
                           capture_output=True, timeout=HANG)
    assert r.returncode == 3, r.stderr
    assert r.stderr == b""


def test_a_write_only_fd_grant_is_relayed_and_a_read_write_one_is_the_file(tmp_path):
    wo, rw = tmp_path / "wo.txt", tmp_path / "rw.txt"
    rw.write_text("0123456789")
    a = os.open(wo, os.O_WRONLY | os.O_CREAT, 0o644)
    b = os.open(rw, os.O_RDWR)
    try:
        r = run_ww("run", "--fd", f"wo={a}", "--fd", f"rw={b}", "/bin/sh", "-c",
                   "echo granted >&4; readlink /proc/self/fd/4 | cut -d: -f1; "
                   "readlink /proc/self/fd/5 | cut -d/ -f2-; "
                   "dd bs=1 skip=4 count=3 <&5 2>/dev/null; echo",
                   pass_fds=(a, b))
    finally:
        os.close(a)
        os.close(b)
    assert r.returncode == 0, r.stderr
    assert wo.read_text() == "granted\n"
    assert r.stdout.splitlines()[0] == "pipe"
    assert r.stdout.splitlines()[1].endswith("rw.txt")
    assert r.stdout.splitlines()[2] == "456"  # seekable: it is the file


def test_a_full_disk_is_one_line_and_the_cells_status_stands(tmp_path):
    """A file that cannot take what the cell writes (here past ww's RLIMIT_FSIZE, as a
    full disk would): one line on stderr naming the fd, the cell's next write fails as on a
    broken pipe, and `ww run` exits with the cell's own status."""
    out = tmp_path / "out.txt"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    with open(out, "w") as f:
        r = subprocess.run([WW, "run", "/bin/sh", "-c",
                            "head -c 100000 /dev/zero; echo done >&2; exit 5"],
                           stdout=f, stderr=subprocess.PIPE, text=True, timeout=HANG,
                           preexec_fn=small_files)
    assert r.returncode == 5, r.stderr
    assert out.stat().st_size == 4096
    problems = [line for line in r.stderr.splitlines() if line.startswith("ww:")]
    assert len(problems) == 1 and "stdout" in problems[0], r.stderr


def test_a_forwarded_signal_ends_a_cell_whose_stdin_is_relayed(tmp_path):
    """SIGTERM to `ww run` while the relay waits on a cell that stopped reading: the cell
    ends, `ww run` exits 143, and the file's offset is where the cell stopped."""
    data = tmp_path / "in.bin"
    data.write_bytes(b"first line\n" + _pattern(BIG))
    with open(data, "rb") as stdin:
        proc = subprocess.Popen([WW, "run", "/bin/sh", "-c", "read line; echo $line; "
                                 "exec sleep 60"], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline() == "first line\n"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=HANG)
        finally:
            proc.kill()
        offset = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert offset == len(b"first line\n")  # sh reads a pipe a byte at a time


def test_what_a_cell_wrote_before_strict_stopped_it_is_in_the_file(tmp_path, make_cell):
    out = tmp_path / "out.txt"
    cell = make_cell("""
        import ctypes, sys
        sys.stdout.write("x" * 300000 + "\\nbefore the call\\n")
        sys.stdout.flush()
        ctypes.CDLL(None).ptrace(0, 0, 0, 0)  # denied: --strict stops the cell
        print("after the call", flush=True)
    """, shebang="#!/usr/bin/python3")
    with open(out, "w") as f:
        r = subprocess.run([WW, "run", "--strict", cell], stdout=f, stderr=subprocess.PIPE,
                           text=True, timeout=HANG)
    assert r.returncode == 67, r.stderr
    assert out.read_text() == "x" * 300000 + "\nbefore the call\n"


def test_console_lines_and_the_cells_own_stderr_keep_their_order_in_a_file(tmp_path,
                                                                           make_cell):
    """The console capability writes on the host's stderr; when that is a file ww relays
    the cell's stderr into, what the cell wrote first is in the file first."""
    err = tmp_path / "err.txt"
    cell = make_cell("""
        import sys
        import ww.cell
        with ww.cell.session() as session:
            for i in range(100):
                sys.stderr.write(f"own {i} " + "y" * 3000 + "\\n")
                sys.stderr.flush()
                session.console.println(f"console {i}")
    """)
    with open(err, "w") as f:
        r = subprocess.run([WW, "run", "--with-console", cell], stderr=f, timeout=HANG)
    assert r.returncode == 0, err.read_text()[-2000:]
    lines = [line.split(" ")[0] + " " + line.split(" ")[1] if line.startswith("own") else line
             for line in err.read_text().splitlines()]
    expected = [x for i in range(100) for x in (f"own {i}", f"[cell] console {i}")]
    assert lines == expected


def test_the_offset_counts_what_the_cell_read_after_the_relay_reached_the_files_end(
        tmp_path):
    """A small file is all in the pipe, and its end seen by the relay, before the cell reads
    a byte: the offset is still worked out when the cell has exited, not at that end."""
    data = tmp_path / "in.txt"
    data.write_bytes(b"all of it\n")
    # The cell waits until the relay has closed the pipe (POLLHUP: no writer left), then
    # reads what the pipe holds.
    script = ("import os, select, sys\n"
              "p = select.poll(); p.register(0, select.POLLIN)\n"
              "while not any(e & select.POLLHUP for _, e in p.poll()): pass\n"
              "sys.stdout.buffer.write(os.read(0, 100))\n")
    with open(data, "rb") as stdin:
        r = subprocess.run([WW, "run", "/usr/bin/python3", "-c", script], stdin=stdin,
                           capture_output=True, timeout=HANG)
        offset = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"all of it\n"
    assert offset == len(b"all of it\n")
