"""`ww repo check`, `ww repo gc` and `ww repo stat`: the IPFS repository.

Parsing and exit codes only; the work is in ww.ipfs (the node comes from ww.app).  `check`
and `gc` work on the embedded repository in $WW_HOME; `stat` also on a kubo node's
(``--ipfs``).  `check` exits 0 when the repository is clean and 1 when something needs
attention, each with one line on stdout.
"""

from __future__ import annotations

from pathlib import Path

import click

from ww.cli._ipfs_option import ipfs_option
from ww.cli._output import columns
from ww.core.errors import EXIT_FAILURE


@click.group()
def repo() -> None:
    """Check, clean or measure the IPFS repository ($WW_HOME, default ~/.ww)."""


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


@repo.command()
@click.option("-v", "--verbose", is_flag=True,
              help="Also list leftover temp files and stray files (corrupt and missing "
                   "blocks are always listed).")
def check(verbose: bool) -> int:
    """Verify every block against its CID and every pin's DAG; exit 1 if anything is wrong."""
    from ww.app.build import open_embedded

    node = open_embedded()
    try:
        found = node.check()
        where = node.repo_path
    finally:
        node.close()
    problems = [
        _plural(len(found.corrupt_blocks), "corrupt block") if found.corrupt_blocks else "",
        _plural(len(found.missing_blocks), "missing block") if found.missing_blocks else "",
        _plural(len(found.temp_files), "leftover temp file") if found.temp_files else "",
    ]
    problems = [p for p in problems if p]
    strays = f", {_plural(len(found.stray_files), 'stray file')}" if found.stray_files else ""
    if found.ok:
        click.echo(f"repository {where}: clean ({_plural(found.blocks, 'block')}{strays})")
    else:
        hint = " (run 'ww repo gc' to remove leftovers)" if found.temp_files else ""
        click.echo(f"repository {where}: {', '.join(problems)} "
                   f"of {_plural(found.blocks, 'block')}{strays}{hint}")
    for path in found.corrupt_blocks:  # always: each is data lost, and which one matters
        click.echo(f"  corrupt {_multihash_of(path)} {path}")
    for cid in found.missing_blocks:
        click.echo(f"  missing {cid}")
    if verbose:
        for path in [*found.temp_files, *found.stray_files]:
            click.echo(f"  {path}")
    return 0 if found.ok else EXIT_FAILURE


def _multihash_of(path: Path) -> str:
    """A stored block's name as kubo's ``ipfs repo verify`` and ``ipfs refs local`` print
    it: the CIDv1 of its multihash (the file's name, in hex) with the raw codec, since the
    blockstore keeps no codec.  A sha2-256 block is also named in the CIDv0 form
    (``(Qm...)``) that ``ww export``, ``ww pin ls`` and ``ww ls`` print for a dag-pb block:
    both name the one block stored under that multihash."""
    from ww.core.cid import CID, RAW
    from ww.core.multihash import SHA2_256

    try:
        mh = bytes.fromhex(path.name)
        name = str(CID.v1(RAW, mh))
    except ValueError:
        return "(unnamed)"
    return f"{name} ({CID.v0(mh)})" if len(mh) == 34 and mh[:2] == bytes([SHA2_256, 32]) else name


@repo.command()
@click.option("-q", "--quiet", is_flag=True,
              help="Print only the CIDs of the removed blocks, without the summary.")
def gc(quiet: bool) -> int:
    """Remove unpinned blocks and the leftovers of interrupted writes.

    Prints each block as it is removed (``removed <cid>``, as kubo's ipfs repo gc: the CIDv1
    of its multihash with the raw codec), then what was freed."""
    from ww.app.build import open_embedded

    node = open_embedded()
    try:
        report = node.gc(lambda cid: click.echo(cid if quiet else f"removed {cid}"))
        where = node.repo_path
    finally:
        node.close()
    if not quiet:
        click.echo(f"repository {where}: removed {_plural(report.removed_blocks, 'block')} "
                   f"({report.freed_bytes} bytes) and "
                   f"{_plural(report.removed_temp_files, 'temp file')}")
    return 0


_MIB = 1024 * 1024


@repo.command()
@click.option("-s", "--size-only", is_flag=True, help="Print only RepoSize and StorageMax.")
@click.option("-H", "--human", is_flag=True, help="Print the sizes in MiB (as kubo does).")
@ipfs_option
def stat(size_only: bool, human: bool, ipfs_api: str | None) -> None:
    """Print the repository's size and block count, as kubo's ipfs repo stat: NumObjects,
    RepoSize (the blocks' bytes), StorageMax (only where there is a limit: kubo's),
    RepoPath and Version."""
    from ww.app.build import open_ipfs

    api = open_ipfs(ipfs_api, check=bool(ipfs_api))
    try:
        info = api.repo_stat()
    finally:
        api.close()
    rows = []
    if not size_only:
        rows.append(["NumObjects:", str(info.num_objects)])
    rows.append(_size("RepoSize", info.repo_size, human))
    if info.storage_max is not None:
        rows.append(_size("StorageMax", info.storage_max, human))
    if not size_only:
        rows += [["RepoPath:", info.repo_path], ["Version:", info.version]]
    for line in columns(rows):
        click.echo(line)


def _size(label: str, value: int, human: bool) -> list[str]:
    """kubo's line: in whole MiB with --human, unless that rounds it to 0."""
    if human and value // _MIB > 0:
        return [f"{label} (MiB):", str(value // _MIB)]
    return [f"{label}:", str(value)]
