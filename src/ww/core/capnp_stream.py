"""A pycapnp stream on an asyncio socket with one send per message and no pause per read.

pycapnp's ``AsyncIoStream.create_connection(sock=…)`` puts its protocol
(``capnp.lib.capnp._PyAsyncIoStreamProtocol``) straight on asyncio's socket transport, which
costs per message:

- two ``send`` calls or more: pycapnp writes a message's segment table and each of its
  segments apart, and asyncio's transport sends each write at once;
- an ``epoll_ctl`` pair per read: pycapnp asks the transport to pause reading after every
  read and to resume on its next.

:class:`HeldReads` sits between the transport and pycapnp's protocol instead.  pycapnp's
requests to pause and resume do not reach the socket: while it has a read pending, the
socket reads into pycapnp's buffer (without copying); while it has none, into this
protocol's own, the bytes held for pycapnp's next read; once :data:`HOLD` of them wait the
socket is really paused (so fewer than HOLD and one read are held).  The end of the
stream is passed on behind the held bytes.
:class:`OneSend` is the transport pycapnp's protocol writes to: it cuts the outgoing stream
into messages and writes each message up to :data:`WHOLE` bytes with one ``write`` (one
``send``); a larger one goes through as it comes (its table, then its segments).

Both ends of fd 3 use it: the cell SDK (:func:`connect`) and the host (:mod:`ww.host.wire`,
which adds its flow limit and exact error reasons through the hooks here).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from typing import Any

from ww.core import capnp_frames

HOLD = 64 * 1024
"""Bytes read that pycapnp has not asked for yet (it had no read pending) held for its next
read; at this much the socket is no longer read until pycapnp takes them.  Also the size of
a read into the protocol's own buffer (pycapnp's is used when it has a read pending)."""

WHOLE = 64 * 1024
"""Outgoing messages up to this size (segment table included) are collected and written
with one ``write``; a larger one (a chunk of a file) streams through in pieces, uncopied."""

_U32 = struct.Struct("<I")
_EMPTY = memoryview(b"")


class TransportProxy:
    """Passes whatever it does not define itself on to ``self._transport``, each method bound
    once (pycapnp asks ``is_closing()`` on every read and write)."""

    _transport: Any

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._transport, name)
        if callable(value):
            setattr(self, name, value)
        return value


class OneSend(TransportProxy):
    """Wraps an asyncio transport for pycapnp's protocol: cuts the outgoing byte stream into
    Cap'n Proto messages (segment table, then segments; the stream is the local KJ's, so
    well-formed) and writes each message up to :data:`WHOLE` bytes with one ``write``.

    Subclasses see each message through :meth:`_whole` (a small one, whole),
    :meth:`_large_table` and :meth:`_large_piece` (a larger one, as it streams by)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._write = transport.write
        self._header = b""  # the start of a segment table that came in pieces
        self._left = 0  # bytes of the current message's segments still to come
        self._held: bytearray | None = None  # a small message being collected
        self._sizes: Any = ()  # its segment sizes, in words
        self._table_size = 0  # and the bytes of its segment table

    def write(self, data: Any) -> None:
        # Views, not copies: a 1 MiB read reply passes through here whole, and copying it
        # (twice, with slicing) cost the read rate a measurable share.
        view = memoryview(data).cast("B")
        while view:
            view = self._segments(view) if self._left else self._table(view)

    # what subclasses may change
    def _whole(self, message: bytes, table: int, sizes: Any) -> None:
        """A message of at most :data:`WHOLE` bytes, whole (``table`` bytes of segment
        table, then segments of ``sizes`` words)."""
        self._write(message)

    def _large_table(self, table: memoryview, body: int) -> None:
        """The segment table of a message larger than :data:`WHOLE` (or of one with no
        segments), ``body`` bytes of segments to follow."""
        self._write(table)

    def _large_piece(self, piece: memoryview) -> None:
        """A piece of the segments of a message larger than :data:`WHOLE`."""
        self._write(piece)

    # the framing
    def _table(self, data: memoryview) -> memoryview:
        if self._header:
            data, self._header = memoryview(self._header + data), b""
        if len(data) < 4:
            self._header = bytes(data)
            return _EMPTY
        count = _U32.unpack_from(data)[0] + 1
        size = capnp_frames.header_size(count)  # the table, padded to a whole word
        if len(data) < size:
            self._header = bytes(data)
            return _EMPTY
        sizes = _U32.unpack_from(data, 4) if count == 1 else \
            struct.unpack_from(f"<{count}I", data, 4)
        body = 8 * sum(sizes)
        if body == 0 or size + body > WHOLE:
            self._left = body
            self._large_table(data[:size], body)
        elif len(data) >= size + body:  # the whole message at once
            self._whole(bytes(data[:size + body]), size, sizes)
            return data[size + body:]
        else:
            self._held = bytearray(data[:size])
            self._sizes, self._table_size = sizes, size
            self._left = body
        return data[size:]

    def _segments(self, data: memoryview) -> memoryview:
        piece = data if len(data) <= self._left else data[:self._left]
        self._left -= len(piece)
        if self._held is None:
            self._large_piece(piece)
        else:
            self._held += piece
            if not self._left:
                held, self._held = bytes(self._held), None
                self._whole(held, self._table_size, self._sizes)
        return data[len(piece):] if piece is not data else _EMPTY


