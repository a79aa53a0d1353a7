"""The command line a kubo and bubblewrap user expects (issue 12): what a shell says for a
bare name in the current directory, exit 126 "Exec format error" for what the kernel cannot
execute (jailed and not), ``--version``, ``python -m ww``, the ``WW_*`` variables named in
``--help`` and in errors they cause, help for a bare ``ww``, and ``ww repo check`` naming
each corrupt block.

Through the real console script (run_ww) where the process or the jail matters, in-process
(run_cli) where only parsing does.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import HANG, host_env, run_ww
from ww.app.options import FLAGS
from ww.cli.main import COMMANDS, cli, run_cli
from ww.core.cid import CID, RAW

JAILS = ["bwrap", "none"]


def _executable(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    path.chmod(0o755)
    return str(path)


# --- a bare name ----------------------------------------------------------------------------

def test_a_bare_name_found_only_in_the_current_directory_suggests_dot_slash(tmp_path):
    _executable(tmp_path / "cell.py", b"#!/bin/sh\necho ran\n")
    r = run_ww("run", "cell.py", cwd=tmp_path)
    assert r.returncode == 127, r
    assert r.stderr == "ww: cell.py: command not found (did you mean ./cell.py?)\n"
    # As a shell would have it, ./cell.py runs.
    r = run_ww("run", "./cell.py", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr


def test_a_bare_name_found_nowhere_has_no_suggestion(tmp_path):
    r = run_ww("run", "no-such-cell-ww", cwd=tmp_path)
    assert r.returncode == 127
    assert r.stderr == "ww: no-such-cell-ww: command not found\n"


# --- what the kernel cannot execute ---------------------------------------------------------

def _bad_elf(tmp_path: Path) -> str:
    """/bin/true for another machine (e_machine SPARC): the kernel says ENOEXEC."""
    data = bytearray(Path(shutil.which("true") or "/bin/true").read_bytes())
    data[18:20] = (2).to_bytes(2, "little" if data[5] == 1 else "big")
    return _executable(tmp_path / "other-machine", bytes(data))


def _elf_then_shell(tmp_path: Path, name: str, edit) -> str:  # type: ignore[no-untyped-def]
    """/bin/true with ``edit`` applied to its bytes, then a line of shell: a header that
    looks right to a check of its first 64 bytes, but that the kernel's ELF loader answers
    with ENOEXEC, on which bubblewrap's execvp ran the file as a shell script."""
    data = bytearray(Path(shutil.which("true") or "/bin/true").read_bytes())
    return _executable(tmp_path / name, bytes(edit(data)) + b"\necho ran\n")


def _set(data: bytearray, offset: int, size: int, value: int) -> bytearray:
    data[offset:offset + size] = value.to_bytes(size, "little" if data[5] == 1 else "big")
    return data


def _interp_without_nul(data: bytearray) -> bytearray:
    """The PT_INTERP path's closing NUL made an 'x' (64-bit /bin/true only)."""
    order = "little" if data[5] == 1 else "big"
    phoff, phnum = int.from_bytes(data[32:40], order), int.from_bytes(data[56:58], order)
    for i in range(phnum):
        entry = phoff + 56 * i
        if int.from_bytes(data[entry:entry + 4], order) == 3:
            offset = int.from_bytes(data[entry + 8:entry + 16], order)
            size = int.from_bytes(data[entry + 32:entry + 40], order)
            data[offset + size - 1] = ord("x")
            return data
    pytest.skip("/bin/true has no PT_INTERP here")


