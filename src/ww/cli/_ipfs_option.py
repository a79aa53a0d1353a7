"""The ``--ipfs ADDR`` and ``--peer MULTIADDR/p2p/PEERID`` options of the commands that use IPFS."""

from __future__ import annotations

import click


def check_ipfs_api(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A malformed address is a usage error (exit 2), even where IPFS is not used after all."""
    if not value:
        return None
    from ww.ipfs.api import IpfsError
    from ww.ipfs.kubo import KuboClient

    try:
        KuboClient(value)  # parses the address; contacts nothing
    except IpfsError as e:  # MultiaddrError: the address does not parse
        raise click.BadParameter(str(e)) from None
    return value


ipfs_option = click.option(
    "--ipfs", "ipfs_api", envvar="WW_IPFS", metavar="ADDR", callback=check_ipfs_api,
    help="Use the kubo node whose RPC API is at ADDR (a multiaddr such as "
         "/ip4/127.0.0.1/tcp/5001/http, or an http:// URL) instead of the embedded node "
         "in $WW_HOME.",
)


PEERS_ENV = "WW_IPFS_PEERS"


def _check_peers(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
                 ) -> list[str]:
    """Each ``--peer`` (``--bootstrap``) must be a full peer address; a malformed one is a
    usage error (2)."""
    if not values:
        return []
    from ww.core.errors import AddressError
    from ww.p2p import check_join_addr

    try:
        return [check_join_addr(value) for value in values]
    except AddressError as e:  # ww.cli.main names the variable when it gave the value
        raise click.BadParameter(str(e)) from None


peer_option = click.option(
    "--peer", "peers", multiple=True, envvar=PEERS_ENV, metavar="MULTIADDR/p2p/PEERID",
    callback=_check_peers,
    help="A peer to fetch content from over Bitswap when the embedded node lacks it "
         "(repeatable; WW_IPFS_PEERS: space-separated): /ip4|ip6/<address>/tcp/<port>/p2p/"
         "<peer id>.  Dialled only when a block is missing; if none can be reached, the "
         "command fails.",
)


def refuse_peers_with_kubo(ipfs_api: str | None) -> None:
    """``--peer`` with ``--ipfs`` on the command line: a usage error (ww.app.build)."""
    from ww.app.build import refuse_peers_with_kubo as refuse

    ctx = click.get_current_context()
    refuse(ipfs_api, ctx.params.get("peers") or (),
           ctx.get_parameter_source("peers") is click.core.ParameterSource.COMMANDLINE)


def routing_options(f: click.decorators.FC) -> click.decorators.FC:
    """``--bootstrap MULTIADDR/p2p/PEERID`` (repeatable) and ``--routing dht|none``."""
    f = click.option(
        "--routing", "routing", type=click.Choice(["dht", "none"]), default=None,
        help=_ROUTING_HELP + ".")(f)
    return bootstrap_option(f)


def run_routing_options(f: click.decorators.FC) -> click.decorators.FC:
    """`ww run`'s and `ww daemon`'s: ``--routing`` may also be ``dhtserver`` (a long-running
    host's), and ``--reprovide-interval``."""
    f = click.option(
        "--routing", "routing", type=click.Choice(["dht", "dhtserver", "none"]), default=None,
        help=_ROUTING_HELP + "; 'dhtserver' is 'dht' that also answers other peers' queries "
             "and keeps their provider records (kubo's Routing.Type dhtserver): on the LAN "
             "DHT always, on the WAN DHT when --listen names a public address (`ww run` "
             "needs --listen for it).")(f)
    f = click.option(
        "--reprovide-interval", "reprovide_interval", metavar="DURATION", default=None,
        help="How often a host with the DHT announces again what the embedded node pins "
             "(as kubo's Reprovider.Interval; the first round a minute after the start, or "
             "after DURATION if shorter): 30s, 5m, 22h ... (default: 22h; 0: never).")(f)
    return bootstrap_option(f)


_ROUTING_HELP = (
    "How the embedded node finds peers that have a block no connected peer has: "
    "'dht' asks kubo's dual DHT, LAN (/ipfs/lan/kad/1.0.0) and WAN (/ipfs/kad/1.0.0) "
    "at once, starting from the --bootstrap peers; 'none' asks only the peers connected "
    "(default: dht when --bootstrap is given, else none)")


bootstrap_option = click.option(
    "--bootstrap", "bootstrap", multiple=True, metavar="MULTIADDR/p2p/PEERID",
    callback=_check_peers,
    help="A DHT peer to start lookups from (repeatable): /ip4|ip6/<address>/tcp/<port>/p2p/"
         "<peer id>.  None is built in: ww contacts no peer it is not told of.")
