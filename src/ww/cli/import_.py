"""`ww import IPFS-PATH [LOCAL-PATH] [-x]`: write a file or tree from IPFS (or a CAR) to disk."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ww.cli._ipfs_option import ipfs_option, peer_option, refuse_peers_with_kubo
from ww.errors import UsageError


@click.command(name="import")
@click.argument("source")
@click.argument("local_path", required=False, type=click.Path(path_type=Path))
@click.option("-x", "--executable", is_flag=True, help="Mark the files written executable.")
@ipfs_option
@peer_option
def import_(source: str, local_path: Path | None, executable: bool,
            ipfs_api: str | None, peers: list[str]) -> None:
    """Write SOURCE to LOCAL-PATH (default: the current directory).

    SOURCE is /ipfs/<cid>[/path], <cid>[/path], or a .car file whose blocks are imported
    first (its single root is then written).  A directory is extracted into LOCAL-PATH; a
    file becomes LOCAL-PATH, or goes inside it if LOCAL-PATH is an existing directory.
    Blocks the repository lacks are fetched from the --peer peers over Bitswap.
    """
    from ww.ipfs.backend import open_backend
    from ww.ipfs.exporter import check_destination
    from ww.p2p import host_for_ipfs

    refuse_peers_with_kubo(ipfs_api)
    dest = local_path if local_path is not None else Path.cwd()
    check_destination(dest)  # a symlink or device destination: refused before any work
    api = open_backend(ipfs_api, check=bool(ipfs_api), peers=peers, new_host=host_for_ipfs())
    try:
        if source.endswith(".car") and not source.startswith("/ipfs/"):
            car = Path(source)
            if not car.is_file():
                raise UsageError(f"{source}: no such CAR file")
            _one_root(car)  # before anything is stored or pinned
            pinned_before = set(api.pins())
            with open(car, "rb") as f:
                roots = api.import_car(f)
            try:
                api.get(f"/ipfs/{roots[0]}", dest, executable=executable)
            except BaseException:
                # Nothing was written: leave no pin behind either (the blocks stay, unpinned,
                # until the next gc, as kubo keeps them after a failed import).
                for root in roots:
                    if root not in pinned_before:
                        with contextlib.suppress(Exception):
                            api.unpin(root)
                raise
            return
        api.get(source, dest, executable=executable)
    finally:
        api.close()


def _one_root(car: Path) -> None:
    """Refuse a CAR whose header does not name exactly one root: which would be written?"""
    from ww.ipfs.car import CarReader

    with open(car, "rb") as f:
        roots = CarReader(f).roots  # a malformed header is its one-line error here
    if len(roots) != 1:
        shown = ", ".join(str(r) for r in roots[:3]) + (", ..." if len(roots) > 3 else "")
        raise UsageError(f"{car}: has {len(roots)} roots ({shown}); ww import writes a CAR "
                         "with one root (nothing was imported)")
