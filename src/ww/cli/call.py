"""`ww call`: call a remote cell's exported `Service` from the shell."""

from __future__ import annotations

import math

import click

from ww.cli._ipfs_option import bootstrap_option


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="Give up (exit 1) if the whole call takes longer.")
@bootstrap_option
@click.argument("addr", metavar="MULTIADDR/p2p/PEERID|PEERID")
@click.argument("method")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def call(timeout: float, bootstrap: list[str], addr: str, method: str, args: tuple[str, ...]
         ) -> None:
    """Call METHOD with ARGS on the cell exported at MULTIADDR/p2p/PEERID; print the result.

    With --bootstrap, ADDR may be a bare PEERID: its address is looked up in kubo's dual
    (LAN and WAN) DHT from the --bootstrap peers.

    The remote cell must export the generic Service interface (cell.capnp): this is
    Service.call(METHOD, ARGS) over /ww/0.1.0.  ww call dials from a fresh, throw-away
    identity and listens nowhere.  Exit 1 with the reason if the peer cannot be reached,
    exports nothing, or the call fails.
    """
    from ww.core.errors import AddressError, UsageError
    from ww.core.identity import IdentityError, decode_peer_id
    from ww.p2p import check_join_addr

    if not (timeout > 0 and math.isfinite(timeout)):
        raise UsageError("--timeout: give a number of seconds greater than 0")
    try:
        if "/" in addr or not bootstrap:
            addr = check_join_addr(addr)
        else:
            decode_peer_id(addr)
    except (AddressError, IdentityError) as e:
        raise UsageError(str(e)) from None
    from ww.p2p.call import call_service

    click.echo(call_service(addr, method, list(args), timeout, bootstrap))
