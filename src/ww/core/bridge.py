"""Every hand-off between trio, asyncio and worker threads: the one place where they meet.

The host runs three kinds of code that must not wait on one another:

- **asyncio**, where pycapnp serves a cell's fd 3 (and dials `/ww/0.1.0` for it).  pycapnp
  drives KJ's event loop from asyncio's, so it needs :func:`run_capnp`.
- **trio**, where py-libp2p runs the libp2p host (Bitswap, `/ww/0.1.0` streams), on a thread
  of its own (:func:`run_trio`), reached from other threads through a :class:`TrioPortal`.
- **worker threads**, for blocking work: the IPFS backend's reads and imports
  (:class:`DaemonWorkers`, :func:`in_new_thread`, :class:`ThreadFeed`; an embedder's
  executor, :func:`in_executor`, for :class:`ww.ipfs.aio.AsyncCoreAPI`), a Bitswap reply read
  from the repository (:func:`to_worker`), a reader's wait for a block Bitswap fetches
  (:func:`wait_in_thread`), the blocking work of an ASGI app of `ww daemon`
  (:func:`in_worker_thread`).

Only futures, callbacks and sockets cross between them, always through this module: a
thread hands asyncio a callback with :func:`call_in_loop`, asyncio waits for a thread's
:class:`concurrent.futures.Future` with :func:`wait_future`, and any thread starts trio
work with :meth:`TrioPortal.submit`.  Cancellation crosses too: an asyncio call cancelled
while it waits for a thread cancels that thread's work (``on_cancel``, for example a
:class:`ww.ipfs.api.CancelToken`'s ``cancel``), and a caller that cancels the future of
:meth:`TrioPortal.submit` before it starts keeps it from starting.

(The bytes of a `/ww/0.1.0` stream cross from trio to asyncio over a socketpair, spliced by
:mod:`ww.p2p.splice`.)
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import asyncio

# asyncio, trio and pycapnp are imported where they are used: importing this module costs
# nothing (`ww run /bin/true` never loads an event loop).

T = TypeVar("T")

# -- asyncio (pycapnp) ------------------------------------------------------------------------


EVENT_LOOP_ENV = "WW_EVENT_LOOP"


def new_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio event loop: uvloop's (libuv's, in Cython; a dependency of ww) unless
    ``WW_EVENT_LOOP=asyncio`` asks for the standard library's, or uvloop cannot be imported.

    Measured (docs/benchmarks.md, "uvloop under hosts and Python cells"): pycapnp's CPU a
    call, client and server in one process, 42 against 76 us; host B's CPU a sequential
    remote call to a Python cell 176 against 203 us, the cell's 128 against 161 us.  Every
    pycapnp stream of ww's goes through a protocol of its own (:mod:`ww.core.capnp_stream`,
    :mod:`ww.p2p.bounds`, :mod:`ww.p2p.lane`), never pycapnp's protocol straight on a uvloop
    transport: that one pauses the transport from inside ``get_buffer``, which crashes
    libuv (a read callback called after ``uv_read_stop``: uvloop issue 538).
    """
    import asyncio
    import os

    if os.environ.get(EVENT_LOOP_ENV, "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def loop_pipe(loop: asyncio.AbstractEventLoop, file: Any) -> Any:
    """``file`` (the host's end of a pipe, an open file object) as ``loop``'s
    ``connect_read_pipe``/``connect_write_pipe`` must be given it: its fd closed once, by the
    transport.  uvloop's transport closes it twice: libuv closes the fd, then uvloop calls
    the object's ``close()`` (counting on EBADF), and in a host with other threads (trio's,
    the IPFS workers') that number may be another file's by then.  So on uvloop the object
    given leaves the fd alone when closed (libuv owns it); on asyncio's loop it closes it.
    ``file`` itself is closed: its fd moves to the object returned."""
    import os

    fd = os.dup(file.fileno())
    mode = "rb" if file.readable() else "wb"
    file.close()
    return open(fd, mode, buffering=0, closefd=type(loop).__module__ != "uvloop")  # noqa: SIM115


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on :func:`new_loop`'s loop."""
    import asyncio

    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


def run_capnp(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a new event loop (:func:`new_loop`) in this thread, with pycapnp's KJ
    loop on top of it (every pycapnp call must run inside ``capnp.run``); returns its
    result."""
    import capnp

    return run(capnp.run(main))


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """From any thread: have ``loop`` call ``fn(*args)`` soon.  False, and nothing is called,
    if the loop is closed (nobody there waits any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True


def start_in_loop(loop: asyncio.AbstractEventLoop,
                  coroutine_fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
    """From any thread: start ``coroutine_fn(*args)`` as a task of ``loop``; False if the
    loop is closed."""
    import asyncio

    return call_in_loop(loop, lambda: asyncio.ensure_future(coroutine_fn(*args)))


def resolve(future: asyncio.Future[None]) -> None:
    """On the loop: complete ``future`` (a wake-up), unless it is already done."""
    if not future.done():
        future.set_result(None)


async def wait_future(future: concurrent.futures.Future[T],
                      on_cancel: Callable[[], Any] | None = None) -> T:
    """On an asyncio loop: the result of ``future`` (set by another thread or by trio).

    If the awaiting task is cancelled, ``future`` is cancelled (work not started yet never
    starts), ``on_cancel`` is called (to stop work already running, which a thread cannot
    be made to abandon otherwise) and CancelledError is raised at once, without waiting for
    that work to end."""
    import asyncio

    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        raise
    finally:
        # An error's traceback holds this frame, and the future holds the error: a cycle
        # only the garbage collector frees, with every frame the error passed through (a
        # worker's locals: an IPFS listing's partial answer).  Kept, 1000 listings a cell
        # did not read grew the host past its memory guard.  The caller must not keep the
        # future in a local either (pass it inline).
        del future


async def in_executor(executor: concurrent.futures.Executor | None, fn: Callable[[], T],
                      on_cancel: Callable[[], Any]) -> T:
    """On an asyncio loop: ``fn()`` in ``executor`` (None: the loop's default one).

    Unlike :func:`wait_future`, a cancelled caller waits for the work to end: ``on_cancel``
    is called (to make it stop early, for example a :class:`ww.ipfs.api.CancelToken`'s
    ``cancel``), then CancelledError is raised once ``fn`` has returned or raised, so
    nothing keeps running for a caller that left (the work's own error is dropped)."""
    import asyncio

    future = asyncio.get_running_loop().run_in_executor(executor, fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        on_cancel()
        await asyncio.wait([future])  # on_cancel wakes whatever the work waits on
        if not future.cancelled():
            future.exception()  # retrieved: an error nobody else will see
        raise


def in_new_thread(loop: asyncio.AbstractEventLoop, name: str, fn: Callable[..., T],
                  *args: Any) -> asyncio.Future[T]:
    """On ``loop``: run ``fn(*args)`` in a daemon thread of its own (work that lasts as long
    as a stream, such as one file's import); the returned future of ``loop`` gets its result
    or its exception.  A daemon thread: work stuck in a backend never keeps the host from
    exiting.  If the loop is closed by then, the outcome is dropped."""
    result: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except BaseException as e:  # handed to whoever awaits the future
            outcome = (None, e)

        def deliver() -> None:
            if result.done():
                return
            if outcome[1] is not None:
                result.set_exception(outcome[1])
            else:
                result.set_result(outcome[0])

        call_in_loop(loop, deliver)

    threading.Thread(target=work, name=name, daemon=True).start()
    return result


# -- worker threads ---------------------------------------------------------------------------


def wait_in_thread(future: concurrent.futures.Future[Any], timeout: float,
                   interrupt: Callable[[Callable[[], None]], Callable[[], Any]] | None = None
                   ) -> bool:
    """In a worker thread: wait until ``future`` (set by trio, say) is done, at most
    ``timeout`` seconds, or until ``interrupt`` wakes the wait.  ``interrupt(wake)``
    registers ``wake`` and returns a function withdrawing it (a
    :class:`ww.ipfs.api.CancelToken`'s ``on_cancel``: a cancelled call stops waiting at
    once).  True if ``future`` is done; the future is left alone either way."""
    woken = threading.Event()
    future.add_done_callback(lambda _: woken.set())
    forget = interrupt(woken.set) if interrupt is not None else None
    try:
        woken.wait(timeout)
    finally:
        if forget is not None:
            forget()
    return future.done()


class DaemonWorkers:
    """A bounded pool of daemon threads for blocking work submitted from an event loop.

    Daemon threads (not ``concurrent.futures``' pool, whose threads the interpreter joins at
    exit): work stuck in a backend never keeps ``ww run`` from exiting.  Threads start as
    work arrives, up to ``size``, and stop at :meth:`close`; :meth:`submit` after it raises
    ``closed()``.
    """

    def __init__(self, size: int, name: str, closed: Callable[[], Exception]) -> None:
        self._size = size
        self._name = name
        self._closed_error = closed
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a job that no job has been promised to yet
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._jobs.put((future, fn, args))
            if self._idle:
                self._idle -= 1
            elif self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # handed to the caller
                    future.set_exception(e)
            del job, future, args  # nothing of a finished job stays alive while idle
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)


class ThreadFeed(Generic[T]):
    """Items from an asyncio loop to one consuming thread, at most ``capacity`` waiting.

    :meth:`put` (on the loop) waits for room without blocking the loop; the thread takes
    the items with :meth:`items` until :meth:`end` (from any side), after which the thread
    gets ``abandoned()`` raised and :meth:`put` False.  Nothing here refers to the producer,
    so a producer dropped by its owner is collected even while the thread waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int,
                 abandoned: Callable[[], Exception]) -> None:
        self._loop = loop
        self._capacity = capacity
        self._abandoned = abandoned
        self._cond = threading.Condition()
        self._items: collections.deque[T] = collections.deque()
        self._space: asyncio.Future[None] | None = None
        self._ended = False

    async def put(self, item: T) -> bool:
        """On the loop, one caller at a time: queue ``item``, first waiting for room while
        the queue is full.  False if the feed has ended."""
        while True:
            with self._cond:
                if self._ended:
                    return False
                if len(self._items) < self._capacity:
                    self._items.append(item)
                    self._cond.notify()
                    return True
                space = self._space = self._loop.create_future()
            await space

    def end(self) -> None:
        """Any thread: the feed is over (abandoned, failed or done); drop what waits."""
        with self._cond:
            self._ended = True
            self._items.clear()
            self._cond.notify_all()
            space, self._space = self._space, None
        if space is not None:
            call_in_loop(self._loop, resolve, space)

    def items(self) -> Iterator[T]:
        """The consuming thread's input, in order; raises ``abandoned()`` once ended."""
        while True:
            with self._cond:
                while not self._items and not self._ended:
                    self._cond.wait()
                if self._ended:
                    raise self._abandoned()
                item = self._items.popleft()
                space, self._space = self._space, None
            if space is not None:
                call_in_loop(self._loop, resolve, space)
            yield item
            del item  # not kept while the next one is waited for


# -- trio (py-libp2p) ---------------------------------------------------------------------------


def run_trio(main: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``main(*args)`` as a trio run in this thread (the libp2p host's own thread:
    trio and asyncio each want the thread they run in)."""
    import trio

    return trio.run(main, *args)


async def to_worker(fn: Callable[..., T], *args: Any) -> T:
    """On trio: ``fn(*args)`` in one of trio's worker threads (blocking work, such as reading
    blocks from the repository, that would stall every stream of the libp2p host).  Not
    abandoned on cancellation: the caller waits for it to end."""
    import trio

    return await trio.to_thread.run_sync(fn, *args)


class TrioPortal:
    """The door into one trio run from other threads.

    :meth:`bind`, on the trio thread inside the run, opens it on a nursery; :meth:`unbind`
    closes it.  ``stopped(finished)`` makes the error a :meth:`submit` fails with when the
    run is not there (``finished``: it has ended, rather than not started).
    """

    def __init__(self, stopped: Callable[[bool], Exception]) -> None:
        self._stopped = stopped
        self._token: Any = None  # trio.lowlevel.TrioToken
        self._nursery: Any = None

    def bind(self, nursery: Any) -> None:
        import trio

        self._token = trio.lowlevel.current_trio_token()
        self._nursery = nursery

    def unbind(self) -> None:
        self._nursery = None

    @property
    def open(self) -> bool:
        return self._nursery is not None

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """From any thread: have the trio run call ``fn(*args)`` (synchronous, quick) soon;
        False if it has finished or never started.  Works after :meth:`unbind` too, as long
        as the run goes on (to end it)."""
        import trio

        if self._token is None:
            return False
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def start_soon(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """From any thread: start ``async_fn(*args)`` in the bound nursery; False (nothing
        started) if the portal is not open or the run has finished."""
        nursery = self._nursery
        if self._token is None or nursery is None:
            return False
        return self.call_soon(nursery.start_soon, async_fn, *args)

    def submit(self, async_fn: Callable[..., Awaitable[T]],
               *args: Any) -> concurrent.futures.Future[T]:
        """From any thread: run ``await async_fn(*args)`` in the bound nursery; the future
        gives its result or exception.  Cancelled before it starts, it never runs."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(await async_fn(*args))
            except Exception as e:
                future.set_exception(e)

        if self._token is None or self._nursery is None:
            future.set_exception(self._stopped(False))
        elif not self.start_soon(run):
            future.set_exception(self._stopped(True))
        return future


# -- anyio (the ASGI apps of `ww daemon`, served by hypercorn) ---------------------------------


async def in_worker_thread(fn: Callable[[], T],
                           on_cancel: Callable[[], Any] | None = None,
                           limiter: Any = None) -> T:
    """In an ASGI app (anyio, on trio or asyncio): ``fn()`` in one of anyio's worker threads.

    The work is never abandoned: if the calling task is cancelled (its client went away),
    the cancellation waits for ``fn`` to return, so nothing keeps running for a caller that
    left and what the work used (an iterator, say) is free again when this raises.  Work that
    may wait long (on the network) gives ``on_cancel``, called at once on cancellation to make
    it stop early (a :class:`ww.ipfs.api.CancelToken`'s ``cancel``); short work does without
    it, which saves a task per call (a third of the CPU of a gateway download's 1 MiB steps).
    A cancelled caller gets the cancellation, not the error of work it stopped.
    ``limiter``: an ``anyio.CapacityLimiter`` bounding this caller's threads, instead of
    anyio's default pool (40 threads, shared by everything on the event loop)."""
    import anyio

    if on_cancel is None:
        try:
            return await anyio.to_thread.run_sync(fn, limiter=limiter)
        except Exception:
            await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled meanwhile: that wins
            raise
    outcome: list[tuple[bool, Any]] = []

    def work() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as err:  # handed to the awaiting task
            outcome.append((False, err))

    finished = False

    async def stop_work_if_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            if not finished:
                on_cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stop_work_if_cancelled)
        await anyio.to_thread.run_sync(work, limiter=limiter)  # not abandoned: waited for
        finished = True
        tasks.cancel_scope.cancel()
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    await anyio.lowlevel.checkpoint_if_cancelled()  # stopped by on_cancel: the error is dropped
    raise value
