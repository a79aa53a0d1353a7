"""The synchronous face of the SDK, for scripts: the asynchronous one, call for call.

Every class of the asynchronous SDK has a ``Sync`` twin with the same methods, arguments and
results, blocking instead of awaiting (as httpx's ``Client`` mirrors its ``AsyncClient``):
a coroutine becomes a call that returns its result, an async iterator an iterator, and a
wrapper a ``Sync`` wrapper.  Each call runs the asynchronous SDK on the session's private
event loop until it completes; between calls nothing runs (an exported service is served
only during calls and :meth:`SyncP2P.serve`).
"""

from __future__ import annotations

import signal as _signal
import socket
import sys
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import capnp

from ww.cell._errors import AuthenticationFailed, CapabilityDenied, CapabilityNotGranted
from ww.cell._exec import CHUNK as _STREAM_CHUNK
from ww.cell._exec import Executor, Process, Stream
from ww.cell._ipfs import Entry, Ipfs, PeerInfo, Stat
from ww.cell._p2p import P2P, RemoteService
from ww.cell._session import Console, Session, open_session
from ww.core import bridge

__all__ = [
    "SyncConsole",
    "SyncExecutor",
    "SyncIpfs",
    "SyncP2P",
    "SyncProcess",
    "SyncRemoteService",
    "SyncSession",
    "SyncStream",
    "session",
]

T = TypeVar("T")


