"""The layering is a contract (pyproject.toml, ``[tool.importlinter]``) that this test enforces.

``cli > app > caps | serve > host | p2p > ipfs > core``: a package imports only those below
it, and ``caps`` and ``serve``, ``host`` and ``p2p`` not each other; the cell SDK imports
only ``schema`` and ``core``.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_keep_to_the_layers() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stdout + result.stderr
