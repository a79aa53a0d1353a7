"""Signals sent to `ww run` reach the cell; a dead host leaves no cell behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import HANG, WW

TRAP = (
    'trap "echo got {name}; exit 7" {name}; echo ready; '
    "i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo timeout"
)


def start(script: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([WW, "run", *extra, "/bin/sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("jail", ["bwrap", "none"])
def test_signal_to_ww_run_is_forwarded_to_the_cell(sig, jail):
    name = sig.name.removeprefix("SIG")
    proc = start(TRAP.format(name=name), f"--jail={jail}")
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
    assert out == f"got {name}\n"
    assert proc.returncode == 7  # the cell's own status after handling the signal


def test_cell_killed_by_a_forwarded_signal_gives_128_plus_n():
    proc = start("echo ready; exec sleep 30")
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=HANG)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM


def _pids_with(marker: str) -> list[int]:
    """Host pids of `sleep MARKER` processes."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv[0].endswith(b"sleep") and marker.encode() in argv:
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.parametrize(
    ("jail", "how"),
    [
        # In the jail every process of the cell dies with it, grandchildren included.
        ("bwrap", "sleep {t} & sleep {t}; wait"),
        # Unjailed, the program itself dies; its own children are its business.
        ("none", "exec sleep {t}"),
    ],
)
def test_cell_dies_when_the_host_is_killed(jail, how):
    marker = f"3600.{uuid.uuid4().int % 10**12:012d}"  # a unique sleep, longer than HANG
    proc = start("echo ready; " + how.format(t=marker), f"--jail={jail}")
    assert proc.stdout.readline() == "ready\n"
    deadline = time.monotonic() + HANG  # waited for; the bound only stops a hang
    while len(_pids_with(marker)) < how.count("sleep") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_pids_with(marker)) == how.count("sleep")  # the cell is running
    proc.kill()  # SIGKILL: the host gets no chance to clean up
    proc.wait(timeout=HANG)
    deadline = time.monotonic() + HANG
    while _pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_with(marker) == []


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (through /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("jail", ["bwrap", "none"])
def test_a_cell_that_stopped_itself_still_ends_on_a_forwarded_signal(sig, jail):
    """attack: a cell that sends itself SIGSTOP held every forwarded SIGINT and SIGTERM
    pending, so ^C never ended `ww run` (its shell does not see the cell stop: it is in a
    session of its own).  A forwarded signal is followed by SIGCONT, as `kill` does for a
    stopped job."""
    proc = start("echo stopping; kill -STOP $$; echo resumed", f"--jail={jail}")
    try:
        assert proc.stdout.readline() == "stopping\n"
        end = time.monotonic() + HANG  # an upper bound on waiting for the stop, not a delay
        while not any(_stopped(p) for p in _descendants(proc.pid)):
            assert time.monotonic() < end, "the cell never stopped"
            time.sleep(0.01)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
        proc.wait()
    assert "resumed" not in out
    assert proc.returncode == 128 + sig
