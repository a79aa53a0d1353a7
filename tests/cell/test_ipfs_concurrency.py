"""The IPFS capability under concurrency: real jailed cells, real fd 3, the real backends.

Writes in flight keep their order and are never refused; writers a cell abandons never keep
`ww run` alive; one IPFS call waiting on a slow backend holds up none of the cell's other
calls, and cancelling it stops the backend's work.
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import socket
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.conftest import HANG, WW, run_ww
from tests.kubo_stand_in import KuboStandIn

PIECE = 64 * 1024
DATA_SIZE = 3 * 1024 * 1024  # 48 pieces of 64 KiB
HELLO_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # "hello world\n"


def expected_cid(tmp_path: Path, data: bytes) -> str:
    (tmp_path / "data.bin").write_bytes(data)
    r = run_ww("export", str(tmp_path / "data.bin"))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().removeprefix("/ipfs/")


def test_sdk_adding_small_pieces_eight_times_gives_one_right_cid(make_cell, tmp_path):
    """The SDK keeps 8 writes in flight: each add must store the pieces in order."""
    data = random.Random(3).randbytes(DATA_SIZE)
    cell = make_cell(f"""
        import random, ww.cell
        data = random.Random(3).randbytes({DATA_SIZE})
        pieces = [data[i:i + {PIECE}] for i in range(0, len(data), {PIECE})]
        with ww.cell.session() as s:
            for _ in range(8):
                print(s.ipfs.add(iter(pieces)))
    """)
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [expected_cid(tmp_path, data)] * 8


RAW_WRITER_CELL = """
import asyncio, os, random, shutil, socket, sys, capnp
capnp.remove_import_hook()
schema_dir = sys.argv[1]
if sys.argv[2] == "empty-result":
    # A client compiled before `write` became a stream method: `-> ()` on the wire.
    shutil.copytree(schema_dir, "/tmp/schema")
    path = "/tmp/schema/ipfs.capnp"
    text = open(path).read().replace("-> stream;", "-> ();")
    assert "-> ();" in text
    open(path, "w").write(text)
    schema_dir = "/tmp/schema"
root = os.path.dirname(os.path.dirname(capnp.__file__))  # pycapnp's /capnp/c++.capnp
schema = capnp.load(schema_dir + "/cell.capnp", imports=[root, schema_dir])
data = random.Random(5).randbytes(IN_FLIGHT * PIECE)

async def main():
    stream = await capnp.AsyncIoStream.create_connection(sock=socket.socket(fileno=3))
    host = capnp.TwoPartyClient(stream).bootstrap().cast_as(schema.Host)
    ipfs = (await host.login()).session.ipfs
    writer = (await ipfs.add({})).writer
    writes = [writer.write(data[i:i + PIECE]) for i in range(0, len(data), PIECE)]
    await asyncio.gather(*writes)  # all IN_FLIGHT sent before any answer is awaited
    print((await writer.done()).cid)

asyncio.run(capnp.run(main()))
"""


@pytest.mark.parametrize("result", ["stream", "empty-result"])
def test_raw_client_with_256_writes_in_flight_is_neither_refused_nor_reordered(
        make_cell, tmp_path, result):
    in_flight, piece = 256, 16 * 1024
    data = random.Random(5).randbytes(in_flight * piece)
    cell = make_cell(RAW_WRITER_CELL.replace("IN_FLIGHT", str(in_flight))
                     .replace("PIECE", str(piece)))
    schema_dir = run_ww("schema").stdout.strip()
    r = run_ww("run", "--with-ipfs", cell, schema_dir, result)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected_cid(tmp_path, data)


def test_writers_left_open_do_not_keep_ww_run_alive(make_cell):
    """More writers than the host has threads, each written to, none finished: the cell
    exits and so does `ww run` (it used to stay alive forever)."""
    cell = make_cell("""
        import asyncio, ww.cell
        async def main():
            async with ww.cell.connect() as s:
                cap = s.ipfs._cap
                writers = [(await cap.add({})).writer for _ in range(12)]
                await asyncio.gather(*(w.write(b"x" * 100_000) for w in writers))
                print("written")
        asyncio.run(main())
    """)
    r = run_ww("run", "--with-ipfs", cell)  # the bound only stops a hang
    assert r.returncode == 0, r.stderr
    assert r.stdout == "written\n"


def test_timeout_stops_a_cell_that_holds_open_writers(make_cell):
    """`--timeout` ends a cell that keeps unfinished writers open, and `ww run` with it
    (it used to ignore the timeout and SIGTERM once the writers held its threads)."""
    cell = make_cell("""
        import asyncio, sys, ww.cell
        async def main():
            async with ww.cell.connect() as s:
                cap = s.ipfs._cap
                writers = [(await cap.add({})).writer for _ in range(12)]
                await asyncio.gather(*(w.write(b"x" * 100_000) for w in writers))
                print("written", flush=True)
                await asyncio.Event().wait()  # never finishes them
        asyncio.run(main())
    """)
    # 20 s: long enough for the cell to reach its writers on a loaded machine (a Python cell
    # took 6.6 s to start there); the test needs the timeout to come after "written".
    r = run_ww("run", "--with-ipfs", "--timeout", "20", cell)
    assert r.returncode == 66, r.stderr
    assert r.stdout == "written\n"


def test_dropped_writers_are_abandoned_and_free_their_places(make_cell):
    """A cell that drops many unfinished writers can still add files afterwards."""
    cell = make_cell("""
        import asyncio, gc, ww.cell
        async def main():
            async with ww.cell.connect() as s:
                for _ in range(40):  # more than one cell may have open at once
                    writer = (await s.ipfs._cap.add({})).writer
                    await writer.write(b"y" * 1000)
                    del writer
                    gc.collect()
                print(await s.ipfs.add(b"hello world\\n"))
        asyncio.run(main())
    """)
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == HELLO_CID


class HangingKubo(KuboStandIn):
    """A kubo stand-in that never answers ``hang`` (``cat`` unless told): it records that
    the request arrived (``cat_received``), then waits until the client closes the
    connection (``cat_closed``)."""

    def __init__(self, hang: str = "cat") -> None:
        self._hang = b"POST /api/v0/" + hang.encode()
        self.cat_received = threading.Event()
        self.cat_closed = threading.Event()
        super().__init__()

    def answer(self, head: bytes, stream: BinaryIO, conn: socket.socket) -> None:
        if not head.startswith(self._hang):
            super().answer(head, stream, conn)
            return
        self.cat_received.set()
        while stream.read1(4096):  # nothing more should come; EOF when the client closes
            pass
        self.cat_closed.set()


SLOW_CAT_CELL = """
import asyncio, sys, ww.cell

