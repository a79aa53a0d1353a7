"""The host's flow limit on a cell's calls in flight (ww.host.wire): the framing of the
Cap'n Proto byte stream and the accounting of calls against their returns, on real messages
built with pycapnp's own rpc.capnp, fed in pieces of random sizes."""

from __future__ import annotations

import functools
import hashlib
import json
import queue
import random
import re
import socket
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from tests.conftest import HANG, WW
from tests.kubo_stand_in import KuboStandIn
from ww.host import wire


def rpc():
    return wire._rpc_schema()


def call(question: int, payload: int) -> bytes:
    message = rpc().Message.new_message()
    body = message.init("call")
    body.questionId, body.interfaceId, body.methodId = question, 0x1234, 3
    body.target.importedCap = 0
    body.params.content.set_as_text("x" * payload)
    return message.to_bytes()


def answer(question: int) -> bytes:
    message = rpc().Message.new_message()
    message.init("return").answerId = question
    return message.to_bytes()


def finish(question: int) -> bytes:
    message = rpc().Message.new_message()
    message.init("finish").questionId = question
    return message.to_bytes()


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 3, 7, 8, 9, 64, 4095, 4097, 65536, 300_000])
        out.append(data[pos:pos + step])
        pos += step
    return out


def test_messages_are_framed_and_classified_whatever_the_chunk_boundaries():
    rng = random.Random(11)
    messages, expected = [], []
    for i in range(60):
        kind = rng.choice(["call", "return", "finish"])
        if kind == "call":
            q = rng.randrange(1 << 32)
            m = call(q, rng.choice([0, 10, 5000, 70_000, 300_000]))
            expected.append((wire.CALL, q, len(m)))
        elif kind == "return":
            q = rng.randrange(1 << 32)
            m = answer(q)
            expected.append((wire.RETURN, q, len(m)))
        else:
            m = finish(i)
            expected.append((wire.OTHER, 0, len(m)))
        messages.append(m)
    assert any(struct.unpack_from("<I", m)[0] > 0 for m in messages)  # multi-segment ones too
    for seed in range(5):
        seen: list[tuple[int, int, int]] = []
        framer = wire._framer(lambda *r, s=seen: s.append(r))
        for piece in pieces(b"".join(messages), random.Random(seed)):
            framer.feed(memoryview(piece))
        assert seen == expected


def test_over_the_limit_reading_pauses_and_resumes_once_the_host_answers():
    events: list[str] = []
    flow = wire.FlowLimit(lambda: events.append("pause"), lambda: events.append("resume"),
                          limit=1_000_000, resume_at=500_000)
    calls = [call(q, 200_000) for q in range(8)]  # 8 x ~200 kB: over 1 MB after 5
    rng = random.Random(3)
    for piece in pieces(b"".join(calls), rng):
        flow.incoming.feed(piece)
    assert events == ["pause"]
    assert flow.total == sum(map(len, calls))
    flow.outgoing.feed(answer(999))  # no such call: changes nothing
    flow.outgoing.feed(finish(0))
    assert events == ["pause"]
    for q in range(4):
        for piece in pieces(answer(q), rng):
            flow.outgoing.feed(piece)
    assert events == ["pause"]  # 4 left, ~800 kB: still over resume_at
    flow.outgoing.feed(answer(4) + answer(5))
    assert events == ["pause", "resume"]
    flow.outgoing.feed(answer(6) + answer(7))
    assert flow.total == 0 and flow.in_flight == {}


def test_a_question_id_used_twice_counts_both_calls():
    flow = wire.FlowLimit(lambda: None, lambda: None)
    flow.incoming.feed(call(5, 1000) + call(5, 1000))
    flow.outgoing.feed(answer(5))
    assert flow.total == 0  # both released by the one Return KJ would send (or the
    # connection is dropped): neither was forgotten while in flight
    flow.incoming.feed(call(5, 1000))
    assert flow.total == wire.CALL_FLOOR  # a small call counts at least this much


