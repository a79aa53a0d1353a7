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
                         handlers={bitswap.PROTOCOL: self._on_stream})
        self.node.start()

    async def _on_stream(self, stream: Any) -> None:
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


class SlowReader(Flooder):
    """A peer that reads the target's replies slowly, ``step`` bytes every ``pause`` seconds,
    giving the target back window for each read as it goes (a peer behind a slow link), until
    :meth:`release` lets it read at full speed.  :attr:`blocks` holds the CIDs of the blocks
    received, each computed from its bytes; :attr:`broken` is set if the target reset or
    closed the stream before :attr:`expected` blocks arrived, :attr:`complete` once they
    have."""

    def __init__(self, home: Path, expected: int, step: int = 12 << 10,
                 pause: float = 0.25) -> None:
        import threading

        self.expected = expected
        self.step = step
        self.pause = pause
        self.blocks: set[Any] = set()
        self.received = 0  # bytes
        self.complete = threading.Event()
        self.broken = threading.Event()
        self._slow = True
        super().__init__(home)

    def release(self) -> None:
        self._slow = False

    async def _on_stream(self, stream: Any) -> None:
        import trio

        from ww.core import varint

        muxed = stream.muxed_stream
        muxed.target_recv_window = 0  # no window back but what each read gives (below)
        buf = bytearray()
        try:
            while len(self.blocks) < self.expected:
                data = await stream.read(self.step if self._slow else 1 << 20)
                if not data:
                    break
                self.received += len(data)
                buf += data
                async with muxed.window_lock:
                    muxed.recv_window += len(data)
                await muxed.send_window_update(len(data))
                while True:
                    try:
                        length, pos = varint.decode(buf, 0)
                    except varint.VarintError:
                        break
                    if len(buf) < pos + length:
                        break
                    msg = bitswap.decode(bytes(buf[pos:pos + length]))
                    del buf[:pos + length]
                    for prefix, block in msg.blocks:
                        self.blocks.add(bitswap.cid_from_block(prefix, block))
                if self._slow:
                    await trio.sleep(self.pause)
        except Exception:
            pass
        if len(self.blocks) >= self.expected:
            self.complete.set()
        else:
            self.broken.set()


class Freezer(Flooder):
    """A peer that stops reading its connection altogether once the target's first reply
    stream arrives: it opens that stream's window wide (:data:`WIDE`, so the target sends
    all it has), then holds its libp2p thread (a peer process stopped, or behind a link that
    went dead) until :meth:`thaw`.  It reads nothing of that first stream; later reply
    streams it reads, :attr:`blocks` holding the CIDs of the blocks they bring (each
    computed from its bytes)."""

    WIDE = 16 << 20

    def __init__(self, home: Path) -> None:
        import threading

        self.frozen = threading.Event()  # set as its thread stops
        self._thaw = threading.Event()
        self.streams = 0
        self.blocks: set[Any] = set()
        super().__init__(home)

    def thaw(self) -> None:
        self._thaw.set()

    async def _on_stream(self, stream: Any) -> None:
        import trio

        self.streams += 1
        if self.streams == 1:
            muxed = stream.muxed_stream
            async with muxed.window_lock:
                muxed.recv_window += self.WIDE
            await muxed.send_window_update(self.WIDE)  # written to the socket on return
            self.frozen.set()
            self._thaw.wait()  # the whole thread: no socket of this peer is read
            await trio.sleep_forever()
        reader = bitswap._Reader(stream)
        try:
            while (got := await reader.next()) is not None:
                for prefix, block in got[0].blocks:
                    self.blocks.add(bitswap.cid_from_block(prefix, block))
        except Exception:
            pass

    def close(self) -> None:
        self.thaw()
        super().close()
