"""Build tests/cxx/cell.c++ and tests/cxx/lane_peer.c++ with g++ against Debian's libcapnp-dev,
libsodium and the schemas `ww schema` prints: for tests/cxx/test_cxx_cell.py and
benchmarks/p2p.py (no pytest here).  lane_peer links the lane's own C connection,
src/ww/p2p/_native/conn.c, compiled with gcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELL_SOURCE = HERE / "cell.c++"
PEER_SOURCE = HERE / "lane_peer.c++"
CONN_SOURCE = HERE.parent.parent / "src" / "ww" / "p2p" / "_native" / "conn.c"
CXX = ["g++", "-std=c++17", "-O1", f"-I{HERE}"]
LIBS = ["-lcapnp-rpc", "-lcapnp", "-lkj-async", "-lkj", "-lsodium"]


def missing_tools() -> list[str]:
    """What the build needs and this machine lacks (empty: nothing)."""
    missing = [tool for tool in ("capnp", "capnpc-c++", "g++", "gcc") if shutil.which(tool) is None]
    return missing + [h for h in ("/usr/include/capnp/rpc-twoparty.h", "/usr/include/sodium.h")
                      if not Path(h).exists()]


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}:\n{r.stderr}")


def _program(build: Path, ww: str, name: str, sources: list[str]) -> Path:
    """``name`` built in the directory ``build`` (made if need be) from ``sources`` and the
    schemas of ``ww`` (the `ww` program to ask for `ww schema`), unless already there.  The
    binary appears whole or not at all; the caller keeps two builds of one directory from
    overlapping."""
    program = build / name
    if program.exists():
        return program
    if missing := missing_tools():
        raise RuntimeError(f"missing {', '.join(missing)}: './dev test' installs capnproto, "
                           "libcapnp-dev and libsodium-dev")
    build.mkdir(parents=True, exist_ok=True)
    schema = subprocess.run([ww, "schema"], capture_output=True, text=True, check=True,
                            timeout=300).stdout.strip()
    _run(["capnp", "compile", "-oc++", f"-I{schema}", f"--src-prefix={schema}",
          f"{schema}/cell.capnp", f"{schema}/ipfs.capnp"], build)
    _run([*CXX, "-I.", "-o", f"{name}.part", *sources, "cell.capnp.c++", "ipfs.capnp.c++",
          *LIBS], build)
    (build / f"{name}.part").rename(program)
    return program


def build_cell(build: Path, ww: str) -> Path:
    """The cell (tests/cxx/cell.c++), built in ``build`` as :func:`_program` says."""
    return _program(build, ww, "cell", [str(CELL_SOURCE)])


def build_lane_peer(build: Path, ww: str) -> Path:
    """The remote peer with no Python in it (tests/cxx/lane_peer.c++), built in ``build`` as
    :func:`_program` says, with the lane's conn.c compiled by gcc."""
    if not (build / "lane_peer").exists() and not missing_tools():
        build.mkdir(parents=True, exist_ok=True)
        _run(["gcc", "-std=gnu11", "-O2", "-c", "-o", "conn.o", str(CONN_SOURCE)], build)
    return _program(build, ww, "lane_peer", [str(PEER_SOURCE), "conn.o"])
