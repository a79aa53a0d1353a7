"""The console script's fast path for `ww run` (ww.cli.entry) and the click command agree.

`ww run` is parsed without click when the command line is plain; otherwise, and for every
other command, click parses it.  These tests hold the two together: the same options from the
same command line, the same help, the same one-line usage errors and exit statuses, and the
flag table both are built from is the click command's flag set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import HANG, WW
from ww.app.argv import SubcellCommand, run_argv
from ww.app.options import FLAGS, GLOBAL_FLAGS, MANY, ONE, SWITCH, RunOptions
from ww.cli.entry import parse_run
from ww.host.policy import ExecGrant, GrantSet, IpfsGrant

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
ROOT = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


@pytest.fixture(autouse=True)
def _no_ww_variables(monkeypatch):
    """The WW_* variables standing for flags would send every command line to click."""
    for flag in (*FLAGS, *GLOBAL_FLAGS):
        if flag.envvar:
            monkeypatch.delenv(flag.envvar, raising=False)
    monkeypatch.delenv("WW_ENV", raising=False)


def click_options(argv: list[str], monkeypatch) -> RunOptions:
    """What the click command hands ww.app for ``argv`` (the cell is not run)."""
    from ww.cli.main import cli

    seen: list[RunOptions] = []
    monkeypatch.setattr("ww.app.run.run", lambda options: seen.append(options) or 0)
    cli.main(args=argv, prog_name="ww", standalone_mode=False)
    (options,) = seen
    return options


PLAIN_COMMAND_LINES = [
    ["run", "/bin/true"],
    ["run", "--jail=none", "/bin/echo", "--with-console", "-x", "--"],
    ["--json", "--debug", "run", "--with-console", "--with-ipfs", "/bin/true", "a", "b"],
    ["run", "--fd", "db=0", "--fd=log=1", "--env", "A=1", "--env", "B", "--", "/bin/env"],
    ["run", "--dir", "data=/srv/data", "--dir=out=./o:rw", "--dir", "c=/a:b:ro", "/bin/true"],
    ["run", "--with-exec", "--exec-allow", "/bin/true", "--ipfs-read-only",
     "--ipfs-root", ROOT, "--with-all", "--strict", "--interpreter", "/usr/bin/python3",
     "/bin/true"],
    ["run", "--memory", "256M", "--cpu-time=2", "--pids", "10", "--fsize", "1K",
     "--timeout", "5m", "--jail", "bwrap", "--jail", "none", "/bin/true"],
    ["run", "--identity", "new", "--allow", PEER, "--policy", "p.toml",
     "--login-timeout", "2.5", "--audit", "/tmp/a", "/bin/true"],
    ["run", "--with-p2p", "--listen", "/ip4/127.0.0.1/tcp/0", "--allow-dial", "10.0.0.1",
     "--join", f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}", "--peer",
     f"/ip4/127.0.0.1/tcp/4002/p2p/{PEER}", "/bin/true"],
    ["run", "--ipfs", "/ip4/127.0.0.1/tcp/5001/http", "/ipfs/" + ROOT],
    ["run", "--ipfs=", "/bin/true"],
    ["run", "--with-p2p", "--node-key", "new", "/bin/true"],
    ["run", "--node-key=node.key", "--node-key", "/tmp/other.key", "/bin/true"],
    ["run", "--bootstrap", f"/ip4/127.0.0.1/tcp/4003/p2p/{PEER}", "--routing", "dht",
     "--bootstrap", f"/ip4/127.0.0.1/tcp/4004/p2p/{PEER}", "/ipfs/" + ROOT],
    ["run", "--routing=none", "/bin/true"],
]


@pytest.mark.parametrize("argv", PLAIN_COMMAND_LINES, ids=" ".join)
def test_the_fast_path_parses_a_plain_command_line_as_click_does(argv, monkeypatch):
    fast = parse_run(argv)
    assert fast is not None
    assert fast == click_options(argv, monkeypatch)


NOT_PLAIN = [
    ["run", "--help"],
    ["run", "-h", "/bin/true"],
    ["run"],
    ["run", "--"],
    ["run", "--bogus", "/bin/true"],
    ["run", "--with-cons", "/bin/true"],
    ["run", "--with-console=1", "/bin/true"],
    ["run", "--fd"],
    ["run", "--fd", "--with-console", "/bin/true"],
    ["run", "--jail", "docker", "/bin/true"],
    ["run", "--login-timeout", "soon", "/bin/true"],
    ["run", "--listen", "/ip4/127.0.0.1/udp/1", "/bin/true"],
    ["run", "--join", "/ip4/127.0.0.1/tcp/1", "/bin/true"],
    ["run", "--peer", "nonsense", "/bin/true"],
    ["run", "--allow-dial", "localhost", "/bin/true"],
    ["run", "--routing", "mdns", "/bin/true"],
    ["run", "--bootstrap", "/ip4/127.0.0.1/tcp/1", "/bin/true"],
    ["run", "--ipfs", "ftp://x", "/bin/true"],
    ["--bogus", "run", "/bin/true"],
    ["--help"],
    ["schema"],
    [],
]


@pytest.mark.parametrize("argv", NOT_PLAIN, ids=" ".join)
def test_what_the_fast_path_is_unsure_of_goes_to_click(argv):
    assert parse_run(argv) is None


ENVIRONMENTS = [
    {"WW_WITH_CONSOLE": "1"},
    {"WW_WITH_CONSOLE": "yes", "WW_WITH_IPFS": "False", "WW_STRICT": " on "},
    {"WW_WITH_ALL": "0", "WW_JAIL": "none", "WW_LOGIN_TIMEOUT": "300"},
    {"WW_DEBUG": "1", "WW_JSON": "true", "WW_IPFS_READ_ONLY": "t"},
    {"WW_MEMORY": "64M", "WW_TIMEOUT": "5m", "WW_PIDS": "10", "WW_FSIZE": "1K",
     "WW_CPU_TIME": "2"},
    {"WW_IDENTITY": "new", "WW_POLICY": "p.toml", "WW_AUDIT": "/tmp/a",
     "WW_IPFS": "/ip4/127.0.0.1/tcp/5001/http"},
    {"WW_WITH_EXEC": "n", "WW_WITH_P2P": "off", "WW_IPFS": ""},
    {"WW_NODE_KEY": "new", "WW_WITH_P2P": "1"},
]


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=lambda e: ",".join(sorted(e)))
@pytest.mark.parametrize("argv", [
    ["run", "/bin/true"],
    ["run", "--with-console", "--jail", "bwrap", "--login-timeout", "2", "--timeout", "1",
     "/bin/true"],
], ids=" ".join)
def test_the_fast_path_reads_the_ww_variables_as_click_does(argv, env, monkeypatch):
    """A ``WW_*`` variable sets what its flag sets; the command line beats it (click's rule)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fast = parse_run(argv)
    assert fast is not None
    assert fast == click_options(argv, monkeypatch)
    # Which values a variable set (so that an error about one names it): those the command
    # line did not give.
    given = {arg.partition("=")[0] for arg in argv if arg.startswith("--")}
    assert set(fast.from_env) == {flag.field for flag in FLAGS
                                  if env.get(flag.envvar or "") and flag.flag not in given}


@pytest.mark.parametrize("env", [
    {"WW_LISTEN": "/ip4/127.0.0.1/tcp/0"},  # a repeatable flag's variable: click splits it
    {"WW_IPFS_PEERS": f"/ip4/127.0.0.1/tcp/4002/p2p/{PEER}"},
    {"WW_ALLOW_DIAL": "10.0.0.1"},
    {"WW_DIR": "data=/srv/data out=/srv/out:rw"},
    {"WW_WITH_CONSOLE": "maybe"},  # not a boolean: click's error
    {"WW_STRICT": "2"},
], ids=lambda e: ",".join(sorted(e)))
def test_a_ww_variable_the_fast_path_is_unsure_of_sends_the_command_line_to_click(
        env, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parse_run(["run", "/bin/true"]) is None


def click_path(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`ww ARGV` through the click command only, as every command went before."""
    code = "import sys; from ww.cli.main import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=HANG)


@pytest.mark.parametrize("argv", [
    ["run", "--help"],
    ["run", "--bogus", "/bin/true"],
    ["run"],
    ["run", "--jail", "docker", "/bin/true"],
    ["run", "--memory", "lots", "/bin/true"],  # refused after parsing, by ww.app
    ["run", "--fd", "db", "/bin/true"],
    ["run", "--pids", "0", "/bin/true"],
    ["run", "--policy", "p.toml", "--ipfs-root", ROOT, "/bin/true"],
    ["run", "--ipfs", "/ip4/127.0.0.1/tcp/1/http", "--peer",
     f"/ip4/127.0.0.1/tcp/4002/p2p/{PEER}", "/bin/true"],
    ["run", "/no/such/program"],
    ["run", "--jail=none", "/bin/sh", "-c", "exit 7"],
], ids=" ".join)
def test_the_console_script_answers_as_the_click_command(argv):
    """Same stdout, stderr and exit status, whichever path the command line takes."""
    script = subprocess.run([WW, *argv], capture_output=True, text=True, timeout=HANG)
    reference = click_path(argv)
    assert (script.returncode, script.stdout, script.stderr) == \
        (reference.returncode, reference.stdout, reference.stderr)


def test_the_flag_table_is_the_click_commands_flag_set():
    from ww.cli.main import cli
    from ww.cli.run import _FIELD_OF_PARAMETER, run

    table = {flag.flag: flag for flag in FLAGS}
    options = [p for p in run.params if isinstance(p, click.Option) and p.name != "help"]
    assert sorted(table) == sorted(p.opts[0] for p in options)
    for param in options:
        flag = table[param.opts[0]]
        kind = SWITCH if param.is_flag else MANY if param.multiple else ONE
        assert (flag.field, flag.kind, flag.envvar) == \
            (_FIELD_OF_PARAMETER.get(param.name, param.name), kind, param.envvar)
    group = {p.opts[0]: p.envvar for p in cli.params if isinstance(p, click.Option)}
    # --help and --version end the command at once: click's alone (not in the fast path's
    # table, a command line with them goes to click).
    assert {flag.flag: flag.envvar for flag in GLOBAL_FLAGS} == \
        {k: v for k, v in group.items() if k not in ("--help", "--version")}
    assert parse_run(["--version", "run", "/bin/true"]) is None


@pytest.mark.parametrize("grants", [
    GrantSet(),
    GrantSet(console=True),
    GrantSet(console=True, ipfs=IpfsGrant(True, (ROOT,)), exec=ExecGrant(("/bin/true",))),
    GrantSet(ipfs=IpfsGrant(), exec=ExecGrant()),
])
def test_a_sub_cells_command_line_parses_back_to_its_configuration(grants):
    parent = RunOptions(
        "/bin/parent", debug=True, json=True, jail="none", ipfs_api="http://127.0.0.1:5001",
        allow_dial=("127.0.0.0/8",), strict=True, interpreters=("/usr/bin/python3",),
        memory="64M", cpu_time="3", pids="7", fsize="1K", timeout="9s",
        with_console=True, identity="new")  # not handed down: the grants are
    argv = SubcellCommand(parent, ww=[]).argv(grants, ["A=1"], "/bin/child", ["--x", "y"])
    child = parse_run(argv)
    assert child is not None
    assert child._replace(ww_env="", search_path=None) == RunOptions(
        "/bin/child", args=("--x", "y"), env_entries=("A=1",), debug=True, json=True,
        jail="none", ipfs_api="http://127.0.0.1:5001", allow_dial=("127.0.0.0/8",),
        strict=True, interpreters=("/usr/bin/python3",), memory="64M", cpu_time="3",
        pids="7", fsize="1K", timeout="9s", with_console=grants.console,
        with_ipfs=grants.ipfs is not None,
        ipfs_read_only=bool(grants.ipfs and grants.ipfs.read_only),
        ipfs_roots=grants.ipfs.roots if grants.ipfs else (),
        with_exec=grants.exec is not None,
        exec_allow=grants.exec.allow if grants.exec else ())


@pytest.mark.parametrize("given, handed_down", [
    (None, None),
    ("new", "new"),  # a fresh key for each sub-cell too, never $WW_HOME's
    ("/keys/node.key", "/keys/node.key"),
    ("node.key", "{cwd}/node.key"),  # the same file, wherever the sub-cell's ww starts
])
def test_a_sub_cell_gets_the_parents_node_key(given, handed_down):
    parent = RunOptions("/bin/parent", node_key=given, with_p2p=True)
    argv = SubcellCommand(parent, ww=[]).argv(GrantSet(p2p=True), [], "/bin/child", [])
    child = parse_run(argv)
    assert child is not None
    expected = handed_down.format(cwd=os.getcwd()) if handed_down else None
    assert (child.node_key, child.with_p2p) == (expected, True)
    assert ("--node-key" in argv) == (given is not None)


def test_a_sub_cells_grant_flags_in_the_audit_trail_keep_their_order():
    grants = GrantSet(console=True, ipfs=IpfsGrant(True, (ROOT,)),
                      exec=ExecGrant(("/bin/true",)))
    assert SubcellCommand(RunOptions("")).grant_flags(grants) == [
        "--with-console", "--with-ipfs", "--ipfs-read-only", "--ipfs-root", ROOT,
        "--with-exec", "--exec-allow", "/bin/true"]


def test_run_argv_ends_options_before_the_executable():
    argv = run_argv(RunOptions("-rf", args=("--help",), with_console=True))
    assert argv == ["run", "--with-console", "--", "-rf", "--help"]


def test_a_plain_run_imports_neither_click_nor_pycapnp_cryptography_or_libp2p():
    code = (
        "import sys\n"
        "from ww.cli.entry import parse_run\n"
        "from ww.app.run import run\n"
        "status = run(parse_run(['run', '--jail=none', '/bin/true']))\n"
        "heavy = [m for m in ('click', 'capnp', 'cryptography', 'libp2p', 'trio', 'asyncio')"
        " if m in sys.modules]\n"
        "print(status, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG)
    assert r.stdout == "0 []\n", r.stderr


# What the plain path of `ww run /bin/true` once imported and no longer does (issue 11,
# start-up): typing (with re, enum, functools, contextlib), subprocess (with threading,
# locale, selectors), socket, signal (with enum), dataclasses (with inspect, ast, dis,
# tokenize), and click.  With --jail=none, tempfile and shutil (for the cell's working
# directory) still bring re, enum, functools and warnings.
NOT_ON_THE_PLAIN_PATH = ("typing", "re", "enum", "functools", "subprocess", "threading",
                         "locale", "socket", "selectors", "signal", "contextlib", "warnings",
                         "dataclasses", "inspect", "click", "asyncio", "capnp", "rich")


@pytest.mark.parametrize(("argv", "allowed"), [
    (["run", "/bin/true"], ()),
    (["run", "--jail=none", "/bin/true"], ("re", "enum", "functools", "warnings")),
])
def test_a_plain_run_imports_none_of_the_modules_start_up_does_without(argv, allowed):
    # The console script itself, up to its exit: which of the modules had been imported.
    code = (
        "import os, sys\n"
        "import ww.cli.entry as entry\n"
        "def report(status):\n"
        f"    found = [m for m in {NOT_ON_THE_PLAIN_PATH!r} if m in sys.modules"
        f" and m not in {allowed!r}]\n"
        "    os.write(1, f'{status} {found}'.encode())\n"
        "    os._exit(0)\n"
        "entry.exit_now = report\n"
        f"entry.main({argv!r})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.stdout == "0 []", r.stderr


def _readme_flag_table() -> list[tuple[set[str], set[str]]]:
    """README's flag table: per row, the flags its first column names and the WW_* variables
    its second names."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = []
    for line in readme.splitlines():
        if not line.startswith("| `--"):
            continue
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        rows.append((set(re.findall(r"`(--[a-z0-9-]+)", cells[0])),
                     set(re.findall(r"`(WW_[A-Z0-9_]+)`", cells[1]))))
    return rows


def test_readme_flag_table_lists_every_run_flag_with_its_variable():
    """Every option `ww run --help` shows (and the group's --debug, --json) has a row in the
    README's table, the row names the variable that sets it, and names no variable none of
    its flags reads."""
    from ww.cli.main import cli
    from ww.cli.run import run

    rows = _readme_flag_table()
    options = [p for p in (*run.params, *cli.params)
               if isinstance(p, click.Option) and p.opts[0] not in ("--help", "--version")]
    variables = {p.opts[0]: {p.envvar} if p.envvar else set() for p in options}
    variables["--env"] = {"WW_ENV"}  # read by hand (comma-separated); its help names it
    assert "WW_ENV" in (next(p for p in options if p.opts[0] == "--env").help or "")
    listed = set().union(*(flags for flags, _ in rows))
    assert sorted(set(variables) - listed) == []
    assert sorted(listed - set(variables)) == []
    for flags, named in rows:
        assert named == set().union(*(variables[f] for f in flags)), sorted(flags)
