"""kubo's RPC API (``/api/v0``) over the embedded node: an ASGI app for `ww daemon`.

Every command is ``POST /api/v0/<command>?arg=...&<option>=...``, answered as kubo answers:
one JSON value per line (``add``, ``pin/ls?stream=true``, ``repo/gc`` stream them as they
happen), raw bytes for ``cat``, ``get`` (a tar), ``block/get`` and ``dag/export`` (a CAR),
and errors as ``{"Message", "Code", "Type": "error"}`` -- HTTP 500 with Code 0 for a failed
command (kubo's ErrNormal), 400 with Code 1 for a malformed request (ErrClient), 404 for an
unknown command.  A browser page of another origin is refused with 403, as kubo refuses it
(its ``Origin`` or ``Referer`` must be the API's own address).

How it runs: the node's calls block (files, locks), so each command runs in a worker thread
(at most :data:`WORKERS` at once, of which :data:`UPLOADS` commands with a body; the rest
wait their turn; an upload whose body stalls for :data:`BODY_STALL` seconds is refused) under a
:class:`ww.ipfs.api.CancelToken`.  A task on the event loop reads the request body ahead of the
thread, a few pieces at most, and the thread pushes the response through the event loop one
piece at a time (``anyio.from_thread``), so memory per request is a few pieces either way:
a 300 MiB ``add`` goes from the socket into the blockstore, a ``cat`` from the blockstore to
the socket.  A client that hangs up cancels its command at the next
piece; one that stops reading holds its command (and one worker) until it reads again or
:data:`SEND_STALL` seconds pass, when its connection is dropped (by the kernel:
``TCP_USER_TIMEOUT``, see :mod:`ww.serve.server`); others are served meanwhile.
An error after the reply has begun is kubo's ``X-Stream-Error`` trailer over HTTP/2 to a
request that accepts trailers (``te: trailers``); over HTTP/1.1 it cuts the connection short
(hypercorn sends no trailers over HTTP/1.1): the client sees a truncated body, never a
silently short one.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import platform
import queue
import re
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import anyio
import anyio.from_thread
import anyio.to_thread
import trio

from ww.core.cid import DAG_PB, RAW
from ww.core.errors import (
    CallCancelled,
    ChunkerError,
    InvalidPathError,
    IpfsError,
    NotAFileError,
    NotFoundError,
    UsageError,
    WwError,
)
from ww.ipfs import chunker as chunkers
from ww.ipfs import exporter, importer
from ww.ipfs.api import AddOptions, CancelToken, Entry, EntryType, PeerInfo, cancellable
from ww.ipfs.node import EmbeddedNode
from ww.serve.server import (
    EVICT_AFTER,
    MIN_SEND_RATE,
    STALL,
    Stretch,
    give_back_freed,
    held_for_others,
    lifespan,
    stretch_rate,
)

__all__ = ["RpcApi", "Routing", "WORKERS", "UPLOADS", "BODY_STALL", "SEND_STALL"]

WORKERS = 64  # commands running at once; the others wait (a bound on threads, not requests)
UPLOADS = 16  # of which commands with a body (add, block/put, dag/import): they wait on clients
BODY_STALL = 60.0  # seconds an upload's body may bring no byte before the command is refused
SEND_STALL = STALL  # seconds a client may leave a piece of its reply unread before it is dropped
PIECE = 256 * 1024  # the size of the pieces a reply is sent in
# The size of the pieces a request body is taken over to the worker in: each is one hand-off
# between threads, and 1 MiB rather than 256 KiB cut a 300 MiB add's CPU time by about a
# tenth (docs/benchmarks.md).
BODY_PIECE = 1 << 20
# (A piece ends with the message that brings it to BODY_PIECE: it is less than BODY_PIECE and
# one read of the server's, READ_SIZE, so under 2 MiB.)
# How many such pieces the event loop reads ahead of the worker (docs/benchmarks.md): with the
# one it gathers and the one the worker holds, an upload holds at most four pieces of its body
# here, 4 to 8 MiB.
BODY_AHEAD = 2
DEFAULT_PROVIDERS = 20  # routing/findprovs: kubo's default num-providers
MAX_PROVIDERS = 100  # and the most one request may ask for
PROGRESS_STEP = 256 * 1024  # add?progress=true: a {"Name","Bytes"} line per this many bytes
BLOCK_LIMIT = 1 << 20  # kubo's soft block limit: block/put refuses more without allow-big-block
BIG_BLOCK_LIMIT = 4 << 20  # and never more than this, as the repository reads no larger block
MAX_PART_HEADERS = 64 * 1024  # bytes of one multipart part's headers
VERSION = "0.1.0"

# python-multipart logs a warning of its own for a malformed body before it raises; the
# daemon reports that error as one event (rpc-error), and with no logging set up Python's
# last-resort handler would print the warning as a stray line in the log (not JSON under --json)
_MULTIPART_LOG = logging.getLogger("python_multipart")
_MULTIPART_LOG.addHandler(logging.NullHandler())
_MULTIPART_LOG.propagate = False

# kubo's ls "Type": the UnixFS data type (unixfs.pb): Directory 1, File 2, Symlink 4.
_LS_TYPE = {EntryType.DIRECTORY: 1, EntryType.FILE: 2, EntryType.SYMLINK: 4}
_CODECS = {"raw": RAW, "dag-pb": DAG_PB, "protobuf": DAG_PB, "v0": DAG_PB}


class ClientError(UsageError):
    """A malformed request (a missing argument, an option's bad value): kubo's ErrClient,
    HTTP 400 with Code 1."""


class Request:
    """One command: its arguments and options, its body and its reply, used from the worker
    thread that runs it."""

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.token = CancelToken()
        self.started = False
        self.trailers = False  # the reply ends with trailers (see start())
        self.body_done = False
        # the body's hand-off from the event loop to the worker (see body()): pieces, then
        # None at its end or the exception that ended it
        self._body: queue.SimpleQueue[list[bytes] | BaseException | None] = queue.SimpleQueue()
        self._body_allowed = 0  # pieces the pump may have put so far: the worker moves it on
        self._body_put = 0  # and the pieces it has put
        self._room: trio.Event | None = None  # what the pump waits on for room
        self._trio_token = trio.lowlevel.current_trio_token()
        self._send_scope: anyio.CancelScope | None = None
        # whether another upload waits for a place (RpcApi sets it for an upload): this
        # one's body may then bring nothing for EVICT_AFTER seconds only, not BODY_STALL
        self.place_wanted: Callable[[], bool] = lambda: False
        self._stall: anyio.CancelScope | None = None  # while the pump waits on the client
        self._heard = 0.0  # when the pump last heard from it (anyio's clock)
        # The body's rate while another upload waits for a place (see body_rate): the bytes
        # it brought and the seconds the pump waited for the worker (not on the client) so
        # far, since when it waits (None: it does not), and the measure's start
        self._received = 0
        self._room_waited = 0.0
        self._room_since: float | None = None
        self._measure: Stretch | None = None
        self.too_slow: float | None = None  # the rate it was refused for (refuse_slow)
        query = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                       keep_blank_values=True)
        self.args = [value for name, value in query if name == "arg"]
        self.options: dict[str, str] = {}
        for name, value in query:
            if name != "arg":
                self.options.setdefault(name, value)

    # --- the request --------------------------------------------------------------------

    def arg(self, what: str) -> str:
        """The first ``arg``; kubo's 400 error when there is none."""
        if not self.args:
            raise ClientError(f'argument "{what}" is required')
        return self.args[0]

    def all_args(self, what: str) -> list[str]:
        """Every ``arg``, at least one (kubo's 400 error when there is none)."""
        self.arg(what)
        return self.args

    def option(self, *names: str) -> str | None:
        for name in names:
            if name in self.options:
                return self.options[name]
        return None

    def flag(self, *names: str, default: bool = False) -> bool:
        """A boolean option, as kubo parses it (Go's strconv.ParseBool; present and empty is
        true)."""
        value = self.option(*names)
        if value is None:
            return default
        if value in ("", "1", "t", "T", "true", "TRUE", "True"):
            return True
        if value in ("0", "f", "F", "false", "FALSE", "False"):
            return False
        raise ClientError(f"invalid value {value!r} for boolean option {names[0]!r}")

    def number(self, *names: str, default: int | None = None) -> int | None:
        value = self.option(*names)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ClientError(f"invalid value {value!r} for option {names[0]!r}") from None
        if number < 0:
            raise ClientError(f"option {names[0]!r} must not be negative")
        return number

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope.get("headers", ()):
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    def body(self) -> Iterator[bytes]:
        """The request body, piece by piece, as the client sends it (from the worker).

        A task on the event loop (:meth:`pump_body`) reads the body ahead of the worker, in
        pieces of :data:`BODY_PIECE` bytes and at most one read more, at most
        :data:`BODY_AHEAD` of them waiting: the worker takes a piece that is there without
        waiting on the loop, and the loop reads on while there is room without waiting on the
        worker.
        """
        self._body_open()
        while True:
            item = self._body.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                try:
                    raise item
                finally:
                    del item  # see pump_body: no cycle through this frame
            self._body_taken()
            self.token.check()
            piece = item[0] if len(item) == 1 else b"".join(item)
            del item  # the piece alone is held while the consumer works on it
            yield piece
            del piece

    def _body_open(self) -> None:
        """From the worker: let the pump read :data:`BODY_AHEAD` pieces ahead."""
        self._body_allowed += BODY_AHEAD
        self._wake_pump()

    def _body_taken(self) -> None:
        """From the worker: a piece was taken, so there is room for one more."""
        self._body_allowed += 1  # only the worker writes it; the pump reads it
        self._wake_pump()

    def _wake_pump(self) -> None:
        # After _body_allowed moved on: the pump, which sets _room before it looks at
        # _body_allowed again, either sees the new count or is woken here.
        room = self._room
        if room is not None and not room.is_set():
            self._trio_token.run_sync_soon(room.set)

    async def pump_body(self) -> None:
        """On the event loop, beside the worker: read the body into the worker's hand-off, a
        piece of :data:`BODY_PIECE` bytes (and at most one read more) at a time, at most
        :data:`BODY_AHEAD` pieces ahead of it (and none before the worker asks for the body).

        What ends the body ends the worker's reading too: its end (``None``), a client that
        hangs up (:class:`CallCancelled`; the command's token is cancelled), one that brings
        nothing for :data:`BODY_STALL` seconds (:class:`ClientError`), or the request's
        cancellation (the daemon stops)."""
        # No local here holds the exception that ends the body, nor a piece once it is put:
        # the exception's traceback holds this frame (and the worker's, which raises it
        # again), so either would make a reference cycle, which keeps every piece its frames
        # hold until the garbage collector's next full pass, in an idle daemon perhaps never
        # (40 uploads cut short held 150 MiB so: docs/benchmarks.md).
        ended: BaseException | None = CallCancelled("the request was cancelled")
        try:
            while True:
                if self._body_put >= self._body_allowed:
                    self._room = trio.Event()
                    if self._body_put >= self._body_allowed:  # see _wake_pump
                        self._room_since = anyio.current_time()
                        try:
                            await self._room.wait()
                        finally:
                            self._room_waited += anyio.current_time() - self._room_since
                            self._room_since = None
                    continue
                self._body.put(await self._receive_piece())
                self._body_put += 1
                if self.body_done:
                    ended = None
                    return
        except (CallCancelled, ClientError) as err:
            ended = err
        finally:
            self._body.put(ended)
            ended = None

    async def _receive_piece(self) -> list[bytes]:
        """The body's next messages, until :data:`BODY_PIECE` bytes or its end."""
        pieces: list[bytes] = []
        size = 0
        # A stalled upload holds a worker: the deadline moves on with each message, in one
        # cancel scope per piece rather than one per message (fewer rounds through anyio).
        with anyio.CancelScope() as stall:
            self._stall = stall
            try:
                while size < BODY_PIECE and not self.body_done:
                    self._heard = anyio.current_time()
                    stall.deadline = self._heard + (EVICT_AFTER if self.place_wanted()
                                                    else BODY_STALL)
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        self.token.cancel()
                        raise CallCancelled("the client hung up")
                    self.body_done = not message.get("more_body", False)
                    if message.get("body"):
                        pieces.append(message["body"])
                        size += len(message["body"])
                        self._received += len(message["body"])
            finally:
                self._stall = None
        if self.too_slow is not None:
            raise ClientError(f"the request body came at {self.too_slow:.0f} bytes/s, under "
                              f"{MIN_SEND_RATE}, while other uploads waited for its place")
        if stall.cancelled_caught:
            if anyio.current_time() - self._heard < BODY_STALL:
                raise ClientError(f"the request body brought nothing for {EVICT_AFTER:g} s "
                                  "while other uploads waited for its place")
            raise ClientError(f"the request body brought nothing for {BODY_STALL:g} s")
        return pieces

    def hurry(self) -> None:
        """On the event loop: another upload waits for this one's place, so its body may
        bring nothing for :data:`EVICT_AFTER` seconds only (counted from the last it
        brought)."""
        if self._stall is not None:
            self._stall.deadline = min(self._stall.deadline, self._heard + EVICT_AFTER)

    def relax(self) -> None:
        """On the event loop: no upload waits for a place any more, so its body may bring
        nothing for :data:`BODY_STALL` seconds again (counted from the last it brought),
        undoing :meth:`hurry`, and its rate is no longer measured."""
        self._measure = None
        if self._stall is not None:
            self._stall.deadline = self._heard + BODY_STALL

    def body_rate(self, now: float) -> float | None:
        """On the event loop, while another upload waits for a place: the rate (bytes a
        second) at which the client has sent its body since it was first asked this (the
        time the pump waited for the worker left out), once that is :data:`SEND_GRACE`
        seconds; else None.  A measure at :data:`MIN_SEND_RATE` or more ends and the next
        begins, so a burst does not cover a trickle after it."""
        room = self._room_waited
        if self._room_since is not None:
            room += now - self._room_since
        self._measure, rate = stretch_rate(self._measure, now, self._received, room)
        return rate

    def refuse_slow(self, rate: float) -> None:
        """On the event loop: refuse the request (a 400) for a body that came at ``rate``
        while another upload waited for its place; its place is then given up."""
        self.too_slow = rate
        if self._stall is not None:
            self._stall.cancel()

    def drop_body(self) -> None:
        """Once the command and the pump are done: drop what the pump put and the worker
        never took (a piece, the exception that ended the body, whose traceback holds the
        pump's frame and so this request: a reference cycle)."""
        while True:
            try:
                self._body.get_nowait()
            except queue.Empty:
                return

    # --- the reply (from the worker) ----------------------------------------------------

    def start(self, content_type: str, streamed: bool = True,
              extra: Iterable[tuple[str, str]] = ()) -> None:
        headers = [("Content-Type", content_type), ("Vary", "Origin"),
                   ("Access-Control-Expose-Headers",
                    "X-Stream-Output, X-Chunked-Output, X-Content-Length"), *extra]
        if streamed:
            headers += [("Trailer", "X-Stream-Error")]
        message: dict[str, Any] = {
            "type": "http.response.start", "status": 200,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
        # kubo's X-Stream-Error trailer, where the server can send one: hypercorn sends
        # trailers over HTTP/2 (and 3) to a request that accepts them ("te: trailers"),
        # never over HTTP/1.1 (its h11 protocol ends a reply without them)
        if streamed and "http.response.trailers" in self.scope.get("extensions", {}) \
                and "trailers" in (self.header(b"te") or "").lower():
            message["trailers"] = self.trailers = True
        self.send(message)
        self.started = True

    def write(self, data: bytes) -> None:
        if data:
            self.send({"type": "http.response.body", "body": data, "more_body": True})

    def json_lines(self, values: Iterable[Any]) -> None:
        """Stream one JSON value per line (kubo's X-Chunked-Output)."""
        for value in values:
            if not self.started:
                self.start("application/json", extra=[("X-Chunked-Output", "1")])
            self.write(_json(value))
        if not self.started:
            self.start("application/json", extra=[("X-Chunked-Output", "1")])

    def reply(self, value: Any) -> None:
        """One JSON value, the whole reply."""
        self.start("application/json", streamed=False)
        self.write(_json(value))

    def send(self, message: dict[str, Any]) -> None:
        self.token.check()
        anyio.from_thread.run(self._send_bounded, message)

    async def _send_bounded(self, message: dict[str, Any]) -> None:
        with anyio.move_on_after(SEND_STALL) as scope:
            self._send_scope = scope
            try:
                await self._send(message)
            finally:
                self._send_scope = None
        if scope.cancelled_caught:
            self.token.cancel()
            raise CallCancelled("the client stopped reading")

    def cancel(self) -> None:
        """On the event loop: the client left (or the daemon stops): stop the command."""
        self.token.cancel()
        if self._send_scope is not None:
            self._send_scope.cancel()


class _Writer(io.RawIOBase):
    """A file the worker writes a reply into (``tarfile``, ``export_car``), sent in pieces."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._buffer = bytearray()
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: Any) -> int:
        self._written += len(data)
        self._buffer += data
        if len(self._buffer) >= PIECE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._request.write(data)


class _Reader(io.RawIOBase):
    """A file over pieces of bytes (a multipart part, a cat), for code that reads files."""

    def __init__(self, pieces: Iterable[bytes | memoryview]) -> None:
        self._pieces = iter(pieces)
        self._rest = memoryview(b"")  # a view: taking n bytes off the front copies nothing

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = memoryview(piece)
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _json(value: Any) -> bytes:
    text = json.dumps(value, separators=(",", ":"))
    if "\\udc" in text:  # perhaps a name's bytes that are not UTF-8, kept as surrogates
        text = json.dumps(_as_go_strings(value), separators=(",", ":"))
    return text.encode() + b"\n"


# a byte that is not UTF-8 (U+DC80 to U+DCFF under surrogateescape) is one U+FFFD in kubo's
# JSON, as Go's encoding/json writes each such byte of a string
_NOT_UTF8 = dict.fromkeys(range(0xDC80, 0xDD00), "\ufffd")


def _as_go_strings(value: Any) -> Any:
    if isinstance(value, str):
        return value.translate(_NOT_UTF8)
    if isinstance(value, dict):
        return {_as_go_strings(k): _as_go_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_go_strings(v) for v in value]
    return value


def _error(message: str, code: int = 0) -> bytes:
    return _json({"Message": message, "Code": code, "Type": "error"})


# --- multipart bodies (kubo's add, block/put, dag/import) -----------------------------------


def _parts(
        request: Request) -> Iterator[tuple[dict[str, str], Iterator[bytes | memoryview]]]:
    """The parts of a ``multipart/form-data`` body as they arrive: each part's headers
    (lower-case names) and an iterator of its bytes, which must be consumed (or dropped)
    before the next part is taken.  Malformed bodies raise :class:`ClientError`."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    mime, params = parse_options_header(request.header(b"content-type") or "")
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise ClientError("expected a multipart/form-data body with a boundary")
    events: list[tuple[str, Any]] = []
    field: list[bytes] = []
    value: list[bytes] = []
    headers: dict[str, str] = {}

    header_bytes = [0]

    def header_piece(into: list[bytes], data: bytes, start: int, end: int) -> None:
        header_bytes[0] += end - start
        if header_bytes[0] > MAX_PART_HEADERS:
            raise ClientError(f"malformed multipart body: a part's headers are over "
                              f"{MAX_PART_HEADERS} bytes")
        into.append(data[start:end])

    def part_begin() -> None:
        headers.clear()
        header_bytes[0] = 0

    def header_end() -> None:
        headers[b"".join(field).decode("latin-1").lower()] = b"".join(value).decode("latin-1")
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": part_begin,
        "on_header_field": lambda d, s, e: header_piece(field, d, s, e),
        "on_header_value": lambda d, s, e: header_piece(value, d, s, e),
        "on_header_end": header_end,
        "on_headers_finished": lambda: events.append(("begin", dict(headers))),
        # a view, not a copy: the body's bytes are not copied between the socket's buffer
        # and the block writer's (python-multipart passes the bytes given to it, or its
        # boundary's bytes; anything mutable is copied)
        "on_part_data": lambda d, s, e: events.append(
            ("data", memoryview(d)[s:e] if isinstance(d, bytes) else bytes(d[s:e]))),
        "on_part_end": lambda: events.append(("end", None)),
        "on_end": lambda: events.append(("done", None)),
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]

    def stream() -> Iterator[tuple[str, Any]]:
        for piece in request.body():
            try:
                parser.write(piece)
            except MultipartParseError as err:
                raise ClientError(f"malformed multipart body: {err}") from None
            yield from events
            events.clear()
        try:
            parser.finalize()
        except MultipartParseError as err:
            raise ClientError(f"malformed multipart body: {err}") from None
        yield from events
        events.clear()

    flow = stream()
    done = False

    def data() -> Iterator[bytes | memoryview]:
        nonlocal done
        for kind, item in flow:
            if kind == "data":
                yield item
            elif kind == "end":
                return
        done = True
        raise ClientError("malformed multipart body: it ends inside a part")

    for kind, item in flow:
        if kind == "begin":
            part = data()
            yield item, part
            for _ in part:  # what the consumer left of the part
                pass
            if done:
                return
        elif kind == "done":
            return
    raise ClientError("malformed multipart body: no closing boundary")


def _part_path(headers: dict[str, str]) -> str:
    """The path a part of kubo's add carries: its urlencoded ``filename``.  A ``mode`` or
    ``mtime`` in its field name (kubo-rpc-client's ``name="file?mode=0644"``) is refused, as
    the query's are."""
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(headers.get("content-disposition", ""))
    field = (params.get(b"name") or b"").decode("utf-8", "replace")
    for kept in urllib.parse.parse_qs(field.partition("?")[2]):
        if kept in ("mode", "mtime", "mtime-nsecs"):
            raise IpfsError(f"add: a part's {kept!r} is not supported here")
    raw = _query_unescape(params.get(b"filename") or b"")
    if b"\0" in raw:  # kubo stores it; no file system takes it back out (nor `get` here)
        raise ClientError(f"add: a part's file name {_shown(raw)} holds a NUL byte")
    # a name's bytes are kept as they are, UTF-8 or not (a dag-pb link's Name is bytes, and
    # kubo's a Go string): those that are not UTF-8 travel as surrogates (surrogateescape)
    path = raw.decode("utf-8", "surrogateescape").strip("/")
    if path and importer.steps_out(path.split("/")):
        raise ClientError(f"add: a part's file name {_shown(raw)} steps out of the tree "
                          "(an empty, '.' or '..' component)")
    return path


_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _query_unescape(name: bytes) -> bytes:
    """A part's ``filename`` as kubo reads it (boxo's multipart reader, Go's
    ``url.QueryUnescape``): ``+`` a space and ``%XX`` its byte, whatever the byte; a ``%``
    not followed by two hex digits leaves the whole name as it came."""
    if _BAD_ESCAPE.search(name):
        return name
    return urllib.parse.unquote_to_bytes(name.replace(b"+", b" "))


def _shown(name: bytes) -> str:
    """A name in an error: its first 200 bytes, quoted, a byte that is not printable ASCII
    escaped."""
    return repr(name[:200])[1:]


# --- the commands ---------------------------------------------------------------------------

Command = Callable[["RpcApi", Request], None]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


def _add_options(request: Request) -> AddOptions:
    cid_version = request.number("cid-version", default=0)
    assert cid_version is not None
    raw = request.option("raw-leaves")
    chunker = request.option("chunker", "s") or "size-262144"
    try:
        chunkers.parse(chunker)  # kubo's strings, rules and reasons: size-N, rabin, buzhash
    except ChunkerError as err:
        raise IpfsError(f"chunker {chunker!r}: {err}") from None
    hash_name = request.option("hash", "H") or "sha2-256"
    if hash_name != "sha2-256":
        raise IpfsError(f"hash {hash_name!r} is not supported here: only sha2-256")
    for unsupported, alias in (("trickle", "t"), ("inline", "inline"), ("nocopy", "nocopy"),
                               ("fscache", "fscache")):
        if request.flag(unsupported, alias):
            raise IpfsError(f"add option {unsupported!r} is not supported here")
    if request.option("to-files"):
        raise IpfsError("add option 'to-files' is not supported here")
    # kubo keeps a mode and an mtime in the file's UnixFS node (another CID); the importer
    # here writes neither, so it refuses rather than answer a CID kubo would not
    for kept in ("preserve-mode", "preserve-mtime"):
        if request.flag(kept):
            raise IpfsError(f"add option {kept!r} is not supported here")
    for kept in ("mode", "mtime", "mtime-nsecs"):
        if request.option(kept) is not None:
            raise IpfsError(f"add option {kept!r} is not supported here")
    return AddOptions(
        cid_version=cid_version,
        raw_leaves=None if raw is None else request.flag("raw-leaves"),
        pin=request.flag("pin", default=True),
        only_hash=request.flag("only-hash", "n"),
        chunker=chunker,
        wrap=request.flag("wrap-with-directory", "w"),
    )


@command("add")
def _add(api: RpcApi, request: Request) -> None:
    """Each file, symlink and directory as it is added ({"Name", "Hash", "Size"}), with
    ``progress`` also {"Name", "Bytes"} as a file's bytes go in.  ``quiet``, ``quieter`` and
    ``silent`` change only what kubo's command line prints, not this stream."""
    progress = request.flag("progress", "p")
    options = _add_options(request)

    def reported(name: str, cid: str, tsize: int) -> None:
        if name == _UNNAMED:  # a file without a name (kubo's stdin) is named by its CID
            name = cid
        request.json_lines([{"Name": name, "Hash": cid, "Size": str(tsize)}])

    def counted(name: str, pieces: Iterator[bytes | memoryview]
                ) -> Iterator[bytes | memoryview]:
        done = told = 0
        for piece in pieces:
            done += len(piece)
            if progress and done - told >= PROGRESS_STEP:
                request.json_lines([{"Name": name, "Bytes": done}])
                told = done
            yield piece
        if progress:
            request.json_lines([{"Name": name, "Bytes": done}])

    def entries() -> Iterator[tuple[str, str, Any]]:
        unnamed = 0
        for headers, data in _parts(request):
            path = _part_path(headers)
            kind = headers.get("content-type", "application/octet-stream").split(";")[0]
            if not path:
                unnamed += 1
                if unnamed > 1 or options.wrap:
                    raise ClientError("a file without a name can only be added alone")
                path = _UNNAMED
            if kind == "application/x-directory":
                yield path, "dir", None
            elif kind == "application/symlink":
                yield path, "symlink", b"".join(_bounded(
                    data, 4096, ClientError("a symlink target is longer than 4096 bytes")))
            else:
                yield path, "file", counted("" if path == _UNNAMED else path, data)

    added = api.node.add_entries(entries(), options, reported)
    if not added:
        raise ClientError("no files were given to add")
    if options.pin and not options.only_hash:
        api.announce(cid for _, cid in added)
    request.json_lines(())


_UNNAMED = "\0"


def _bounded(pieces: Iterable[bytes | memoryview], limit: int,
             error: Exception) -> Iterator[bytes | memoryview]:
    """``pieces``, raising ``error`` (and reading no further) past ``limit`` bytes."""
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > limit:
            raise error
        yield piece


def _path(request: Request, what: str = "ipfs-path") -> str:
    return request.arg(what)


@command("cat")
def _cat(api: RpcApi, request: Request) -> None:
    path = _path(request)
    offset = request.number("offset", "o", default=0) or 0
    length = request.number("length", "l")
    size = api.node.stat(path, links=False)  # a directory's entries are not read
    if size.type != EntryType.FILE:
        raise IpfsError("this dag node is a directory" if size.type == EntryType.DIRECTORY
                        else "cannot cat a symlink")
    if offset > size.size:
        raise IpfsError(f"offset was past the end of the file ({offset} > {size.size})")
    pieces = api.node.cat(path, offset, length)
    rest = size.size - offset if length is None else min(length, size.size - offset)
    request.start("text/plain", extra=[("X-Stream-Output", "1"),
                                       ("X-Content-Length", str(rest))])
    for piece in pieces:
        request.write(piece)


@command("ls")
def _ls(api: RpcApi, request: Request) -> None:
    """{"Objects": [{"Hash": path, "Links": [...]}, ...]}; with ``stream`` (``s``), as kubo,
    one such line per link as it is read, so a directory of millions of entries is never
    held whole (a path without links: one line with none).  Without it the reply is built
    whole, as kubo builds it (its links, once, sorted by name)."""
    stream = request.flag("stream", "s")
    paths = request.all_args("ipfs-path")
    # each path resolved first (a missing one: an error reply, not a cut stream), the node
    # alone: a directory's entries are read one at a time, below
    kinds = [api.node.stat(path, links=False).type for path in paths]

    def links(path: str, kind: EntryType) -> Iterator[dict[str, Any]]:
        if kind != EntryType.DIRECTORY:
            return
        for entry in api.node.iter_ls(path):
            link: dict[str, Any] = {"Name": entry.name, "Hash": entry.cid,
                                    "Size": entry.size, "Type": _LS_TYPE[entry.type],
                                    "Target": ""}
            if entry.type == EntryType.SYMLINK:
                link["Target"] = api.node.stat(entry.cid, links=False).target or ""
            yield link

    if not stream:
        # kubo sorts each path's links by name (Go's byte order) before it answers: a HAMT
        # shard holds them in hash order
        request.reply({"Objects": [{"Hash": path, "Links": sorted(
            links(path, kind), key=lambda link: link["Name"].encode("utf-8", "surrogateescape"))}
            for path, kind in zip(paths, kinds, strict=True)]})
        return

    def lines() -> Iterator[dict[str, Any]]:
        for path, kind in zip(paths, kinds, strict=True):
            empty = True
            for link in links(path, kind):
                empty = False
                yield {"Objects": [{"Hash": path, "Links": [link]}]}
            if empty:
                yield {"Objects": [{"Hash": path, "Links": []}]}

    request.json_lines(lines())


MAX_GET_DEPTH = 1024
"""Directory levels a ``get`` goes down, at most: it holds one listing (a HAMT shard's links
or a directory block) and one name a level."""


@command("get")
def _get(api: RpcApi, request: Request) -> None:
    """A tar of the file or tree, entries named from the path's last component (as kubo).

    Depth first, each directory read an entry at a time as the tar is written: what is held
    is one open listing and one name per directory level (at most :data:`MAX_GET_DEPTH`), never a
    directory's entries, and nothing per entry written (``tarfile`` would keep a member per
    entry: the headers are written here)."""
    path = _path(request)
    if request.flag("compress", "C"):
        raise IpfsError("get: compression is not supported here")
    from ww.ipfs.path import parse_path

    # the top entry is named by the path's last component as the client wrote it (kubo's
    # path keeps its text: a CID in another multibase is not rewritten)
    parsed = parse_path(path)
    top = parsed.segments[-1] if parsed.segments else \
        path.removeprefix("/ipfs/").strip("/").split("/")[0]
    # kubo's entries carry the time they are written (UnixFS here keeps none: boxo's
    # TarWriter takes time.Now()); one whole second for the reply
    now = int(time.time())
    info = api.node.stat(path, links=False)  # a missing path: an error reply, not a cut stream
    # kubo's X-Content-Length (res.SetLength of the node's Size()): a file's bytes, a
    # directory's cumulative DAG size, a symlink's target's bytes
    length = {EntryType.FILE: info.size, EntryType.DIRECTORY: info.cumulative_size}.get(
        info.type, len((info.target or "").encode("utf-8", "surrogateescape")))
    request.start("application/x-tar", extra=[("X-Stream-Output", "1"),
                                              ("X-Content-Length", str(length))])
    out = _Writer(request)
    # one frame per directory being written: its own name and its entries still to go
    # (each child by its CID: resolving "<dir>/<name>" again would walk a sharded directory
    # once per entry; a 100 000-entry one took CPU-minutes)
    frames: list[tuple[str, Iterator[Entry]]] = []

    def put(own: str, where: str, kind: EntryType, size: int) -> None:
        # the path is made here from each level's own name: a frame holding its whole path
        # would hold the square of the depth
        member = _KuboTarInfo("/".join([*(name for name, _ in frames), own]))
        member.mtime = now
        if kind == EntryType.DIRECTORY:
            if len(frames) >= MAX_GET_DEPTH:
                raise IpfsError(f"get: {path} is more than {MAX_GET_DEPTH} directories deep")
            member.type, member.mode = tarfile.DIRTYPE, 0o755
            _tar_header(out, member)
            frames.append((own, api.node.iter_ls(where)))
        elif kind == EntryType.SYMLINK:
            member.type, member.mode = tarfile.SYMTYPE, 0o777
            member.linkname = api.node.stat(where, links=False).target or ""
            _tar_header(out, member)
        else:
            member.size, member.mode = size, 0o644
            _tar_header(out, member)
            written = 0
            for piece in api.node.cat(where):
                written += len(piece)
                out.write(piece)
            if written != size:
                raise IpfsError(f"get: {where} has {written} bytes where it says {size}")
            out.write(bytes(-size % tarfile.BLOCKSIZE))

    put(top, path, info.type, info.size)
    while frames:
        entry = next(frames[-1][1], None)
        if entry is None:
            frames.pop()
            continue
        # a name from the content that would step out of its directory when unpacked (``..``,
        # ``a/../..``): the tar is cut short there, as `ww get` refuses to write it to disk
        exporter.check_entry_name(entry.name, "/".join(name for name, _ in frames))
        put(entry.name, entry.cid, entry.type, entry.size)
    # tarfile's end of archive: two zero blocks, the whole padded to a record
    out.write(bytes(2 * tarfile.BLOCKSIZE))
    out.write(bytes(-out.tell() % tarfile.RECORDSIZE))
    out.flush()


class _KuboTarInfo(tarfile.TarInfo):
    """A member as kubo's tar names it: a directory's name without the trailing ``/``
    ``tarfile`` adds (boxo's TarWriter writes ``path.Join``'s names as they are)."""

    def get_info(self) -> Any:
        return {**super().get_info(), "name": self.name}


def _tar_header(out: _Writer, member: tarfile.TarInfo) -> None:
    """``member``'s header, as ``tarfile.open(mode="w|", format=PAX_FORMAT)`` writes it."""
    out.write(member.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))


