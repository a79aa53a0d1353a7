"""The lines the host writes for a cell on the operator's stderr: console lines and audit lines.

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
  line) when the thread writes again.
- **At exit** (:func:`drain`, from ``ww.cli.entry.exit_now``, once the terminal is
  restored) the lines still waiting are written, but `ww run` does not wait for ever: the
  drain gives up once no line has been written for :data:`STALL` seconds (a pipe nobody
  reads, a terminal the operator stopped again), and SIGINT, SIGTERM and SIGHUP take their
  default action during it (`ww run` ends at once).  What has not been written then is lost.
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

MAX_WAITING = 1 << 20  # bytes of audit lines waiting for a terminal or a pipe
STALL = 5.0  # seconds without a line written after which the drain at exit gives up


def _regular(fd: int) -> bool | None:
    """Whether ``fd`` is a regular file; None if it is not open (the terminal went away)."""
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return None


def put(fd: int, line: bytes) -> None:
    """An audit line for ``fd``: written at once on a regular file, else queued (never
    waiting: dropped and counted past :data:`MAX_WAITING`)."""
    regular = _regular(fd)
    if regular is None:
        return  # the operator's terminal went away; the cell's work goes on
    if regular:
        try:
            os.write(fd, line)
        except OSError:
            pass
        return
    _writer().put(_Line(fd, line, None))


async def write_console(fd: int, line: bytes) -> None:
    """A console line for ``fd``: returns once it is written.  OSError if the write failed;
    :class:`FileTooLarge` if the cell's ``--fsize`` stopped it."""
    regular = _regular(fd)
    if regular is None:
        return
    if regular:
        from ww.host import relay

        if not relay.write_as_cell(fd, line):
            raise FileTooLarge
        return
    import asyncio

    from ww.core import bridge

    loop = asyncio.get_running_loop()
    written: asyncio.Future[None] = loop.create_future()
    entry = _Line(fd, line, lambda error: bridge.call_in_loop(loop, _settle, written, error))
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


class _Line:
    __slots__ = ("fd", "data", "done", "taken", "withdrawn")

    def __init__(self, fd: int, data: bytes,
                 done: Callable[[BaseException | None], object] | None) -> None:
        self.fd = fd
        self.data = data
        self.done = done  # a console line's: called by the thread once written (or failed)
        self.taken = False  # the thread holds it
        self.withdrawn = False  # its call was cancelled before that: not written


class _Writer:
    """The queue and its thread."""

    def __init__(self) -> None:
        import collections

        self._queue: collections.deque[_Line] = collections.deque()
        self._audit = 0  # bytes of audit lines in the queue
        self._dropped: dict[int, int] = {}  # audit lines dropped, by fd
        self._busy = False  # the thread holds a line it has not written yet
        self._written = 0  # lines written (or failed) so far: the drain's sign of progress
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="ww-lines", daemon=True).start()

    def put(self, line: _Line) -> None:
        with self._cond:
            if line.done is None:
                if self._audit + len(line.data) > MAX_WAITING:
                    self._dropped[line.fd] = self._dropped.get(line.fd, 0) + 1
                    return
                self._audit += len(line.data)
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
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                line = self._queue.popleft()
                if line.done is None:
                    self._audit -= len(line.data)
                if line.withdrawn:
                    continue
                line.taken = self._busy = True
                self._cond.notify_all()  # (whoever waits for a line to be taken)
                dropped = self._dropped.pop(line.fd, 0) if line.done is None else 0
            error = _write_all(line.fd, line.data)
            if dropped:
                _write_all(line.fd, f"ww: {dropped} audit lines dropped: they could not be "
                           "written as fast as they came\n".encode())
            if line.done is not None:
                line.done(error)
            with self._cond:
                self._written += 1
                self._cond.notify_all()

    def drain(self, stall: float) -> bool:
        """Wait until every line queued so far is written, or until none has been for
        ``stall`` seconds; True if all were."""
        import time

        with self._cond:
            seen, deadline = self._written, time.monotonic() + stall
            while self._queue or self._busy:
                if self._written != seen:
                    seen, deadline = self._written, time.monotonic() + stall
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


def _write_all(fd: int, data: bytes) -> OSError | None:
    """Write all of ``data``, waiting for room as a blocking write would, even where the
    cell made the file non-blocking: a terminal or a pipe on stderr is one open file with
    the cell's fd 2, and a cell that set ``O_NONBLOCK`` on it and filled it (or stopped
    the terminal) had every line written meanwhile fail with EAGAIN: audit lines lost with
    no drop count, console calls failed instead of waiting."""
    import time

    try:
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
    except OSError as e:
        return e  # the operator's terminal went away; the cell's work goes on
    return None


def _writable(fd: int) -> None:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll()


_the_writer: _Writer | None = None
_started = threading.Lock()


def _writer() -> _Writer:
    global _the_writer
    if _the_writer is None:
        with _started:
            if _the_writer is None:
                _the_writer = _Writer()
    return _the_writer


def drain(stall: float = STALL) -> bool:
    """At exit, the terminal restored: write the lines still waiting, giving up once none
    has been written for ``stall`` seconds; SIGINT, SIGTERM and SIGHUP meanwhile end the
    process at once.  True if every line was written."""
    writer = _the_writer
    if writer is None:
        return True
    if threading.current_thread() is threading.main_thread():
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
    return writer.drain(stall)
