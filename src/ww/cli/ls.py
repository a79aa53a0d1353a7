"""`ww ls PATH... [-v] [--size/--no-size]`: a directory's entries in IPFS (``ipfs ls``)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from ww.cli._ipfs_option import ipfs_option, peer_option, refuse_peers_with_kubo
from ww.cli._kubo_bools import kubo_booleans
from ww.cli._output import columns, reader_gone
from ww.core.ipfs_values import Entry, EntryType


@click.command(cls=kubo_booleans("size"))
@click.argument("paths", nargs=-1, required=True, metavar="IPFS-PATH...")
@click.option("-v", "--headers", is_flag=True, help="Print a header line (Hash Size Name).")
@click.option("--size/--no-size", default=True, show_default=True,
              help="Print each file's size (a directory's is '-'); kubo's --size=false is "
                   "--no-size.")
@ipfs_option
@peer_option
def ls(paths: tuple[str, ...], headers: bool, size: bool, ipfs_api: str | None,
       peers: list[str]) -> int:
    """List the directories at IPFS-PATH: one line per entry, '<cid> <size> <name>', as
    kubo's ipfs ls prints them: a directory's name ends in '/' and its size is '-', a
    symlink's is followed by '-> <target>'.  A file is listed as itself.  Several paths
    are listed one after the other, each under a '<path>:' line.  Entries are printed as
    the directory is read, aligned a batch of 1024 at a time.  Blocks the repository lacks
    are fetched from the --peer peers over Bitswap."""
    from ww.app.build import open_ipfs

    refuse_peers_with_kubo(ipfs_api)
    api = open_ipfs(ipfs_api, check=bool(ipfs_api), peers=peers)
    try:
        # Every path is resolved before anything is printed; the entries are then read and
        # printed as the directory is read, never held whole (a directory may have millions).
        listings = [api.iter_ls(path) for path in paths]
        targets: dict[str, str] = {}  # a symlink's CID -> its target, each read once
        for i, (path, entries) in enumerate(zip(paths, listings, strict=True)):
            if len(paths) > 1:
                click.echo(f"{path}:")
            header = (["Hash", "Size", "Name"] if size else ["Hash", "Name"]) if headers \
                else None
            _print_aligned((_row(api, entry, size, targets) for entry in entries), header)
            if len(paths) > 1 and i < len(paths) - 1:
                click.echo("")
    except BrokenPipeError:
        return reader_gone()
    finally:
        api.close()
    return 0


BATCH = 1024
"""Rows aligned and printed together: a listing of up to this many entries is aligned whole,
as kubo's ``ipfs ls`` aligns it; a longer one a batch at a time, each batch as wide as the
ones above it or wider, so that memory stays bounded."""

_TARGETS = 4096  # symlink targets remembered


def _print_aligned(rows: Iterator[list[str]], header: list[str] | None) -> None:
    widths: list[int] = []
    batch = [header] if header else []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            click.echo("\n".join(columns(batch, widths)))
            batch = []
    if batch:
        click.echo("\n".join(columns(batch, widths)))


def _row(api, entry: Entry, size: bool,  # type: ignore[no-untyped-def]
         targets: dict[str, str]) -> list[str]:
    name = entry.name
    if entry.type is EntryType.DIRECTORY:
        return [entry.cid, "-", name + "/"] if size else [entry.cid, name + "/"]
    if entry.type is EntryType.SYMLINK:
        if entry.cid not in targets:
            if len(targets) >= _TARGETS:
                targets.clear()
            targets[entry.cid] = api.stat(entry.cid).target or ""
        name = f"{name} -> {targets[entry.cid]}"
    return [entry.cid, str(entry.size), name] if size else [entry.cid, name]
