"""Connecting to the host over fd 3, logging in, and typed capability wrappers.

Login (docs/auth.md): the SDK first asks the host for the identity the operator handed the
cell (``Host.identity``, once, before login).  With one, or with a key the cell brings
itself (``connect(identity=...)``), it logs in with a :class:`Signer` that answers the host's
challenge; without, it logs in with no account.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import capnp

from ww.cell._errors import (
    AuthenticationFailed,
    CapabilityDenied,
    CapabilityNotGranted,
    CellError,
    RemoteError,
)
from ww.cell._fds import RPC_FD
from ww.core import capnp_stream
from ww.core.foreign import kj_reason
from ww.schema import load

if TYPE_CHECKING:
    from ww.cell._exec import Executor
    from ww.cell._ipfs import Ipfs
    from ww.cell._p2p import P2P

T = TypeVar("T")
_cell = load("cell")
_rpc_fd_used = False  # fd 3 carries exactly one connection per cell


# Prefixes of the host's messages that mean a denial or a failed login (docs/auth.md).
_NAMED_ERRORS: tuple[tuple[str, type[RemoteError]], ...] = (
    ("capability denied: ", CapabilityDenied),
    ("authentication failed: ", AuthenticationFailed),
)


def remote_error(e: Exception) -> RemoteError:
    """Turn a Cap'n Proto exception into a RemoteError carrying the host's one-line reason."""
    text = kj_reason(e)
    for prefix, cls in _NAMED_ERRORS:
        if prefix in text:
            return cls(prefix + text.split(prefix, 1)[1])
    return RemoteError(text)


async def call(promise: Any) -> Any:
    """Await a capability call, raising RemoteError instead of a raw KjException."""
    try:
        return await promise
    except capnp.KjException as e:
        raise remote_error(e) from None


class Console:
    """The console capability: lines on the operator's terminal."""

    def __init__(self, cap: Any) -> None:
        self._cap = cap

    async def println(self, line: str) -> None:
        await call(self._cap.println(line))

    async def ping(self, payload: bytes = b"") -> bytes:
        return bytes((await call(self._cap.ping(payload))).payload)


class Signer(_cell.Signer.Server):  # type: ignore[name-defined,misc]
    """Answers the host's login challenge with an Ed25519 key.

    ``key`` is a :class:`ww.core.identity.PrivateKey` or a key as ``ww idgen`` writes it
    (raw protobuf bytes or base58 text).  The signature covers the domain-separated message
    ``b"ww-login-v1\\x00" + challenge``, never the bare nonce.
    """

    def __init__(self, key: Any) -> None:
        from ww.core.identity import PrivateKey, parse_private_key

        self.key = key if isinstance(key, PrivateKey) else parse_private_key(key)

    @property
    def peer_id(self) -> str:
        return str(self.key.peer_id)

    async def sign(self, challenge: bytes, _context: Any, **kwargs: Any) -> None:
        from ww.core.identity import sign_login

        public_key, signature = sign_login(self.key, bytes(challenge))
        _context.results.publicKey = public_key
        _context.results.signature = signature


class Session:
    """The capabilities the operator granted, as returned by ``Host.login``."""

    def __init__(self, results: Any, host: Any, signer: Signer | bool | None = None) -> None:
        self._raw = results.session
        self._host = host
        self._signer = signer
        self.granted: list[str] = list(self._raw.granted)
        self.peer_id: str | None = signer.peer_id if isinstance(signer, Signer) else None

    async def relogin(self) -> Session:
        """Log in again on the same connection (a fresh session object from the host)."""
        return Session(await _login(self._host, self._signer), self._host, self._signer)

    def _cap(self, name: str) -> Any:
        if name not in self.granted:
            raise CapabilityNotGranted(name)
        return getattr(self._raw, name)

    @property
    def console(self) -> Console:
        return Console(self._cap("console"))

    @property
    def ipfs(self) -> Ipfs:
        cap = self._cap("ipfs")
        from ww.cell._ipfs import Ipfs

        return Ipfs(cap)

    @property
    def exec(self) -> Executor:
        """The process-execution capability: ``spawn`` sub-cells."""
        cap = self._cap("exec")
        from ww.cell._exec import Executor

        return Executor(cap)

    @property
    def p2p(self) -> P2P:
        """The p2p capability: ``export`` this cell, ``dial`` other cells (docs/p2p.md)."""
        cap = self._cap("p2p")
        from ww.cell._p2p import P2P

        return P2P(cap)


async def _login(host: Any, signer: Signer | None | bool) -> Any:
    return await call(host.login(signer) if isinstance(signer, Signer) else host.login())


async def open_session(sock: socket.socket | None = None,
                       identity: Any = None) -> tuple[Any, Session]:
    """Connect over fd 3 (or ``sock``) and log in; returns (client, session).

    ``identity``: a key (or a :class:`Signer`) to log in with; by default the identity the
    operator handed the cell (``ww run --identity``), if any; ``False``: log in without one.
    """
    global _rpc_fd_used
    if sock is None:
        if _rpc_fd_used:
            raise CellError(
                "fd 3 was already used by an earlier connection: it carries one RPC "
                "connection per cell; keep the first session (or call relogin on it)"
            )
        try:
            sock = socket.socket(fileno=RPC_FD)
        except OSError as e:
            raise CellError(
                f"fd 3 is not an RPC socket ({e.strerror}): run the cell with 'ww run'"
            ) from None
        _rpc_fd_used = True
    stream = await capnp_stream.connect(sock)
    client = capnp.TwoPartyClient(stream)
    host = client.bootstrap().cast_as(_cell.Host)
    if identity is None:
        key = bytes((await call(host.identity())).key)
        identity = key or False
    signer = identity if identity is False or isinstance(identity, Signer) else Signer(identity)
    return client, Session(await _login(host, signer), host, signer)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a cell's ``main`` as ``asyncio.run(main)`` does, on uvloop's event loop (ww
    depends on it; ``WW_EVENT_LOOP=asyncio`` in the cell's environment asks for the
    standard library's): pycapnp's CPU a call about 45% lower, a Python cell's CPU a
    remote call about a fifth lower (docs/benchmarks.md, "uvloop under hosts and Python
    cells").  ``asyncio.run(main())`` works the same, slower.

    On uvloop, a pycapnp stream of the cell's own must not be made with
    ``capnp.AsyncIoStream.create_connection``: pycapnp's protocol pauses the transport from
    inside ``get_buffer``, which crashes libuv.  :func:`connect`'s stream is ww's own.
    """
    from ww.core import bridge

    return bridge.run(main)


@contextlib.asynccontextmanager
async def connect(sock: socket.socket | None = None,
                  identity: Any = None) -> AsyncIterator[Session]:
    """``async with connect() as session``: fd 3, login, and the KJ event loop around it."""
    async with capnp.kj_loop():
        client, session = await open_session(sock, identity)
        try:
            yield session
        finally:
            client.close()
