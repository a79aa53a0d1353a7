"""`ww idgen`: a new Ed25519 private key in libp2p's protobuf encoding."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--raw", is_flag=True, help="Write the protobuf bytes instead of base58btc text.")
@click.option("-o", "--output", "output", metavar="FILE",
              help="Write the key to FILE, a new file of mode 0600 (never over an existing "
                   "file or symlink), and print its peer id instead; '-' is stdout, as "
                   "without -o.")
def idgen(raw: bool, output: str | None) -> None:
    """Generate an Ed25519 private key (libp2p protobuf encoding, base58btc unless --raw).

    Without -o the key goes to stdout (to a file others can read, as the shell makes one
    with 'ww idgen > FILE', with a warning naming -o).  With -o FILE it is written to FILE,
    complete or not at all, readable by its owner only, and the key's peer id is printed
    (what --allow and a policy name it by; 'ww id --key FILE' prints it again later).
    """
    from ww.core.errors import UsageError
    from ww.core.identity import PrivateKey, write_key_file

    if output == "":
        raise UsageError("-o '': an empty FILE names no file (give a path such as ./cell.key)")
    if output == "-":  # stdout, as `ww import -o -`: never a key left in a file named ./-
        output = None
    key = PrivateKey.generate()
    if output is None:
        _warn_if_stdout_is_open_to_others()
    if output is not None:
        write_key_file(output, key, raw=raw)
        click.echo(key.peer_id)
    elif raw:
        sys.stdout.buffer.write(key.to_protobuf())
        sys.stdout.buffer.flush()
    else:
        click.echo(key.to_text())


def _warn_if_stdout_is_open_to_others() -> None:
    """``ww idgen > cell.key``: the shell made the file with its umask's mode, usually 0644,
    before ww ran.  The key is still written there, as asked, with one warning line naming
    ``-o``, which makes a file of mode 0600."""
    import os
    import stat

    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):  # no stdout, or not a real file (in-process)
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
        click.echo(f"ww: warning: the private key goes to a file group or others can read "
                   f"(mode {stat.S_IMODE(st.st_mode):04o}); 'ww idgen -o FILE' writes a new "
                   "file of mode 0600", err=True)
