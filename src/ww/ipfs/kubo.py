"""The CoreAPI backend that sends every operation to a kubo node's HTTP RPC API.

``ww --ipfs /dns4/localhost/tcp/5001/http`` (or ``WW_IPFS``) selects it.  Each call is one or
a few ``POST /api/v0/<command>`` requests on a fresh connection (so a client is safe to share
between threads), made with the standard library only.

Three things about kubo's RPC protocol shape this module:

* **Errors** come either as a non-200 reply carrying ``{"Message": ..., "Code": ...,
  "Type": "error"}``, or -- once a streamed reply has begun -- in the HTTP trailer
  ``X-Stream-Error``.  :class:`_Response` keeps that trailer (``http.client`` normally throws
  trailers away), so a ``cat`` cut short by a missing block raises instead of returning a
  truncated file.  :func:`_error_from_message` maps kubo's messages onto our error classes.
* **Uploads are full duplex.**  ``add`` and ``dag/import`` answer with one line per imported
  file *while* the request body is still arriving.  A client that writes the whole body before
  reading would deadlock once kubo's replies fill the socket buffers (a tree of a few thousand
  files).  :meth:`KuboClient._upload` therefore reads the reply on a helper thread while the
  caller's thread streams the body (so the caller's chunk iterator never changes threads),
  and a watchdog bounds every wait on kubo without timing out a caller that is slow to
  produce data.
* **Bodies are streamed** both ways in bounded pieces: multipart uploads are generated on
  the fly (chunked transfer encoding), ``cat`` and ``dag/export`` are read piecewise.

``stat`` and ``get`` fetch raw blocks (``block/get``, each verified against its CID) and run
the embedded node's own exporter on them, so the two backends report sizes and write trees
identically.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import stat as stat_mod
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from . import car, exporter, multihash
from .api import (
    AddOptions,
    BackendUnavailableError,
    CallCancelled,
    CorruptBlockError,
    Entry,
    EntryType,
    InvalidPathError,
    IpfsError,
    NotAFileError,
    NotFoundError,
    PeerInfo,
    Stat,
    UnsupportedError,
    current_token,
)
from .cid import CID
from .importer import file_chunks
from .multiaddr import DEFAULT_KUBO_API, MultiaddrError, to_http_url
from .multiaddr import parse as parse_multiaddr
from .path import parse_path

__all__ = ["KuboClient", "DEFAULT_KUBO_API"]

_CHUNK = 256 * 1024  # read size for cat / export, and the coalescing size for uploads
_MAX_BLOCK = 4 << 20  # kubo refuses blocks over 2 MiB (bitswap's limit); allow some slack
_MAX_ERROR_BODY = 64 * 1024
_MAX_LINE = 16 << 20
_ADD_FILE_NAME = "data"  # the multipart file name for add_stream; it never reaches the CID
_DEFAULT_ADD = AddOptions()

# kubo's ``ls`` reports UnixFS data types as numbers (unixfs.pb Data.DataType).
_LS_TYPES = {
    0: EntryType.FILE,
    1: EntryType.DIRECTORY,
    2: EntryType.FILE,
    3: EntryType.FILE,
    4: EntryType.SYMLINK,
    5: EntryType.DIRECTORY,
}

# Substrings of kubo's error messages, first match wins.  Messages vary across kubo
# versions; each phrase below has been seen in at least one release.
_ERROR_PHRASES: tuple[tuple[type[IpfsError], tuple[str, ...]], ...] = (
    (
        InvalidPathError,
        (
            "invalid path",
            "invalid cid",
            "invalid ipfs path",
            "selected encoding not supported",
            "illegal base",
            "path must start",
            "path does not begin",
            "unknown namespace",
        ),
    ),
    (
        NotAFileError,
        (
            "is a directory",
            "is not a file",
            "not a regular file",
            "not unixfs file",
            "can't read symlink",
            "cannot read symlink",
            "cannot cat",
        ),
    ),
    (
        NotFoundError,
        (
            "no link named",
            "not found",
            "could not find",
            "not pinned",
            "no such",
            "does not exist",
            "context deadline exceeded",
        ),
    ),
    (UnsupportedError, ("online mode", "not supported", "unknown command")),
)


def _error_from_message(message: str, status: int | None = None) -> IpfsError:
    """The IpfsError subclass that fits one of kubo's error messages, carrying that message."""
    message = " ".join(message.split()) or f"kubo answered HTTP {status}"
    lower = message.lower()
    for cls, phrases in _ERROR_PHRASES:
        if any(phrase in lower for phrase in phrases):
            return cls(message)
    return IpfsError(message)


