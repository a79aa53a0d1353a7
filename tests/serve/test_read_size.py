"""How `ww daemon`'s HTTP server reads its sockets (the rate itself: benchmarks/daemon.py)."""

from __future__ import annotations

import trio

from ww.serve import server


def test_hypercorn_reads_a_connection_in_pieces_of_read_size():
    """hypercorn's own 64 KiB reads made a large `add` cost twice `ww export`'s CPU time."""
    from hypercorn.trio import tcp_server

    stop = trio.Event()
    stop.set()
    trio.run(server.serve, [], stop)
    assert tcp_server.MAX_RECV > 64 * 1024
    assert tcp_server.MAX_RECV == server.READ_SIZE
