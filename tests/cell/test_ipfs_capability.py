"""The IPFS capability end to end: real jailed cells, the real embedded node in $WW_HOME."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import HANG, run_ww

HELLO_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def export(path) -> str:
    r = run_ww("export", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1
    return r.stdout.strip()


def test_cell_adds_data_and_the_host_reads_it_back_with_ww_import(make_cell, tmp_path):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            print(s.ipfs.add(b"hello world\\n"))
            print(s.ipfs.add(bytes(range(256)) * 5000))  # several chunks
    """)
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    small, big = r.stdout.split()
    assert small == HELLO_CID  # byte-compatible with kubo
    out = tmp_path / "out.bin"
    r = run_ww("import", f"/ipfs/{big}", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == bytes(range(256)) * 5000


def test_cell_reads_a_file_the_host_exported_with_offsets(make_cell, tmp_path):
    data = os.urandom(3 * 262144 + 17)
    (tmp_path / "data.bin").write_bytes(data)
    path = export(tmp_path / "data.bin")
    cell = make_cell(f"""
        import hashlib, ww.cell
        with ww.cell.session() as s:
            whole = s.ipfs.cat("{path}")
            print(hashlib.sha256(whole).hexdigest(), len(whole))
            print(s.ipfs.cat("{path}", offset=262140, length=10).hex())
            print(len(b"".join(s.ipfs.cat_stream("{path}", offset=5))))
    """)
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    digest, size, middle, tail = r.stdout.split()
    import hashlib

    assert (digest, int(size)) == (hashlib.sha256(data).hexdigest(), len(data))
    assert middle == data[262140:262150].hex()
    assert int(tail) == len(data) - 5


def test_ls_stat_resolve_pins_and_offline_network_calls(make_cell, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    root = export(tree)
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            ipfs = s.ipfs
            print([(e.name, e.type.value, e.size) for e in ipfs.ls("{root}")])
            st = ipfs.stat("{root}/sub")
            print(st.type.value, [l.name for l in st.links], st.cumulative_size > 0)
            b = ipfs.resolve("{root}/sub/b.txt")
            print(ipfs.cat(b).decode().strip())
            cid = ipfs.add(b"pin me", pin=False)
            print(cid in ipfs.pins())
            ipfs.pin(cid)
            print(cid in ipfs.pins())
            ipfs.unpin(cid)
            print(cid in ipfs.pins())
            print(ipfs.id().id.startswith("12D3KooW"), ipfs.peers())
            try:
                ipfs.connect("/ip4/127.0.0.1/tcp/4001")
            except ww.cell.RemoteError as e:
                print("connect refused:", "/p2p/<peer id>" in str(e))  # no peer id given
    """)
    r = run_ww("run", "--with-ipfs", "--allow-dial", "127.0.0.1", cell)  # loopback: allowed
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "[('a.txt', 'file', 6), ('sub', 'directory', 0)]",
        "directory ['b.txt'] True",
        "beta",
        "False",
        "True",
        "False",
        "True []",
        "connect refused: True",
    ]


def test_cid_version_1_from_a_cell_matches_ww_export(make_cell, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    r = run_ww("export", "--cid-version", "1", str(tmp_path / "f"))
    expected = r.stdout.strip().removeprefix("/ipfs/")
    (tmp_path / "payload").write_bytes(data)
    cell = make_cell("""
        import sys, ww.cell
        with ww.cell.session() as s:
            print(s.ipfs.add(open(0, "rb"), cid_version=1))
    """)
    with open(tmp_path / "payload", "rb") as stdin:
        r = run_ww("run", "--with-ipfs", cell, stdin=stdin)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected
    assert expected.startswith("bafy")


def _outcomes(make_cell, paths: list[str], methods: str = "cat") -> list[str]:
    """A line for each of a cell's IPFS ``methods`` on each of ``paths``: ``ok``, or
    ``error: <the error>``; no traceback anywhere."""
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            for path in {paths!r}:
                for method in {methods.split()!r}:
                    try:
                        getattr(s.ipfs, method)(path)
                        print("ok")
                    except ww.cell.RemoteError as e:
                        print("error:", e)
    """)
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r.stdout.splitlines()


def test_ipfs_errors_reach_the_cell_as_one_line(make_cell):
    lines = _outcomes(make_cell, ["/ipfs/not-a-cid", f"/ipfs/{HELLO_CID}/child",
                                  f"/ipfs/{HELLO_CID}"])
    assert len(lines) == 3
    assert all(line.startswith("error: ") for line in lines), lines


def test_ipfs_not_granted_is_a_clear_error(make_cell):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            s.ipfs.cat("/ipfs/x")
    """)
    r = run_ww("run", "--with-console", cell)
    assert r.returncode == 65
    assert "'ipfs' capability was not granted" in r.stderr and "--with-ipfs" in r.stderr


def test_unreachable_kubo_is_one_line_and_exit_1():
    r = run_ww("run", "--with-ipfs", "--ipfs", "/ip4/127.0.0.1/tcp/9/http", "/bin/true")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1
    assert "127.0.0.1" in r.stderr


STREAM_CELL = """
import hashlib, sys, ww.cell
size = int(sys.argv[1])
block = bytes(range(256)) * 4096  # 1 MiB
def pieces():
    for _ in range(size // len(block)):
        yield block
with ww.cell.session() as s:
    cid = s.ipfs.add(pieces())
    h = hashlib.sha256()
    n = 0
    for piece in s.ipfs.cat_stream(cid):
        h.update(piece)
        n += len(piece)
    expected = hashlib.sha256()
    for piece in pieces():
        expected.update(piece)
    print(n, h.hexdigest() == expected.hexdigest())
"""

MEASURE = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(r.stderr)
print(r.returncode, r.stdout.strip(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_streaming_a_large_file_keeps_the_hosts_memory_flat(make_cell):
    """256 MiB in and out of a cell: the host never holds more than a few chunks."""
    size = 256 * 1024 * 1024
    cell = make_cell(STREAM_CELL)
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable.replace("python", "ww")
         if False else str(__import__("pathlib").Path(sys.executable).with_name("ww")),
         "run", "--with-ipfs", cell, str(size)],
        capture_output=True, text=True, timeout=300,
    )
    status, moved, same, max_rss_kib = r.stdout.split()
    assert status == "0", r.stderr
    assert (int(moved), same) == (size, "True")
    # The largest process (host or cell) stayed far below the file's size.
    assert int(max_rss_kib) < 160 * 1024, max_rss_kib


def test_run_ipfs_path_fetches_once_into_a_verified_cache(tmp_path, ww_home):
    prog = tmp_path / "prog.sh"
    prog.write_text('#!/bin/sh\necho "from ipfs: $*"\n')
    prog.chmod(0o644)  # not executable on the host: the cache marks it so
    path = export(prog)
    r = run_ww("run", path, "one", "--two")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from ipfs: one --two\n"
    cid = path.removeprefix("/ipfs/")
    cached = ww_home / "exec-cache" / cid
    assert cached.is_file() and os.access(cached, os.X_OK)
    # Remove the content from the repository: a second run must not need to fetch.
    assert run_ww("import", path, str(tmp_path / "copy")).returncode == 0
    subprocess.run([sys.executable, "-c",
                    "from ww.ipfs.node import EmbeddedNode; n = EmbeddedNode();"
                    f"n.unpin('{cid}'); n.gc()"], check=True, timeout=HANG)
    assert run_ww("import", path, str(tmp_path / "gone")).returncode != 0
    r = run_ww("run", path, "again")
    assert r.stdout == "from ipfs: again\n", r.stderr


def test_program_added_with_raw_leaves_is_not_fetched_again(tmp_path, ww_home):
    prog = tmp_path / "big.sh"
    prog.write_text("#!/bin/sh\necho big\n" + "#" * 300_000 + "\n")  # several chunks
    r = run_ww("export", "--raw-leaves", str(prog))
    path = r.stdout.strip()
    assert run_ww("run", path).stdout == "big\n"
    cached = ww_home / "exec-cache" / path.removeprefix("/ipfs/")
    first = cached.stat()
    assert run_ww("run", path).stdout == "big\n"
    again = cached.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_tampered_cache_entry_is_not_run(tmp_path, ww_home):
    prog = tmp_path / "prog.sh"
    prog.write_text("#!/bin/sh\necho genuine\n")
    path = export(prog)
    assert run_ww("run", path).stdout == "genuine\n"
    cached = ww_home / "exec-cache" / path.removeprefix("/ipfs/")
    cached.chmod(0o755)
    cached.write_text("#!/bin/sh\necho tampered\n")
    r = run_ww("run", path)
    assert r.stdout == "genuine\n", r.stderr  # fetched again from the repository


@pytest.mark.parametrize(
    ("target", "code"),
    [("/ipfs/{missing}", 127), ("/ipfs/{dir}", 126), ("/ipfs/not-a-cid", 2), ("/ipfs/", 2),
     ("/ipfs/{dir}/nope", 127)],
)
def test_run_ipfs_path_errors(tmp_path, target, code):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    directory = export(tmp_path / "d").removeprefix("/ipfs/")
    missing = "QmYGdxCPhGbc9JY2RR3Sjg1cKb2H41WRvMxLQo8AmowyT5"  # valid, never added here
    r = run_ww("run", target.format(missing=missing, dir=directory))
    assert r.returncode == code, r
    assert len(r.stderr.strip().splitlines()) == 1


def test_hamts_no_importer_writes_reach_the_cell_as_one_line(make_cell, ww_home):
    """A path whose names each lie 63 HAMT sub-shards down (a cell can add such blocks), and a
    HAMT hashed otherwise than murmur3: a cell's `cat`, `ls` and `stat` of them fail with one
    line each, having read a bounded count of blocks (before: the path's 2,560 sub-shards
    read and the file served; the other HAMT walked whole for each name looked up)."""
    from tests.ipfs.test_content_attacks import _node_block, _path_of_chains, _store
    from ww.ipfs import EmbeddedNode, dagpb, unixfs

    blocks: list = []
    chains = _path_of_chains(blocks, 40, 63)
    other = _node_block(blocks, [dagpb.PBLink(blocks[0][0], b"00a", 3)], unixfs.UnixFSData(
        unixfs.DataType.HAMT_SHARD, data=b"\x01", hash_type=0x23, fanout=256))
    with EmbeddedNode() as node:
        _store(node, blocks)
    lines = _outcomes(make_cell, [chains, f"/ipfs/{other}/a"], "cat ls stat")
    assert len(lines) == 6, lines
    assert all("a path through HAMTs of more than 1024 + 4 sub-shards a name (1096 read for "
               "18 names)" in line for line in lines[:3]), lines
    assert all(f"{other}: a HAMT shard of hash type 35, where only murmur3 (0x22) is "
               "supported" in line for line in lines[3:]), lines
