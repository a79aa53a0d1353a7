"""The SDK a Python cell imports.

Asynchronous::

    import ww.cell

    async def main():
        async with ww.cell.connect() as session:      # fd 3, then Host.login
            await session.console.println("hello")

    ww.cell.run(main())          # asyncio.run(main()) on the fastest loop there is

Synchronous, for scripts::

    with ww.cell.session() as session:
        session.console.println("hello")

    db = os.fdopen(ww.cell.fd("db"))                  # the fd the operator named "db"

A capability the operator did not grant raises :class:`CapabilityNotGranted` on first
use of ``session.<name>``, which names the ``ww run`` flag that would grant it.  A call
outside a narrowed capability's grant raises :class:`CapabilityDenied`; uncaught in the
synchronous form, either ends the cell with status 65.

With an identity (``ww run --identity``, or ``session(identity=key)``) the login is signed
by :class:`Signer`; ``session.peer_id`` is then the cell's peer id.  Sub-cells:
``session.exec.spawn("/ipfs/<cid>", "arg", ipfs=True, ipfs_read_only=True)``.
"""

from __future__ import annotations

from ww.cell._errors import (
    AuthenticationFailed,
    CapabilityDenied,
    CapabilityNotGranted,
    CellError,
    FdNotProvided,
    RemoteError,
)
from ww.cell._exec import Executor, Process, Stream
from ww.cell._fds import fd
from ww.cell._ipfs import Entry, EntryType, Ipfs, Link, PeerInfo, Stat
from ww.cell._p2p import P2P, RemoteService, Service
from ww.cell._session import Console, Session, Signer, connect, run
from ww.cell._sync import (
    SyncConsole,
    SyncExecutor,
    SyncIpfs,
    SyncP2P,
    SyncProcess,
    SyncRemoteService,
    SyncSession,
    SyncStream,
    session,
)

__all__ = [
    # connecting
    "connect",
    "run",
    "session",
    "fd",
    "Signer",
    # the asynchronous face
    "Session",
    "Console",
    "Ipfs",
    "Executor",
    "Process",
    "Stream",
    "P2P",
    "RemoteService",
    "Service",
    # the synchronous face: the same calls, blocking
    "SyncSession",
    "SyncConsole",
    "SyncIpfs",
    "SyncExecutor",
    "SyncProcess",
    "SyncStream",
    "SyncP2P",
    "SyncRemoteService",
    # values the IPFS calls return
    "Entry",
    "EntryType",
    "Link",
    "PeerInfo",
    "Stat",
    # errors
    "CellError",
    "AuthenticationFailed",
    "CapabilityDenied",
    "CapabilityNotGranted",
    "FdNotProvided",
    "RemoteError",
]
