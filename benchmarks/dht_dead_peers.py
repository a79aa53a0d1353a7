"""How long DHT lookups take while dead peers sit in the routing table, lookup after lookup.

    .venv/bin/python benchmarks/dht_dead_peers.py [--dead 9] [--lookups 5]

Two ww libp2p hosts on 127.0.0.1, each on its trio thread: a DHT server and an asker whose
routing table holds the server (it answered a first lookup) and ``--dead`` peers that
answered once and have since stopped: each is a TCP socket that listens and never reads
(a stopped process: the kernel takes the connection, nothing answers), so each request to
it costs RPC_TIMEOUT (10 s) of its lookup.  The asker then runs ``--lookups`` FIND_NODE
lookups of random keys in a row; printed, for each: its time, how many of the dead peers
it contacted, how many are left in the table.  A peer leaves the table after
``MAX_FAILURES`` failed requests in a row over a connection (1 before wip/dhtflake); since
wip/dhtdead, a peer that cannot be dialled (here: no handshake within RPC_TIMEOUT) leaves
at its first failure (``dial_failure=removes``).  Adding the dead peers to the table
directly is the one stand-in (they would have entered it by answering).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dead", type=int, default=9)
    parser.add_argument("--lookups", type=int, default=5)
    args = parser.parse_args()

    import multiaddr
    from libp2p.peer.id import ID

    from ww.core.identity import Identity, PrivateKey
    from ww.p2p import routing
    from ww.p2p.host import Node
    from ww.p2p.routing import Dht, _Peer

    def node() -> Node:
        return Node(Identity.from_private_key(PrivateKey.generate()),
                    listen=["/ip4/127.0.0.1/tcp/0"], serve_ww=False, announce=False,
                    warn=lambda message: None)

    def new_id() -> ID:
        return ID.from_base58(Identity.from_private_key(PrivateKey.generate()).peer_id)

    server_node, asker_node = node(), node()
    dead_sockets = []
    try:
        Dht(server_node, server=True)
        server_node.start()
        asker_node.start()
        asker = Dht(asker_node, [server_node.addrs[0]])
        asker_node.submit(asker.find_node, new_id().to_base58()).result(60)
        dead = []
        for _ in range(args.dead):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)  # never accepted nor read: the kernel completes the handshake
            dead_sockets.append(sock)
            peer = new_id()
            port = sock.getsockname()[1]
            asker.table.add(_Peer(peer, [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]))
            dead.append(peer)
        failures = getattr(routing, "MAX_FAILURES", 1)
        at_once = failures == 1 or hasattr(routing, "DialFailed")
        print(f"MAX_FAILURES={failures} dial_failure={'removes' if at_once else 'counts'} "
              f"dead={args.dead} RPC_TIMEOUT={routing.RPC_TIMEOUT:g} "
              f"QUERY_TIMEOUT={routing.QUERY_TIMEOUT:g}")
        for n in range(args.lookups):
            failed = asker.stats["failed"]
            start = time.monotonic()
            found = asker_node.submit(asker.find_node, new_id().to_base58()).result(120)
            took = time.monotonic() - start
            left = sum(asker.table.get(p) is not None for p in dead)
            print(f"lookup {n + 1}: {took:5.1f} s, {asker.stats['failed'] - failed} dead "
                  f"contacted, {left} dead left in the table, {len(found)} answered",
                  flush=True)
    finally:
        for n in (asker_node, server_node):
            n.stop()
        for sock in dead_sockets:
            sock.close()


if __name__ == "__main__":
    main()
