"""The process-execution capability a cell uses: ``session.exec``.

``spawn`` starts a sub-cell (a program from ``/ipfs/...`` or a local path the operator
allowed) in a jail of its own, handing it a subset of this cell's capabilities::

    child = await session.exec.spawn("/ipfs/<cid>", "arg", ipfs=True, ipfs_read_only=True)
    async for piece in child.stdout.chunks():
        ...
    status = await child.wait()
"""

from __future__ import annotations

import signal as _signal
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from ww.cell._session import call

CHUNK = 64 * 1024


class Stream:
    """A sub-cell's stdout or stderr."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap

    async def read(self, count: int = CHUNK) -> bytes:
        """Up to ``count`` bytes, waiting for at least one; ``b""`` at end of stream."""
        return bytes((await call(self._cap.read(count))).data)

    async def chunks(self, count: int = CHUNK) -> AsyncIterator[bytes]:
        """Every piece until the end of the stream."""
        while piece := await self.read(count):
            yield piece

    async def read_all(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])


class Process:
    """A running sub-cell: its stdin, stdout and stderr, its exit status, signals."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap
        self._stdin = cap.stdin().stream  # pipelined: no round trip before first use
        self.stdout = Stream(cap.stdout().stream)
        self.stderr = Stream(cap.stderr().stream)

    async def write(self, data: bytes) -> None:
        """Write to the sub-cell's stdin."""
        await call(self._stdin.write(bytes(data)))

    async def close_stdin(self) -> None:
        """The sub-cell reads end-of-file."""
        await call(self._stdin.close())

    async def wait(self) -> int:
        """The exit status, as ``ww run`` reports it (128+n when killed by signal n)."""
        return int((await call(self._cap.wait())).status)

    async def kill(self, signum: int = _signal.SIGTERM) -> None:
        """Send SIGTERM (default), SIGINT, SIGHUP or SIGKILL."""
        await call(self._cap.kill(int(signum)))


class Executor:
    """The process-execution capability."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap

    async def spawn(self, executable: str, *args: str, env: Mapping[str, str] | None = None,
                    console: bool = False, ipfs: bool = False, ipfs_read_only: bool = False,
                    ipfs_roots: Iterable[str] = (), can_exec: bool = False) -> Process:
        """Start ``executable`` with ``args`` as a sub-cell.

        The keyword flags choose which of this cell's capabilities the child gets (never
        more than this cell holds: asking for more raises CapabilityDenied).  ``env`` is the
        child's whole environment.
        """
        grant = {"console": console, "ipfs": ipfs, "ipfsReadOnly": ipfs_read_only,
                 "ipfsRoots": list(ipfs_roots), "exec": can_exec}
        entries = [f"{k}={v}" for k, v in (env or {}).items()]
        result = await call(self._cap.spawn(executable, list(args), entries, grant))
        return Process(result.process)
