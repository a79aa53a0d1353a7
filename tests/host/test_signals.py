"""Signals sent to `ww run` reach the cell; a dead host leaves no cell behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import WW

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
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert out == f"got {name}\n"
    assert proc.returncode == 7  # the cell's own status after handling the signal


def test_cell_killed_by_a_forwarded_signal_gives_128_plus_n():
    proc = start("echo ready; exec sleep 30")
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
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
    marker = f"60.{uuid.uuid4().int % 10**12:012d}"  # a unique sleep duration
    proc = start("echo ready; " + how.format(t=marker), f"--jail={jail}")
    assert proc.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 10
    while len(_pids_with(marker)) < how.count("sleep") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_pids_with(marker)) == how.count("sleep")  # the cell is running
    proc.kill()  # SIGKILL: the host gets no chance to clean up
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_with(marker) == []
