"""ww.core.bridge: the hand-offs between asyncio, trio and threads keep their cancellation
and end-of-life semantics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest
import trio

from tests.conftest import HANG
from ww.core import bridge


def test_a_cancelled_wait_cancels_the_future_and_the_running_work():
    cancelled = threading.Event()

    async def main() -> concurrent.futures.Future[int]:
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        task = asyncio.ensure_future(bridge.wait_future(future, on_cancel=cancelled.set))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return future

    future = asyncio.run(main())
    assert cancelled.is_set() and future.cancelled()


def test_a_cancelled_executor_call_is_told_to_stop_and_waited_for():
    """bridge.in_executor (AsyncCoreAPI's hand-off): the caller's CancelledError comes once
    the work has ended, after on_cancel told it to stop; the work's own error is dropped."""
    started, stop, ended = threading.Event(), threading.Event(), threading.Event()

    def work() -> int:
        started.set()
        assert stop.wait(HANG)
        ended.set()
        raise RuntimeError("stopped early")  # what a cancelled backend call raises

    async def main() -> None:
        assert await bridge.in_executor(None, lambda: 7, on_cancel=stop.set) == 7
        task = asyncio.ensure_future(bridge.in_executor(None, work, on_cancel=stop.set))
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, HANG)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()  # not raised before the work ended

    asyncio.run(main())


def test_the_outcome_of_a_thread_reaches_the_loop_and_a_closed_loop_is_no_error():
    def fails() -> None:
        raise ValueError("from the thread")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await bridge.in_new_thread(loop, "t", lambda: 7) == 7
        with pytest.raises(ValueError, match="from the thread"):
            await bridge.in_new_thread(loop, "t", fails)

    asyncio.run(main())
    loop = asyncio.new_event_loop()
    loop.close()
    assert bridge.call_in_loop(loop, print) is False


def test_a_feed_holds_at_most_its_capacity_and_an_ended_feed_abandons_its_thread():
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        feed: bridge.ThreadFeed[int] = bridge.ThreadFeed(loop, 2, lambda: EOFError("gone"))
        assert await feed.put(1) and await feed.put(2)
        third = asyncio.ensure_future(feed.put(3))
        await asyncio.sleep(0.01)
        assert not third.done()  # full: waits for room, the loop goes on
        items = feed.items()
        got: list[object] = [next(items)]  # room for one: the third goes in
        assert await third
        got += [next(items), next(items)]
        feed.end()
        assert await feed.put(4) is False
        with pytest.raises(EOFError):
            next(items)
        return got

    assert asyncio.run(main()) == [1, 2, 3]


def test_workers_refuse_work_once_closed():
    workers = bridge.DaemonWorkers(2, "w", lambda: RuntimeError("closed"))
    assert workers.submit(lambda x: x + 1, 1).result(HANG) == 2
    workers.close()
    with pytest.raises(RuntimeError, match="closed"):
        workers.submit(print)


def test_a_portal_says_whether_its_trio_run_has_not_started_or_has_ended():
    portal = bridge.TrioPortal(lambda finished: RuntimeError(f"finished={finished}"))
    with pytest.raises(RuntimeError, match="finished=False"):
        portal.submit(trio.sleep, 0).result(HANG)
    results: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            portal.bind(nursery)

            async def double(x: int) -> int:
                return 2 * x

            future = portal.submit(double, 21)
            await trio.to_thread.run_sync(lambda: results.append(future.result(HANG)))
            portal.unbind()

    thread = threading.Thread(target=bridge.run_trio, args=(main,))
    thread.start()
    thread.join(30)
    assert results == [42]
    assert portal.call_soon(print) is False  # the run has ended: nothing is called
    with pytest.raises(RuntimeError, match="finished=False"):  # unbound: not running
        portal.submit(trio.sleep, 0).result(HANG)