NOT_EXECUTABLE = {
    "text without #!": lambda tmp: _executable(tmp / "plain.sh", b"echo ran\n"),
    "html page": lambda tmp: _executable(
        tmp / "page", b"<!DOCTYPE html>\n<html><body>echo ran</body></html>\n"),
    "empty #! line": lambda tmp: _executable(tmp / "empty-shebang", b"#!\necho ran\n"),
    "bad elf": _bad_elf,
    "truncated elf": lambda tmp: _executable(
        tmp / "truncated", Path(shutil.which("true") or "/bin/true").read_bytes()[:40]),
    "elf header then shell": lambda tmp: _elf_then_shell(tmp, "header-only", lambda d: d[:64]),
    "elf with 2000 program headers": lambda tmp: _elf_then_shell(
        tmp, "many-headers", lambda d: _set(d[:64], 56, 2, 2000)),
    "elf whose interpreter path has no NUL": lambda tmp: _elf_then_shell(
        tmp, "interp-no-nul", _interp_without_nul),
    "elf whose program headers are at 2**64-1": lambda tmp: _elf_then_shell(
        tmp, "far-headers", lambda d: _set(d, 32, 8, 2**64 - 1)),
}


@pytest.mark.parametrize("jail", JAILS)
@pytest.mark.parametrize("kind", NOT_EXECUTABLE)
def test_what_the_kernel_cannot_execute_exits_126_exec_format_error(kind, jail, tmp_path):
    """Jailed, bubblewrap's execvp used to hand such a file to /bin/sh (127, or 2 for an
    HTML page); --jail=none said "cannot start" and exited 1.  Now both refuse it alike,
    before anything starts: nothing runs."""
    program = NOT_EXECUTABLE[kind](tmp_path)
    r = run_ww("run", f"--jail={jail}", program)
    assert r.returncode == 126, r
    assert "ran" not in r.stdout
    [line] = r.stderr.splitlines()
    assert line.startswith(f"ww: {program}: cannot execute: Exec format error"), line


@pytest.mark.parametrize("jail", JAILS)
def test_a_tab_after_the_interpreter_on_the_hash_bang_line_ends_its_path(jail, tmp_path):
    """The kernel ends the interpreter's path at a space or a tab (`#!/bin/sh<TAB>-e` runs
    /bin/sh with -e); ww ended it at a space only, and refused the script: "interpreter
    /bin/sh<TAB>-e: no such file", 127."""
    script = _executable(tmp_path / "s", b"#!/bin/sh\t-e\necho ran\n")
    assert subprocess.run([script], capture_output=True, timeout=HANG).stdout == b"ran\n"
    r = run_ww("run", f"--jail={jail}", script)
    assert r.returncode == 0, r
    assert r.stdout == "ran\n"


@pytest.mark.parametrize("jail", JAILS)
def test_a_fifo_as_the_program_exits_126_without_waiting_for_a_writer(jail, tmp_path):
    """Reading the program's first bytes opened a FIFO with the executable bit, which waits
    for a writer: `ww run ./fifo` hung forever (jailed or not).  The kernel executes only a
    regular file (EACCES otherwise): 126 at once, and the FIFO is never opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o755)
    r = run_ww("run", f"--jail={jail}", str(fifo))
    assert r.returncode == 126, r
    [line] = r.stderr.splitlines()
    assert "Permission denied (a FIFO" in line, line


def test_a_script_whose_interpreter_is_a_fifo_exits_126_without_waiting(tmp_path):
    """A #! line is content: `#!/path/of/a/fifo` made `ww run --jail=none script` wait for a
    writer forever while checking the interpreter's format."""
    fifo = tmp_path / "interp"
    os.mkfifo(fifo, 0o755)
    script = _executable(tmp_path / "s", f"#!{fifo}\necho ran\n".encode())
    r = run_ww("run", "--jail=none", script)
    assert r.returncode == 126, r
    assert "Permission denied (a FIFO" in r.stderr and "ran" not in r.stdout


@pytest.mark.parametrize("jail", JAILS)
def test_a_script_whose_interpreter_cannot_be_executed_exits_126(jail, tmp_path):
    interpreter = _executable(tmp_path / "interp", b"not a program\n")
    script = _executable(tmp_path / "s", f"#!{interpreter}\necho ran\n".encode())
    r = run_ww("run", f"--jail={jail}", f"--interpreter={interpreter}", script)
    assert r.returncode == 126, r
    assert "Exec format error" in r.stderr and "ran" not in r.stdout


