"""How :class:`ww.ipfs.kubo.KuboClient` reaches a kubo node: the HTTP transport, a seam.

The client speaks kubo's RPC conventions (commands, ``arg`` parameters, JSON lines, kubo's
error objects); a *transport* only carries one request and hands back the reply, as httpx's
transports do.  :class:`HttpTransport` is the real one (HTTP/1.1 on TCP or a unix socket, the
standard library only); :class:`MockTransport` calls a function instead, so the client's logic
can be tested without a socket.

What a transport promises (:class:`KuboTransport`):

* a failure to reach kubo, or a connection lost or stalled, is a
  :class:`~ww.ipfs.api.BackendUnavailableError` naming the address; a call whose
  :class:`~ww.ipfs.api.CancelToken` is cancelled raises :class:`~ww.ipfs.api.CallCancelled`
  (the connection is shut down, so whatever waits on it wakes) -- both also from a
  :class:`Reply`'s ``read``/``readline``;
* any reply is handed back, whatever its status: judging it is the client's job;
* ``upload`` is **full duplex**: kubo answers ``add`` and ``dag/import`` with one line per
  imported file *while* the body still arrives, so a client that wrote the whole body before
  reading would deadlock once kubo's replies filled the socket buffers.  The reply is read
  on a helper thread while the caller's thread produces and sends the body (so the caller's
  chunk iterator never changes threads); a watchdog bounds every wait on kubo without timing
  out a caller that is slow to produce data.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ww.core.multiaddr import parse as parse_multiaddr
from ww.core.multiaddr import to_http_url

from .api import BackendUnavailableError, CallCancelled, CancelToken, IpfsError, current_token

__all__ = [
    "HttpTransport",
    "KuboRequest",
    "KuboResponse",
    "KuboTransport",
    "MockTransport",
    "Query",
    "Reply",
]

_CHUNK = 256 * 1024  # the coalescing size for uploads

Query = list[tuple[str, str]]
"""A request's query parameters, in order (``arg`` may repeat)."""


class Reply(Protocol):
    """kubo's answer to one request; ``read``/``readline`` raise the transport's errors."""

    status: int
    reason: str

    @property
    def stream_error(self) -> str | None:
        """kubo's ``X-Stream-Error`` trailer: set once a streamed reply that failed after
        its first byte has been read to its end."""

    def read(self, size: int = -1) -> bytes: ...

    def readline(self, limit: int = -1) -> bytes: ...

    def close(self) -> None: ...


class KuboTransport(Protocol):
    """Carries requests to one kubo node (see the module's documentation)."""

    api: str  # the node's address, for messages

    def post(self, command: str, query: Query) -> Reply:
        """``POST /api/v0/<command>?<query>`` with no body; the caller closes the reply."""

    def upload(
        self,
        command: str,
        query: Query,
        content_type: str,
        body: Iterable[bytes | memoryview],
        on_reply: Callable[[Reply], None],
    ) -> None:
        """POST ``body`` while ``on_reply`` reads the reply (on another thread).

        An exception from ``on_reply`` ends the upload and is raised here; so is one from
        ``body`` (the caller's data).  The reply is closed when this returns."""

    def close(self) -> None: ...


# --- the HTTP transport --------------------------------------------------------------------


class _Response(http.client.HTTPResponse):
    """An HTTPResponse that keeps the ``X-Stream-Error`` trailer instead of discarding it
    (``http.client`` normally throws trailers away, and a ``cat`` cut short by a missing
    block would then look complete)."""

    stream_error: str | None = None

    def _read_and_discard_trailer(self) -> None:  # overrides http.client's private hook
        while True:
            line = self.fp.readline(http.client._MAXLINE + 1)  # type: ignore[attr-defined]
            if len(line) > http.client._MAXLINE:  # type: ignore[attr-defined]
                raise http.client.LineTooLong("trailer line")
            if line in (b"\r\n", b"\n", b""):
                return
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "x-stream-error":
                self.stream_error = value.strip()


