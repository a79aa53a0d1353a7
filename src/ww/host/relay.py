"""Files a jailed cell gets as stdio or ``--fd`` grants, handed over as pipes `ww run` relays.

An fd is a capability only as far as the kernel checks its access mode.  For a regular
file it does not: ``/proc/self/fd/N`` (also ``/dev/stdin``, ``/dev/fd/N``,
``/proc/thread-self/fd/N``) opens the file behind fd N anew, with any mode the cell's
host uid may use.  For an unprivileged `ww` that uid owns the operator's files, so a
read-only ``< file`` would become writable and a write-only ``>> log`` readable.  A pipe
opened anew is the same pipe, so the cell gets one instead:

- a regular file (or block device) open **read-only**: a pipe `ww run` fills from the
  file, reading at the file's offset; when the cell exits, the offset is left just past
  what the cell read, as if it had read the file itself;
- one open **write-only** (``>``, ``>>``): a pipe `ww run` drains into the file, through
  the operator's own open file (its offset, ``O_APPEND``); fds of one file share a pipe,
  so ``> out 2>&1`` keeps the order of the cell's writes, and the host drains a pipe
  before it writes on the same file itself (:func:`write_as_cell`, the console on stderr);
- one open **read-write** passes as it is: opened anew, it gives no mode the fd does not.

Terminals, pipes, sockets and other character devices (``/dev/null``) pass as they are.
A relayed fd cannot be seeked or mapped, and its file's locks are out of the cell's reach.

The relay is one thread, started only when some fd needs it (``ww run /bin/true`` with
its stdio on a terminal or ``/dev/null`` starts none).  It holds at most one chunk per
fd, so a cell that never reads costs nothing but a full pipe.  When the cell has exited,
:meth:`Relay.finish` stops feeding it and drains what it wrote to the end (every process
of the jail is gone by then, so the end comes); the cell's exit status is not touched.
A file that cannot be written (a full disk) is reported once on stderr (through
:func:`ww.host.lines.say`: never waiting on a stderr the cell filled), and the cell's next
write to that fd fails with ``EPIPE``, as a broken pipe would.

``--fsize`` (``RLIMIT_FSIZE``) is the cell's, and the relay writes in the host, where it
does not hold: so the relay holds it itself (:attr:`Relay.fsize`).  A regular file is
written up to that size, as the kernel's write stops there, and then :attr:`Relay.on_fsize`
stops the cell (`ww run` exits 66 naming ``--fsize``), as the kernel's SIGXFSZ stops the
writer: a cell under ``--fsize 1M`` wrote 5 MB into ``ww run cell > out`` before.  The
cell's console lines count too, where the host writes them into such a file
(:func:`write_as_cell`): 5 MB of them went into ``ww run --fsize 1M cell 2> err`` before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import stat
import struct
import sys
import termios
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ww.host import lines
from ww.host.fds import relay_mode

CHUNK = 1 << 16


@dataclass
class _Input:
    src: int  # the host's open file
    w: int  # the pipe's write end (ww's, non-blocking)
    r: int  # a copy of its read end: how much the cell has not read yet
    start: int  # the file's offset when the cell started (-1: not seekable)
    sent: int = 0
    buf: bytes = b""
    closed: bool = False


@dataclass
class _Output:
    dst: int  # the host's open file
    r: int  # the pipe's read end (ww's, non-blocking)
    what: str
    file: tuple[int, int]  # (st_dev, st_ino) of dst
    regular: bool = True  # a regular file (--fsize holds), else a block device
    # Held while bytes move or r closes: the relay thread and write_as_cell() both drain.
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False  # its end seen, or a write failed
    closed: bool = False


@dataclass
class Relay:
    """The pipes of one cell, and the thread that moves their bytes."""

    _inputs: dict[int, _Input] = field(default_factory=dict)  # keyed by the pipe end polled
    _outputs: dict[int, _Output] = field(default_factory=dict)
    _cell_ends: list[int] = field(default_factory=list)
    _by_file: dict[tuple[int, int], int] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _wake: tuple[int, int] | None = None
    _abandon: bool = False
    fsize: int | None = None  # --fsize: the largest file the cell may write
    _fsize_hit: bool = False
    _on_fsize: Callable[[], None] | None = None

    def on_fsize(self, stop: Callable[[], None]) -> None:
        """``stop()`` once the cell wrote a file past :attr:`fsize` (at once if it has):
        called from the relay's thread, maybe twice."""
        self._on_fsize = stop
        if self._fsize_hit:
            stop()

    def wrap(self, fd: int, what: str) -> int:
        """The fd the cell gets in place of the host's ``fd`` (``fd`` itself if it passes)."""
        mode = relay_mode(fd)
        if mode == "read":
            r, w = os.pipe()
            os.set_blocking(w, False)
            try:
                start = os.lseek(fd, 0, os.SEEK_CUR)
            except OSError:
                start = -1
            self._inputs[w] = _Input(src=fd, w=w, r=os.dup(r), start=start)
            self._cell_ends.append(r)
            return r
        if mode == "write":
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in self._by_file:
                return self._by_file[key]
            r, w = os.pipe()
            os.set_blocking(r, False)
            self._outputs[r] = _Output(dst=fd, r=r, what=what, file=key,
                                       regular=stat.S_ISREG(st.st_mode))
            self._cell_ends.append(w)
            self._by_file[key] = w
            return w
        return fd

    @property
    def active(self) -> bool:
        return bool(self._inputs or self._outputs)

    def start(self) -> None:
        """Once the cell holds its ends: close ours and start moving bytes."""
        for fd in self._cell_ends:
            os.close(fd)
        self._cell_ends = []
        if self.active or self.fsize is not None:
            _live.append(self)  # for write_as_cell(): the order, and --fsize relayed or not
        if not self.active:
            return
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ww-relay", daemon=True)
        self._thread.start()

    def finish(self, drain: bool = True) -> None:
        """Stop feeding the cell; with ``drain``, write out all it wrote (the cell has
        exited), else only what is in the pipes now.  Idempotent."""
        for fd in self._cell_ends:  # the cell never started
            os.close(fd)
        self._cell_ends = []
        with contextlib.suppress(ValueError):
            _live.remove(self)
        if self._wake is None:
            self._close_all()
            return
        self._abandon = not drain
        with contextlib.suppress(OSError):
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join()
        for fd in self._wake:
            os.close(fd)
        self._wake = None
        self._close_all()

    def _close_all(self) -> None:
        for inp in self._inputs.values():
            self._close_input(inp)
        for out in self._outputs.values():
            self._close_output(out)
        self._inputs, self._outputs = {}, {}

    def _run(self) -> None:
        assert self._wake is not None
        poller = select.poll()
        poller.register(self._wake[0], select.POLLIN)
        for w in self._inputs:
            poller.register(w, select.POLLOUT)
        for r in self._outputs:
            poller.register(r, select.POLLIN)
        inputs, outputs = dict(self._inputs), dict(self._outputs)
        while inputs or outputs:
            for fd, events in poller.poll():
                if fd == self._wake[0]:
                    poller.unregister(fd)
                    for w, inp in inputs.items():
                        poller.unregister(w)
                        self._close_input(inp)
                    inputs = {}
                    if self._abandon:
                        for out in outputs.values():
                            self._drain_now(out)
                        return
                elif fd in inputs:
                    if not self._feed(inputs[fd], events):
                        poller.unregister(fd)
                        self._end_input(inputs.pop(fd))
                elif fd in outputs and not self._drain(outputs[fd]):
                    poller.unregister(fd)
                    outputs.pop(fd)

    def _feed(self, inp: _Input, events: int) -> bool:
        """Move one chunk from the file into the pipe; False when done with it."""
        if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            return False
        if not inp.buf:
            try:
                if inp.start >= 0:
                    inp.buf = os.pread(inp.src, CHUNK, inp.start + inp.sent)
                else:
                    inp.buf = os.read(inp.src, CHUNK)
            except OSError as e:
                if e.errno == errno.ESPIPE and inp.start >= 0:
                    inp.start = -1
                    return True
                return False  # the cell sees the end of its input
            if not inp.buf:
                return False
        try:
            n = os.write(inp.w, inp.buf)
        except BlockingIOError:
            return True
        except OSError:
            return False
        inp.sent += n
        inp.buf = inp.buf[n:]
        return True

    @staticmethod
    def _end_input(inp: _Input) -> None:
        """The file's end (or a read error): close the pipe's write end, so the cell sees
        the end once it has read what the pipe holds.  The offset waits for
        :meth:`_close_input`: the cell may not have read those bytes yet."""
        if inp.w >= 0:
            with contextlib.suppress(OSError):
                os.close(inp.w)
            inp.w = -1

    def _close_input(self, inp: _Input) -> None:
        """Close the pipe and leave the file's offset just past what the cell read."""
        if inp.closed:
            return
        inp.closed = True
        if inp.start >= 0:
            with contextlib.suppress(OSError):
                unread = int.from_bytes(fcntl.ioctl(inp.r, termios.FIONREAD, bytes(4)),
                                        sys.byteorder)
                # (clamped: the cell may have written into its own stdin pipe)
                os.lseek(inp.src, inp.start + max(0, inp.sent - unread), os.SEEK_SET)
        self._end_input(inp)
        with contextlib.suppress(OSError):
            os.close(inp.r)

    def _drain(self, out: _Output) -> bool:
        """Thread: move what the pipe holds now into the file; False at its end."""
        with out.lock:
            if self._move(out) is not None:
                return True
            self._close_output(out, locked=True)
            return False

    def _drain_now(self, out: _Output, owner: bool = True, limit: int | None = None) -> None:
        """Move everything the pipe holds into the file, without waiting for more (with
        ``limit``: about that many bytes at most).  Only the thread (the ``owner``) closes
        the pipe: its poll still watches the fd."""
        with out.lock:
            total = 0
            moved: int | None = 0
            while limit is None or total < limit:
                moved = self._move(out)
                if not moved:
                    break
                total += moved
            if moved is None and owner:
                self._close_output(out, locked=True)

    def _move(self, out: _Output) -> int | None:
        """One chunk from the pipe into the file (lock held): bytes moved, 0 if none are
        there now, None at the end of the pipe, after a failed write or at ``--fsize``."""
        if out.done or out.closed:
            return None
        try:
            data = os.read(out.r, CHUNK)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if data:
            view = memoryview(data)
            try:
                room = self._room(out)
                if room is not None and room < len(view):
                    view = view[:room]  # as the kernel writes up to RLIMIT_FSIZE
                lines.write_all(out.dst, view)
                if room is None or room >= len(data):
                    return len(data)
                self._over_fsize()
            except OSError as e:
                # Through the lines' writer: the cell may have filled the stderr it shares
                # with us, and this thread waited in that write for good (finish() too).
                lines.say(f"ww: cannot write the cell's {out.what} to its file: "
                          f"{e.strerror}\n")
        out.done = True  # the cell's next write fails (EPIPE) once the pipe is closed
        return None

    def _room(self, out: _Output) -> int | None:
        """The bytes ``--fsize`` lets the cell write into ``out``'s file (None: no bound)."""
        if not out.regular:
            return None
        return self._room_at(out.dst)

    def _room_at(self, fd: int) -> int | None:
        """The bytes ``--fsize`` lets a write on ``fd`` add, where that write lands: at the
        offset of ``fd``'s own open file, or with ``O_APPEND`` at the end (None: no bound).
        Not at another open of the same file: ``> out 2> out`` are two offsets."""
        if self.fsize is None:
            return None
        at = (os.fstat(fd).st_size if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
              else os.lseek(fd, 0, os.SEEK_CUR))
        return max(0, self.fsize - at)

    def _over_fsize(self) -> None:
        self._fsize_hit = True
        stop = self._on_fsize
        if stop is not None:
            stop()

    @staticmethod
    def _close_output(out: _Output, locked: bool = False) -> None:
        with contextlib.nullcontext() if locked else out.lock:
            if not out.closed:
                out.closed = True
                with contextlib.suppress(OSError):
                    os.close(out.r)


