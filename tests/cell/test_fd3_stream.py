"""The SDK's end of fd 3 at the level of system calls: one ``send`` per message, and no
``epoll_ctl`` for pycapnp's pause after each read (ww.core.capnp_stream).

The host here is a plain pycapnp server (``capnp.AsyncIoStream.create_connection``) on one
end of a real socket pair; the cell is the SDK's ``open_session`` (what ``ww.cell.connect``
runs) on the other, its socket a ``socket.socket`` that records its real ``send`` calls,
its event loop's selector one that counts the real ``epoll_ctl`` calls made for that socket.
"""

from __future__ import annotations

import asyncio
import selectors
import socket

import capnp
import pytest

import ww.cell
from ww.cell._session import open_session
from ww.core import capnp_frames
from ww.schema import load

_cell = load("cell")
CALLS = 200


class _CountingSocket(socket.socket):
    """A real socket; every ``send`` it makes (one system call each) is recorded."""

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.sent: list[bytes] = []

    def send(self, data, flags: int = 0) -> int:  # type: ignore[override]
        n = super().send(data, flags)
        self.sent.append(bytes(memoryview(data)[:n]))
        return n


class _CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop's real selector; each register/modify/unregister (an ``epoll_ctl``) of the
    watched fd counted."""

    watched = -1
    changes = 0

    def register(self, fileobj, events, data=None):
        self.changes += self._fd_lookup(fileobj) == self.watched
        return super().register(fileobj, events, data)

    def modify(self, fileobj, events, data=None):
        self.changes += self._fd_lookup(fileobj) == self.watched
        return super().modify(fileobj, events, data)

    def unregister(self, fileobj):
        self.changes += self._fd_lookup(fileobj) == self.watched
        return super().unregister(fileobj)

    def _fd_lookup(self, fileobj) -> int:
        return fileobj if isinstance(fileobj, int) else fileobj.fileno()


class _Console(_cell.Console.Server):  # type: ignore[name-defined,misc]
    async def println(self, line, **kwargs) -> None:
        pass

    async def ping(self, payload, **kwargs):
        return payload


class _Host(_cell.Host.Server):  # type: ignore[name-defined,misc]
    async def identity(self, **kwargs):
        return b""

    async def login(self, account, _context, **kwargs):
        session = _context.results.init("session")
        session.granted = ["console"]
        session.console = _Console()


def _run(scenario) -> None:
    """``scenario(session, cell_socket, selector, host_end)`` with the SDK's ``open_session``
    on a counted socket, logged in to a pycapnp ``_Host`` on the other end of the pair."""
    selector = _CountingSelector()

    async def main() -> None:
        host_end, cell_end = socket.socketpair()
        counted = _CountingSocket(cell_end.detach())
        selector.watched = counted.fileno()
        async with capnp.kj_loop():
            host_stream = await capnp.AsyncIoStream.create_connection(sock=host_end)
            server = capnp.TwoPartyServer(host_stream, bootstrap=_Host())
            client, session = await open_session(counted, identity=False)
            try:
                await scenario(session, counted, selector, host_end)
            finally:
                client.close()
                del server

    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        runner.run(main())


def _whole_messages(sent: list[bytes]) -> bool:
    return all(capnp_frames.message_size(data) == len(data) for data in sent)


def test_each_message_the_cell_sends_leaves_with_one_send():
    """pycapnp writes a message's segment table and its segments apart; the SDK sends each
    message (a call, its Finish) with one ``send`` holding exactly that message."""

    async def scenario(session, counted, selector, host_end) -> None:
        counted.sent.clear()
        for i in range(CALLS):
            assert await session.console.ping(bytes([i % 256]) * 100) == bytes([i % 256]) * 100
        assert _whole_messages(counted.sent), [len(d) for d in counted.sent[:6]]
        assert CALLS <= len(counted.sent) <= 2 * CALLS  # a Call, and a Finish, per call

    _run(scenario)


def test_pycapnps_pause_after_each_read_makes_no_epoll_ctl():
    """pycapnp asks to pause reading after every read and to resume on its next: none of it
    reaches the loop's selector for fd 3 while the cell calls and reads the answers."""

    async def scenario(session, counted, selector, host_end) -> None:
        before = selector.changes
        for i in range(CALLS):
            assert await session.console.ping(bytes([i % 256]) * 100) == bytes([i % 256]) * 100
        assert selector.changes - before == 0

    _run(scenario)


@pytest.mark.parametrize("size", [0, 65536 - 200, 65536, 3 * 65536 + 5, 1 << 20])
def test_messages_of_every_size_arrive_whole_and_in_order(size):
    """Small messages are collected and sent whole, large ones stream through in pieces:
    either way the host reads every byte, in order, and answers."""

    async def scenario(session, counted, selector, host_end) -> None:
        payloads = [bytes([i]) * size + bytes([i]) for i in range(8)]
        replies = await asyncio.gather(*(session.console.ping(p) for p in payloads))
        assert replies == payloads

    _run(scenario)


def test_the_host_hanging_up_reaches_the_cell_as_before():
    """The host stops writing: the cell's next call fails with the SDK's RemoteError and
    pycapnp's words, as before (the end of the stream is passed to pycapnp as it was)."""

    async def scenario(session, counted, selector, host_end) -> None:
        assert await session.console.ping(b"x") == b"x"
        host_end.shutdown(socket.SHUT_WR)
        with pytest.raises(ww.cell.RemoteError) as caught:
            await session.console.ping(b"y")
        assert str(caught.value) == "Peer disconnected."

    _run(scenario)