class _Loop:
    """The session's event loop, run until each call completes."""

    def __init__(self) -> None:
        self.loop = bridge.new_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def iterate(self, it: AsyncIterator[T]) -> Iterator[T]:
        """The items of ``it``, each fetched on the loop; leaving early closes ``it``."""
        try:
            while True:
                try:
                    item = self.loop.run_until_complete(it.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None and not self.loop.is_closed():
                self.loop.run_until_complete(aclose())


class SyncConsole:
    """:class:`ww.cell.Console`, blocking."""

    def __init__(self, console: Console, loop: _Loop) -> None:
        self._async = console
        self._loop = loop

    def println(self, line: str) -> None:
        self._loop.run(self._async.println(line))

    def ping(self, payload: bytes = b"") -> bytes:
        return self._loop.run(self._async.ping(payload))


class SyncIpfs:
    """:class:`ww.cell.Ipfs`, blocking.  Paths are ``/ipfs/<cid>[/sub/path]`` or
    ``<cid>[/sub/path]``."""

    def __init__(self, ipfs: Ipfs, loop: _Loop) -> None:
        self._async = ipfs
        self._loop = loop

    def add(self, data: Any, *, cid_version: int = 0, raw_leaves: bool | None = None,
            pin: bool = True, only_hash: bool = False) -> str:
        """Add one file (bytes, a binary file object, or an iterable of bytes); its CID."""
        return self._loop.run(self._async.add(data, cid_version=cid_version,
                                              raw_leaves=raw_leaves, pin=pin,
                                              only_hash=only_hash))

    def cat_stream(self, path: str, offset: int = 0,
                   length: int | None = None) -> Iterator[bytes]:
        """A file's bytes in pieces of up to 1 MiB, reading ahead."""
        return self._loop.iterate(self._async.cat_stream(path, offset, length))

    def cat(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """A whole file (or a range of it) as bytes."""
        return self._loop.run(self._async.cat(path, offset, length))

    def ls(self, path: str) -> list[Entry]:
        return self._loop.run(self._async.ls(path))

    def stat(self, path: str) -> Stat:
        return self._loop.run(self._async.stat(path))

    def resolve(self, path: str) -> str:
        return self._loop.run(self._async.resolve(path))

    def pin(self, path: str, recursive: bool = True) -> None:
        self._loop.run(self._async.pin(path, recursive))

    def unpin(self, path: str) -> None:
        self._loop.run(self._async.unpin(path))

    def pins(self) -> list[str]:
        return self._loop.run(self._async.pins())

    def id(self) -> PeerInfo:
        return self._loop.run(self._async.id())

    def connect(self, addr: str) -> None:
        self._loop.run(self._async.connect(addr))

    def peers(self) -> list[PeerInfo]:
        return self._loop.run(self._async.peers())

    def attenuate(self, read_only: bool = False, roots: Iterable[str] = ()) -> SyncIpfs:
        """A narrower IPFS capability: read-only, and/or only the DAGs under ``roots``."""
        return SyncIpfs(self._loop.run(self._async.attenuate(read_only, roots)), self._loop)


class SyncStream:
    """A sub-cell's stdout or stderr, blocking."""

    def __init__(self, stream: Stream, loop: _Loop) -> None:
        self._async = stream
        self._loop = loop

    def read(self, count: int = _STREAM_CHUNK) -> bytes:
        """Up to ``count`` bytes, waiting for at least one; ``b""`` at end of stream."""
        return self._loop.run(self._async.read(count))

    def chunks(self, count: int = _STREAM_CHUNK) -> Iterator[bytes]:
        """Every piece until the end of the stream."""
        return self._loop.iterate(self._async.chunks(count))

    def read_all(self) -> bytes:
        return self._loop.run(self._async.read_all())


class SyncProcess:
    """A running sub-cell, blocking."""

    def __init__(self, process: Process, loop: _Loop) -> None:
        self._async = process
        self._loop = loop
        self.stdout = SyncStream(process.stdout, loop)
        self.stderr = SyncStream(process.stderr, loop)

    def write(self, data: bytes) -> None:
        """Write to the sub-cell's stdin."""
        self._loop.run(self._async.write(data))

    def close_stdin(self) -> None:
        """The sub-cell reads end-of-file."""
        self._loop.run(self._async.close_stdin())

    def wait(self) -> int:
        """The exit status, as ``ww run`` reports it (128+n when killed by signal n)."""
        return self._loop.run(self._async.wait())

    def kill(self, signum: int = _signal.SIGTERM) -> None:
        """Send SIGTERM (default), SIGINT, SIGHUP or SIGKILL."""
        self._loop.run(self._async.kill(signum))


class SyncExecutor:
    """The process-execution capability, blocking."""

    def __init__(self, executor: Executor, loop: _Loop) -> None:
        self._async = executor
        self._loop = loop

    def spawn(self, executable: str, *args: str, env: Mapping[str, str] | None = None,
              console: bool = False, ipfs: bool = False, ipfs_read_only: bool = False,
              ipfs_roots: Iterable[str] = (), can_exec: bool = False) -> SyncProcess:
        """Start ``executable`` with ``args`` as a sub-cell (see :meth:`Executor.spawn`)."""
        process = self._loop.run(self._async.spawn(
            executable, *args, env=env, console=console, ipfs=ipfs,
            ipfs_read_only=ipfs_read_only, ipfs_roots=ipfs_roots, can_exec=can_exec))
        return SyncProcess(process, self._loop)


class SyncRemoteService:
    """A remote cell's `Service`, blocking."""

    def __init__(self, service: RemoteService, loop: _Loop) -> None:
        self._async = service
        self._loop = loop

    def call(self, method: str, *args: str) -> str:
        return self._loop.run(self._async.call(method, *args))


class SyncP2P:
    """The p2p capability, blocking.  An exported service is served while a call runs, and
    for as long as :meth:`serve` does."""

    def __init__(self, p2p: P2P, loop: _Loop) -> None:
        self._async = p2p
        self._loop = loop

    def export(self, service: Any) -> None:
        self._loop.run(self._async.export(service))

    def id(self) -> tuple[str, list[str]]:
        return self._loop.run(self._async.id())

    def dial(self, addr: str, interface: Any = None) -> Any:
        """The capability the cell at ``addr`` exports (a raw pycapnp client: its calls are
        awaited on this session's loop, for example inside :meth:`serve`)."""
        return self._loop.run(self._async.dial(addr, interface))

    def dial_service(self, addr: str) -> SyncRemoteService:
        return SyncRemoteService(self._loop.run(self._async.dial_service(addr)), self._loop)

    def serve(self, seconds: float | None = None) -> None:
        """Serve the export: for ``seconds``, or forever."""
        self._loop.run(self._async.serve(seconds))


class _Connection:
    """The event loop, the KJ loop and the RPC client a session and its relogins share."""

    def __init__(self) -> None:
        self.loop = _Loop()
        self.kj = capnp.kj_loop()
        self.client: Any = None
        self.loop.run(self.kj.__aenter__())

    def close(self) -> None:
        if self.loop.loop.is_closed():
            return
        if self.client is not None:
            self.client.close()
        self.loop.run(self.kj.__aexit__(None, None, None))
        self.loop.loop.close()


class SyncSession:
    """A logged-in session whose methods block (:class:`ww.cell.Session`, blocking).  Close
    it (or use ``with``) when done."""

    def __init__(self, sock: socket.socket | None = None, identity: Any = None) -> None:
        """Connect over fd 3 (or ``sock``) and log in (``identity``: see ``connect``)."""
        conn = _Connection()
        try:
            client, async_session = conn.loop.run(open_session(sock, identity))
        except AuthenticationFailed:
            # The host says why in one line and stops the cell (ww run exits 64): leave
            # quietly, without a traceback.
            conn.close()
            raise SystemExit(64) from None
        except BaseException:
            conn.close()
            raise
        conn.client = client
        self._init(async_session, conn)

    def _init(self, async_session: Session, conn: _Connection) -> None:
        self._async = async_session
        self._conn = conn
        self._loop = conn.loop
        self.granted: list[str] = async_session.granted
        self.peer_id: str | None = async_session.peer_id

    def relogin(self) -> SyncSession:
        """Log in again on the same connection (a fresh session object from the host)."""
        again = SyncSession.__new__(SyncSession)
        again._init(self._loop.run(self._async.relogin()), self._conn)
        return again

    @property
    def console(self) -> SyncConsole:
        return SyncConsole(self._async.console, self._loop)

    @property
    def ipfs(self) -> SyncIpfs:
        return SyncIpfs(self._async.ipfs, self._loop)

    @property
    def exec(self) -> SyncExecutor:
        """The process-execution capability: ``spawn`` sub-cells."""
        return SyncExecutor(self._async.exec, self._loop)

    @property
    def p2p(self) -> SyncP2P:
        """The p2p capability: ``export`` this cell, ``dial`` other cells (docs/p2p.md)."""
        return SyncP2P(self._async.p2p, self._loop)

    def close(self) -> None:
        """Hang up (the session and every relogin of it)."""
        self._conn.close()

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
        if isinstance(exc, CapabilityNotGranted | CapabilityDenied):
            # An uncaught "not granted" or "denied" ends the cell with the spec's status 65.
            print(f"cell: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code)

    def __repr__(self) -> str:
        return f"<SyncSession granted={self.granted!r}>"


def session(sock: socket.socket | None = None, identity: Any = None) -> SyncSession:
    """Connect over fd 3 and log in, synchronously (``identity``: see ``connect``)."""
    return SyncSession(sock, identity)
