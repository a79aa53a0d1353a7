"""Host directories as grants: `ww run --dir NAME=PATH[:rw]` (ww.host.dirs).

Every test of what a cell can do runs real `ww run` processes and real bubblewrap cells
(shell cells), as root and as an unprivileged user (the ``who`` fixture,
tests/host/conftest.py).  When `ww` runs as root the cell is nobody on the host, so the
directories are made readable (or, for ``:rw``, owned) by the uid the cell has there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww
from ww.app.argv import SubcellCommand
from ww.app.options import RunOptions
from ww.host import jail
from ww.host.policy import GrantSet


def cell_ids(who) -> tuple[int, int]:
    """The uid and gid the cell has on the host."""
    return who.ids if who.unprivileged else (65534, 65534)


def sh(who, *flags: str, script: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return who.run("run", *flags, "--", "/bin/sh", "-c", script, **kwargs)


def granted_dir(who, name: str = "granted", owned: bool = False) -> Path:
    """A directory in the test's own directory with a file in it, readable by the cell's
    host uid (and owned by it with ``owned``: what `:rw` needs to be written)."""
    d = who.work / name
    d.mkdir()
    (d / "file.txt").write_text("granted data")
    (d / "file.txt").chmod(0o644)
    d.chmod(0o755)
    if owned:
        os.chown(d, *cell_ids(who))
        os.chown(d / "file.txt", *cell_ids(who))
    return d


def snapshot(d: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mode, p.read_text() if p.is_file() else "")
            for p in sorted(d.iterdir())}


# Every way a cell could try to change a read-only grant, each printed as NAME:STATUS.
TRY_TO_CHANGE = """
d=$WW_DIR_DATA
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name:0"; else echo "$name:1"; fi; }
cat "$d/file.txt"; echo
try write sh -c 'echo changed > "$0/file.txt"' "$d"
try append sh -c 'echo more >> "$0/file.txt"' "$d"
try create touch "$d/new"
try mkdir mkdir "$d/newdir"
try rename mv "$d/file.txt" "$d/moved"
try remove rm -f "$d/file.txt"
try chmod chmod 777 "$d/file.txt"
try chmod_dir chmod 777 "$d"
try symlink ln -s /etc/passwd "$d/link"
try truncate truncate -s 0 "$d/file.txt"
try remount mount -o remount,rw "$d"
try remount_bind mount -o remount,bind,rw "$d"
try userns_remount unshare -rm mount -o remount,rw "$d"
try unmount umount "$d"
"""
CHANGES = ["write", "append", "create", "mkdir", "rename", "remove", "chmod", "chmod_dir",
           "symlink", "truncate", "remount", "remount_bind", "userns_remount", "unmount"]


def test_a_read_only_grant_can_be_read_and_not_changed_in_any_way(who):
    """Read-only means read-only: the cell may not write, create, rename, remove, chmod,
    or remount it read-write (not even from a user namespace of its own)."""
    for tool in ("mount", "umount", "unshare", "truncate"):  # else each try fails anyway
        assert Path("/usr/bin", tool).exists(), tool
    d = granted_dir(who, owned=True)  # its own files: only the mount stops it
    before = snapshot(d)
    r = sh(who, "--dir", f"data={d}", script=TRY_TO_CHANGE)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "granted data"
    assert lines[1:] == [f"{name}:1" for name in CHANGES]
    assert snapshot(d) == before


def test_a_read_write_grant_is_written_through_to_the_host(who):
    d = granted_dir(who, owned=True)
    r = sh(who, "--dir", f"data={d}:rw",
           script='echo "$WW_DIR_DATA"; echo from-cell > "$WW_DIR_DATA/out.txt"; '
                  'mkdir "$WW_DIR_DATA/sub" && mv "$WW_DIR_DATA/file.txt" "$WW_DIR_DATA/sub/"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["/run/ww/dir/data"]
    assert (d / "out.txt").read_text() == "from-cell\n"
    assert (d / "sub" / "file.txt").read_text() == "granted data"
    assert (d / "out.txt").stat().st_uid == cell_ids(who)[0]  # written as the cell's uid


@pytest.mark.skipif(os.geteuid() != 0, reason="ww as root only: the cell is nobody then")
def test_a_grant_the_cell_cannot_use_is_made_with_a_warning_naming_it(tmp_path):
    """As root the cell is nobody: a :rw directory nobody cannot write in, or one it cannot
    list, is bound as documented, with one warning line each saying so; a usable one and
    the read-only grant of a readable one get none."""
    root_owned = tmp_path / "root-owned"  # 0755, root's: nobody reads but cannot write
    private = tmp_path / "private"  # 0700, root's: nobody cannot even list it
    usable = tmp_path / "usable"
    for d in (root_owned, private, usable):
        d.mkdir()
    root_owned.chmod(0o755)
    private.chmod(0o700)
    os.chown(usable, 65534, 65534)
    r = run_ww("run", "--dir", f"out={root_owned}:rw", "--dir", f"secret={private}",
               "--dir", f"ok={usable}:rw", "--dir", f"read={root_owned}", "--",
               "/bin/sh", "-c", 'echo x > "$WW_DIR_OK/y" && echo ok')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"
    warnings = [line for line in r.stderr.splitlines() if line.startswith("ww: warning: ")]
    assert len(warnings) == 2, r.stderr
    assert warnings[0].startswith("ww: warning: --dir out: ") and "cannot write" in warnings[0]
    assert warnings[1].startswith("ww: warning: --dir secret: ") and "cannot list" in warnings[1]
    assert "uid 65534" in warnings[0]


def test_a_read_write_grant_cannot_be_made_a_device_or_setuid_door(who):
    """The bind is nosuid and nodev: what the cell leaves there runs as no one else."""
    d = granted_dir(who, owned=True)
    r = sh(who, "--dir", f"data={d}:rw",
           script='grep " /run/ww/dir/data " /proc/self/mountinfo | cut -d" " -f6')
    assert r.returncode == 0, r.stderr
    options = r.stdout.strip().split(",")
    assert {"rw", "nosuid", "nodev"} <= set(options), r.stdout


def test_symlinks_and_dotdot_inside_a_grant_resolve_in_the_jail_not_the_host(who):
    """A link in the granted directory to a host file (absolute, or relative through
    '..'), and '..' from the mount point, reach the jail's files, never the host's."""
    outside = who.work / "secret.txt"
    outside.write_text("host secret next to the grant")
    outside.chmod(0o644)  # readable by the cell's host uid: only the jail hides it
    d = granted_dir(who)
    (d / "absolute").symlink_to(outside)
    (d / "relative").symlink_to(Path("..") / outside.name)
    (d / "dirlink").symlink_to(who.work)
    script = """
        d=$WW_DIR_DATA
        cat "$d/absolute" "$d/relative" "$d/../secret.txt" "$d/dirlink/secret.txt" 2>/dev/null
        ls -A "$d/.."; ls -A "$d/../.."
        cd "$d" && cd ../../../.. && pwd && cat "$PWD/${SECRET#/}" 2>/dev/null
        echo done
    """
    r = sh(who, "--dir", f"data={d}", script=script,
           env={**os.environ, "WW_ENV": f"SECRET={outside}"})
    assert r.returncode == 0, r.stderr
    assert "host secret" not in r.stdout
    assert r.stdout.split() == ["data", "dir", "/", "done"]


def test_two_grants_are_each_at_their_name_and_nothing_else_of_the_host_shows(who):
    a = granted_dir(who, "a")
    b = granted_dir(who, "b")
    (b / "file.txt").write_text("b data")
    r = sh(who, "--dir", f"first={a}", "--dir", f"Second={b}",
           script='echo "$WW_DIR_FIRST $WW_DIR_SECOND"; ls /run/ww/dir; '
                  'cat "$WW_DIR_SECOND/file.txt"; echo; '
                  f'ls {who.work} 2>/dev/null || echo no-work-dir')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["/run/ww/dir/first /run/ww/dir/Second", "Second",
                                     "first", "b data", "no-work-dir"]


def test_ww_dir_variable_grants_like_the_flag(who):
    a = granted_dir(who, "a")
    b = granted_dir(who, "b", owned=True)
    r = sh(who, script='cat "$WW_DIR_A/file.txt"; echo; touch "$WW_DIR_B/x" && echo wrote',
           env={**os.environ, "WW_DIR": f"a={a} b={b}:rw"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["granted data", "wrote"]
    assert (b / "x").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="ww as root only")
def test_a_grant_below_a_directory_the_cell_may_not_enter_is_still_bound(tmp_path):
    """As root the cell is nobody, and bubblewrap binds the checked directory by the path
    of its handle as nobody: one below a 0700 directory is staged like a program there,
    with nothing else of that directory showing."""
    private = tmp_path / "private"
    (private / "shared").mkdir(parents=True)
    private.chmod(0o700)
    (private / "secret.txt").write_text("private secret")
    (private / "shared" / "file.txt").write_text("shared data")
    (private / "shared").chmod(0o755)
    (private / "out").mkdir()
    os.chown(private / "out", 65534, 65534)
    r = run_ww("run", "--dir", f"data={private / 'shared'}", "--dir", f"out={private / 'out'}:rw",
               "--", "/bin/sh", "-c",
               'cat "$WW_DIR_DATA/file.txt"; echo; echo written > "$WW_DIR_OUT/new"; '
               f'cat {private}/secret.txt 2>/dev/null; ls {private} 2>/dev/null; echo end')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["shared data", "end"]
    assert (private / "out" / "new").read_text() == "written\n"
    assert oct(private.stat().st_mode & 0o777) == "0o700"


def _two_directories(top: Path) -> Path:
    """``top``/checked and ``top``/other, each with a file ``which`` naming it, readable by
    the cell's host uid; and a link ``top``/link to checked."""
    top.mkdir(mode=0o755, exist_ok=True)
    top.chmod(0o755)
    for name in ("checked", "other"):
        (top / name).mkdir(mode=0o755)
        (top / name / "which").write_text(name)
        (top / name / "which").chmod(0o644)
    (top / "link").symlink_to(top / "checked")
    return top


