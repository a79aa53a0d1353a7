"""`ww schema`: print the directory holding the protocol's .capnp files."""

from __future__ import annotations

import click


@click.command()
def schema() -> None:
    """Print the directory holding the Cap'n Proto schema files (cell.capnp, ipfs.capnp)."""
    from ww.schema import SCHEMA_DIR

    click.echo(str(SCHEMA_DIR))
