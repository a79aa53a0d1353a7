"""`ww import`'s one rule for a file, a symlink and a directory alike (issue 12): an existing
destination is an error naming it unless --force, which replaces a regular file or directory
atomically; a symlink, device or FIFO there is never replaced; `-o -` writes a file to
stdout; with no destination, ./<last path element> (./<CID> for a bare root), as `ipfs get`.
Every test runs the real `ww` command."""

from __future__ import annotations

import os

import pytest

from tests.cli.test_ipfs_commands import snapshot
from tests.conftest import run_ww
from ww.core.cid import CID
from ww.ipfs import dagpb


def _sources(tmp_path):
    """A file and a directory in one exported tree: {"file": /ipfs/…, "dir": /ipfs/…} and the
    local originals to compare against."""
    src = tmp_path / "src"
    (src / "d" / "inner").mkdir(parents=True)
    (src / "d" / "x.txt").write_text("new x\n")
    (src / "d" / "inner" / "y").write_bytes(os.urandom(300_000))
    (src / "f.bin").write_bytes(os.urandom(700_000))  # several chunks
    r = run_ww("export", str(src))
    assert r.returncode == 0, r.stderr
    root = r.stdout.strip()
    return {"file": f"{root}/f.bin", "dir": f"{root}/d"}, {"file": src / "f.bin", "dir": src / "d"}


def _same(written, original):
    if written.is_symlink():
        return False
    if original.is_dir():
        return written.is_dir() and snapshot(written) == snapshot(original)
    return written.is_file() and written.read_bytes() == original.read_bytes()


def _make_old(path, kind):
    if kind == "file":
        path.write_text("old\n")
    else:
        (path / "keep").mkdir(parents=True)
        (path / "keep" / "old.txt").write_text("old\n")
    return snapshot(path.parent)


def _no_temps(directory):
    return [n for n in os.listdir(directory) if ".ww-tmp-" in n] == []


