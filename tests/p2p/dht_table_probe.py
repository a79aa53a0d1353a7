"""Run inside the test's network namespace (tests/p2p/kubo_dht.py): a ww host's DHT learns the
network from BOOTSTRAP_ADDR (a FIND_NODE lookup of its own id), then forgets its bootstrap
peer, drops every connection, and looks up who provides CID: what its routing table held,
and what it found, as one JSON line.

``python dht_table_probe.py BOOTSTRAP_ADDR CID``"""

from __future__ import annotations

import json
import sys

from ww.core.cid import CID
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.routing import Dht

BOUND = 60.0  # a bound that only stops a hang


def main(bootstrap: str, cid: str) -> dict:
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[], serve_ww=False,
                announce=False, warn=lambda message: None)
    node.start()
    try:
        dht = Dht(node, [bootstrap])
        node.submit(dht.find_node, node.peer_id).result(BOUND)
        learned = len(dht.table)
        dht._bootstrap.clear()  # from now on the routing table is all it knows

        async def drop_all() -> int:
            network = node.host.get_network()
            peers = {c.muxed_conn.peer_id for c in network.get_connections()}
            for peer in peers:
                await network.close_peer(peer)
            return len(network.get_connections())

        left = node.submit(drop_all).result(BOUND)
        found = node.submit(dht.find_providers, CID.parse(cid), 5).result(BOUND)
        return {"learned": learned, "connections_left": left,
                "providers": [p.id for p in found]}
    finally:
        node.stop()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
