"""A real C++ cell, built here with g++ against the schemas `ww schema` prints, under `ww run`.

It proves that docs/protocol.md is enough to write a cell in another language: the anonymous
and the signed login (libsodium signs), the console, named fds, IPFS add with many writes in
flight and cat, a denial with its documented text and exit status, a `Service` exported on
/ww/0.1.0 and called from `ww call` and from another cell through two hosts.  And that a
remote peer with no Python in it (tests/cxx/lane_peer.c++: the lane's C connection and C++
Cap'n Proto, benchmarks/p2p.py's "C++ peer" rows) reaches a cell's export, over the lane or
over `/noise` as any libp2p peer would, and is refused where it should be.  (The page's own
example, compiled with the page's own command, is run by tests/test_doc_blocks.py.)  Needs
Debian's capnproto, libcapnp-dev and libsodium-dev, which `./dev test` installs; the build is
tests/cxx/build.py's, which benchmarks/p2p.py uses too.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, host_env, run_ww
from tests.cxx.build import build_cell, build_lane_peer
from tests.p2p.conftest import EXPORTER, LOOPBACK, Host, ww_call
from ww.core.identity import PublicKey

HERE = Path(__file__).resolve().parent
PROTOCOL_MD = HERE.parent.parent / "docs" / "protocol.md"


def _built(tmp_path_factory, build) -> str:
    """``build`` (tests/cxx/build.py's) run once per test run: pytest-xdist's workers share one
    build directory of this run, where the first builds under a lock and the others wait."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's own, the parent of every worker's base
    with open(shared / "cxx-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return str(build(shared / "cxx-build", WW))
        except RuntimeError as e:
            pytest.fail(str(e))


@pytest.fixture(scope="session")
def cxx_cell(tmp_path_factory) -> str:
    """tests/cxx/cell.c++, built once per test run."""
    return _built(tmp_path_factory, build_cell)


@pytest.fixture(scope="session")
def lane_peer(tmp_path_factory) -> str:
    """tests/cxx/lane_peer.c++, built once per test run."""
    return _built(tmp_path_factory, build_lane_peer)


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


@pytest.fixture
def start_host(tmp_path) -> Iterator:
    """Real `ww run` hosts, each with a $WW_HOME (so a peer id) of its own; the first line of
    the cell's stdout is the host's `.addr`.  Stopped at the end (stdin closed, then waited)."""
    started: list[Host] = []

    def start(name: str, *args: str) -> Host:
        home = tmp_path / f"home-{name}"
        home.mkdir()
        host = Host(subprocess.Popen([WW, "run", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=host_env(WW_HOME=str(home))))
        started.append(host)
        host.addr = host.readline()
        return host

    yield start
    for host in started:
        host.stop()


def _cxx_exporter(start_host, cxx_cell) -> Host:
    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, cxx_cell, "export")
    assert b.addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in b.addr
    return b


def _cxx_caller(start_host, cxx_cell, addr: str) -> dict:
    """Host A's C++ cell dialing ``addr``: 100 calls one by one, 100 with 8 in flight."""
    a = start_host("a", "--with-p2p", "--listen", LOOPBACK, "--allow-dial", "127.0.0.0/8",
                   cxx_cell, "call", addr, "100", "8")
    status, err = a.stop()
    assert status == 0, err
    return json.loads(a.addr)  # the one line it printed


def test_a_cxx_cells_export_is_called_from_ww_call(start_host, cxx_cell):
    b = _cxx_exporter(start_host, cxx_cell)
    r = ww_call(b.addr, "echo", "hello", "--not-a-flag", "world")
    assert (r.returncode, r.stdout) == (0, "hello --not-a-flag world\n"), r.stderr
    r = ww_call(b.addr, "echo")
    assert (r.returncode, r.stdout) == (0, "\n"), r.stderr
    r = ww_call(b.addr, "nope")
    assert r.returncode == 1
    assert r.stderr.strip() == "ww: remote error: unknown method 'nope' (try echo)"
    assert b.stop()[0] == 0  # stdin ended: the cell and its host exit


def test_a_cxx_cell_calls_a_python_cells_export_through_two_hosts(start_host, cxx_cell,
                                                                  tmp_path):
    exporter = tmp_path / "exporter.py"
    exporter.write_text("#!/usr/bin/env python3\n" + textwrap.dedent(EXPORTER).lstrip("\n"))
    exporter.chmod(0o755)
    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, str(exporter))
    got = _cxx_caller(start_host, cxx_cell, b.addr)
    # every answer checked: `echo hello from C++`, then 50 + 2 * 100 `echo`s answered ""
    assert (got["echo"], got["answers"]) == ("hello from C++", 251)


def test_a_cxx_cell_calls_a_cxx_cells_export_through_two_hosts(start_host, cxx_cell):
    b = _cxx_exporter(start_host, cxx_cell)
    got = _cxx_caller(start_host, cxx_cell, b.addr)
    assert (got["echo"], got["answers"]) == ("hello from C++", 251)
    assert set(got) >= {"median_us", "p99_us", "sequential_per_s", "pipelined_per_s"}


@pytest.mark.parametrize("args, status, line", [
    (["call", "/ip4/127.0.0.1/tcp/1", "0", "8"], 2,
     "cell: usage: cell call ADDR N INFLIGHT (N, INFLIGHT: whole numbers from 1)"),
    (["export"], 65, "cell: p2p not granted (ww run --with-p2p)"),
])
def test_the_p2p_modes_refuse_bad_arguments_and_a_missing_p2p(cxx_cell, args, status, line):
    r = run_ww("run", cxx_cell, *args, stdin=subprocess.DEVNULL, timeout=HANG)
    assert r.returncode == status
    assert line in r.stderr.splitlines()


def _lane_peer(lane_peer: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([lane_peer, *args], capture_output=True, text=True, timeout=HANG,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("security", ["lane", "noise"])
def test_a_peer_with_no_python_calls_a_cxx_cells_export(start_host, cxx_cell, lane_peer,
                                                        security):
    b = _cxx_exporter(start_host, cxx_cell)
    r = _lane_peer(lane_peer, *(["--noise"] if security == "noise" else []), b.addr, "100", "8")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    # every answer checked: `echo hello from C++`, then 50 + 2 * 100 `echo`s answered ""
    assert (got["echo"], got["answers"]) == ("hello from C++", 251)
    assert b.stop()[0] == 0


def test_a_peer_with_no_python_calls_a_python_cells_export(start_host, lane_peer, tmp_path):
    exporter = tmp_path / "exporter.py"
    exporter.write_text("#!/usr/bin/env python3\n" + textwrap.dedent(EXPORTER).lstrip("\n"))
    exporter.chmod(0o755)
    b = start_host("b", "--with-p2p", "--listen", LOOPBACK, str(exporter))
    r = _lane_peer(lane_peer, b.addr, "100", "8")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["answers"] == 251


def test_a_peer_with_no_python_checks_whom_it_reached(start_host, cxx_cell, lane_peer):
    b = _cxx_exporter(start_host, cxx_cell)
    someone_else = PublicKey(bytes(range(32))).peer_id
    r = _lane_peer(lane_peer, b.addr.rsplit("/", 1)[0] + "/" + someone_else, "1", "1")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.splitlines() == ["lane_peer: noise: peer is not the one dialed"]


@pytest.mark.parametrize("args", [
    ["/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWMWBUACYhwKLqRfSLCfRwwZefXDMtt6PQT3ueEJKxRfj9", "1", "1"],
    ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWMWBUACYhwKLqRfSLCfRwwZefXDMtt6PQT3ueEJKxRfj9", "0", "1"],
    ["/ip4/127.0.0.1/tcp/4001", "1", "1"],
])
def test_a_peer_with_no_python_refuses_bad_arguments_and_any_address_off_loopback(lane_peer,
                                                                                   args):
    r = _lane_peer(lane_peer, *args)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "lane_peer: usage: lane_peer [--noise] /ip4/127.x.x.x/tcp/PORT/p2p/PEERID N INFLIGHT"]
