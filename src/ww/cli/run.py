"""`ww run`: start a program as a cell.  Parsing only: the work is in ww.app.run.

`ww run` without --help and without any WW_* option variable skips click altogether
(ww.cli.entry parses it from the same flag table, ww.app.options.FLAGS); this command is
the reference it agrees with, and what every other command line goes through.
"""

from __future__ import annotations

import os
from typing import Any

import click

from ww.app.options import FLAGS, RunOptions
from ww.cli._ipfs_option import ipfs_option, peer_option, run_routing_options
from ww.cli._p2p_options import p2p_options

# Identity, policy and attenuation (see docs/auth.md): option -> (envvar, click settings).
_ACCESS_OPTIONS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "with_exec": ("WW_WITH_EXEC", dict(is_flag=True, help=(
        "Grant the process-execution capability: the cell starts sub-cells from /ipfs/ "
        "paths and --exec-allow programs."))),
    "exec_allow": (None, dict(multiple=True, metavar="PATH", help=(
        "A local program sub-cells may run (absolute path, repeatable)."))),
    "ipfs_read_only": ("WW_IPFS_READ_ONLY", dict(is_flag=True, help=(
        "Narrow the IPFS capability to cat, ls, stat and resolve."))),
    "ipfs_root": (None, dict(multiple=True, metavar="CID", help=(
        "Narrow the IPFS capability to the DAGs under CID (repeatable)."))),
    "identity": ("WW_IDENTITY", dict(metavar="KEYFILE|new", help=(
        "Give the cell an Ed25519 identity (a key from 'ww idgen', or a new one), handed "
        "over fd 3; the cell must then log in with it."))),
    "allow": (None, dict(multiple=True, metavar="PEERID", help=(
        "Let the identity PEERID log in, with the --with-* grants (repeatable); a signed "
        "login becomes required."))),
    "policy": ("WW_POLICY", dict(metavar="FILE.toml", help=(
        "Which identities get which capabilities (docs/auth.md); a signed login becomes "
        "required."))),
    "login_timeout": ("WW_LOGIN_TIMEOUT", dict(type=float, default=10.0, metavar="SECONDS",
                                               show_default=True, help=(
        "When a signed login is required: stop the cell (exit 64) if it has not logged in "
        "within SECONDS."))),
    "audit": ("WW_AUDIT", dict(metavar="FILE", help=(
        "Append the audit trail (JSON lines, as --json) to FILE, created with mode 0600; "
        "unlike stderr, the cell cannot write to it."))),
}


def _access_options(f: Any) -> Any:
    for name, (envvar, settings) in reversed(_ACCESS_OPTIONS.items()):
        f = click.option(f"--{name.replace('_', '-')}", name, envvar=envvar, **settings)(f)
    return f

# Hardening: the seccomp mode and resource limits (see docs/security.md), option -> envvar.
_LIMIT_OPTIONS = {
    "memory": ("WW_MEMORY", "SIZE", "Stop the cell (exit 66) when it and its sub-cells hold "
               "more than SIZE of memory, kernel buffers included (e.g. 256M, 2G); refused "
               "where the host cannot make a memory cgroup."),
    "cpu_time": ("WW_CPU_TIME", "SECONDS", "Stop the cell (exit 66) after SECONDS of CPU time, "
                 "all its processes and sub-cells together; refused where the host cannot "
                 "make a cpu cgroup."),
    "pids": ("WW_PIDS", "N", "Stop the cell (exit 66) when it and its sub-cells run more than "
             "N processes and threads at once; refused where the host cannot make a pids "
             "cgroup."),
    "fsize": ("WW_FSIZE", "SIZE", "Stop the cell (exit 66) when it writes a file larger "
              "than SIZE; an /ipfs/ program larger than SIZE is not fetched."),
    "timeout": ("WW_TIMEOUT", "SECONDS", "Stop the cell (exit 66) after SECONDS of wall-clock "
                "time (e.g. 30, 2.5s, 5m)."),
}


def _hardening_options(f: Any) -> Any:
    for name, (envvar, metavar, help_text) in reversed(_LIMIT_OPTIONS.items()):
        f = click.option(f"--{name.replace('_', '-')}", name, envvar=envvar, metavar=metavar,
                         help=help_text)(f)
    f = click.option("--interpreter", "interpreter", multiple=True, metavar="PATH", help=(
        "Let a #! line naming PATH (absolute) have PATH's Python installation or virtualenv "
        "shown in the jail (repeatable); other interpreters outside the system directories "
        "are refused, except the Python ww runs on."))(f)
    return click.option("--strict", is_flag=True, envvar="WW_STRICT",
                        help="Kill the cell on its first system call the seccomp filter "
                             "denies, and exit 67 naming it (default: the call fails with "
                             "EPERM).")(f)