def test_many_tiny_calls_are_bounded_by_their_number():
    events: list[str] = []
    flow = wire.FlowLimit(lambda: events.append("pause"), lambda: events.append("resume"))
    tiny = [call(q, 0) for q in range(wire.FLOW_LIMIT // wire.CALL_FLOOR + 1)]
    assert len(tiny[0]) < 200
    flow.incoming.feed(b"".join(tiny[:-1]))
    assert events == []
    flow.incoming.feed(tiny[-1])
    assert events == ["pause"]
    for q in range(len(tiny) // 2 + 1):
        flow.outgoing.feed(answer(q))
    assert events == ["pause", "resume"]


def test_a_root_beyond_the_head_or_garbage_is_counted_and_never_released():
    flow = wire.FlowLimit(lambda: None, lambda: None)
    # One segment of 1000 words whose root pointer points at its last struct: past HEAD.
    words = 1000
    root = ((words - 3) << 2) | (1 << 32) | (1 << 48)  # struct, offset, 1 data, 1 pointer
    message = struct.pack("<II", 0, words) + struct.pack("<Q", root) + bytes(8 * (words - 1))
    flow.incoming.feed(message)
    assert flow.total == len(message)
    flow.outgoing.feed(answer(0))
    assert flow.total == len(message)
    # A segment table KJ would refuse: everything from there on counts.
    flow.incoming.feed(struct.pack("<I", 1 << 30) + bytes(10_000))
    assert flow.total == len(message) + 4 + 10_000


def test_random_bytes_never_raise_and_never_lower_the_count():
    for seed in range(30):
        rng = random.Random(seed)
        flow = wire.FlowLimit(lambda: None, lambda: None)
        before = 0
        for _ in range(50):
            piece = rng.randbytes(rng.randrange(1, 3000))
            if rng.random() < 0.3:  # a plausible table in front of garbage segments
                piece = struct.pack("<II", 0, rng.randrange(1, 400)) + piece
            flow.incoming.feed(piece)
            assert flow.total >= before
            before = flow.total


def test_far_pointers_are_followed():
    # The root as a single far pointer into segment 1, whose landing pad points at a Call.
    sizes = [1, 6]
    far = 2 | (0 << 3) | (1 << 32)  # single far, pad at word 0 of segment 1
    pad = (0 << 2) | (1 << 32) | (1 << 48)  # struct right after the pad: 1 data, 1 pointer
    message_data = 2  # which = call
    call_ptr = (0 << 2) | (1 << 32)  # the Call right after this pointer: 1 data word
    call_data = 77  # questionId
    segment0 = struct.pack("<Q", far)
    segment1 = struct.pack("<QQQQ", pad, message_data, call_ptr, call_data)
    sizes[1] = len(segment1) // 8
    head = segment0 + segment1
    assert wire.classify(head, sizes) == (wire.CALL, 77)
    # A double far: the pad is a far pointer to the content plus a tag word.
    double = 2 | (1 << 2) | (0 << 3) | (1 << 32)
    landing = 2 | (2 << 3) | (1 << 32)  # content at word 2 of segment 1
    tag = (1 << 32) | (1 << 48)
    segment1 = struct.pack("<QQQ", landing, tag, message_data) + \
        struct.pack("<Q", (0 << 2) | (1 << 32)) + struct.pack("<Q", 99)
    assert wire.classify(struct.pack("<Q", double) + segment1,
                         [1, len(segment1) // 8]) == (wire.CALL, 99)


# --- a real cell over a real `ww run` -------------------------------------------------------

class BlockedKubo(KuboStandIn):
    """A kubo stand-in whose ``add`` reads nothing of the upload until :attr:`release` is
    set, so that the host's importer, then its writer, then the cell's writes wait; then it
    reads the whole upload, keeps the file's bytes in :attr:`received` and answers with
    :data:`STAND_IN_CID`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received: bytes | None = None
        super().__init__()

    def answer(self, head: bytes, stream: BinaryIO, conn: socket.socket) -> None:
        if not head.startswith(b"POST /api/v0/add"):
            self.reply(conn, b"")
            return
        self.release.wait()
        boundary = re.search(rb"boundary=(\w+)", head).group(1)
        upload = bytearray()
        while size := int(stream.readline(), 16):  # chunked transfer encoding
            upload += stream.read(size)
            stream.readline()
        stream.readline()
        start = upload.index(b"\r\n\r\n") + 4
        end = len(upload) - len(b"\r\n--%s--\r\n" % boundary)
        self.received = bytes(upload[start:end])
        self.reply(conn, b'{"Name": "file", "Hash": "%s", "Size": "0"}\n' % STAND_IN_CID.encode())

    def close(self) -> None:
        self.release.set()
        super().close()


STAND_IN_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # any CID: the bytes are checked
MIB = 1024 * 1024
WRITES = 128  # of 1 MiB: four times the flow limit

FLOODING_CELL = """
import asyncio, random, sys, ww.cell

async def main():
    loop = asyncio.get_running_loop()
    step = lambda: loop.run_in_executor(None, sys.stdin.readline)
    data = random.Random(7).randbytes(WRITES * MIB)
    async with ww.cell.connect() as s:
        writer = (await s.ipfs._cap.add({})).writer
        print("ready", flush=True)
        await step()
        writes = [writer.write(data[i:i + MIB]) for i in range(0, len(data), MIB)]
        ping = s.console.ping(b"behind the writes")
        print("sent", flush=True)
        await ping
        print("ping answered", flush=True)
        await asyncio.gather(*writes)
        print((await writer.done()).cid, flush=True)
        await step()

asyncio.run(main())
""".replace("WRITES", str(WRITES)).replace("MIB", str(MIB))


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _watched(*args: str) -> tuple[subprocess.Popen, queue.Queue[str]]:
    """``ww --json run *args``: the cell's stdout lines and the host's flow-limit audit
    events, in the order they come, on one queue."""
    proc = subprocess.Popen([WW, "--json", "run", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [events.put(line) for line in proc.stdout],
                     daemon=True).start()
    threading.Thread(target=lambda: [events.put(line) for line in proc.stderr
                                     if '"flow-limit"' in line], daemon=True).start()
    return proc, events


def test_a_cell_flooding_writes_the_host_cannot_take_yet_is_paused_not_buffered(make_cell):
    """128 writes of 1 MiB behind a writer whose backend reads nothing yet, then a ping:
    the host stops reading at the flow limit (the ping waits behind it) and its memory grows
    by far less than the data sent; once the backend reads, every write and the ping are
    answered and the backend got the data whole and in order."""
    kubo = BlockedKubo()
    cell = make_cell(FLOODING_CELL)
    proc, events = _watched("--with-ipfs", "--with-console", "--ipfs", kubo.api, cell)
    try:
        # Every bound below only stops a hang; the assertions are on the order of events.
        assert events.get(timeout=HANG) == "ready\n"
        before = _kib(proc.pid, "VmRSS")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert events.get(timeout=HANG) == "sent\n"
        paused = events.get(timeout=300)
        assert '"flow-limit"' in paused, f"the host read on: {paused!r}"
        assert json.loads(paused)["in_flight"] > wire.FLOW_LIMIT
        kubo.release.set()
        assert events.get(timeout=300) == "ping answered\n"
        assert events.get(timeout=300) == STAND_IN_CID + "\n"
        grown = _kib(proc.pid, "VmHWM") - before
        proc.stdin.write("bye\n")
        proc.stdin.flush()
        assert proc.wait(HANG) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        kubo.close()
    data = random.Random(7).randbytes(WRITES * MIB)
    assert kubo.received is not None and len(kubo.received) == len(data)
    assert hashlib.sha256(kubo.received).digest() == hashlib.sha256(data).digest()
    assert grown * 1024 < WRITES * MIB // 2, f"the host grew by {grown} KiB"


# --- pycapnp's own RPC system on both ends of a socket pair ---------------------------------

SLOW_SCHEMA = """@0xd3c1f2a4b5e6f701;
interface Slow {
  hold @0 (data :Data) -> (size :UInt64);
}
"""


@functools.cache
def _slow_schema():
    """Loaded once per process: pycapnp aborts on a second file with the same ID."""
    import capnp

    path = Path(tempfile.mkdtemp()) / "slow.capnp"
    path.write_text(SLOW_SCHEMA)
    return capnp.load(str(path))


class _Counting:
    """The real socket transport, its ``pause_reading``/``resume_reading`` calls counted (what
    reaches the socket: each one an ``epoll_ctl``)."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.pauses = self.resumes = 0

    def pause_reading(self) -> None:
        self.pauses += 1
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.resumes += 1
        self.transport.resume_reading()

    def __getattr__(self, name: str):
        return getattr(self.transport, name)


class _Counted(wire._Connection):
    """The host's end as ``wire.connect`` makes it, on a :class:`_Counting` transport."""

    bytes_read = 0

    def connection_made(self, transport) -> None:
        self.counted = _Counting(transport)
        super().connection_made(self.counted)

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_read += nbytes
        super().buffer_updated(nbytes)


def _run_pair(limit: int, scenario, late: bool = False) -> None:
    """``scenario(client, server_state, connection)`` with a pycapnp client on one end of a
    socket pair and a pycapnp server behind :class:`wire._Connection` on the other (its
    transport counted: ``connection.counted``).  ``late``: the server is not attached (its
    pycapnp never asks to read) until the scenario calls ``server_state.attach()`` (with
    pycapnp's protocol, when ``connection.inner`` stands in front of it)."""
    import asyncio

    import capnp

    schema = _slow_schema()

    class State:
        arrived = 0
        gate: asyncio.Event
        attach = None

    class SlowServer(schema.Slow.Server):
        async def hold(self, data, **kwargs):
            State.arrived += 1
            await State.gate.wait()
            return len(data)

    async def main() -> None:
        State.gate = asyncio.Event()
        host_end, cell_end = socket.socketpair()
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _Counted(limit=limit), sock=host_end)
        servers = []

        def attach(inner=None) -> None:
            stream = capnp.AsyncIoStream()
            stream._post_init(inner or connection.inner)
            servers.append(capnp.TwoPartyServer(stream, bootstrap=SlowServer()))

        if late:
            State.attach = attach
        else:
            attach()
        client_stream = await capnp.AsyncIoStream.create_connection(sock=cell_end)
        client = capnp.TwoPartyClient(client_stream).bootstrap().cast_as(schema.Slow)
        State.cell_end = cell_end
        await scenario(client, State, connection)
        servers.clear()

    asyncio.run(capnp.run(main()))


async def _until(condition) -> None:
    import asyncio

    for _ in range(100_000):  # a bound against a hang only; each turn yields to the loop
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never happened")


def test_pycapnp_server_stops_reading_at_the_limit_and_answers_everything_after():
    import asyncio

    async def scenario(client, state, connection) -> None:
        calls = [client.hold(bytes([i]) * MIB) for i in range(10)]
        await _until(lambda: connection.flow.paused)
        arrived = state.arrived
        assert arrived <= 5  # 3 MiB limit: the 4th call passes it; none read after that
        state.gate.set()
        sizes = [r.size for r in await asyncio.gather(*calls)]
        assert sizes == [MIB] * 10
        assert connection.flow.total == 0 and not connection.flow.paused

    _run_pair(3 * MIB, scenario)


def test_cancelled_calls_are_returned_and_leave_nothing_counted():
    """A cell that drops calls (Finish before Return) gets a Return for each from KJ: the
    count comes back to zero, so an honest cell that cancels never stalls itself."""
    import asyncio

    async def scenario(client, state, connection) -> None:
        for _ in range(3):
            calls = [asyncio.ensure_future(client.hold(b"x" * MIB)) for _ in range(2)]
            await _until(lambda: state.arrived >= 2)
            assert connection.flow.total > 2 * MIB
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            await _until(lambda: connection.flow.total == 0)
            state.arrived = 0
        state.gate.set()
        assert (await client.hold(b"y" * 10)).size == 10

    _run_pair(64 * MIB, scenario)


def test_one_call_larger_than_the_limit_is_read_whole_and_answered():
    """Paused only between messages: a call over the limit on its own still arrives."""
    import asyncio

    async def scenario(client, state, connection) -> None:
        call = asyncio.ensure_future(client.hold(b"z" * (3 * MIB)))
        await _until(lambda: state.arrived == 1)
        assert connection.flow.paused
        state.gate.set()
        assert (await call).size == 3 * MIB
        assert not connection.flow.paused

    _run_pair(MIB, scenario)


def test_pycapnp_asking_to_pause_after_each_read_does_not_reach_the_socket_the_limit_does():
    """pycapnp asks its transport to pause after every read and to resume on its next (an
    ``epoll_ctl`` pair per message): the host keeps those from the socket.  The flow limit
    still pauses it, once, and resumes it once the answers have left."""
    import asyncio

    async def scenario(client, state, connection) -> None:
        state.gate.set()
        for i in range(200):
            assert (await client.hold(bytes([i % 256]) * 100)).size == 100
        assert (connection.counted.pauses, connection.counted.resumes) == (0, 0)
        state.gate.clear()
        calls = [client.hold(bytes([i]) * MIB) for i in range(10)]
        await _until(lambda: connection.flow.paused)
        assert connection.counted.pauses == 1 and not connection.counted.is_reading()
        assert state.arrived <= 200 + 5  # 3 MiB limit: none read after the 4th call
        state.gate.set()
        assert [r.size for r in await asyncio.gather(*calls)] == [MIB] * 10
        assert not connection.flow.paused and connection.counted.is_reading()
        assert (connection.counted.pauses, connection.counted.resumes) == (1, 1)

    _run_pair(3 * MIB, scenario)


def test_bytes_pycapnp_has_not_asked_for_are_held_to_a_bound_then_all_delivered():
    """A server whose pycapnp has no read pending (not attached yet): the host reads fd 3 on
    into its own buffer, at most ``wire.HOLD`` bytes (and one read), then really pauses the
    socket; once pycapnp reads, everything held reaches it and every call is answered."""
    import asyncio

    async def scenario(client, state, connection) -> None:
        state.gate.set()
        calls = [client.hold(bytes([i % 256]) * 1000) for i in range(300)]  # ~300 KiB
        await _until(lambda: connection.counted.pauses)
        assert not connection.counted.is_reading()
        assert wire.HOLD <= len(connection._held) < 2 * wire.HOLD
        assert state.arrived == 0
        state.attach()
        assert [r.size for r in await asyncio.gather(*calls)] == [1000] * 300
        assert connection.counted.is_reading() and connection.counted.resumes == 1
        assert not connection._held

    _run_pair(64 * MIB, scenario, late=True)


class _Recording:
    """pycapnp's real protocol, what the host hands it recorded: bytes, then the end."""

    def __init__(self, protocol) -> None:
        self.protocol = protocol
        self.events: list = []

    def buffer_updated(self, n: int) -> None:
        self.events.append(n)
        self.protocol.buffer_updated(n)

    def eof_received(self):
        self.events.append("eof")
        return self.protocol.eof_received()

    def __getattr__(self, name: str):
        return getattr(self.protocol, name)


def test_the_end_of_the_stream_waits_behind_the_bytes_held_for_pycapnp():
    """The cell sends calls and closes its end before the host's pycapnp asks to read: the
    end waits behind the held bytes; pycapnp gets every byte read, then the end, and the
    connection is closed."""

    async def scenario(client, state, connection) -> None:
        recording = connection.inner = _Recording(connection.inner)
        calls = [client.hold(bytes([i]) * 100) for i in range(20)]
        # all read and held: the 20 calls and the bootstrap they are made on
        await _until(lambda: len(connection.flow.in_flight) == 21)
        state.cell_end.shutdown(socket.SHUT_WR)
        await _until(lambda: connection._eof)
        assert recording.events == [] and not connection.counted.is_closing()
        state.attach(recording.protocol)
        await _until(lambda: connection.counted.is_closing())
        assert recording.events[-1] == "eof" and "eof" not in recording.events[:-1]
        assert sum(recording.events[:-1]) == connection.bytes_read
        assert not connection._held
        del calls

    _run_pair(64 * MIB, scenario, late=True)


# --- Bootstrap messages are calls too -----------------------------------------------------

BOOTSTRAPS = 100_000  # ~4.8 MB of 48-byte messages: 12x what the flow limit lets in

BOOTSTRAPPING_CELL = """
import socket, struct, sys

# rpc.capnp's Message{bootstrap = (questionId = q)}, framed; q at byte 32.
template = bytearray.fromhex(
    "0000000005000000000000000100010008000000000000000000000001000100"
    "00000000000000000000000000000000")
flood = bytearray()
for q in range(BOOTSTRAPS):
    struct.pack_into("<I", template, 32, q)
    flood += template
fd3 = socket.socket(fileno=3)
fd3.sendall(flood)  # and never read a Return
print("sent", flush=True)
sys.stdin.readline()
""".replace("BOOTSTRAPS", str(BOOTSTRAPS))


def test_a_cell_flooding_bootstraps_it_never_reads_the_answers_to_is_paused(make_cell):
    """A ``Bootstrap`` makes the host's KJ keep an answer and queue a ``Return`` (with a
    capability) for it, as a call does: a cell sending them and never reading its answers
    must meet the flow limit, or the host holds ~13 bytes for each byte the cell sends, without
    bound.  The host pauses fd 3 (the event is audited) and the cell's write never ends."""
    boot = rpc().Message.new_message()
    boot.init("bootstrap").questionId = 0x11223344
    assert boot.to_bytes() == bytes.fromhex(
        "0000000005000000000000000100010008000000000000000000000001000100"
        "44332211000000000000000000000000")  # the cell's template, q at byte 32
    cell = make_cell(BOOTSTRAPPING_CELL)
    proc, events = _watched(cell)
    try:
        # Either the host pauses (and the cell's write can never end: it reads no Return)
        # or it reads every bootstrap (and the write ends): the first event tells which.
        first = events.get(timeout=300)
        assert '"flow-limit"' in first, f"the host read every bootstrap: {first!r}"
        assert json.loads(first)["in_flight"] > wire.FLOW_LIMIT
    finally:
        proc.kill()
        proc.wait()
