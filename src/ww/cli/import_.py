"""`ww import IPFS-PATH [-o PATH] [--force] [-x]`: write a file or tree from IPFS (or a CAR)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ww.cli._ipfs_option import (
    ipfs_option,
    peer_option,
    refuse_peers_with_kubo,
    routing_options,
)
from ww.cli._kubo_bools import kubo_booleans
from ww.cli._output import binary_stdout, reader_gone, write_out
from ww.cli._progress import progress_bar
from ww.core.errors import NotAFileError, UsageError

if TYPE_CHECKING:
    from ww.ipfs.api import CoreAPI


@click.command(name="import", cls=kubo_booleans("progress"))
@click.argument("source")
@click.argument("local_path", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", metavar="PATH",
              help="Write to PATH (default ./<last path element>, the CID for a bare "
                   "/ipfs/<cid>); '-' writes a file to stdout.")
@click.option("--force", is_flag=True,
              help="Replace an existing regular file or directory at PATH (never a symlink).")
@click.option("-x", "--executable", is_flag=True, help="Mark the files written executable.")
@click.option("-p", "--progress/--no-progress", default=True,
              help="Show a progress bar on stderr when it is a terminal (--progress=false, "
                   "as kubo's ipfs get, shows none).")
@ipfs_option
@peer_option
@routing_options
def import_(source: str, local_path: Path | None, output: str | None, force: bool,
            executable: bool, progress: bool, ipfs_api: str | None, peers: list[str],
            bootstrap: list[str], routing: str | None) -> int:
    """Write SOURCE to PATH: a file, a symlink or a directory alike.

    SOURCE is /ipfs/<cid>[/path], <cid>[/path], or a .car file whose blocks are imported
    first (its single root is then written).  PATH is -o/--output PATH, or LOCAL-PATH (the
    older spelling); without either, ./<name> where <name> is SOURCE's last path element,
    or the CID for a bare /ipfs/<cid> or a CAR (as `ipfs get` does).  A PATH that exists is
    an error unless --force, which replaces a regular file or directory there atomically; a
    symlink, device, FIFO or socket there is never replaced.  `-o -` writes a file to
    stdout.  Blocks the repository lacks are fetched from the --peer peers over Bitswap,
    and, with --routing dht, from the providers kubo's dual (LAN and WAN) DHT
    names (from --bootstrap).
    """
    from ww.app.build import open_ipfs, refuse_routing_with_kubo
    from ww.ipfs.exporter import check_destination

    refuse_peers_with_kubo(ipfs_api)
    refuse_routing_with_kubo(ipfs_api, bootstrap, routing)
    if output is not None and local_path is not None:
        raise UsageError(f"both LOCAL-PATH ({local_path}) and -o/--output ({output}) given; "
                         "give one")
    car = None
    if source.endswith(".car") and not source.startswith("/ipfs/"):
        car = Path(source)
        if not car.is_file():
            raise UsageError(f"{source}: no such CAR file")
    to_stdout = output == "-"
    dest = None
    if not to_stdout:
        dest = (Path(output) if output is not None else local_path
                if local_path is not None else _default_name(source, car))
        if dest is not None:
            if dest.name in ("", ".", ".."):
                raise UsageError(f"{dest} names no entry to write (give a path such as "
                                 "./copy)")
            # a symlink or device, or (without --force) anything: refused before any work
            check_destination(dest, force)
            _check_outside_repository(dest, ipfs_api)
    api = open_ipfs(ipfs_api, check=bool(ipfs_api), peers=peers,
                    routing=routing, bootstrap=bootstrap)
    try:
        if car is None:
            _write(api, source, dest, executable, force, to_stdout, progress)
            return 0
        roots = _one_root(car)  # before anything is stored or pinned
        if dest is None and not to_stdout:
            dest = Path(roots[0])
            check_destination(dest, force)
            _check_outside_repository(dest, ipfs_api)
        pinned_before = set(api.pins())
        with open(car, "rb") as f, progress_bar(f"importing {car.name}", progress) as bar:
            if bar is not None:
                bar.expect(os.fstat(f.fileno()).st_size)
            roots = api.import_car(f)
        try:
            _write(api, f"/ipfs/{roots[0]}", dest, executable, force, to_stdout, progress)
        except BaseException:
            # Nothing was written: leave no pin behind either (the blocks stay, unpinned,
            # until the next gc, as kubo keeps them after a failed import).
            for root in roots:
                if root not in pinned_before:
                    with contextlib.suppress(Exception):
                        api.unpin(root)
            raise
    except BrokenPipeError:  # `-o -` into a reader that went away, as `ww cat` ends
        return reader_gone()
    finally:
        api.close()
    return 0


def _check_outside_repository(dest: Path, ipfs_api: str | None) -> None:
    """The embedded node's repository is never the destination, inside it or under it;
    checked before any work (the node checks again when writing)."""
    if not ipfs_api:
        from ww.ipfs.exporter import check_outside_repository
        from ww.ipfs.repo import default_repo_path

        check_outside_repository(dest, default_repo_path())


def _default_name(source: str, car: Path | None) -> Path | None:
    """``./<last path element>`` (the CID for a bare root), as ``ipfs get`` names it; None for
    a CAR, whose root is known once its header is read."""
    if car is not None:
        return None
    from ww.ipfs.path import parse_path

    return Path(parse_path(source).last_name)


def _write(api: CoreAPI, path: str, dest: Path | None, executable: bool, force: bool,
           to_stdout: bool, progress: bool) -> None:
    if not to_stdout:
        assert dest is not None
        with progress_bar(f"saving {dest.name}", progress):  # the exporter reports
            api.get(path, dest, executable=executable, force=force)
        return
    from ww.core.ipfs_values import EntryType

    info = api.stat(path, links=False)
    if info.type is not EntryType.FILE:
        raise NotAFileError(f"{path} is a {info.type.value}; -o - writes only a file to "
                            "stdout (give -o PATH to write it to disk)")
    out = binary_stdout()
    with progress_bar("saving to stdout", progress, data_on_stdout=True) as bar:
        if bar is not None:
            bar.expect(info.size, 1)
        for piece in api.cat(path):
            write_out(out, piece)
            if bar is not None:
                bar.advance(len(piece))
        if bar is not None:
            bar.advance(files=1)
    write_out(out)


def _one_root(car: Path) -> list[str]:
    """Refuse a CAR whose header does not name exactly one root: which would be written?"""
    from ww.ipfs.car import CarReader

    with open(car, "rb") as f:
        roots = CarReader(f).roots  # a malformed header is its one-line error here
    if len(roots) != 1:
        shown = ", ".join(str(r) for r in roots[:3]) + (", ..." if len(roots) > 3 else "")
        raise UsageError(f"{car}: has {len(roots)} roots ({shown}); ww import writes a CAR "
                         "with one root (nothing was imported)")
    return [str(r) for r in roots]
