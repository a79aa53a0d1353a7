"""A real C++ cell, built here with g++ against the schemas `ww schema` prints, under `ww run`.

It proves that docs/protocol.md is enough to write a cell in another language: the anonymous
and the signed login (libsodium signs), the console, named fds, IPFS add with many writes in
flight and cat, a denial with its documented text and exit status.  (The page's own example,
compiled with the page's own command, is run by tests/test_doc_blocks.py.)  Needs Debian's
capnproto, libcapnp-dev and libsodium-dev, which `./dev test` installs.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_ww

HERE = Path(__file__).resolve().parent
PROTOCOL_MD = HERE.parent.parent / "docs" / "protocol.md"
CXX = ["g++", "-std=c++17", "-O1"]
LIBS = ["-lcapnp-rpc", "-lcapnp", "-lkj-async", "-lkj", "-lsodium"]


def _tools_present() -> None:
    missing = [tool for tool in ("capnp", "capnpc-c++", "g++") if shutil.which(tool) is None]
    missing += [h for h in ("/usr/include/capnp/rpc-twoparty.h", "/usr/include/sodium.h")
                if not Path(h).exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: './dev test' installs capnproto, "
                    "libcapnp-dev and libsodium-dev")


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stderr}"


@pytest.fixture(scope="session")
def cxx_cell(tmp_path_factory) -> str:
    """tests/cxx/cell.c++ built once per test run: pytest-xdist's workers share one build
    directory of this run, where the first builds under a lock and the others wait for it."""
    _tools_present()
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's own, the parent of every worker's base
    build = shared / "cxx-build"
    with open(shared / "cxx-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build / "cell").exists():
            build.mkdir(exist_ok=True)
            schema = run_ww("schema").stdout.strip()
            _run(["capnp", "compile", "-oc++", f"-I{schema}", f"--src-prefix={schema}",
                  f"{schema}/cell.capnp", f"{schema}/ipfs.capnp"], build)
            _run([*CXX, "-I.", "-o", "cell.part", str(HERE / "cell.c++"), "cell.capnp.c++",
                  "ipfs.capnp.c++", *LIBS], build)
            (build / "cell.part").rename(build / "cell")  # whole, or not there
    return str(build / "cell")


def _docs_cxx_section() -> str:
    text = PROTOCOL_MD.read_text()
    start = text.index("## Writing a cell in C++")
    return text[start:text.index("\n## ", start + 1)]


def _block(section: str, lang: str) -> str:
    """The first fenced code block of ``section`` whose info string is ``lang``."""
    blocks: list[tuple[str, list[str]]] = []
    inside = False
    for line in section.splitlines(keepends=True):
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append((line[3:].strip(), []))
        elif inside:
            blocks[-1][1].append(line)
    return next("".join(body) for info, body in blocks if info == lang)


DENIAL_DOCUMENTED = _block(_docs_cxx_section(), "").strip()


def test_anonymous_login_and_the_console(cxx_cell):
    r = run_ww("run", "--with-console", cxx_cell, "anonymous")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "console\n"
    assert "[cell] hello from C++, anonymous\n" in r.stderr


def test_without_the_console_the_cell_exits_65(cxx_cell):
    r = run_ww("run", "--with-ipfs", cxx_cell, "anonymous")
    assert (r.returncode, r.stdout) == (65, "ipfs\n"), r.stderr


def test_signed_login_with_the_operators_key_is_that_peer(cxx_cell, keyfile):
    path, peer = keyfile
    r = run_ww("--json", "run", "--identity", path, "--allow", peer, "--with-console",
               cxx_cell, "signed")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "console\n"
    assert "[cell] hello from C++, signed\n" in r.stderr
    assert '"event":"login","cell":' in r.stderr and f'"peer":"{peer}"' in r.stderr


def test_signed_login_as_a_peer_the_policy_does_not_allow_fails_64(cxx_cell, keyfile):
    path, _ = keyfile
    from ww.core.identity import PrivateKey

    other = PrivateKey.generate().peer_id
    r = run_ww("run", "--identity", path, "--allow", other, "--with-console", cxx_cell, "signed")
    assert r.returncode == 64, r.stderr
    assert "ww: authentication failed: " in r.stderr


def test_a_named_fd(cxx_cell, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"named fd \x00 bytes\n")
    with notes.open("rb") as f:
        r = run_ww("run", "--fd", f"notes={f.fileno()}", cxx_cell, "fd", "notes",
                   pass_fds=(f.fileno(),))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "named fd \x00 bytes\n"


def test_ipfs_add_with_eight_writes_in_flight_gives_ww_exports_cid_and_cats_back(
        cxx_cell, tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(random.Random(10).randbytes(3_000_000))
    exported = run_ww("export", str(data))
    assert exported.returncode == 0, exported.stderr
    cid = exported.stdout.strip().removeprefix("/ipfs/")
    with data.open("rb") as f:
        r = run_ww("run", "--with-ipfs", "--fd", f"data={f.fileno()}", cxx_cell,
                   "add", "data", str(64 * 1024), "8", pass_fds=(f.fileno(),), timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [cid, "in flight 8", "cat 3000000 same"]


def test_a_denial_is_the_documented_text_and_exit_65(cxx_cell):
    assert DENIAL_DOCUMENTED.startswith("remote exception: capability denied: ipfs: add: ")
    r = run_ww("run", "--with-ipfs", "--ipfs-read-only", cxx_cell, "deny")
    assert r.returncode == 65
    assert (r.stdout, r.stderr) == ("", DENIAL_DOCUMENTED + "\n")
