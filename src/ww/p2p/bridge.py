"""The one place where trio meets asyncio: a libp2p stream spliced to a socketpair.

py-libp2p runs on trio, pycapnp on asyncio, and each wants its own event loop.  Rather than
teach either about the other, every `/ww/0.1.0` stream is copied, byte for byte, to one end
of an ``AF_UNIX`` socketpair on the libp2p thread; the other end is an ordinary socket that
the Cap'n Proto side opens a two-party connection on.  The only things that cross between
the threads are sockets and futures.

Closing follows the stream: end of stream on one side is a half-close on the other; a
reset, an error, or the node stopping closes both.  When the Cap'n Proto side hangs up, the
remote peer is given a short grace to hang up too, then the stream is reset.
"""

from __future__ import annotations

import socket

import trio

CHUNK = 256 * 1024
HANGUP_GRACE = 2.0  # seconds the remote may take to close after our side hung up


async def splice(stream: object, sock: socket.socket) -> None:
    """Copy bytes between a libp2p ``stream`` and ``sock`` until both directions end.

    Owns both: when it returns (or is cancelled) the socket is closed and the stream closed
    or reset.
    """
    from libp2p.network.stream.exceptions import StreamEOF

    tsock = trio.socket.from_stdlib_socket(sock)
    clean = False

    async def inbound() -> None:  # remote -> socket
        while True:
            try:
                data = await stream.read(CHUNK)  # type: ignore[attr-defined]
            except StreamEOF:
                data = b""
            if not data:
                tsock.shutdown(socket.SHUT_WR)
                return
            view = memoryview(data)
            while view:
                sent = await tsock.send(view)
                view = view[sent:]

    async def outbound(scope: trio.CancelScope) -> None:  # socket -> remote
        while True:
            data = await tsock.recv(CHUNK)
            if not data:
                await stream.close_write()  # type: ignore[attr-defined]
                scope.deadline = min(scope.deadline, trio.current_time() + HANGUP_GRACE)
                return
            await stream.write(data)  # type: ignore[attr-defined]

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbound)
            nursery.start_soon(outbound, nursery.cancel_scope)
        clean = True
    except Exception:
        pass  # a reset or a broken socket ends the splice; both sides are closed below
    finally:
        tsock.close()
        with trio.CancelScope(shield=True):
            try:
                if clean:
                    await stream.close()  # type: ignore[attr-defined]
                else:
                    await stream.reset()  # type: ignore[attr-defined]
            except Exception:
                pass
