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
  stream.  The window a stream starts with grows to :data:`RECEIVE_WINDOW` at the first read
  (go-yamux's initial 256 KiB, the most a peer may send before that, is the protocol's).
- **The receive window holds**: a peer that sends a stream more than the window it was
  given is cut off (its connection closed, as go-yamux does).  py-libp2p 0.8.1 only logged a
  warning and buffered the data, so one peer could make the host hold any amount of memory
  (200 MiB sent to an identify stream, whose handler had returned and would never read it:
  the host's memory grew by 200 MiB, for as long as the connection stayed).
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
from typing import Any

import trio
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux import yamux as _yamux

__all__ = ["MAX_FRAME_PAYLOAD", "RECEIVE_WINDOW", "Stream", "WindowExceeded", "Yamux"]

RECEIVE_WINDOW = 1 << 20  # bytes a peer may send on one stream before we read them
# The largest data frame payload whose frame (12-byte header) fits one Noise message.
MAX_FRAME_PAYLOAD = MAX_PLAINTEXT_LENGTH - _yamux.HEADER_SIZE
WINDOW_WAIT = 5.0  # seconds a writer waits for the peer to open its window (py-libp2p's)
_RECHECK = 0.05  # seconds between looks at a closed flag while waiting for window


class Stream(_yamux.YamuxStream):  # type: ignore[misc]
    """A Yamux stream whose writer sleeps until window arrives (see the module doc)."""

    _send_window: int
    _window_changed: trio.Event

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
        stream.target_recv_window = max(stream.target_recv_window, RECEIVE_WINDOW)
        return stream

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
                await self.conn._write_frame(frame)
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
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta <= 0 or delta < self.target_recv_window // 2:
                return
            delta = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        if delta > 0:
            await self.send_window_update(delta, skip_lock=True)


class WindowExceeded(trio.TooSlowError):
    """A peer sent a stream more than its receive window: a protocol violation (go-yamux
    closes the session for it).  A ``TooSlowError`` because that is what py-libp2p 0.8.1's
    frame reader lets through to where it closes the connection."""


class _Streams(dict):  # type: ignore[type-arg]
    """``Yamux.streams``: every stream is made a :class:`Stream` as it is registered."""

    def __setitem__(self, stream_id: int, stream: Any) -> None:
        super().__setitem__(stream_id, Stream.adopt(stream))


class Yamux(_yamux.Yamux):  # type: ignore[misc]
    """py-libp2p's Yamux connection with :class:`Stream` streams (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = _Streams()

    async def open_stream(self) -> Stream:
        stream = await super().open_stream()
        assert isinstance(stream, Stream)
        return stream

    async def _write_frame(self, data: bytes) -> None:
        """Write one frame (py-libp2p's, without formatting a debug line for each)."""
        async with self._write_lock:
            await self.secured_conn.write(data)
        await trio.lowlevel.checkpoint()
