"""The README's demonstration and the examples it names, run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import HANG, run_ww

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_both_sample_cells():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")],
                       capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a line the operator handed to the cell" in r.stdout
    assert "shell cell: WW_FD_INPUT=4" in r.stdout
    assert "cell: the host granted me ['console']" in r.stdout
    assert "[cell] hello from a jailed cell, which read 39 bytes" in r.stderr
    assert "index.html: 25 bytes, starts b'<h1>hello from IPFS</h1>\\n'" in r.stdout
    assert "summary added as /ipfs/Qm" in r.stdout
    assert "demo: every cell ran and exited 0" in r.stdout


def test_shell_example_without_its_fd_fails_clearly():
    r = run_ww("run", str(ROOT / "examples" / "read_fd.sh"))
    assert r.returncode != 0
    assert "did not pass --fd input" in r.stderr
