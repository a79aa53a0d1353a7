"""Shared helpers: run the real `ww` console script as a subprocess, write real cells."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WW = str(Path(sys.executable).with_name("ww"))

try:  # py-libp2p in this process dials as ww's own hosts do (ww.p2p.host's patch,
    # process-wide: whichever test made a host first would otherwise decide it for the rest
    # of the worker); `header_alone` (tests/p2p/conftest.py) gives py-libp2p's own back
    from ww.p2p.host import _propose_with_the_header

    _propose_with_the_header()
except ImportError:  # (no py-libp2p: the tests that need it are skipped)
    pass


# Bounds that only stop a hang, generous by design: a test waits for an event (a line, an
# exit, a file) and asserts on what happened, never on how fast.  A slow machine never
# reaches them; a test that does has hung.
HANG = 300
LOGIN_TIMEOUT = 300


def run_ww(*args: str, timeout: float = HANG, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run `ww ARGS...` to completion, capturing stdout and stderr as text (``timeout`` only
    stops a hang)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run([WW, *args], timeout=timeout, **kwargs)


@pytest.fixture(autouse=True)
def ww_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty `ww` repository ($WW_HOME), never the user's ~/.ww.

    A cell that must log in gets LOGIN_TIMEOUT seconds to do it, not the product's 10 s: a
    Python cell on a loaded machine can take longer than that just to start.  A test of the
    deadline itself passes its own ``--login-timeout``."""
    home = tmp_path_factory.mktemp("ww-home")
    monkeypatch.setenv("WW_HOME", str(home))
    monkeypatch.setenv("WW_LOGIN_TIMEOUT", str(LOGIN_TIMEOUT))
    return home


@pytest.fixture
def ww():
    return run_ww


@pytest.fixture
def make_cell(tmp_path: Path):
    """Write an executable script cell; Python cells get `#!/usr/bin/env python3`."""

    def make(body: str, name: str = "cell.py", shebang: str = "#!/usr/bin/env python3") -> str:
        path = tmp_path / name
        path.write_text(shebang + "\n" + textwrap.dedent(body).lstrip("\n"))
        path.chmod(0o755)
        return str(path)

    return make


def host_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.fixture
def keyfile(tmp_path):
    """A key from `ww idgen` (base58 text), and the peer id it belongs to."""
    r = run_ww("idgen")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "cell.key"
    path.write_text(r.stdout)
    path.chmod(0o600)  # a private key others can read is refused
    from ww.core.identity import parse_private_key

    return str(path), parse_private_key(r.stdout).peer_id