def _swap(top: Path) -> None:
    """After the check: the link names the other directory, and the checked directory's
    path does too (the checked one renamed away)."""
    (top / "link").unlink()
    (top / "link").symlink_to(top / "other")
    (top / "checked").rename(top / "moved")
    (top / "other").rename(top / "checked")


def _run_in_process(grants) -> int:
    """A shell cell printing which directory each grant shows, run by the supervisor in
    this process (the grants already checked, as `ww run` hands them over)."""
    from ww.host import dirs, supervisor

    env = {"PATH": "/usr/bin:/bin", **dirs.dir_env(grants, jailed=True)}
    script = " ".join(f'cat "$WW_DIR_{g.name.upper()}/which"; echo;' for g in grants)
    return supervisor.run(supervisor.RunConfig(
        command="/bin/sh", args=["-c", script], env=env, dirs=grants,
        search_path="/usr/bin:/bin"))


def test_the_directory_checked_is_the_one_bound_whatever_its_path_names_later(capfd):
    """The path is opened once and bubblewrap binds that handle: a symlink repointed, or
    the directory renamed and another put at its path, after the check, change nothing."""
    from ww.host import dirs

    top = Path(tempfile.mkdtemp(prefix="ww-test-dirs-"))  # no directory above hides it
    try:
        _two_directories(top)
        grants = dirs.parse_dir_flags([f"l={top / 'link'}", f"p={top / 'checked'}"])
        _swap(top)
        status = _run_in_process(grants)
    finally:
        shutil.rmtree(top)
    assert (status, capfd.readouterr().out.splitlines()) == (0, ["checked", "checked"])


