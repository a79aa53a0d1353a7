"""`ww run`'s configuration, typed: what its flags and ``WW_*`` variables asked for.

:class:`RunOptions` holds the values as the operator gave them (checked for form by the
command line, not yet acted on: a limit is still its text, a key file still a path).
:mod:`ww.app.run` turns them into a running cell; :func:`ww.app.argv.run_argv` turns them back
into a `ww run` command line, which is how a sub-cell's `ww run` is started.  Both, and the
command line's fast path (:mod:`ww.cli.entry`), read the flags from :data:`FLAGS`, so the flag
set is written here once (the click command in :mod:`ww.cli.run` adds the help texts; a test
holds the two together).
"""

# No `from __future__ import annotations` here: NamedTuple would compile each of its many
# annotations as a string, which costs every `ww run` a few tenths of a millisecond.
from ww.core.records import NamedTuple  # typing's, without importing typing
from ww.host.policy import DEFAULT_LOGIN_TIMEOUT  # (every `ww run` imports it anyway)

# How a flag takes its value: a switch, one value (the last one given wins), or a repeatable
# flag whose values accumulate.
SWITCH, ONE, MANY = "switch", "one", "many"


class Flag(NamedTuple):
    """One `ww run` option: its field of :class:`RunOptions`, its spelling, its variable."""

    field: str
    flag: str
    kind: str  # SWITCH, ONE or MANY
    envvar: str | None = None


# In the order a rendered command line names them (run_argv): the grant flags come in the
# order a sub-cell's audit record lists them.
FLAGS: tuple[Flag, ...] = (
    Flag("jail", "--jail", ONE, "WW_JAIL"),
    Flag("ipfs_api", "--ipfs", ONE, "WW_IPFS"),
    Flag("peers", "--peer", MANY, "WW_IPFS_PEERS"),
    Flag("bootstrap", "--bootstrap", MANY),
    Flag("routing", "--routing", ONE),
    Flag("reprovide_interval", "--reprovide-interval", ONE),
    Flag("mdns", "--mdns", SWITCH),
    Flag("allow_dial", "--allow-dial", MANY, "WW_ALLOW_DIAL"),
    Flag("listen", "--listen", MANY, "WW_LISTEN"),
    Flag("join", "--join", MANY),
    Flag("inbound", "--inbound", ONE),
    Flag("node_key", "--node-key", ONE, "WW_NODE_KEY"),
    Flag("strict", "--strict", SWITCH, "WW_STRICT"),
    Flag("interpreters", "--interpreter", MANY),
    Flag("memory", "--memory", ONE, "WW_MEMORY"),
    Flag("cpu_time", "--cpu-time", ONE, "WW_CPU_TIME"),
    Flag("pids", "--pids", ONE, "WW_PIDS"),
    Flag("fsize", "--fsize", ONE, "WW_FSIZE"),
    Flag("timeout", "--timeout", ONE, "WW_TIMEOUT"),
    Flag("with_all", "--with-all", SWITCH, "WW_WITH_ALL"),
    Flag("with_console", "--with-console", SWITCH, "WW_WITH_CONSOLE"),
    Flag("with_ipfs", "--with-ipfs", SWITCH, "WW_WITH_IPFS"),
    Flag("ipfs_read_only", "--ipfs-read-only", SWITCH, "WW_IPFS_READ_ONLY"),
    Flag("ipfs_roots", "--ipfs-root", MANY),
    Flag("with_exec", "--with-exec", SWITCH, "WW_WITH_EXEC"),
    Flag("exec_allow", "--exec-allow", MANY),
    Flag("with_p2p", "--with-p2p", SWITCH, "WW_WITH_P2P"),
    Flag("identity", "--identity", ONE, "WW_IDENTITY"),
    Flag("allow", "--allow", MANY),
    Flag("policy", "--policy", ONE, "WW_POLICY"),
    Flag("login_timeout", "--login-timeout", ONE, "WW_LOGIN_TIMEOUT"),
    Flag("audit", "--audit", ONE, "WW_AUDIT"),
    Flag("fd_flags", "--fd", MANY),
    Flag("dir_flags", "--dir", MANY, "WW_DIR"),
    Flag("env_entries", "--env", MANY),
)

