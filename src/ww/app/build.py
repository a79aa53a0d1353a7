"""What a configuration builds: the IPFS backend, the libp2p host, the dial policy, the login
policy, the limits, and the capability servers the host's RPC server hands out.

Each builder imports what it builds only when called, so that a `ww run` that needs none of
them (``ww run /bin/true``) does not pay for pycapnp, cryptography or libp2p.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ww.app.options import RunOptions, flag_source

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    import asyncio
    from pathlib import Path

    from ww.caps.exec import ExecSetup
    from ww.caps.ipfs import IpfsCell
    from ww.core.identity import Identity
    from ww.host.denied import Caller
    from ww.host.limits import Limits
    from ww.host.limits.subcells import SubcellBudget
    from ww.host.policy import Access, GrantSet
    from ww.ipfs.api import CoreAPI
    from ww.ipfs.net import NewRouter, Router
    from ww.ipfs.node import EmbeddedNode
    from ww.p2p.dial_policy import DialPolicy
    from ww.p2p.host import Node

# A capability server's builder: called once a cell logs in, with the login's grants, its
# caller (peer id and audit trail) and the servers already built for it (ww.host.rpc.Grants).
CapabilityFactory = Callable[["GrantSet", "Caller", dict[str, object]], object]


def open_ipfs(api: str | None = None, *, check: bool = False, peers: Iterable[str] = (),
              host: Node | None = None, dial_policy: DialPolicy | None = None,
              identity: Identity | None = None, routing: str | None = None,
              bootstrap: Iterable[str] = (), dht: Router | None = None) -> CoreAPI:
    """The IPFS backend: the embedded node in ``$WW_HOME``, or the kubo node at ``api``.

    The embedded node serves Bitswap on ``host`` if there is one; else, if a block is
    missing, it starts a quiet libp2p host of its own under ``dial_policy`` (ww.p2p builds
    it: the ipfs layer does not import p2p), with the key ``identity`` (``--node-key``;
    None: the node key in ``$WW_HOME``).  ``routing``: ``dht`` finds providers of a missing
    block through kubo's dual (LAN and WAN) DHT from the ``bootstrap`` peers
    (:mod:`ww.p2p.routing`), ``none`` asks only the peers connected; None: ``dht`` if
    ``bootstrap`` names peers.
    ``dht``: the router already made on ``host`` (:func:`host_dht`), used instead."""
    from ww.ipfs.backend import open_backend
    from ww.p2p import host_for_ipfs

    return open_backend(api, check=check, peers=peers, host=host,
                        new_host=host_for_ipfs(dial_policy), identity=identity,
                        router=(lambda _host: dht) if dht is not None
                        else router(routing, bootstrap))


def router(routing: str | None, bootstrap: Iterable[str]) -> NewRouter | None:
    """How the embedded node finds providers (``--routing``, ``--bootstrap``)."""
    bootstrap = list(bootstrap)
    if routing == "none" or (routing is None and not bootstrap):
        return None
    from ww.p2p.routing import new_router

    return new_router(bootstrap)  # type: ignore[no-any-return]


def host_dht(options: RunOptions, node: Node | None) -> Router | None:
    """The DHT of the run's host (``--routing``), made before the host starts: a client
    (``dht``; the default when ``--bootstrap`` is given) or a server (``dhtserver``: it answers
    other peers' queries and keeps their provider records: on the LAN DHT always, on the WAN
    DHT if the host listens on a public address); kubo's dual DHT
    (:class:`ww.p2p.routing.DualDht`).  None without a host or with ``--routing none``."""
    routing = options.routing
    if node is None or routing == "none" or (routing is None and not options.bootstrap):
        return None
    from ww.p2p.routing import DualDht

    return DualDht(node, options.bootstrap, server=routing == "dhtserver")


def mdns(options: RunOptions, node: Node | None) -> None:
    """``--mdns``: announce the host on the LAN and dial who announces itself, once the host
    has started; without a host, a usage error rather than silently unused."""
    if not options.mdns:
        return
    if node is None:
        from ww.core.errors import UsageError

        raise UsageError("--mdns announces the libp2p host on the local network: it needs a "
                         "host (--listen, --join or --with-p2p)")
    from ww.p2p.mdns import Mdns

    discovery = Mdns(node)

    async def start() -> None:
        discovery.start()

    node.when_started(start)


def reprovide(options: RunOptions, dht: Router | None, api: CoreAPI | None,
              at_start: bool = False,
              needs: str = "--with-ipfs, --listen and --bootstrap or --routing dht|dhtserver"
              ) -> None:
    """Announce what the embedded node pins through the host's DHT on a schedule:
    ``--reprovide-interval`` (default kubo's 22 h; ``0``: never).  ``at_start`` (`ww
    daemon`'s): the first round as soon as the host has started, even with ``0``.  A bad
    value, or one given where nothing would be announced (no DHT on a host, or no embedded
    node: it ``needs`` ...), is a usage error rather than silently unused."""
    text = options.reprovide_interval
    interval: float | None = None
    if text is not None and text.strip() != "0":
        from ww.host.limits.flags import parse_seconds

        interval = parse_seconds(text, "--reprovide-interval")
    pins = getattr(api, "pins", None) if not options.ipfs_api else None
    if dht is None or pins is None:
        if text is not None:
            from ww.core.errors import UsageError

            raise UsageError("--reprovide-interval announces what the embedded IPFS node pins "
                             f"through the host's DHT: it needs {needs}")
        return
    if text is None:
        from ww.p2p.routing import REPROVIDE_INTERVAL as interval
    if at_start:
        dht.reprovide(pins, interval, first=0.0)  # type: ignore[attr-defined]
    elif interval is not None:
        dht.reprovide(pins, interval)  # type: ignore[attr-defined]


def open_embedded(repo: Path | None = None) -> EmbeddedNode:
    """The embedded node on the repository ``repo`` (default: ``$WW_HOME``)."""
    from ww.ipfs.node import EmbeddedNode

    return EmbeddedNode(repo)


def node_identity() -> Identity:
    """This node's key in ``$WW_HOME`` (created on first use): its libp2p identity."""
    from ww.core.identity import load_or_create
    from ww.ipfs.repo import default_repo_path

    return load_or_create(default_repo_path())


def node_key(options: RunOptions) -> Identity | None:
    """The libp2p identity ``--node-key`` asks for (a key file, or ``new``: a fresh key), or
    None: the node key in ``$WW_HOME``.  A key file that cannot be read or is not a key is a
    usage error naming the flag, before anything starts."""
    if options.node_key is None:
        return None
    from ww.core.identity import Identity, key_from_flag

    return Identity.from_private_key(key_from_flag(flag_source(options, "node_key"),
                                                   options.node_key))


def refuse_peers_with_kubo(api: str | None, peers: Iterable[str], on_command_line: bool) -> None:
    """``--peer`` names peers for the embedded node; a kubo node (``--ipfs``) dials its own.

    Given on the command line with ``--ipfs`` it is a usage error; ``WW_IPFS_PEERS`` in the
    environment is then simply not used."""
    if api and list(peers) and on_command_line:
        from ww.core.errors import UsageError

        raise UsageError("--peer is for the embedded node; with --ipfs, connect the kubo "
                         "node to its peers itself (ipfs swarm connect)")


def refuse_routing_with_kubo(api: str | None, bootstrap: Iterable[str],
                             routing: str | None) -> None:
    """``--bootstrap`` and ``--routing dht`` are the embedded node's; a kubo node routes on
    its own: with ``--ipfs`` they are a usage error rather than silently unused."""
    if api and (list(bootstrap) or routing in ("dht", "dhtserver")):
        from ww.core.errors import UsageError

        raise UsageError("--bootstrap and --routing are for the embedded node; a kubo node "
                         "(--ipfs) finds providers through its own routing")


def refuse_server_without_listen(options: RunOptions) -> None:
    """``--routing dhtserver`` answers other peers: a host that listens nowhere cannot."""
    if options.routing == "dhtserver" and not options.listen:
        from ww.core.errors import UsageError

        raise UsageError("--routing dhtserver answers other peers' DHT queries: it needs "
                         "--listen (an address they can reach)")


def dial_policy(options: RunOptions) -> DialPolicy:
    """The dial policy of this run's cells and hosts (ww.p2p.dial_policy): handed to the
    libp2p host and the IPFS backend's own host, and to the servers that dial for a cell
    (:func:`capability_factories`)."""
    from ww.p2p.dial_policy import DialPolicy

    return DialPolicy.from_flags(options.allow_dial,
                                 [*options.join, *options.peers, *options.bootstrap])


def p2p_node(options: RunOptions, capabilities: Iterable[str],
             policy: DialPolicy | None = None, identity: Identity | None = None,
             **node_options: object) -> Node | None:
    """The libp2p host this run needs (not started yet), or None.

    A host runs when the cell may be granted p2p, or when ``--listen`` or ``--join`` asks
    for one; its identity is ``identity`` (:func:`node_key`), else the node key in
    $WW_HOME.  It is the run's only host: the embedded IPFS node, if the run uses one, serves
    Bitswap on it (``--peer`` alone starts none here; the embedded node starts its own only
    if a block is missing).  ``node_options``: more of :class:`ww.p2p.host.Node`'s options
    (`ww daemon`'s: no `/ww/0.1.0`, its own log).
    """
    listen, join = list(options.listen), list(options.join)
    if options.inbound == "calls" and "p2p" not in capabilities:
        from ww.core.errors import UsageError

        raise UsageError("--inbound calls is how remote peers reach what the cell exports: "
                         "it needs the p2p capability (--with-p2p)")
    if "p2p" not in capabilities and not listen and not join:
        return None
    from ww.core.identity import IdentityError
    from ww.p2p import P2PError
    from ww.p2p.host import Node

    if identity is None:
        try:
            identity = node_identity()
        except (IdentityError, OSError) as e:
            raise P2PError(f"p2p: cannot load the node key: {e}") from None
    return Node(identity, listen or None, join, dial_policy=policy,
                inbound_calls=options.inbound == "calls", **node_options)  # type: ignore[arg-type]


def limits(options: RunOptions) -> Limits | None:
    """The Limits the options ask for, or None; a bad value is a usage error naming its flag."""
    given = {name: getattr(options, name) for name in ("memory", "cpu_time", "pids", "fsize",
                                                        "timeout")}
    given = {name: value for name, value in given.items() if value is not None}
    if not given:
        return None
    from ww.host.limits import Limits, flags
    from ww.host.limits.cgroup import check_cgroups

    parse: dict[str, Callable[[str, str], float]] = {
        "memory": flags.parse_size, "fsize": flags.parse_size,
        "cpu_time": flags.parse_seconds, "timeout": flags.parse_seconds,
        "pids": flags.parse_count}
    wanted = Limits(**{k: parse[k](v, "--" + k.replace("_", "-"))  # type: ignore[arg-type]
                       for k, v in given.items()})
    check_cgroups(wanted)  # no memory or cpu cgroup here: refused before any start
    return wanted


def interpreters(options: RunOptions) -> list[str]:
    """The checked ``--interpreter`` paths."""
    if not options.interpreters:
        return []
    from ww.host.executable import check_interpreters

    return check_interpreters(options.interpreters)


def capabilities(options: RunOptions) -> list[str]:
    """The capabilities the ``--with-*`` flags grant, in Session.granted order."""
    from ww.host.policy import CAPABILITIES

    wanted = {"console": options.with_console, "ipfs": options.with_ipfs,
              "exec": options.with_exec, "p2p": options.with_p2p}
    return [c for c in CAPABILITIES if options.with_all or wanted[c]]


def access(options: RunOptions, granted: list[str]) -> Access:
    """The login policy from the --with-*, attenuation, identity and policy flags."""
    from ww.host import policy_config as policy
    from ww.host.audit import open_audit

    flags = policy.flag_grants(granted, options.ipfs_read_only, options.ipfs_roots,
                               options.exec_allow)
    narrowing = [flag_source(options, field) for field, given in (
        ("ipfs_read_only", options.ipfs_read_only), ("ipfs_roots", options.ipfs_roots)) if given]
    return policy.build_access(flags, options.identity, options.allow, options.policy,
                               options.login_timeout, open_audit(options.json, options.audit),
                               narrowing)


def exec_setup(options: RunOptions, audit: bool, subcells: SubcellBudget) -> ExecSetup:
    """How sub-cells are started: with this run's global, jail, IPFS, limit and dial flags,
    drawing on the tree's budget ``subcells`` (which the supervisor shares with them)."""
    from ww.app.argv import SubcellCommand
    from ww.caps.exec import ExecSetup

    return ExecSetup(SubcellCommand(options), audit=audit, subcells=subcells)


def capability_factories(granted: list[str], api: CoreAPI | None,
                         exec_setup: Callable[[], ExecSetup],
                         node: Node | None = None,
                         policy: DialPolicy | None = None,
                         dht: Router | None = None) -> dict[str, CapabilityFactory]:
    """Builders for the granted capability servers; called only once a cell logs in.

    The IPFS and p2p servers hold the cell's dials to ``policy`` (None: public addresses
    only, :data:`ww.p2p.dial_policy.STRICT`)."""

    def console(grants: GrantSet, caller: Caller, held: dict[str, object]) -> object:
        from ww.caps.console import ConsoleServer

        return ConsoleServer()

    cell: list[IpfsCell] = []  # one for the cell, whatever identities it logs in with

    def ipfs(grants: GrantSet, caller: Caller, held: dict[str, object]) -> object:
        from ww.caps.ipfs import IpfsCell, IpfsServer
        from ww.caps.ipfs_scope import IpfsScope
        from ww.p2p.dial_policy import STRICT

        # the host asks only for what a login was granted, and opens a backend for ipfs
        assert grants.ipfs is not None and api is not None
        if not cell:
            cell.append(IpfsCell())
        narrowed = grants.ipfs.read_only or grants.ipfs.roots
        scope = IpfsScope(api, grants.ipfs.read_only, grants.ipfs.roots,
                          walks=cell[0].walks) if narrowed else None
        return IpfsServer(api, scope, caller, cell=cell[0], dial_policy=policy or STRICT)

    def exec_(grants: GrantSet, caller: Caller, held: dict[str, object]) -> object:
        from ww.caps.exec import ExecutorServer

        return ExecutorServer(exec_setup(), grants, caller, held)

    lookups: list[asyncio.Semaphore] = []  # the cell's DHT lookups, whatever its identities

    def p2p(grants: GrantSet, caller: Caller, held: dict[str, object]) -> object:
        from ww.caps.p2p import P2PServer, lookup_slots
        from ww.p2p.dial_policy import STRICT

        assert node is not None  # a run that may grant p2p builds a host (p2p_node)
        if not lookups:
            lookups.append(lookup_slots())
        return P2PServer(node, caller, policy or STRICT, dht, lookups[0])

    made: dict[str, CapabilityFactory] = {"console": console, "ipfs": ipfs, "exec": exec_,
                                          "p2p": p2p}
    return {name: made[name] for name in granted}
