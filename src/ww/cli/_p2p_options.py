"""`ww run`'s p2p options: ``--with-p2p``, ``--listen``, ``--join``, ``--node-key``,
``--allow-dial`` (docs/p2p.md).

Parsing only.  libp2p (and trio) are imported only when one of them is used, so that
`ww run` without them starts as fast as before.
"""

from __future__ import annotations

from typing import Any

import click


def _check(checker_name: str) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                 ) -> list[str]:
        if not values:
            return []
        from ww import p2p
        from ww.core.errors import AddressError

        checker = getattr(p2p, checker_name)
        try:
            return [checker(value) for value in values]
        except AddressError as e:
            raise click.BadParameter(str(e)) from None

    return callback


def _check_ranges(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                  ) -> list[str]:
    if not values:
        return []
    from ww.core.errors import AddressError
    from ww.p2p.dial_policy import parse_range

    try:
        return [str(parse_range(value)) for value in values]
    except AddressError as e:
        raise click.BadParameter(str(e)) from None


def p2p_options(f: Any) -> Any:
    f = click.option(
        "--mdns", "mdns", is_flag=True,
        help="Announce the host on the local network with multicast DNS and dial the peers "
             "that announce themselves (kubo's Discovery.MDNS: service _p2p._udp.local), "
             "under the dial policy (a LAN peer needs --allow-dial for its range).  Needs a "
             "host (--listen, --join or --with-p2p).")(f)
    f = click.option(
        "--allow-dial", "allow_dial", multiple=True, envvar="WW_ALLOW_DIAL", metavar="CIDR",
        callback=_check_ranges,
        help="Let cells make the host dial addresses in CIDR (repeatable; WW_ALLOW_DIAL: "
             "space-separated), e.g. 127.0.0.0/8.  Without it a cell's IPFS connect or p2p "
             "dial reaches public addresses only, and the --join and --peer addresses.")(f)
    f = click.option(
        "--node-key", "node_key", envvar="WW_NODE_KEY", metavar="FILE|new",
        help="The libp2p host's key for this run instead of the node key in $WW_HOME, which "
             "every 'ww run' of one $WW_HOME shares: a key file from 'ww idgen', or 'new' for "
             "a fresh throwaway key (a peer id of its own).  Passed on to sub-cells: FILE "
             "makes them the same peer, 'new' gives each its own.")(f)
    f = click.option(
        "--inbound", "inbound", type=click.Choice(["full", "calls"]), default=None,
        help="What connections libp2p peers that are not ww (kubo, go-libp2p: they propose "
             "/noise) dial to this host carry while the cell exports something: 'full' "
             "(default) everything the host serves (/ww/0.1.0, Bitswap, identify, the DHT), "
             "through py-libp2p; 'calls' /ww/0.1.0 and ping only, served by ww's native "
             "connection (as ww peers' are), several times faster, and nothing else: such "
             "a peer cannot fetch blocks from this host over a connection it dialed "
             "(docs/p2p.md).  Ed25519 peers only in 'calls'.")(f)
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
