"""Bitswap with Helia, a second IPFS implementation nobody here wrote.

The Helia node (tests/ipfs/js_helia/: helia 7's light core, js-libp2p 3 with TCP, Noise
and Yamux, @helia/bitswap 4) listens on 127.0.0.1 only, with no bootstrap list, no
discovery and no router but Bitswap: it reaches only the `ww` node the test tells it of.  It
is installed by ``./dev test`` (``npm ci`` in tests/ipfs/js_helia, versions pinned by its
package-lock.json); the test is skipped where node or the installed packages are missing.
The current Helia line wants Node.js 22; on Node.js 20 it runs with three
of its dependencies held at their previous major versions and ``Promise.withResolvers``
supplied (js_helia/node20.mjs), see docs/p2p.md ("Helia").
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG
from tests.ipfs.kubo_peer import _Lines
from ww.ipfs.node import EmbeddedNode
from ww.p2p import host_for_ipfs

HELIA = Path(__file__).resolve().parent / "js_helia"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


@pytest.fixture(scope="module")
def helia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Lines]:
    if not shutil.which("node") or not (HELIA / "node_modules" / "helia").is_dir():
        pytest.skip("the Helia peer is not installed: run ./dev test (it runs npm ci)")
    where = HELIA
    logs = tmp_path_factory.mktemp("helia")
    stderr = open(logs / "helia.stderr", "w")
    proc = subprocess.Popen(["node", "--import", "./node20.mjs", "helia_peer.mjs"], cwd=where,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            text=True)
    lines = _Lines(proc, "helia")
    try:
        ready = lines.ready()
        assert ready == {"ready": True}, (ready, (logs / "helia.stderr").read_text()[-2000:])
        yield lines
    finally:
        lines.close()
        stderr.close()


def _call(helia: _Lines, op: str, **args: object) -> dict:
    reply = helia.call(op, timeout=HANG, **args)
    assert "error" not in reply, reply
    return reply


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EmbeddedNode]:
    made = EmbeddedNode(tmp_path / "ww", new_host=host_for_ipfs())
    try:
        yield made
    finally:
        made.close()


def test_helia_fetches_from_ww(helia: _Lines, node: EmbeddedNode, tmp_path: Path) -> None:
    """ww adds a file of several blocks; Helia, told only ww's address, fetches it (its
    UnixFS reader checks every block against its CID)."""
    data = random.Random(6).randbytes(700 * 1024) + b"ww"
    (tmp_path / "mine.bin").write_bytes(data)
    addr = node.listen([LOOPBACK]).addresses[0]
    cid = node.add_path(tmp_path / "mine.bin")
    _call(helia, "dial", addr=addr)
    _call(helia, "cat", cid=cid, dest=str(tmp_path / "got.bin"), seconds=120)
    assert (tmp_path / "got.bin").read_bytes() == data
    assert node._net is not None
    assert node._net.stats()["resets_in"] == 0  # Helia's stream ends are no resets


def test_ww_fetches_from_helia(helia: _Lines, tmp_path: Path) -> None:
    """Helia adds a file; ww, given Helia's address as its one --peer, fetches every block."""
    data = random.Random(9).randbytes(600 * 1024) + b"helia"
    (tmp_path / "theirs.bin").write_bytes(data)
    cid = _call(helia, "add", path=str(tmp_path / "theirs.bin"))["cid"]
    addr = _call(helia, "id")["addrs"][0]
    node = EmbeddedNode(tmp_path / "ww", peers=[addr], new_host=host_for_ipfs())
    try:
        assert b"".join(node.cat(cid)) == data
        assert node._net is not None
        assert node._net.stats()["resets_in"] == 0  # Helia's stream ends are no resets
    finally:
        node.close()
