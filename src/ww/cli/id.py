"""`ww id`: this node's peer id and the addresses `ww run` listens on."""

from __future__ import annotations

import click


@click.command(name="id")
@click.option("--listen", "listen", multiple=True, envvar="WW_LISTEN", metavar="MULTIADDR",
              help="The listen addresses to show, as given to 'ww run --listen' "
                   "(WW_LISTEN: space-separated).  Default: /ip4/127.0.0.1/tcp/2020.")
def id_(listen: tuple[str, ...]) -> None:
    """Print the node's peer id, then each address peers dial to reach it.

    The peer id is derived from the node key in $WW_HOME (created on first use), the
    identity 'ww run' uses on the libp2p network.  The addresses are the configured ones
    (--listen or WW_LISTEN, else the default), each followed by /p2p/<peer id>; a port 0
    stands for the free port a running 'ww run' picks and announces.
    """
    from ww.core.identity import load_or_create
    from ww.errors import UsageError
    from ww.ipfs.repo import default_repo_path
    from ww.p2p import DEFAULT_LISTEN, check_listen_addr

    try:
        addrs = [check_listen_addr(a) for a in listen] or [DEFAULT_LISTEN]
    except ValueError as e:
        raise UsageError(f"--listen: {e}") from None
    peer_id = load_or_create(default_repo_path()).peer_id
    click.echo(peer_id)
    for addr in addrs:
        click.echo(f"{addr}/p2p/{peer_id}")