@command("block/get")
def _block_get(api: RpcApi, request: Request) -> None:
    block = api.node.block(_cid_arg(api, request))
    request.start("text/plain", extra=[("X-Stream-Output", "1")])
    request.write(block)


@command("block/stat")
def _block_stat(api: RpcApi, request: Request) -> None:
    cid = _cid_arg(api, request)
    request.reply({"Key": cid, "Size": api.node.block_size(cid)})


def _cid_arg(api: RpcApi, request: Request) -> str:
    return api.node.resolve(request.arg("cid"))


@command("block/put")
def _block_put(api: RpcApi, request: Request) -> None:
    codec_name = request.option("cid-codec") or request.option("format", "f") or "raw"
    codec = _CODECS.get(codec_name)
    if codec is None:
        raise IpfsError(f"cid-codec {codec_name!r} is not supported here: raw or dag-pb")
    if (request.option("mhtype") or "sha2-256") != "sha2-256":
        raise IpfsError("only the sha2-256 multihash is supported here")
    limit = BIG_BLOCK_LIMIT if request.flag("allow-big-block") else BLOCK_LIMIT
    version = 0 if codec_name in ("v0", "protobuf") else 1
    pin = request.flag("pin")
    # each block's line as it is stored, as kubo emits them (and so nothing kept a part:
    # the old reply, built whole, held some 350 bytes a part of a body without end)
    for _, data in _parts(request):
        block = b"".join(_bounded(data, limit, IpfsError(
            "produced block is over 1MiB: big blocks can't be exchanged with other peers. "
            "consider using UnixFS for automatic chunking of bigger files, or pass "
            "--allow-big-block to override" if limit == BLOCK_LIMIT else
            f"the block is over {limit} bytes")))
        cid = api.node.put_block(block, codec, version, pin)
        request.json_lines([{"Key": cid, "Size": len(block)}])
    request.json_lines(())


