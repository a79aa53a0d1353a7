"""`ww run`: start a program as a cell.  Parsing and exit codes only; the work is in ww.host."""

from __future__ import annotations

import os
from typing import Any

import click

from ww.cli._ipfs_option import ipfs_option, peer_option, refuse_peers_with_kubo
from ww.cli._p2p_options import P2P_OPTIONS, dial_policy, p2p_node, p2p_options
from ww.host.policy import CAPABILITIES  # what `ww run` can grant, in Session.granted order

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


def _limits(options: dict[str, Any]) -> Any:
    """The Limits the options ask for, or None; a bad value is a usage error naming its flag."""
    given = {k: v for k, v in options.items() if k in _LIMIT_OPTIONS and v is not None}
    if not given:
        return None
    from ww.host.limits import Limits, flags
    from ww.host.limits.cgroup import check_cgroups

    parse = {"memory": flags.parse_size, "fsize": flags.parse_size,
             "cpu_time": flags.parse_seconds, "timeout": flags.parse_seconds,
             "pids": flags.parse_count}
    wanted = Limits(**{k: parse[k](v, "--" + k.replace("_", "-"))
                       for k, v in given.items()})
    check_cgroups(wanted)  # no memory or cpu cgroup here: refused before anything starts
    return wanted


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
@peer_option
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
        executable: str, args: tuple[str, ...], **hardening: Any) -> int:
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
    from ww.host.limits.subcells import SubcellBudget

    access_options = {name: hardening.pop(name) for name in _ACCESS_OPTIONS}
    p2p_flags = {name: hardening.pop(name) for name in P2P_OPTIONS}
    interpreters = _interpreters(hardening["interpreter"])  # handed on to sub-cells too
    cell_limits = _limits(hardening)  # a bad value fails before any node is opened
    grants = fds.parse_fd_flags(list(fd_flags))
    entries = cell_env.parse_ww_env(os.environ.get("WW_ENV", "")) + list(env_entries)
    environment = cell_env.build_env(entries, os.environ, fds.fd_env(grants))
    wanted = {"console": with_console, "ipfs": with_ipfs, "exec": access_options["with_exec"],
              "p2p": p2p_flags["with_p2p"]}
    root_params = click.get_current_context().find_root().params
    access = _access([c for c in CAPABILITIES if with_all or wanted.get(c)], access_options,
                     json_audit=bool(root_params.get("json")))
    capabilities = access.capabilities()
    refuse_peers_with_kubo(ipfs_api)
    uses_network = {"ipfs", "p2p"} & set(capabilities) or executable.startswith("/ipfs/") \
        or p2p_flags["listen"] or p2p_flags["join"]
    policy = dial_policy(p2p_flags, peers) if uses_network else None
    node = p2p_node(p2p_flags, capabilities, policy)  # a libp2p host, if p2p is used at all
    api = None
    if "ipfs" in capabilities or executable.startswith("/ipfs/"):
        from ww.ipfs.backend import open_backend
        from ww.p2p import host_for_ipfs

        # One host: the embedded node serves Bitswap on the p2p host, if there is one.
        api = open_backend(ipfs_api, check=True, peers=peers, host=node,
                           new_host=host_for_ipfs(policy))
    if executable.startswith("/ipfs/"):
        from ww.host.fetch import fetch

        executable = fetch(api, executable, cell_limits.fsize if cell_limits else None)
    subcells = SubcellBudget(cell_limits)  # the tree's: shared by the supervisor and exec
    config = supervisor.RunConfig(
        command=executable,
        args=list(args),
        env=environment,
        grants=grants,
        capabilities=capabilities,
        capability_factories=_factories(capabilities, api, lambda: _exec_setup(
            root_params, jail, ipfs_api, hardening, access.audit.enabled,
            p2p_flags["allow_dial"], subcells), p2p_node=node),
        jailed=jail != "none",
        search_path=os.environ.get("PATH", os.defpath),
        interpreters=interpreters,
        debug=bool(click.get_current_context().find_root().params.get("debug")),
        strict=hardening["strict"],
        limits=cell_limits,
        subcells=subcells,
        access=access,
        p2p=node,
    )
    return supervisor.run(config)


def _interpreters(paths: tuple[str, ...]) -> list[str]:
    if not paths:
        return []
    from ww.host.executable import check_interpreters

    return check_interpreters(paths)


def _access(capabilities: list[str], options: dict[str, Any], json_audit: bool) -> Any:
    """The login policy from the --with-*, attenuation, identity and policy flags."""
    from ww.host import policy_config as policy
    from ww.host.audit import open_audit

    flags = policy.flag_grants(capabilities, options["ipfs_read_only"], options["ipfs_root"],
                               options["exec_allow"])
    narrowing = [flag for flag, given in (("--ipfs-read-only", options["ipfs_read_only"]),
                                          ("--ipfs-root", options["ipfs_root"])) if given]
    return policy.build_access(flags, options["identity"], options["allow"], options["policy"],
                               options["login_timeout"],
                               open_audit(json_audit, options["audit"]), narrowing)


def _exec_setup(root_params: dict[str, Any], jail: str, ipfs_api: str | None,
                hardening: dict[str, Any], audit: bool, allow_dial: list[str],
                subcells: Any = None) -> Any:
    """How sub-cells are started: this run's global, jail, IPFS, limit and dial flags."""
    from ww.caps.exec import ExecSetup

    global_flags = [f"--{name}" for name in ("json", "debug") if root_params.get(name)]
    run_flags = ["--jail", jail] + (["--ipfs", ipfs_api] if ipfs_api else [])
    for cidr in allow_dial:  # the operator's ranges hold for sub-cells too
        run_flags += ["--allow-dial", cidr]
    for name, value in hardening.items():  # every hardening option, as given
        flag = "--" + name.replace("_", "-")
        if value is True:
            run_flags.append(flag)
        elif isinstance(value, tuple):  # a repeatable flag: --interpreter
            for item in value:
                run_flags += [flag, str(item)]
        elif value not in (None, False):
            run_flags += [flag, str(value)]
    setup = ExecSetup(global_flags=global_flags, run_flags=run_flags, audit=audit)
    if subcells is not None:  # the run's budget, shared with its supervisor
        setup.subcells = subcells
    return setup


def _factories(capabilities: list[str], api: Any, exec_setup: Any,
               p2p_node: Any = None) -> dict[str, Any]:
    """Builders for the granted capability servers; called only once a cell logs in.

    Each takes the login's grants, its caller (peer id and audit trail) and the servers
    already built for it (see ww.host.rpc.Grants).
    """

    def console(grants: Any, caller: Any, held: Any) -> Any:
        from ww.caps.console import ConsoleServer

        return ConsoleServer()

    def ipfs(grants: Any, caller: Any, held: Any) -> Any:
        from ww.caps.ipfs import IpfsServer
        from ww.caps.ipfs_scope import IpfsScope

        narrowed = grants.ipfs.read_only or grants.ipfs.roots
        scope = IpfsScope(api, grants.ipfs.read_only, grants.ipfs.roots) if narrowed else None
        return IpfsServer(api, scope, caller)

    def exec_(grants: Any, caller: Any, held: Any) -> Any:
        from ww.caps.exec import ExecutorServer

        return ExecutorServer(exec_setup(), grants, caller, held)

    def p2p(grants: Any, caller: Any, held: Any) -> Any:
        from ww.caps.p2p import P2PServer

        return P2PServer(p2p_node, caller)

    made = {"console": console, "ipfs": ipfs, "exec": exec_, "p2p": p2p}
    return {name: made[name] for name in capabilities}
