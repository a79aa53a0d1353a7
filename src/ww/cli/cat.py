"""`ww cat PATH... [-o OFFSET] [-l LENGTH]`: a file's bytes from IPFS to stdout (``ipfs cat``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

import click

from ww.cli._ipfs_option import ipfs_option, peer_option, refuse_peers_with_kubo
from ww.cli._kubo_bools import kubo_booleans
from ww.cli._output import binary_stdout, reader_gone, write_out
from ww.cli._progress import progress_bar
from ww.core.ipfs_values import EntryType

if TYPE_CHECKING:
    from ww.cli._progress import TerminalBar
    from ww.ipfs.api import CoreAPI


@click.command(cls=kubo_booleans("progress"))
@click.argument("paths", nargs=-1, required=True, metavar="IPFS-PATH...")
@click.option("-o", "--offset", type=click.IntRange(min=0), default=0, metavar="BYTES",
              help="Skip this many bytes first (of all the files together, as in kubo).")
@click.option("-l", "--length", type=click.IntRange(min=0), default=None, metavar="BYTES",
              help="Write at most this many bytes.")
@click.option("-p", "--progress/--no-progress", default=True,
              help="Show a progress bar on stderr when it is a terminal (--progress=false, "
                   "as kubo's ipfs cat, shows none).")
@ipfs_option
@peer_option
def cat(paths: tuple[str, ...], offset: int, length: int | None, progress: bool,
        ipfs_api: str | None, peers: list[str]) -> int:
    """Write the files at IPFS-PATH (/ipfs/<cid>[/path] or <cid>[/path]) to stdout, one after
    the other, streaming: a file of any size passes through in bounded pieces.  Blocks the
    repository lacks are fetched from the --peer peers over Bitswap."""
    from ww.app.build import open_ipfs

    refuse_peers_with_kubo(ipfs_api)
    out = binary_stdout()
    api = open_ipfs(ipfs_api, check=bool(ipfs_api), peers=peers)
    try:
        with progress_bar("cat", progress, data_on_stdout=True) as bar:
            if bar is not None:
                _expect(bar, api, paths, offset, length)
            return _cat(api, out, paths, offset, length, bar)
    except BrokenPipeError:
        return reader_gone()
    finally:
        api.close()


def _expect(bar: TerminalBar, api: CoreAPI, paths: tuple[str, ...], offset: int,
            length: int | None) -> None:
    """The bytes ``cat`` will write, for the bar; unknown if a path is not a file (the
    error is reported when it is reached)."""
    from ww.ipfs.api import IpfsError

    try:
        sizes = [api.stat(path, links=False) for path in paths]
    except IpfsError:
        return
    if any(info.type is not EntryType.FILE for info in sizes):
        return
    total = max(0, sum(info.size for info in sizes) - offset)
    bar.expect(total if length is None else min(total, length))


def _cat(api: CoreAPI, out: BinaryIO, paths: tuple[str, ...], offset: int,
         length: int | None, bar: TerminalBar | None) -> int:
    from ww.ipfs.api import IpfsError, NotAFileError

    for path in paths:
        if length == 0:
            break
        if offset and len(paths) > 1:  # the offset runs over the files together
            info = api.stat(path, links=False)
            if info.type is not EntryType.FILE:
                raise NotAFileError(_not_a_file(path, info.type))
            if offset >= info.size:
                offset -= info.size
                continue
        try:
            for chunk in api.cat(path, offset, length):
                write_out(out, chunk)
                if length is not None:
                    length -= len(chunk)
                if bar is not None:
                    bar.advance(len(chunk))
        except NotAFileError as err:
            try:
                kind = api.stat(path, links=False).type
            except IpfsError:
                raise err from None
            raise NotAFileError(_not_a_file(path, kind)) from None
        if bar is not None:
            bar.advance(files=1)
        offset = 0
    write_out(out)
    return 0


def _not_a_file(path: str, kind: EntryType) -> str:
    """One line naming ``path`` and what it is."""
    hint = " (ww ls lists it)" if kind is EntryType.DIRECTORY else ""
    return f"{path} is a {kind.value}, not a file{hint}"