@command("dag/export")
def _dag_export(api: RpcApi, request: Request) -> None:
    root = request.arg("root")
    api.node.block(api.node.resolve(root))  # a missing root: an error reply, not a cut stream
    request.start("application/vnd.ipld.car", extra=[("X-Stream-Output", "1")])
    out = _Writer(request)
    api.node.export_car([root], out)  # type: ignore[arg-type]
    out.flush()


@command("dag/import")
def _dag_import(api: RpcApi, request: Request) -> None:
    """The CAR parts imported whole or not at all, together (verified, staged, then moved
    in once every part is read); their roots pinned unless ``pin-roots=false``, as kubo pins
    them: once all are read, so a part cut short or malformed (a client gone midway) leaves
    none of the parts before it pinned.  (kubo's ``stats`` is not reported.)"""
    pin = request.flag("pin-roots", default=True)
    roots = api.node.import_cars_pinning(
        (io.BufferedReader(_Reader(data)) for _, data in _parts(request)), pin)
    if pin:
        api.announce(roots)
    request.json_lines({"Root": {"Cid": {"/": root}, "PinErrorMsg": ""}} for root in roots)


@command("pin/add")
def _pin_add(api: RpcApi, request: Request) -> None:
    recursive = request.flag("recursive", "r", default=True)
    # the blocks the paths share are walked once (the same path 1,024 times, the most a
    # query holds, walked its DAG 1,024 times: 0.35 s each over 16,400 blocks)
    paths = request.all_args("ipfs-path")
    api.node.pin_paths(paths, recursive)
    pins = [api.node.resolve(path) for path in paths]
    api.announce(pins)
    request.reply({"Pins": pins})


