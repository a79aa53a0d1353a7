"""The .capnp files: the protocol's single source of truth, shipped inside the package.

``ww schema`` prints :data:`SCHEMA_DIR` so that cells in other languages can compile
against the same files.  Loading is lazy: importing pycapnp costs tens of milliseconds,
which `ww run` only pays once a cell actually speaks on fd 3.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent


@cache
def load(name: str = "cell") -> Any:
    """The compiled schema module for ``<name>.capnp`` (``cell`` or ``ipfs``)."""
    import capnp

    capnp.remove_import_hook()
    # The schemas import "/capnp/c++.capnp" (for their C++ namespace); pycapnp ships that file
    # in its own package directory, as it does "/capnp/stream.capnp" (for `-> stream`), so
    # the directory above it is on the import path.  There is one copy of each: two files
    # with one ID abort the process in pycapnp.
    capnp_root = str(Path(capnp.__file__).resolve().parent.parent)
    return capnp.load(str(SCHEMA_DIR / f"{name}.capnp"), imports=[capnp_root, str(SCHEMA_DIR)])
