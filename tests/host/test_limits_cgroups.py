"""``--pids`` and ``--memory`` enforced by the kernel: one cgroup per cell (ww.host.cgroups).

These run only where the host can make the cell's cgroup (root with a writable cgroup v1
hierarchy, or a delegated cgroup v2 one).  The fork bomb, in particular, starts only after
the test has seen the cell inside a cgroup whose ``pids.max`` is in force: the kernel, not a
sampling thread, bounds it, so it cannot take process slots from the rest of the machine.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww
from ww.host import cgroups
from ww.host.limits.flags import JAIL_TASKS

HIERARCHIES = cgroups.available()
NO_CGROUP = ("this host cannot give a cell a cgroup with the {} controller (needs root and a "
             "writable cgroup v1 hierarchy, or a delegated cgroup v2 one): ww falls back to "
             "the /proc watchdog, under which this test would load the whole machine")
needs_pids = pytest.mark.skipif("pids" not in HIERARCHIES, reason=NO_CGROUP.format("pids"))
needs_memory = pytest.mark.skipif("memory" not in HIERARCHIES,
                                  reason=NO_CGROUP.format("memory"))
needs_cpu = pytest.mark.skipif("cpu" not in HIERARCHIES,
                               reason=NO_CGROUP.format("cpuacct (v1) or cpu (v2)"))


def cell_cgroup(controller: str, host_pid: int, timeout: float = HANG) -> Path:
    """The cgroup directory the host ``host_pid`` made for its cell, once it exists."""
    pattern = os.path.join(HIERARCHIES[controller].own, f"ww-*-{host_pid}-*")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = glob.glob(pattern)
        if found:
            return Path(found[0])
        time.sleep(0.01)
    raise AssertionError(f"no cgroup {pattern}")


def limit_file(controller: str) -> str:
    if controller == "pids":
        return "pids.max"
    return "memory.limit_in_bytes" if HIERARCHIES["memory"].version == 1 else "memory.max"


def start_waiting_cell(flags: list[str], then: str) -> subprocess.Popen[str]:
    """A cell that says "ready", waits for a line on stdin, then runs the shell ``then``."""
    return subprocess.Popen(
        [WW, "run", *flags, "/bin/sh", "-c", f"PATH=/usr/bin:/bin; echo ready; read go; {then}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_in_force(proc: subprocess.Popen[str], controller: str, value: int) -> Path:
    """The cell is running inside its cgroup and the kernel limit there is ``value``."""
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    d = cell_cgroup(controller, proc.pid)
    assert int((d / limit_file(controller)).read_text()) == value
    members = {int(p) for p in (d / "cgroup.procs").read_text().split()}
    assert proc.pid not in members  # the host stays outside
    assert len(members) >= 1 + JAIL_TASKS  # bubblewrap, its init and the shell
    return d


@needs_pids
def test_a_fork_bomb_under_pids_64_is_capped_by_the_kernel_and_stopped():
    bomb = "exec 2>/dev/null; b() { b | b & }; b; sleep 3600"  # ends only if stopped
    proc = start_waiting_cell(["--pids", "64"], bomb)
    failures: list[BaseException] = []
    peak = 0
    try:
        d = assert_in_force(proc, "pids", 64 + JAIL_TASKS)
        done = threading.Event()

        def fork_meanwhile() -> None:  # the rest of the machine can still start processes
            while not done.is_set():
                try:
                    subprocess.run(["/bin/true"], check=True, timeout=HANG)
                except (OSError, subprocess.SubprocessError) as e:
                    failures.append(e)

        helper = threading.Thread(target=fork_meanwhile)
        helper.start()
        start = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        # pids.peak (Linux 6.1+) is the kernel's own high-water mark, so one sample suffices;
        # pids.current is sampled where it is missing.
        sampled = d / "pids.peak" if (d / "pids.peak").exists() else d / "pids.current"
        while proc.poll() is None and time.monotonic() - start < HANG:  # only stops a hang
            try:
                peak = max(peak, int(sampled.read_text()))
            except (OSError, ValueError):
                pass  # removed as the cell ended
            time.sleep(0.002)
        done.set()
        helper.join()
        _, err = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
    assert proc.returncode == 66, err
    assert err.strip().splitlines() == [
        "ww: resource limit: the cell ran more than 64 processes or threads at once (--pids); "
        "it was stopped"]
    # The message says the kernel refused a fork (pids.events "max"): the cap held.  On a
    # loaded machine the cell may be stopped before this thread samples at all (peak 0).
    assert peak <= 64 + JAIL_TASKS
    assert failures == []
    assert not d.exists()  # removed with the cell


@needs_memory
def test_a_cell_allocating_far_past_memory_is_stopped_by_the_kernel_at_the_limit():
    # 1 MiB at a time, every page touched, the count printed after each: the last count
    # shows how far the cell got.  It asks for 4 GiB under --memory 64M.
    grow = ("exec python3 -S -c 'import sys\nchunks = []\nfor i in range(4096):\n"
            "    chunks.append(bytearray(b\"x\" * (1 << 20)))\n"
            "    sys.stdout.write(f\"{i + 1}\\n\"); sys.stdout.flush()'")
    proc = start_waiting_cell(["--memory", "64M"], grow)
    try:
        d = assert_in_force(proc, "memory", 64 << 20)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
    assert proc.returncode == 66, err
    assert err.strip().splitlines() == [
        "ww: resource limit: the cell used more than 64M of memory (--memory); it was stopped"]
    counts = [int(n) for n in out.split() if n.isdigit()]
    assert counts and counts[-1] < 64  # MiB allocated: never past the limit
    assert not d.exists()


@needs_pids
def test_the_cell_sees_its_own_cgroup_as_the_root_and_cannot_reach_the_hierarchy():
    r = run_ww("run", "--pids", "8", "/bin/sh", "-c",
               "grep -E ':(pids|memory):' /proc/self/cgroup; ls /sys/fs/cgroup 2>&1 | wc -l")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:-1] and all(line.endswith(":/") for line in lines[:-1])
    assert lines[-1] == "1"  # just ls's "No such file or directory"


@needs_pids
def test_pids_counts_only_the_cells_own_tasks():
    assert run_ww("run", "--pids", "1", "/bin/true").returncode == 0
    assert run_ww("run", "--pids", "2", "/bin/sh", "-c", "/bin/true; /bin/true").returncode == 0
    r = run_ww("run", "--pids", "1", "/bin/sh", "-c", "/bin/true; exit 3")
    assert r.returncode == 66, r.stderr
    assert run_ww("run", "--jail=none", "--pids", "1", "/bin/true").returncode == 0


@needs_pids
def test_no_process_of_an_unjailed_cell_outlives_it():
    r = run_ww("run", "--jail=none", "--pids", "10", "/bin/sh", "-c",
               "setsid sleep 3600 >/dev/null 2>&1 < /dev/null & echo $!")
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split()[-1])
    end = time.monotonic() + HANG  # waited for; the sleep would outlive the bound
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        time.sleep(0.01)
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if os.path.exists(
        f"/proc/{pid}") else "gone"
    assert state in ("gone", "Z")


@needs_pids
def test_a_cgroup_left_by_a_killed_host_is_removed_by_the_next_run():
    proc = subprocess.Popen([WW, "run", "--pids", "10", "/bin/sh", "-c", "echo ready; sleep 3600"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        d = cell_cgroup("pids", proc.pid)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=HANG)
    finally:
        proc.kill()
    end = time.monotonic() + HANG  # the jail dies with its host (PR_SET_PDEATHSIG)
    while (d / "cgroup.procs").read_text().split() and time.monotonic() < end:
        time.sleep(0.01)
    assert d.exists()
    assert run_ww("run", "--pids", "10", "/bin/true").returncode == 0
    assert not d.exists()


# --- sub-cells (--with-exec) share their parent's cgroup -----------------------------------

SPAWNER = """
import sys, time
import ww.cell
with ww.cell.session() as s:
    children = []
    for i in range(int(sys.argv[1])):
        try:
            children.append(s.exec.spawn("/bin/sleep", "30"))
            print("spawned", i, flush=True)
        except Exception as e:
            print("refused", i, type(e).__name__, flush=True)
    time.sleep(float(sys.argv[2]))
    print("done", flush=True)