@pytest.mark.skipif(os.geteuid() != 0, reason="ww as root only")
def test_a_staged_directory_replaced_after_the_check_fails_the_start_not_the_grant(
        tmp_path, capfd):
    """As root, a grant below a directory nobody may enter is opened again by its path to
    be staged (ww.host.jail.dropper): another directory at that path by then is refused
    (the cell never starts), never bound."""
    from ww.core.errors import HostError
    from ww.host import dirs

    _two_directories(tmp_path / "top")  # tmp_path: below /tmp/pytest-of-root, mode 0700
    assert jail._hidden_ancestor(str(tmp_path / "top"), 65534, 65534) is not None
    grants = dirs.parse_dir_flags([f"p={tmp_path / 'top' / 'checked'}"])
    _swap(tmp_path / "top")
    with pytest.raises(HostError, match="cannot start the cell"):
        _run_in_process(grants)
    assert "other" not in capfd.readouterr().out


@pytest.mark.parametrize("make_path", [
    pytest.param(lambda home: "/", id="root"),
    pytest.param(lambda home: str(home), id="home"),
    pytest.param(lambda home: str(home / "sub" / ".."), id="home-through-dotdot"),
    pytest.param(lambda home: str(home / "link-to-home"), id="home-through-a-symlink"),
    pytest.param(lambda home: str(home / "link-to-root"), id="root-through-a-symlink"),
    pytest.param(lambda home: str(home.parent), id="above-home"),
    pytest.param(lambda home: str(home / "sub" / ".." / ".." / ".." / ".." / ".." / ".."
                                  / ".." / ".."), id="root-through-dotdot"),
    pytest.param(lambda home: "/proc", id="proc"),
    pytest.param(lambda home: "/proc/self", id="below-proc"),
    pytest.param(lambda home: "/sys", id="sys"),
    pytest.param(lambda home: "/dev", id="dev"),
    pytest.param(lambda home: "/run", id="run"),
    pytest.param(lambda home: "/etc", id="etc"),
    pytest.param(lambda home: "/var", id="var"),
    pytest.param(lambda home: "/tmp", id="tmp"),
])
def test_a_grant_of_the_host_at_large_is_refused_with_one_line_and_exit_2(
        make_path, tmp_path):
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "link-to-home").symlink_to(home)
    (home / "link-to-root").symlink_to("/")
    path = make_path(home)
    r = run_ww("run", "--dir", f"x={path}", "/bin/true", env={**os.environ, "HOME": str(home)})
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"ww: --dir 'x={path}': refused to grant "), r.stderr


