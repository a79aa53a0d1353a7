"""kubo's own JavaScript RPC client (npm ``kubo-rpc-client``, which nobody here wrote) against
`ww daemon`: it adds a file, a directory and a CAR, cats, lists, pins and unpins, lists the
peers, measures the repository and collects its garbage, and every CID equals the one
`ww export` gives for the same content.

The client and its dependencies are installed by ``./dev test`` (``npm ci`` in
``tests/serve/js_rpc``, versions pinned by its package-lock.json)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HANG, run_ww

JS_RPC = Path(__file__).resolve().parent / "js_rpc"


def export(*args: str, home: Path) -> str:
    r = run_ww("export", *args, env={**os.environ, "WW_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1].removeprefix("/ipfs/")


def test_kubo_rpc_client_adds_cats_lists_pins_and_unpins_with_ww_exports_cids(
        daemon, tmp_path):
    if not shutil.which("node"):
        pytest.skip("node is not installed (Debian: nodejs)")
    if not (JS_RPC / "node_modules" / "kubo-rpc-client").is_dir():  # a broken set-up: fail
        pytest.fail(f"kubo-rpc-client is not installed: run `npm ci` in {JS_RPC} "
                    "(./dev test does)")
    data = os.urandom(3 * 262144 + 99)  # several chunks
    (tmp_path / "file.bin").write_bytes(data)
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>hi</h1>\n")
    (site / "css" / "a.css").write_text("h1 { color: red }\n")
    (site / "big.bin").write_bytes(os.urandom(300_000))
    # a CAR made elsewhere: `ww export --car` on a repository the daemon does not share
    elsewhere = tmp_path / "elsewhere"
    car_file = tmp_path / "tree.car"
    (tmp_path / "carred").mkdir()
    (tmp_path / "carred" / "note.txt").write_text("from a CAR\n")
    car_root = export("--car", str(car_file), str(tmp_path / "carred"), home=elsewhere)

    r = subprocess.run(["node", "client.mjs", daemon.url, str(tmp_path / "file.bin"),
                        str(site), str(car_file)], cwd=JS_RPC, capture_output=True, text=True,
                       timeout=HANG)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)

    reference = tmp_path / "reference"
    assert out["file"] == export(str(tmp_path / "file.bin"), home=reference)
    assert out["dir"] == export(str(site), home=reference)
    assert out["carRoots"] == [car_root]
    assert out["catSha256"] == hashlib.sha256(data).hexdigest()
    assert out["catPart"] == data[10:15].hex()
    listed = {e["name"]: e for e in out["ls"]}
    assert sorted(listed) == ["big.bin", "css", "index.html"]
    assert listed["css"]["type"] == "dir" and listed["big.bin"]["size"] == 300_000
    assert listed["index.html"]["cid"] == export(str(site / "index.html"), home=reference)
    assert (out["pinnedAfterAdd"], out["pinnedAfterRm"], out["pinnedAfterAdd2"]) == (
        True, False, True)
    assert out["id"] == daemon.peer_id
    assert out["peers"] == 0 and out["repoSize"] > len(data) and out["numObjects"] > 4
    # the file unpinned: gc removed its blocks, each named as kubo names a stored block
    from ww.core.cid import CID, RAW

    assert len(out["gc"]) >= 5 and all(c.startswith("bafkrei") for c in out["gc"])
    assert str(CID.v1(RAW, CID.parse(out["file"]).multihash)) in out["gc"]
    assert daemon.post("cat", out["file"])[0] == 500
    # the CAR's content is the daemon's now: read it back through the API
    status, _, body = daemon.post("cat", f"/ipfs/{car_root}/note.txt")
    assert (status, body) == (200, b"from a CAR\n")
    # and nothing was left half-written
    code, _ = daemon.stop()
    assert code == 0
    r = run_ww("repo", "check", env={**os.environ, "WW_HOME": str(daemon.home)})
    assert r.returncode == 0, r.stdout + r.stderr
