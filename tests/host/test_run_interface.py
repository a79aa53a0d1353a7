"""`ww run`'s process interface: stdio, argv, environment, fd layout, exit statuses.

Every test runs the real `ww` command, which starts a real cell in the real jail.
"""

from __future__ import annotations

import fcntl
import os
import resource
import subprocess

import pytest

from tests.conftest import HANG, WW, host_env, run_ww


def test_stdio_that_is_a_read_write_file_is_the_hosts_own_fd_not_a_pipe(tmp_path):
    """A file open read-write passes as it is (reopened, it gives no more than the fd);
    one open read-only or write-only is relayed through a pipe (tests/host/test_relay.py)."""
    out = tmp_path / "out.txt"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        rc = subprocess.run(
            [WW, "run", "/bin/sh", "-c", "stat -L -c %i /proc/self/fd/1; readlink /proc/self/fd/1"],
            stdout=fd, timeout=HANG,
        ).returncode
    finally:
        os.close(fd)
    assert rc == 0
    inode, target = out.read_text().split("\n")[:2]
    assert int(inode) == os.stat(out).st_ino
    assert not target.startswith("pipe:")


def test_stdin_passes_through():
    r = run_ww("run", "/bin/cat", input="from the host\n")
    assert r.returncode == 0
    assert r.stdout == "from the host\n"


def test_arguments_that_look_like_flags_reach_the_cell_unchanged():
    args = ["--with-ipfs", "-x", "--fd", "a=1", "--", "spaced arg", "ünïcode", ""]
    r = run_ww("run", "/usr/bin/printf", "[%s]\\n", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"[{a}]" for a in args]


def test_environment_is_only_ww_env_env_flags_and_fd_vars(tmp_path):
    env = host_env(
        HOST_SECRET="do-not-leak", PASSED="from-host", ALSO="also-host",
        WW_ENV="PASSED,SET=in-ww-env,MISSING_ON_HOST",
    )
    db = tmp_path / "db"
    db.write_text("x")
    with open(db) as f:
        r = run_ww("run", "--env", "ALSO", "--env", "OVERRIDE=v=with=equals",
                   f"--fd=db={f.fileno()}", "/usr/bin/env",
                   env=env, pass_fds=(f.fileno(),))
    assert r.returncode == 0, r.stderr
    seen = dict(line.split("=", 1) for line in r.stdout.splitlines())
    # bubblewrap announces the cell's own working directory, which is not a host value.
    assert seen.pop("PWD") == "/cell"
    assert seen == {
        "PASSED": "from-host",
        "SET": "in-ww-env",
        "ALSO": "also-host",
        "OVERRIDE": "v=with=equals",
        "WW_FD_DB": "4",
    }
    assert "do-not-leak" not in r.stdout


def test_env_flag_overrides_ww_env_and_fd_vars_cannot_be_forged(tmp_path):
    r = run_ww("run", "--env", "A=flag", "/usr/bin/env", env=host_env(WW_ENV="A=wwenv"))
    assert "A=flag" in r.stdout.splitlines()
    assert "A=wwenv" not in r.stdout
    r = run_ww("run", "--env", "WW_FD_DB=9", "/usr/bin/env")
    assert r.returncode == 2
    assert "WW_FD_" in r.stderr


