"""The README's demonstration and the examples it names, run as a user would run them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import HANG, WW, run_ww

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


def sh_block(doc: str, heading: str) -> list[str]:
    """The commands of the first ```sh block under ``heading`` in ``doc`` (comments off)."""
    text = (ROOT / "docs" / doc).read_text().split(heading + "\n", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_auth_md_giving_a_cell_an_identity_runs_as_written(tmp_path):
    """docs/auth.md's key example, line by line in a shell, with a cell.py that prints the
    peer id it logged in as."""
    commands = sh_block("auth.md", "## Giving a cell an identity")
    assert commands[0] == "ww idgen -o cell.key"
    cell = tmp_path / "cell.py"
    cell.write_text("#!/usr/bin/env python3\nimport ww.cell\n"
                    "with ww.cell.session() as s:\n    print(s.peer_id)\n")
    cell.chmod(0o755)
    env = dict(os.environ, PATH=f"{Path(WW).parent}{os.pathsep}{os.environ['PATH']}")
    out = []
    for command in commands:
        r = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=HANG)
        assert r.returncode == 0, (command, r.stderr)
        out.append(r.stdout.strip())
    peer, again, logged_in, fresh = out
    assert peer.startswith("12D3KooW") and again == peer and logged_in == peer
    assert fresh.startswith("12D3KooW") and fresh != peer
    assert stat.S_IMODE((tmp_path / "cell.key").stat().st_mode) == 0o600