"""


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@needs_memory
def test_sub_cells_count_against_their_parents_memory_limit(make_cell):
    # Each child `ww run` holds several MiB of the host's memory of its own: six of them
    # under the parent's --memory 48M do not fit (they used to, each in a cgroup of its own).
    parent = make_cell(SPAWNER)
    r = run_ww("run", "--memory", "48M", "--with-exec", "--exec-allow", "/bin/sleep", parent,
               "6", "3600")  # ends only if stopped
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert "--memory" in r.stderr and "done" not in r.stdout


def spawn_one_and_check_its_host(make_cell, flags: list[str], controller: str,
                                 v1_name: str) -> tuple[subprocess.Popen[str], Path]:
    """A parent with ``flags`` that has spawned one sub-cell, whose child `ww run` is in the
    parent cell's ``controller`` cgroup; the caller kills the parent."""
    parent = make_cell(SPAWNER)
    proc = subprocess.Popen([WW, "run", *flags, "--with-exec", "--exec-allow",
                             "/bin/sleep", parent, "1", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.readline().startswith("spawned 0"), proc.stderr.read()
        group = cell_cgroup(controller, proc.pid)
        kids = [k for k in _children_of(proc.pid) if open(f"/proc/{k}/comm").read().strip()
                != "bwrap"]
        assert kids, "no child ww run"
        name = v1_name if HIERARCHIES[controller].version == 1 else ""  # v2: the "0::" line
        for kid in kids:  # the child `ww run` itself is in the parent cell's cgroup
            line = next(x for x in open(f"/proc/{kid}/cgroup")
                        if name in x.split(":")[1].split(","))
            assert line.strip().endswith(group.name), line
    except BaseException:
        proc.kill()
        proc.wait(timeout=HANG)
        raise
    return proc, group


@needs_pids
def test_sub_cells_run_inside_their_parents_cgroup_and_its_pids_limit(make_cell):
    proc, group = spawn_one_and_check_its_host(make_cell, ["--pids", "40"], "pids", "pids")
    try:
        # ... and so is everything below it (its jail and cell, in a cgroup made below the
        # parent's), counted by the parent's pids.max: jail 2, cell 1, child host 1, its
        # jail 2 and its sleep 1.
        end = time.monotonic() + HANG  # waited for; the bound only stops a hang
        while int((group / "pids.current").read_text()) < 2 + 1 + 1 + 2 + 1:
            assert time.monotonic() < end, (group / "pids.current").read_text()
            time.sleep(0.05)
        assert [p.name for p in group.iterdir() if p.name.startswith("ww-")], "no nested cgroup"
    finally:
        proc.kill()
        proc.wait(timeout=HANG)


@needs_pids
def test_a_tree_of_sub_cells_is_bounded_by_the_parents_pids(make_cell):
    # The parent's pids cgroup counts the tasks of the whole tree: each sub-cell's `ww run`,
    # its jail and its cell.  14 sub-cells under --pids 12 used to run 12 at once, each with
    # a fresh copy of the limit; a few sub-cells are already more than 12 tasks.
    parent = make_cell(SPAWNER)
    r = run_ww("run", "--pids", "12", "--timeout", "50", "--with-exec", "--exec-allow",
               "/bin/sleep", parent, "14", "20")
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "ww: resource limit: the cell ran more than 12 processes or threads at once (--pids); "
        "it was stopped"]
    assert "done" not in r.stdout


# --- --cpu-time is for the whole tree --------------------------------------------------------

# Sub-cells that spin until they are stopped; the parent waits for them, then says "done".
BURNER = """
import sys, time
import ww.cell
with ww.cell.session() as s:
    kids = [s.exec.spawn("/bin/sh", "-c", "echo go; while :; do :; done")
            for _ in range(int(sys.argv[1]))]
    for kid in kids:
        kid.stdout.read(3)  # its "go" line: it is spinning
    if sys.argv[2:] == ["kill"]:  # killed outright before their own limit, after a while
        time.sleep(3)
        for kid in kids:
            kid.kill(9)
    print("statuses", [kid.wait() for kid in kids], flush=True)
    print("done", flush=True)
"""
# (Without a cpu cgroup --cpu-time is refused: see test_attacks_subcells.py.)


@needs_cpu
def test_cpu_time_bounds_the_parent_and_its_sub_cells_together(make_cell):
    # Four sub-cells each spin up to their own --cpu-time 1 (they get the parent's flags):
    # four seconds of CPU in all, which used to leave the parent at exit 0.  The kernel
    # counts the tree's CPU time in the parent's cgroup, which every sub-cell joins.
    parent = make_cell(BURNER)
    r = run_ww("run", "--cpu-time", "1", "--pids", "200", "--with-exec", "--exec-allow",
               "/bin/sh", parent, "4")
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "ww: resource limit: the cell used more than 1s of CPU time (--cpu-time); it was stopped"]
    assert "done" not in r.stdout


