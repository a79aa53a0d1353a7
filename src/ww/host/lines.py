"""The lines the host writes on the operator's stderr while a cell runs: console, audit, its own.

One writer, one order.  A line for a regular file (``ww run cell 2> file``, an ``--audit
FILE``) is written at once by whoever made it: such a write waits on no one.  A line for
anything else (a terminal, a pipe) goes into one queue that one daemon thread (``ww-lines``)
writes out, each line in one ``write`` where it fits, in the order the lines were made: a
console line and an audit line made after it never swap.  A write there can wait for as long
as the terminal's output is stopped, and the cell shares that terminal (``tcflow(TCOOFF)``,
^S) or the pipe's reader may never read: such a write must never run on the event loop that
serves fd 3, which would then answer nothing more, and `ww run` would never exit.

- **Console lines push back** (:func:`write_console`): the call returns once its line is
  written; only that call waits, the cell's other calls go on.  A call cancelled before its
  line is taken by the thread takes its line back, so what a cell leaves waiting without a
  call waiting for it is at most the one line being written.  On a regular file the
  cell's ``--fsize`` holds for its console lines as for its own writes, where `ww run`
  relays that file (:func:`ww.host.relay.write_as_cell`).
- **Audit lines never wait** (:func:`put`): at most :data:`MAX_WAITING` bytes of them wait
  for the thread; past that a line is dropped, and how many were is said once (a ``ww:``
  line) where they went missing: before the next line kept, else once the lines queued
  before them are written.
- **At exit** (:func:`drain`, from ``ww.cli.entry.exit_now``, once the terminal is
  restored) the lines still waiting are written, but `ww run` does not wait for ever: the
  drain gives up once no line has been written for :data:`STALL` seconds (a pipe nobody
  reads, a terminal the operator stopped again), and SIGINT, SIGTERM and SIGHUP take their
  default action during it (`ww run` ends at once).  What has not been written then is lost.
- **The host's own lines** (``ww: ...``: a warning, the reason `ww run` exits with, a
  traceback with ``--debug``) go the same way once a cell runs (:func:`cell_shares_stderr`,
  from the supervisor before it starts one): the cell can fill that pipe, stop that
  terminal, or leave the open file non-blocking, and a line the host wrote itself then
  waited in ``write`` for good (the relay's thread, or the exit after a ``--fsize`` cut:
  `ww run` never exited) or failed.  :func:`say` queues one (never waiting, never
  dropped: they are few); and from then on ``sys.stderr`` is a stream that says what is
  written on it, a line at a time, so the lines no one here writes by name go the same way
  (``print(..., file=sys.stderr)`` of the command line's errors, logging's last resort, a
  thread's uncaught exception, pycapnp's tracebacks).  Before a cell runs they are written
  at once, as any program writes.

What a line is written on is an :class:`Out`: the fd and what it is, known from one
``fstat`` (the type and identity of an open file do not change while it is open; its
offset and size do, and ``--fsize`` reckons those at each line).
"""

from __future__ import annotations

import _thread  # threading's C module: threading costs a plain `ww run` its import
import os

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

MAX_WAITING = 1 << 20  # bytes of lines waiting (audit lines, `ww daemon`'s event lines)
STALL = 5.0  # seconds without a line written after which the drain at exit gives up


class Out:
    """An fd lines are written on, and what it is: a regular file (:attr:`file`, its
    ``(st_dev, st_ino)``), something else (a terminal, a pipe), or not open (:attr:`open`
    False: the operator started `ww` with it closed)."""

    __slots__ = ("fd", "file", "open")

    def __init__(self, fd: int) -> None:
        import stat

        self.fd = fd
        self.file: tuple[int, int] | None = None
        try:
            st = os.fstat(fd)
        except OSError:
            self.open = False
            return
        self.open = True
        if stat.S_ISREG(st.st_mode):
            self.file = (st.st_dev, st.st_ino)


def put(out: Out, line: bytes, what: str = "audit", json: bool = True) -> None:
    """An audit line (or another ``what``: ``ww daemon``'s event lines) for ``out``: written
    at once on a regular file, else queued (never waiting: dropped and counted past
    :data:`MAX_WAITING`).  ``json``: the lines are JSON lines (audit lines, `ww daemon
    --json`'s), and so is the count of those dropped (:func:`dropped_line`)."""
    _put(out, line, True, what, json)


def say(text: str) -> None:
    """A line of the host's own on stderr, as :func:`put` writes an audit line but never
    dropped."""
    _put(stderr(), text.encode(_ENCODING, "backslashreplace"), False)


def _put(out: Out, line: bytes, bounded: bool, what: str = "audit", json: bool = False) -> None:
    if not out.open:
        return  # the cell's work goes on
    if out.file is not None:
        try:
            write_all(out.fd, line)
        except OSError:
            pass
        return
    _writer().put(_Line(out.fd, line, None, bounded, what, json))


