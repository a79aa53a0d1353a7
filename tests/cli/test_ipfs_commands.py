"""`ww export`, `ww import` and `ww idgen` as a user runs them."""

from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import run_ww

HELLO_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
EMPTY_DIR_CID = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


def make_tree(root):
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "ünïcode name.txt").write_text("unicode\n")
    (root / "sub" / "big.bin").write_bytes(os.urandom(600_000))
    (root / "sub" / "deeper" / "c").write_text("gamma\n")
    os.symlink("a.txt", root / "link")
    return root


def snapshot(root):
    """Every path under root with its kind and content, to compare trees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", None)
            else:
                out[rel] = ("file", open(p, "rb").read())
    return out


def test_export_prints_the_ipfs_path_and_a_newline(tmp_path):
    (tmp_path / "hello").write_text("hello world\n")
    (tmp_path / "empty").mkdir()
    assert run_ww("export", str(tmp_path / "hello")).stdout == f"/ipfs/{HELLO_CID}\n"
    assert run_ww("export", str(tmp_path / "empty")).stdout == f"/ipfs/{EMPTY_DIR_CID}\n"


def test_export_and_import_round_trip_a_tree(tmp_path):
    src = make_tree(tmp_path / "src")
    r = run_ww("export", str(src))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = run_ww("import", r.stdout.strip(), str(out))
    assert r.returncode == 0, r.stderr
    assert snapshot(out) == snapshot(src)


def test_import_defaults_to_the_current_directory_and_x_marks_executable(tmp_path):
    (tmp_path / "tool").write_text("#!/bin/sh\necho tool\n")
    path = run_ww("export", str(tmp_path / "tool")).stdout.strip()
    work = tmp_path / "work"
    work.mkdir()
    r = run_ww("import", path + "", "-x", cwd=work)
    assert r.returncode == 0, r.stderr
    written = work / path.removeprefix("/ipfs/")
    assert written.read_text() == "#!/bin/sh\necho tool\n"
    assert written.stat().st_mode & stat.S_IXUSR
    r = run_ww("import", path, str(work / "named"))
    assert not (work / "named").stat().st_mode & stat.S_IXUSR


def test_car_export_and_import_into_a_fresh_repository(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src")
    car = tmp_path / "tree.car"
    r = run_ww("export", "--car", str(car), str(src))
    assert r.returncode == 0, r.stderr
    assert car.stat().st_size > 600_000
    # --car writes the CAR instead of storing: the repository does not have the tree.
    assert run_ww("import", r.stdout.strip(), str(tmp_path / "not-here")).returncode != 0
    assert not (tmp_path / "not-here").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setenv("WW_HOME", str(tmp_path / "other-home"))  # a repository without it
    out = tmp_path / "out"
    r = run_ww("import", str(car), str(out))
    assert r.returncode == 0, r.stderr
    assert snapshot(out) == snapshot(src)


def test_corrupt_car_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(10_000))
    car = tmp_path / "f.car"
    assert run_ww("export", "--car", str(car), str(tmp_path / "f")).returncode == 0
    data = bytearray(car.read_bytes())
    data[-100] ^= 0xFF  # flip a byte inside the last block
    car.write_bytes(bytes(data))
    out = tmp_path / "out"
    r = run_ww("import", str(car), str(out))
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("ww: ")
    assert not out.exists()


@pytest.mark.parametrize(
    "source",
    ["/ipfs/not-a-cid", "QmYGdxCPhGbc9JY2RR3Sjg1cKb2H41WRvMxLQo8AmowyT5", "/ipns/x",
     f"/ipfs/{HELLO_CID}/child"],
)
def test_bad_import_source_is_one_line_nonzero_and_writes_nothing(tmp_path, source):
    (tmp_path / "hello").write_text("hello world\n")
    run_ww("export", str(tmp_path / "hello"))
    out = tmp_path / "out"
    r = run_ww("import", source, str(out))
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_export_of_a_missing_path_is_a_usage_error(tmp_path):
    r = run_ww("export", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1


def test_idgen_prints_a_base58_libp2p_ed25519_key_and_raw_with_raw(tmp_path):
    from ww.core.identity import parse_private_key

    r = run_ww("idgen")
    assert r.returncode == 0
    text = r.stdout.strip()
    key = parse_private_key(text)
    assert key.peer_id.startswith("12D3KooW")
    assert run_ww("idgen").stdout.strip() != text  # fresh every time
    raw = run_ww("idgen", "--raw", text=False).stdout
    assert len(raw) == 68 and raw[:4] == b"\x08\x01\x12\x40"
    assert parse_private_key(raw).peer_id.startswith("12D3KooW")


def test_export_skips_hidden_entries_unless_asked_as_ipfs_add_does(tmp_path):
    with_hidden = tmp_path / "with"
    (with_hidden / ".git").mkdir(parents=True)
    (with_hidden / ".git" / "HEAD").write_text("ref\n")
    (with_hidden / ".env").write_text("SECRET=1\n")
    (with_hidden / "visible.txt").write_text("shown\n")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "visible.txt").write_text("shown\n")
    default = run_ww("export", str(with_hidden)).stdout
    assert default == run_ww("export", str(plain)).stdout
    hidden = run_ww("export", "--hidden", str(with_hidden)).stdout
    assert hidden != default
    out = tmp_path / "out"
    assert run_ww("import", hidden.strip(), str(out)).returncode == 0
    assert (out / ".env").read_text() == "SECRET=1\n"
    assert (out / ".git" / "HEAD").read_text() == "ref\n"


@pytest.mark.parametrize("where", ["missing-dir/out.car", "."])
def test_unwritable_car_destination_is_a_usage_error_before_any_work(tmp_path, where):
    (tmp_path / "f").write_text("x")
    r = run_ww("export", "--car", str(tmp_path / where), str(tmp_path / "f"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--car" in r.stderr


@pytest.mark.parametrize("command", [["export", "."], ["import", "/ipfs/x"],
                                     ["run", "/bin/true"]])
def test_malformed_ipfs_address_is_a_usage_error(command):
    r = run_ww(command[0], "--ipfs", "garbage", *command[1:])
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--ipfs" in r.stderr


def _blocks_in(home):
    return sorted(p.name for p in (home / "blocks").rglob("*") if p.is_file())


def test_import_onto_a_symlink_is_refused_and_nothing_is_written(tmp_path, ww_home):
    """A symlink at the destination (what /dev/stdout is) is neither replaced nor written
    through: exit 1, one line naming it."""
    (tmp_path / "hello").write_text("hello world\n")
    cid = run_ww("export", str(tmp_path / "hello")).stdout.strip()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for target in (victim, "/proc/self/fd/1"):
        link = tmp_path / "link"
        os.symlink(target, link)
        r = run_ww("import", cid, str(link))
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            f"ww: {link} is a symlink; ww import never writes through or replaces one "
            "(remove it or choose another path)"
        ]
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert r.stdout == ""
        link.unlink()
    assert victim.read_text() == "precious\n"


def test_car_import_onto_a_symlink_stores_and_pins_nothing(tmp_path, ww_home):
    src = make_tree(tmp_path / "src")
    car = tmp_path / "tree.car"
    assert run_ww("export", "--car", str(car), str(src)).returncode == 0
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    r = run_ww("import", str(car), str(tmp_path / "link"))
    assert r.returncode == 1 and "is a symlink" in r.stderr
    assert run_ww("repo", "check").returncode == 0
    assert _blocks_in(ww_home) == []
    assert list((ww_home / "pins" / "recursive").iterdir()) == []
    assert not (tmp_path / "elsewhere").exists()


def test_car_import_that_cannot_be_written_leaves_no_pin(tmp_path, ww_home):
    """A destination that cannot be written (its parent is a file) fails only when written:
    the CAR's blocks were stored, and are unpinned again, so the next gc removes them."""
    src = make_tree(tmp_path / "src")
    car = tmp_path / "tree.car"
    assert run_ww("export", "--car", str(car), str(src)).returncode == 0
    (tmp_path / "afile").write_text("not a directory\n")
    out = tmp_path / "afile" / "out"
    r = run_ww("import", str(car), str(out))
    assert r.returncode == 1, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"ww: cannot write {out.parent}: ")
    assert (tmp_path / "afile").read_text() == "not a directory\n"
    assert list((ww_home / "pins" / "recursive").iterdir()) == []
    assert _blocks_in(ww_home) != []
    assert run_ww("repo", "gc").returncode == 0
    assert _blocks_in(ww_home) == []