def test_a_thread_waiting_for_a_future_is_woken_by_its_result_or_by_an_interrupt():
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    threading.Timer(0.01, done.set_result, (5,)).start()
    assert bridge.wait_in_thread(done, 30) and done.result() == 5
    registered: list[object] = []

    def interrupt(wake):  # a CancelToken cancelled at once, as its on_cancel does
        wake()
        return lambda: registered.append("forgotten")

    pending: concurrent.futures.Future[int] = concurrent.futures.Future()
    assert bridge.wait_in_thread(pending, 30, interrupt) is False  # woken, not after 30 s
    assert registered == ["forgotten"] and not pending.done()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_cancelled_worker_thread_call_is_told_to_stop_and_waited_for(backend: str) -> None:
    """bridge.in_worker_thread (the ASGI apps' hand-off, on anyio): on cancellation on_cancel
    is called and the cancellation waits for the work to end; without on_cancel it waits for
    the work as it is; results and errors pass through."""
    import anyio

    started, stop, ended = threading.Event(), threading.Event(), threading.Event()

    def work() -> int:
        started.set()
        assert stop.wait(HANG)
        ended.set()
        raise RuntimeError("stopped early")

    def fail() -> int:
        raise ValueError("the work's error")

    async def main() -> None:
        assert await bridge.in_worker_thread(lambda: 7) == 7
        assert await bridge.in_worker_thread(lambda: 8, on_cancel=stop.set) == 8
        with pytest.raises(ValueError, match="the work's error"):
            await bridge.in_worker_thread(fail, on_cancel=stop.set)
        assert not stop.is_set()  # finished work is never told to stop
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bridge.in_worker_thread, work, stop.set)
                assert await anyio.to_thread.run_sync(started.wait, HANG)
                scope.cancel()
        assert scope.cancelled_caught and stop.is_set()
        assert ended.is_set()  # the cancellation waited for the work
        started.clear(), stop.clear(), ended.clear()
        with anyio.CancelScope() as scope:  # no on_cancel: the work is waited for as it is
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bridge.in_worker_thread, work)
                assert await anyio.to_thread.run_sync(started.wait, HANG)
                scope.cancel()
                stop.set()
        assert ended.is_set()

    anyio.run(main, backend=backend)


def test_pycapnp_on_uvloop_through_ww_s_stream_survives_calls_in_flight(tmp_path):
    """Between two processes, each on :func:`bridge.new_loop`'s uvloop, pycapnp on
    ``ww.core.capnp_stream``: 64 calls in flight, 3000 in all, every answer right.  (The same
    on pycapnp's own protocol crashed the server within 300 sequential calls: it pauses the
    transport from inside ``get_buffer``, and libuv then calls the read callback it had just
    cleared.)"""
    import os
    import socket
    import subprocess
    import sys
    import textwrap

    schema = tmp_path / "echo.capnp"
    schema.write_text("@0xd3b1e6a5b5c1f2a9;\ninterface Echo { call @0 (x :Text) -> (y :Text); }\n")
    server = tmp_path / "server.py"
    server.write_text(textwrap.dedent(f"""
        import socket, sys
        import capnp
        from ww.core import bridge, capnp_stream
        assert type(bridge.new_loop()).__module__ == "uvloop"
        schema = capnp.load({str(schema)!r})
        class Echo(schema.Echo.Server):
            async def call(self, x, **kwargs):
                return x
        async def serve(sock):
            stream = await capnp_stream.connect(sock)
            await capnp.TwoPartyServer(stream, bootstrap=Echo()).on_disconnect()
        bridge.run_capnp(serve(socket.socket(fileno=int(sys.argv[1]))))
    """))
    ours, theirs = socket.socketpair()
    child = subprocess.Popen([sys.executable, str(server), str(theirs.fileno())],
                             pass_fds=(theirs.fileno(),), env={**os.environ,
                                                                "WW_EVENT_LOOP": ""})
    theirs.close()

    async def calls() -> list[str]:
        import capnp

        from ww.core import capnp_stream

        stream = await capnp_stream.connect(ours)
        echo = capnp.TwoPartyClient(stream).bootstrap().cast_as(capnp.load(str(schema)).Echo)
        room, left, got = asyncio.Semaphore(64), list(range(3000)), []

        async def chain() -> None:
            while left:
                n = left.pop()
                async with room:
                    got.append(((await echo.call(str(n))).y, str(n)))

        await asyncio.gather(*(chain() for _ in range(64)))
        return [y for y, x in got if y != x] + [str(len(got))]

    try:
        assert bridge.run_capnp(calls()) == ["3000"]
    finally:
        ours.close()
        assert child.wait(HANG) == 0