class HeldReads(asyncio.BufferedProtocol):
    """Between asyncio's socket transport and pycapnp's protocol (``inner``): pycapnp's own
    requests to pause and resume reading do not reach the socket.  While it has a read
    pending, the socket reads into pycapnp's buffer; while it has none, into this one's, the
    bytes held for its next read, the socket paused once :data:`HOLD` of them wait (fewer
    than HOLD and one read at most).

    Subclasses may see every byte read (:meth:`_seen`), keep the socket paused for reasons
    of their own (:meth:`_may_read`, then :meth:`_gate` when it changes), and give pycapnp
    another transport (:meth:`_wrap`)."""

    def __init__(self) -> None:
        import capnp

        self.inner = capnp.lib.capnp._PyAsyncIoStreamProtocol()  # type: ignore[attr-defined]
        self._transport: Any = None
        self._wants = False  # pycapnp has a read pending (what it last asked for)
        self._lent: Any = None  # pycapnp's buffer, lent to the socket's read under way
        self._scratch = bytearray(HOLD)  # the buffer lent when pycapnp has no read pending
        self._held = bytearray()  # read into _scratch, not yet taken by pycapnp
        self._reading = True  # the socket is read (False: paused, by _may_read or HOLD)
        self._delivering = False
        self._eof = False  # the peer closed its end, and pycapnp is not told yet

    # what subclasses may change
    def _wrap(self, transport: Any) -> Any:
        """The transport pycapnp's protocol is given (its pause/resume bound by
        :meth:`connection_made`)."""
        return OneSend(transport)

    def _seen(self, data: memoryview) -> None:
        """Every byte read from the socket, in order, before pycapnp has it."""

    def _may_read(self) -> bool:
        """False keeps the socket paused whatever pycapnp asks (with :data:`HOLD`)."""
        return True

    # asyncio's side
    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        wrapped = self._wrap(transport)
        # pycapnp asks to pause after every read: a flag set in C, no Python frame
        wrapped.pause_reading = functools.partial(setattr, self, "_wants", False)
        wrapped.resume_reading = self._resume_reading
        self.inner.connection_made(wrapped)

    def connection_lost(self, exc: Exception | None) -> None:
        self._held.clear()
        self.inner.connection_lost(exc)

    def get_buffer(self, sizehint: int) -> Any:
        if self._wants and not self._held:
            self._lent = self.inner.get_buffer(sizehint)
            return self._lent
        self._lent = None  # (a read that found nothing leaves no stale buffer of pycapnp's)
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        lent, self._lent = self._lent, None
        data = memoryview(self._scratch if lent is None else lent)[:nbytes]
        self._seen(data)
        if lent is not None:
            self.inner.buffer_updated(nbytes)
            return
        self._held += data
        data.release()
        self._deliver()

    def eof_received(self) -> Any:
        if self._wants and not self._held:
            return self.inner.eof_received()  # falsy: the transport closes
        # pycapnp dereferences its pending read when told of the end with none pending:
        # told once it has read what is held and asks again.
        self._eof = True
        return True

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # pycapnp's side, through the wrapped transport
    def _resume_reading(self) -> None:
        self._wants = True
        if self._held or self._eof:
            self._deliver()

    def _deliver(self) -> None:
        """Held bytes into pycapnp's pending reads; the end of the stream after them."""
        if self._delivering:  # pycapnp asked again from inside: the loop below serves it
            return
        self._delivering = True
        try:
            held, inner = self._held, self.inner
            while self._wants and held:
                into = inner.get_buffer(-1)
                k = len(held)
                if k <= len(into):
                    into[:k] = held
                    held.clear()
                else:
                    k = len(into)
                    into[:] = held[:k]
                    del held[:k]
                inner.buffer_updated(k)  # a read done: pycapnp asks to pause (_wants False)
            if self._eof and self._wants and not held:
                self._eof = False
                self.inner.eof_received()
                self._transport.close()  # as when eof_received's answer is falsy
                return
        finally:
            self._delivering = False
        self._gate()

    def _gate(self) -> None:
        """The socket is read while :meth:`_may_read` and fewer than :data:`HOLD` bytes wait
        for pycapnp."""
        want = len(self._held) < HOLD and self._may_read()
        if want == self._reading or self._eof or self._transport.is_closing():
            return
        self._reading = want
        if want:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()


async def connect(sock: socket.socket) -> Any:
    """A pycapnp stream on ``sock`` (what ``capnp.AsyncIoStream.create_connection(sock=…)``
    gives) through :class:`HeldReads` and :class:`OneSend`."""
    import capnp

    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(HeldReads, sock=sock)
    stream = capnp.AsyncIoStream()
    stream._post_init(protocol.inner)
    return stream
