"""A lane peer that asks for big answers and never reads them (tests and benchmarks).

It dials a `ww run` host over the native lane (:func:`ww.p2p.lane.dial`, a fresh identity a
connection), opens `/ww/0.1.0` streams and writes Cap'n Proto RPC frames built by hand with
pycapnp's own ``rpc.capnp``: a Bootstrap, ``Gateway.service()`` and ``Service.call(method,
[arg])`` calls pipelined on it.  Its streams never read (the Yamux window it gives the host
is never credited back), so every answer the host writes stays with the host; a stream the
host cuts off is noted (:attr:`DeafProtocol.lost`).  Loopback only.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import capnp

from tests.p2p.conftest import EXPORTER
from ww.core.addrs import PROTOCOL_ID
from ww.p2p import lane
from ww.schema import load

_cell = load("cell")
_ipfs = load("ipfs")
_site = os.path.dirname(os.path.dirname(capnp.__file__))
rpc = capnp.load(os.path.join(os.path.dirname(capnp.__file__), "rpc.capnp"), imports=[_site])

# A method for exporter cells: ``blob N`` answers N bytes (of text), whatever the call's size.
BLOB_METHOD = """
        if method == "blob":
            return "x" * int(args[0])
"""
# tests/p2p/conftest.py's exporter cell, with ``blob``
BLOB_EXPORTER = EXPORTER.replace('        if method == "upper":',
                                 BLOB_METHOD.lstrip("\n") + '        if method == "upper":')
assert BLOB_EXPORTER != EXPORTER


# An exporter cell that adds IPFS_FILE_SIZE random bytes and exports its IPFS capability itself
# (the host's own object: remote calls on it never cross fd 3); it prints its address, then
# the file's CID and SHA-256, and waits for its stdin to end.
IPFS_FILE_SIZE = 8 << 20
IPFS_EXPORTER = EXPORTER.replace(
    "        await s.p2p.export(Echo())",
    f"        data = os.urandom({IPFS_FILE_SIZE})\n"
    "        cid = await s.ipfs.add(data)\n"
    "        await s.p2p.export(s.ipfs._cap)").replace(
    "        print(addrs[0], flush=True)",
    "        print(addrs[0], flush=True)\n"
    "        import hashlib\n"
    "        print(cid, hashlib.sha256(data).hexdigest(), flush=True)")
assert IPFS_EXPORTER != EXPORTER


def bootstrap(question: int = 0) -> bytes:
    m = rpc.Message.new_message()
    m.init("bootstrap").questionId = question
    return m.to_bytes()


def gateway_service(question: int = 1, boot: int = 0) -> bytes:
    m = rpc.Message.new_message()
    c = m.init("call")
    c.questionId = question
    c.interfaceId = _cell.Gateway.schema.node.id
    c.methodId = 0
    c.target.init("promisedAnswer").questionId = boot
    c.params.content.as_struct(_cell.Gateway.schema.methods["service"].param_type)
    return m.to_bytes()


def pipelined_call(question: int, interface: Any, method: str, on: int, /,
                   **params: Any) -> tuple[Any, Any]:
    """A call of ``interface.method`` on the capability in the first pointer field of
    question ``on``'s answer (pipelined), with ``params`` set; (its params, for the caller
    to set more, and the message)."""
    m = rpc.Message.new_message()
    c = m.init("call")
    c.questionId = question
    c.interfaceId = interface.schema.node.id
    c.methodId = interface.schema.method_names.index(method)
    target = c.target.init("promisedAnswer")
    target.questionId = on
    target.init("transform", 1)[0].getPointerField = 0
    content = c.params.content.as_struct(interface.schema.methods[method].param_type)
    for name, value in params.items():
        setattr(content, name, value)
    return content, m


def service_call(question: int, method: str, arg: str, service: int = 1) -> bytes:
    """``Service.call(method, [arg])`` on the export (pipelined on the ``service()`` call)."""
    params, m = pipelined_call(question, _cell.Service, "call", service, method=method)
    params.init("args", 1)[0] = arg
    return m.to_bytes()


def blob_calls(calls: int, size: int) -> bytes:
    """The bootstrap, ``service()`` and ``calls`` calls of ``blob size``: about 100 bytes a
    call, each answered with ``size`` bytes."""
    return b"".join([bootstrap(), gateway_service()]
                    + [service_call(q, "blob", str(size)) for q in range(2, 2 + calls)])


def ipfs_read_calls(cid: str, pairs: int, size: int) -> bytes:
    """The bootstrap, ``service()`` (the exported IPFS capability) and ``pairs`` pipelined
    ``cat(cid)`` + ``read(size)`` on the reader it returns: about 150 bytes a pair, each
    answered with ``size`` bytes (at most 4 MiB, a read's limit)."""
    frames = [bootstrap(), gateway_service()]
    for n in range(pairs):
        cat, read = 2 + 2 * n, 3 + 2 * n
        frames.append(pipelined_call(cat, _ipfs.IPFS, "cat", 1, path=f"/ipfs/{cid}",
                                     length=-1)[1].to_bytes())
        frames.append(pipelined_call(read, _ipfs.Reader, "read", cat, count=size)[1].to_bytes())
    return b"".join(frames)


class DeafProtocol(asyncio.BufferedProtocol):
    """Attached to a stream: never reads a byte (so never credits the host's window back);
    ``lost`` resolves when the stream ends (the host reset it, or its connection ended)."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray(1 << 16)

    def connection_made(self, transport: Any) -> None:
        transport.pause_reading()

    def get_buffer(self, sizehint: int) -> Any:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        pass

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def deaf_streams(addr: str, streams: int, frames: bytes,
                       timeout: float = 60.0) -> tuple[lane.LaneConn, list[DeafProtocol]]:
    """One lane connection (a new identity) to ``addr`` and ``streams`` `/ww/0.1.0` streams
    on it, each sent ``frames`` and never read."""
    conn = await lane.dial(addr, os.urandom(32), timeout=timeout)
    protocols = []
    for _ in range(streams):
        stream = conn.open(PROTOCOL_ID)
        async with asyncio.timeout(timeout):
            await stream.negotiated
        protocol = DeafProtocol()
        stream.connect(protocol)
        stream.write(frames)
        protocols.append(protocol)
    return conn, protocols


async def deaf_py_streams(node: Any, addr: str, streams: int, frames: bytes,
                          give_up: Any, timeout: float = 60.0) -> int:
    """On ``node``'s libp2p thread (``node.submit``; a bare :class:`ww.p2p.host.Node`): the
    same through py-libp2p, so the host serves them through its splice, not the lane.
    ``streams`` `/ww/0.1.0` streams to ``addr``, each sent ``frames`` and never read (no
    splice on this side: its Yamux window is never credited back).  Returns how many the
    host had reset when all were, or when ``give_up()`` (looked at every 50 ms; bounded by
    ``timeout``); then resets what is left."""
    import trio
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    info = info_from_p2p_addr(Multiaddr(addr))
    opened = []
    with trio.fail_after(timeout):
        await node.dial(info)
        for _ in range(streams):
            stream = await node.host.new_stream(info.peer_id, [PROTOCOL_ID])
            opened.append(stream)
            await stream.write(frames)
    try:
        with trio.move_on_after(timeout):
            while not give_up() and not all(_reset(s) for s in opened):
                await trio.sleep(0.05)
        return sum(1 for s in opened if _reset(s))
    finally:
        for stream in opened:
            with trio.move_on_after(1):
                await stream.reset()


def _reset(stream: Any) -> bool:
    """The host reset (or closed) py-libp2p's ``stream`` (a NetStream over a Yamux stream)."""
    muxed = stream.muxed_stream
    return bool(muxed.reset_received or muxed.closed)
