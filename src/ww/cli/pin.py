"""`ww pin add|ls|rm`: what `ww repo gc` keeps (``ipfs pin``).

`ww export` pins what it adds (recursively); `ww pin rm` takes that pin away, so that the
next `ww repo gc` reclaims the blocks no other pin keeps.
"""

from __future__ import annotations

import click

from ww.cli._ipfs_option import ipfs_option, peer_option, refuse_peers_with_kubo
from ww.cli._kubo_bools import kubo_booleans
from ww.cli._output import reader_gone

_TYPES = ("direct", "recursive", "indirect", "all")
_ORDER = {"recursive": 0, "direct": 1, "indirect": 2}


@click.group()
def pin() -> None:
    """Pin, list and unpin content: a pinned DAG survives `ww repo gc`."""


@pin.command(cls=kubo_booleans("recursive"))
@click.argument("paths", nargs=-1, required=True, metavar="IPFS-PATH...")
@click.option("-r", "--recursive/--no-recursive", default=True, show_default=True,
              help="Pin the whole DAG; --no-recursive (kubo's --recursive=false): only its "
                   "root block, a direct pin.")
@ipfs_option
@peer_option
def add(paths: tuple[str, ...], recursive: bool, ipfs_api: str | None,
        peers: list[str]) -> None:
    """Pin what each IPFS-PATH names; every block of a recursive pin must be present: those
    the repository lacks are fetched from the --peer peers over Bitswap (and stored)."""
    from ww.app.build import open_ipfs

    refuse_peers_with_kubo(ipfs_api)
    api = open_ipfs(ipfs_api, check=bool(ipfs_api), peers=peers)
    try:
        for path in paths:
            cid = api.resolve(path)
            api.pin(cid, recursive=recursive)
            click.echo(f"pinned {cid} {'recursively' if recursive else 'directly'}")
    finally:
        api.close()


@pin.command()
@click.argument("paths", nargs=-1, required=True, metavar="IPFS-PATH...")
@ipfs_option
def rm(paths: tuple[str, ...], ipfs_api: str | None) -> None:
    """Remove the direct or recursive pin of each IPFS-PATH; one that is not pinned so is an
    error naming it.  The blocks stay until `ww repo gc`."""
    from ww.app.build import open_ipfs
    from ww.ipfs.api import NotFoundError

    api = open_ipfs(ipfs_api, check=bool(ipfs_api))
    try:
        for path in paths:
            cid = api.resolve(path)  # a missing block or name: its own error, not "not pinned"
            try:
                api.unpin(cid)
            except NotFoundError:
                how = ("it is pinned indirectly, through a recursive pin"
                       if cid in api.pin_ls("indirect") else "it is not pinned")
                raise NotFoundError(f"cannot unpin {path}: {how}") from None
            click.echo(f"unpinned {cid}")
    finally:
        api.close()


@pin.command(name="ls")
@click.argument("paths", nargs=-1, metavar="[IPFS-PATH...]")
@click.option("-t", "--type", "type_", type=click.Choice(_TYPES), default="all",
              show_default=True, help="Which pins to list.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the CIDs.")
@ipfs_option
def ls(paths: tuple[str, ...], type_: str, quiet: bool, ipfs_api: str | None) -> int:
    """List the pins, '<cid> <type>' per line (recursive, direct, then indirect: the blocks
    under a recursive pin); given IPFS-PATHs, how each is pinned, or an error naming one
    that is not."""
    from ww.app.build import open_ipfs
    from ww.ipfs.api import NotFoundError

    api = open_ipfs(ipfs_api, check=bool(ipfs_api))
    try:
        pins = api.pin_ls(type_)
        if paths:
            shown = {}
            for path in paths:
                cid = api.resolve(path)
                if cid not in pins:
                    kind = "" if type_ == "all" else f" {type_}"
                    raise NotFoundError(f"{path} is not pinned{kind}")
                shown[cid] = pins[cid]
        else:
            shown = dict(sorted(pins.items(), key=lambda item: (_ORDER[item[1]], item[0])))
        for cid, kind in shown.items():
            click.echo(cid if quiet else f"{cid} {kind}")
    except BrokenPipeError:
        return reader_gone()
    finally:
        api.close()
    return 0