async def main():
    loop = asyncio.get_running_loop()
    step = lambda: loop.run_in_executor(None, sys.stdin.readline)
    async with ww.cell.connect() as s:
        cat = asyncio.ensure_future(s.ipfs.cat("/ipfs/HELLO"))
        print("cat sent", flush=True)
        await step()  # the backend has the cat request, and does not answer
        await s.console.ping(b"are you there")
        print("ping answered, cat pending:", not cat.done(), flush=True)
        cat.cancel()
        try:
            await cat
        except asyncio.CancelledError:
            print("cat cancelled", flush=True)
        await step()  # the backend saw its connection closed
        print("bye", flush=True)

asyncio.run(main())
"""


def test_a_waiting_cat_stalls_no_other_call_and_cancelling_it_stops_the_backend(make_cell):
    kubo = HangingKubo()
    cell = make_cell(SLOW_CAT_CELL.replace("HELLO", HELLO_CID))
    proc = subprocess.Popen([WW, "run", "--with-ipfs", "--with-console", "--ipfs", kubo.api,
                             cell], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    try:
        # Every bound below only stops a hang; the assertions are on the order of events.
        assert lines.get(timeout=HANG) == "cat sent\n"
        assert kubo.cat_received.wait(HANG)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert lines.get(timeout=HANG) == "ping answered, cat pending: True\n"
        assert lines.get(timeout=HANG) == "cat cancelled\n"
        # The cell still runs (it waits for us): only the cancellation can close it.
        assert kubo.cat_closed.wait(HANG), "the host kept waiting on kubo for a cancelled cat"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert lines.get(timeout=HANG) == "bye\n"
        assert proc.wait(HANG) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        kubo.close()


def test_reads_in_flight_are_answered_in_the_order_sent(make_cell, tmp_path):
    """64 reads of assorted sizes sent at once: their answers, joined, are the file."""
    data = random.Random(9).randbytes(3 * 1024 * 1024 + 11)
    path = expected_cid(tmp_path, data)
    cell = make_cell(f"""
        import asyncio, hashlib, random, ww.cell
        async def main():
            async with ww.cell.connect() as s:
                reader = (await s.ipfs._cap.cat("{path}", 0, -1)).reader
                sizes = [random.Random(i).randrange(1, 200_000) for i in range(64)]
                answers = await asyncio.gather(*(reader.read(n) for n in sizes))
                got = b"".join(bytes(a.data) for a in answers)
                while piece := bytes((await reader.read(1 << 20)).data):
                    got += piece
                print(len(got), hashlib.sha256(got).hexdigest())
        asyncio.run(main())
    """)
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(data)), hashlib.sha256(data).hexdigest()]


SLOW_CALL_CELL = """
import asyncio, sys, ww.cell

async def main():
    loop = asyncio.get_running_loop()
    step = lambda: loop.run_in_executor(None, sys.stdin.readline)
    async with ww.cell.connect() as s:
        slow = asyncio.ensure_future(CALL)
        print("sent", flush=True)
        await step()  # the backend has the request, and does not answer
        await s.console.ping(b"are you there")
        print("ping answered, pending:", not slow.done(), flush=True)
        slow.cancel()

