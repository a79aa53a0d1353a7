"""py-libp2p's Yamux with the costs that showed in the profile taken out.

The seam: :func:`ww.p2p.host._new_host` passes :class:`Yamux` (this module's) as the host's
only stream muxer, where py-libp2p would use its own class.  Nothing else is patched; the wire
protocol is py-libp2p's (``/yamux/1.0.0``, as go-yamux speaks it).  What differs, each found
by profiling a Bitswap fetch and the serving of one (docs/benchmarks.md, "Where the time
goes"):

- **A sender waits for window on an event**, not by polling.  py-libp2p 0.8.1's
  ``YamuxStream.write`` sleeps 10 ms and looks again whenever the peer's receive window is
  spent, so a stream sending faster than 256 KiB per 10 ms (25 MiB/s) spent most of its time
  asleep.  Here the window update that the connection's reader applies wakes the writer at
  once (``send_window`` is a property that signals).
- **Window updates in batches**, as go-yamux sends them: credit goes back to the peer once
  half the window has been read, not after every read.  py-libp2p's default
  (``PY_YAMUX_RELEASE_ON_READ``) sent a 12-byte WINDOW_UPDATE frame -- one Noise message,
  one ``send`` -- for every read, one per *byte* while multistream-select negotiates a
  stream.
- **Grown windows come out of one budget**: a stream's receive window starts at the
  protocol's 256 KiB (go-yamux's initial window, the most a peer may send before we say
  more) and grows, to :data:`RECEIVE_WINDOW` at its first read past protocol negotiation and
  then by py-libp2p's auto-tuning (doubling up to 16 MiB while reads keep up), only as far as
  :data:`GROWN_WINDOWS` -- the growth of all streams of the process together -- allows; the
  growth is given back when the stream goes.  A stream refused growth keeps 256 KiB: slower,
  never failing (flow control makes its sender wait).  py-libp2p grew every stream, so the
  unread data remote peers could make the host hold was multiplied out by the streams they
  may open (an inbound stream grew at its first read, and multistream-select negotiation is
  one: 16 streams in negotiation on each of 128 connections could hold 2 GiB).  An inbound
  stream grows only once its protocol is chosen (:func:`allow_growth`, which
  :mod:`ww.p2p.admission` calls); the streams we open may grow at once.
- **The receive window holds**: a peer that sends a stream more than the window it was
  given is cut off (its connection closed, as go-yamux does).  py-libp2p 0.8.1 only logged a
  warning and buffered the data, so one peer could make the host hold any amount of memory
  (200 MiB sent to an identify stream, whose handler had returned and would never read it:
  the host's memory grew by 200 MiB, for as long as the connection stayed).
- **A frame is written whole, or the connection closed**: py-libp2p writes a frame (Noise
  encrypts it, then sends it) in a task the caller may cancel -- Bitswap giving up a reply
  does -- and a cancellation that lands after the frame's Noise nonce was taken (the send's
  first checkpoint) or half-way through a send a slow socket holds corrupted the connection:
  the peer's next decryption failed and every stream of the connection died with it, not the
  one stream given up.  Here the send is shielded: a cancelled writer stops at the frame's
  end, so a stream given up is reset (one RST frame) and the connection goes on.  A frame's
  send that takes longer than :data:`CONNECTION_WRITE_TIMEOUT` closes the connection
  (go-yamux's ``ConnectionWriteTimeout``): a peer that stops reading its socket holds no
  task longer, and a frame cut short leaves nothing worth keeping.  Once the connection is
  being closed (:meth:`Yamux.cut_sends`: py-libp2p closes it, or the host stops) there is
  nothing left to keep whole: the frame under way is cut, and later ones (the GO_AWAY) are
  not shielded and wait :data:`CLOSING_WRITE_TIMEOUT` at most, so a stop never waits on a
  peer that reads nothing.
- **A reset stream's unread data goes with it** (go-yamux's read of a reset stream fails
  whatever it buffers): py-libp2p kept it, and the stream, 60 to 90 s for its sweeper, while
  admission no longer counted the stream (see :meth:`Yamux._finalize_stream_locked`).
- **One Noise message per frame**: data frames carry at most
  :data:`MAX_FRAME_PAYLOAD` bytes, so header and payload fit in one Noise transport message
  (py-libp2p's 64 KiB frames took two, the second of 17 bytes); and no per-frame debug
  formatting of headers when nobody logs them.

A stream is made a :class:`Stream` when the connection registers it (``Yamux.streams`` is a
:class:`_Streams`): py-libp2p creates its streams by the class name inside ``open_stream`` and
its frame reader, which this module does not copy.  Revisit when upgrading libp2p (pinned in
pyproject.toml): ``tests/p2p/test_yamux.py`` fails if a stream stops being one of ours.
"""