@needs_cpu
def test_sub_cells_killed_outright_still_count_against_cpu_time(make_cell):
    # A sub-cell killed by SIGKILL leaves its jail to die unreaped by anything of the tree:
    # what it burned stays charged to the cgroup all the same.
    parent = make_cell(BURNER)
    r = run_ww("run", "--cpu-time", "2", "--pids", "200", "--with-exec", "--exec-allow",
               "/bin/sh", parent, "4", "kill")
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert "--cpu-time" in r.stderr and "done" not in r.stdout


@needs_cpu
def test_a_tree_within_its_cpu_time_runs_normally(make_cell):
    parent = make_cell(SPAWNER)
    r = run_ww("run", "--cpu-time", "30", "--with-exec", "--exec-allow", "/bin/sleep",
               parent, "2", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["spawned", "0", "spawned", "1", "done"]


def test_timeout_stops_the_sub_cells_with_their_parent(make_cell):
    # Each sub-cell gets the parent's --timeout as its own, started later; the parent's
    # ends the tree: its sub-cells die with it, not when their own would run out.
    marker = f"{os.getpid() % 1000 + 3600}.{time.monotonic_ns() % 1000:03d}"  # > HANG
    parent = make_cell(f"""
        import time
        import ww.cell
        with ww.cell.session() as s:
            child = s.exec.spawn("/bin/sleep", "{marker}")
            print("spawned 0", flush=True)
            time.sleep(3600)  # ends only if stopped
    """)
    r = run_ww("run", "--timeout", "3", "--with-exec", "--exec-allow", "/bin/sleep", parent)
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert "--timeout" in r.stderr and r.stdout.startswith("spawned 0")
    end = time.monotonic() + HANG  # waited for; the bound only stops a hang
    while time.monotonic() < end:
        left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).stdout
        if not left:
            break
        time.sleep(0.05)
    assert not left