@command("pin/rm")
def _pin_rm(api: RpcApi, request: Request) -> None:
    pins = []
    for path in request.all_args("ipfs-path"):
        try:
            api.node.unpin(path)
        except IpfsError:
            raise IpfsError("not pinned or pinned indirectly") from None
        pins.append(api.node.resolve(path))
    request.reply({"Pins": pins})


@command("pin/ls")
def _pin_ls(api: RpcApi, request: Request) -> None:
    """kubo's shapes (0.26 on, core/commands/pin/pin.go): ``{"Keys": {cid: {"Type", "Name"}}}``
    (a Go map: its keys sorted), ``{}`` when nothing is pinned (``Keys`` is omitempty); with
    ``stream``, one ``{"Cid", "Type"}`` line each (``Name`` omitted when empty, as kubo's
    omitempty).  An argument pinned indirectly is ``"indirect through <root>"``: the first
    recursive pin found holding it."""
    kind = request.option("type", "t")
    kind = "all" if kind is None else kind  # kubo's default; given empty, it is refused
    if kind not in ("direct", "indirect", "recursive", "all"):
        raise IpfsError(f"invalid type '{kind}', must be one of "
                        "{direct, indirect, recursive, all}")  # kubo's, a 500
    found = api.node.pin_ls(kind)
    if request.args:
        chosen = {}
        for path in request.args:
            cid = api.node.resolve(path)
            if cid not in found:
                raise IpfsError(f"path '{path}' is not pinned")
            chosen[cid] = found[cid]
        indirect = [cid for cid, kind in chosen.items() if kind == "indirect"]
        for cid, root in api.node.pinned_through(indirect).items():  # one walk for them all
            chosen[cid] = f"indirect through {root}"
        found = chosen
    if request.flag("stream", "s"):
        request.json_lines({"Cid": cid, "Type": kind} for cid, kind in found.items())
    elif found:
        request.reply({"Keys": {cid: {"Type": found[cid], "Name": ""} for cid in sorted(found)}})
    else:
        request.reply({})


