"""ww.core.capnp_stream: every Cap'n Proto message leaves in one send, and nothing else
changes (order, large messages, closing)."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import capnp

from ww.core import capnp_frames, capnp_stream
from ww.schema import load

_cell = load("cell")


class Echo(_cell.Service.Server):  # type: ignore[name-defined,misc]
    async def call(self, method: str, args: Any, **kwargs: Any) -> str:
        return f"{method}:{sum(len(a) for a in args)}"


class RecordingSocket(socket.socket):
    """A real socket that remembers the bytes of each ``send``."""

    sends: list[bytes]

    def send(self, data: Any, *args: Any) -> int:  # type: ignore[override]
        n = super().send(data, *args)
        self.sends.append(bytes(memoryview(data)[:n]))
        return n


def whole_messages(chunk: bytes) -> bool:
    """Is ``chunk`` one or more whole framed messages?"""
    while chunk:
        size = capnp_frames.message_size(chunk)
        if size is None or size > len(chunk):
            return False
        chunk = chunk[size:]
    return True


def calls_over(args: list[list[str]], pipelined: bool) -> tuple[list[str], list[bytes]]:
    """Make ``Service.call("m", a)`` for each ``a`` from a client on capnp_stream to a plain
    pycapnp server, over a socketpair; (the answers, the client's sends)."""
    mine, theirs = socket.socketpair()
    ours = RecordingSocket(mine.family, mine.type, mine.proto, fileno=mine.detach())
    ours.sends = []

    async def main() -> list[str]:
        server = capnp.TwoPartyServer(
            await capnp.AsyncIoStream.create_connection(sock=theirs), bootstrap=Echo())
        client = capnp.TwoPartyClient(await capnp_stream.connect(ours))
        service = client.bootstrap().cast_as(_cell.Service)
        if pipelined:
            results = await asyncio.gather(*(service.call("m", a) for a in args))
        else:
            results = [await service.call("m", a) for a in args]
        client.close()
        server.close()
        return [r.result for r in results]

    try:
        return asyncio.run(capnp.run(main())), ours.sends
    finally:
        ours.close()
        theirs.close()


def test_each_message_leaves_in_one_send() -> None:
    answers, sends = calls_over([["x"]] * 5, pipelined=False)
    assert answers == ["m:1"] * 5
    assert len(sends) >= 5  # the bootstrap and the calls, at least
    assert all(whole_messages(s) for s in sends), [len(s) for s in sends]


def test_pipelined_and_large_calls_arrive_whole_and_in_order() -> None:
    args = [["y" * i] for i in range(50)] + [["z" * 300_000]]
    answers, sends = calls_over(args, pipelined=True)
    assert answers == [f"m:{len(a[0])}" for a in args]
    assert b"".join(sends).count(b"z" * 300_000) == 1  # the large one: sent as it came


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def framed(*words: int) -> bytes:
    """A message of one segment per entry of ``words`` (that many words each)."""
    table = struct.pack(f"<I{len(words)}I", len(words) - 1, *words)
    table += b"\0" * (-len(table) % 8)
    return table + b"".join(bytes([i + 1]) * 8 * w for i, w in enumerate(words))


def test_pieces_cut_anywhere_are_passed_on_at_message_ends_only() -> None:
    stream = framed(2) + framed(1, 3) + framed(0) + framed(4)
    for cut in (1, 3, 5, 8, 13, 64):
        recorder = Recorder()
        whole = capnp_stream._WholeMessages(recorder)  # type: ignore[arg-type]
        for i in range(0, len(stream), cut):
            whole.write(stream[i:i + cut])
        assert b"".join(recorder.writes) == stream
        assert all(whole_messages(w) for w in recorder.writes), cut


def test_closing_sends_what_is_collected_first() -> None:
    recorder = Recorder()
    whole = capnp_stream._WholeMessages(recorder)  # type: ignore[arg-type]
    message = framed(3)
    whole.write(message[:12])
    assert recorder.writes == []
    whole.close()
    assert recorder.writes == [message[:12]] and recorder.closed