@click.command(
    context_settings={"allow_interspersed_args": False}
)
@click.option("--env", "env_entries", multiple=True, metavar="NAME[=VALUE]",
              help="Pass the host's NAME, or set NAME=VALUE, in the cell (repeatable). "
                   "WW_ENV adds a comma-separated list of the same.")
@click.option("--fd", "fd_flags", multiple=True, metavar="NAME=FDNUM",
              help="Hand the host's fd FDNUM to the cell at fd 4, 5, ... in flag order, "
                   "announced as WW_FD_<NAME> (repeatable).")
@click.option("--dir", "dir_flags", multiple=True, envvar="WW_DIR", metavar="NAME=PATH[:rw]",
              help="Bind the host directory PATH read-only (':rw': read-write) in the jail at "
                   "/run/ww/dir/NAME, announced as WW_DIR_<NAME> (repeatable; WW_DIR: "
                   "space-separated).  Not the root, the home or a directory above it, "
                   "/proc, /sys, /dev, /run, nor one holding $WW_HOME.")
@click.option("--with-console", is_flag=True, envvar="WW_WITH_CONSOLE",
              help="Grant the console capability (print lines on the host's stderr).")
@click.option("--with-ipfs", is_flag=True, envvar="WW_WITH_IPFS",
              help="Grant the IPFS capability.")
@click.option("--with-all", is_flag=True, envvar="WW_WITH_ALL",
              help="Grant every capability.")
@ipfs_option
@peer_option
@run_routing_options
@click.option("--jail", type=click.Choice(["bwrap", "none"]), default="bwrap",
              envvar="WW_JAIL", show_default=True,
              help="How to isolate the cell; 'none' runs it with the host's full authority.")
@_hardening_options
@_access_options
@p2p_options
@click.argument("executable")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(env_entries: tuple[str, ...], fd_flags: tuple[str, ...], with_console: bool,
        with_ipfs: bool, with_all: bool, ipfs_api: str | None, peers: list[str], jail: str,
        executable: str, args: tuple[str, ...], **more: Any) -> int:
    """Run EXECUTABLE [ARGS...] as a cell.

    The cell gets the host's stdin, stdout and stderr, the Cap'n Proto RPC socket on fd 3,
    the --fd grants from fd 4 on, the --dir directories at /run/ww/dir/NAME, and an
    environment made only of WW_ENV, --env, WW_FD_* and WW_DIR_*.  ww run exits with the
    cell's status (127 not found, 126 not executable, 128+n killed by signal n, 2 usage
    error, 1 host failure).  An EXECUTABLE of the form
    /ipfs/<cid>[/path] is fetched once into a verified, content-addressed cache and run
    from there.
    """
    from ww.app.run import run as run_cell

    ctx = click.get_current_context()
    root = ctx.find_root().params
    peers_source = ctx.get_parameter_source("peers")
    from_env = {name for name in ctx.params
                if ctx.get_parameter_source(name) is click.core.ParameterSource.ENVIRONMENT}
    return run_cell(options(
        ctx.params, debug=bool(root.get("debug")), json=bool(root.get("json")),
        peers_on_command_line=peers_source is click.core.ParameterSource.COMMANDLINE,
        from_env=from_env))


# A click parameter whose RunOptions field has another name.
_FIELD_OF_PARAMETER = {"interpreter": "interpreters", "ipfs_root": "ipfs_roots"}


def options(params: dict[str, Any], *, debug: bool, json: bool,
            peers_on_command_line: bool, from_env: set[str] | None = None) -> RunOptions:
    """The typed configuration of the parsed command line ``params`` and the environment
    (``from_env``: the parameters their variable set)."""
    fields: dict[str, Any] = {_FIELD_OF_PARAMETER.get(k, k): v for k, v in params.items()}
    for name, value in fields.items():
        if isinstance(value, list | tuple):
            fields[name] = tuple(value)
    env_fields = {_FIELD_OF_PARAMETER.get(k, k) for k in from_env or ()}
    return RunOptions(**fields, debug=debug, json=json,
                      peers_on_command_line=peers_on_command_line,
                      from_env=tuple(f.field for f in FLAGS if f.field in env_fields),
                      ww_env=os.environ.get("WW_ENV", ""),
                      search_path=os.environ.get("PATH", os.defpath))
