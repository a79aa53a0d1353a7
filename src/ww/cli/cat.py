"""`ww cat PATH... [-o OFFSET] [-l LENGTH]`: a file's bytes from IPFS to stdout (``ipfs cat``)."""

from __future__ import annotations

import click

from ww.cli._ipfs_option import ipfs_option, peer_option, refuse_peers_with_kubo
from ww.cli._output import binary_stdout, reader_gone, write_out
from ww.core.ipfs_values import EntryType


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="IPFS-PATH...")
@click.option("-o", "--offset", type=click.IntRange(min=0), default=0, metavar="BYTES",
              help="Skip this many bytes first (of all the files together, as in kubo).")
@click.option("-l", "--length", type=click.IntRange(min=0), default=None, metavar="BYTES",
              help="Write at most this many bytes.")
@ipfs_option
@peer_option
def cat(paths: tuple[str, ...], offset: int, length: int | None,
        ipfs_api: str | None, peers: list[str]) -> int:
    """Write the files at IPFS-PATH (/ipfs/<cid>[/path] or <cid>[/path]) to stdout, one after
    the other, streaming: a file of any size passes through in bounded pieces.  Blocks the
    repository lacks are fetched from the --peer peers over Bitswap."""
    from ww.app.build import open_ipfs
    from ww.ipfs.api import IpfsError, NotAFileError

    refuse_peers_with_kubo(ipfs_api)
    out = binary_stdout()
    api = open_ipfs(ipfs_api, check=bool(ipfs_api), peers=peers)
    try:
        for path in paths:
            if length == 0:
                break
            if offset and len(paths) > 1:  # the offset runs over the files together
                info = api.stat(path)
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
            except NotAFileError as err:
                try:
                    kind = api.stat(path).type
                except IpfsError:
                    raise err from None
                raise NotAFileError(_not_a_file(path, kind)) from None
            offset = 0
        write_out(out)
    except BrokenPipeError:
        return reader_gone()
    finally:
        api.close()
    return 0


def _not_a_file(path: str, kind: EntryType) -> str:
    """One line naming ``path`` and what it is."""
    hint = " (ww ls lists it)" if kind is EntryType.DIRECTORY else ""
    return f"{path} is a {kind.value}, not a file{hint}"
