"""Attacks on `ww run --mdns` (ww.p2p.mdns) by a hostile host on the LAN: announcements that
use up what discovery may do in a run, or claim an honest peer's id.

The announcements reach :meth:`ww.p2p.mdns.Mdns._resolve` through a stand-in for zeroconf's
network lookup (:class:`StandInZeroconf`, named as such: multicast announcements from many
hosts cannot be made on one loopback here without a namespace per host); the dials are real,
from a real ww libp2p host to 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.mdns import MAX_PEERS, PREFIX, SERVICE, Mdns, _txt

pytest.importorskip("zeroconf")


class StandInZeroconf:
    """Stand-in for zeroconf's network: ``get_service_info`` answers with the TXT data the
    test gave for an instance name."""

    def __init__(self, texts: dict[str, bytes]) -> None:
        self.texts = texts

    def get_service_info(self, service: str, name: str, timeout: int) -> Any:
        from zeroconf import ServiceInfo

        return ServiceInfo(service, name, port=4001, properties=self.texts[name],
                           server="x.local.")


def _node() -> Node:
    return Node(Identity.from_private_key(PrivateKey.generate()),
                listen=["/ip4/127.0.0.1/tcp/0"], serve_ww=False, announce=False,
                warn=lambda message: None)


@pytest.fixture
def two() -> Iterator[tuple[Node, Node]]:
    made = [_node(), _node()]
    try:
        for node in made:
            node.start()
        yield made[0], made[1]
    finally:
        for node in made:
            node.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bogus_announcements_do_not_use_up_discovery_or_shadow_an_honest_peer(
        two: tuple[Node, Node]) -> None:
    """A LAN host announces 64 made-up peers at an address where nothing listens, and an
    honest peer's id at that address too.  The old host counted every peer it tried against
    its 64 a run, and tried each id once: after the flood, no peer announced later was ever
    dialed, and the honest peer, claimed first by the liar, never.  Now only a peer dialed
    is counted, and a peer announced again at other addresses is tried there."""
    victim, honest = two
    closed = _closed_port()
    texts: dict[str, bytes] = {}
    for i in range(MAX_PEERS):
        fake = PrivateKey.generate().peer_id
        texts[f"fake{i}.{SERVICE}"] = _txt([PREFIX + f"/ip4/127.0.0.1/tcp/{closed}/p2p/{fake}"
                                            .encode()])
    texts[f"claim.{SERVICE}"] = _txt([PREFIX + f"/ip4/127.0.0.1/tcp/{closed}/p2p/"
                                      f"{honest.peer_id}".encode()])
    texts[f"honest.{SERVICE}"] = _txt([PREFIX + honest.addrs[0].encode()])
    mdns = Mdns(victim)
    zc = StandInZeroconf(texts)
    for name in texts:  # in the order announced
        mdns._resolve(zc, name)
    assert mdns.found == [honest.peer_id]