class _Response(http.client.HTTPResponse):
    """An HTTPResponse that keeps the ``X-Stream-Error`` trailer instead of discarding it."""

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
    """A connection that forgets its caller's cancellation hook (:meth:`KuboClient._connect`)
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


def _normalize_path(path: str) -> str:
    """``/ipfs/<cid>/a`` or ``<cid>/a`` -> ``/ipfs/<cid>/a``, checked as the embedded node does."""
    return str(parse_path(path))


def _quote_name(name: str) -> str:
    """A multipart file name as Go's ``url.QueryEscape`` writes it (kubo unescapes it)."""
    return urllib.parse.quote_plus(os.fsencode(name), safe="")


def _part_header(name: str, content_type: str) -> bytes:
    return (
        f'Content-Disposition: form-data; name="file"; filename="{_quote_name(name)}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode("ascii")


def _tree_parts(
    root: Path, root_name: str, hidden: bool = True
) -> Iterator[tuple[str, str, Iterable[bytes]]]:
    """``(name, content type, body)`` for every node under ``root``, parents first.

    This is the layout kubo's own client sends for ``ipfs add -r``: a directory is an empty
    ``application/x-directory`` part, a symlink an ``application/symlink`` part holding its
    target, and every name is the full slash-separated path from the root.  Symlinks are
    stored, never followed; hidden entries are included unless ``hidden`` is false (as in the
    embedded importer).
    """
    stack: list[tuple[str, str]] = [(os.fsdecode(root), root_name)]
    while stack:
        fs_path, name = stack.pop()
        mode = os.lstat(fs_path).st_mode
        if stat_mod.S_ISLNK(mode):
            yield name, "application/symlink", (os.fsencode(os.readlink(fs_path)),)
        elif stat_mod.S_ISREG(mode):
            yield name, "application/octet-stream", file_chunks(fs_path)
        elif stat_mod.S_ISDIR(mode):
            yield name, "application/x-directory", ()
            with os.scandir(fs_path) as it:
                names = sorted(
                    (os.fsencode(e.name) for e in it if hidden or not e.name.startswith(".")),
                    reverse=True,
                )
            stack.extend(
                (os.path.join(fs_path, os.fsdecode(n)), f"{name}/{os.fsdecode(n)}") for n in names
            )
        else:
            raise UnsupportedError(
                f"cannot add {fs_path!r}: not a regular file, directory or symlink"
            )


def _multipart(
    parts: Iterable[tuple[str, str, Iterable[bytes]]], boundary: str
) -> Iterator[bytes | memoryview]:
    delimiter = f"--{boundary}\r\n".encode("ascii")
    first = True
    for name, content_type, body in parts:
        yield (b"" if first else b"\r\n") + delimiter + _part_header(name, content_type)
        first = False
        yield from body
    yield (b"" if first else b"\r\n") + f"--{boundary}--\r\n".encode("ascii")


def _car_pieces(src: BinaryIO) -> Iterator[bytes]:
    """A CAR v1 re-emitted section by section, each block verified before it is passed on.

    The header is read (and checked) at once, so a stream that is not a CAR v1 fails before
    anything is sent; a block that does not hash to its CID aborts the upload, so kubo never
    stores it.
    """
    reader = car.CarReader(src)

    def pieces() -> Iterator[bytes]:
        buf = io.BytesIO()
        car.write_header(buf, reader.roots)
        yield buf.getvalue()
        for cid, block in reader.blocks():
            buf = io.BytesIO()
            car.write_block(buf, cid, block)
            yield buf.getvalue()

    return pieces()


class KuboClient:
    """:class:`~ww.ipfs.api.CoreAPI` over kubo's HTTP RPC API.

    ``api`` is a multiaddr (``/ip4/127.0.0.1/tcp/5001``, ``/dns4/localhost/tcp/5001/http``,
    ``/unix/run/kubo.sock``) or an ``http(s)://host:port`` URL.  ``connect_timeout`` bounds
    reaching the node; ``timeout`` bounds every wait for kubo once connected (it is per wait,
    so a long transfer that keeps moving never times out).
    """

    guards_dials = False  # kubo dials a peer's known addresses with its own filters only
    local_reads = False  # every read is an HTTP response, which may wait
    verifies_blocks = False  # kubo's answers are taken as they come

    def __init__(
        self,
        api: str = DEFAULT_KUBO_API,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.api = api
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._unix_path = ""
        if api.startswith("/unix/"):
            self._unix_path = str(parse_multiaddr(api).value("unix"))
            self._scheme, self._host, self._port = "http", "localhost", None
        else:
            url = urllib.parse.urlsplit(to_http_url(api))
            self._scheme, self._host, self._port = url.scheme, url.hostname or "", url.port

    def __repr__(self) -> str:
        return f"KuboClient({self.api!r})"

    # --- plumbing -----------------------------------------------------------------------

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

    def _lost(self, command: str, err: BaseException) -> IpfsError:
        if current_token().cancelled:
            return CallCancelled(f"{command} was cancelled")
        reason = "timed out" if isinstance(err, TimeoutError) else (str(err) or type(err).__name__)
        return BackendUnavailableError(
            f"connection to the kubo RPC API at {self.api} failed during {command} ({reason})"
        )

    @staticmethod
    def _url(command: str, args: Iterable[str], params: dict[str, Any] | None) -> str:
        query: list[tuple[str, str]] = [("arg", a) for a in args]
        for name, value in (params or {}).items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            query.append((name, str(value)))
        url = f"/api/v0/{command}"
        return f"{url}?{urllib.parse.urlencode(query)}" if query else url

    def _check(self, resp: _Response, command: str) -> None:
        """Raise the error a non-200 reply carries: kubo's own message when it sends one."""
        if resp.status == 200:
            return
        body = resp.read(_MAX_ERROR_BODY)
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if isinstance(value, dict) and value.get("Message"):
            raise _error_from_message(str(value["Message"]), resp.status)
        text = " ".join(body.decode("utf-8", "replace").split()) or resp.reason
        if resp.status == 404:
            raise UnsupportedError(f"the kubo RPC API at {self.api} has no {command!r} ({text})")
        if resp.status in (401, 403):
            raise BackendUnavailableError(
                f"the kubo RPC API at {self.api} refused {command} (HTTP {resp.status}: {text})"
            )
        raise IpfsError(
            f"the kubo RPC API at {self.api} failed {command} (HTTP {resp.status}: {text})"
        )

    def _post(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> tuple[http.client.HTTPConnection, _Response]:
        """Send a body-less command; return the open connection and its 200 reply."""
        conn = self._connect()
        try:
            conn.request("POST", self._url(command, args, params), headers={"Content-Length": "0"})
            resp: _Response = conn.getresponse()  # type: ignore[assignment]
            self._check(resp, command)
        except _TRANSPORT_ERRORS as err:
            conn.close()
            raise self._lost(command, err) from None
        except BaseException:
            conn.close()
            raise
        return conn, resp

    def _values(self, resp: _Response, command: str) -> Iterator[Any]:
        """The JSON values of a reply (kubo writes one per line), then its stream error if any."""
        while True:
            line = resp.readline(_MAX_LINE)
            if not line:
                break
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise IpfsError(
                        f"the kubo RPC API at {self.api} sent malformed JSON for {command}"
                    ) from None
        if resp.stream_error:
            raise _error_from_message(resp.stream_error)

    def _json(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> list[Any]:
        conn, resp = self._post(command, args, params)
        try:
            return list(self._values(resp, command))
        except _TRANSPORT_ERRORS as err:
            raise self._lost(command, err) from None
        finally:
            conn.close()

    def _object(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        values = self._json(command, args, params)
        if len(values) != 1 or not isinstance(values[0], dict):
            raise IpfsError(f"the kubo RPC API at {self.api} sent an unexpected reply to {command}")
        return values[0]

    def _stream(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> Iterator[bytes]:
        """Send the command now (so errors raise here), then yield the reply body in pieces."""
        conn, resp = self._post(command, args, params)

        def pieces() -> Iterator[bytes]:
            try:
                while piece := resp.read(_CHUNK):
                    yield piece
                if resp.stream_error:
                    raise _error_from_message(resp.stream_error)
            except _TRANSPORT_ERRORS as err:
                raise self._lost(command, err) from None
            finally:
                conn.close()

        return pieces()

    def _upload(
        self,
        command: str,
        params: dict[str, Any],
        parts: Iterable[tuple[str, str, Iterable[bytes]]],
        on_value: Callable[[Any], None],
    ) -> None:
        """POST a multipart body while reading kubo's line-by-line reply (see module doc)."""
        boundary = uuid.uuid4().hex
        conn = self._connect()
        sock = conn.sock
        assert sock is not None
        sock.settimeout(None)  # the watchdog bounds the waits instead
        watchdog = _Watchdog(sock, self._timeout)
        outcome: list[BaseException] = []

        def read_reply() -> None:
            try:
                resp: _Response = conn.getresponse()  # type: ignore[assignment]
                watchdog.received()
                self._check(resp, command)
                for value in self._values(resp, command):
                    watchdog.received()
                    on_value(value)
            except BaseException as err:  # handed over to the caller's thread
                outcome.append(err)
                _shutdown(sock)  # stop the sender at once

        reader = threading.Thread(target=read_reply, name=f"kubo-{command}", daemon=True)
        try:
            try:
                conn.putrequest("POST", self._url(command, (), params), skip_accept_encoding=True)
                conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
            except _TRANSPORT_ERRORS as err:
                raise self._lost(command, err) from None
            reader.start()
            try:
                self._send_chunked(sock, _multipart(parts, boundary), watchdog, reader)
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
            err = outcome[0]
            if isinstance(err, _TRANSPORT_ERRORS):
                raise self._lost(command, TimeoutError() if watchdog.fired else err) from None
            raise err

    @staticmethod
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

    # --- writing ------------------------------------------------------------------------

    @staticmethod
    def _add_params(options: AddOptions) -> dict[str, Any]:
        """kubo's add parameters.  Every option that decides the CID is sent explicitly: a kubo
        whose ``Import.*`` settings differ from the defaults still gives the embedded node's CIDs.
        """
        raw_leaves = options.raw_leaves
        if raw_leaves is None:
            raw_leaves = options.cid_version >= 1  # kubo's rule
        return {
            "cid-version": options.cid_version,
            "raw-leaves": raw_leaves,
            "chunker": "size-262144",
            "hash": "sha2-256",
            "pin": options.pin,
            "only-hash": options.only_hash,
            "wrap-with-directory": False,
        }

    def _add(
        self, parts: Iterable[tuple[str, str, Iterable[bytes]]], root: str, o: AddOptions
    ) -> str:
        found: dict[str, str] = {}

        def on_value(value: Any) -> None:
            if isinstance(value, dict) and value.get("Hash"):
                found["last"] = value["Hash"]
                if value.get("Name") == root:
                    found["root"] = value["Hash"]

        self._upload("add", self._add_params(o), parts, on_value)
        cid = found.get("root") or found.get("last")
        if not cid:
            raise IpfsError(f"the kubo RPC API at {self.api} added nothing (no CID in its reply)")
        return cid

    def add_stream(self, chunks: Iterable[bytes], options: AddOptions = _DEFAULT_ADD) -> str:
        """Add one file's bytes; returns its CID.  Memory stays bounded by the chunk size."""
        return self._add(
            [(_ADD_FILE_NAME, "application/octet-stream", chunks)], _ADD_FILE_NAME, options
        )

    def add_path(self, path: Path, options: AddOptions = _DEFAULT_ADD) -> str:
        """Add a file, symlink or directory tree (as ``ipfs add -r``); returns the root CID."""
        path = Path(path)
        os.lstat(path)  # a missing path is the caller's FileNotFoundError, before any request
        name = path.name or "root"
        return self._add(_tree_parts(path, name, options.hidden), name, options)

    # --- reading ------------------------------------------------------------------------

    def cat(self, path: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream a file's bytes from ``offset``, at most ``length`` of them.

        An offset past the end gives no bytes (kubo calls that an error; the embedded node,
        like ``read(2)``, does not).
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("cat: offset and length must not be negative")
        params = {"offset": offset or None, "length": length}
        try:
            return self._stream("cat", [_normalize_path(path)], params)
        except IpfsError as err:
            if "past the end" in str(err):
                return iter(())
            raise

    def ls(self, path: str) -> list[Entry]:
        """A directory's entries; for a file or symlink, one entry for itself (as Unix ``ls``
        and the embedded node do -- kubo itself answers with no entries)."""
        ipath = parse_path(path)
        obj = self._object("ls", [str(ipath)])
        objects = obj.get("Objects") or []
        if len(objects) != 1:
            raise IpfsError(f"the kubo RPC API at {self.api} sent an unexpected reply to ls")
        entries = []
        for link in objects[0].get("Links") or []:
            kind = _LS_TYPES.get(link.get("Type"))
            if kind is None:
                raise IpfsError(
                    f"kubo listed {link.get('Name')!r} with unknown type {link.get('Type')}"
                )
            entries.append(Entry(link["Name"], kind, int(link.get("Size") or 0), link["Hash"]))
        if not entries:
            info = self.stat(str(ipath))
            if info.type != EntryType.DIRECTORY:
                return [Entry(ipath.last_name, info.type, info.size, info.cid)]
        return entries

    def resolve(self, path: str) -> str:
        result = self._object("resolve", [_normalize_path(path)], {"recursive": True})
        resolved = str(result.get("Path", ""))
        if not resolved.startswith("/ipfs/") or "/" in resolved[len("/ipfs/") :]:
            raise IpfsError(f"kubo resolved {path!r} to {resolved!r}, not to a CID")
        return resolved[len("/ipfs/") :]

    def stat(self, path: str) -> Stat:
        """Type, sizes and links of a node, computed from its blocks as the embedded node does."""
        return exporter.stat(self._block, exporter.resolve(self._block, parse_path(path)))

    def get(self, path: str, dest: Path, executable: bool = False) -> None:
        """Write a file or tree to ``dest`` with ``ww import`` semantics, atomically.

        The blocks come from kubo (``block/get``, each verified); writing them out is the
        embedded node's own code (:func:`ww.ipfs.exporter.get`), so both backends behave alike.
        """
        exporter.get_path(self._block, path, dest, executable)

    def _block(self, cid: CID) -> bytes:
        """One raw block from kubo, checked against its CID (an exporter block getter)."""
        conn, resp = self._post("block/get", [str(cid)])
        try:
            block = resp.read(_MAX_BLOCK + 1)
            if resp.stream_error:
                raise _error_from_message(resp.stream_error)
        except _TRANSPORT_ERRORS as err:
            raise self._lost("block/get", err) from None
        finally:
            conn.close()
        if len(block) > _MAX_BLOCK or not multihash.verify(cid.multihash, block):
            raise CorruptBlockError(f"kubo sent a block that does not hash to its CID {cid}")
        return block

    # --- pins ---------------------------------------------------------------------------

    def pin(self, path: str, recursive: bool = True) -> None:
        self._json("pin/add", [_normalize_path(path)], {"recursive": recursive})

    def unpin(self, path: str) -> None:
        self._json("pin/rm", [_normalize_path(path)], {"recursive": True})

    def pins(self) -> list[str]:
        """Every direct and recursive pin (not the blocks pinned indirectly through them)."""
        cids: set[str] = set()
        for kind in ("recursive", "direct"):
            cids.update((self._object("pin/ls", (), {"type": kind}).get("Keys") or {}).keys())
        return sorted(cids)

    # --- CAR interchange ------------------------------------------------------------------

    def export_car(self, roots: list[str], out: BinaryIO) -> None:
        """Write a CAR v1 of the DAGs under ``roots`` (kubo's ``dag/export``).

        kubo exports one root per call; several roots are merged into one CAR with all of them
        in its header and each block once.
        """
        cids = [CID.parse(self.resolve(root)) for root in roots]
        if len(cids) == 1:
            for piece in self._stream("dag/export", [str(cids[0])]):
                out.write(piece)
            return
        car.write_header(out, cids)
        seen: set[bytes] = set()
        for cid in cids:
            conn, resp = self._post("dag/export", [str(cid)])
            try:
                for block_cid, block in car.CarReader(resp).blocks():  # type: ignore[arg-type]
                    if block_cid.multihash not in seen:
                        seen.add(block_cid.multihash)
                        car.write_block(out, block_cid, block)
                if resp.stream_error:
                    raise _error_from_message(resp.stream_error)
            except _TRANSPORT_ERRORS as err:
                raise self._lost("dag/export", err) from None
            finally:
                conn.close()

    def import_car(self, src: BinaryIO) -> list[str]:
        """Import a CAR v1, verifying every block before kubo sees it; returns its roots.

        kubo pins the roots (its default, as the embedded node does).  Unlike the embedded
        node, kubo keeps the blocks it received before a failure (unpinned).
        """
        roots: list[str] = []
        failures: list[str] = []

        def on_value(value: Any) -> None:
            root = value.get("Root") if isinstance(value, dict) else None
            if root:
                roots.append(str(root["Cid"]["/"]))
                if root.get("PinErrorMsg"):
                    failures.append(f"{root['Cid']['/']}: {root['PinErrorMsg']}")

        part = ("data.car", "application/octet-stream", _car_pieces(src))
        self._upload("dag/import", {"pin-roots": True}, [part], on_value)
        if failures:
            raise NotFoundError(f"CAR imported but its roots could not be pinned: {failures[0]}")
        return roots

    # --- network ------------------------------------------------------------------------

    def id(self) -> PeerInfo:
        info = self._object("id")
        return PeerInfo(
            str(info["ID"]), list(info.get("Addresses") or []), list(info.get("Protocols") or [])
        )

    def peers(self) -> list[PeerInfo]:
        by_peer: dict[str, list[str]] = {}
        for peer in self._object("swarm/peers").get("Peers") or []:
            addresses = by_peer.setdefault(str(peer["Peer"]), [])
            if peer.get("Addr"):
                addresses.append(str(peer["Addr"]))
        return [PeerInfo(peer, addresses) for peer, addresses in by_peer.items()]

    def connect(self, addr: str) -> None:
        """Dial a peer by a multiaddr that ends in ``/p2p/<peer id>``."""
        if parse_multiaddr(addr).peer_id is None:
            raise MultiaddrError(f"cannot connect to {addr!r}: the address has no /p2p/<peer id>")
        self._json("swarm/connect", [addr])

    def close(self) -> None:
        """Nothing to release: every call uses its own connection."""
