"""Attacks on the sub-cell -> parent boundary and on the tree's limits (--with-exec).

Each test is a reproducer against real `ww run` processes and real cells.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_ww
from ww.host.cgroups import available

# Children that each burn a fixed amount of CPU and are reaped by the kernel itself
# (SIGCHLD ignored): nothing of the tree ever waits for them, so their CPU time never
# reaches any process's cutime, and each lives about as long as one /proc sample.
AUTOREAPED_BURNERS = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
limit = float(sys.argv[1])
burned = 0.0
while burned < 3 * limit:
    if os.fork() == 0:
        start = time.process_time()
        while time.process_time() - start < 0.005:
            pass
        os._exit(0)
    burned += 0.005
    time.sleep(0.001)
print("survived", flush=True)
"""


@pytest.mark.skipif("cpu" not in available(),
                    reason="no cpuacct (v1) or cpu (v2) cgroup on this host: --cpu-time is refused")
def test_cpu_time_counts_children_the_kernel_reaps_itself():
    limit = "0.5"
    r = run_ww("run", "--cpu-time", limit, "--", "/usr/bin/python3", "-c", AUTOREAPED_BURNERS,
               limit)
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert "survived" not in r.stdout


def test_without_a_cpu_cgroup_cpu_time_is_refused_not_under_enforced():
    # WW_CGROUPS=0: what a host that cannot make cgroups (not root, no delegation) does.  A
    # /proc watchdog cannot see the CPU time of children the kernel reaps itself: it reaches
    # no cutime and leaves /proc within a sample, so a cell burned 8 s under --cpu-time 1 and
    # exited 0.  --cpu-time is refused with one line before anything runs instead.
    limit = "0.5"
    r = run_ww("run", "--cpu-time", limit, "--", "/usr/bin/python3", "-c", AUTOREAPED_BURNERS,
               limit, env=dict(os.environ, WW_CGROUPS="0"))
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("ww: --cpu-time needs a cpu cgroup, and WW_CGROUPS=0 turns "
                               "cgroups off"), r.stderr


def _put_file_node(node, links, data: bytes | None, blocksizes: tuple[int, ...]) -> str:
    from ww.core import multihash
    from ww.core.cid import CID
    from ww.ipfs import dagpb, unixfs

    fs = unixfs.UnixFSData(unixfs.DataType.FILE, data=data,
                           filesize=len(data or b"") + sum(blocksizes), blocksizes=blocksizes)
    block = dagpb.encode(dagpb.PBNode(tuple(links), unixfs.encode(fs)))
    cid = CID.v0(multihash.sha256(block))
    node._blocks.put(cid, (block,))
    return str(cid)


def _few_blocks_claiming(node, size: int) -> tuple[str, int]:
    """A program of ``size`` bytes made of three blocks, as a peer could serve it: a
    shell script's first line, then one 64 KiB leaf linked over and over; its CID and the
    size it says it has (a little under ``size``)."""
    from ww.ipfs import dagpb

    head = b"#!/bin/sh\necho ran\nexit 0\n"
    leaf = _put_file_node(node, [], b"#" * 65536, ())
    head_cid = _put_file_node(node, [], head, ())
    from ww.core.cid import CID

    count = (size - len(head)) // 65536
    links = [dagpb.PBLink(CID.parse(head_cid), b"", len(head))]
    links += [dagpb.PBLink(CID.parse(leaf), b"", 65536)] * count
    cid = _put_file_node(node, links, None, (len(head),) + (65536,) * count)
    return cid, len(head) + count * 65536