@pytest.mark.parametrize("jail", JAILS)
def test_an_html_page_added_with_ww_export_and_run_from_ipfs_exits_126(jail, tmp_path):
    page = tmp_path / "index.html"
    page.write_text("<!DOCTYPE html>\n<html><head><title>(x)</title></head></html>\n")
    added = run_ww("export", str(page))
    assert added.returncode == 0, added.stderr
    path = added.stdout.strip()
    assert path.startswith("/ipfs/")
    r = run_ww("run", f"--jail={jail}", path)
    assert r.returncode == 126, r
    [line] = r.stderr.splitlines()
    assert "Exec format error" in line, line


@pytest.mark.parametrize("jail", JAILS)
def test_an_elf_executable_and_a_script_still_run(jail, make_cell):
    script = make_cell("echo script", name="s.sh", shebang="#!/bin/sh")
    for argv, out in ((["/bin/echo", "elf"], "elf\n"), ([script], "script\n")):
        r = run_ww("run", f"--jail={jail}", *argv)
        assert (r.returncode, r.stdout) == (0, out), r.stderr


# --- version, python -m ww, help ------------------------------------------------------------

def test_version_prints_the_package_version():
    expected = f"ww {importlib.metadata.version('wetware')}\n"
    r = run_ww("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, expected, "")
    r = subprocess.run([sys.executable, "-m", "ww", "--version"], capture_output=True,
                       text=True, timeout=HANG)
    assert (r.returncode, r.stdout, r.stderr) == (0, expected, "")


def test_python_m_ww_runs_a_cell_as_the_console_script_does():
    r = subprocess.run([sys.executable, "-m", "ww", "run", "/bin/sh", "-c", "echo hi; exit 3"],
                       capture_output=True, text=True, timeout=HANG)
    assert (r.returncode, r.stdout) == (3, "hi\n"), r.stderr


def test_a_bare_ww_prints_help_on_stdout_and_exits_0():
    r = run_ww()
    assert r.returncode == 0, r
    assert r.stdout.startswith("Usage: ww ") and "Commands:" in r.stdout
    assert r.stderr == ""


def test_a_bare_group_prints_its_help_on_stdout_and_exits_0(capsys):
    assert run_cli(["repo"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Usage: ww repo ") and err == ""


def _options_with_variables(command: click.Command, path: list[str]):
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            yield path, param
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            assert sub is not None
            yield from _options_with_variables(sub, [*path, name])


def test_help_names_the_variable_of_every_option_that_reads_one(capsys):
    found = list(_options_with_variables(cli, []))
    names = {param.envvar for _, param in found}
    # Every `ww run` flag with a variable, and the global ones, are among them.
    assert {f.envvar for f in FLAGS if f.envvar} | {"WW_DEBUG", "WW_JSON"} <= names
    assert {path[0] for path, _ in found if path} >= {"run", "export"}
    for path, param in found:
        assert run_cli([*path, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())  # as wrapped, joined again
        assert isinstance(param.envvar, str)
        assert f"env var: {param.envvar}" in out, (path, param.envvar)
    assert set(COMMANDS) >= {"run", "repo"}


# --- errors a WW_* variable causes name it --------------------------------------------------

VARIABLE_ERRORS = [
    ("WW_JAIL", "chroot"),  # click's choice
    ("WW_LOGIN_TIMEOUT", "soon"),  # click's float
    ("WW_STRICT", "maybe"),  # click's boolean
    ("WW_DEBUG", "maybe"),  # the group's boolean
    ("WW_MEMORY", "12q"),  # ww.app's checks
    ("WW_TIMEOUT", "later"),
    ("WW_PIDS", "-1"),
    ("WW_IDENTITY", "/nonexistent/cell.key"),
    ("WW_POLICY", "/nonexistent/policy.toml"),
    ("WW_ENV", "1BAD"),
    ("WW_NODE_KEY", "/nonexistent/node.key"),
]


@pytest.mark.parametrize(("name", "value"), VARIABLE_ERRORS, ids=[n for n, _ in VARIABLE_ERRORS])
def test_an_error_a_variable_causes_names_the_variable(name, value):
    r = run_ww("run", "/bin/true", env=host_env(**{name: value}))
    assert r.returncode == 2, r
    [line] = r.stderr.splitlines()
    assert name in line, line


@pytest.mark.parametrize("argv", [["--jail", "chroot"], ["--memory", "12q"],
                                  ["--env", "1BAD"], ["--login-timeout", "soon"]])
def test_the_same_error_from_the_command_line_names_no_variable(argv):
    r = run_ww("run", *argv, "/bin/true")
    assert r.returncode == 2, r
    [line] = r.stderr.splitlines()
    assert "WW_" not in line and argv[0].lstrip("-").split("-")[0] in line, line


DAEMON_ERRORS = [
    ("--api", "WW_API", "/ip4/127.0.0.1/udp/5001"),
    ("--gateway", "WW_GATEWAY", "nowhere"),
    ("--node-key", "WW_NODE_KEY", "/nonexistent/node.key"),
]


def test_a_bad_peer_in_the_variable_names_it_once():
    r = run_ww("cat", "/ipfs/QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN",
               env=host_env(WW_IPFS_PEERS="/ip4/127.0.0.1/tcp/1"))
    assert r.returncode == 2, r
    [line] = r.stderr.splitlines()
    assert "(from WW_IPFS_PEERS)" in line and line.count("WW_IPFS_PEERS") == 1, line


@pytest.mark.parametrize(("flag", "name", "value"), DAEMON_ERRORS,
                         ids=[n for _, n, _ in DAEMON_ERRORS])
def test_a_bad_ww_daemon_value_names_its_flag_or_variable(flag, name, value):
    """`ww daemon` refuses a bad address or key before it starts, in one line naming the
    flag, and the variable when that gave the value."""
    given = run_ww("daemon", "--listen", "/ip4/127.0.0.1/tcp/0", flag, value)
    assert given.returncode == 2, given
    [line] = given.stderr.splitlines()
    assert line.startswith(f"ww: {flag} ") and "WW_" not in line, line
    from_variable = run_ww("daemon", "--listen", "/ip4/127.0.0.1/tcp/0",
                           env=host_env(**{name: value}))
    assert from_variable.returncode == 2, from_variable
    [line] = from_variable.stderr.splitlines()
    assert line.startswith(f"ww: {flag} (from {name}) "), line


def test_a_repository_ww_home_names_that_cannot_be_opened_names_the_variable(tmp_path):
    (tmp_path / "a-file").write_text("")
    r = run_ww("repo", "check", env=host_env(WW_HOME=str(tmp_path / "a-file" / "repo")))
    assert r.returncode == 1, r
    [line] = r.stderr.splitlines()
    assert "(WW_HOME)" in line and str(tmp_path / "a-file") in line, line


# --- ww repo check --------------------------------------------------------------------------

def test_repo_check_names_each_corrupt_block(tmp_path, ww_home):
    paths = []
    for i in range(2):
        f = tmp_path / f"f{i}"
        f.write_text(f"content {i}\n")
        added = run_ww("export", "--cid-version", "1", str(f))
        assert added.returncode == 0, added.stderr
        paths.append(added.stdout.strip().removeprefix("/ipfs/"))
    assert run_ww("repo", "check").returncode == 0
    blocks = sorted(p for p in (ww_home / "blocks").rglob("*") if p.is_file())
    assert len(blocks) == 2
    for block in blocks:
        block.chmod(0o644)
        block.write_bytes(b"not what was stored")
    r = run_ww("repo", "check")
    assert r.returncode == 1, r
    assert "2 corrupt blocks" in r.stdout
    for cid in paths:  # a one-block raw file: its CID is the block's own name
        assert re.search(rf"^  corrupt {cid} ", r.stdout, re.M), r.stdout
    for block in blocks:
        assert str(block) in r.stdout


def test_repo_check_names_a_corrupt_block_also_as_pin_ls_does(tmp_path, ww_home):
    """`ww repo check` named a corrupt block only as kubo's `ipfs repo verify` does, the
    CIDv1 raw form of its multihash (`bafkrei...`), while `ww export` and `ww pin ls` name
    it `Qm...`: nothing in the report matched the pin.  A sha2-256 block now has both."""
    f = tmp_path / "f"
    f.write_text("content\n")
    added = run_ww("export", str(f))  # CIDv0: a dag-pb block, `Qm...`
    assert added.returncode == 0, added.stderr
    cid = added.stdout.strip().removeprefix("/ipfs/")
    assert run_ww("pin", "ls", "-q").stdout.split() == [cid]
    [block] = [p for p in (ww_home / "blocks").rglob("*") if p.is_file()]
    block.chmod(0o644)
    block.write_bytes(b"not what was stored")
    r = run_ww("repo", "check")
    assert r.returncode == 1, r
    raw = str(CID.v1(RAW, CID.parse(cid).multihash))
    assert f"  corrupt {raw} ({cid}) {block}\n" in r.stdout, r.stdout


# --- closed or failing stdout ---------------------------------------------------------------

def _close_stdout() -> None:
    os.close(1)  # in the child, before exec: `ww ... >&-`


def test_a_cell_cannot_write_into_the_audit_trail_through_a_closed_stdout(tmp_path):
    """With fd 1 closed by the caller (`ww run --audit trail.jsonl cell >&-`), the audit
    file was opened as fd 1, and the host relayed the cell's stdout into it: a cell could
    write forged records into the operator's trail.  fds 0-2 a caller closed are now taken
    by /dev/null (writing fails as on the closed fd); the trail holds the host's records."""
    trail = tmp_path / "audit.jsonl"
    forged = '{"event":"grant","peer":"12D3KooWforged","granted":["exec"]}'
    cell = _executable(tmp_path / "cell", f"#!/bin/sh\necho '{forged}'\n".encode())
    r = run_ww("run", "--audit", str(trail), cell, preexec_fn=_close_stdout)
    assert "forged" not in (trail.read_text() if trail.exists() else ""), r


@pytest.mark.parametrize("command", ["cat", "import"])
def test_cat_into_a_closed_or_full_stdout_is_one_line_not_an_internal_error(tmp_path, command):
    """`ww cat X >&-` said "internal error: AttributeError: 'NoneType' object has no
    attribute 'buffer'", `ww cat X > /dev/full` "internal error: OSError: [Errno 28] ..."."""
    (tmp_path / "f").write_bytes(b"some bytes\n")
    path = run_ww("export", "-Q", str(tmp_path / "f")).stdout.strip()
    args = ["cat", path] if command == "cat" else ["import", path, "-o", "-"]
    closed = run_ww(*args, preexec_fn=_close_stdout)
    assert (closed.returncode, closed.stderr) == (1, "ww: cannot write to stdout: it is closed\n")
    if not os.path.exists("/dev/full"):
        return
    with open("/dev/full", "wb") as full:
        r = run_ww(*args, stdout=full, capture_output=False, stderr=subprocess.PIPE)
    assert (r.returncode, r.stderr) == (1, "ww: cannot write to stdout: No space left on device\n")


@pytest.mark.parametrize("jail", JAILS)
def test_a_program_named_through_proc_or_dev_fd_runs_as_the_file_it_names(jail, tmp_path):
    """`ww run /dev/fd/5 5<prog` or `/proc/self/root/...`: the jail mounts a /proc and a
    /dev of its own, and bubblewrap failed to bind the program over them ("Can't bind mount
    ... on /newroot/proc/self/...", exit 1).  The host runs the file it resolved and
    checked, by its real path."""
    script = _executable(tmp_path / "cell", b"#!/bin/sh\necho ran \"$@\"\n")
    fd = os.open(script, os.O_RDONLY)
    try:
        r = run_ww("run", f"--jail={jail}", f"/dev/fd/{fd}", "x", pass_fds=(fd,))
    finally:
        os.close(fd)
    assert (r.returncode, r.stdout) == (0, "ran x\n"), r
    echo = shutil.which("echo") or "/bin/echo"
    r = run_ww("run", f"--jail={jail}", f"/proc/self/root{echo}", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r