@command("id")
def _id(api: RpcApi, request: Request) -> None:
    from ww.core.identity import public_key_from_peer_id

    if request.args:
        raise IpfsError("id: only this node's own identity is known here")
    info = api.node.id()
    key = base64.b64encode(public_key_from_peer_id(info.id).to_protobuf()).decode()
    request.reply({"ID": info.id, "PublicKey": key,
                   "Addresses": [f"{a}/p2p/{info.id}" if "/p2p/" not in a else a
                                 for a in info.addresses],
                   "AgentVersion": f"ww/{VERSION}", "Protocols": info.protocols})


@command("version")
def _version(api: RpcApi, request: Request) -> None:
    from ww.ipfs.repo import REPO_VERSION

    request.reply({"Version": VERSION, "Commit": "", "Repo": str(REPO_VERSION),
                   "System": f"{platform.machine()}/{platform.system().lower()}",
                   "Golang": f"python{platform.python_version()}"})


# kubo's IdOutput unset (core/commands/id.go): swarm/peers' "Identify" has no omitempty, so
# every entry carries it, zero unless ``identify`` is asked for (kubo 0.20 on)
_NO_IDENTIFY = {"ID": "", "PublicKey": "", "Addresses": None, "AgentVersion": "",
                "Protocols": None}


@command("swarm/peers")
def _swarm_peers(api: RpcApi, request: Request) -> None:
    """kubo's connInfos (core/commands/swarm.go): one entry per connection, its remote
    ``Addr`` and ``Peer`` (the omitempty ``Latency``, ``Muxer``, ``Direction``, ``Streams``
    are not filled in: asking for them is not supported here) and the zero ``Identify``,
    sorted by ``Addr``; ``{"Peers":null}`` (Go's nil slice) when there is none."""
    peers = []
    for peer in api.node.peers():
        for addr in peer.addresses or [""]:
            entry: dict[str, Any] = {"Addr": addr} if addr else {}
            entry |= {"Peer": peer.id, "Identify": dict(_NO_IDENTIFY)}
            peers.append(entry)
    peers.sort(key=lambda entry: entry.get("Addr", "").encode())
    request.reply({"Peers": peers or None})


