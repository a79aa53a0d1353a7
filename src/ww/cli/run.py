"""`ww run`: start a program as a cell.  Parsing and exit codes only; the work is in ww.host."""

from __future__ import annotations

import os
from typing import Any

import click

from ww.cli._ipfs_option import ipfs_option

# Capabilities `ww run` can grant, in the order Session.granted lists them.
CAPABILITIES = ("console", "ipfs")

# Hardening: the seccomp mode and resource limits (see docs/security.md), option -> envvar.
_LIMIT_OPTIONS = {
    "memory": ("WW_MEMORY", "SIZE", "Stop the cell (exit 66) when its processes and its "
               "/cell and /tmp hold more than SIZE of memory (e.g. 256M, 2G)."),
    "cpu_time": ("WW_CPU_TIME", "SECONDS", "Stop the cell (exit 66) after SECONDS of CPU time, "
                 "all its processes together."),
    "pids": ("WW_PIDS", "N", "Stop the cell (exit 66) when it runs more than N processes and "
             "threads at once."),
    "fsize": ("WW_FSIZE", "SIZE", "Stop the cell (exit 66) when it writes a file larger "
              "than SIZE."),
    "timeout": ("WW_TIMEOUT", "SECONDS", "Stop the cell (exit 66) after SECONDS of wall-clock "
                "time (e.g. 30, 2.5s, 5m)."),
}


def _hardening_options(f: Any) -> Any:
    for name, (envvar, metavar, help_text) in reversed(_LIMIT_OPTIONS.items()):
        f = click.option(f"--{name.replace('_', '-')}", name, envvar=envvar, metavar=metavar,
                         help=help_text)(f)
    return click.option("--strict", is_flag=True, envvar="WW_STRICT",
                        help="Kill the cell on its first system call the seccomp filter "
                             "denies, and exit 67 naming it (default: the call fails with "
                             "EPERM).")(f)


def _limits(options: dict[str, Any]) -> Any:
    """The Limits the options ask for, or None; a bad value is a usage error naming its flag."""
    given = {k: v for k, v in options.items() if k in _LIMIT_OPTIONS and v is not None}
    if not given:
        return None
    from ww.host import limits

    parse = {"memory": limits.parse_size, "fsize": limits.parse_size,
             "cpu_time": limits.parse_seconds, "timeout": limits.parse_seconds,
             "pids": limits.parse_count}
    return limits.Limits(**{k: parse[k](v, "--" + k.replace("_", "-")) for k, v in given.items()})


@click.command(
    context_settings={"allow_interspersed_args": False}
)
@click.option("--env", "env_entries", multiple=True, metavar="NAME[=VALUE]",
              help="Pass the host's NAME, or set NAME=VALUE, in the cell (repeatable). "
                   "WW_ENV adds a comma-separated list of the same.")
@click.option("--fd", "fd_flags", multiple=True, metavar="NAME=FDNUM",
              help="Hand the host's fd FDNUM to the cell at fd 4, 5, ... in flag order, "
                   "announced as WW_FD_<NAME> (repeatable).")
@click.option("--with-console", is_flag=True, envvar="WW_WITH_CONSOLE",
              help="Grant the console capability (print lines on the host's stderr).")
@click.option("--with-ipfs", is_flag=True, envvar="WW_WITH_IPFS",
              help="Grant the IPFS capability.")
@click.option("--with-all", is_flag=True, envvar="WW_WITH_ALL",
              help="Grant every capability.")
@ipfs_option
@click.option("--jail", type=click.Choice(["bwrap", "none"]), default="bwrap",
              envvar="WW_JAIL", show_default=True,
              help="How to isolate the cell; 'none' runs it with the host's full authority.")
@_hardening_options
@click.argument("executable")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(env_entries: tuple[str, ...], fd_flags: tuple[str, ...], with_console: bool,
        with_ipfs: bool, with_all: bool, ipfs_api: str | None, jail: str, executable: str,
        args: tuple[str, ...], **hardening: Any) -> int:
    """Run EXECUTABLE [ARGS...] as a cell.

    The cell gets the host's stdin, stdout and stderr, the Cap'n Proto RPC socket on fd 3,
    the --fd grants from fd 4 on, and an environment made only of WW_ENV, --env and
    WW_FD_*.  ww run exits with the cell's status (127 not found, 126 not executable,
    128+n killed by signal n, 2 usage error, 1 host failure).  An EXECUTABLE of the form
    /ipfs/<cid>[/path] is fetched once into a verified, content-addressed cache and run
    from there.
    """
    from ww.host import env as cell_env
    from ww.host import fds, supervisor

    grants = fds.parse_fd_flags(list(fd_flags))
    entries = cell_env.parse_ww_env(os.environ.get("WW_ENV", "")) + list(env_entries)
    environment = cell_env.build_env(entries, os.environ, fds.fd_env(grants))
    wanted = {"console": with_console, "ipfs": with_ipfs}
    capabilities = [c for c in CAPABILITIES if with_all or wanted[c]]
    api = None
    if "ipfs" in capabilities or executable.startswith("/ipfs/"):
        from ww.ipfs.backend import open_backend

        api = open_backend(ipfs_api, check=True)
    if executable.startswith("/ipfs/"):
        from ww.host.fetch import fetch

        executable = fetch(api, executable)
    config = supervisor.RunConfig(
        command=executable,
        args=list(args),
        env=environment,
        grants=grants,
        capabilities=capabilities,
        capability_factories=_factories(capabilities, api),
        jailed=jail != "none",
        search_path=os.environ.get("PATH", os.defpath),
        debug=bool(click.get_current_context().find_root().params.get("debug")),
        strict=hardening["strict"],
        limits=_limits(hardening),
    )
    return supervisor.run(config)


def _factories(capabilities: list[str], api: Any) -> dict[str, Any]:
    """Builders for the granted capability servers; called only once a cell logs in."""

    def console() -> Any:
        from ww.caps.console import ConsoleServer

        return ConsoleServer()

    def ipfs() -> Any:
        from ww.caps.ipfs import IpfsServer

        return IpfsServer(api)

    made = {"console": console, "ipfs": ipfs}
    return {name: made[name] for name in capabilities}
