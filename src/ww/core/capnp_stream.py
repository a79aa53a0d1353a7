"""A pycapnp stream on a socket that sends each Cap'n Proto message in one ``send``.

pycapnp hands its asyncio transport every piece of a message separately -- the segment
table, then each segment -- and asyncio's socket transport sends each piece at once, in a
``send`` of its own.  The peer then often wakes for the segment table alone, finds no whole
message, and waits again for the rest; on a `/ww/0.1.0` stream the table even went out as a
Yamux frame (a Noise message, a TCP segment) of its own, and both hosts passed it through
their libp2p threads twice (docs/benchmarks.md, "Remote calls over `/ww/0.1.0`").
:func:`connect` gives pycapnp a transport that collects the pieces of a message and passes
them on together as soon as its last piece is written: one ``send`` per message, nothing
held back past the end of a message, order kept.  The socket transport's buffer limits
still pause pycapnp's writes as before; closing or a half-close sends what is collected
first.  The stream is our own KJ's, so well formed: only segment tables are read.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import capnp

from ww.core.capnp_frames import header_size

_U32 = struct.Struct("<I")
JOIN_LIMIT = 64 * 1024
"""Pieces are collected up to this many bytes; a larger message goes out as it is written
(copying it whole into one buffer would cost more than the sends it saves)."""


class _WholeMessages:
    """The transport pycapnp's protocol writes to: the pieces of each message reach the
    socket transport as one write, once the message is complete."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[Any] = []  # pieces of the message under way
        self._table = bytearray()  # its segment table, while that is incomplete
        self._left = 0  # bytes of its segments still to come
        self._held = 0  # bytes in _pending

    def __getattr__(self, name: str) -> Any:  # pause/resume_reading, is_closing, ...
        return getattr(self._transport, name)

    def write(self, data: Any) -> None:
        if not data:
            return
        self._pending.append(data)
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if self._left:  # inside the segments
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
                continue
            table = self._table  # collecting a segment table: its count first
            want = 4 if len(table) < 4 else header_size(_U32.unpack_from(table)[0] + 1)
            step = min(want - len(table), end - pos)
            table += view[pos:pos + step]
            pos += step
            if want > 4 and len(table) == want:  # complete: the segments follow
                count = _U32.unpack_from(table)[0] + 1
                self._left = 8 * sum(struct.unpack_from(f"<{count}I", table, 4))
                table.clear()
        self._held += len(data)
        if not self._left and not self._table or self._held >= JOIN_LIMIT:
            self._flush()  # the last piece of a message (or a large one: sent as it comes)

    def _flush(self) -> None:
        pending, self._pending, self._held = self._pending, [], 0
        if pending:
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()


async def connect(sock: socket.socket) -> Any:
    """A pycapnp ``AsyncIoStream`` on ``sock`` (what ``capnp.AsyncIoStream.create_connection
    (sock=sock)`` gives), that sends each message in one ``send``."""
    loop = asyncio.get_running_loop()
    protocol = capnp.lib.capnp._PyAsyncIoStreamProtocol()  # type: ignore[attr-defined]
    transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    protocol.transport = _WholeMessages(transport)
    stream = capnp.AsyncIoStream()
    stream._post_init(protocol)
    return stream
