"""Reading back: cat with seeking, ls, stat, resolve, and get's atomic ww-import semantics."""

from __future__ import annotations

import os
import stat as stat_mod
from pathlib import Path

import pytest

from ww.core import multihash
from ww.core.cid import CID
from ww.ipfs import dagpb, unixfs
from ww.ipfs.api import (
    EntryType,
    IpfsError,
    NotAFileError,
    NotFoundError,
)
from ww.ipfs.importer import CHUNK_SIZE
from ww.ipfs.node import EmbeddedNode
from ww.ipfs.unixfs import hamt_hash

from .conftest import deterministic_bytes, make_tree

DATA = deterministic_bytes(10 * CHUNK_SIZE + 123)


@pytest.fixture
def big(node: EmbeddedNode) -> str:
    return node.add_stream([DATA])


def _leaf_cids(node: EmbeddedNode, root: str) -> list[CID]:
    return [link.cid for link in dagpb.decode(node.block(root)).links]


def _block_file(node: EmbeddedNode, cid: CID) -> Path:
    name = cid.multihash.hex()
    return node.repo_path / "blocks" / name[-3:-1] / name


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, None),
        (0, 0),
        (1, 5),
        (CHUNK_SIZE - 3, 6),
        (CHUNK_SIZE, CHUNK_SIZE),
        (3 * CHUNK_SIZE + 7, 5 * CHUNK_SIZE),
        (len(DATA) - 1, 10),
        (len(DATA), 10),
        (len(DATA) + 100, None),
        (5, 10**12),
    ],
)
def test_cat_returns_exactly_the_requested_range(
    node: EmbeddedNode, big: str, offset: int, length: int | None
) -> None:
    end = None if length is None else offset + length
    assert b"".join(node.cat(big, offset, length)) == DATA[offset:end]


def test_cat_seeks_without_reading_the_leaves_outside_the_range(
    node: EmbeddedNode, big: str
) -> None:
    leaves = _leaf_cids(node, big)
    for i, cid in enumerate(leaves):
        if i not in (4, 5):
            _block_file(node, cid).unlink()
    start = 4 * CHUNK_SIZE + 10
    assert b"".join(node.cat(big, start, CHUNK_SIZE)) == DATA[start : start + CHUNK_SIZE]
    with pytest.raises(NotFoundError, match="not in the local repository"):
        b"".join(node.cat(big))


def test_cat_streams_in_chunk_sized_pieces(node: EmbeddedNode, big: str) -> None:
    assert max(len(piece) for piece in node.cat(big)) <= CHUNK_SIZE