class _Cancellable:
    """A connection that forgets its caller's cancellation hook (:meth:`HttpTransport._connect`)
    once closed."""

    forget: Callable[[], None] | None = None

    def close(self) -> None:
        forget, self.forget = self.forget, None
        if forget is not None:
            forget()
        super().close()  # type: ignore[misc]


class _HTTPConnection(_Cancellable, http.client.HTTPConnection):
    response_class = _Response

    def __init__(self, host: str, port: int | None, connect_timeout: float, unix_path: str = ""):
        super().__init__(host, port, timeout=connect_timeout)
        self._unix_path = unix_path

    def connect(self) -> None:
        if not self._unix_path:
            super().connect()
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _HTTPSConnection(_Cancellable, http.client.HTTPSConnection):
    response_class = _Response

    def __init__(self, host: str, port: int | None, connect_timeout: float, unix_path: str = ""):
        super().__init__(host, port, timeout=connect_timeout)


class _Watchdog:
    """Bounds the waits on kubo during a full-duplex upload.

    The clock runs only while we wait on kubo: while a send is blocked, and after the body is
    complete while the reply is still coming.  Time spent waiting for the caller's next chunk
    does not count.  When the bound is passed the socket is shut down, which wakes both
    threads with an error.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current wait on kubo began
        self._body_done = False
        self._stop = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="kubo-watchdog", daemon=True)
        self._thread.start()

    def sending(self) -> None:
        with self._lock:
            self._since = time.monotonic()

    def sent(self) -> None:
        with self._lock:
            if not self._body_done:
                self._since = None

    def body_done(self) -> None:
        with self._lock:
            self._body_done = True
            self._since = time.monotonic()

    def received(self) -> None:
        with self._lock:
            if self._body_done:
                self._since = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = min(0.25, self._timeout / 4)
        while not self._stop.wait(tick):
            with self._lock:
                since = self._since
            if since is not None and time.monotonic() - since > self._timeout:
                self.fired = True
                _shutdown(self._sock)
                return


_TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class _SendError(Exception):
    """Sending the request body failed (as opposed to producing it, which is the caller's)."""


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _HttpReply:
    """A :class:`Reply` over an open connection: transport errors become ``lost(err)``."""

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        resp: _Response,
        lost: Callable[[BaseException], IpfsError],
        token: CancelToken,
        on_data: Callable[[], None] | None = None,
    ) -> None:
        self._conn = conn
        self._resp = resp
        self._lost = lost
        self._token = token
        self._on_data = on_data
        self.status = resp.status
        self.reason = resp.reason

    @property
    def stream_error(self) -> str | None:
        return self._resp.stream_error

    def _check(self) -> None:
        # What is already buffered would still be read after the connection's shutdown: the
        # call's token says whether its caller is still there.
        if self._token.cancelled:
            raise self._lost(ConnectionAbortedError())

    def read(self, size: int = -1) -> bytes:
        self._check()
        try:
            data = self._resp.read(None if size < 0 else size)
        except _TRANSPORT_ERRORS as err:
            raise self._lost(err) from None
        if self._on_data is not None:
            self._on_data()
        return data

    def readline(self, limit: int = -1) -> bytes:
        self._check()
        try:
            line = self._resp.readline(limit)
        except _TRANSPORT_ERRORS as err:
            raise self._lost(err) from None
        if self._on_data is not None:
            self._on_data()
        return line

    def close(self) -> None:
        self._conn.close()


