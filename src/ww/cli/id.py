"""`ww id`: this node's peer id and the addresses `ww run` listens on; or a key file's peer
id (``--key``)."""

from __future__ import annotations

import click


@click.command(name="id")
@click.option("--listen", "listen", multiple=True, envvar="WW_LISTEN", metavar="MULTIADDR",
              help="The listen addresses to show, as given to 'ww run --listen' "
                   "(WW_LISTEN: space-separated).  Default: /ip4/127.0.0.1/tcp/2020.")
@click.option("--key", "key", metavar="FILE",
              help="Print only the peer id of the key in FILE (as 'ww idgen' writes it, text "
                   "or --raw): a cell's --identity for --allow and policies, or a "
                   "'ww run --node-key'.")
@click.pass_context
def id_(ctx: click.Context, listen: tuple[str, ...], key: str | None) -> None:
    """Print the node's peer id, then each address peers dial to reach it.

    The peer id is derived from the node key in $WW_HOME (created on first use), the
    identity 'ww run' uses on the libp2p network unless given --node-key.  The addresses
    are the configured ones (--listen or WW_LISTEN, else the default), each followed by
    /p2p/<peer id>; a port 0 stands for the free port a running 'ww run' picks and
    announces.  With --key FILE: one line, that key's peer id, and nothing else.
    """
    from ww.core.errors import AddressError, UsageError

    if key is not None:
        from ww.core.identity import key_from_flag

        if ctx.get_parameter_source("listen") is click.core.ParameterSource.COMMANDLINE:
            raise UsageError("--key prints a key's peer id only; --listen cannot go with it")
        click.echo(key_from_flag("--key", key, new=False).peer_id)
        return
    from ww.app.build import node_identity
    from ww.p2p import DEFAULT_LISTEN, check_listen_addr

    try:
        addrs = [check_listen_addr(a) for a in listen] or [DEFAULT_LISTEN]
    except AddressError as e:
        raise AddressError(f"--listen: {e}") from None
    peer_id = node_identity().peer_id
    click.echo(peer_id)
    for addr in addrs:
        click.echo(f"{addr}/p2p/{peer_id}")
