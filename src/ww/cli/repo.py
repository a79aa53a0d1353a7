"""`ww repo check` and `ww repo gc`: the embedded IPFS repository in $WW_HOME.

Parsing and exit codes only; the work is in ww.ipfs (the node comes from ww.app).  `check`
exits 0 when the repository is clean and 1 when something needs attention, each with one
line on stdout.
"""

from __future__ import annotations

from pathlib import Path

import click

from ww.core.errors import EXIT_FAILURE


@click.group()
def repo() -> None:
    """Check or clean the embedded IPFS repository ($WW_HOME, default ~/.ww)."""


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
    """A stored block's name as kubo's ``ipfs refs local`` prints it: the CIDv1 of its
    multihash (the file's name, in hex) with the raw codec, since the blockstore keeps no
    codec."""
    from ww.core.cid import CID, RAW

    try:
        return str(CID.v1(RAW, bytes.fromhex(path.name)))
    except ValueError:
        return "(unnamed)"


@repo.command()
def gc() -> int:
    """Remove unpinned blocks and the leftovers of interrupted writes."""
    from ww.app.build import open_embedded

    node = open_embedded()
    try:
        report = node.gc()
        where = node.repo_path
    finally:
        node.close()
    click.echo(f"repository {where}: removed {_plural(report.removed_blocks, 'block')} "
               f"({report.freed_bytes} bytes) and "
               f"{_plural(report.removed_temp_files, 'temp file')}")
    return 0
