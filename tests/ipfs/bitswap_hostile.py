"""Hostile Bitswap providers for tests: a peer that lies about blocks, or is slow to give them.

Built from ww's own pieces, as :mod:`tests.ipfs.bitswap_flood` is: a :class:`ww.p2p.host.Node`
(real TCP + Noise + Yamux, listening on 127.0.0.1) with its own node key, speaking
`/ipfs/bitswap/1.2.0`.  It reads the wants the target writes on the stream the target opens,
and answers on a stream of its own, as a Bitswap peer does, according to its ``behaviour``:

lies (each reply sent as soon as a want-block arrives)
    ``wrong``        the wanted CID's prefix with bytes that are not the block
    ``unasked``      a block nobody asked for (its own bytes, a raw CID)
    ``huge``         a block of almost :data:`ww.ipfs.bitswap.MAX_MESSAGE` bytes of junk
    ``oversize``     a message whose length is over :data:`ww.ipfs.bitswap.MAX_MESSAGE`
    ``other_hash``   a prefix claiming a hash function ww does not take (blake2b-256)
    ``other_codec``  the wanted CID's digest length and hash, another codec, wrong bytes
floods (one message of almost :data:`ww.ipfs.bitswap.MAX_MESSAGE` bytes of two-byte fields)
    ``flood_blocks``      two million empty blocks
    ``flood_presences``   two million empty block presences
    ``flood_wantlists``   a million wantlist fields of one empty entry each
slow
    ``silent``       takes the wants, says nothing
    ``have``         answers HAVE, never sends the block
    ``late``         answers DONT_HAVE only once the want is cancelled (it has moved on)
    ``stall``        sends the first half of a message carrying a block, then nothing
    ``gives_up``     sends the first half of a message carrying a block, then resets the
                     stream (a server that gave up a reply the target did not take)

Every want-block it is sent is recorded in :attr:`wants` (binary CIDs, in order), every lie it
told in :attr:`lies`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ww.core import varint
from ww.core.cid import CID, RAW
from ww.core.identity import load_or_create
from ww.core.multihash import sha256
from ww.ipfs import bitswap
from ww.ipfs.bitswap import Message, Presence, WantType
from ww.p2p.host import Node

LIES = ("wrong", "unasked", "huge", "oversize", "other_hash", "other_codec")
FLOODS = ("flood_blocks", "flood_presences", "flood_wantlists")
SLOW = ("silent", "have", "late", "stall")
GIVES_UP = "gives_up"
_FLOOD_FIELDS = {"flood_blocks": b"\x12\x00", "flood_presences": b"\x22\x00",
                 "flood_wantlists": b"\x0a\x02\x0a\x00"}
BLAKE2B_256 = 0xB220
DAG_CBOR = 0x71  # a codec ww does not take


def lie_for(cid: bytes) -> bytes:
    """The wrong bytes a ``wrong`` liar sends for ``cid`` (a test looks for them on disk)."""
    return b"not the block " + cid


class HostilePeer:
    """A Bitswap provider on 127.0.0.1 that behaves as ``behaviour`` says (module docstring)."""

    def __init__(self, home: Path, behaviour: str) -> None:
        assert behaviour in (*LIES, *FLOODS, *SLOW, GIVES_UP), behaviour
        self.behaviour = behaviour
        self.wants: list[bytes] = []
        self.cancels: list[bytes] = []
        self.lies = 0
        self.asked = threading.Event()  # set at the first want-block
        self._held: list[Any] = []  # streams a ``stall`` peer keeps open
        home.mkdir(parents=True, exist_ok=True)
        self.node = Node(load_or_create(home), listen=["/ip4/127.0.0.1/tcp/0"], serve_ww=False,
                         announce=False, warn=lambda message: None,
                         handlers={bitswap.PROTOCOL: self._read})
        self.node.start()

    @property
    def addr(self) -> str:
        """Where it listens, ``/ip4/127.0.0.1/tcp/<port>/p2p/<peer id>``."""
        return self.node.addrs[0]

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    async def _read(self, stream: Any) -> None:
        """The target's stream: its wants (and cancels), answered on a stream of ours."""
        peer = stream.muxed_conn.peer_id
        reader = bitswap._Reader(stream)
        try:
            while (got := await reader.next()) is not None:
                msg, _ = got
                wanted = []
                for entry in msg.wants:
                    if entry.cancel:
                        self.cancels.append(entry.cid)
                        if self.behaviour == "late":
                            await self._send(peer, Message(presences=[
                                (entry.cid, Presence.DONT_HAVE)]))
                    elif entry.want_type == WantType.BLOCK:
                        self.wants.append(entry.cid)
                        wanted.append(entry.cid)
                if wanted:
                    self.asked.set()
                    await self._answer(peer, wanted)
        except Exception:
            pass  # the target reset the stream, or went away

    async def _answer(self, peer: Any, wanted: list[bytes]) -> None:
        kind = self.behaviour
        if kind in ("silent", "late"):
            return
        if kind in FLOODS:
            self.lies += 1
            field = _FLOOD_FIELDS[kind]
            body = field * ((bitswap.MAX_MESSAGE - 16) // len(field))
            await self._write(peer, varint.encode(len(body)) + body)
            return
        if kind == "have":
            await self._send(peer, Message(presences=[(c, Presence.HAVE) for c in wanted]))
            return
        for raw in wanted:
            cid, _ = CID.decode(raw)
            self.lies += kind in LIES
            if kind == "wrong":
                block = (bitswap.prefix_of(cid), lie_for(raw))
            elif kind == "unasked":
                data = b"nobody asked for this " + raw
                block = (bitswap.prefix_of(CID.v1(RAW, sha256(data))), data)
            elif kind == "huge":
                block = (bitswap.prefix_of(cid), b"\0" * (bitswap.MAX_MESSAGE - 1024))
            elif kind == "other_hash":
                prefix = b"".join(varint.encode(v) for v in (1, RAW, BLAKE2B_256, 32))
                block = (prefix, lie_for(raw))
            elif kind == "other_codec":
                prefix = b"".join(varint.encode(v) for v in (1, DAG_CBOR, 0x12, 32))
                block = (prefix, lie_for(raw))
            elif kind == "oversize":
                await self._write(peer, varint.encode(bitswap.MAX_MESSAGE + 1)
                                  + b"\0" * (bitswap.MAX_MESSAGE + 1))
                continue
            else:  # stall, gives_up: half a message, the stream held open or reset
                framed = bitswap.frame(Message(blocks=[(bitswap.prefix_of(cid),
                                                        b"\0" * 100_000)]))
                await self._write(peer, framed[: len(framed) // 2], hold=True)
                if kind == GIVES_UP and self._held:
                    await self._held.pop().reset()
                continue
            await self._send(peer, Message(blocks=[block]))

    async def _send(self, peer: Any, msg: Message) -> None:
        await self._write(peer, bitswap.frame(msg))

    async def _write(self, peer: Any, data: bytes, hold: bool = False) -> None:
        try:
            stream = await self.node.host.new_stream(peer, [bitswap.PROTOCOL])
            await stream.write(data)
            if hold:
                self._held.append(stream)
            else:
                await stream.close()
        except Exception:
            pass  # refused, reset: what a target does with a liar

    def close(self) -> None:
        self.node.stop()


class ResettingPeer(HostilePeer):
    """An honest provider of ``blocks`` that resets the stream the target opened to it when
    the first want-block arrives, without answering then (as a peer over its stream limits,
    or restarting its Bitswap server, does), and sends that block later, when the test says
    (:meth:`send_held`) on a stream of its own: the connection itself stays up.  Every later
    want-block is answered with the block, as an honest peer answers."""

    def __init__(self, home: Path, blocks: list[bytes]) -> None:
        self.blocks = {sha256(b): b for b in blocks}  # raw blocks, by multihash
        self.held: list[tuple[Any, bytes]] = []
        self.reset_once = threading.Event()
        super().__init__(home, "silent")

    async def _read(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id
        reader = bitswap._Reader(stream)
        try:
            while (got := await reader.next()) is not None:
                wanted = [e.cid for e in got[0].wants
                          if not e.cancel and e.want_type == WantType.BLOCK]
                self.wants += wanted
                if wanted and not self.reset_once.is_set():
                    self.held += [(peer, raw) for raw in wanted]
                    await stream.reset()
                    self.reset_once.set()
                    return
                if wanted:
                    await self._blocks_to(peer, wanted)
        except Exception:
            pass

    async def _blocks_to(self, peer: Any, wanted: list[bytes]) -> None:
        for raw in wanted:
            cid, _ = CID.decode(raw)
            if cid.multihash in self.blocks:
                await self._send(peer, Message(blocks=[(bitswap.prefix_of(cid),
                                                        self.blocks[cid.multihash])]))

    def send_held(self) -> None:
        """Send the blocks asked before the reset, now (from the test's thread)."""
        async def send() -> None:
            for peer, raw in self.held:
                await self._blocks_to(peer, [raw])
        self.node.submit(send).result()