@command("swarm/connect")
def _swarm_connect(api: RpcApi, request: Request) -> None:
    done = []
    for addr in request.all_args("address"):
        if api.dial_refusal is not None and (why := api.dial_refusal(addr)):
            raise IpfsError(f"connect {addr} failure: {why}")
        api.node.connect(addr)
        done.append(f"connect {addr.rsplit('/p2p/', 1)[-1]} success")
    request.reply({"Strings": done})


GC_INCOMPLETE = "garbage collection incomplete: could not delete some blocks"
MAX_GC_REASONS = 100  # failures named in the error of a gc without stream-errors, at most


@command("repo/gc")
def _repo_gc(api: RpcApi, request: Request) -> None:
    """Each block as gc removes it, as kubo streams them (core/commands/repo.go):
    ``{"Key": {"/": cid}}`` (its CIDv1 with the raw codec, ``bafkrei...``, as kubo names a
    stored block); ``silent``: no lines (unless ``stream-errors``: kubo's streams every line
    then); ``quiet`` changes only what kubo's command line prints.

    A block that cannot be removed: with ``stream-errors``, a line ``{"Key": null, "Error":
    "could not remove <cid>: <reason>"}`` as it happens, then ``{"Key": null, "Error":
    "garbage collection incomplete: could not delete some blocks"}`` once gc is done and the
    error ``encountered errors during gc run``; without, the error names the failures and
    that summary, joined by ``; `` (kubo's MultiError; here the first
    :data:`MAX_GC_REASONS`).  An error after the first line cuts the reply short (see the
    module's doc).  A client that leaves does not stop gc (kubo's stops with the request's
    context, gc/gc.go): what it removes is the same."""
    silent = request.flag("silent")
    stream_errors = request.flag("stream-errors")
    request.flag("quiet", "q")  # a bad value is refused, as kubo's option parser does
    reasons: list[str] = []

    def line(value: dict[str, Any]) -> None:
        if (silent and not stream_errors) or request.token.cancelled:
            return
        try:
            request.json_lines([value])
        except CallCancelled:
            pass  # the client left: gc goes on, unreported

    def failed(cid: str, reason: str) -> None:
        api.log("gc-error", error=reason)
        if stream_errors:
            line({"Key": None, "Error": reason})
        elif len(reasons) < MAX_GC_REASONS:
            reasons.append(reason)

    report = api.node.gc(lambda cid: line({"Key": {"/": cid}}), failed)
    api.log("gc", removed_blocks=report.removed_blocks, freed_bytes=report.freed_bytes,
            failed_blocks=report.failed_blocks)
    if report.failed_blocks:
        if stream_errors:
            line({"Key": None, "Error": GC_INCOMPLETE})
            raise IpfsError("encountered errors during gc run")
        raise IpfsError("; ".join([*reasons, GC_INCOMPLETE]))


