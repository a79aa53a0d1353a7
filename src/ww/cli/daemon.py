"""`ww daemon`: parsing only; the daemon itself is :mod:`ww.app.daemon`."""

from __future__ import annotations

import click

from ww.cli._ipfs_option import peer_option, run_routing_options
from ww.cli._p2p_options import _check, _check_ranges


@click.command(name="daemon")
@click.option("--api", "api", default="/ip4/127.0.0.1/tcp/5001", show_default=True,
              envvar="WW_API", show_envvar=True, metavar="MULTIADDR",
              help="Where kubo's RPC API (/api/v0) listens: /ip4|ip6/<address>/tcp/<port> "
                   "(port 0: a free one), or /unix/<path>: a unix socket only your user "
                   "may connect to (mode 0600), which keeps other local users out.  "
                   "Loopback unless you name another address; whoever reaches it can add, "
                   "pin and remove content.")
@click.option("--gateway", "gateway", default="/ip4/127.0.0.1/tcp/8080", show_default=True,
              envvar="WW_GATEWAY", show_envvar=True, metavar="MULTIADDR|off",
              help="Where the trustless gateway (/ipfs/<cid>[/path], raw blocks, CARs, files "
                   "and directory listings) listens, as --api; 'off': no gateway.  It serves "
                   "only what the repository holds, to anyone who reaches it.")
@click.option("--listen", "listen", multiple=True, envvar="WW_LISTEN", metavar="MULTIADDR",
              callback=_check("check_listen_addr"),
              help="Listen for libp2p peers (Bitswap) on MULTIADDR (repeatable).  Default: "
                   "/ip4/127.0.0.1/tcp/2020, loopback only.")
@click.option("--join", "join", multiple=True, metavar="MULTIADDR/p2p/PEERID",
              callback=_check("check_join_addr"),
              help="Connect to this peer at start (repeatable); it is an IPFS peer.")
@peer_option
@click.option("--node-key", "node_key", envvar="WW_NODE_KEY", metavar="FILE|new",
              help="The libp2p host's key instead of the node key in $WW_HOME.")
@click.option("--allow-dial", "allow_dial", multiple=True, envvar="WW_ALLOW_DIAL",
              metavar="CIDR", callback=_check_ranges,
              help="Let swarm/connect and the DHT dial addresses in CIDR (repeatable); "
                   "otherwise only public addresses and the --join/--peer/--bootstrap ones.")
@run_routing_options
@click.option("--mdns", "mdns", is_flag=True,
              help="Announce the host on the local network with multicast DNS and dial the "
                   "peers that announce themselves (kubo's Discovery.MDNS: service "
                   "_p2p._udp.local), under the dial policy (a LAN peer needs --allow-dial "
                   "for its range).")
@click.pass_context
def daemon(ctx: click.Context, api: str, gateway: str, listen: list[str], join: list[str],
           peers: tuple[str, ...], node_key: str | None, allow_dial: list[str],
           bootstrap: list[str], routing: str | None, reprovide_interval: str | None,
           mdns: bool) -> None:
    """Run the embedded node on $WW_HOME until SIGINT or SIGTERM: Bitswap on the libp2p
    host, kubo's RPC API on --api for kubo's clients (ww run --ipfs
    /ip4/127.0.0.1/tcp/5001/http, ww cat --ipfs, kubo-rpc-client), and the trustless
    gateway on --gateway for browsers and IPFS HTTP clients.

    With --bootstrap or --routing dht|dhtserver it announces what it pins on kubo's dual
    (LAN and WAN) DHT (at start, after each add, pin/add and dag/import, and every
    --reprovide-interval), fetches missing blocks from the providers the DHT names, and
    answers routing/findprovs.

    One daemon per repository.  One log line per event on stderr ('ww --json daemon': JSON).
    """
    from ww.app.daemon import DaemonOptions, run

    json_lines = bool(ctx.find_root().params.get("json"))
    from_env = tuple(name for name in ("api", "gateway", "node_key")
                     if ctx.get_parameter_source(name) is click.core.ParameterSource.ENVIRONMENT)
    ctx.exit(run(DaemonOptions(api=api, gateway=None if gateway == "off" else gateway,
                               listen=tuple(listen), join=tuple(join),
                               peers=tuple(peers), node_key=node_key,
                               allow_dial=tuple(allow_dial), bootstrap=tuple(bootstrap),
                               routing=routing, reprovide_interval=reprovide_interval,
                               mdns=mdns, json=json_lines, from_env=from_env)))
