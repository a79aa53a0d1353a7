"""ww.core.fsutil.publish_new_file: a file complete or not at all, never over anything."""

from __future__ import annotations

import os
import stat

import pytest

from ww.core import fsutil


def test_a_symlink_planted_while_writing_is_not_replaced(tmp_path, monkeypatch):
    """The check is the rename itself (RENAME_NOREPLACE): what appears at the name between
    the write and the rename stays, and the temporary file goes."""
    dest = tmp_path / "cell.key"
    target = tmp_path / "elsewhere"
    write = fsutil.write_new_file

    def write_then_plant(path, parts, mode=0o444, sync=True):
        write(path, parts, mode, sync)
        dest.symlink_to(target)  # someone else, after our write, before our rename

    monkeypatch.setattr(fsutil, "write_new_file", write_then_plant)
    with pytest.raises(FileExistsError):
        fsutil.publish_new_file(dest, b"secret", 0o600)
    assert dest.is_symlink() and not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["cell.key"]


def test_the_mode_is_the_files_from_creation_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        fsutil.publish_new_file(tmp_path / "k", b"secret", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k").read_bytes() == b"secret"


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link-and-unlink"])
@pytest.mark.parametrize("kind", ["file", "directory"])
def test_rename_noreplace_takes_names_in_the_directory_fds_given(tmp_path, monkeypatch,
                                                                renameat2, kind):
    """With directory fds the names are taken there, wherever the directory's path now
    leads; where renameat2 is missing (the link-and-unlink fallback) alike; an entry at the
    new name is never replaced."""
    if not renameat2:
        monkeypatch.setattr(fsutil, "_renameat2", lambda: None)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").mkdir() if kind == "directory" else (a / "x").write_bytes(b"x")
    (b / "taken").write_bytes(b"kept")
    fa, fb = (os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in (a, b))
    try:
        a.rename(tmp_path / "a.moved")
        a.symlink_to(b)  # the path a now leads to b: the fds still name the directories
        with pytest.raises(FileExistsError):
            fsutil.rename_noreplace("x", "taken", src_dir_fd=fa, dst_dir_fd=fb)
        assert (b / "taken").read_bytes() == b"kept"
        fsutil.rename_noreplace("x", "y", src_dir_fd=fa, dst_dir_fd=fb)
    finally:
        os.close(fa)
        os.close(fb)
    assert sorted(os.listdir(tmp_path / "a.moved")) == []
    assert (b / "y").is_dir() == (kind == "directory")
    assert sorted(os.listdir(b)) == ["taken", "y"]


def test_a_concurrent_import_cleaning_the_directory_does_not_take_the_temporary_file(
        tmp_path, monkeypatch):
    """`ww idgen -o dir/cell.key` wrote `.cell.key.ww-tmp-<hex>`, the form of name `ww
    import` gives its own temporary copies, unlocked: an import into the same directory
    meanwhile took it for one a killed import left, and removed it (idgen then failed)."""
    from ww.ipfs import exporter

    dest = tmp_path / "cell.key"
    write = fsutil.write_new_file

    def write_then_an_import_cleans_up(path, parts, mode=0o444, sync=True):
        write(path, parts, mode, sync)
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            exporter._remove_stale_temps(fd)  # what `ww import` into tmp_path does first
        finally:
            os.close(fd)

    monkeypatch.setattr(fsutil, "write_new_file", write_then_an_import_cleans_up)
    fsutil.publish_new_file(dest, b"secret", 0o600)
    assert dest.read_bytes() == b"secret" and sorted(os.listdir(tmp_path)) == ["cell.key"]