@pytest.mark.parametrize(("flag", "message"), [
    ("x", "expected NAME=PATH[:ro|:rw]"),
    ("x=", "expected NAME=PATH[:ro|:rw]"),
    ("x=:rw", "the path is empty"),
    ("1x={d}", "the name must be letters, digits and '_'"),
    ("a-b={d}", "the name must be letters, digits and '_'"),
    ("x={d}/missing", "does not exist"),
    ("x={d}/file.txt", "is not a directory"),
    ("x={d}:wr", "does not exist"),  # not a mode: part of the path
    # The mount point's name: bubblewrap failed on it (exit 1, two lines) before the fix.
    ("a" * 256 + "={d}", "the name is longer than 255 characters"),
])
def test_a_malformed_or_missing_grant_is_one_line_and_exit_2(flag, message, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    flag = flag.format(d=tmp_path)
    r = run_ww("run", "--dir", flag, "/bin/true")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert r.stderr.startswith(f"ww: --dir {flag!r}: "), r.stderr


def test_a_name_is_granted_once_whatever_its_case(tmp_path):
    r = run_ww("run", "--dir", f"data={tmp_path}", "--dir", f"DATA={tmp_path}", "/bin/true")
    assert r.returncode == 2
    assert r.stderr == (f"ww: --dir 'DATA={tmp_path}': the name 'DATA' is already used by "
                        f"--dir 'data={tmp_path}'\n")


def test_a_path_with_colons_keeps_them_and_only_a_last_ro_or_rw_is_a_mode(who):
    weird = granted_dir(who, "a:b")
    ends_in_mode = granted_dir(who, "c:rw", owned=True)
    r = sh(who, "--dir", f"one={weird}", "--dir", f"two={ends_in_mode}:ro",
           script='cat "$WW_DIR_ONE/file.txt"; echo; touch "$WW_DIR_TWO/x" 2>/dev/null '
                  '|| echo two-is-read-only')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["granted data", "two-is-read-only"]


def test_the_cell_cannot_forge_a_dir_variable():
    r = run_ww("run", "--env", "WW_DIR_DATA=/run/ww/dir/data", "/bin/true")
    assert r.returncode == 2
    assert "WW_DIR_" in r.stderr and r.stderr.count("\n") == 1


def test_with_no_jail_the_variable_names_the_host_directory_and_nothing_confines_it(who):
    """--jail=none: the grant still works, at the directory's real host path; read-only is
    not enforced there (documented: nothing is confined without the jail)."""
    d = granted_dir(who, owned=True)
    link = who.work / "link"
    link.symlink_to(d)
    r = sh(who, "--jail=none", "--dir", f"data={link}",
           script='echo "$WW_DIR_DATA"; cat "$WW_DIR_DATA/file.txt"; echo; '
                  'touch "$WW_DIR_DATA/unconfined" && echo wrote')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(d.resolve()), "granted data", "wrote"]