from __future__ import annotations

import struct
import threading
import weakref
from typing import Any

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux import yamux as _yamux

__all__ = ["CLOSING_WRITE_TIMEOUT", "CONNECTION_WRITE_TIMEOUT", "GROWN_WINDOWS",
           "MAX_FRAME_PAYLOAD", "RECEIVE_WINDOW", "Stream", "WindowExceeded", "Yamux",
           "allow_growth", "grown"]

# Bytes a peer may send on one stream before we read them, once the stream has grown (the
# protocol's initial window is 256 KiB); py-libp2p's auto-tuning may grow it further.
RECEIVE_WINDOW = 1 << 20
# Bytes of receive window grown past the protocol's 256 KiB, all streams of the process
# together: what unread data peers may make us hold beyond 256 KiB a stream.  64 streams at
# RECEIVE_WINDOW, or 4 auto-tuned to 16 MiB; a Bitswap fetch needs one or two grown streams
# (docs/benchmarks.md).  The streams' 256 KiB are bounded by counting streams
# (ww.p2p.admission.MAX_INBOUND_STREAMS).
GROWN_WINDOWS = 64 << 20
# The largest data frame payload whose frame (12-byte header) fits one Noise message.
MAX_FRAME_PAYLOAD = MAX_PLAINTEXT_LENGTH - _yamux.HEADER_SIZE
WINDOW_WAIT = 5.0  # seconds a writer waits for the peer to open its window (py-libp2p's)
CONNECTION_WRITE_TIMEOUT = 10.0  # seconds a frame's send may take (go-yamux's, the same)
CLOSING_WRITE_TIMEOUT = 1.0  # ... once the connection is being closed (its GO_AWAY)
_RECHECK = 0.05  # seconds between looks at a closed flag while waiting for window