def test_a_sub_cell_program_larger_than_the_trees_fsize_is_not_fetched(make_cell, ww_home):
    # Three blocks a peer could serve say "32 MiB" (one more level would say terabytes): the
    # host used to write all of it into the exec cache and run it, whatever --fsize said.
    from ww.ipfs.node import EmbeddedNode

    r = run_ww("export", make_cell("#!/bin/sh\n", name="seed.sh"))  # makes the repository
    assert r.returncode == 0, r.stderr
    with EmbeddedNode() as node:
        program, size = _few_blocks_claiming(node, 32 << 20)
        assert node.stat(f"/ipfs/{program}").size == size > 31 << 20
    parent = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            child = s.exec.spawn("/ipfs/{program}")
            print("status", child.wait(), child.stdout.read_all().decode().split(), flush=True)
            print(child.stderr.read_all().decode(), end="", flush=True)
    """)
    r = run_ww("run", "--fsize", "1M", "--with-exec", parent, timeout=180)
    assert r.returncode == 0, r.stderr
    # The sub-cell's own `ww run` refuses it before writing a byte, as a limit: exit 66.
    assert r.stdout.splitlines() == [
        "status 66 []", f"ww: resource limit: /ipfs/{program} is a program of {size} "
        "bytes, larger than 1M (--fsize); it was not fetched"], r.stdout
    cache = ww_home / "exec-cache"
    sizes = [p.stat().st_size for p in cache.iterdir()] if cache.is_dir() else []
    assert all(size <= 1 << 20 for size in sizes), sizes


def test_ww_run_refuses_an_ipfs_program_larger_than_fsize(make_cell, ww_home):
    from ww.ipfs.node import EmbeddedNode

    assert run_ww("export", make_cell("#!/bin/sh\n", name="seed.sh")).returncode == 0
    with EmbeddedNode() as node:
        program, size = _few_blocks_claiming(node, 4 << 20)
    r = run_ww("run", "--fsize", "64K", f"/ipfs/{program}")
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        f"ww: resource limit: /ipfs/{program} is a program of {size} bytes, larger than "
        "64K (--fsize); it was not fetched"]
    assert not (ww_home / "exec-cache").is_dir() or not any((ww_home / "exec-cache").iterdir())
    r = run_ww("run", "--fsize", "8M", f"/ipfs/{program}")
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr


def _few_blocks_claiming_gibibytes(node, gib: int) -> tuple[str, int]:
    """Like :func:`_few_blocks_claiming`, one level deeper: a shell script's first line, then
    ``gib`` links to a node that links one 64 KiB leaf 16384 times (1 GiB); four blocks."""
    from ww.core.cid import CID
    from ww.ipfs import dagpb

    head = b"#!/bin/sh\necho ran\nexit 0\n"
    leaf = CID.parse(_put_file_node(node, [], b"#" * 65536, ()))
    gibibyte = CID.parse(_put_file_node(node, [dagpb.PBLink(leaf, b"", 65536)] * 16384, None,
                                        (65536,) * 16384))
    head_cid = CID.parse(_put_file_node(node, [], head, ()))
    links = [dagpb.PBLink(head_cid, b"", len(head))] + [dagpb.PBLink(gibibyte, b"", 1 << 30)] * gib
    cid = _put_file_node(node, links, None, (len(head),) + (1 << 30,) * gib)
    return cid, len(head) + (gib << 30)


def test_without_fsize_an_ipfs_program_larger_than_the_default_cap_is_not_fetched(
        make_cell, ww_home):
    # Four blocks a peer could serve say "4 GiB": without --fsize nothing bounded what
    # `ww run` wrote into the exec cache.  The default cap (1 GiB) refuses it up front.
    from ww.ipfs.node import EmbeddedNode

    assert run_ww("export", make_cell("#!/bin/sh\n", name="seed.sh")).returncode == 0
    with EmbeddedNode() as node:
        program, size = _few_blocks_claiming_gibibytes(node, 4)
        assert node.stat(f"/ipfs/{program}").size == size
    r = run_ww("run", f"/ipfs/{program}")
    assert (r.returncode, r.stdout) == (66, ""), r.stderr
    assert r.stderr.strip().splitlines() == [
        f"ww: resource limit: /ipfs/{program} is a program of {size} bytes, larger than "
        "1G (the cap on programs fetched from IPFS); it was not fetched"]
    assert not (ww_home / "exec-cache").is_dir() or not any((ww_home / "exec-cache").iterdir())


def test_a_sub_cell_program_larger_than_the_operators_cap_is_not_fetched(make_cell, ww_home):
    # No --fsize: the operator's WW_MAX_PROGRAM_SIZE (here 1M, so the test writes little)
    # reaches the sub-cell's own `ww run`, which refuses the program before writing a byte.
    from ww.ipfs.node import EmbeddedNode

    assert run_ww("export", make_cell("#!/bin/sh\n", name="seed.sh")).returncode == 0
    with EmbeddedNode() as node:
        program, size = _few_blocks_claiming(node, 32 << 20)
    parent = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            child = s.exec.spawn("/ipfs/{program}")
            print("status", child.wait(), child.stdout.read_all().decode().split(), flush=True)
            print(child.stderr.read_all().decode(), end="", flush=True)
    """)
    r = run_ww("run", "--with-exec", parent, timeout=180,
               env=dict(os.environ, WW_MAX_PROGRAM_SIZE="1M"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "status 66 []", f"ww: resource limit: /ipfs/{program} is a program of {size} "
        "bytes, larger than 1M (WW_MAX_PROGRAM_SIZE); it was not fetched"], r.stdout
    assert not (ww_home / "exec-cache").is_dir() or not any((ww_home / "exec-cache").iterdir())
    # Within the cap, and --fsize lower than the cap names --fsize.
    r = run_ww("run", "--fsize", "64K", f"/ipfs/{program}",
               env=dict(os.environ, WW_MAX_PROGRAM_SIZE="1M"))
    assert r.returncode == 66 and "(--fsize)" in r.stderr, r.stderr


# B: starts sub-cells (sleepers) until the tree's budget says no or it has 8, then says so.
STARTS_SLEEPERS = """
import sys
import ww.cell
from ww.cell import CapabilityDenied
with ww.cell.session() as s:
    kids = []
    try:
        while len(kids) < 8:
            kids.append(s.exec.spawn("/bin/sleep", "600"))
    except CapabilityDenied:
        pass
    print(len(kids), flush=True)
    sys.stdin.readline()
"""

# A: starts B, lets it start its sleepers, then kills B outright ("kill") or leaves it
# running ("exit": A's host kills its Bs outright when A exits); again until B starts none.
KILLS_OR_LEAVES_WHAT_IT_STARTED = """
import sys
import ww.cell
from ww.cell import CapabilityDenied
with ww.cell.session() as s:
    bs = []
    for round in range(8):
        try:
            b = s.exec.spawn("{b}", can_exec=True)
        except CapabilityDenied:
            print("round", round, "no B", flush=True)
            break
        bs.append(b)
        started = int(b.stdout.read(8).decode().split()[0])
        if sys.argv[1] == "kill":
            b.kill(9)
            b.wait()
        print("round", round, "B started", started, flush=True)
        if started == 0:
            break
"""


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_a_sub_cell_cannot_use_up_its_parents_sub_cell_budget_for_good(make_cell, how):
    # A sub-cell's host killed outright (A's kill(9) of B, or A's host killing its Bs when A
    # ends, which is no attack at all) used to take the tokens of its own sub-cells with it:
    # after A, the root could run 2 (kill) or 5 (exit) sub-cells at once instead of 8.
    b = make_cell(STARTS_SLEEPERS, name="b.py")
    a = make_cell(KILLS_OR_LEAVES_WHAT_IT_STARTED.replace("{b}", b), name="a.py")
    root = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            a = s.exec.spawn("{a}", "{how}", can_exec=True)
            print("A", a.wait(), a.stdout.read_all().decode().splitlines(), flush=True)
            kids = []
            try:  # what the tree's budget still lets the root run at once
                while len(kids) < 8:
                    kids.append(s.exec.spawn("/bin/sleep", "600"))
            except ww.cell.CapabilityDenied:
                pass
            print("then", len(kids), flush=True)
    """, name="root.py")
    r = run_ww("run", "--with-exec", "--exec-allow", a, "--exec-allow", b, "--exec-allow",
               "/bin/sleep", root, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("A 0 ['round 0 B started 8'"), r.stdout
    # A and its B are gone: the root may run 8 sub-cells at once again (it could run 2).
    assert r.stdout.splitlines()[-1] == "then 8", r.stdout
