"""`ww run`'s p2p options: ``--with-p2p``, ``--listen``, ``--join``, ``--allow-dial``
(docs/p2p.md).

Parsing only.  libp2p (and trio) are imported only when one of them is used, so that
`ww run` without them starts as fast as before.
"""

from __future__ import annotations

from typing import Any

import click

# option name -> the flag's settings; the values reach `run` through its **kwargs.
P2P_OPTIONS = ("with_p2p", "listen", "join", "allow_dial")


def _check(checker_name: str) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                 ) -> list[str]:
        if not values:
            return []
        from ww import p2p

        checker = getattr(p2p, checker_name)
        try:
            return [checker(value) for value in values]
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return callback


def _check_ranges(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                  ) -> list[str]:
    if not values:
        return []
    from ww.p2p.dial_policy import parse_range

    try:
        return [str(parse_range(value)) for value in values]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def p2p_options(f: Any) -> Any:
    f = click.option(
        "--allow-dial", "allow_dial", multiple=True, envvar="WW_ALLOW_DIAL", metavar="CIDR",
        callback=_check_ranges,
        help="Let cells make the host dial addresses in CIDR (repeatable; WW_ALLOW_DIAL: "
             "space-separated), e.g. 127.0.0.0/8.  Without it a cell's IPFS connect or p2p "
             "dial reaches public addresses only, and the --join and --peer addresses.")(f)
    f = click.option(
        "--join", "join", multiple=True, metavar="MULTIADDR/p2p/PEERID",
        callback=_check("check_join_addr"),
        help="Connect to this peer at start (repeatable); its cell can then be dialed by "
             "peer id alone.")(f)
    f = click.option(
        "--listen", "listen", multiple=True, envvar="WW_LISTEN", metavar="MULTIADDR",
        callback=_check("check_listen_addr"),
        help="Listen for libp2p peers on MULTIADDR, /ip4|ip6/<address>/tcp/<port> "
             "(repeatable; WW_LISTEN: space-separated).  Default with --with-p2p: "
             "/ip4/127.0.0.1/tcp/2020, loopback only.")(f)
    return click.option(
        "--with-p2p", "with_p2p", is_flag=True, envvar="WW_WITH_P2P",
        help="Grant the p2p capability: the cell exports a capability to remote peers on "
             "/ww/0.1.0 and dials other cells.")(f)


def dial_policy(options: dict[str, Any], peers: list[str]) -> Any:
    """The dial policy of this run's cells and hosts, now theirs (ww.p2p.dial_policy)."""
    from ww.p2p.dial_policy import DialPolicy, set_for_cells

    policy = DialPolicy.from_flags(options["allow_dial"], [*options["join"], *peers])
    set_for_cells(policy)
    return policy


def p2p_node(options: dict[str, Any], capabilities: list[str], policy: Any = None) -> Any:
    """The libp2p host this run needs (not started yet), or None.

    A host runs when the cell may be granted p2p, or when ``--listen`` or ``--join`` asks
    for one; its identity is the node key in $WW_HOME.  It is the run's only host: the
    embedded IPFS node, if the run uses one, serves Bitswap on it (``--peer`` alone starts
    none here; the embedded node starts its own only if a block is missing).
    """
    listen, join = list(options["listen"]), list(options["join"])
    if "p2p" not in capabilities and not listen and not join:
        return None
    from ww.core.identity import IdentityError, load_or_create
    from ww.ipfs.repo import default_repo_path
    from ww.p2p import P2PError
    from ww.p2p.host import Node

    try:
        identity = load_or_create(default_repo_path())
    except (IdentityError, OSError) as e:
        raise P2PError(f"p2p: cannot load the node key: {e}") from None
    return Node(identity, listen or None, join, dial_policy=policy)
