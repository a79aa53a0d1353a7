"""The jail: what a cell can and cannot see or do.  Each escape attempt must fail.

Tests taking ``who`` run twice: with `ww` as root and as an unprivileged user
(tests/host/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import HANG, run_ww
from ww.host import jail


def sh(script: str, who=None, **kwargs) -> subprocess.CompletedProcess[str]:
    run = who.run if who is not None else run_ww
    return run("run", "/bin/sh", "-c", script, **kwargs)


def test_cell_runs_unprivileged_with_no_capabilities_and_no_new_privs(who):
    r = sh(who=who, script="id -u; grep -E '^(CapEff|CapPrm|NoNewPrivs):' /proc/self/status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] != "0"
    status = dict(zip(lines[1::2], lines[2::2], strict=True))
    assert status == {"CapEff:": "0000000000000000", "CapPrm:": "0000000000000000",
                      "NoNewPrivs:": "1"}


@pytest.mark.parametrize("ns", ["user", "pid", "mnt", "net", "ipc", "uts", "cgroup"])
def test_cell_has_its_own_namespace(ns, who):
    r = sh(f"readlink /proc/self/ns/{ns}", who)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != os.readlink(f"/proc/self/ns/{ns}")


def test_cannot_read_a_secret_in_the_hosts_home(who):
    home = who.home
    secret = home / f".ww-test-secret-{uuid.uuid4().hex}"
    secret.write_text("home secret")
    secret.chmod(0o644)  # readable by the user `ww` runs as: only the jail hides it
    try:
        r = sh(f"cat {secret}; ls -a {home}", who)
    finally:
        secret.unlink()
    assert "home secret" not in r.stdout
    assert secret.name not in r.stdout


def test_cannot_read_the_invoking_directory(who):
    tmp_path = who.work
    (tmp_path / "secret.txt").write_text("cwd secret")
    r = sh(f"cat {tmp_path}/secret.txt; cat secret.txt; ls -a", who, cwd=tmp_path)
    assert "cwd secret" not in r.stdout
    assert "secret.txt" not in r.stdout


def test_cannot_see_host_processes(who):
    marker = f"ww-marker-{uuid.uuid4().hex}"
    # A host process whose command line carries the marker.
    host_proc = subprocess.Popen(["/bin/sh", "-c", f"sleep 3600; : {marker}"])
    try:
        r = sh("cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; ls -d /proc/[0-9]* | wc -l", who)
    finally:
        host_proc.kill()
        host_proc.wait()
    assert r.returncode == 0, r.stderr
    assert marker not in r.stdout
    assert int(r.stdout.split()[-1]) <= 6  # bwrap's init, the shell and its pipeline


def test_cannot_signal_host_processes(who):
    victim = subprocess.Popen(["/bin/sleep", "3600"])  # alive unless the cell killed it
    try:
        r = sh(f"kill -TERM {victim.pid}; echo rc=$?", who)
        assert victim.poll() is None  # still alive
    finally:
        victim.kill()
        victim.wait()
    assert "rc=0" not in r.stdout


def test_cannot_reach_a_tcp_server_on_the_hosts_loopback(make_cell, who):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(5)

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    cell = make_cell(f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=3)
            print("connected")
        except OSError as e:
            print("refused", e.errno)
        print(open("/proc/net/dev").read().count(":"))  # interfaces: only loopback
    """)
    r = who.run("run", cell)
    server.close()
    t.join(10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("refused")
    assert r.stdout.splitlines()[1] == "1"
    assert accepted == []


def test_cannot_write_outside_the_cells_directories(who):
    r = sh(who=who, script=
        "for p in /usr/ww-x /etc/ww-x /ww-x /proc/ww-x /bin/ww-x; do "
        "  (echo x > $p) 2>/dev/null && echo WROTE $p; done; "
        "echo ok > /cell/file && echo ok > /tmp/file && cat /cell/file /tmp/file; pwd"
    )
    assert "WROTE" not in r.stdout
    assert r.stdout.splitlines() == ["ok", "ok", "/cell"]


def test_cell_directories_start_empty_and_leave_nothing_on_the_host(who):
    marker = f"ww-leftover-{uuid.uuid4().hex}"
    before = set(os.listdir("/tmp"))
    r = sh(f"ls -A /cell /tmp; touch /tmp/{marker} /cell/{marker}", who)
    assert r.returncode == 0
    assert r.stdout.split() == ["/cell:", "/tmp:"]
    after = set(os.listdir("/tmp"))
    assert not any(marker in name for name in after)
    assert not {n for n in after - before if n.startswith("ww-")}
    again = sh("ls -A /cell /tmp", who)
    assert marker not in again.stdout


def test_system_directories_are_read_only_and_etc_is_minimal(who):
    r = sh(who=who, script="ls /etc; test -e /etc/shadow && echo SHADOW; "
           "test -e /etc/passwd && echo PASSWD; touch /usr/bin/x 2>&1 | grep -c 'Read-only'")
    assert "SHADOW" not in r.stdout and "PASSWD" not in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "1"


def test_proc_1_root_does_not_lead_to_the_host(who):
    r = sh("ls /proc/1/root/ 2>&1; cat /proc/1/root/etc/hostname 2>&1", who)
    assert "root" not in r.stdout.split()  # the host's /root directory
    assert open("/etc/hostname").read().strip() not in r.stdout or not Path(
        "/etc/hostname").read_text().strip()


def test_no_fd_bubblewraps_init_holds_is_reachable_from_the_cell(who, tmp_path):
    """bubblewrap's init (pid 1 in the jail, a process of the cell's uid) holds every fd
    bubblewrap had until it closes them, just after it forked the cell: its O_PATH handle
    of the host's /proc among them, and ``..`` from that is the host's root.  A cell that
    opened /proc/1/fd/N in that window walked the host's files.  Here init holds a handle
    of a host directory for its whole life (bubblewrap's own ``--sync-fd``), so the
    window never closes and no timing decides: the cell reaches none of init's fds, and
    cannot open init's memory (whose code it could rewrite) either."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host data")
    tmp_path.chmod(0o755)
    outside.chmod(0o755)
    handle = os.open(outside, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    status_r, status_w = os.pipe()
    script = ('for f in /proc/1/fd/* /proc/1/task/*/fd/*; do [ -d "$f" ] && echo "$f" && '
              'ls "$f/"; done; (exec 5<>/proc/1/mem) 2>/dev/null && echo MEM; echo end')
    spec = jail.JailSpec(binds=[], status_fd=status_w)
    bwrap, *rest = jail.bwrap_argv(jail.find_bwrap(), spec, ["/bin/sh", "-c", script])
    ids = who.ids or jail.host_ids()  # as `ww` runs it: never as host root
    try:
        r = subprocess.run([bwrap, "--sync-fd", str(handle), *rest], pass_fds=(handle, status_w),
                           preexec_fn=jail.dropper(ids, []) if ids else None,
                           capture_output=True, text=True, timeout=HANG)
    finally:
        for fd in (handle, status_r, status_w):
            os.close(fd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["end"]


def test_nothing_of_bubblewraps_init_opens_in_the_cell(who):
    """The same through `ww run` (and with --strict): init's fds, its threads' fds, its
    memory and environment cannot be opened."""
    script = ("for p in /proc/1/fd /proc/1/task/1/fd /proc/1/mem /proc/1/environ; do "
              "(exec 5<$p) 2>/dev/null && echo $p; done; ls /proc/1; echo end")
    for strict in ([], ["--strict"]):
        r = who.run("run", *strict, "/bin/sh", "-c", script)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["end"], strict


def test_hostname_is_the_cells_own():
    r = sh("cat /proc/sys/kernel/hostname")
    assert r.stdout.strip() == "cell"


def test_an_interpreter_outside_an_installation_is_bound_alone(who):
    """A `#!` interpreter in some ~/bin must not expose the directory around it."""
    tmp_path = who.work
    fake_home = tmp_path / "home"
    (fake_home / "bin").mkdir(parents=True)
    (fake_home / "secret.txt").write_text("home secret")
    interpreter = fake_home / "bin" / "mysh"
    interpreter.write_bytes(Path("/bin/sh").read_bytes())
    interpreter.chmod(0o755)
    script = tmp_path / "script.sh"
    script.write_text(f"#!{interpreter}\ncat {fake_home}/secret.txt; ls {fake_home}\n")
    script.chmod(0o755)
    r = who.run("run", str(script))  # not vouched for: refused (tests/host/test_interpreters.py)
    assert r.returncode == 126 and "--interpreter" in r.stderr, r.stderr
    r = who.run("run", "--interpreter", str(interpreter), str(script))
    assert "home secret" not in r.stdout
    assert r.stdout.split() == ["bin"]  # only the path down to the interpreter exists


def _process_with_argv(argv: list[str], timeout: float = HANG) -> int:
    """The host pid of the one process running exactly ``argv`` (bounded in time)."""
    wanted = "\0".join(argv).encode() + b"\0"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        if f.read() == wanted:
                            return int(name)
                except OSError:
                    continue
        time.sleep(0.01)
    raise AssertionError(f"no process runs {argv}")


def test_a_cell_never_holds_host_uid_0(who):
    """As root, the cell's uid 1000 used to be host uid 0 (and so the owner of every file of
    host root's in the jail); now it is nobody on the host, and host root is nobody to it."""
    marker = f"{uuid.uuid4().int % 10**6 + 1000}.5"  # `sleep MARKER`: found by its argv
    proc = who.popen("run", "/bin/sh", "-c",
                     f"stat -c %u /usr /cell; echo ready; exec /bin/sleep {marker}",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = [proc.stdout.readline() for _ in range(3)]
        assert seen[-1] == "ready\n", proc.stderr.read() if proc.poll() is not None else seen
        pid = _process_with_argv(["/bin/sleep", marker])
        with open(f"/proc/{pid}/status") as f:
            ids = {line.split(":")[0]: line.split()[1:] for line in f
                   if line.startswith(("Uid:", "Gid:", "Groups:"))}
    finally:
        proc.kill()
        proc.wait()
    expected = jail.HOST_UID if who.name == "root" else os.getuid() if who.ids is None \
        else who.ids[0]
    assert ids["Uid"] == [str(expected)] * 4  # real, effective, saved, file system
    assert "0" not in ids["Gid"] and "0" not in ids["Groups"]
    assert [line.strip() for line in seen[:2]] == ["65534", "1000"]  # /usr: not the cell's


KNOBS = ("kernel/core_pattern", "kernel/pid_max", "vm/overcommit_memory", "fs/suid_dumpable",
         "kernel/panic")


def test_a_cell_cannot_change_kernel_settings_in_proc_sys(who):
    """A cell once set kernel.core_pattern to a pipe: the next crash of any host process
    ran its command as real root.  The probe writes back the value it read (harmless
    if the write went through, as it did)."""
    script = ("for k in " + " ".join(KNOBS) + "; do f=/proc/sys/$k; v=$(cat $f) && "
              "(printf '%s\\n' \"$v\" > $f) 2>/dev/null && echo WROTE $k; done; "
              "grep ' /proc/sys ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1; echo done")
    r = sh(script, who)
    assert r.returncode == 0, r.stderr
    assert "WROTE" not in r.stdout
    assert r.stdout.split() == ["ro", "done"]  # and /proc/sys is a read-only mount


def test_proc_entries_that_leak_or_control_the_kernel_are_masked(who):
    present = [p for p in jail.PROC_HIDDEN + jail.PROC_READ_ONLY if os.path.exists(p)]
    assert present  # every kernel has some of them
    script = "; ".join(
        f"echo {p} $(ls -A {p} | wc -l)" if os.path.isdir(p) and p in jail.PROC_HIDDEN
        else f"echo {p} $(stat -c %t,%T {p})" if p in jail.PROC_HIDDEN
        else f"echo {p} $(grep ' {p} ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1)"
        for p in present)
    r = sh(script, who)
    assert r.returncode == 0, r.stderr
    found = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    expected = {p: "0" if os.path.isdir(p) and p in jail.PROC_HIDDEN
                else "1,3" if p in jail.PROC_HIDDEN else "ro" for p in present}
    assert found == expected  # hidden dirs empty, hidden files /dev/null, the rest read-only


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="ww as root only")


@root_only
def test_a_program_in_a_private_directory_runs_and_nothing_else_of_it_shows(tmp_path):
    """As root, the cell is nobody, who may not search a 0700 directory: the program is
    made reachable there for the jail alone, with nothing of what lies next to it."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "secret.txt").write_text("private secret")
    program = private / "prog.sh"
    program.write_text(f"#!/bin/sh\necho ran; ls -A {private}; cat {private}/secret.txt\n")
    program.chmod(0o755)
    r = run_ww("run", str(program))
    assert r.stdout.split() == ["ran", "prog.sh"]
    assert "private secret" not in r.stdout + r.stderr
    assert oct(private.stat().st_mode & 0o777) == "0o700"  # the host's view is unchanged


@root_only
def test_a_symlink_into_a_private_directory_is_followed_for_the_cell(tmp_path):
    """A virtualenv's python3 is a symlink to a pyenv's under /root (mode 0700): bubblewrap,
    running as nobody, follows the link and could not reach its end.  Every link on the
    way is made again and the file it ends at bound back; nothing else of it shows."""
    tmp_path.chmod(0o755)
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    private.chmod(0o700)
    (private / "secret.txt").write_text("private secret")
    real = private / "bin" / "tool.sh"
    real.write_text(f"#!/bin/sh\necho ran; cat {private}/secret.txt; ls {private}/bin\n")
    real.chmod(0o755)
    (private / "bin" / "tool").symlink_to("tool.sh")  # a link inside, relative
    # The link where nobody can reach it (tmp_path may be below a 0700 directory).
    public = Path(tempfile.mkdtemp(prefix="ww-public-"))
    try:
        public.chmod(0o755)
        (public / "tool").symlink_to(private / "bin" / "tool")
        r = run_ww("run", str(public / "tool"))
    finally:
        shutil.rmtree(public)
    assert r.stdout.split() == ["ran"], r.stderr  # bubblewrap binds the link's end alone
    assert "private secret" not in r.stdout + r.stderr


@root_only
def test_a_program_only_root_may_execute_is_refused_with_126(tmp_path):
    program = tmp_path / "true"
    program.write_bytes(Path("/bin/true").read_bytes())
    program.chmod(0o700)
    r = run_ww("run", str(program))
    assert r.returncode == 126
    assert r.stderr.count("\n") == 1 and "permission denied for the cell" in r.stderr
