"""Run inside the test's network namespace (tests/p2p/kubo_dht.py): a fresh ww libp2p host asks
BOOTSTRAP_ADDR, and no other peer, who provides CID; prints the peer ids as one JSON line.

``python dht_ask.py BOOTSTRAP_ADDR CID``"""

from __future__ import annotations

import json
import sys

from ww.core.cid import CID
from ww.core.identity import Identity, PrivateKey
from ww.p2p.host import Node
from ww.p2p.routing import Dht

BOUND = 60.0  # a bound that only stops a hang


def main(bootstrap: str, cid: str) -> list[str]:
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[], serve_ww=False,
                announce=False, warn=lambda message: None)
    node.start()
    try:
        dht = Dht(node, [bootstrap], max_contacted=1)
        return [p.id for p in node.submit(dht.find_providers, CID.parse(cid), 5).result(BOUND)]
    finally:
        node.stop()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