class Stream(_yamux.YamuxStream):  # type: ignore[misc]
    """A Yamux stream whose writer sleeps until window arrives (see the module doc)."""

    _send_window: int
    _window_changed: trio.Event
    reset_sent = False  # this side reset the stream (see :meth:`reset`)

    @classmethod
    def adopt(cls, stream: _yamux.YamuxStream) -> Stream:
        """Make ``stream`` (just created by py-libp2p, not yet used) one of ours."""
        if isinstance(stream, Stream):
            return stream
        window = stream.__dict__.pop("send_window", _yamux.DEFAULT_WINDOW_SIZE)
        stream.__class__ = cls
        assert isinstance(stream, Stream)
        stream._send_window = window
        stream._recv_window = stream.__dict__.pop("recv_window", _yamux.DEFAULT_WINDOW_SIZE)
        stream._window_changed = trio.Event()
        stream._grown = 0
        stream._may_grow = bool(stream.is_initiator)  # ours; a peer's once negotiated
        return stream

    async def reset(self) -> None:
        """py-libp2p 0.8.1 flags a stream it resets itself as if the peer had
        (``reset_received``); :attr:`reset_sent` says a reset was ours, so that what reads
        the stream does not take it for the peer's (Bitswap counts a peer's resets)."""
        if not self.closed and not self.reset_received:
            self.reset_sent = True
        # py-libp2p drops the stream's event without setting it: a task waiting in
        # :meth:`read` waited on until something else woke it (a Bitswap reader of a stream
        # admission reset for another: 30 s, its place counted meanwhile).  The connection's
        # events are an :class:`_Events`, which sets an event it drops; woken, the read finds
        # the reset.
        try:
            await super().reset()
        finally:  # a reset given up while its RST waits its turn is flagged, never dropped
            waiting = self.conn.stream_events.get(self.stream_id)
            if waiting is not None:
                waiting.set()

    async def read(self, n: int | None = -1) -> bytes:
        try:
            return await super().read(n)
        finally:
            if self.closed and self.stream_id not in self.conn.streams:
                # a reader woken by a reset put a new event back for a stream gone
                self.conn.stream_events.pop(self.stream_id, None)

    def _grow_target(self, want: int) -> None:
        """Raise ``target_recv_window`` toward ``want`` as far as :data:`GROWN_WINDOWS`
        allows (only a target: the window itself follows at the next window update)."""
        want = min(want, _yamux.MAX_WINDOW_SIZE)
        if not self._may_grow or want <= self.target_recv_window or self.closed:
            return
        with _growing_lock:
            got = min(want - self.target_recv_window, GROWN_WINDOWS - grown())
            if got > 0:
                self.target_recv_window += got
                self._grown += got
                _growing.add(self)

    def _release(self) -> None:
        """The stream is gone from its connection: its growth goes back to the budget (the
        data it still buffers was received within its window and is dropped with it)."""
        with _growing_lock:
            self._grown = 0
            _growing.discard(self)

    @property  # type: ignore[override]
    def send_window(self) -> int:
        return self._send_window

    @send_window.setter
    def send_window(self, value: int) -> None:
        grew = value > self._send_window
        self._send_window = value
        if grew:
            self._window_changed.set()
            self._window_changed = trio.Event()

    @property
    def recv_window(self) -> int:
        return self._recv_window

    @recv_window.setter
    def recv_window(self, value: int) -> None:
        if value < 0:  # py-libp2p's reader only warns, and buffers the data anyway
            raise WindowExceeded(f"stream {self.stream_id}: the peer sent {-value} bytes "
                                 "past its receive window")
        self._recv_window = value

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        header = struct.Struct(_yamux.YAMUX_HEADER_FORMAT)
        while view:
            frame = None
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    if self._send_window > 0:
                        n = min(self._send_window, MAX_FRAME_PAYLOAD, len(view))
                        self._send_window -= n
                        frame = header.pack(0, _yamux.TYPE_DATA, 0, self.stream_id, n) + \
                            view[:n]
                        view = view[n:]
            if frame is not None:
                try:
                    await self.conn._write_frame(frame)
                except trio.Cancelled:  # before the frame went out (see _write_frame)
                    self._send_window += len(frame) - _yamux.HEADER_SIZE
                    raise
                continue
            with trio.move_on_after(WINDOW_WAIT) as scope:
                while self._send_window <= 0 and not self.closed:
                    event = self._window_changed
                    with trio.move_on_after(_RECHECK):
                        await event.wait()
            if scope.cancelled_caught:
                raise MuxedStreamError(
                    f"Timed out waiting for window update after {WINDOW_WAIT:g} seconds.")

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        """Give the peer back the window it has used once that is half the target."""
        async with self.window_lock:
            self._grow_target(RECEIVE_WINDOW)
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta <= 0 or delta < self.target_recv_window // 2:
                return
            delta = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        if delta > 0:
            await self.send_window_update(delta, skip_lock=True)


    def _apply_autotune_epoch(self, buffered: int) -> int:
        """py-libp2p's auto-tuning (the target doubles when window updates come within 4
        round trips), its growth taken from :data:`GROWN_WINDOWS`."""
        rtt = self._effective_rtt()
        now = trio.current_time()
        quick = rtt > 0 and not (self.epoch_start > 0 and now - self.epoch_start >= rtt * 4)
        self.epoch_start = now
        if not quick:
            return 0
        before = self.target_recv_window
        self._grow_target(before * 2)
        grow = self.target_recv_window - (self.recv_window + buffered)
        if self.target_recv_window == before or grow <= 0:
            return 0
        self.recv_window += grow
        return grow


# Streams holding growth (a stream dropped without being removed from its connection is
# forgotten when collected); a lock, since hosts in one process run on threads of their own.
_growing: weakref.WeakSet[Stream] = weakref.WeakSet()
_growing_lock = threading.RLock()


def grown() -> int:
    """Bytes of receive window grown past the protocol's initial window, all streams."""
    with _growing_lock:
        return sum(stream._grown for stream in list(_growing))


def allow_growth(stream: Any) -> None:
    """Let ``stream`` (a Yamux stream, or a libp2p stream over one) grow its receive window:
    for an inbound stream once its protocol is chosen."""
    muxed = getattr(stream, "muxed_stream", stream)
    if isinstance(muxed, Stream):
        muxed._may_grow = True


class WindowExceeded(trio.TooSlowError):
    """A peer sent a stream more than its receive window: a protocol violation (go-yamux
    closes the session for it).  A ``TooSlowError`` because that is what py-libp2p 0.8.1's
    frame reader lets through to where it closes the connection."""


class _Streams(dict):  # type: ignore[type-arg]
    """``Yamux.streams``: every stream is made a :class:`Stream` as it is registered."""

    def __setitem__(self, stream_id: int, stream: Any) -> None:
        super().__setitem__(stream_id, Stream.adopt(stream))

    def __delitem__(self, stream_id: int) -> None:
        _release(self.get(stream_id))
        super().__delitem__(stream_id)

    def pop(self, stream_id: int, *default: Any) -> Any:
        _release(self.get(stream_id))
        return super().pop(stream_id, *default)

    def clear(self) -> None:
        for stream in self.values():
            _release(stream)
        super().clear()


