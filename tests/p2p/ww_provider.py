"""Run inside the test's network namespace (tests/p2p/kubo_dht.py): an embedded node that adds
a file, announces it on kubo's LAN DHT (``--routing dht`` from BOOTSTRAP), disconnects from
every peer, prints one JSON line, and serves Bitswap until its stdin closes.

``python ww_provider.py WW_HOME BOOTSTRAP_ADDR FILE``"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ww.ipfs.node import EmbeddedNode
from ww.p2p import host_for_ipfs
from ww.p2p.routing import new_router


def main(home: str, bootstrap: str, path: str) -> None:
    node = EmbeddedNode(home, new_host=host_for_ipfs(), router=new_router([bootstrap]))
    try:
        info = node.listen(["/ip4/127.0.0.1/tcp/0"])
        cid = node.add_path(Path(path))
        told = node.provide(cid)
        for peer in node.peers():  # kubo must find us through the DHT, not a connection
            node.disconnect(peer.id)
        print(json.dumps({"cid": cid, "told": told, "id": info.id,
                          "peers_left": [p.id for p in node.peers()]}), flush=True)
        sys.stdin.read()
    finally:
        node.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
