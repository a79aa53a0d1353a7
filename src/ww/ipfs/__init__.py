"""IPFS for wetware and for programs that embed it: one interface, two backends.

::

    from ww.ipfs import AsyncCoreAPI, EmbeddedNode, KuboClient, NotFoundError

    node = EmbeddedNode("/var/lib/app/ipfs")      # a repository of its own, no daemon
    cid = node.add_stream([b"hello\\n"])          # synchronous: blocks the calling thread
    kubo = KuboClient("/ip4/127.0.0.1/tcp/5001")  # the same calls on a kubo node's RPC API

    async with AsyncCoreAPI(node) as ipfs:        # asyncio: each call in a worker thread,
        info = await ipfs.stat(cid)               # cancelled with the task that awaits it

:class:`CoreAPI` is the interface both backends implement (kubo's CoreAPI idea); the values
it returns are plain frozen dataclasses (:class:`Entry`, :class:`Stat`, :class:`Link`,
:class:`PeerInfo`).  Synchronous work runs under a :class:`CancelToken`
(``with cancellable(token): ...``); cancelled, the call stops and raises
:class:`CallCancelled`.  Every error is an :class:`IpfsError` whose ``str`` is one line fit
for a user.  The names below are the public API; the submodules are wetware's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import (
    AddOptions,
    BackendUnavailableError,
    CallCancelled,
    CancelToken,
    CoreAPI,
    CorruptBlockError,
    Entry,
    EntryType,
    InvalidPathError,
    IpfsError,
    Link,
    NotAFileError,
    NotFoundError,
    PeerInfo,
    RepoStat,
    Stat,
    UnsupportedError,
    cancellable,
)

if TYPE_CHECKING:
    from .aio import AsyncCoreAPI
    from .backend import open_backend
    from .kubo import KuboClient
    from .node import EmbeddedNode

__all__ = [
    # the interface, synchronous and asynchronous
    "CoreAPI",
    "AsyncCoreAPI",
    # the backends
    "EmbeddedNode",
    "KuboClient",
    "open_backend",
    # values
    "AddOptions",
    "Entry",
    "EntryType",
    "Link",
    "PeerInfo",
    "RepoStat",
    "Stat",
    # cancellation
    "CancelToken",
    "cancellable",
    # errors
    "IpfsError",
    "BackendUnavailableError",
    "CallCancelled",
    "CorruptBlockError",
    "InvalidPathError",
    "NotAFileError",
    "NotFoundError",
    "UnsupportedError",
]

# Imported on first use: the backends pull in the importer, the repository and (kubo) HTTP,
# which a program that only needs the values or errors (a cell) should not pay for.
_LAZY = {
    "AsyncCoreAPI": ".aio",
    "EmbeddedNode": ".node",
    "KuboClient": ".kubo",
    "open_backend": ".backend",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
