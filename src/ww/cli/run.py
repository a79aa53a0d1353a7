"""`ww run`: start a program as a cell.  Parsing and exit codes only; the work is in ww.host."""

from __future__ import annotations

import os
from typing import Any

import click

# Capabilities `ww run` can grant, in the order Session.granted lists them.
CAPABILITIES = ("console", "ipfs")


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
@click.option("--ipfs", "ipfs_api", envvar="WW_IPFS", metavar="ADDR",
              help="Use the kubo node whose RPC API is at ADDR (a multiaddr such as "
                   "/ip4/127.0.0.1/tcp/5001/http, or an http:// URL) instead of the embedded "
                   "node in $WW_HOME.")
@click.option("--jail", type=click.Choice(["bwrap", "none"]), default="bwrap",
              envvar="WW_JAIL", show_default=True,
              help="How to isolate the cell; 'none' runs it with the host's full authority.")
@click.argument("executable")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(env_entries: tuple[str, ...], fd_flags: tuple[str, ...], with_console: bool,
        with_ipfs: bool, with_all: bool, ipfs_api: str | None, jail: str, executable: str,
        args: tuple[str, ...]) -> int:
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
