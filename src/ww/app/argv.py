"""A :class:`RunOptions` back as a `ww run` command line: how a sub-cell's `ww run` starts.

A sub-cell is a real `ww run` of its own, so it is jailed, limited and granted by the same
code as any cell.  Its command line is rendered from a configuration here, from the same
:data:`ww.app.options.FLAGS` the command line is parsed with: the parent's jail, IPFS node,
dial ranges, node key (``--node-key``) and limits, the grants the parent hands down, and
the environment entries it asked for (as ``--env NAME=VALUE``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ww.app.options import FLAGS, GLOBAL_FLAGS, MANY, SWITCH, RunOptions
from ww.host.policy import GrantSet


def ww_command() -> list[str]:
    """How to start `ww`: the console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("ww")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ww.cli.entry import main; main(sys.argv[1:])"]


def option_flags(options: RunOptions) -> list[str]:
    """The `ww run` flags that ask for ``options`` (its defaults are left out)."""
    defaults = RunOptions(executable="")
    argv: list[str] = []
    for flag in FLAGS:
        value = getattr(options, flag.field)
        if value == getattr(defaults, flag.field):
            continue
        if flag.kind == SWITCH:
            argv.append(flag.flag)
        elif flag.kind == MANY:
            for item in value:
                argv += [flag.flag, str(item)]
        else:
            argv += [flag.flag, str(value)]
    return argv


def run_argv(options: RunOptions) -> list[str]:
    """``[--json] [--debug] run FLAGS... -- EXECUTABLE ARGS...``: `ww`'s arguments."""
    global_flags = [flag.flag for flag in GLOBAL_FLAGS if getattr(options, flag.field)]
    return [*global_flags, "run", *option_flags(options), "--", options.executable,
            *options.args]


def with_grants(options: RunOptions, grants: GrantSet) -> RunOptions:
    """``options`` granting exactly ``grants`` (and nothing it granted before)."""
    return options._replace(
        with_all=False, with_p2p=grants.p2p, with_console=grants.console,
        with_ipfs=grants.ipfs is not None,
        ipfs_read_only=grants.ipfs is not None and grants.ipfs.read_only,
        ipfs_roots=tuple(grants.ipfs.roots) if grants.ipfs is not None else (),
        with_exec=grants.exec is not None,
        exec_allow=tuple(grants.exec.allow) if grants.exec is not None else ())


def grant_flags(grants: GrantSet) -> list[str]:
    """The `ww run` flags that grant exactly ``grants``."""
    return option_flags(with_grants(RunOptions(executable=""), grants))


class SubcellCommand:
    """How this host starts a sub-cell's `ww run` (``ww.caps.exec.ExecSetup.command``)."""

    def __init__(self, parent: RunOptions, ww: list[str] | None = None) -> None:
        # What every sub-cell shares with its parent: `ww`'s own options, the jail, the IPFS
        # node, the dial ranges, the node key and the limits; nothing else of the parent's
        # command line.  The node key as the parent was given it: a file (made absolute, as
        # the sub-cell's `ww run` reads it) is the same peer; `new` is a fresh key for each
        # sub-cell too, so that none takes $WW_HOME's, which the operator chose not to use.
        node_key = parent.node_key
        if node_key is not None and node_key != "new":
            node_key = os.path.abspath(node_key)
        self.base = RunOptions(
            executable="", debug=parent.debug, json=parent.json, jail=parent.jail,
            ipfs_api=parent.ipfs_api, allow_dial=parent.allow_dial, node_key=node_key,
            strict=parent.strict, interpreters=parent.interpreters, memory=parent.memory,
            cpu_time=parent.cpu_time, pids=parent.pids, fsize=parent.fsize,
            timeout=parent.timeout)
        self.ww = ww_command() if ww is None else ww

    def argv(self, grants: GrantSet, env: list[str], program: str, args: list[str]) -> list[str]:
        """The command line of a sub-cell running ``program`` with exactly ``grants``."""
        child = with_grants(self.base, grants)._replace(
            env_entries=tuple(env), executable=program, args=tuple(args))
        return [*self.ww, *run_argv(child)]

    def grant_flags(self, grants: GrantSet) -> list[str]:
        """The flags of :meth:`argv` that carry ``grants`` (for the audit trail)."""
        return grant_flags(grants)
