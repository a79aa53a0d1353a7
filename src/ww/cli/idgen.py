"""`ww idgen`: a new Ed25519 private key in libp2p's protobuf encoding."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--raw", is_flag=True, help="Write the protobuf bytes instead of base58btc text.")
def idgen(raw: bool) -> None:
    """Generate an Ed25519 private key (libp2p protobuf encoding, base58btc unless --raw)."""
    from ww.core.identity import PrivateKey

    key = PrivateKey.generate()
    if raw:
        sys.stdout.buffer.write(key.to_protobuf())
        sys.stdout.buffer.flush()
    else:
        click.echo(key.to_text())