@needs_cpu
def test_sub_cells_run_inside_their_parents_cpu_cgroup(make_cell):
    proc, _ = spawn_one_and_check_its_host(make_cell, ["--cpu-time", "60"], "cpu", "cpuacct")
    proc.kill()
    proc.wait(timeout=HANG)


# A sub-cell that starts spinners of its own and kills each outright after a while.
KILLS_ITS_OWN = """
import sys, time
import ww.cell
with ww.cell.session() as s:
    for i in range(int(sys.argv[1])):
        kid = s.exec.spawn("/bin/sh", "-c", "echo go; while :; do :; done")
        kid.stdout.read(3)
        time.sleep(1.2)
        kid.kill(9)
        print("killed", i, kid.wait(), flush=True)
"""


@needs_cpu
def test_cpu_time_counts_a_sub_cells_own_sub_cells_killed_outright(make_cell):
    # A sub-cell starts spinners of its own and kills them, one after the other.  No jail's
    # CPU time reaches its `ww run` (bubblewrap does not reap its init), and a sampling
    # watchdog used to see only the sub-cell's tree as it was at each moment, one spinner at
    # a time; the cgroup every host of the tree joins keeps it all.
    middle = make_cell(KILLS_ITS_OWN, name="middle.py")
    parent = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            child = s.exec.spawn("{middle}", "12", can_exec=True)
            print("middle", child.wait(), child.stdout.read_all().decode().split(), flush=True)
            print("done", flush=True)
    """)
    r = run_ww("run", "--cpu-time", "4", "--with-exec", "--exec-allow", middle,
               "--exec-allow", "/bin/sh", parent, timeout=180)
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert "--cpu-time" in r.stderr and "done" not in r.stdout