async def write_console(out: Out, line: bytes) -> None:
    """A console line for ``out``: returns once it is written.  OSError if the write failed;
    :class:`FileTooLarge` if the cell's ``--fsize`` stopped it."""
    if not out.open:
        return
    if out.file is not None:
        from ww.host import relay

        if not relay.write_as_cell(out.fd, out.file, line):
            raise FileTooLarge
        return
    import asyncio

    from ww.core import bridge

    loop = asyncio.get_running_loop()
    written: asyncio.Future[None] = loop.create_future()
    entry = _Line(out.fd, line, lambda error: bridge.call_in_loop(loop, _settle, written, error))
    writer = _writer()
    writer.put(entry)
    try:
        await written
    except asyncio.CancelledError:
        writer.withdraw(entry)
        raise


class FileTooLarge(Exception):
    """The file the line was for is as large as the cell's ``--fsize`` lets it be."""


def _settle(written: asyncio.Future[None], error: BaseException | None) -> None:
    if written.done():
        return
    if error is None:
        written.set_result(None)
    else:
        written.set_exception(error)


def dropped_line(count: int, what: str, json: bool) -> bytes:
    """What says that ``count`` lines of ``what`` were dropped: a ``ww:`` line, or among
    JSON lines a JSON one, the event ``lines-dropped``."""
    if not json:
        return (f"ww: {count} {what} lines dropped: they could not be written as fast as "
                "they came\n").encode()
    import json as _json
    import time

    return (_json.dumps({"ts": round(time.time(), 6), "event": "lines-dropped", "what": what,
                         "lines": count}, separators=(",", ":")) + "\n").encode()


class _Line:
    __slots__ = ("fd", "data", "done", "bounded", "what", "json", "dropped", "taken",
                 "withdrawn")

    def __init__(self, fd: int, data: bytes,
                 done: Callable[[BaseException | None], object] | None,
                 bounded: bool = False, what: str = "audit", json: bool = False) -> None:
        self.fd = fd
        self.data = data
        self.done = done  # a console line's: called by the thread once written (or failed)
        self.bounded = bounded  # an audit line: counted in MAX_WAITING, dropped past it
        self.what = what  # what a dropped one is called
        self.json = json  # a JSON line: the count of those dropped before it is JSON too
        self.dropped = 0  # lines of its fd and what dropped just before it: said before it
        self.taken = False  # the thread holds it
        self.withdrawn = False  # its call was cancelled before that: not written


class _Writer:
    """The queue and its thread."""

    def __init__(self) -> None:
        import collections
        import threading

        self._queue: collections.deque[_Line] = collections.deque()
        self._audit = 0  # bytes of audit lines in the queue (of bounded lines)
        # lines dropped, by fd, what and whether they are JSON
        self._dropped: dict[tuple[int, str, bool], int] = {}
        self._busy = False  # the thread holds a line it has not written yet
        self._written = 0  # lines written (or failed) so far: the drain's sign of progress
        self._progress = 0.0  # (monotonic) when a line was last written
        self._drain_from: float | None = None  # when the first drain since then began
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="ww-lines", daemon=True).start()

    def put(self, line: _Line) -> None:
        with self._cond:
            if line.bounded:
                key = (line.fd, line.what, line.json)
                if self._audit + len(line.data) > MAX_WAITING:
                    self._dropped[key] = self._dropped.get(key, 0) + 1
                    self._cond.notify_all()  # (an idle thread says it: a line past the bound)
                    return
                self._audit += len(line.data)
                # the count goes where the lines went missing: before the first line kept
                # after them (said once the thread took a line queued before them, it came
                # that many lines early: a reader put the gap where none was)
                line.dropped = self._dropped.pop(key, 0)
            self._queue.append(line)
            self._cond.notify_all()

    def withdraw(self, line: _Line) -> None:
        """A console line's call was cancelled: unless the thread holds it, it is not
        written."""
        with self._cond:
            if not line.taken:
                line.withdrawn = True
                line.data = b""

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._dropped:
                        # lines dropped with none kept after them: said now, after every
                        # line queued before them
                        (fd, what, json), dropped = self._dropped.popitem()
                        line = _Line(fd, b"", None, True, what, json)
                        line.dropped = dropped
                        self._queue.append(line)
                        break
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                line = self._queue.popleft()
                if line.bounded:
                    self._audit -= len(line.data)
                if line.withdrawn:
                    continue
                line.taken = self._busy = True
                self._cond.notify_all()  # (whoever waits for a line to be taken)
            error: OSError | None = None
            try:
                if line.dropped:
                    write_all(line.fd, dropped_line(line.dropped, line.what, line.json))
                write_all(line.fd, line.data)
            except OSError as e:
                error = e  # the operator's terminal went away; the cell's work goes on
            if line.done is not None:
                line.done(error)
            with self._cond:
                self._written += 1
                self._progress, self._drain_from = _monotonic(), None
                self._cond.notify_all()

    def drain(self, stall: float) -> bool:
        """Wait until every line queued so far is written, or until none has been for
        ``stall`` seconds; True if all were.  The seconds count from the first drain since
        a line was last written, not from each: ``ww daemon`` drains as it stops, after its
        last line, and at exit, and on a pipe nobody reads each waited its 5 s afresh (15 s
        to stop)."""
        import time

        with self._cond:
            if self._drain_from is None:
                self._drain_from = time.monotonic()
            seen = -1
            while self._queue or self._busy or self._dropped:
                if self._written != seen:
                    seen = self._written
                    deadline = max(self._progress, self._drain_from or 0.0) + stall
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._drain_from = None
            return True


