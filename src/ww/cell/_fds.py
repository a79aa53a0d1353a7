"""Named file descriptors: ``fd("db")`` is the number the operator's ``--fd db=N`` landed at."""

from __future__ import annotations

import os

from ww.cell._errors import FdNotProvided

RPC_FD = 3  # always the Cap'n Proto socket (decisions.md, 1)


def fd(name: str) -> int:
    """The fd number announced in ``WW_FD_<NAME>``; raises FdNotProvided when absent."""
    var = "WW_FD_" + name.upper()
    value = os.environ.get(var)
    if value is None:
        raise FdNotProvided(
            f"no file descriptor named {name!r}: {var} is not set "
            f"(the operator passes one with 'ww run --fd {name}=<host fd>')"
        )
    if not value.isdigit():
        raise FdNotProvided(f"{var}={value!r} is not a file descriptor number")
    return int(value)
