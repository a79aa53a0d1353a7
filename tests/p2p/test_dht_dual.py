"""kubo's dual DHT in ww (ww.p2p.routing.DualDht): a LAN DHT (``/ipfs/lan/kad/1.0.0``) and a
WAN DHT (``/ipfs/kad/1.0.0``), each with its own routing table, scope and bounds; lookups
on both merged, announcements on both.

The wire test runs ww hosts over real sockets in a network namespace the test creates
(tests/p2p/dht_dual.py); no public address may be dialled, so there the hosts use a
test-only scope (``TEST_ONLY_SCOPES``) in which a loopback range stands for the internet.
The rules for choosing a DHT are checked here with the real scopes, on hosts that are
never started (nothing is dialled)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.p2p.kubo_dht import script_in_namespace
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.routing import LAN_PROTOCOL, WAN_PROTOCOL, DualDht

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def _node(listen: list[str]) -> Node:
    """A host that is never started: it listens nowhere and dials nobody."""
    return Node(Identity.from_private_key(PrivateKey.generate()), listen=listen,
                serve_ww=False, announce=False, warn=lambda message: None)


def test_bootstrap_peers_go_to_the_dht_of_their_scope() -> None:
    """A private or loopback bootstrap address goes to the LAN DHT, a public one to the WAN
    DHT (kubo's query filters), one without an IP to both."""
    lan = [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}", f"/ip4/192.168.1.2/tcp/4001/p2p/{PEER}",
           f"/ip6/fd00::1/tcp/4001/p2p/{PEER}"]
    wan = [f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}", f"/ip6/2606:4700::1/tcp/4001/p2p/{PEER}"]
    named = [f"/dns4/bootstrap.example/tcp/4001/p2p/{PEER}"]
    dual = DualDht(_node([]), lan + wan + named)
    assert dual.lan._bootstrap == lan + named
    assert dual.wan._bootstrap == wan + named
    assert (dual.lan.protocol, dual.wan.protocol) == (LAN_PROTOCOL, WAN_PROTOCOL)
    assert dual.lan.table is not dual.wan.table


@pytest.mark.parametrize(("listen", "served"), [
    (["/ip4/127.0.0.1/tcp/0"], [LAN_PROTOCOL]),
    (["/ip4/192.168.1.2/tcp/4001"], [LAN_PROTOCOL]),
    (["/ip4/0.0.0.0/tcp/4001"], [LAN_PROTOCOL]),  # no address named: not public
    (["/ip4/127.0.0.1/tcp/0", "/ip4/1.2.3.4/tcp/4001"], [LAN_PROTOCOL, WAN_PROTOCOL]),
    (["/ip6/2606:4700::1/tcp/4001"], [LAN_PROTOCOL, WAN_PROTOCOL]),
])
def test_a_dht_server_serves_the_wan_dht_only_on_a_public_listen_address(
        listen: list[str], served: list[str]) -> None:
    """``--routing dhtserver``: the LAN DHT answers others always; the WAN DHT only when the
    host is told to listen on a public address (kubo's WAN DHT serves only when it believes
    itself publicly reachable).  A client (``dht``) serves neither."""
    node = _node(listen)
    dual = DualDht(node, server=True)
    assert [p for p in node.protocols if "kad" in p] == served
    assert (dual.lan.server, dual.wan.server) == (True, WAN_PROTOCOL in served)
    assert (dual.wan.providers is None) == (WAN_PROTOCOL not in served)
    client = _node(listen)
    DualDht(client)
    assert [p for p in client.protocols if "kad" in p] == []


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    yield script_in_namespace(tmp_path_factory.mktemp("dual"), "tests/p2p/dht_dual.py")


def test_each_dht_serves_and_keeps_the_peers_of_its_scope(wire: dict) -> None:
    """A server on a LAN address serves only the LAN protocol, one on a (stand-in) public
    address both; an asker bootstrapping from both keeps each in the table of its scope, and
    each server was asked only on the protocol of its scope."""
    ids = wire["ids"]
    assert wire["served"] == {"lan_server": [LAN_PROTOCOL],
                              "wan_server": [LAN_PROTOCOL, WAN_PROTOCOL]}
    assert wire["asker_tables"] == {"lan": [ids["lan_server"]], "wan": [ids["wan_server"]]}, \
        _stats(wire)
    answered = wire["servers_answered"]
    assert answered["lan_server"]["lan"] > 0 and answered["lan_server"]["wan"] == 0
    assert answered["wan_server"]["wan"] > 0 and answered["wan_server"]["lan"] == 0


