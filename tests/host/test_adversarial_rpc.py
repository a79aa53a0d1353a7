"""fd 3 abuse: garbage, malformed frames, huge or deeply nested messages, unknown methods,
floods of calls never waited for.  The host answers with an error or drops the connection,
never prints a traceback, stays bounded in memory and responsive to its own signals, and
still reports the cell's own exit status.
"""

from __future__ import annotations

import os
import queue
import signal
import struct
import subprocess
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import HANG, WW, run_ww

# One cell for every abuse: `abuser.py MODE [ARG]`.  It exits 5 at the end, so that the
# test can tell the cell's own status from anything the host might make up.
ABUSER = r"""
import os, socket, struct, sys, time

mode = sys.argv[1]
sock = socket.socket(fileno=3)

def frame(words):
    return struct.pack("<II", 0, len(words) // 8) + words

def drain(seconds):
    sock.settimeout(seconds)
    got = 0
    try:
        while chunk := sock.recv(65536):
            got += len(chunk)
    except (TimeoutError, OSError):
        pass
    return got

if mode == "bytes":
    sock.sendall(bytes.fromhex(sys.argv[2]))
    sock.shutdown(socket.SHUT_WR)
    drain(1.0)
elif mode == "truncated":  # says 100 words, sends 10, then goes quiet
    sock.sendall(struct.pack("<II", 0, 100) + bytes(80))
    drain(0.5)
elif mode == "oversized":  # one segment of 2**31 words (16 GiB)
    sock.sendall(struct.pack("<II", 0, 0x7FFFFFFF) + bytes(4096))
    drain(1.0)
elif mode == "segments":  # 2**32 segments
    sock.sendall(struct.pack("<II", 0xFFFFFFFF, 1) + bytes(4096))
    drain(1.0)
elif mode == "huge":  # a well-formed frame just under the host's 64 MiB limit, all zeros
    words = 7 << 20
    sock.sendall(struct.pack("<II", 0, words))
    chunk = bytes(1 << 20)
    for _ in range(words * 8 // len(chunk)):
        sock.sendall(chunk)
    drain(1.0)
elif mode == "nested":  # 100 000 structs, each the only pointer of the one before
    depth = 100_000
    pointer = struct.pack("<Q", 1 << 48)  # struct pointer, offset 0, no data, one pointer
    sock.sendall(frame(pointer * depth + bytes(8)))
    drain(1.0)
elif mode in ("unknown-interface", "unknown-method", "flood"):
    import asyncio, capnp
    # Bogus: an interface the host does not serve.  FakeHost: the host's own interface id
    # (argv[2]) with 61 methods, the last of which the host does not have.
    host_id = sys.argv[2] if mode == "unknown-method" else "0xd1b8f3c0a7e2b402"
    methods = "".join(f"  m{i} @{i} () -> ();\n" for i in range(61))
    with open("/tmp/bogus.capnp", "w") as f:
        f.write("@0xd1b8f3c0a7e2b401;\ninterface Bogus { nope @0 () -> (); }\n"
                f"interface FakeHost @{host_id} {{\n{methods}}}\n")
    schema = capnp.load("/tmp/bogus.capnp")

    async def main():
        stream = await capnp.AsyncIoStream.create_connection(sock=sock)
        client = capnp.TwoPartyClient(stream)
        if mode == "flood":
            target = client.bootstrap().cast_as(schema.Bogus)
            promises = [target.nope() for _ in range(int(sys.argv[2]))]  # never awaited
            print("sent", len(promises), flush=True)
            # Waits on stdin with its event loop running: the answers are read and kept, so
            # the host's answers pile up (none is finished), not its unsent writes.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            return
        if mode == "unknown-interface":
            call = client.bootstrap().cast_as(schema.Bogus).nope()
        else:
            call = client.bootstrap().cast_as(schema.FakeHost).m60()
        try:
            await call
            print("answered")
        except Exception as e:
            print("error:", str(e).splitlines()[0][:200])

    asyncio.run(capnp.run(main()))
sys.exit(5)
"""


