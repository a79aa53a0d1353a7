"""`ww run`, from a configuration to a cell's exit status: the composition of one run.

The command line (:mod:`ww.cli.run`, or the fast path of :mod:`ww.cli.entry`) parses flags and
variables into a :class:`~ww.app.options.RunOptions`; :func:`run` checks what is left to
check, builds the backends the run needs (and only those), and hands the cell to
:mod:`ww.host.supervisor`.  Every check that can fail runs before anything starts.
"""

from __future__ import annotations

import os

from ww.app import build
from ww.app.options import RunOptions, flag_source
from ww.core.errors import UsageError

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from ww.host.dirs import DirGrant


def _naming_the_variable(error: UsageError, options: RunOptions) -> UsageError:
    """``error`` about a flag's value (its message starts with the flag, as every check's
    does), naming the ``WW_*`` variable instead when that set the value."""
    message = str(error)
    for field in options.from_env:
        flag = flag_source(options, field)
        plain = flag.partition(" ")[0]
        if message.startswith(plain + " ") and flag != plain:
            return UsageError(flag + message[len(plain):])
    return error


def _own_files(options: RunOptions) -> list[tuple[str, str]]:
    """`ww`'s own files for this run, which no ``--dir`` grant may hold: its repository (the
    node key, the blocks), the audit file, the key files, the policy."""
    from ww.ipfs.repo import default_repo_path

    files = [("ww's repository ($WW_HOME)", str(default_repo_path()))]
    for what, path in (("the --audit file", options.audit), ("the --policy file", options.policy),
                       ("the --identity key", options.identity),
                       ("the --node-key key", options.node_key)):
        if path and path != "new":
            files.append((what, path))
    return files


def _own_code() -> list[tuple[str, str]]:
    """`ww`'s own code, which no ``:rw`` grant may hold or be inside of: a cell that may
    write it runs unjailed the next time `ww` runs.  The ``ww`` package, the standard and
    site libraries of the Python running it (`ww`'s dependencies; the user's too when
    Python imports from there), and the directory of the ``ww`` program and of that
    Python (a virtualenv's ``bin``).  Not every directory on ``sys.path``: that may be the
    current directory, below which ``:rw`` grants are ordinary."""
    import site
    import sys
    import sysconfig

    import ww

    libraries = sysconfig.get_paths()
    paths = [os.path.dirname(ww.__file__), os.path.dirname(sys.executable),
             *(libraries[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else ""
    if user in sys.path:
        paths.append(user)
    if sys.argv and os.path.isfile(sys.argv[0]):  # not "-c"
        paths.append(os.path.dirname(os.path.abspath(sys.argv[0])))
    return [("ww's own code", path) for path in dict.fromkeys(paths) if path]


def run(options: RunOptions) -> int:
    """Run the cell ``options`` describe; its exit status (see ww.host.supervisor)."""
    from ww.host import env as cell_env
    from ww.host import fds, supervisor

    try:
        interpreters = build.interpreters(options)  # handed on to sub-cells too
        cell_limits = build.limits(options)  # a bad value fails before any node is opened
        grants = fds.parse_fd_flags(list(options.fd_flags))
        dir_grants: list[DirGrant] = []
        if options.dir_flags:  # imported only then, as every `ww run` imports this
            from ww.host import dirs

            dir_grants = dirs.parse_dir_flags(list(options.dir_flags), _own_files(options),
                                              _own_code())
        from_variable = cell_env.parse_ww_env(options.ww_env)
        try:
            cell_env.build_env(from_variable, {}, {})
        except UsageError as e:
            raise UsageError(f"WW_ENV: {e}") from None
        entries = from_variable + list(options.env_entries)
        announced = fds.fd_env(grants)
        if dir_grants:
            announced.update(dirs.dir_env(dir_grants, jailed=options.jail != "none"))
        environment = cell_env.build_env(entries, os.environ, announced)
        access = build.access(options, build.capabilities(options))
    except UsageError as e:
        raise _naming_the_variable(e, options) from None
    capabilities = access.capabilities()
    build.refuse_peers_with_kubo(options.ipfs_api, options.peers, options.peers_on_command_line)
    build.refuse_routing_with_kubo(options.ipfs_api, options.bootstrap, options.routing)
    build.refuse_server_without_listen(options)
    executable = options.executable
    from_ipfs = executable.startswith("/ipfs/")
    uses_network = {"ipfs", "p2p"} & set(capabilities) or from_ipfs or options.listen \
        or options.join
    policy = build.dial_policy(options) if uses_network else None
    host_key = build.node_key(options)  # --node-key: checked even if no host is started
    node = build.p2p_node(options, capabilities, policy, host_key)  # if p2p is used
    dht = build.host_dht(options, node)  # the host's one DHT, for IPFS and p2p alike
    build.mdns(options, node)
    api = None
    if "ipfs" in capabilities or from_ipfs:
        # One host: the embedded node serves Bitswap on the p2p host, if there is one.
        api = build.open_ipfs(options.ipfs_api, check=True, peers=options.peers, host=node,
                              dial_policy=policy, identity=host_key,
                              routing=options.routing, bootstrap=options.bootstrap, dht=dht)
    build.reprovide(options, dht, api)
    if from_ipfs:
        from ww.host.fetch import fetch

        assert api is not None  # opened above for an /ipfs/ program
        executable = fetch(api, executable, cell_limits.fsize if cell_limits else None)
    audit = access.audit.enabled
    from ww.host.limits.subcells import SubcellBudget

    subcells = SubcellBudget(cell_limits)  # the tree's: shared by the supervisor and exec
    config = supervisor.RunConfig(
        command=executable,
        args=list(options.args),
        env=environment,
        grants=grants,
        dirs=dir_grants,
        capabilities=capabilities,
        capability_factories=build.capability_factories(
            capabilities, api, lambda: build.exec_setup(options, audit, subcells), node,
            policy, dht),
        jailed=options.jail != "none",
        search_path=options.search_path,
        interpreters=interpreters,
        debug=options.debug,
        strict=options.strict,
        limits=cell_limits,
        subcells=subcells,
        access=access,
        p2p=node,
    )
    return supervisor.run(config)