@command("resolve")
def _resolve(api: RpcApi, request: Request) -> None:
    request.reply({"Path": "/ipfs/" + api.node.resolve(request.arg("name"))})


@command("repo/stat")
def _repo_stat(api: RpcApi, request: Request) -> None:
    stat = api.node.repo_stat()
    # kubo's corerepo.Stat has no omitempty: with size-only its other fields are zero, not
    # absent (kubo-rpc-client's repo.stat reads NumObjects either way)
    if request.flag("size-only", "s"):
        request.reply({"RepoSize": stat.repo_size, "StorageMax": (1 << 64) - 1,
                       "NumObjects": 0, "RepoPath": "", "Version": ""})
        return
    request.reply({"RepoSize": stat.repo_size, "StorageMax": (1 << 64) - 1,
                   "NumObjects": stat.num_objects, "RepoPath": stat.repo_path,
                   "Version": stat.version})


@command("routing/findprovs")
def _findprovs(api: RpcApi, request: Request) -> None:
    """The providers the DHT names for the key, as kubo streams them: one QueryEvent per
    provider, ``{"Extra": "", "ID": "", "Responses": [{"Addrs": [...], "ID": peer}],
    "Type": 4}`` (kubo's routing.Provider); without a router, kubo's error."""
    key = request.arg("key")
    limit = request.number("num-providers", "n", default=DEFAULT_PROVIDERS)
    assert limit is not None
    if limit < 1:
        raise ClientError("number of providers must be greater than 0")
    if api.routing is None:
        raise IpfsError("routing: operation or key not supported")  # kubo's, without a router
    from ww.core.cid import CID, CidError

    try:
        cid = str(CID.parse(key))
    except CidError as err:
        raise ClientError(str(err)) from None
    found = api.routing.find_providers(cid, min(limit, MAX_PROVIDERS), request.token)
    request.json_lines({"Extra": "", "ID": "", "Type": 4,
                        "Responses": [{"Addrs": list(p.addresses), "ID": p.id}]}
                       for p in found)


class Routing(Protocol):
    """Content routing for the API (`ww daemon` with a DHT: :mod:`ww.app.daemon`)."""

    def announce(self, cids: Iterable[str]) -> None:
        """Announce ``cids`` in the background; returns at once."""

    def find_providers(self, cid: str, limit: int, token: CancelToken) -> list[PeerInfo]:
        """Up to ``limit`` providers of ``cid``; blocks (a worker thread), ends when
        ``token`` is cancelled (raising :class:`CallCancelled`)."""
        ...


# --- the app --------------------------------------------------------------------------------