@pytest.mark.parametrize("old", ["file", "dir"])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_an_existing_destination_is_an_error_naming_it_unless_force(tmp_path, kind, old):
    paths, originals = _sources(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "dest"
    before = _make_old(dest, old)
    for argv in (["import", paths[kind], str(dest)], ["import", paths[kind], "-o", str(dest)]):
        r = run_ww(*argv)
        assert r.returncode == 1, r.stderr
        what = "a directory" if old == "dir" else "a file"
        assert r.stderr.strip().splitlines() == [
            f"ww: {dest} already exists ({what}); ww import replaces it only with --force"]
        assert snapshot(out) == before  # nothing written, nothing moved
    r = run_ww("import", paths[kind], "-o", str(dest), "--force")
    assert r.returncode == 0, r.stderr
    assert _same(dest, originals[kind])  # replaced whole: nothing of the old one is kept
    assert sorted(os.listdir(out)) == ["dest"]  # the old copy and the temp are gone


@pytest.mark.parametrize("force", [[], ["--force"]])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_symlink_destination_is_never_replaced_even_with_force(tmp_path, kind, force):
    paths, _ = _sources(tmp_path)
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("precious\n")
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    for target in (victim_file, victim_dir, tmp_path / "dangling"):
        link = tmp_path / "link"
        os.symlink(target, link)
        r = run_ww("import", paths[kind], "-o", str(link), *force)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            f"ww: {link} is a symlink; ww import never writes through or replaces one "
            "(remove it or choose another path)"]
        assert os.readlink(link) == str(target)
        link.unlink()
    assert victim_file.read_text() == "precious\n" and os.listdir(victim_dir) == []
    assert not (tmp_path / "dangling").exists() and _no_temps(tmp_path)


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_fifo_destination_is_never_replaced_even_with_force(tmp_path, kind):
    paths, _ = _sources(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run_ww("import", paths[kind], str(fifo), "--force")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"ww: {fifo} is a FIFO; ww import never writes through or replaces one "
        "(remove it or choose another path)"]
    assert os.path.exists(fifo) and not os.path.isfile(fifo) and _no_temps(tmp_path)


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_no_destination_writes_the_last_path_element_or_the_cid_as_ipfs_get(tmp_path, kind):
    paths, originals = _sources(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    cid = run_ww("export", str(originals[kind])).stdout.strip().removeprefix("/ipfs/")
    assert run_ww("import", paths[kind], cwd=work).returncode == 0
    name = paths[kind].rsplit("/", 1)[1]  # /ipfs/<root>/d -> ./d, as `ipfs get` writes
    assert _same(work / name, originals[kind])
    assert run_ww("import", f"/ipfs/{cid}", cwd=work).returncode == 0  # a bare root: ./<cid>
    assert _same(work / cid, originals[kind])
    assert sorted(os.listdir(work)) == sorted([name, cid])  # nothing spilled into the cwd
    r = run_ww("import", cid, cwd=work)  # the default name follows the rule too
    assert r.returncode == 1 and r.stderr.startswith(f"ww: {cid} already exists")
    assert run_ww("import", cid, "--force", cwd=work).returncode == 0
    assert _same(work / cid, originals[kind])


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_car_with_no_destination_writes_its_root_cid(tmp_path, kind):
    _, originals = _sources(tmp_path)
    car = tmp_path / "x.car"
    assert run_ww("export", "--car", str(car), str(originals[kind])).returncode == 0
    cid = run_ww("export", "--no-pin", str(originals[kind])).stdout.strip().removeprefix("/ipfs/")
    work = tmp_path / "work"
    work.mkdir()
    r = run_ww("import", str(car), cwd=work)
    assert r.returncode == 0, r.stderr
    assert os.listdir(work) == [cid] and _same(work / cid, originals[kind])


def test_output_dash_writes_a_file_to_stdout_byte_exact(tmp_path):
    paths, originals = _sources(tmp_path)
    r = run_ww("import", paths["file"], "-o", "-", text=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == originals["file"].read_bytes()
    r = run_ww("import", paths["file"], "--output", "-", text=False, cwd=tmp_path)
    assert r.stdout == originals["file"].read_bytes()
    assert not (tmp_path / "-").exists()


def test_output_dash_of_a_directory_is_an_error_naming_it(tmp_path):
    paths, _ = _sources(tmp_path)
    r = run_ww("import", paths["dir"], "-o", "-", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"ww: {paths['dir']} is a directory; -o - writes only a file to stdout "
        "(give -o PATH to write it to disk)"]


def test_a_destination_given_twice_is_a_usage_error(tmp_path):
    paths, _ = _sources(tmp_path)
    r = run_ww("import", paths["file"], str(tmp_path / "a"), "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "give one" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_forced_import_that_fails_leaves_the_old_destination_whole(tmp_path, ww_home, kind):
    """A block missing half-way: the old file or directory is untouched, no temp is left."""
    paths, originals = _sources(tmp_path)
    big = run_ww("export", str(tmp_path / "src" / "d" / "inner" / "y")).stdout.strip()
    # the last block of y's content: its leaves are the blocks other than y's root
    root_mh = CID.parse(big.removeprefix("/ipfs/")).multihash.hex()
    y_root = next(p for p in (ww_home / "blocks").rglob(root_mh))
    leaf = dagpb.decode(y_root.read_bytes()).links[-1].cid
    (ww_home / "blocks").joinpath(leaf.multihash.hex()[-3:-1], leaf.multihash.hex()).unlink()
    src_of_the_missing = {"file": paths["dir"] + "/inner/y", "dir": paths["dir"]}[kind]
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "dest"
    before = _make_old(dest, "dir" if kind == "dir" else "file")
    r = run_ww("import", src_of_the_missing, "-o", str(dest), "--force")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert snapshot(out) == before and _no_temps(out)


@pytest.mark.parametrize("where", [".", "..", "/", "sub/.."])
def test_a_path_naming_no_entry_is_a_usage_error_even_with_force(tmp_path, where):
    """`-o .` with --force must not try to replace the current directory."""
    paths, _ = _sources(tmp_path)
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    before = snapshot(tmp_path)
    r = run_ww("import", paths["dir"], "-o", where, "--force", cwd=work)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"ww: {where.rstrip('/') or '/'} names no entry to write (give a path such as ./copy)"]
    assert snapshot(tmp_path) == before


def test_output_dash_into_a_pipe_closed_early_ends_quietly_as_ww_cat(tmp_path):
    """`ww import … -o - | head -c1`: the status of a program killed by SIGPIPE (141), as
    `ww cat` and kubo end, and nothing on stderr."""
    import subprocess

    from tests.conftest import HANG, WW

    big = tmp_path / "huge.bin"
    big.write_bytes(os.urandom(4 << 20))  # far more than a pipe holds
    path = run_ww("export", str(big)).stdout.strip()
    shell = f"{subprocess.list2cmdline([WW, 'import', path, '-o', '-'])} | head -c1 >/dev/null; " \
            'echo "${PIPESTATUS[0]}"'
    r = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=HANG)
    assert (r.stdout, r.stderr) == ("141\n", "")



def _in_a_mount_of_its_own(options, tmp_path, *ww_args, mnt=None):
    """`ww ARGS` in a mount namespace of its own (``unshare -m``; as a mapped root where
    the tests do not run as root) where ``{mnt}`` in ``ww_args`` (``mnt``, by default
    ``tmp_path/mnt``) is a tmpfs holding the file ``old``, remounted with ``options``
    (read-only, or tiny): a file system that fails, without touching the host's mounts.
    Returns ww's result and what the tmpfs holds after it (names and the content of
    ``old``), seen from inside the namespace."""
    import shutil
    import subprocess

    from tests.conftest import HANG, WW

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    mnt = mnt or tmp_path / "mnt"
    mnt.mkdir(parents=True)
    userns = [] if os.geteuid() == 0 else ["-r"]
    script = ('mount -t tmpfs tmpfs "$2" && printf "old\\n" > "$2/old" && '
              'mount -o "remount,$1" "$2" || exit 99; '
              'm="$2"; shift 2; "$@"; rc=$?; echo "--after--"; ls -A "$m"; cat "$m/old"; '
              'exit $rc')
    args = [a.replace("{mnt}", str(mnt)) for a in ww_args]
    r = subprocess.run([unshare, *userns, "-m", "sh", "-c", script, "sh", options, str(mnt),
                        WW, *args], capture_output=True, text=True, timeout=HANG)
    if r.returncode == 99 or "unshare:" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {r.stderr.strip()}")
    out, _, after = r.stdout.partition("--after--\n")
    return r, out, after


@pytest.mark.parametrize("force", [False, True])
def test_a_destination_that_cannot_be_written_is_named_never_the_temporary_copy(
        tmp_path, force):
    """A read-only file system: the error named the hidden temporary copy, a name the user
    never gave (`cannot write .out.ww-tmp-28d5ec0fbbfc: Read-only file system`)."""
    paths, _ = _sources(tmp_path)
    r, _, after = _in_a_mount_of_its_own("ro", tmp_path, "import", paths["file"], "-o",
                                         "{mnt}/out", *(["--force"] if force else []))
    assert r.returncode == 1, r
    assert r.stderr == f"ww: cannot write {tmp_path / 'mnt' / 'out'}: Read-only file system\n"
    assert after == "old\nold\n"


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_full_disk_half_way_leaves_the_old_destination_whole(tmp_path, kind):
    """A tmpfs of 64 KiB holding the old destination; --force with 700 KB of new content:
    one line naming the destination, the old file whole, no temporary copy left."""
    paths, _ = _sources(tmp_path)
    r, _, after = _in_a_mount_of_its_own("size=64k", tmp_path, "import", paths[kind], "-o",
                                         "{mnt}/old", "--force")
    assert r.returncode == 1, r
    assert r.stderr == f"ww: cannot write {tmp_path / 'mnt' / 'old'}: No space left on device\n"
    assert after == "old\nold\n"  # ls: only `old`; cat: its old content


@pytest.mark.parametrize("where", ["tree", "mount point"])
def test_force_never_replaces_a_mount_point_or_a_tree_with_a_mount_inside(tmp_path, where):
    """`--force` over a directory with a file system mounted in it removed the old tree
    through the mount: the mounted file system's files were deleted (a bind mount of a
    home directory, say), and the old tree stayed behind under a hidden temporary name,
    still holding the mount.  A mount point itself failed with "Device or resource busy".
    Both are refused now before anything is written, naming the mount."""
    paths, _ = _sources(tmp_path)
    tree = tmp_path / "tree"
    mnt = tree / "m"
    (tree / "own.txt").parent.mkdir()
    (tree / "own.txt").write_text("mine\n")
    dest = tree if where == "tree" else mnt
    r, _, after = _in_a_mount_of_its_own("rw", tmp_path, "import", paths["dir"], "-o",
                                         str(dest), "--force", mnt=mnt)
    assert r.returncode == 1, r
    said = ("has a file system mounted in it" if where == "tree" else "is a mount point")
    assert r.stderr.startswith(f"ww: {dest} {said}") and r.stderr.count("\n") == 1, r.stderr
    assert after == "old\nold\n"  # the mounted file system: whole
    assert (tree / "own.txt").read_text() == "mine\n" and _no_temps(tmp_path)


def test_removing_an_old_tree_never_enters_a_mount_that_appeared_in_it(tmp_path):
    """The removal of a replaced tree itself stops at a mount (one mounted after the check,
    say): the tree's own files go, the mounted file system's stay."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import HANG

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    tree = tmp_path / "tree"
    (tree / "sub" / "m").mkdir(parents=True)
    (tree / "sub" / "own.txt").write_text("mine\n")
    code = ("import os, sys\n"
            "from ww.ipfs.exporter import _remove_at\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "_remove_at(fd, 'tree')\n"
            "print(sorted(os.listdir(sys.argv[2])), open(sys.argv[2] + '/old').read())\n")
    script = ('mount -t tmpfs tmpfs "$1" && printf "old\\n" > "$1/old" || exit 99; '
              'exec "$2" -c "$3" "$4" "$1"')
    userns = [] if os.geteuid() == 0 else ["-r"]
    r = subprocess.run([unshare, *userns, "-m", "sh", "-c", script, "sh", str(tree / "sub" / "m"),
                        sys.executable, code, str(tmp_path)],
                       capture_output=True, text=True, timeout=HANG)
    if r.returncode == 99 or "unshare:" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['old'] old\n\n"
    assert not (tree / "sub" / "own.txt").exists()  # the tree's own files went


@pytest.mark.parametrize("where", ["blocks", "the repository", "inside", "above"])
def test_the_repository_read_from_is_never_the_destination(tmp_path, ww_home, monkeypatch,
                                                           where):
    """`ww import --force <cid> -o $WW_HOME/blocks` swapped the tree in for the block store
    and removed the old one: every block deleted while reading from it (`ww repo check`:
    missing blocks).  At, inside or above the repository: refused before any work."""
    paths, _ = _sources(tmp_path)  # stored in ww_home
    home = tmp_path / "home"
    home.mkdir()
    repo = ww_home
    if where == "above":  # a repository in ~/.ww, and -o ~ --force
        repo = ww_home.rename(home / ".ww")
        monkeypatch.setenv("WW_HOME", str(repo))
    dest = {"blocks": repo / "blocks", "the repository": repo, "inside": repo / "copy",
            "above": home}[where]
    before = snapshot(repo)
    r = run_ww("import", paths["dir"], "-o", str(dest), "--force")
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and "repository" in r.stderr, r.stderr
    assert snapshot(repo) == before
    assert run_ww("repo", "check").returncode == 0