def test_a_sub_cell_does_not_inherit_its_parents_directories():
    """Like fds, a directory is granted to one cell: a sub-cell's `ww run` gets no --dir
    (the exec capability has no way to pass one, so a parent cannot grant what it holds
    nor what it was never granted)."""
    parent = RunOptions(executable="/bin/true", dir_flags=("data=/srv/data:rw",),
                        with_exec=True)
    argv = SubcellCommand(parent, ww=["ww"]).argv(GrantSet(), [], "/bin/sh", ["-c", "true"])
    assert "--dir" not in argv and not any("/srv/data" in a for a in argv)


@pytest.mark.parametrize("given_by", ["flag", "variable"])
def test_a_real_sub_cell_sees_none_of_its_parents_directories_and_cannot_forge_one(
        given_by, make_cell, tmp_path):
    """Also when the operator granted the directory with WW_DIR: the sub-cell's `ww run`
    gets none of the host's WW_* variables."""
    tmp_path.chmod(0o755)
    d = tmp_path / "granted"
    d.mkdir(mode=0o755)
    parent = make_cell("""
        import os, ww.cell
        print("parent:[" + os.environ["WW_DIR_DATA"] + "]", flush=True)
        with ww.cell.session() as s:
            child = s.exec.spawn("/bin/sh", "-c",
                                 'echo "child:[$WW_DIR_DATA]"; '
                                 'test -e /run/ww/dir && echo shown || echo absent')
            print(child.stdout.read_all().decode(), end="")
            print("status", child.wait())
            forged = s.exec.spawn("/bin/true", env={"WW_DIR_DATA": "/run/ww/dir/data"})
            print("forged status", forged.wait())
    """)
    flags = ["--dir", f"data={d}"] if given_by == "flag" else []
    env = {**os.environ, "WW_DIR": f"data={d}"} if given_by == "variable" else None
    r = run_ww("run", *flags, "--with-exec", "--exec-allow", "/bin/sh",
               "--exec-allow", "/bin/true", parent, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["parent:[/run/ww/dir/data]", "child:[]", "absent",
                                     "status 0", "forged status 2"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_mount_inside_a_read_only_grant_is_read_only_too(tmp_path):
    """The bind is recursive: a writable file system mounted below the granted directory
    comes along, and is read-only in the jail as well.  (The tmpfs is mounted in a mount
    namespace of `ww`'s own, which the host never sees.)"""
    tmp_path.chmod(0o755)
    d = tmp_path / "granted"
    (d / "mnt").mkdir(parents=True)
    d.chmod(0o755)
    script = ('touch "$WW_DIR_DATA/mnt/x" 2>/dev/null && echo wrote || echo read-only; '
              'cat "$WW_DIR_DATA/mnt/seen"')
    inner = (f'mount -t tmpfs -o mode=0777 ww-test "{d}/mnt" && echo seen > "{d}/mnt/seen" && '
             f'exec "$0" run --dir data={d} -- /bin/sh -c \'{script}\'')
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", inner, WW],
                       capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["read-only", "seen"]


def test_no_handle_of_a_granted_directory_is_open_in_the_cell(who):
    """bubblewrap gets each directory as an O_PATH handle; one left open in the jail would
    lead out of it (``openat(fd, "..")``).  The cell holds none; with --strict (its helper
    in between) neither.  What bubblewrap's init (pid 1) holds the cell cannot reach at
    all: test_jail::test_no_fd_bubblewraps_init_holds_is_reachable_from_the_cell."""
    d = granted_dir(who)
    script = 'for f in /proc/$$/fd/*; do [ -d "$f" ] && echo "$f"; done; echo end'
    for strict in ([], ["--strict"]):
        r = sh(who, *strict, "--dir", f"data={d}", "--dir", f"more={d}:rw", script=script)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["end"], strict




def test_a_directory_holding_wws_own_files_is_refused(ww_home, tmp_path):
    """$WW_HOME holds the node key; the audit trail, key and policy files are the run's own:
    a grant of one of their directories (or one above) would hand them to the cell."""
    for path in (ww_home, ww_home.parent):
        r = run_ww("run", "--dir", f"x={path}", "/bin/true")
        assert (r.returncode, r.stdout) == (2, ""), r.stderr
        assert r.stderr.count("\n") == 1 and "ww's repository ($WW_HOME)" in r.stderr
    d = tmp_path / "run-files"
    d.mkdir()
    for flags, what in ((["--audit", f"{d}/audit.log"], "the --audit file"),
                        (["--identity", f"{d}/cell.key"], "the --identity key"),
                        (["--policy", f"{d}/policy.toml"], "the --policy file")):
        r = run_ww("run", *flags, "--dir", f"x={d}:rw", "/bin/true")
        assert (r.returncode, r.stdout) == (2, ""), r.stderr
        assert r.stderr.count("\n") == 1 and f"it holds {what}" in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
@pytest.mark.parametrize(("fstype", "where"), [
    ("proc", "granted"), ("proc", "granted/chroot/proc"), ("sysfs", "granted/chroot/sys"),
])
def test_a_kernel_file_system_at_or_below_a_grant_is_refused(fstype, where, tmp_path):
    """The bind is recursive: a chroot's /proc mounted below the granted directory would be
    the host's /proc in the jail (every host process and its command line).  A file system
    of the kernel's interfaces, at the granted directory or at any mount below it, is
    refused like /proc itself (a fresh proc mount is not /proc by device and inode)."""
    tmp_path.chmod(0o755)
    d = tmp_path / "granted"
    (tmp_path / where).mkdir(parents=True, exist_ok=True)
    script = 'ls "$WW_DIR_DATA"/chroot/proc "$WW_DIR_DATA" | grep -c "^[0-9]"'
    inner = (f'mount -t {fstype} ww-test "{tmp_path / where}" && '
             f'exec "$0" run --dir data={d} -- /bin/sh -c \'{script}\'')
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", inner, WW],
                       capture_output=True, text=True, timeout=HANG)
    assert (r.returncode, r.stdout) == (2, ""), (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"ww: --dir 'data={d}': refused to grant "), r.stderr
    assert f"{fstype}" in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
@pytest.mark.parametrize("what", ["home", "wws_repository"])
def test_a_directory_above_home_or_wws_files_reached_through_a_bind_mount_is_refused(
        what, tmp_path):
    """``/home`` bound at ``/mnt/home`` (or the directory above $WW_HOME bound elsewhere) is
    a directory above the home (the repository) whatever its path: compared by device and
    inode with every directory above them, not only with themselves."""
    tmp_path.chmod(0o755)
    top = tmp_path / "top"
    (top / "home" / "me" / ".ww").mkdir(parents=True)
    alias = tmp_path / "alias"
    alias.mkdir()
    env = {**os.environ, "HOME": str(top / "home" / "me")}
    if what == "wws_repository":
        env = {**os.environ, "WW_HOME": str(top / "home" / "me" / ".ww")}
    inner = f'mount --bind "{top}" "{alias}" && exec "$0" run --dir x={alias}/home /bin/true'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", inner, WW],
                       capture_output=True, text=True, timeout=HANG, env=env)
    assert (r.returncode, r.stdout) == (2, ""), (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"ww: --dir 'x={alias}/home': refused to grant "), r.stderr


