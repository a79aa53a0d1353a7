"""`ww export PATH`: add a file or directory to IPFS (like `ipfs add -r`), print its path."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click

from ww.cli._ipfs_option import ipfs_option
from ww.core.errors import UsageError

PROGRESS_THRESHOLD = 16 * 1024 * 1024  # show a progress bar on a TTY above this many bytes


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--car", "car_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Write the DAG as a CAR v1 file instead of storing it in the repository.")
@click.option("--cid-version", type=click.IntRange(0, 1), default=0, show_default=True,
              help="CID version; 1 implies --raw-leaves, as in kubo.")
@click.option("--raw-leaves/--no-raw-leaves", default=None,
              help="Store file chunks as raw blocks (default: only with --cid-version 1).")
@click.option("--pin/--no-pin", default=True, show_default=True, help="Pin what is added.")
@click.option("-H", "--hidden", is_flag=True,
              help="Include files and directories whose names start with '.' (as kubo's "
                   "ipfs add --hidden; skipped by default, as by ipfs add).")
@ipfs_option
def export(path: Path, car_file: Path | None, cid_version: int, raw_leaves: bool | None,
           pin: bool, hidden: bool, ipfs_api: str | None) -> None:
    """Add PATH (a file, symlink or directory tree) and print /ipfs/<cid>."""
    from ww.app.build import open_embedded, open_ipfs
    from ww.ipfs.api import AddOptions, CoreAPI

    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{path}: no such file or directory")
    options = AddOptions(cid_version=cid_version, raw_leaves=raw_leaves, pin=pin, hidden=hidden)
    if car_file is not None:
        _check_car_destination(car_file)
    with contextlib.ExitStack() as stack:
        if car_file is not None and not ipfs_api:
            # "Instead of storing": build the DAG in a scratch repository beside the CAR
            # file (same file system), which goes away with the command.
            scratch = stack.enter_context(tempfile.TemporaryDirectory(
                prefix=f".{car_file.name}.", dir=car_file.resolve().parent))
            api: CoreAPI = open_embedded(Path(scratch))
            options = replace(options, pin=False)
        else:
            api = open_ipfs(ipfs_api, check=bool(ipfs_api))
            if car_file is not None:
                options = replace(options, pin=False)
        cid = _export(api, path, options, car_file)
    click.echo(f"/ipfs/{cid}")


def _check_car_destination(car_file: Path) -> None:
    """Refuse a CAR destination that cannot be written, before any work is done."""
    parent = car_file.resolve().parent
    if car_file.is_dir():
        raise UsageError(f"--car {car_file}: is a directory; name the CAR file to write")
    if not parent.is_dir():
        raise UsageError(f"--car {car_file}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--car {car_file}: cannot write in {parent}")


def _export(api, path: Path, options, car_file: Path | None) -> str:  # type: ignore[no-untyped-def]
    try:
        if path.is_file() and not path.is_symlink():
            cid = _add_file(api, path, options)
        else:
            cid = api.add_path(path, options)
        if car_file is not None:
            _write_car(api, cid, car_file)
    finally:
        api.close()
    return cid


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
    tmp = car_file.resolve().parent / f".{car_file.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            api.export_car([cid], out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, car_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
