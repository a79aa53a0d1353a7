"""Running `ww` as root and as an unprivileged user: each has its own failure modes.

The ``who`` fixture runs every test that takes it twice: as the user running the tests
(root here) and as ``ww-test``, a system user it creates if missing (``useradd``; another
test process may be creating it at the same moment, which is fine).

The unprivileged `ww` must be able to run this project's Python, which may live where that
user cannot go (a pyenv under ``/root``, mode 0700).  The test does not change any
permission on the host for that: it starts `ww` through the jail's own
:func:`ww.host.jail.dropper`, which, in a mount namespace of that process alone, makes the
interpreter, the virtualenv, the source tree and the test's own directory reachable at
their usual paths, and then drops to the user, with no capability and no supplementary
group, before `ww` starts.  Everything else of the host looks to that `ww` as it looks to
any process of that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww
from ww.host import jail
from ww.host.executable import bind

TEST_USER = "ww-test"


def ensure_test_user() -> tuple[int, int]:
    """The uid and gid of TEST_USER, made first if it does not exist (idempotent)."""
    for _ in range(100):  # bounded: a concurrent useradd holds the lock for a moment
        try:
            entry = pwd.getpwnam(TEST_USER)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            pass
        made = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                               "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                               TEST_USER], capture_output=True, text=True, check=False)
        if made.returncode not in (0, 9, 10):  # 9: it exists now; 10: /etc/passwd locked
            raise RuntimeError(f"useradd {TEST_USER} failed: {made.stderr.strip()}")
        if made.returncode == 10:
            time.sleep(0.05)
    raise RuntimeError(f"useradd {TEST_USER}: /etc/passwd stayed locked")


class Who:
    """Runs `ww` as root (``ids`` None) or as the unprivileged test user."""

    def __init__(self, name: str, ids: tuple[int, int] | None, home: Path, work: Path) -> None:
        self.name = name
        self.ids = ids
        self.home = home  # $HOME of that `ww`: where its secrets would be
        self.work = work  # a directory of the test the `ww` can read: for cells

    @property
    def unprivileged(self) -> bool:
        return self.ids is not None

    def run(self, *args: str, timeout: float = HANG, **kwargs) -> subprocess.CompletedProcess[str]:
        if self.ids is None:
            return run_ww(*args, timeout=timeout, **kwargs)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run([WW, *args], timeout=timeout, **self._as_user(kwargs))

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        if self.ids is None:
            return subprocess.Popen([WW, *args], **kwargs)
        return subprocess.Popen([WW, *args], **self._as_user(kwargs))

    def _as_user(self, kwargs: dict) -> dict:
        """The subprocess arguments that start `ww` as the test user, in its own home."""
        assert self.ids is not None
        env = dict(kwargs.pop("env", None) or os.environ)
        env["HOME"] = str(self.home)
        env["WW_HOME"] = str(self.home / ".ww")
        package = Path(jail.__file__).resolve().parent.parent.parent  # the tree holding ww
        paths = [sys.prefix, sys.base_prefix, str(package), str(self.work), str(self.home)]
        drop = jail.dropper(self.ids, [bind(p) for p in paths])
        return {**kwargs, "env": env, "preexec_fn": drop}


@pytest.fixture(params=["root", "unprivileged"])
def who(request, tmp_path: Path) -> Who:
    if request.param == "root" or os.geteuid() != 0:
        if request.param == "unprivileged" and os.geteuid() != 0:
            pytest.skip("already unprivileged: the root case is the one that runs")
        yield Who("root" if os.geteuid() == 0 else "user", None, Path.home(), tmp_path)
        return
    uid, gid = ensure_test_user()
    tmp_path.chmod(0o755)  # the test's own directory: cells are written there
    home = Path(tempfile.mkdtemp(prefix="unprivileged-test-home-"))
    os.chown(home, uid, gid)
    try:
        yield Who("unprivileged", (uid, gid), home, tmp_path)
    finally:
        shutil.rmtree(home, ignore_errors=True)