SET_ID_BITS = """
d=$WW_DIR_DATA
cp /bin/true "$d/prog"
for mode in 4755 2755 6755 u+s g+s; do chmod $mode "$d/prog" 2>/dev/null && echo "chmod $mode"; done
mkdir "$d/sub"; chmod g+s "$d/sub" 2>/dev/null && echo "chmod g+s sub"
chmod 2777 "$d" 2>/dev/null && echo "chmod 2777 dir"
chmod 755 "$d/prog" && echo plain
"""


@pytest.mark.parametrize("strict", [[], ["--strict"]], ids=["default", "strict"])
def test_a_cell_cannot_leave_a_setuid_or_setgid_file_in_a_read_write_grant(who, strict):
    """nosuid holds in the jail only: a program the cell made setuid (its host uid: nobody,
    or the operator's) in a :rw grant would run as that uid for any host user who runs it
    there, and a setgid directory hands its group to what host users create in it.  The
    cell's chmod may not set either bit (EPERM, also under --strict, where it is no
    violation); an ordinary chmod works."""
    d = granted_dir(who, owned=True)
    r = sh(who, *strict, "--dir", f"data={d}:rw", script=SET_ID_BITS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["plain"]
    for path in (d, d / "prog", d / "sub"):
        assert not path.stat().st_mode & 0o6000, oct(path.stat().st_mode)


def test_a_symlink_another_user_planted_in_a_sticky_directory_is_not_followed(who):
    """Another local user squats the path the operator will grant (``/tmp/build``) with a
    symlink to a directory of the operator's: the grant would be that directory.  As the
    kernel's fs.protected_symlinks (off on some hosts), a symlink in a sticky,
    world-writable directory is followed only if it belongs to the operator or to that
    directory's owner; the operator's own link there still works."""
    other = 65534 if who.unprivileged else jail.HOST_UID  # nobody: neither operator nor root
    private = who.work / "private"
    private.mkdir(mode=0o755)
    (private / "file.txt").write_text("the operator's")
    (private / "file.txt").chmod(0o644)
    shared = who.work / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # owned by root, as /tmp
    (shared / "build").symlink_to(private)
    os.lchown(shared / "build", other, other)
    (shared / "mine").symlink_to(private)
    (shared / "via").symlink_to(shared / "build")  # the operator's link to the planted one
    if who.unprivileged:
        for name in ("mine", "via"):
            os.lchown(shared / name, *who.ids)
    for name in ("build", "via"):
        r = who.run("run", "--dir", f"x={shared / name}", "/bin/true")
        assert (r.returncode, r.stdout) == (2, ""), r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"ww: --dir 'x={shared / name}': refused to grant "), \
            r.stderr
        assert f"uid {other}" in r.stderr, r.stderr
    r = who.run("run", "--dir", f"x={shared / 'mine'}", "--", "/bin/cat",
                "/run/ww/dir/x/file.txt")
    assert (r.returncode, r.stdout) == (0, "the operator's"), r.stderr


