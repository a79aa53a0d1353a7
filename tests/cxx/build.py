"""Build tests/cxx/cell.c++ with g++ against Debian's libcapnp-dev, libsodium and the schemas
`ww schema` prints: for tests/cxx/test_cxx_cell.py and benchmarks/p2p.py (no pytest here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CELL_SOURCE = Path(__file__).resolve().parent / "cell.c++"
CXX = ["g++", "-std=c++17", "-O1"]
LIBS = ["-lcapnp-rpc", "-lcapnp", "-lkj-async", "-lkj", "-lsodium"]


def missing_tools() -> list[str]:
    """What the build needs and this machine lacks (empty: nothing)."""
    missing = [tool for tool in ("capnp", "capnpc-c++", "g++") if shutil.which(tool) is None]
    return missing + [h for h in ("/usr/include/capnp/rpc-twoparty.h", "/usr/include/sodium.h")
                      if not Path(h).exists()]


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}:\n{r.stderr}")


def build_cell(build: Path, ww: str) -> Path:
    """The cell, built in the directory ``build`` (made if need be) unless already there,
    with the schemas of ``ww`` (the `ww` program to ask for `ww schema`).  The binary appears
    whole or not at all; the caller keeps two builds of one directory from overlapping."""
    cell = build / "cell"
    if cell.exists():
        return cell
    if missing := missing_tools():
        raise RuntimeError(f"missing {', '.join(missing)}: './dev test' installs capnproto, "
                           "libcapnp-dev and libsodium-dev")
    build.mkdir(parents=True, exist_ok=True)
    schema = subprocess.run([ww, "schema"], capture_output=True, text=True, check=True,
                            timeout=300).stdout.strip()
    _run(["capnp", "compile", "-oc++", f"-I{schema}", f"--src-prefix={schema}",
          f"{schema}/cell.capnp", f"{schema}/ipfs.capnp"], build)
    _run([*CXX, "-I.", "-o", "cell.part", str(CELL_SOURCE), "cell.capnp.c++",
          "ipfs.capnp.c++", *LIBS], build)
    (build / "cell.part").rename(cell)
    return cell