def test_cat_of_a_directory_or_symlink_raises_not_a_file(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root = node.add_path(make_tree(tmp_path / "t"))
    with pytest.raises(NotAFileError, match="is a directory"):
        node.cat(root)
    with pytest.raises(NotAFileError, match="is a symlink"):
        node.cat(f"{root}/link-relative")


def test_cat_of_unknown_content_raises_not_found(node: EmbeddedNode) -> None:
    with pytest.raises(NotFoundError):
        node.cat("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")


def test_ls_lists_entries_sorted_with_types_and_content_sizes(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root = node.add_path(make_tree(tmp_path / "t"))
    entries = {e.name: e for e in node.ls(f"/ipfs/{root}")}
    names = [e.name for e in node.ls(root)]
    assert names == sorted(names, key=lambda n: n.encode())
    assert entries["big.bin"].type is EntryType.FILE
    assert entries["big.bin"].size == 3 * CHUNK_SIZE + 5
    assert entries["a"].type is EntryType.DIRECTORY and entries["a"].size == 0
    assert entries["link-relative"].type is EntryType.SYMLINK
    assert entries["日本語.txt"].cid == node.resolve(f"{root}/日本語.txt")
    assert entries["empty.bin"].size == 0


def test_ls_of_a_file_describes_the_file_itself(node: EmbeddedNode, big: str) -> None:
    (entry,) = node.ls(big)
    assert (entry.name, entry.type, entry.size, entry.cid) == (big, EntryType.FILE, len(DATA), big)


def test_stat_cumulative_size_is_the_sum_of_every_block_in_the_dag(
    node: EmbeddedNode, big: str
) -> None:
    blocks = [node.block(big)] + [node.block(str(c)) for c in _leaf_cids(node, big)]
    st = node.stat(big)
    assert (st.type, st.size, st.links, st.target) == (EntryType.FILE, len(DATA), [], None)
    assert st.cumulative_size == sum(len(b) for b in blocks)
    hello = node.add_stream([b"hello world\n"])
    assert node.stat(hello).cumulative_size == 20  # kubo's `object stat` says 20


def test_stat_of_a_directory_lists_its_links_with_tsizes(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root = node.add_path(make_tree(tmp_path / "t"))
    st = node.stat(root)
    assert st.type is EntryType.DIRECTORY and st.size == 0
    assert st.cumulative_size == len(node.block(root)) + sum(link.size for link in st.links)
    by_name = {link.name: link for link in st.links}
    assert by_name["a"].size == node.stat(f"{root}/a").cumulative_size


def test_resolve_follows_names_including_unicode(node: EmbeddedNode, tmp_path: Path) -> None:
    root = node.add_path(make_tree(tmp_path / "t"))
    deep = node.resolve(f"/ipfs/{root}/a/b/c/deep.txt")
    assert b"".join(node.cat(deep)) == b"deep\n"
    assert b"".join(node.cat(f"{root}/émoji 🎉")).startswith(b"6 ")
    assert node.resolve(root) == root


def test_resolve_of_a_missing_name_or_through_a_file_raises_not_found(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root = node.add_path(make_tree(tmp_path / "t"))
    with pytest.raises(NotFoundError, match="no entry named 'nope'"):
        node.resolve(f"{root}/a/nope")
    with pytest.raises(NotFoundError, match="is a file"):
        node.resolve(f"{root}/a/one.txt/x")
    with pytest.raises(NotFoundError, match="is a symlink"):
        node.resolve(f"{root}/link-to-dir/one.txt")


def _snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def test_get_of_a_directory_extracts_into_a_new_destination_identically(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src")
    root = node.add_path(src)
    node.get(root, tmp_path / "out" / "nested")
    assert _snapshot(tmp_path / "out" / "nested") == _snapshot(src)
    assert os.readlink(tmp_path / "out" / "nested" / "link-dangling") == "does/not/exist"


def test_get_of_a_directory_into_an_existing_directory_adds_its_entries(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src")
    root = node.add_path(src)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_bytes(b"keep me")
    node.get(root, dest)
    snap = _snapshot(dest)
    assert snap.pop("mine.txt") == b"keep me"
    assert snap == _snapshot(src)
    assert [p.name for p in dest.iterdir() if p.name.startswith(".") and "ww-tmp" in p.name] == []


def test_get_refuses_to_merge_a_directory_over_an_existing_one_and_changes_nothing(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root = node.add_path(make_tree(tmp_path / "src"))
    dest = tmp_path / "dest"
    (dest / "a").mkdir(parents=True)
    before = _snapshot(dest)
    with pytest.raises(IpfsError, match="already exists"):
        node.get(root, dest)
    assert _snapshot(dest) == before
    assert sorted(p.name for p in dest.iterdir()) == ["a"]


def test_get_of_a_file_writes_dest_or_inside_an_existing_directory(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root = node.add_path(make_tree(tmp_path / "src"))
    node.get(f"{root}/a/one.txt", tmp_path / "single.txt")
    assert (tmp_path / "single.txt").read_bytes() == b"1\n"
    into = tmp_path / "into"
    into.mkdir()
    node.get(f"/ipfs/{root}/a/one.txt", into)
    assert (into / "one.txt").read_bytes() == b"1\n"
    hello = node.add_stream([b"hello world\n"])
    node.get(hello, into)
    assert (into / hello).read_bytes() == b"hello world\n"
    (tmp_path / "single.txt").write_bytes(b"old")
    node.get(f"{root}/a/b/c/deep.txt", tmp_path / "single.txt")
    assert (tmp_path / "single.txt").read_bytes() == b"deep\n"


def test_get_with_executable_marks_files_executable_and_without_it_does_not(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    cid = node.add_stream([b"#!/bin/sh\necho hi\n"])
    node.get(cid, tmp_path / "prog", executable=True)
    node.get(cid, tmp_path / "data")
    assert os.stat(tmp_path / "prog").st_mode & stat_mod.S_IXUSR
    assert not os.stat(tmp_path / "data").st_mode & stat_mod.S_IXUSR


def test_get_of_a_symlink_recreates_the_symlink(node: EmbeddedNode, tmp_path: Path) -> None:
    root = node.add_path(make_tree(tmp_path / "src"))
    node.get(f"{root}/link-absolute", tmp_path / "l")
    assert os.readlink(tmp_path / "l") == "/etc/hostname"


def test_get_leaves_nothing_behind_when_a_block_is_missing(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    (src / "z.bin").write_bytes(DATA)
    root = node.add_path(src)
    _block_file(node, _leaf_cids(node, node.resolve(f"{root}/z.bin"))[7]).unlink()
    out = tmp_path / "out"
    with pytest.raises(NotFoundError):
        node.get(root, out / "tree")
    with pytest.raises(NotFoundError):
        node.get(f"{root}/z.bin", out / "file")
    assert not (out / "tree").exists() and not (out / "file").exists()
    assert list(out.iterdir()) == []


def _put_node(node: EmbeddedNode, links: list[dagpb.PBLink], fs: unixfs.UnixFSData) -> CID:
    block = dagpb.encode(dagpb.PBNode(tuple(links), unixfs.encode(fs)))
    cid = CID.v1(0x70, multihash.sha256(block))
    node._blocks.put(cid, (block,))
    return cid


def test_hamt_sharded_directories_from_elsewhere_can_be_listed_resolved_and_fetched(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    a = CID.parse(node.add_stream([b"A\n"]))
    b = CID.parse(node.add_stream([b"B\n"]))
    ha, hb = hamt_hash(b"a.txt"), hamt_hash(b"b.txt")
    assert ha[0] != hb[0]
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22, fanout=256)
    inner = _put_node(node, [dagpb.PBLink(b, b"%02Xb.txt" % hb[1], 10)], shard)
    root = _put_node(
        node,
        [dagpb.PBLink(a, b"%02Xa.txt" % ha[0], 10), dagpb.PBLink(inner, b"%02X" % hb[0], 60)],
        shard,
    )
    assert sorted(e.name for e in node.ls(str(root))) == ["a.txt", "b.txt"]
    assert b"".join(node.cat(f"{root}/b.txt")) == b"B\n"
    assert b"".join(node.cat(f"{root}/a.txt")) == b"A\n"
    with pytest.raises(NotFoundError):
        node.resolve(f"{root}/c.txt")
    node.get(str(root), tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt", "b.txt"]


def test_get_refuses_directory_entries_that_would_escape_the_destination(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    a = CID.parse(node.add_stream([b"evil\n"]))
    root = _put_node(
        node,
        [dagpb.PBLink(a, b"..", 10)],
        unixfs.UnixFSData(unixfs.DataType.DIRECTORY),
    )
    with pytest.raises(IpfsError, match="unsafe"):
        node.get(str(root), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


# --- destinations that are symlinks or special files: never written through or replaced ---


def test_get_refuses_a_destination_that_is_a_symlink_and_changes_nothing(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    link = tmp_path / "link"
    os.symlink(victim, link)
    stdout_like = tmp_path / "stdout"
    os.symlink("/proc/self/fd/1", stdout_like)  # what /dev/stdout is
    cid = node.add_stream([b"new content\n"])
    for dest in (link, stdout_like):
        with pytest.raises(IpfsError, match=f"{dest} is a symlink"):
            node.get(cid, dest)
        assert dest.is_symlink()
    assert victim.read_bytes() == b"precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "repo", "stdout", "victim.txt"]


def test_get_refuses_a_symlink_to_a_directory_as_the_place_to_extract_into(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root = node.add_path(make_tree(tmp_path / "src"))
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / "link")
    with pytest.raises(IpfsError, match="is a symlink"):
        node.get(root, tmp_path / "link")
    with pytest.raises(IpfsError, match="is a symlink"):
        node.get(f"{root}/a/one.txt", tmp_path / "link")
    assert list(target.iterdir()) == []


def test_get_refuses_a_fifo_destination(node: EmbeddedNode, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cid = node.add_stream([b"x"])
    with pytest.raises(IpfsError, match="is a FIFO"):
        node.get(cid, fifo)
    assert stat_mod.S_ISFIFO(os.lstat(fifo).st_mode)


def test_get_never_replaces_a_symlink_inside_the_destination_directory(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    into = tmp_path / "into"
    into.mkdir()
    hello = node.add_stream([b"hello world\n"])
    os.symlink(victim, into / hello)  # a file lands at into/<cid>: a symlink is there
    with pytest.raises(IpfsError, match="is a symlink"):
        node.get(hello, into)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"new\n")
    os.symlink(victim, into / "a.txt")  # a directory's entry lands on a symlink
    with pytest.raises(IpfsError, match="a.txt is a symlink"):
        node.get(node.add_path(src), into)
    assert victim.read_bytes() == b"precious\n"
    assert (into / hello).is_symlink() and (into / "a.txt").is_symlink()
    assert sorted(p.name for p in into.iterdir()) == sorted([hello, "a.txt"])


def test_a_symlink_in_the_content_is_never_followed_by_a_later_entry(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    """``a -> <victim dir>`` and then ``a/passwd``: the second ``a`` must not write through the
    first, whichever way the DAG spells it (plain directory or HAMT shard)."""
    victim = tmp_path / "etc"
    victim.mkdir()
    link = CID.parse(node.add_path(_symlink_to(tmp_path, victim)))
    passwd = CID.parse(node.add_stream([b"root::0:0::/root:/bin/sh\n"]))
    directory = unixfs.UnixFSData(unixfs.DataType.DIRECTORY)
    inner = _put_node(node, [dagpb.PBLink(passwd, b"passwd", 30)], directory)
    plain = _put_node(
        node, [dagpb.PBLink(link, b"a", 10), dagpb.PBLink(inner, b"a", 90)], directory
    )
    index = hamt_hash(b"a")[0]
    shard = unixfs.UnixFSData(unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x22, fanout=256)
    sub = _put_node(
        node,
        [dagpb.PBLink(link, b"%02Xa" % 0, 10), dagpb.PBLink(inner, b"%02Xa" % 1, 90)],
        shard,
    )
    hamt = _put_node(node, [dagpb.PBLink(sub, b"%02X" % index, 100)], shard)
    for root in (plain, hamt):
        out = tmp_path / f"out-{root}"
        with pytest.raises(IpfsError, match="two entries named 'a'"):
            node.get(str(root), out)
        assert not out.exists()
    # and into an existing directory, where the symlink already sits from an earlier import
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(victim, dest / "a")
    with pytest.raises(IpfsError, match="a is a symlink"):
        node.get(str(_put_node(node, [dagpb.PBLink(inner, b"a", 90)], directory)), dest)
    assert list(victim.iterdir()) == []


def _symlink_to(tmp_path: Path, target: Path) -> Path:
    link = tmp_path / "a-link"
    os.symlink(target, link)
    return link


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_symlink_planted_while_writing_is_not_clobbered_by_the_rename(
    node: EmbeddedNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """The temp copy is renamed into place only if nothing appeared there meanwhile."""
    from ww.ipfs import exporter

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    dest = tmp_path / "dest"
    write_temp = exporter._write_temp

    def write_then_plant(*args, **kwargs):  # type: ignore[no-untyped-def]
        written = write_temp(*args, **kwargs)
        os.symlink(victim, dest)  # another process, between the check and the rename
        return written

    monkeypatch.setattr(exporter, "_write_temp", write_then_plant)
    root = node.add_path(make_tree(tmp_path / "src"))
    path = f"{root}/a/one.txt" if what == "file" else root
    with pytest.raises(IpfsError, match="appeared while importing"):
        node.get(path, dest)
    assert os.readlink(dest) == str(victim)
    assert victim.read_bytes() == b"precious\n"
    assert [p.name for p in tmp_path.iterdir() if "ww-tmp" in p.name] == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "no-exchange"])
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_parent_swapped_for_a_symlink_while_writing_moves_no_rename_elsewhere(
    node: EmbeddedNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str,
    exchange: bool,
) -> None:
    """`ww import --force` wrote its temp copy in dest's directory, then renamed and removed
    by path: with that directory swapped for a symlink meanwhile (by whoever may rename it),
    RENAME_EXCHANGE acted in the directory the symlink names, where a file planted at the
    temp's name (possible in a sticky /tmp) was swapped in for someone else's entry, which
    was then deleted (without RENAME_EXCHANGE: moved aside and deleted).  Everything now
    happens in the directory opened once: the import lands where it was written, the other
    directory is untouched."""
    from ww.ipfs import exporter

    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir()
    other.mkdir()
    (work / "out").write_bytes(b"old\n")
    (other / "out").write_bytes(b"someone else's\n")
    write_node = exporter._write_node
    planted: list[str] = []

    def write_then_swap_parent(getter, unixfs_node, dir_fd, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        write_node(getter, unixfs_node, dir_fd, name, *args, **kwargs)
        if name.startswith(".out.ww-tmp-"):
            (other / name).write_bytes(b"planted\n")
            planted.append(name)
            work.rename(tmp_path / "work.moved")
            os.symlink(other, work)

    monkeypatch.setattr(exporter, "_write_node", write_then_swap_parent)
    if not exchange:  # a file system without RENAME_EXCHANGE: moved aside, then in
        monkeypatch.setattr(exporter, "rename_exchange", lambda *args, **kwargs: False)
    root = node.add_path(make_tree(tmp_path / "src"))
    path = f"{root}/a/one.txt" if what == "file" else root
    node.get(path, work / "out", force=True)
    assert planted
    assert (other / "out").read_bytes() == b"someone else's\n"
    assert (other / planted[0]).read_bytes() == b"planted\n"
    landed = tmp_path / "work.moved" / "out"
    assert landed.is_dir() == (what == "directory")
    assert [p.name for p in (tmp_path / "work.moved").iterdir()] == ["out"]