def _monotonic() -> float:
    import time

    return time.monotonic()


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (OSError if a write fails), waiting for room as a blocking
    write would, even where the cell made the file non-blocking: a terminal or a pipe on
    stderr is one open file with the cell's fd 2, and a cell that set ``O_NONBLOCK`` on it
    and filled it (or stopped the terminal) had every line written meanwhile fail with
    EAGAIN: audit lines lost with no drop count, console calls failed instead of waiting.
    (On a regular file, a block device, it is one ``write`` after another.)"""
    import time

    view = memoryview(data)
    tries = 0
    while view:
        try:
            view = view[os.write(fd, view):]
            tries = 0
        except BlockingIOError:
            _writable(fd)
            if tries:  # room said but not taken (a stopped terminal): not a busy loop
                time.sleep(min(0.01 * tries, 0.2))
            tries += 1


def _writable(fd: int) -> None:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll()


_the_writer: _Writer | None = None
_started = _thread.allocate_lock()


def _writer() -> _Writer:
    global _the_writer
    if _the_writer is None:
        with _started:
            if _the_writer is None:
                _the_writer = _Writer()
    return _the_writer


_ENCODING = "utf-8"  # the host's own lines, once sys.stderr says them: its encoding
_the_stderr: Out | None = None


def stderr() -> Out:
    """The host's stderr, fd 2: a regular file there (:attr:`Out.file`) is where the host
    writes the cell's console lines itself, and ``--fsize`` holds for them through
    :mod:`ww.host.relay`."""
    global _the_stderr
    if _the_stderr is None:
        _the_stderr = Out(2)
    return _the_stderr


def cell_shares_stderr() -> None:
    """A cell is about to run with the host's stderr as its own: from now on ``sys.stderr``
    says each line written on it (:func:`say`), never waiting.  Idempotent."""
    import sys

    global _ENCODING
    if isinstance(sys.stderr, _Said) or sys.stderr is None:
        return
    _ENCODING = sys.stderr.encoding or "utf-8"
    sys.stderr.flush()
    sys.stderr = _Said()  # type: ignore[assignment]
    import atexit  # (built in: no import cost)

    atexit.register(drain)  # `ww run` ends in exit_now, which drains; a process that ran
    # a cell and exits as Python does (`ww run` called in-process) writes its lines here


class _Said:
    """``sys.stderr`` once a cell runs: whole lines go to :func:`say` (a ``print`` writes
    its text and its newline apart), a last unfinished one on :meth:`flush`.

    Each thread's unfinished line is held apart: two threads printing at once (the p2p
    thread's warning, the loop's traceback) each say their own line whole, never one
    line made of pieces of both.  A write that is not a ``str`` fails as a text file's
    does, and leaves nothing held behind (it made every later line fail, the one
    `ww run` exits with among them)."""

    def __init__(self) -> None:
        self.encoding = _ENCODING
        self.errors = "backslashreplace"
        self._held: dict[int, list[str]] = {}  # each thread's unfinished line
        self._lock = _thread.RLock()  # (a signal handler's print amid a write: no deadlock)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            me = _thread.get_ident()
            if "\n" not in text:
                if text:
                    self._held.setdefault(me, []).append(text)
                return len(text)
            whole, _, rest = text.rpartition("\n")
            held = self._held.pop(me, None)
            if held:
                whole = "".join(held) + whole
            if rest:
                self._held[me] = [rest]
            say(whole + "\n")  # (under the lock: in the order written)
        return len(text)

    def flush(self) -> None:
        """Say the calling thread's unfinished line."""
        with self._lock:
            held = self._held.pop(_thread.get_ident(), None)
            if held:
                say("".join(held))

    def finish(self) -> None:
        """At exit: say every thread's unfinished line."""
        with self._lock:
            held, self._held = self._held, {}
            for parts in held.values():
                say("".join(parts))

    def fileno(self) -> int:
        return 2

    def isatty(self) -> bool:
        return os.isatty(2)

    def writable(self) -> bool:
        return True


def drain(stall: float = STALL) -> bool:
    """At exit, the terminal restored: write the lines still waiting, giving up once none
    has been written for ``stall`` seconds; SIGINT, SIGTERM and SIGHUP meanwhile end the
    process at once.  True if every line was written."""
    import sys

    if isinstance(sys.stderr, _Said):
        sys.stderr.finish()  # (lines other threads left unfinished)
    writer = _the_writer
    if writer is None:
        return True
    import threading

    if threading.current_thread() is threading.main_thread():
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
    return writer.drain(stall)
