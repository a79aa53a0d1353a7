"""A hostile Bitswap peer for tests and benchmarks: it sends crafted wants and reads nothing.

Built from ww's own pieces: a :class:`ww.p2p.host.Node` (real TCP + Noise + Yamux on
127.0.0.1) with its own node key, and :func:`ww.ipfs.bitswap.frame` for the messages.  It
serves `/ipfs/bitswap/1.2.0` only to take the streams the target opens for its replies, and
never reads them, so the target's replies back up against Yamux's window.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from ww.core.identity import load_or_create
from ww.ipfs import bitswap
from ww.ipfs.bitswap import Message, WantEntry, WantType
from ww.p2p.host import Node


def want_blocks(cids: list[bytes], send_dont_have: bool = True) -> bytes:
    """One framed message: a want-block for each of ``cids``, in order (repeats kept)."""
    return bitswap.frame(Message(wants=[WantEntry(c, 1, want_type=WantType.BLOCK,
                                                  send_dont_have=send_dont_have)
                                        for c in cids]))


class Flooder:
    """A libp2p peer that writes Bitswap messages to a target and never reads its replies."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.node = Node(load_or_create(home), listen=[], serve_ww=False, announce=False,
                         warn=lambda message: None,
                         handlers={bitswap.PROTOCOL: self._never_read})
        self.node.start()

    async def _never_read(self, stream: Any) -> None:
        import trio

        await trio.sleep_forever()  # hold the stream open, unread, until we stop

    def connect(self, addr: str) -> str:
        """Dial ``addr`` (…/p2p/<peer id>); returns the peer id."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))

        async def dial() -> None:
            await self.node.dial(info)

        self.node.submit(dial).result(30)
        return str(info.peer_id)

    def send(self, peer: str, frames: list[bytes]) -> concurrent.futures.Future[Any]:
        """Write ``frames`` on one new stream to ``peer``, in the background.

        The future ends when every frame is written; if the target stops reading (as it
        should once our wants fill its ledger), it never does."""
        from libp2p.peer.id import ID

        async def write() -> None:
            stream = await self.node.host.new_stream(ID.from_base58(peer), [bitswap.PROTOCOL])
            for data in frames:
                await stream.write(data)

        return self.node.submit(write)

    def close(self) -> None:
        self.node.stop()
