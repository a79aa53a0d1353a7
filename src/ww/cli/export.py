"""`ww export PATH`: add a file or directory to IPFS (like `ipfs add -r`), print its path."""
# Flags are spelled as kubo's `ipfs add` spells them; each gives kubo's CIDs.

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ww.cli._ipfs_option import ipfs_option
from ww.cli._progress import progress_bar
from ww.core.errors import ChunkerError, UsageError

if TYPE_CHECKING:
    from ww.cli._progress import TerminalBar

STDIN_PATHS = frozenset({"-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})
READ_SIZE = 1 << 20  # stdin is read and added in pieces of this size: never whole


class _KuboBooleans(click.Command):
    """Accept kubo's spelling ``--pin=false`` / ``--raw-leaves=true`` / ``--progress=false``
    beside ``--no-pin``."""

    BOOLEANS = ("--pin", "--raw-leaves", "--progress")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out = []
        for arg in args:
            name, eq, value = arg.partition("=")
            if eq and name in self.BOOLEANS:
                if value.lower() not in ("true", "false"):
                    raise UsageError(f"{name}={value}: the value must be true or false")
                arg = name if value.lower() == "true" else f"--no-{name[2:]}"
            elif arg == "--":
                out.extend(args[len(out):])
                break
            out.append(arg)
        return super().parse_args(ctx, out)


@click.command(cls=_KuboBooleans)
@click.argument("path")
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
@click.option("-q", "--quiet", is_flag=True, help="Print only the CID of each thing added.")
@click.option("-Q", "--quieter", is_flag=True, help="Print only the root CID.")
@click.option("-r", "--recursive", is_flag=True,
              help="Accepted for kubo's ipfs add -r: directories are always added recursively.")
@click.option("-n", "--only-hash", is_flag=True,
              help="Compute the CID only: store and pin nothing.")
@click.option("-w", "--wrap-with-directory", "wrap", is_flag=True,
              help="Add PATH inside a directory of its own (named by PATH's base name; "
                   "stdin by --stdin-name, else by its CID, as kubo).")
@click.option("--stdin-name", default="", metavar="NAME",
              help="The name stdin's data gets in the -w directory (kubo's --stdin-name; "
                   "default: its own CID, as kubo names it).")
@click.option("--chunker", default="size-262144", show_default=True,
              metavar="size-N|rabin[-AVG|-MIN-AVG-MAX]|buzhash",
              help="How files are cut into blocks, as kubo's ipfs add --chunker: N-byte chunks "
                   "(N at most 1048576), or content-defined ones: rabin (average AVG bytes, "
                   "default 262144; MIN at least 16, MAX at most 1048576) or buzhash (128 to "
                   "512 KiB).")
@click.option("-p", "--progress/--no-progress", default=None,
              help="Show a progress bar on stderr when it is a terminal (the default, unless "
                   "-q or -Q; --progress=false as in kubo).")
@ipfs_option
def export(path: str, car_file: Path | None, cid_version: int, raw_leaves: bool | None,
           pin: bool, hidden: bool, quiet: bool, quieter: bool, recursive: bool,
           only_hash: bool, wrap: bool, stdin_name: str, chunker: str, progress: bool | None,
           ipfs_api: str | None) -> None:
    """Add PATH (a file, symlink or directory tree; - is stdin) and print /ipfs/<cid>."""
    from ww.app.build import open_embedded, open_ipfs
    from ww.ipfs.api import AddOptions, CoreAPI

    del recursive  # directories are recursive anyway
    source: Path | None = None if _is_stdin(path) else Path(path)
    if source is not None and not source.exists() and not source.is_symlink():
        raise UsageError(f"{path}: no such file or directory")
    if "/" in stdin_name or stdin_name in (".", ".."):
        raise UsageError(f"--stdin-name {stdin_name}: a name in a directory, without '/'")
    if only_hash and car_file is not None:
        raise UsageError("--only-hash stores nothing, so there is no DAG for --car to write")
    options = AddOptions(cid_version=cid_version, raw_leaves=raw_leaves, pin=pin and not only_hash,
                         hidden=hidden, only_hash=only_hash, chunker=_chunker(chunker),
                         wrap=wrap, stdin_name=stdin_name)
    added: list[str] = []
    if quiet and not quieter:
        options = replace(options, on_added=lambda _name, cid: added.append(cid))
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
        show = not (quiet or quieter) if progress is None else progress  # as kubo decides
        cid = _export(api, source, options, car_file, show)
    if quieter:
        click.echo(cid)
    elif quiet:  # as kubo's ipfs add -q: every file, then every directory, the root last
        click.echo("".join(f"{c}\n" for c in added), nl=False)
    else:
        click.echo(f"/ipfs/{cid}")


def _is_stdin(path: str) -> bool:
    """``-`` and the names of standard input: its data is added, not the symlink /dev/stdin is."""
    return path in STDIN_PATHS


def _chunker(chunker: str) -> str:
    """Refuse, before any work, a chunker string kubo would refuse, with kubo's reason."""
    from ww.ipfs.chunker import parse

    try:
        parse(chunker)
    except ChunkerError as e:
        raise ChunkerError(f"--chunker {chunker}: {e}") from None
    return chunker


def _check_car_destination(car_file: Path) -> None:
    """Refuse a CAR destination that cannot be written, before any work is done."""
    parent = car_file.resolve().parent
    if car_file.is_dir():
        raise UsageError(f"--car {car_file}: is a directory; name the CAR file to write")
    if not parent.is_dir():
        raise UsageError(f"--car {car_file}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--car {car_file}: cannot write in {parent}")


def _export(api, path: Path | None, options, car_file: Path | None,  # type: ignore[no-untyped-def]
            show: bool) -> str:
    from ww.ipfs.importer import file_chunks, tree_size

    try:
        name = "stdin" if path is None else path.name or str(path)
        with progress_bar(f"adding {name}", show) as bar:
            if path is None:
                stdin = sys.stdin.buffer
                cid = api.add_stream(_counted(iter(lambda: stdin.read(READ_SIZE), b""), bar),
                                     options)
            else:
                if bar is not None:
                    with contextlib.suppress(OSError):  # the add itself reports what fails
                        files, nbytes = tree_size(path, options.hidden)
                        bar.expect(nbytes, files)
                if path.is_file() and not path.is_symlink() and not options.wrap:
                    cid = api.add_stream(file_chunks(path), options)
                else:
                    cid = api.add_path(path, options)
        if car_file is not None:
            with progress_bar(f"writing {car_file.name}", show):
                _write_car(api, cid, car_file)
    finally:
        api.close()
    return cid


def _counted(chunks: Iterator[bytes], bar: TerminalBar | None) -> Iterator[bytes]:
    """Standard input's pieces, reported to ``bar`` (which cannot know a total)."""
    if bar is None:
        yield from chunks
        return
    for chunk in chunks:
        bar.advance(len(chunk))
        yield chunk
    bar.advance(files=1)


def _write_car(api, cid: str, car_file: Path) -> None:  # type: ignore[no-untyped-def]
    """Write the CAR next to its destination first, then rename: never half a file.

    The temporary file has a random name and is created new (``O_EXCL``, ``O_NOFOLLOW``):
    a name guessed in advance (it was ``.<name>.<pid>.tmp``) and planted as a symlink would
    have had the CAR written through it, over whatever it points at, and the symlink
    renamed to ``car_file``."""
    import secrets

    tmp = car_file.parent / f".{car_file.name}.ww-car-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o666)  # the umask applies, as for any new file
    try:
        with open(fd, "wb") as out:
            api.export_car([cid], out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, car_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