@pytest.fixture(scope="module")
def abuser(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("abuser") / "abuser.py"
    path.write_text("#!/usr/bin/env python3\n" + ABUSER)
    path.chmod(0o755)
    return str(path)


def _run_abuse(abuser: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The host either answers the abuse or hangs up, and the cell ends on its own (it
    waits at most a second for more): a host that waited on the abuse would never end,
    and run_ww's bound, generous by design, would stop the test."""
    return run_ww("run", abuser, *args)


def _host_survived(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 5, (r.returncode, r.stdout, r.stderr[-2000:])  # the cell's own
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "internal error" not in r.stderr, r.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(min_size=1, max_size=2048),
    # Plausible frame headers followed by garbage: the parser goes further.
    st.tuples(st.integers(0, 3), st.lists(st.integers(0, 64), min_size=1, max_size=4),
              st.binary(max_size=1024)).map(
        lambda t: struct.pack("<I", t[0]) + b"".join(struct.pack("<I", n) for n in t[1])
        + t[2]),
))
def test_random_bytes_on_fd_3_never_crash_the_host(abuser, payload):
    r = _run_abuse(abuser, "bytes", payload.hex())
    _host_survived(r)


@pytest.mark.parametrize("mode", ["truncated", "oversized", "segments", "nested", "huge"])
def test_malformed_or_huge_frames_are_refused_and_the_cells_status_kept(abuser, mode):
    r = _run_abuse(abuser, mode)
    _host_survived(r)


@pytest.mark.parametrize("mode", ["unknown-interface", "unknown-method"])
def test_calls_to_methods_that_do_not_exist_get_an_error(abuser, mode):
    from ww.schema import load

    r = _run_abuse(abuser, mode, hex(load("cell").Host.schema.node.id))
    _host_survived(r)
    assert r.stdout.startswith("error:"), r.stdout
    assert "Traceback" not in r.stdout and "/work" not in r.stdout  # one line, no host paths


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.timeout(900)  # 400 000 calls from a Python cell: minutes on a loaded machine
def test_a_flood_of_calls_never_waited_for_keeps_the_host_bounded_and_responsive(abuser):
    """400 000 calls the cell never waits for (it keeps every answer, finishing none).  The
    host hangs up fd 3 once its answers grow past the memory guard; on a loaded machine it
    may first stop reading the cell's calls for a while (the flow limit, reported once).
    Both bound the host; either way it says so on stderr and stays responsive to its own
    signals."""
    proc = subprocess.Popen([WW, "--json", "run", abuser, "flood", "400000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
    reader.start()
    try:
        # Waited for, never raced: each bound only stops a hang.  A host that grows without
        # bound says neither.
        said: list[str] = []
        while not any("hung up fd 3" in x or '"flow-limit"' in x for x in said):
            said.append(lines.get(timeout=600))
        rss = _rss_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)  # forwarded to the cell: Python dies of it
        proc.wait(600)
        reader.join(600)
        err = "".join(said) + "".join(lines.queue)
    finally:
        proc.kill()
        proc.wait()
    # Without a bound the host held 360 MiB for 200 000 such calls (KJ keeps an answer until
    # its Finish, about 1.8 KiB each: 700 MiB for these); it hangs up at the memory guard
    # over its start (its base, about 50 MiB, and what a 50 ms poll may miss), or holds at
    # most 32 MiB of the cell's calls.
    from ww.host.supervisor import RPC_MEMORY_BUDGET

    assert rss < (RPC_MEMORY_BUDGET >> 10) + 112 * 1024, rss  # KiB
    assert "Traceback" not in err, err
    assert proc.returncode == 128 + signal.SIGTERM  # still forwarding signals and reporting


IDENTITIES_CELL = """
import asyncio, sys, ww.cell
from ww.cell._session import Signer, _login
from ww.core.identity import PrivateKey

async def main():
    async with ww.cell.connect() as s:
        calls = []
        for _ in range(10):  # a fresh identity each time: any is let in (no --allow)
            ipfs = (await _login(s._host, Signer(PrivateKey.generate()))).session.ipfs
            options = {"cidVersion": 0, "rawLeaves": "default", "pin": False,
                       "onlyHash": False}
            calls += [ipfs.add(options) for _ in range(16)]  # 16 files being added
        await s.console.ping(b"after the adds")  # they have reached the host
        print("sent", len(calls), flush=True)
        sys.stdin.readline()

asyncio.run(main())
"""


def test_a_cell_logging_in_with_many_identities_gets_its_bounds_once(who, make_cell, tmp_path):
    """attack: a cell logs in again and again, each time with a key it just made (the host
    lets any identity in without --allow), and opens 16 writers on each login's IPFS: the
    host made a capability server per identity, each with the cell's bounds of its own (16
    writers, an importer thread each; 4 workers; 1024 readers; 32 MiB of buffers), so 10
    identities had the host run 482 threads, and more identities more (the host's threads
    are in no cell's cgroup: --pids does not reach them; the machine's pids are shared).  The
    bounds are the cell's, whatever identities it logs in with: 16 writers in all."""
    proc = who.popen("--json", "run", "--with-ipfs", "--with-console",
                     make_cell(IDENTITIES_CELL), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True,
                     env={**os.environ, "WW_HOME": str(tmp_path / "ww-home")})
    try:
        assert proc.stdout.readline() == "sent 160\n", proc.stderr.read()
        with open(f"/proc/{proc.pid}/status") as f:
            threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
        proc.stdin.close()
        assert proc.wait(timeout=HANG) == 0
    finally:
        proc.kill()
        proc.wait()
    assert threads < 64, threads  # one per identity: 482
