"""The ``--ipfs ADDR`` option shared by the commands that use IPFS."""

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
    except (IpfsError, ValueError) as e:
        raise click.BadParameter(str(e)) from None
    return value


ipfs_option = click.option(
    "--ipfs", "ipfs_api", envvar="WW_IPFS", metavar="ADDR", callback=check_ipfs_api,
    help="Use the kubo node whose RPC API is at ADDR (a multiaddr such as "
         "/ip4/127.0.0.1/tcp/5001/http, or an http:// URL) instead of the embedded node "
         "in $WW_HOME.",
)