class HttpTransport:
    """kubo's RPC API over HTTP/1.1, a fresh connection per request (so a transport is safe
    to share between threads).

    ``api`` is a multiaddr (``/ip4/127.0.0.1/tcp/5001``, ``/dns4/localhost/tcp/5001/http``,
    ``/unix/run/kubo.sock``) or an ``http(s)://host:port`` URL.  ``connect_timeout`` bounds
    reaching the node; ``timeout`` bounds every wait for kubo once connected (it is per wait,
    so a long transfer that keeps moving never times out).  Each connection is shut down
    when the calling thread's call (:func:`ww.ipfs.api.current_token`) is cancelled.
    """

    def __init__(self, api: str, *, timeout: float = 60.0, connect_timeout: float = 5.0) -> None:
        self.api = api
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._unix_path = ""
        self._port: int | None
        if api.startswith("/unix/"):
            self._unix_path = str(parse_multiaddr(api).value("unix"))
            self._scheme, self._host, self._port = "http", "localhost", None
        else:
            url = urllib.parse.urlsplit(to_http_url(api))
            self._scheme, self._host, self._port = url.scheme, url.hostname or "", url.port

    def __repr__(self) -> str:
        return f"HttpTransport({self.api!r})"

    def close(self) -> None:
        """Nothing to release: every request uses its own connection."""

    def _connect(self) -> http.client.HTTPConnection:
        """A fresh connection, shut down when the calling thread's call is cancelled (which
        wakes whatever waits on it: kubo sees the connection close, and stops the work)."""
        token = current_token()
        token.check()
        cls = _HTTPSConnection if self._scheme == "https" else _HTTPConnection
        conn = cls(self._host, self._port, self._connect_timeout, self._unix_path)
        try:
            conn.connect()
        except OSError as err:
            conn.close()
            raise self._unavailable(err) from None
        sock = conn.sock
        assert sock is not None
        sock.settimeout(self._timeout)
        conn.forget = token.on_cancel(lambda: _shutdown(sock))
        return conn

    def _unavailable(self, err: BaseException) -> BackendUnavailableError:
        if isinstance(err, TimeoutError):
            reason = "timed out"
        elif isinstance(err, socket.gaierror):
            reason = f"cannot resolve {self._host!r}"
        else:
            reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
            reason = reason[0].lower() + reason[1:] if reason else reason
        return BackendUnavailableError(
            f"cannot reach the kubo RPC API at {self.api} ({reason}); is the kubo daemon running?"
        )

    def _lost(self, command: str, err: BaseException, token: CancelToken) -> IpfsError:
        """The error for a connection that failed during ``command`` (``token``: its call's)."""
        if token.cancelled:
            return CallCancelled(f"{command} was cancelled")
        reason = "timed out" if isinstance(err, TimeoutError) else (str(err) or type(err).__name__)
        return BackendUnavailableError(
            f"connection to the kubo RPC API at {self.api} failed during {command} ({reason})"
        )

    @staticmethod
    def _url(command: str, query: Query) -> str:
        url = f"/api/v0/{command}"
        return f"{url}?{urllib.parse.urlencode(query)}" if query else url

    def post(self, command: str, query: Query) -> Reply:
        token = current_token()
        conn = self._connect()
        try:
            conn.request("POST", self._url(command, query), headers={"Content-Length": "0"})
            resp: _Response = conn.getresponse()  # type: ignore[assignment]
        except _TRANSPORT_ERRORS as err:
            conn.close()
            raise self._lost(command, err, token) from None
        except BaseException:
            conn.close()
            raise
        return _HttpReply(conn, resp, lambda err: self._lost(command, err, token), token)

    def upload(
        self,
        command: str,
        query: Query,
        content_type: str,
        body: Iterable[bytes | memoryview],
        on_reply: Callable[[Reply], None],
    ) -> None:
        token = current_token()
        conn = self._connect()
        sock = conn.sock
        assert sock is not None
        sock.settimeout(None)  # the watchdog bounds the waits instead
        watchdog = _Watchdog(sock, self._timeout)
        outcome: list[BaseException] = []

        def lost(err: BaseException) -> IpfsError:
            return self._lost(command, TimeoutError() if watchdog.fired else err, token)

        def read_reply() -> None:
            try:
                resp: _Response = conn.getresponse()  # type: ignore[assignment]
                watchdog.received()
                on_reply(_HttpReply(conn, resp, lost, token, on_data=watchdog.received))
            except BaseException as err:  # handed over to the caller's thread
                outcome.append(err)
                _shutdown(sock)  # stop the sender at once

        reader = threading.Thread(target=read_reply, name=f"kubo-{command}", daemon=True)
        try:
            try:
                conn.putrequest("POST", self._url(command, query), skip_accept_encoding=True)
                conn.putheader("Content-Type", content_type)
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
            except _TRANSPORT_ERRORS as err:
                raise self._lost(command, err, token) from None
            reader.start()
            try:
                _send_chunked(sock, body, watchdog, reader)
            except _SendError as err:  # the connection broke; the reply may tell why
                outcome.append(err.__cause__ or err)
            except BaseException:  # the caller's data failed (or a check on it): abort
                _shutdown(sock)
                reader.join()
                raise
            watchdog.body_done()
            reader.join()  # bounded: the watchdog shuts the socket if kubo stalls
        finally:
            watchdog.stop()
            conn.close()
        if outcome:
            failure = outcome[0]
            if isinstance(failure, _TRANSPORT_ERRORS):
                raise lost(failure) from None
            raise failure


