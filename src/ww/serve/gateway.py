"""The trustless gateway of `ww daemon`: ``/ipfs/<cid>[/path]`` over HTTP, as the IPFS path
gateway and trustless gateway specifications describe.

- ``?format=raw`` (or ``Accept: application/vnd.ipld.raw``): the block the path names.
- ``?format=car`` (or ``Accept: application/vnd.ipld.car``): a CAR v1 (``order=dfs``,
  ``dups=n`` unless ``dups=y`` is asked) of the blocks proving the path, then the terminus's
  as ``dag-scope`` (``all``, ``entity``, ``block``) and ``entity-bytes`` say.
- otherwise, for a browser: a file's bytes (with a type from its name or its first bytes,
  ``Range`` honoured), a directory's ``index.html`` or an HTML listing (a directory named
  without its trailing ``/`` is redirected to it).

It serves what the repository holds and never fetches from the network (a non-recursive
gateway, in the specification's words): a block the repository lacks is a 404 (a 412 under
``Cache-Control: only-if-cached``), so a request can make the node neither wait nor fetch.
Blocking work runs in worker threads, a piece at a time as the client reads: a response
holds at most one batch (:data:`BATCH` bytes) in memory, however large the file or CAR and
however slowly it is read.  Errors are one line of text with the status the specification
gives (400 a malformed request, 404 content that is not here, 416 a range outside a file).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, TypeVar
from urllib.parse import quote

import anyio
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ww.core import bridge, varint
from ww.core.cid import CID
from ww.core.errors import (
    BackendUnavailableError,
    InvalidPathError,
    NotAFileError,
    NotFoundError,
    UnsupportedError,
    WwError,
)
from ww.ipfs import car
from ww.ipfs.api import (
    WOULD_WAIT,
    CancelToken,
    CoreAPI,
    EntryType,
    WouldWait,
    cancellable,
    local_only,
)
from ww.ipfs.path import IpfsPath, parse_path

from . import gateway_content as content
from .gateway_content import Resolved
from .server import lifespan

__all__ = ["gateway_app", "GatewayBackend", "BATCH", "THREADS", "STALL_TIMEOUT"]

T = TypeVar("T")

THREADS = 4
"""Worker threads a gateway uses at once, at most.  Its work (reading, hashing, decoding
blocks) holds the GIL: more threads add no speed, and anyio's default pool (40 threads)
is shared by everything on the daemon's event loop, which forty requests for a directory
of 75,000 entries kept busy for seconds each."""

_PIECE = 256 << 10  # bytes of a batch handed to the server at once (see _send)

BATCH = 1 << 20
"""Bytes a response reads ahead of what it has sent: one batch, read in a worker thread."""

STALL_TIMEOUT = 60.0
"""Seconds one piece of a response may wait for its client before the response is given up
(the socket's own bound is :func:`ww.serve.server.limit_stalls`)."""

IMMUTABLE = "public, max-age=29030400, immutable"
_RAW = "application/vnd.ipld.raw"
_CAR = "application/vnd.ipld.car"
_FORMATS = {"raw": _RAW, "car": _CAR}


class GatewayBackend(CoreAPI, Protocol):
    """What the gateway needs of a node: the CoreAPI, and its blocks one at a time (a CAR
    holds exactly the blocks a path and a scope need)."""

    def block(self, cid: str) -> bytes:
        """One block's bytes, verified against ``cid``."""


def gateway_app(api: GatewayBackend, *, log: Callable[[str], object] | None = None,
                stall_timeout: float = STALL_TIMEOUT) -> ASGIApp:
    """The gateway as an ASGI application over ``api`` (serve it with hypercorn, on trio or
    asyncio).  ``log``: told one line for each response that failed on the server's side
    (a 5xx, or a stream cut short by a block gone bad).  ``stall_timeout``: seconds one
    piece of a response may wait for its client (an HTTP/2 stream whose client grants no
    flow-control window waits in the app, where the kernel's ``TCP_USER_TIMEOUT`` of
    :func:`ww.serve.server.limit_stalls` cannot see it); then the response is given up."""
    gateway = _Gateway(api, log or (lambda line: None))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":  # a websocket: nothing here speaks it
            await send({"type": "websocket.close", "code": 1003})
            return
        # Routed by hand: a path may hold any character a UnixFS name does (a newline too),
        # which a router's patterns do not match.
        request = Request(scope, receive)
        path: str = scope["path"]
        head = request.method == "HEAD"
        if "transfer-encoding" in request.headers and "content-length" in request.headers:
            # Read one way here and another by a proxy in front, the rest of the connection
            # would be requests the proxy never saw: refused, the connection closed (RFC
            # 9112, 6.1), never read on (h11 takes Transfer-Encoding and reads on).
            response = _error(400, "a request with both Transfer-Encoding and "
                                   "Content-Length is refused", {"connection": "close"},
                              head=head)
        elif not path.startswith(("/ipfs/", "/ipns/")):
            response = _error(404, f"not found: {request.url.path} (this gateway serves "
                                   "/ipfs/<cid>)", head=head)
        elif request.method not in ("GET", "HEAD"):
            response = _error(405, f"method {request.method} is not allowed: use GET or HEAD",
                              {"allow": "GET, HEAD"})
        elif path.startswith("/ipns/"):
            response = _error(501, "/ipns/ paths are not supported by this gateway: use "
                                   "/ipfs/<cid>", head=head)
        else:
            response = await gateway.ipfs(request, path[len("/ipfs/"):])
        try:
            await response(scope, receive, partial(_send, send, stall_timeout))
        except (_StreamAborted, TimeoutError):
            # Logged where it happened, or a client that stopped reading.  Ending here
            # without the body's last message makes the server close the connection (reset
            # the HTTP/2 stream) mid-body: the client sees a truncated response (a chunked
            # CAR without its last chunk), never a complete-looking one.
            pass

    return app


async def _send(send: Send, stall_timeout: float, message: Message) -> None:
    """``send``, TimeoutError after ``stall_timeout`` seconds of waiting for the client (an
    HTTP/2 stream held without a window held its batch for ever: a connection's 100 streams,
    100 MiB), and ``X-Content-Type-Options: nosniff`` on every response: what a file's type
    says is all a browser may do with it (content shares one origin, and a page of another
    site must not run a text file as a script, which told it the file was here)."""
    if message["type"] == "http.response.start":
        message = {**message, "headers": [*message.get("headers", ()),
                                          (b"x-content-type-options", b"nosniff")]}
    body = message.get("body", b"") if message["type"] == "http.response.body" else b""
    if len(body) <= _PIECE:
        with anyio.fail_after(stall_timeout):
            await send(message)
        return
    # In pieces, each given stall_timeout: a slow client (5 KB/s) is not a stalled one.
    more = message.get("more_body", False)
    for start in range(0, len(body), _PIECE):
        piece = body[start:start + _PIECE]
        with anyio.fail_after(stall_timeout):
            await send({"type": "http.response.body", "body": piece,
                        "more_body": more or start + _PIECE < len(body)})


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _StreamAborted(Exception):
    """A response cut short after its status was sent (a block missing or corrupt): the
    connection is closed mid-body, so the client sees an incomplete response."""


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           head: bool = False) -> Response:
    """One line of text, never stored by a cache (the content may arrive, the request may be
    fixed): a 404 without ``Cache-Control`` is one a cache may keep (RFC 9111, 4.2.2)."""
    body = (" ".join(message.split()) + "\n").encode("utf-8", "replace")
    return Response(b"" if head else body, status_code=status,
                    headers={"content-type": "text/plain; charset=utf-8",
                             "cache-control": "no-store",
                             "content-length": str(len(body)), **(headers or {})})


