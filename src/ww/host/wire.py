"""The host's end of a Cap'n Proto connection, sending each error's reason exactly as written.

pycapnp turns an exception raised by a server method into ``KJ_EXCEPTION(FAILED, message)``,
and KJ writes such an exception's description as ``message = <text>``: every error the host
answers a cell with would reach it as ``message = capability denied: …`` instead of the
documented ``capability denied: …``.  pycapnp offers no hook for that description, so
:func:`connect` sits between pycapnp and the socket: a ``Return`` message carrying an
exception whose reason starts with that prefix is re-encoded without it.  Every other byte
passes through unchanged, in order.

A cell's Cap'n Proto library shows the reason as it arrived (KJ, in C++ and pycapnp, puts
``remote exception: `` before it in the local description).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import capnp

PYCAPNP_PREFIX = "message = "
_PREFIX_BYTES = PYCAPNP_PREFIX.encode()
MAX_INSPECTED = 64 * 1024
"""Messages up to this size are looked at; an exception's one-line reason is far smaller, and
anything larger (a chunk of a file) streams through without being held back."""

_rpc: Any = None
_U32 = struct.Struct("<I")


def _rpc_schema() -> Any:
    global _rpc
    if _rpc is None:
        package = Path(capnp.__file__).resolve().parent  # pycapnp ships rpc.capnp and c++.capnp
        _rpc = capnp.load(str(package / "rpc.capnp"), imports=[str(package.parent)])
    return _rpc


def exact_reason(message: bytes) -> bytes:
    """``message`` (one framed Cap'n Proto message) with pycapnp's prefix taken off the reason
    of the exception it returns, if it is such a message; otherwise ``message`` itself."""
    if _PREFIX_BYTES not in message:
        return message
    try:
        with _rpc_schema().Message.from_bytes(message) as reader:
            if reader.which() != "return":
                return message
            returned = getattr(reader, "return")
            if returned.which() != "exception":
                return message
            reason = returned.exception.reason
            if not reason.startswith(PYCAPNP_PREFIX):
                return message
            builder = reader.as_builder()
        getattr(builder, "return").exception.reason = reason[len(PYCAPNP_PREFIX):]
        return bytes(builder.to_bytes())
    except Exception:  # noqa: BLE001 - this runs inside pycapnp's write: never raise there
        return message  # not something to rewrite: pass it on as it was


class _ExactReasons:
    """Wraps an asyncio transport: cuts the outgoing byte stream into Cap'n Proto messages
    (segment table, then segments), holds back only small ones whole, and rewrites those
    :func:`exact_reason` says to.  The stream is the host's own KJ's, so well-formed."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._header = b""  # the start of a segment table that came in pieces
        self._left = 0  # bytes of the current message's segments still to come
        self._held: bytearray | None = None  # a small message being collected

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: Any) -> None:
        data = bytes(data)
        while data:
            data = self._segments(data) if self._left else self._table(data)

    def _table(self, data: bytes) -> bytes:
        if self._header:
            data, self._header = self._header + data, b""
        if len(data) < 4:
            self._header = data
            return b""
        count = _U32.unpack_from(data)[0] + 1
        size = (4 + 4 * count + 7) & ~7  # the table, padded to a whole word
        if len(data) < size:
            self._header = data
            return b""
        body = 8 * sum(struct.unpack_from(f"<{count}I", data, 4))
        if body == 0 or size + body > MAX_INSPECTED:
            self._transport.write(data[:size])
            self._left = body
        elif len(data) >= size + body:  # the whole message at once
            self._transport.write(exact_reason(data[:size + body]))
            return data[size + body:]
        else:
            self._held = bytearray(data[:size])
            self._left = body
        return data[size:]

    def _segments(self, data: bytes) -> bytes:
        piece = data if len(data) <= self._left else data[:self._left]
        self._left -= len(piece)
        if self._held is None:
            self._transport.write(piece)
        else:
            self._held += piece
            if not self._left:
                held, self._held = bytes(self._held), None
                self._transport.write(exact_reason(held))
        return data[len(piece):] if piece is not data else b""


async def connect(sock: socket.socket) -> Any:
    """A pycapnp stream on ``sock`` whose exceptions carry their reason without pycapnp's
    ``message = `` prefix (what ``capnp.AsyncIoStream.create_connection(sock=…)`` gives,
    plus that)."""
    _rpc_schema()  # loaded here, where a failure can be reported, not inside a write
    loop = asyncio.get_running_loop()
    protocol_class = capnp.lib.capnp._PyAsyncIoStreamProtocol  # type: ignore[attr-defined]
    _, protocol = await loop.create_connection(protocol_class, sock=sock)
    protocol.transport = _ExactReasons(protocol.transport)
    stream = capnp.AsyncIoStream()
    stream._post_init(protocol)
    return stream