class RpcApi:
    """The ASGI app of kubo's RPC API over ``node``.

    ``origins``: the browser origins allowed besides none at all (kubo's default: the API's
    own address, as ``http://127.0.0.1:<port>``, ``http://localhost:<port>``, and https).
    ``dial_refusal``: the daemon's dial policy (a reason, or None) for ``swarm/connect``.
    ``log(event, **fields)``: one line on the daemon's log.  ``routing``: announces what
    ``add``, ``pin/add`` and ``dag/import`` pin, and answers ``routing/findprovs`` (None:
    nothing is announced, and findprovs fails as kubo's does without a router)."""

    def __init__(self, node: EmbeddedNode, *, origins: Iterable[str] = (),
                 dial_refusal: Callable[[str], str | None] | None = None,
                 log: Callable[..., None] | None = None, workers: int = WORKERS,
                 routing: Routing | None = None) -> None:
        self.node = node
        self.routing = routing
        self.origins = set(origins)
        self.dial_refusal = dial_refusal
        self.log = log or (lambda event, **fields: None)
        self._limiter = anyio.CapacityLimiter(workers)
        # Uploads wait on their clients: they take a place in their own smaller pool first,
        # so clients that upload slowly (or never finish) cannot take every worker.
        self._uploads = anyio.CapacityLimiter(min(UPLOADS, workers))
        self._placed: set[Request] = set()  # the uploads with a place
        self._place_wanted = 0  # uploads waiting for one
        # Uploads under way (waiting for a place or not), and the most since the memory the
        # allocator keeps was last given back (see _upload_ended).
        self._uploading = 0
        self._uploading_peak = 0

    def _upload_began(self) -> None:
        self._uploading += 1
        self._uploading_peak = max(self._uploading_peak, self._uploading)

    def _upload_ended(self) -> None:
        """Once the uploads under way fall to half the most there were since the last time
        (or to none), have the allocator give back the memory it keeps freed
        (:func:`ww.serve.server.give_back_freed`): uploads that stalled with their bodies half
        read, or many at once, leave it hundreds of MiB that it would otherwise keep for
        good; halving, a few uploads that stay (a client that trickles) keep none of it."""
        self._uploading -= 1
        if self._uploading <= self._uploading_peak // 2:
            self._uploading_peak = self._uploading
            give_back_freed()

    async def _upload_place(self, request: Request) -> None:
        """Take a place among the :data:`UPLOADS` for ``request``.  While it waits, an
        upload with a place whose body keeps the daemon waiting on its client gives it up
        after :data:`EVICT_AFTER` seconds (a 400, as after :data:`BODY_STALL` seconds of
        nothing), so that uploads that trickle a byte now and then cannot hold every place
        for as long as they like; once none waits, they may wait :data:`BODY_STALL` seconds
        again."""
        request.place_wanted = lambda: self._place_wanted > 0
        if self._uploads.available_tokens < 1:
            self._place_wanted += 1
            try:
                for placed in self._placed:
                    placed.hurry()
                with held_for_others(request.scope):
                    while True:
                        with anyio.move_on_after(self._refuse_slowest()):
                            await self._uploads.acquire()
                            break
            finally:
                self._place_wanted -= 1
                if not self._place_wanted:  # the others go back to BODY_STALL
                    for placed in self._placed:
                        placed.relax()
        else:
            await self._uploads.acquire()
        self._placed.add(request)

    def _refuse_slowest(self) -> float:
        """While an upload waits for a place: refuse the placed upload whose body has come
        slowest, under :data:`MIN_SEND_RATE` over :data:`SEND_GRACE` seconds or more (one
        at a time: none while one refused still holds its place); how long to wait before
        looking again."""
        now = anyio.current_time()
        if any(placed.too_slow is not None for placed in self._placed):
            return 1.0
        slowest, slowest_rate = None, float(MIN_SEND_RATE)
        for placed in self._placed:
            rate = placed.body_rate(now)
            if rate is not None and rate < slowest_rate and placed._stall is not None:
                slowest, slowest_rate = placed, rate
        if slowest is not None:
            slowest.refuse_slow(slowest_rate)
        return 1.0

    def announce(self, cids: Iterable[str]) -> None:
        """Announce ``cids`` (just pinned) through the router, off the request's path."""
        if self.routing is not None:
            self.routing.announce(list(cids))

    def allow_port(self, port: int) -> None:
        """Allow the API's own origins (kubo's defaults), once its port is known."""
        for host in ("127.0.0.1", "localhost", "[::1]"):
            for scheme in ("http", "https"):
                self.origins.add(f"{scheme}://{host}:{port}")

    def _cross_origin(self, request: Request) -> bool:
        """A browser request from a page of another origin (kubo answers 403)."""
        origin = request.header(b"origin")
        if origin is not None:
            return origin not in self.origins
        referer = request.header(b"referer")
        if referer:
            parts = urllib.parse.urlsplit(referer)
            return f"{parts.scheme}://{parts.netloc}" not in self.origins
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive, send)
        path = scope.get("path", "")
        name = path[len("/api/v0/"):].strip("/") if path.startswith("/api/v0/") else None
        if name is None:
            await _plain(send, 404, b"404 page not found\n")
            return
        if request.header(b"transfer-encoding") is not None \
                and request.header(b"content-length") is not None:
            # Read one way here and another by a proxy in front, the rest of the connection
            # would be requests the proxy never saw: refused, the connection closed (RFC
            # 9112, 6.1), never read on (h11 takes Transfer-Encoding and reads on).
            await _reply(send, 400, _error("a request with both Transfer-Encoding and "
                                           "Content-Length is refused", 1),
                         [(b"connection", b"close")])
            return
        if self._cross_origin(request):
            await _plain(send, 403, b"403 - Forbidden\n")
            return
        if scope.get("method") != "POST":
            await _plain(send, 405, b"405 - Method Not Allowed\n")
            return
        handler = COMMANDS.get(name)
        if handler is None:
            await _reply(send, 404, _error(f"unknown command {path!r}", 0))
            return
        try:
            await self._run(request, handler, name)
        except WwError as err:
            if isinstance(err, CallCancelled):
                return
            self.log("rpc-error", command=name, error=str(err))
            if not request.started:
                status, code = (400, 1) if isinstance(err, UsageError) else (500, 0)
                await _reply(send, status, _error(_kubo_message(err), code))
            elif request.trailers:
                await _stream_error(request, _kubo_message(err))
            else:
                raise _CutShort(str(err)) from None
        except _CutShort:
            raise
        except Exception as err:  # a defect of ours: kubo's ErrImplementation
            self.log("rpc-error", command=name, error=f"{type(err).__name__}: {err}")
            if not request.started:
                await _reply(send, 500, _error(f"internal error: {type(err).__name__}: {err}", 2))
            elif request.trailers:
                await _stream_error(request, f"internal error: {type(err).__name__}: {err}")
            else:
                raise _CutShort(str(err)) from None

    async def _run(self, request: Request, handler: Command, name: str) -> None:
        failure: list[BaseException] = []  # what the command raised, raised below

        def work() -> None:
            # What the command raises is handed over here rather than raised out of the
            # thread: raised through trio's to_thread.run_sync, or returned from it, it would
            # be kept in a reference cycle (its traceback holds this frame, whose caller's
            # frame holds the outcome that holds it), and with it every frame of the command
            # and the pieces of body they hold, until a full garbage collection (see
            # Request.pump_body).  Taken out of the list on the loop, it is in no cycle.
            try:
                with cancellable(request.token):
                    handler(self, request)
                    if not request.started:
                        request.json_lines(())
                    request.send({"type": "http.response.body", "body": b"",
                                  "more_body": False})
                    if request.trailers:
                        request.send({"type": "http.response.trailers", "headers": [],
                                      "more_trailers": False})
            except Exception as err:
                failure.append(err)

        has_body = name in ("add", "block/put", "dag/import")

        async def watch() -> None:
            try:
                if has_body:
                    await request.pump_body()
                    if not request.body_done:  # it ended otherwise: nothing more to watch
                        await anyio.sleep_forever()
                while (await receive_message(request))["type"] != "http.disconnect":
                    pass
            finally:
                request.cancel()

        async def work_in_thread() -> None:
            try:
                if has_body:
                    await self._upload_place(request)
                    try:
                        await anyio.to_thread.run_sync(work, limiter=self._limiter)
                    finally:
                        self._placed.discard(request)
                        self._uploads.release()
                else:
                    await anyio.to_thread.run_sync(work, limiter=self._limiter)
            except Exception as err:  # raised below, outside the task group (no group)
                failure.append(err)

        if has_body:
            self._upload_began()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watch)
                try:
                    await work_in_thread()
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            request.drop_body()
            if has_body:
                self._upload_ended()
        if failure:
            error = failure[0]
            failure.clear()
            try:
                raise error
            finally:
                del error  # no cycle through this frame (see Request.pump_body)


async def receive_message(request: Request) -> dict[str, Any]:
    return await request._receive()  # type: ignore[no-any-return]


def _kubo_message(err: WwError) -> str:
    """The error's message, with the words kubo's own message has for its kind (clients such
    as ww's KuboClient tell the kinds apart by them)."""
    message = str(err)
    if isinstance(err, NotFoundError) and "not found" not in message:
        return f"not found: {message}"
    if isinstance(err, InvalidPathError) and "invalid" not in message:
        return f"invalid path: {message}"
    if isinstance(err, NotAFileError) and "not a file" not in message:
        return f"not a file: {message}"
    return message


async def _stream_error(request: Request, message: str) -> None:
    """End a reply that has begun with kubo's ``X-Stream-Error`` trailer (HTTP/2)."""
    value = " ".join(message.split()).encode("latin-1", "replace")  # one line, no CR/LF
    try:
        await request._send_bounded({"type": "http.response.body", "body": b"",
                                     "more_body": False})
        await request._send_bounded({"type": "http.response.trailers",
                                     "headers": [(b"x-stream-error", value)],
                                     "more_trailers": False})
    except (CallCancelled, OSError):
        pass  # the client left


class _CutShort(Exception):
    """Raised to the server once a reply has begun: the connection is cut, not finished."""


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body})


async def _reply(send: Any, status: int, body: bytes,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"vary", b"Origin"),
                            *(extra or ())]})
    await send({"type": "http.response.body", "body": body})