def test_announcements_go_to_each_dht_the_host_has_an_address_for(wire: dict) -> None:
    """A host on the LAN only announces on the LAN DHT, one on the (stand-in) internet only
    on the WAN DHT, one on both on both; each server keeps the records of its DHT."""
    told = wire["told"]
    assert told["p_lan"]["total"] == 1 and told["p_lan"]["wan_rpcs"] == 0
    assert told["p_wan"]["total"] == 1 and told["p_wan"]["lan_rpcs"] == 0
    assert told["p_both"]["total"] == 2
    assert told["p_both"]["lan_rpcs"] > 0 and told["p_both"]["wan_rpcs"] > 0
    ids = wire["ids"]
    assert wire["records"]["lan_server"] == {"lan": [ids["p_lan"]], "wan": [],
                                             "shared": [ids["p_both"]]}
    assert wire["records"]["wan_server"] == {"lan": [], "wan": [ids["p_wan"]],
                                             "shared": [ids["p_both"]]}


def test_lookups_ask_both_dhts_and_merge_what_they_find(wire: dict) -> None:
    """A provider known only to the LAN DHT and one known only to the WAN DHT are both
    found, each at the addresses of its DHT's scope; a provider both name is returned once,
    with the addresses of both; asked for one provider, one is returned."""
    ids, addrs, found = wire["ids"], wire["addrs"], wire["found"]
    assert found["lan"] == [{"id": ids["p_lan"], "addrs": addrs["p_lan"]}]
    assert found["wan"] == [{"id": ids["p_wan"], "addrs": addrs["p_wan"]}]
    assert found["shared"] == [{"id": ids["p_both"], "addrs": sorted(addrs["p_both"])}]
    assert wire["found_limit_1"] == [ids["p_both"]]
    assert wire["find_peer_wan_only"] == addrs["p_wan"], _stats(wire)
    assert wire["find_peer_lan_only"] == addrs["p_lan"]


def test_the_first_useful_answer_ends_a_lookup_on_both(wire: dict) -> None:
    """The WAN DHT's only peer holds every request; the LAN DHT finds the peer id looked up,
    and the one provider asked for: each dual lookup returns that and cancels the WAN
    request (which waiting for both would have seen fail after its 10 s)."""
    stall, ids, addrs = wire["stall"], wire["ids"], wire["addrs"]
    assert stall["find_peer"] == addrs["p_lan"]
    assert stall["find_peer_wan"]["rpcs"] == 1 and stall["find_peer_wan"]["failed"] == 0
    assert stall["find_providers"] == [ids["p_lan"]]
    assert stall["find_providers_wan"]["rpcs"] == 2
    assert stall["find_providers_wan"]["failed"] == 0


def test_each_dht_holds_its_own_lookup_bound(wire: dict) -> None:
    """A peer flooding both protocols with new closer peers: each DHT's lookup stops at its
    bound of peers contacted, neither taking the other's."""
    flood = wire["flood"]
    assert flood["found"] == []
    assert flood["lan"]["rpcs"] == flood["bound"] and flood["wan"]["rpcs"] == flood["bound"]
    assert flood["lan"]["dropped_addrs"] == 0 and flood["wan"]["dropped_addrs"] == 0


def test_a_peer_reached_over_the_internet_cannot_claim_a_place_in_the_lan_dht(
        tmp_path) -> None:
    """(found by attack) A peer the host reached at its public address claims, in identify, a
    LAN address too, and speaks the LAN DHT protocol (tests/p2p/dht_lan_intruder.py): the LAN
    DHT took it as one of its peers by that claim, asked it, and dialled the LAN addresses it
    named (an internal service at 127.0.0.77 was connected to four times) and returned them
    as a provider -- the internal network probed from outside, whatever ``--allow-dial``
    opened to LAN peers.  Now a connected peer belongs to the DHT whose scope its connection
    is in (kubo's routing table filters): the LAN DHT never asks it."""
    out = script_in_namespace(tmp_path, "tests/p2p/dht_lan_intruder.py")
    assert out["connected_over"] == ["127.0.2.9"]  # the "public" address
    assert out["probed"] == []
    assert out["providers"] == []
    assert out["lan_stats"]["rpcs"] == 0


def _stats(wire: dict) -> str:
    """What each side counted (requests, failures, answers), for a failure's message."""
    return f"asker {wire.get('asker_stats')}; servers answered {wire.get('servers_answered')}"