def _status(err: WwError, only_if_cached: bool) -> int:
    if isinstance(err, WouldWait):
        return 412 if only_if_cached else 404
    if isinstance(err, InvalidPathError):  # CidError too
        return 400
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, NotAFileError):
        return 400
    if isinstance(err, UnsupportedError):
        return 501
    if isinstance(err, BackendUnavailableError):
        return 503
    return 500  # CorruptBlockError and other failures of the repository


class _Gateway:
    def __init__(self, api: GatewayBackend, log: Callable[[str], object]) -> None:
        self._api = api
        self._sink = log
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop

    def _log(self, line: str) -> None:
        """One line, whatever a path in it holds (a name may contain a newline)."""
        self._sink("".join(c if c.isprintable() else repr(c)[1:-1] for c in line))

    def _get(self, cid: CID) -> bytes:
        return self._api.block(str(cid))

    async def _run(self, token: CancelToken, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread, under ``token``, never waiting on the network.

        Such work is short (a path's blocks, a batch of a file, all local), so a request
        cancelled meanwhile simply waits for it: it needs no task to cancel it early."""

        def work() -> T:
            with cancellable(token), local_only():
                return fn()

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(THREADS)
        return await bridge.in_worker_thread(work, limiter=self._limiter)

    # --- /ipfs/ ----------------------------------------------------------------------------

    async def ipfs(self, request: Request, rest: str) -> Response:
        """The answer to ``GET`` or ``HEAD /ipfs/<rest>``."""
        head = request.method == "HEAD"
        only_if_cached = "only-if-cached" in request.headers.get("cache-control", "").lower()
        try:
            return await self._ipfs(request, rest, head)
        except _HttpError as err:
            return _error(err.status, err.message, err.headers, head)
        except WwError as err:
            status = _status(err, only_if_cached)
            if status >= 500:
                path = (request.scope.get("raw_path") or b"").decode("latin-1")
                self._log(f"gateway: {request.method} {path}: {status} {err}")
            return _error(status, str(err), head=head)

    async def _ipfs(self, request: Request, rest: str, head: bool) -> Response:
        query = request.query_params
        fmt, car_params, negotiated = _negotiate(query, request.headers.get("accept", ""))
        trailing = rest.endswith("/")
        ipath = parse_path("/ipfs/" + rest)
        if (not ipath.segments and not trailing
                and request.headers.get("service-worker", "").lower() == "script"):
            raise _HttpError(400, "a service worker may only be registered under "
                                  f"/ipfs/{ipath.root}/ (with the trailing slash)")
        scope = entity_bytes = None
        if fmt == "car":
            scope, entity_bytes = _car_scope(query)
        token = CancelToken()
        resolved = await self._run(token, lambda: content.resolve(self._get, ipath))
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        common = {
            "cache-control": IMMUTABLE,
            "x-ipfs-path": raw_path.decode("latin-1"),
            "x-ipfs-roots": ",".join(str(cid) for cid in resolved.roots),
        }
        if negotiated:
            qs = request.scope.get("query_string", b"").decode("latin-1")
            common["content-location"] = (
                f"{common['x-ipfs-path']}?{qs + '&' if qs else ''}format={fmt}")
        if fmt == "raw":
            return self._raw(request, resolved, common, head)
        if fmt == "car":
            assert scope is not None
            return self._car(request, resolved, common, car_params, scope, entity_bytes, head)
        node = resolved.node
        if node.is_directory:
            if not trailing:
                location = raw_path.decode("latin-1") + "/"
                if request.url.query:
                    location += "?" + request.url.query
                return Response(status_code=301, headers={"location": location, **common})
            return await self._directory(request, resolved, common, token, head)
        if node.type is EntryType.SYMLINK:  # not followed: its target, as text
            return Response(b"" if head else node.target, headers={
                **common, "etag": f'"{node.cid}"', "content-type": "text/plain; charset=utf-8",
                "content-length": str(len(node.target))})
        name = ipath.segments[-1] if ipath.segments else None
        return await self._file(request, resolved.node.cid, resolved.node.content_size,
                                name, common, token, head)

    # --- trustless responses -----------------------------------------------------------------

    def _raw(self, request: Request, resolved: Resolved, common: dict[str, str],
             head: bool) -> Response:
        node = resolved.node
        etag = f'"{node.cid}.raw"'
        headers = {**common, "etag": etag, "content-type": _RAW,
                   "accept-ranges": "bytes",
                   "content-disposition": _disposition(
                       "attachment", request.query_params.get("filename") or f"{node.cid}.bin")}
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        block = node.block
        status, start, end = _range(request, len(block), headers)
        headers["content-length"] = str(end - start)
        return Response(b"" if head else block[start:end], status_code=status, headers=headers)

    def _car(self, request: Request, resolved: Resolved, common: dict[str, str],
             params: dict[str, str], scope: str, entity_bytes: tuple[int, str] | None,
             head: bool) -> Response:
        dups = params.get("dups") == "y"
        byte_range = None
        node = resolved.node
        if scope == "entity" and entity_bytes is not None and not node.is_directory:
            byte_range = _entity_range(entity_bytes, node.content_size)
            if byte_range is None:  # an empty range: the entity's root block tells why
                scope = "block"
        root = resolved.path.root
        variant = f"{resolved.path}|{scope}|{byte_range}|dfs|{dups}"
        etag = f'"{root}.car.{hashlib.sha256(variant.encode()).hexdigest()[:16]}"'
        headers = {**common, "etag": etag,
                   "content-type": f"{_CAR}; version=1; order=dfs; dups={'y' if dups else 'n'}",
                   "accept-ranges": "none",
                   "content-disposition": _disposition(
                       "attachment", request.query_params.get("filename") or f"{root}.car")}
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        if head:
            return _head(headers)
        blocks = content.car_blocks(self._get, resolved, scope, byte_range, dups)
        body = _Body(self, CancelToken(), _car_bytes(root, blocks), f"{resolved.path} as a CAR")
        return _Streaming(body, 200, headers)

    # --- responses for a browser ---------------------------------------------------------------

    async def _file(self, request: Request, cid: CID, size: int, name: str | None,
                    common: dict[str, str], token: CancelToken, head: bool) -> Response:
        filename = request.query_params.get("filename")
        kind = content.content_type(filename or name or "")
        if kind is None:
            first = await self._run(token, lambda: b"".join(
                _checked(lambda: self._api.cat(str(cid), 0, content.SNIFF_LEN))))
            kind = content.sniff(first)
        etag = f'"{cid}"'
        headers = {**common, "etag": etag, "content-type": kind, "accept-ranges": "bytes"}
        download = request.query_params.get("download")
        if download == "true":
            headers["content-disposition"] = _disposition("attachment", filename or name)
        elif filename:
            headers["content-disposition"] = _disposition("inline", filename)
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        status, start, end = _range(request, size, headers)
        headers["content-length"] = str(end - start)
        if head or start == end:
            return Response(b"", status_code=status, headers=headers)
        pieces = _checked(lambda: self._api.cat(str(cid), start, end - start))
        return _Streaming(_Body(self, token, pieces, f"/ipfs/{cid}"), status, headers)

    async def _directory(self, request: Request, resolved: Resolved, common: dict[str, str],
                         token: CancelToken, head: bool) -> Response:
        node = resolved.node

        def index() -> Resolved | None:
            try:
                found = content.resolve(self._get, IpfsPath(node.cid, ("index.html",)))
            except NotFoundError:
                return None
            return None if found.node.is_directory else found

        page = await self._run(token, index)
        if page is not None:
            return await self._file(request, page.node.cid, page.node.content_size,
                                    "index.html", common, token, head)
        etag = f'"DirIndex-{content.LISTING_VERSION}_CID-{node.cid}"'
        headers = {**common, "etag": etag, "content-type": "text/html; charset=utf-8"}
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        if head:
            return _head(headers)
        title = request.url.path
        pieces = content.listing(self._get, title, node, bool(resolved.path.segments))
        return _Streaming(_Body(self, token, pieces, title), 200, headers)


# --- request parsing -----------------------------------------------------------------------


def _negotiate(query: QueryParams, accept: str) -> tuple[str | None, dict[str, str], bool]:
    """The response format (``raw``, ``car`` or None for a browser's), the CAR parameters
    asked for, and whether the format came from ``Accept`` alone (then the response names
    the URL with ``?format=``, ``Content-Location``).  ``format`` wins over ``Accept``."""
    fmt = query.get("format") or None
    params: dict[str, str] = {}
    if fmt is not None and fmt not in _FORMATS:
        raise _HttpError(400, f"unsupported format {fmt!r}: this gateway serves format=raw, "
                              "format=car and, without format, files and directories")
    best: tuple[float, int, str | None, dict[str, str]] | None = None
    for index, item in enumerate(accept.split(",")):
        media, *rest = (part.strip() for part in item.split(";"))
        found = {}
        for part in rest:
            key, _, value = part.partition("=")
            found[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(found.pop("q", "1"))
        except ValueError:
            continue
        kind = next((k for k, v in _FORMATS.items() if v == media.lower()), None)
        if q > 0 and media and (best is None or q > best[0]):
            best = (q, index, kind, found)
    accepted = best[2] if best is not None else None
    negotiated = fmt is None and accepted is not None
    if fmt is None:
        fmt = accepted
    if fmt == "car" and best is not None and best[2] == "car":
        params = dict(best[3])
    for name in ("version", "order", "dups"):
        given = query.get(f"car-{name}")
        if given is not None:
            params[name] = given
    if fmt == "car":
        if params.get("version", "1") != "1":
            raise _HttpError(400, f"unsupported CAR version {params['version']!r}: "
                                  "this gateway writes CAR version 1")
        if params.get("order", "dfs") not in ("dfs", "unk", ""):
            raise _HttpError(400, f"unsupported CAR order {params['order']!r}: use dfs")
        if params.get("dups", "n") not in ("y", "n", ""):
            raise _HttpError(400, f"invalid CAR dups {params['dups']!r}: use y or n")
    return fmt, params, negotiated


def _car_scope(query: QueryParams) -> tuple[str, tuple[int, str] | None]:
    """``dag-scope`` (default ``all``; ``entity-bytes`` implies ``entity``) and the parsed
    ``entity-bytes=from:to`` (``to`` is ``*`` or an integer, either may be negative)."""
    raw_bytes = query.get("entity-bytes")
    scope = query.get("dag-scope") or ("entity" if raw_bytes is not None else "all")
    if scope not in content.SCOPES:
        raise _HttpError(400, f"invalid dag-scope {scope!r}: use block, entity or all")
    if raw_bytes is None or scope != "entity":
        return scope, None
    start, sep, end = raw_bytes.partition(":")
    if not sep or not _is_int(start) or not (end == "*" or _is_int(end)):
        raise _HttpError(400, f"invalid entity-bytes {raw_bytes!r}: expected from:to, "
                              "each an integer (negative: from the end), to also *")
    return scope, (int(start), end)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and text.count("-") <= 1 and len(text) <= 20


def _entity_range(spec: tuple[int, str], size: int) -> tuple[int, int] | None:
    """``entity-bytes`` against a file of ``size`` bytes: ``[start, end)``, or None for an
    empty range; 400 for one wholly after the file's end."""
    start = spec[0] if spec[0] >= 0 else max(0, size + spec[0])
    last = size - 1 if spec[1] == "*" else int(spec[1])
    if last < 0:
        last += size
    last = min(last, size - 1)
    if size and start >= size:
        raise _HttpError(400, f"entity-bytes {spec[0]}:{spec[1]} lies outside the file's "
                              f"{size} bytes")
    if last < start:
        return None
    return start, last + 1


def _range(request: Request, size: int, headers: dict[str, str]) -> tuple[int, int, int]:
    """``(status, start, end)`` for the ``Range`` request header: 206 and the one range it
    names (``Content-Range`` added to ``headers``), or 200 and everything (no header, another
    unit, several ranges: RFC 9110 lets a server ignore those); 416 for a range it cannot
    parse or satisfy."""
    value = request.headers.get("range")
    if value is None:
        return 200, 0, size
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return 200, 0, size
    first, dash, last = spec.strip().partition("-")
    unsatisfiable = _HttpError(416, f"range {value!r} is not satisfiable: the content has "
                                    f"{size} bytes", {"content-range": f"bytes */{size}"})
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        raise _HttpError(416, f"invalid range {value!r}: expected bytes=first-last, "
                              "bytes=first- or bytes=-suffix",
                         {"content-range": f"bytes */{size}"})
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        start, end = max(0, size - suffix), size
    else:
        start = int(first)
        end = size if not last else int(last) + 1
        if last and int(last) < start:
            raise _HttpError(416, f"invalid range {value!r}: the last byte is before the first",
                             {"content-range": f"bytes */{size}"})
        if start >= size:
            raise unsatisfiable
        end = min(end, size)
    headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    return 206, start, end


def _not_modified(request: Request, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weakly compared) or is ``*``."""
    wanted = request.headers.get("if-none-match")
    if not wanted:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def _disposition(kind: str, filename: str | None) -> str:
    """``Content-Disposition``: an ASCII ``filename`` (others as ``_``), and the exact name
    as ``filename*`` when they differ (RFC 8187)."""
    if not filename:
        return kind
    plain = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    value = f'{kind}; filename="{plain}"'
    if plain != filename:
        exact = quote(filename.encode("utf-8", "surrogateescape"), safe="")
        value += f"; filename*=UTF-8''{exact}"
    return value


def _head(headers: dict[str, str]) -> Response:
    """A HEAD response for a body whose length is not known before it is streamed."""
    response = Response(status_code=200, headers=headers)
    del response.headers["content-length"]
    return response


# --- streaming -------------------------------------------------------------------------------


def _car_bytes(root: CID, blocks: Iterator[tuple[CID, bytes]]) -> Iterator[bytes]:
    """A CAR of ``blocks`` but those of identity CIDs, which hold their block in themselves
    (as boxo's gateway writes CARs: go-car's ``StoreIdentityCIDs`` off): the CAR of
    ``bafkqaaa``, the specification's probe, is a header alone."""
    header = io.BytesIO()
    car.write_header(header, [root])
    yield header.getvalue()
    for cid, block in blocks:
        if cid.inline is not None:
            continue
        raw_cid = bytes(cid)
        yield varint.encode(len(raw_cid) + len(block)) + raw_cid
        yield block


def _checked(read: Callable[[], Iterator[bytes]]) -> Iterator[bytes]:
    """A file's pieces from ``read()``, called at the first step (in a worker: it reads the
    file's root block); a block the repository lacks is an error (it would otherwise wait)."""
    for piece in read():
        if piece is WOULD_WAIT:
            raise WouldWait("a block of the file is not in the repository")
        yield piece


def _take(pieces: Iterator[bytes]) -> bytes | None:
    """The next :data:`BATCH` bytes or so of ``pieces``; None at their end."""
    batch = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece)
        if size >= BATCH:
            break
    return b"".join(batch) if batch else None


class _Body:
    """A response body read from a blocking iterator in worker threads, one batch at a time,
    only as the client takes it."""

    def __init__(self, gateway: _Gateway, token: CancelToken, pieces: Iterator[bytes],
                 what: str) -> None:
        self._gateway = gateway
        self._token = token
        self._pieces = pieces
        self._what = what

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        try:
            batch = await self._gateway._run(self._token, lambda: _take(self._pieces))
        except WwError as err:
            self._gateway._log(f"gateway: {self._what}: cut short: {err}")
            raise _StreamAborted(f"{self._what}: cut short: {err}") from None
        if batch is None:
            raise StopAsyncIteration
        return batch

    def close(self) -> None:
        """Stop: the token cancelled and the iterator closed (no worker runs it then: a
        request cancelled during a read waits for that read)."""
        self._token.cancel()
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


class _Streaming(StreamingResponse):
    """A streamed response whose body is closed however the response ends."""

    def __init__(self, body: _Body, status: int, headers: dict[str, str]) -> None:
        super().__init__(body, status_code=status, headers=headers)
        self._body = body

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self._body.close()

