"""Attacks on the DHT (ww.p2p.routing) by a hostile peer, each once a finding: the state a
server keeps for others, the routing table a lookup keeps, the streams a peer may hold.  Real
ww libp2p hosts on 127.0.0.1 where the wire matters; the tables alone for the bounds."""

from __future__ import annotations

from ww.p2p.routing import ProviderStore


def test_one_peer_cannot_fill_the_provider_store_and_lock_everyone_out() -> None:
    """A peer (or a few sybil ids) announcing a record for each of 10 000 random keys used to
    fill the store for 48 h: every other provider was refused.  When full, a newcomer's
    record takes the room of a record of the peer holding the most, so one peer can hold no
    more than its share; the hog itself gains nothing by adding more."""
    now = [0.0]
    store = ProviderStore(ttl=100.0, per_key=20, total=100, clock=lambda: now[0])
    for i in range(100):
        assert store.add(b"junk%d" % i, b"hog", [])
    assert len(store) == 100
    assert not store.add(b"junk-more", b"hog", [])  # the hog holds the most: refused
    for honest in (b"alice", b"bob", b"carol"):
        now[0] += 1.0
        assert store.add(b"real", honest, [])  # refused by the old store
    assert sorted(p for p, _ in store.get(b"real")) == [b"alice", b"bob", b"carol"]
    assert len(store) == 100  # still bounded
    # sybils: 4 ids of 25 records each fill it; an honest newcomer still gets in
    store = ProviderStore(ttl=100.0, per_key=20, total=100, clock=lambda: now[0])
    for i in range(100):
        assert store.add(b"k%d" % i, b"sybil%d" % (i % 4), [])
    assert store.add(b"real", b"alice", []) and len(store) == 100
    assert [p for p, _ in store.get(b"real")] == [b"alice"]
    # records of a key that gives way to newer ones leave no count behind
    now[0] += 200.0  # everything expired
    assert store.add(b"x", b"alice", []) and len(store) == 1