@pytest.mark.parametrize("below", ["blocks", "blocks/65", "staging", "keys"])
def test_a_directory_inside_wws_repository_is_refused(below, ww_home):
    """$WW_HOME is `ww`'s alone: a grant of its blocks would hand the cell every block,
    whatever --ipfs-root allows, and with :rw let it rewrite the blocks and pins the host
    serves and trusts.  A directory inside it is refused like the repository itself."""
    (ww_home / below).mkdir(parents=True)
    r = run_ww("run", "--dir", f"x={ww_home / below}:rw", "/bin/true")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.count("\n") == 1 and "ww's repository ($WW_HOME)" in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_directory_inside_wws_repository_reached_through_a_bind_mount_is_refused(
        ww_home, tmp_path):
    (ww_home / "blocks").mkdir()
    alias = tmp_path / "alias"
    alias.mkdir()
    inner = (f'mount --bind "{ww_home}" "{alias}" && '
             f'exec "$0" run --dir x={alias}/blocks /bin/true')
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", inner, WW],
                       capture_output=True, text=True, timeout=HANG)
    assert (r.returncode, r.stdout) == (2, ""), (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "ww's repository ($WW_HOME)" in r.stderr, r.stderr


def test_a_read_write_grant_of_wws_own_code_is_refused_a_read_only_one_is_not():
    """A cell that may write `ww`'s code (its package, the libraries and the standard
    library it imports, the program it runs on) runs its own code unjailed the next time
    the operator runs `ww`: a project granted ``:rw`` with its virtualenv inside is the
    common way to get there.  Reading that code is harmless (and ``--dir src=.`` in such a
    project ordinary)."""
    import sysconfig

    import ww

    package = Path(ww.__file__).resolve().parent
    libraries = Path(sysconfig.get_paths()["purelib"])  # WW runs on this interpreter
    stdlib = Path(os.__file__).parent
    for path in (package, package / "host", package.parent, libraries, libraries.parent,
                 stdlib, stdlib / "json", Path(WW).parent):
        r = run_ww("run", "--dir", f"x={path}:rw", "/bin/true")
        assert (r.returncode, r.stdout) == (2, ""), (path, r.stderr)
        assert r.stderr.count("\n") == 1 and "ww's own code" in r.stderr, r.stderr
    r = run_ww("run", "--dir", f"x={package}", "--", "/bin/sh", "-c",
               'test -f "$WW_DIR_X/__init__.py" && echo read')
    assert (r.returncode, r.stdout) == (0, "read\n"), r.stderr


def test_a_cell_cannot_take_a_lease_on_a_granted_file(who):
    """A read lease (``F_SETLEASE``) on a file of a read-only grant that the cell's host uid
    owns made every host program that opened it for writing wait for the cell, 45 s a
    time (fs.lease-break-time).  The seccomp filter denies it (EPERM); a lock the cell
    takes on its own files (``F_SETLK``) still works."""
    d = granted_dir(who, owned=True)
    script = """
import fcntl, os
fd = os.open(os.environ["WW_DIR_DATA"] + "/file.txt", os.O_RDONLY)
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    print("lease taken")
except PermissionError:
    print("no lease")
with open("/tmp/own", "w") as f:
    fcntl.lockf(f, fcntl.LOCK_EX)
    print("own lock")
"""
    r = who.run("run", "--dir", f"data={d}", "--", "/usr/bin/python3", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["no lease", "own lock"]