def test_fd_named_db_lands_at_fd_4_and_cache_at_fd_5(tmp_path):
    (tmp_path / "db").write_text("database contents")
    (tmp_path / "cache").write_text("cache contents")
    with open(tmp_path / "db") as db, open(tmp_path / "cache") as cache:
        r = run_ww(
            "run", "--fd", f"db={db.fileno()}", "--fd", f"cache={cache.fileno()}",
            "/bin/sh", "-c", 'echo "$WW_FD_DB $WW_FD_CACHE"; cat <&4; echo; cat <&5',
            pass_fds=(db.fileno(), cache.fileno()),
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["4 5", "database contents", "cache contents"]


def test_fd_order_follows_flag_order_not_names(tmp_path):
    (tmp_path / "a").write_text("A")
    (tmp_path / "b").write_text("B")
    with open(tmp_path / "a") as a, open(tmp_path / "b") as b:
        r = run_ww(
            "run", "--fd", f"zeta={a.fileno()}", "--fd", f"alpha={b.fileno()}",
            "/bin/sh", "-c", 'echo "$WW_FD_ZETA $WW_FD_ALPHA"; cat <&4; cat <&5',
            pass_fds=(a.fileno(), b.fileno()),
        )
    assert r.stdout.splitlines() == ["4 5", "AB"]


def test_host_fd_3_as_a_source_moves_to_4_while_rpc_keeps_3(tmp_path):
    (tmp_path / "three").write_text("was host fd 3")
    script = (
        'cat <&4; echo; for n in 3 4; do readlink /proc/self/fd/$n | cut -d: -f1; done'
    )
    with open(tmp_path / "three", "r+") as f:  # read-write: passed as it is, not relayed
        # Make the file the host's fd 3 inside the `ww` process.
        r = subprocess.run(
            [WW, "run", "--fd", "db=3", "/bin/sh", "-c", script],
            capture_output=True, text=True, pass_fds=(3,), timeout=HANG,
            preexec_fn=lambda: os.dup2(f.fileno(), 3),
        )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "was host fd 3"
    assert lines[1] == "socket"
    assert lines[2].endswith("three")


FD_LISTING = """
import os
names = []
for n in os.listdir("/proc/self/fd"):
    try:
        os.readlink("/proc/self/fd/" + n)
    except FileNotFoundError:
        continue  # the directory listing's own fd, closed by now
    names.append(int(n))
print(" ".join(map(str, sorted(names))))
print(os.readlink("/proc/self/fd/3").split(":")[0])
"""


def test_cell_sees_exactly_stdio_rpc_and_granted_fds(tmp_path, make_cell):
    cell = make_cell(FD_LISTING, shebang="#!/usr/bin/env -S python3 -S")
    (tmp_path / "g").write_text("granted")
    leaked_r, leaked_w = os.pipe()  # inheritable in ww, never named in --fd
    os.set_inheritable(leaked_r, True)
    try:
        with open(tmp_path / "g") as g:
            r = run_ww("run", "--fd", f"g={g.fileno()}", cell,
                       pass_fds=(g.fileno(), leaked_r))
    finally:
        os.close(leaked_r)
        os.close(leaked_w)
    assert r.returncode == 0, r.stderr
    listing, kind = r.stdout.splitlines()
    assert listing == "0 1 2 3 4"
    assert kind == "socket"


@pytest.mark.parametrize("jail", ["bwrap", "none"])
def test_an_fd_above_the_hosts_soft_fd_limit_never_reaches_the_cell(make_cell, tmp_path, jail):
    """An fd `ww run` inherits above its soft RLIMIT_NOFILE (a shell's ``exec 1500<file``,
    then ``ulimit -Sn 1024``) is closed for the cell like any other (the forked child closed
    fds only up to that limit, so fd 1500 reached the jailed cell)."""
    cell = make_cell(FD_LISTING, shebang="#!/usr/bin/env -S python3 -S")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1500:
        pytest.skip("the hard fd limit is below 1501")
    (tmp_path / "secret").write_text("not granted")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1501), hard))
    fd = os.open(tmp_path / "secret", os.O_RDONLY)
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 1500)  # inheritable
        try:
            r = subprocess.run(
                ["/bin/sh", "-c", 'ulimit -Sn 1024 && exec "$0" "$@"', WW, "run", "--jail", jail,
                 cell], pass_fds=(high,), capture_output=True, text=True, timeout=HANG)
        finally:
            os.close(high)
    finally:
        os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert high >= 1500
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "0 1 2 3"


def test_fd_3_is_a_unix_stream_socket(make_cell):
    cell = make_cell("""
        import socket
        s = socket.socket(fileno=3)
        print(s.family.name, s.type.name)
        s.detach()
    """)
    r = run_ww("run", cell)
    assert r.stdout.strip() == "AF_UNIX SOCK_STREAM", r.stderr


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("nodelimiter", "expected name=fdnum"),
        ("=5", "the name must be"),
        ("9lives=1", "the name must be"),
        ("bad-name=1", "the name must be"),
        ("db=x", "is not a file descriptor number"),
        ("db=-1", "is not a file descriptor number"),
        ("db=987", "fd 987 is not open"),
    ],
)
def test_bad_fd_flag_is_a_usage_error_naming_the_flag(flag, needle):
    r = run_ww("run", "--fd", flag, "/bin/echo", "cell started")
    assert r.returncode == 2
    assert r.stdout == ""  # no cell started
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and repr(flag) in lines[0]