asyncio.run(main())
"""
PEER = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"


@pytest.mark.parametrize("hang,flags,call", [
    # kubo dials the peer (nothing here does): a dial can take its whole timeout
    ("swarm/connect", ["--with-ipfs"],
     f's.ipfs.connect("/ip4/8.8.8.8/tcp/4001/p2p/{PEER}")'),
    # a sub-cell's IPFS roots are resolved before it starts
    ("resolve", ["--with-ipfs", "--with-exec"],
     f's.exec.spawn("/ipfs/{HELLO_CID}", ipfs=True, ipfs_roots=["/ipfs/{HELLO_CID}/a"])'),
])
def test_a_slow_connect_or_spawn_resolve_stalls_no_other_call(make_cell, hang, flags, call):
    kubo = HangingKubo(hang)
    cell = make_cell(SLOW_CALL_CELL.replace("CALL", call))
    proc = subprocess.Popen([WW, "run", *flags, "--with-console", "--ipfs", kubo.api, cell],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    try:
        # Every bound below only stops a hang; the assertions are on the order of events.
        assert lines.get(timeout=HANG) == "sent\n"
        assert kubo.cat_received.wait(HANG), proc.stderr
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert lines.get(timeout=HANG) == "ping answered, pending: True\n"
        assert proc.wait(HANG) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        kubo.close()


BARE_PEER_CELL = """
import sys, ww.cell
with ww.cell.session() as s:
    try:
        s.ipfs.connect(sys.argv[1])
        print("connected")
    except ww.cell.CapabilityDenied as e:
        print("denied:", e)
"""


@pytest.mark.parametrize("addr", [PEER, f"/p2p/{PEER}"])
def test_with_kubo_a_bare_peer_id_is_refused_before_kubo_hears_of_it(make_cell, addr):
    """kubo would dial whatever addresses it knows for a bare peer id (loopback or private
    ones included), past ww's dial policy: a cell must name a full, checked address."""
    kubo = HangingKubo("swarm/connect")
    try:
        r = run_ww("run", "--with-ipfs", "--ipfs", kubo.api, make_cell(BARE_PEER_CELL), addr)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"denied: capability denied: ipfs: connect: address not "
                                   f"allowed: {addr} "
                                   "(a bare peer id: the kubo backend"), r.stdout
        assert not kubo.cat_received.is_set()  # swarm/connect never reached kubo
    finally:
        kubo.close()


HALF_LOCAL_CELL = """
import asyncio, sys, ww.cell

async def main():
    async with ww.cell.connect() as s:
        async def read_all():
            return b"".join([p async for p in s.ipfs.cat_stream(sys.argv[1])])
        cat = asyncio.ensure_future(read_all())
        await asyncio.sleep(0)  # the reads are sent
        print("cat sent", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await s.console.ping(b"are you there")
        print("ping answered, cat pending:", not cat.done(), flush=True)
        cat.cancel()

asyncio.run(main())
"""


def test_a_read_served_on_the_loop_goes_to_a_worker_where_a_block_is_missing(
        make_cell, tmp_path):
    """The embedded node's reads are served on the RPC loop from the repository; where a
    block is missing (here: the file's third leaf, which only a silent peer has) the reader
    goes to a worker thread, so the cell's other calls are answered while it waits."""
    pytest.importorskip("libp2p")
    from ww.core.cid import CID
    from ww.ipfs.node import EmbeddedNode
    from ww.p2p import host_for_ipfs

    data = random.Random(7).randbytes(4 * 256 * 1024)
    peer = EmbeddedNode(tmp_path / "peer", new_host=host_for_ipfs())
    try:
        cid = peer.add_stream([data])
        info = peer.listen(["/ip4/127.0.0.1/tcp/0"])
        engine = peer._net._engine  # type: ignore[union-attr]
        asked = threading.Event()

        def silent(peer_id, entries, full=False):  # a peer that never answers
            asked.set()

        engine._serve = silent  # type: ignore[method-assign]
        home = tmp_path / "home"
        here = EmbeddedNode(home, new_host=host_for_ipfs())
        root = CID.parse(cid)
        blocks = [root, *[link.cid for link in peer._node(f"/ipfs/{cid}").links[:2]]]
        for c in blocks:  # the root and the first two leaves are local, the rest is not
            here._blocks.put(c, (peer._blocks.get(c),))
        here.close()
        proc = subprocess.Popen(
            [WW, "run", "--with-ipfs", "--with-console", "--peer", info.addresses[0],
             make_cell(HALF_LOCAL_CELL), f"/ipfs/{cid}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "WW_HOME": str(home)})
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        try:
            assert lines.get(timeout=HANG) == "cat sent\n"
            assert asked.wait(HANG), "the reader never asked the peer for the missing leaf"
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert lines.get(timeout=HANG) == "ping answered, cat pending: True\n"
            assert proc.wait(HANG) == 0, proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
    finally:
        peer.close()