def _send_chunked(
    sock: socket.socket,
    pieces: Iterable[bytes | memoryview],
    watchdog: _Watchdog,
    reader: threading.Thread,
) -> None:
    """Send ``pieces`` with chunked transfer encoding, coalescing small ones."""

    def send(*data: bytes | memoryview) -> None:
        watchdog.sending()
        try:
            for piece in data:
                sock.sendall(piece)
        except OSError as err:
            raise _SendError(err) from err
        watchdog.sent()

    def send_chunk(data: bytes | memoryview) -> None:
        send(b"%x\r\n" % len(data), data, b"\r\n")

    pending = bytearray()
    for piece in pieces:
        if not reader.is_alive():  # kubo has answered already: an error, nothing to add
            return
        if len(piece) >= _CHUNK:
            if pending:
                send_chunk(pending)
                pending = bytearray()
            send_chunk(piece)
        elif piece:
            pending += piece
            if len(pending) >= _CHUNK:
                send_chunk(pending)
                pending = bytearray()
    if pending:
        send_chunk(pending)
    send(b"0\r\n\r\n")


# --- a transport that calls a function (for tests) -----------------------------------------


@dataclass(frozen=True)
class KuboRequest:
    """One request as :class:`MockTransport`'s handler sees it."""

    command: str
    query: Query
    body: bytes = b""
    content_type: str = ""

    @property
    def args(self) -> list[str]:
        return [value for name, value in self.query if name == "arg"]

    def param(self, name: str) -> str | None:
        values = [value for key, value in self.query if key == name]
        return values[-1] if values else None


@dataclass
class KuboResponse:
    """What :class:`MockTransport`'s handler answers: a status, a body, and the
    ``X-Stream-Error`` trailer kubo sends when a streamed reply fails after its first byte."""

    status: int = 200
    body: bytes = b""
    stream_error: str | None = None
    reason: str = "OK"


class _MemoryReply:
    def __init__(self, response: KuboResponse) -> None:
        self.status = response.status
        self.reason = response.reason
        self._body = io.BytesIO(response.body)
        self._stream_error = response.stream_error

    @property
    def stream_error(self) -> str | None:
        # as over HTTP, the trailer is known only once the body has been read to its end
        at_end = self._body.tell() == len(self._body.getbuffer())
        return self._stream_error if at_end else None

    def read(self, size: int = -1) -> bytes:
        current_token().check()
        return self._body.read(size)

    def readline(self, limit: int = -1) -> bytes:
        current_token().check()
        return self._body.readline(limit)

    def close(self) -> None:
        self._body.close()


class MockTransport:
    """A transport that hands each request to ``handler`` and replies with what it returns
    (httpx's ``MockTransport``): the client's logic, tested without a socket.  An upload's
    body is read to its end, in the caller's thread, before the handler sees it."""

    def __init__(self, handler: Callable[[KuboRequest], KuboResponse], api: str = "mock") -> None:
        self.api = api
        self._handler = handler

    def post(self, command: str, query: Query) -> Reply:
        current_token().check()
        return _MemoryReply(self._handler(KuboRequest(command, list(query))))

    def upload(
        self,
        command: str,
        query: Query,
        content_type: str,
        body: Iterable[bytes | memoryview],
        on_reply: Callable[[Reply], None],
    ) -> None:
        current_token().check()
        data = b"".join(bytes(piece) for piece in body)
        reply = _MemoryReply(self._handler(KuboRequest(command, list(query), data, content_type)))
        try:
            on_reply(reply)
        finally:
            reply.close()

    def close(self) -> None:
        pass

