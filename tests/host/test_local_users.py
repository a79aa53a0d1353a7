"""Another local user against `ww`'s files: the repository in ``$WW_HOME`` (blocks, pins,
``gc.lock``, the exec cache, the node key).

Real `ww` commands, run as root and as an unprivileged user (``ww-test``, see
``conftest.py``); the other user is ``nobody`` (65534), who holds nothing of theirs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import HANG, run_ww
from tests.host.conftest import Who, ensure_test_user

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``nobody``, with no supplementary group."""
    return subprocess.run(list(argv), user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, timeout=HANG, check=False)


@pytest.fixture
def user_home(tmp_path: Path):
    """The unprivileged test user and a home of theirs as ``useradd -m`` makes one on this
    machine (mode 0755: anyone may enter it)."""
    uid, gid = ensure_test_user()
    tmp_path.chmod(0o755)
    home = Path(tempfile.mkdtemp(prefix="local-user-home-"))
    os.chown(home, uid, gid)
    home.chmod(0o755)
    try:
        yield Who("unprivileged", (uid, gid), home, tmp_path)
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def test_another_local_user_can_neither_read_the_repository_nor_lock_it(user_home: Who):
    """The repository was made with the umask's modes (0755 directories, 0444 blocks), so
    every local user read every block of every file the user had added (``cat
    ~victim/.ww/blocks/*/*``), and could take ``gc.lock`` (0644) with ``flock``: every
    ``ww export``, every add of a cell or of ``ww daemon`` then waited for as long as they
    held it.  ``$WW_HOME`` is now made 0700, and an old one of the user's is made so."""
    who = user_home
    secret = who.work / "secret.txt"
    secret.write_text("the user's secret\n")
    secret.chmod(0o644)  # readable by ww-test, whose `ww export` reads it
    added = who.run("export", str(secret))
    assert added.returncode == 0, added.stderr
    repo = who.home / ".ww"
    blocks = [p for p in (repo / "blocks").rglob("*") if p.is_file()]
    assert blocks and any(b.read_bytes() == b"the user's secret\n" or
                          b"the user's secret" in b.read_bytes() for b in blocks)

    def nobody_reaches_it() -> list[str]:
        reached = []
        for block in blocks:
            if as_nobody("cat", str(block)).returncode == 0:
                reached.append(f"read {block.name}")
        locked = as_nobody("flock", "--nonblock", "--exclusive", str(repo / "gc.lock"), "true")
        if locked.returncode == 0:
            reached.append("locked gc.lock")
        if as_nobody("ls", str(repo / "pins" / "recursive")).returncode == 0:
            reached.append("listed the pins")
        return reached

    assert nobody_reaches_it() == []
    assert stat.S_IMODE(repo.stat().st_mode) == 0o700

    # A repository the old `ww` made, open to all, is closed by the next command.
    repo.chmod(0o755)
    assert nobody_reaches_it() != []  # the check above can see a way in
    listed = who.run("pin", "ls")
    assert listed.returncode == 0, listed.stderr
    assert stat.S_IMODE(repo.stat().st_mode) == 0o700
    assert nobody_reaches_it() == []


def _refused(tmp_path: Path, command: tuple[str, ...], home: Path):
    """``command`` run with ``WW_HOME=home`` (``{file}``: a small file of the test's): it
    must fail with exit 1 and one line."""
    file = tmp_path / "f.txt"
    file.write_text("x\n")
    argv = [part.format(file=file) for part in command]
    result = run_ww(*argv, env={**os.environ, "WW_HOME": str(home)})
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    return result


@pytest.mark.parametrize("command", [("export", "{file}"), ("id",)])
def test_a_ww_home_of_another_user_is_refused_with_one_line(tmp_path: Path, command):
    """A ``$WW_HOME`` another user owns (one made in advance in a shared place, such as
    ``/tmp/ww``): its owner could swap an exec-cache entry between its hash check and its
    run, or hold ``gc.lock``.  `ww` used it; now one line naming the owner, exit 1, and
    nothing written there."""
    home = tmp_path / "shared-ww-home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    os.chown(home, NOBODY, NOBODY)
    result = _refused(tmp_path, command, home)
    assert f"belongs to uid {NOBODY}, not to uid 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(home.iterdir()) == []


def test_an_unprivileged_user_refuses_a_ww_home_root_made_for_everyone(user_home: Who):
    """The other way round: a sticky, world-writable ``$WW_HOME`` of root's (a shared
    cache directory) is refused by an unprivileged `ww` too: root is another user there."""
    shared = user_home.work / "root-shared"
    shared.mkdir()
    shared.chmod(0o755)
    home = shared / ".ww"  # the $WW_HOME of a `ww` whose $HOME is `shared`
    home.mkdir()
    home.chmod(0o1777)
    who = Who("unprivileged", user_home.ids, shared, user_home.work)
    result = who.run("id")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "belongs to uid 0" in result.stderr, result.stderr
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("command", [("export", "{file}"), ("id",)])
def test_an_open_directory_that_is_no_ww_home_is_refused_not_made_private(tmp_path: Path,
                                                                            command):
    """``WW_HOME=/tmp`` as root (or ``$HOME``, a project's directory): ww made any open
    directory of the user's 0700 and dropped its sticky bit, under every other user of it.
    Such a directory is now refused with one line and left as it was; an empty one, or one
    ww already uses, is still made private, its sticky bit kept."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "someone-elses.txt").write_text("x\n")
    result = _refused(tmp_path, command, shared)
    assert "is open to other users and is not a ww home" in result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert sorted(p.name for p in shared.iterdir()) == ["someone-elses.txt"]

    empty = tmp_path / "empty-open"
    empty.mkdir()
    empty.chmod(0o1777)
    argv = [part.format(file=tmp_path / "f.txt") for part in command]
    result = run_ww(*argv, env={**os.environ, "WW_HOME": str(empty)})
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o1700