class _Events(dict):  # type: ignore[type-arg]
    """``Yamux.stream_events``: an event dropped is set, so that a read waiting on it ends.
    py-libp2p drops a stream's event when it is done with the stream, unset; and a read
    replaces the event each time it wakes, so the one a task waits on may be newer than any
    taken earlier (data arriving while this host's reset waited for its frame's turn: the
    read woke, read, and waited again on a new event, which the reset then dropped unset:
    that read waited for ever)."""

    def __delitem__(self, stream_id: int) -> None:
        self[stream_id].set()
        super().__delitem__(stream_id)

    def pop(self, stream_id: int, *default: Any) -> Any:
        event = super().pop(stream_id, *default)
        if isinstance(event, trio.Event):
            event.set()
        return event

    def clear(self) -> None:
        for event in self.values():
            event.set()
        super().clear()


def _release(stream: Any) -> None:
    if isinstance(stream, Stream):
        stream._release()


class Yamux(_yamux.Yamux):  # type: ignore[misc]
    """py-libp2p's Yamux connection with :class:`Stream` streams (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = _Streams()
        self.stream_events = _Events()
        self._closing = False  # see cut_sends
        self._sending: trio.CancelScope | None = None  # the frame under way's

    def _finalize_stream_locked(self, stream: Any, *, fully_closed: bool) -> None:
        """py-libp2p's, but a reset stream's unread data goes with it (go-yamux's read of a
        reset stream fails whatever it buffers).  py-libp2p kept a fully closed stream whose
        buffer was not empty, and its buffer, for the stale-stream sweeper (60 to 90 s), past
        every bound admission counts streams by: a peer that sent 250 KB on each stream
        whose negotiation then failed (reset here) made the host hold 500 MB in 8 s, on one
        connection (measured)."""
        if fully_closed and stream.reset_received:  # (py-libp2p flags our resets so too)
            buffer = self.stream_buffers.get(stream.stream_id)
            if buffer:
                buffer.clear()
        super()._finalize_stream_locked(stream, fully_closed=fully_closed)

    async def open_stream(self) -> Stream:
        stream = await super().open_stream()
        assert isinstance(stream, Stream)
        return stream

    async def close(self, error_code: int = _yamux.GO_AWAY_NORMAL) -> None:
        """Close the connection: a frame under way is cut (:meth:`cut_sends`), then
        py-libp2p's close (its GO_AWAY frame bounded by :data:`CLOSING_WRITE_TIMEOUT`)."""
        self.cut_sends()
        await super().close(error_code)

    def cut_sends(self) -> None:
        """The connection is being closed: the frame under way stops now (the connection
        is closed with it), and later frames are neither shielded nor waited for past
        :data:`CLOSING_WRITE_TIMEOUT`.  A frame is kept whole only to keep the connection;
        once it goes anyway, waiting on a peer that reads nothing only held the host's stop
        (each connection's GO_AWAY in turn, each up to :data:`CONNECTION_WRITE_TIMEOUT`)."""
        self._closing = True
        if self._sending is not None:
            self._sending.cancel()

    async def _write_frame(self, data: bytes) -> None:
        """Write one frame whole (py-libp2p's, without formatting a debug line for each):
        a cancellation stops the writer before the frame (while it waits for its turn; then
        nothing was sent, and :class:`trio.Cancelled` comes out of here) or after it, at its
        next checkpoint, never inside it (see the module doc).  A frame whose send takes longer
        than :data:`CONNECTION_WRITE_TIMEOUT` closes the connection, and so does one cut by
        :meth:`cut_sends`."""
        async with self._write_lock:
            closing = self._closing
            sent = False
            try:
                with trio.CancelScope(shield=not closing) as self._sending:
                    with trio.move_on_after(CLOSING_WRITE_TIMEOUT if closing
                                            else CONNECTION_WRITE_TIMEOUT):
                        await self.secured_conn.write(data)
                        sent = True
            finally:
                self._sending = None
                if not sent:  # cut short (or failed): what follows would be garbage
                    with trio.CancelScope(shield=True), \
                            trio.move_on_after(CLOSING_WRITE_TIMEOUT):
                        try:
                            await self.secured_conn.close()
                        except Exception:
                            pass
            if not sent:
                raise ConnectionClosedError(
                    "yamux: the connection is closing" if self._closing else
                    f"yamux: a frame's send took over {CONNECTION_WRITE_TIMEOUT:g} s")
        await trio.lowlevel.cancel_shielded_checkpoint()  # others' turn; no cancel here
