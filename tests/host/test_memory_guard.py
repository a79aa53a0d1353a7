"""The memory guard of `ww run` (``ww.host.supervisor.RPC_MEMORY_BUDGET``) is a backstop: what
a cell, or the remote peers its export serves, can make the host hold is bounded where it is
held, and the guard must stay above those bounds added up (each byte counted twice: a byte
held may have a copy on its way), or peers that fill several at once cut the cell off while
every bound holds (docs/security.md)."""

from __future__ import annotations

from ww.caps import ipfs
from ww.host import answers, supervisor, wire
from ww.p2p import bounds


def test_the_guard_is_above_twice_the_bounds_a_cell_and_its_peers_can_fill() -> None:
    held = (wire.FLOW_LIMIT + answers.ANSWER_LIMIT + ipfs.READ_BUFFERS + ipfs.WRITE_BUFFERS
            + bounds.BUDGET + bounds.ANSWER_BUDGET)
    assert held == 144 << 20  # the sum supervisor.py's comment gives
    assert supervisor.RPC_MEMORY_BUDGET >= 2 * held
