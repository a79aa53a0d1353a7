"""docs/daemon.md's session, run as written (its ```sh block, line by line in one bash)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import HANG

ROOT = Path(__file__).resolve().parent.parent.parent


def test_daemon_md_session_runs_as_written(tmp_path):
    text = (ROOT / "docs" / "daemon.md").read_text().split("## A session\n", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert "<h1>served by ww daemon</h1>" in out
    assert any(line.startswith("index.html: 29 bytes") for line in out), out
    assert any(line.startswith("summary added as /ipfs/Qm") for line in out), out
    log = (tmp_path / "daemon.log").read_text().splitlines()
    assert log[0].startswith("ww daemon: started: ") and log[-1] == "ww daemon: stopped"
