"""The SDK a Python cell imports.

Asynchronous::

    import ww.cell

    async def main():
        async with ww.cell.connect() as session:      # fd 3, then Host.login
            await session.console.println("hello")

Synchronous, for scripts::

    with ww.cell.session() as session:
        session.console.println("hello")

    db = os.fdopen(ww.cell.fd("db"))                  # the fd the operator named "db"

A capability the operator did not grant raises :class:`CapabilityNotGranted` on first
use of ``session.<name>``, which names the ``ww run`` flag that would grant it.
"""

from __future__ import annotations

from ww.cell._errors import CapabilityNotGranted, CellError, FdNotProvided, RemoteError
from ww.cell._fds import fd
from ww.cell._session import Console, Session, connect
from ww.cell._sync import SyncSession, session

__all__ = [
    "CapabilityNotGranted",
    "CellError",
    "Console",
    "FdNotProvided",
    "RemoteError",
    "Session",
    "SyncSession",
    "connect",
    "fd",
    "session",
]