# The relays of cells running now, for write_as_cell().
_live: list[Relay] = []


def write_as_cell(fd: int, file: tuple[int, int], data: bytes) -> bool:
    """The host writes ``data`` for the cell (its console lines) on ``fd``, a regular file
    (``file``: its ``(st_dev, st_ino)``).

    Where the cell's output to the same file is relayed (``ww run cell 2> file``), what the
    cell wrote there so far goes first, so the file keeps the order.  ``data`` counts
    against ``--fsize`` as the cell's own writes do, at the offset ``fd`` writes at (its
    own, as the kernel reckons it: ``> out 2> out`` opens the file twice, and stderr's
    offset is not stdout's), relayed or not (``2<> err`` passes as it is): written up to
    the size, and then the cell is stopped (:meth:`Relay.on_fsize`).  False if the size
    cut ``data`` short (or the file was full already); OSError if the write fails.  Runs
    on the RPC loop: what the cell adds to the pipe meanwhile is not waited for."""
    for relay in list(_live):
        for out in list(relay._outputs.values()):
            if out.file != file:
                continue
            try:
                pending = struct.unpack("i", fcntl.ioctl(out.r, termios.FIONREAD,
                                                         b"\0\0\0\0"))[0]
            except OSError:
                pending = 0  # closed meanwhile: the thread has drained it
            if pending:
                relay._drain_now(out, owner=False, limit=pending)
            with out.lock:
                if not _write_bounded(relay, fd, data):
                    out.done = True  # the cell's next write to the file fails (EPIPE)
                    return False
                return True
        if relay.fsize is not None:
            return _write_bounded(relay, fd, data)
    lines.write_all(fd, data)
    return True


def _write_bounded(relay: Relay, fd: int, data: bytes) -> bool:
    """``data`` on ``fd`` up to ``relay``'s ``--fsize``; False (the cell stopped) if cut."""
    room = relay._room_at(fd)
    if room is not None and room < len(data):
        lines.write_all(fd, data[:room])
        relay._over_fsize()
        return False
    lines.write_all(fd, data)
    return True