def test_fd_number_out_of_range_is_a_usage_error():
    r = run_ww("run", "--fd", "db=99999999999999999999", "/bin/true")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "'db=99999999999999999999'" in r.stderr


def test_closed_stdout_and_stderr_do_not_change_the_status():
    for fd in (1, 2):
        r = subprocess.run(["/bin/sh", "-c", f'exec {fd}>&-; exec "$@"', "sh", WW, "run",
                            "/bin/sh", "-c", "exit 5"], timeout=HANG)
        assert r.returncode == 5


def test_duplicate_fd_name_is_a_usage_error_case_insensitively():
    r = run_ww("run", "--fd", "db=1", "--fd", "DB=2", "/bin/echo", "cell started")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "already used" in r.stderr and "'DB=2'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],  # no executable
        ["run", "--no-such-flag", "/bin/true"],
        ["run", "--env", "1BAD=x", "/bin/true"],
        ["run", "--jail", "chroot", "/bin/true"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv):
    r = run_ww(*argv)
    assert r.returncode == 2, r
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("ww: ")


def test_exit_status_is_the_cells_own():
    assert run_ww("run", "/bin/sh", "-c", "exit 42").returncode == 42
    assert run_ww("run", "/bin/true").returncode == 0
    assert run_ww("run", "/bin/false").returncode == 1


def test_missing_command_exits_127(tmp_path):
    for cmd in ("no-such-program-ww", str(tmp_path / "missing")):
        r = run_ww("run", cmd)
        assert r.returncode == 127, r
        assert len(r.stderr.strip().splitlines()) == 1
        assert "ww: " in r.stderr


def test_script_with_missing_interpreter_exits_127(make_cell):
    cell = make_cell("echo hi", name="s.sh", shebang="#!/usr/bin/no-such-interpreter-ww")
    assert run_ww("run", cell).returncode == 127
    # Outside the system directories it is refused before the host looks for it.
    cell = make_cell("echo hi", name="t.sh", shebang="#!/nonexistent/interpreter")
    assert run_ww("run", cell).returncode == 126


@pytest.mark.parametrize("jail", ["bwrap", "none"])
@pytest.mark.parametrize(("shebang", "named"), [
    ("#!/bin/sh\r", "'/bin/sh\\r'"), ("#!/usr/bin/env sh\r", "'sh\\r'"),
    ("#!/bin/sh \r", None),
])
def test_a_crlf_shebang_is_not_found_as_the_kernel_says(make_cell, jail, shebang, named):
    """`#!/bin/sh\r` (a script saved with CRLF line endings) ran under ww, which stripped
    the carriage return, where the kernel looks for an interpreter named "/bin/sh\r" and
    bash says "required file not found" (127): now ww says so, in one line, and runs
    nothing.  (`#!/bin/sh \r`: the kernel passes "\r" to /bin/sh as its argument.)"""
    cell = make_cell("echo ran", name="crlf.sh", shebang=shebang)
    r = run_ww("run", f"--jail={jail}", cell)
    assert "ran" not in r.stdout
    if named is None:  # the interpreter is found; the "\r" is its argument, as a file
        assert r.returncode != 0 and "carriage return" not in r.stderr
        return
    assert (r.returncode, r.stdout) == (127, "")
    assert r.stderr.splitlines() == [
        f"ww: {cell}: interpreter {named} not found: the #! line ends in a carriage return "
        "(CRLF line endings; convert the script with dos2unix)"]


def test_env_s_splits_a_crlf_shebang_at_its_carriage_return_as_env_does(make_cell):
    """`env -S` splits at any white space, "\r" included: GNU env runs `#!/usr/bin/env -S
    sh\r`, and so does ww."""
    cell = make_cell("echo ran", name="crlf.sh", shebang="#!/usr/bin/env -S sh\r")
    r = run_ww("run", cell)
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr


@pytest.mark.parametrize("jail", ["bwrap", "none"])
@pytest.mark.parametrize("rest", ['python3 -c "print(1)"', "python3 -c 'print(1)'",
                                  "sh -c echo\\ ran", "sh ${HOME}", "sh # comment"])
def test_env_s_with_quotes_escapes_or_variables_is_refused_not_misread(make_cell, jail, rest):
    """GNU `env -S` reads quotes, backslash escapes, `${VAR}` and `#` comments; ww split
    the line at white space alone, so `#!/usr/bin/env -S python3 -c "print(1)"` ran
    `python3 -c '"print(1)"'` (a string expression: nothing printed, exit 0) where the
    kernel and env print 1.  Such a line is refused, 126, one line, nothing run."""
    cell = make_cell("echo ran", name="envs.sh", shebang=f"#!/usr/bin/env -S {rest}")
    r = run_ww("run", f"--jail={jail}", cell)
    assert (r.returncode, r.stdout) == (126, ""), r.stderr
    assert [line for line in r.stderr.splitlines() if "--jail=none" not in line] == [
        f"ww: {cell}: unsupported interpreter line: #!/usr/bin/env -S {rest} (quotes, "
        "backslashes, $ and # after env -S are not read as env reads them)"]


@pytest.mark.parametrize("jail", ["bwrap", "none"])
@pytest.mark.parametrize("line", ["#!/usr/bin/env -S GREETING=hi LC_ALL=C sh",
                                  "#!/usr/bin/env GREETING=hi sh"])
def test_env_assignments_in_the_interpreter_line_set_the_cells_environment(
        make_cell, jail, line):
    """`#!/usr/bin/env -S NAME=VALUE cmd`: env sets NAME for cmd.  ww took NAME=VALUE for
    the interpreter's name and exited 127 ("interpreter 'GREETING=hi' not found")."""
    cell = make_cell('echo "$GREETING ${LC_ALL:-unset}"', name="assign.sh", shebang=line)
    r = run_ww("run", f"--jail={jail}", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("hi C\n" if "LC_ALL" in line else "hi unset\n")


@pytest.mark.parametrize("rest", ["-S GREETING=hi", "-S A=1 -i sh"])
def test_env_assignments_without_a_command_are_refused(make_cell, rest):
    cell = make_cell("echo ran", name="assign.sh", shebang=f"#!/usr/bin/env {rest}")
    r = run_ww("run", cell)
    assert (r.returncode, r.stdout) == (126, ""), r.stderr
    assert r.stderr.splitlines() == [
        f"ww: {cell}: unsupported interpreter line: #!/usr/bin/env {rest}"]


def test_not_executable_exits_126(tmp_path):
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\necho hi\n")
    plain.chmod(0o644)
    for target in (str(plain), str(tmp_path)):
        r = run_ww("run", target)
        assert r.returncode == 126, r
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("sig", "code"), [("KILL", 137), ("TERM", 143), ("SEGV", 139)])
def test_cell_killed_by_signal_n_exits_128_plus_n(sig, code):
    r = run_ww("run", "/bin/sh", "-c", f"kill -{sig} $$")
    assert r.returncode == code


def test_missing_bubblewrap_exits_1_saying_how_to_install(tmp_path):
    (tmp_path / "bin").mkdir()
    r = run_ww("run", "/bin/true", env=host_env(PATH=str(tmp_path / "bin")))
    assert r.returncode == 1
    assert "apt-get install bubblewrap" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_jail_none_runs_unjailed_with_a_warning():
    r = run_ww("run", "--jail=none", "/bin/sh", "-c", "cat /proc/1/comm; pwd")
    assert r.returncode == 0
    assert "warning" in r.stderr and "--jail=none" in r.stderr
    first, cwd = r.stdout.splitlines()
    assert first != "bwrap"  # the host's pid 1 is visible
    assert "ww-cell-" in cwd
    assert not os.path.exists(cwd)  # the working directory is removed afterwards


def test_ww_jail_env_var_selects_the_jail():
    r = run_ww("run", "/bin/true", env=host_env(WW_JAIL="none"))
    assert "--jail=none" in r.stderr
