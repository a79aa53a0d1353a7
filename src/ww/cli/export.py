"""`ww export PATH`: add a file or directory to IPFS (like `ipfs add -r`), print its path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ww.errors import UsageError

PROGRESS_THRESHOLD = 16 * 1024 * 1024  # show a progress bar on a TTY above this many bytes


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--car", "car_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Write the DAG as a CAR v1 file instead of storing it.")
@click.option("--cid-version", type=click.IntRange(0, 1), default=0, show_default=True,
              help="CID version; 1 implies --raw-leaves, as in kubo.")
@click.option("--raw-leaves/--no-raw-leaves", default=None,
              help="Store file chunks as raw blocks (default: only with --cid-version 1).")
@click.option("--pin/--no-pin", default=True, show_default=True, help="Pin what is added.")
@click.option("-H", "--hidden", is_flag=True,
              help="Include files and directories whose names start with '.' (as kubo's "
                   "ipfs add --hidden; skipped by default, as by ipfs add).")
@click.option("--ipfs", "ipfs_api", envvar="WW_IPFS", metavar="ADDR",
              help="A kubo node's RPC API to use instead of the embedded node.")
def export(path: Path, car_file: Path | None, cid_version: int, raw_leaves: bool | None,
           pin: bool, hidden: bool, ipfs_api: str | None) -> None:
    """Add PATH (a file, symlink or directory tree) and print /ipfs/<cid>."""
    from ww.ipfs.api import AddOptions
    from ww.ipfs.backend import open_backend

    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{path}: no such file or directory")
    options = AddOptions(cid_version=cid_version, raw_leaves=raw_leaves, pin=pin, hidden=hidden)
    api = open_backend(ipfs_api, check=bool(ipfs_api))
    try:
        if path.is_file() and not path.is_symlink():
            cid = _add_file(api, path, options)
        else:
            cid = api.add_path(path, options)
        if car_file is not None:
            _write_car(api, cid, car_file)
    finally:
        api.close()
    click.echo(f"/ipfs/{cid}")


def _add_file(api, path: Path, options) -> str:  # type: ignore[no-untyped-def]
    size = path.stat().st_size
    with open(path, "rb") as f:
        chunks = iter(lambda: f.read(1 << 20), b"")
        if size < PROGRESS_THRESHOLD or not sys.stderr.isatty():
            return api.add_stream(chunks, options)
        with click.progressbar(length=size, label=f"adding {path.name}", file=sys.stderr) as bar:

            def counted():  # type: ignore[no-untyped-def]
                for chunk in chunks:
                    bar.update(len(chunk))
                    yield chunk

            return api.add_stream(counted(), options)


def _write_car(api, cid: str, car_file: Path) -> None:  # type: ignore[no-untyped-def]
    """Write the CAR next to its destination first, then rename: never half a file."""
    tmp = car_file.with_name(f".{car_file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            api.export_car([cid], out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, car_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