# `ww`'s own options, given before the command: `ww --json run ...`.
GLOBAL_FLAGS: tuple[Flag, ...] = (
    Flag("json", "--json", SWITCH, "WW_JSON"),
    Flag("debug", "--debug", SWITCH, "WW_DEBUG"),
)

DEFAULT_JAIL = "bwrap"


class RunOptions(NamedTuple):
    """Everything one `ww run` was asked for.

    (A NamedTuple rather than a frozen dataclass: it is made on every `ww run`, and a frozen
    dataclass of this many fields costs start-up milliseconds to define.)
    """

    executable: str
    args: tuple[str, ...] = ()
    # The cell's environment, fds and directories: WW_ENV (comma-separated, as given),
    # --env, --fd, --dir.
    ww_env: str = ""
    env_entries: tuple[str, ...] = ()
    fd_flags: tuple[str, ...] = ()
    dir_flags: tuple[str, ...] = ()  # --dir NAME=PATH[:ro|:rw] (WW_DIR: space-separated)
    # Grants, and their narrowing.
    with_console: bool = False
    with_ipfs: bool = False
    with_exec: bool = False
    with_p2p: bool = False
    with_all: bool = False
    ipfs_read_only: bool = False
    ipfs_roots: tuple[str, ...] = ()
    exec_allow: tuple[str, ...] = ()
    # Who may log in: identity, --allow, the policy file, the login deadline, the audit file.
    identity: str | None = None
    allow: tuple[str, ...] = ()
    policy: str | None = None
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    audit: str | None = None
    # The IPFS backend: a kubo node's RPC address (else the embedded node) and its peers.
    ipfs_api: str | None = None
    peers: tuple[str, ...] = ()
    peers_on_command_line: bool = False  # not from WW_IPFS_PEERS, which --ipfs ignores
    # Content routing: the DHT peers to start from, and dht|dhtserver|none (None: dht if
    # bootstrap).
    bootstrap: tuple[str, ...] = ()
    routing: str | None = None
    reprovide_interval: str | None = None  # a duration; None: kubo's 22 h, "0": never
    mdns: bool = False  # LAN discovery with multicast DNS, as kubo's
    # The libp2p host: where it listens, whom it joins, its key (a file, "new", or None for
    # the node key in $WW_HOME).
    listen: tuple[str, ...] = ()
    join: tuple[str, ...] = ()
    inbound: str | None = None  # full|calls: what inbound /noise connections carry (None: full)
    node_key: str | None = None
    allow_dial: tuple[str, ...] = ()
    # The jail and the limits, as given (e.g. "256M"): checked when the run starts.
    jail: str = DEFAULT_JAIL
    strict: bool = False
    interpreters: tuple[str, ...] = ()
    memory: str | None = None
    cpu_time: str | None = None
    pids: str | None = None
    fsize: str | None = None
    timeout: str | None = None
    # `ww`'s own options, and where the cell's command is looked up.
    debug: bool = False
    json: bool = False
    search_path: str | None = None
    # The fields of FLAGS whose value came from their WW_* variable (in FLAGS order), so
    # that an error about such a value names the variable.
    from_env: tuple[str, ...] = ()


def flag_source(options: RunOptions, field: str) -> str:
    """The flag of ``field`` as an error about its value names it: ``--memory``, or
    ``--memory (from WW_MEMORY)`` when the variable set it."""
    flag = next(f for f in FLAGS if f.field == field)
    if field in options.from_env and flag.envvar:
        return f"{flag.flag} (from {flag.envvar})"
    return flag.flag
