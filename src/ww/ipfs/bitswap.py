"""Bitswap 1.2.0 (``/ipfs/bitswap/1.2.0``): the messages, and the engine that trades blocks.

The wire format is kubo's (go-bitswap / boxo ``message.proto``): each message is a protobuf,
prefixed with its length as an unsigned varint, on a libp2p stream.

```
Message { Wantlist wantlist = 1; repeated bytes blocks = 2 (1.0.0); repeated Block payload = 3;
          repeated BlockPresence blockPresences = 4; int32 pendingBytes = 5; }
Wantlist { repeated Entry entries = 1; bool full = 2; }
Entry { bytes block = 1 (a CID); int32 priority = 2; bool cancel = 3;
        WantType wantType = 4 (Block 0, Have 1); bool sendDontHave = 5; }
Block { bytes prefix = 1 (CID version, codec, hash function, digest length); bytes data = 2; }
BlockPresence { bytes cid = 1; BlockPresenceType type = 2 (Have 0, DontHave 1); }
```

As in go-bitswap, a reply never travels on the stream that carried the request: each side
writes its messages on a stream *it* opened, and reads whatever the other side opened.

Trust: a received block carries no CID, only a prefix; its CID is computed from the bytes
received, so a block is accepted only if its bytes hash to a multihash we asked for.  Anything
else (unwanted blocks, hash functions we do not use, oversized messages) is dropped.

:class:`Engine` runs on the libp2p host's trio thread (:mod:`ww.ipfs.net` drives it):

* serving: a want-have is answered HAVE or, when asked, DONT_HAVE; a want-block with the block
  from the local store or, when asked, DONT_HAVE.  The server keeps no ledger of wants it
  could not satisfy (a peer asks again, as kubo does on its rebroadcast).
* fetching: each wanted block is asked of one connected peer at a time as want-block with
  send-dont-have; a DONT_HAVE, a peer that disconnects or stays silent for
  :data:`PEER_TIMEOUT` moves the want to the next peer (peers that delivered blocks before
  come first); when every peer has been tried, the want fails.  A received dag-pb block's
  links are wanted at once (prefetch, at most :data:`MAX_PREFETCH` outstanding), so a file
  arrives at the pace of the link, not of round trips.
"""

from __future__ import annotations

import concurrent.futures
import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _protobuf as pb
from . import multihash, varint
from .api import IpfsError, NotFoundError
from .blockstore import MAX_BLOCK_SIZE, Blockstore
from .cid import CID, DAG_PB, CidError

__all__ = [
    "PROTOCOL",
    "BitswapError",
    "Engine",
    "Message",
    "Presence",
    "WantEntry",
    "WantType",
    "decode",
    "encode",
]

PROTOCOL = "/ipfs/bitswap/1.2.0"
MAX_MESSAGE = 4 << 20  # go-bitswap's network.MessageSizeMax
TARGET_MESSAGE = 512 << 10  # we pack replies up to about this many block bytes per message
PEER_TIMEOUT = 15.0  # seconds a peer may stay silent about a want before the next is asked
MAX_PREFETCH = 2048  # outstanding prefetch wants (blocks nobody asked for yet)
_MAX_PRIORITY = (1 << 31) - 1


class BitswapError(IpfsError):
    """A malformed Bitswap message, or a stream that broke mid-message."""


class WantType(enum.IntEnum):
    BLOCK = 0
    HAVE = 1


class Presence(enum.IntEnum):
    HAVE = 0
    DONT_HAVE = 1


@dataclass
class WantEntry:
    cid: bytes  # the binary CID, as on the wire
    priority: int = 1
    cancel: bool = False
    want_type: WantType = WantType.BLOCK
    send_dont_have: bool = False


@dataclass
class Message:
    wants: list[WantEntry] = field(default_factory=list)
    full: bool = False
    blocks: list[tuple[bytes, bytes]] = field(default_factory=list)  # (CID prefix, data)
    presences: list[tuple[bytes, Presence]] = field(default_factory=list)  # (binary CID, type)
    pending_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.wants or self.full or self.blocks or self.presences)


# --- the wire format ----------------------------------------------------------------------


def prefix_of(cid: CID) -> bytes:
    """go-cid's ``Prefix().Bytes()``: version, codec, hash function, digest length."""
    code, digest, _ = multihash.decode(cid.multihash)
    return b"".join(varint.encode(v) for v in (cid.version, cid.codec, code, len(digest)))


def cid_from_block(prefix: bytes, data: bytes) -> CID:
    """The CID of ``data`` under ``prefix`` (computed, so it is right by construction)."""
    try:
        version, pos = varint.decode(prefix, 0)
        codec, pos = varint.decode(prefix, pos)
        code, pos = varint.decode(prefix, pos)
        length, pos = varint.decode(prefix, pos)
    except varint.VarintError as e:
        raise BitswapError(f"bitswap: bad block prefix: {e}") from None
    if code != multihash.SHA2_256 or length != 32 or pos != len(prefix):
        raise BitswapError(f"bitswap: unsupported block prefix {prefix.hex()}")
    try:
        return CID(version, codec, multihash.sha256(data))
    except CidError as e:
        raise BitswapError(f"bitswap: {e}") from None


def encode(msg: Message) -> bytes:
    """One message, without its length prefix."""
    out = bytearray()
    if msg.wants or msg.full:
        wl = bytearray()
        for e in msg.wants:
            entry = pb.bytes_field(1, e.cid) + pb.uvarint_field(2, e.priority)
            if e.cancel:
                entry += pb.uvarint_field(3, 1)
            if e.want_type:
                entry += pb.uvarint_field(4, int(e.want_type))
            if e.send_dont_have:
                entry += pb.uvarint_field(5, 1)
            wl += pb.bytes_field(1, entry)
        if msg.full:
            wl += pb.uvarint_field(2, 1)
        out += pb.bytes_field(1, bytes(wl))
    for prefix, data in msg.blocks:
        out += pb.bytes_field(3, pb.bytes_field(1, prefix) + pb.bytes_field(2, data))
    for cid, kind in msg.presences:
        out += pb.bytes_field(4, pb.bytes_field(1, cid) + pb.uvarint_field(2, int(kind)))
    if msg.pending_bytes:
        out += pb.uvarint_field(5, msg.pending_bytes)
    return bytes(out)


def frame(msg: Message) -> bytes:
    body = encode(msg)
    return varint.encode(len(body)) + body


_CIDV0_PREFIX = b"\x00\x70\x12\x20"


def decode(data: bytes | memoryview) -> Message:
    """Parse one message; raises :class:`BitswapError` if it is not well-formed."""
    msg = Message()
    try:
        for num, wt, value in pb.fields(data):
            if num == 1 and wt == pb.LEN:
                _decode_wantlist(value, msg)  # type: ignore[arg-type]
            elif num == 2 and wt == pb.LEN:  # Bitswap 1.0.0 blocks: CIDv0 implied
                msg.blocks.append((_CIDV0_PREFIX, bytes(value)))  # type: ignore[arg-type]
            elif num == 3 and wt == pb.LEN:
                prefix, block = b"", b""
                for n, w, v in pb.fields(value):  # type: ignore[arg-type]
                    if n == 1 and w == pb.LEN:
                        prefix = bytes(v)  # type: ignore[arg-type]
                    elif n == 2 and w == pb.LEN:
                        block = bytes(v)  # type: ignore[arg-type]
                msg.blocks.append((prefix, block))
            elif num == 4 and wt == pb.LEN:
                cid, kind = b"", 0
                for n, w, v in pb.fields(value):  # type: ignore[arg-type]
                    if n == 1 and w == pb.LEN:
                        cid = bytes(v)  # type: ignore[arg-type]
                    elif n == 2 and w == pb.VARINT:
                        kind = int(v)  # type: ignore[arg-type]
                msg.presences.append((cid, Presence.DONT_HAVE if kind == 1 else Presence.HAVE))
            elif num == 5 and wt == pb.VARINT:
                msg.pending_bytes = int(value)  # type: ignore[arg-type]
    except pb.ProtobufError as e:
        raise BitswapError(f"bitswap: malformed message: {e}") from None
    return msg


def _decode_wantlist(data: memoryview, msg: Message) -> None:
    for num, wt, value in pb.fields(data):
        if num == 1 and wt == pb.LEN:
            e = WantEntry(b"")
            for n, w, v in pb.fields(value):  # type: ignore[arg-type]
                if n == 1 and w == pb.LEN:
                    e.cid = bytes(v)  # type: ignore[arg-type]
                elif w == pb.VARINT:
                    if n == 2:
                        e.priority = int(v)  # type: ignore[arg-type]
                    elif n == 3:
                        e.cancel = bool(v)
                    elif n == 4:
                        e.want_type = WantType.HAVE if v == 1 else WantType.BLOCK
                    elif n == 5:
                        e.send_dont_have = bool(v)
            msg.wants.append(e)
        elif num == 2 and wt == pb.VARINT:
            msg.full = bool(value)


class _Reader:
    """Length-prefixed messages from a libp2p stream (which reads in arbitrary pieces)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def _fill(self) -> bool:
        from libp2p.network.stream.exceptions import StreamEOF

        try:
            data = await self._stream.read(1 << 20)
        except StreamEOF:
            data = b""
        if not data:
            return False
        self._buf += data
        return True

    async def next(self) -> Message | None:
        """The next message, or None at a clean end of stream."""
        while True:
            try:
                length, pos = varint.decode(self._buf, 0)
                break
            except varint.VarintError:
                if len(self._buf) >= 10:
                    raise BitswapError("bitswap: bad message length") from None
                if not await self._fill():
                    if self._buf:
                        raise BitswapError("bitswap: stream ended mid-message") from None
                    return None
        if length > MAX_MESSAGE:
            raise BitswapError(f"bitswap: message of {length} bytes is over the limit")
        while len(self._buf) < pos + length:
            if not await self._fill():
                raise BitswapError("bitswap: stream ended mid-message")
        body = bytes(self._buf[pos : pos + length])
        del self._buf[: pos + length]
        return decode(body)


# --- the engine (on the libp2p thread) ------------------------------------------------------


@dataclass
class _Want:
    cid: CID
    priority: int
    waiters: list[concurrent.futures.Future[bytes]] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    peer: str | None = None
    asked_at: float = 0.0


class _Peer:
    """One connected peer: what we asked of it, and our outbound stream to it."""

    def __init__(self, peer_id: str) -> None:
        import trio

        self.id = peer_id
        self.assigned: set[bytes] = set()  # multihashes of wants asked of this peer
        self.delivered = 0  # blocks it gave us (better peers are asked first)
        self.outbox: list[Message] = []
        self.wake = trio.Event()
        self.gone = False
        self.sender_running = False

    def send(self, msg: Message) -> None:
        self.outbox.append(msg)
        self.wake.set()


class Engine:
    """Bitswap over one libp2p host; every method runs on the host's trio thread."""

    def __init__(self, store: Blockstore, *, self_id: str,
                 open_stream: Callable[[str], Any],
                 peer_timeout: float = PEER_TIMEOUT) -> None:
        self.store = store
        self.self_id = self_id
        self._open_stream = open_stream  # async (peer id) -> a stream speaking PROTOCOL
        self.peer_timeout = peer_timeout
        self.peers: dict[str, _Peer] = {}
        self.wants: dict[bytes, _Want] = {}  # by multihash
        self.dirty: set[Path] = set()  # shard directories written since the last flush
        self._priority = itertools.count()
        self._nursery: Any = None
        self.stats = {"blocks_in": 0, "bytes_in": 0, "blocks_out": 0, "bytes_out": 0,
                      "dropped": 0}

    async def run(self) -> None:
        """Keep the engine's background work going (peer timeouts) until cancelled."""
        import trio

        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for peer in self.peers.values():
                self._ensure_sender(peer)
            while True:
                await trio.sleep(min(1.0, self.peer_timeout / 4))
                self._expire()

    # -- peers ---------------------------------------------------------------------------

    def peer_connected(self, peer_id: str) -> None:
        if peer_id == self.self_id or peer_id in self.peers:
            return
        self.peers[peer_id] = _Peer(peer_id)
        for want in list(self.wants.values()):  # wants that were waiting for anyone at all
            if want.peer is None:
                self._assign(want)

    def peer_disconnected(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        peer.gone = True
        peer.wake.set()
        for mh in list(peer.assigned):
            want = self.wants.get(mh)
            if want is not None and want.peer == peer_id:
                want.tried.add(peer_id)
                want.peer = None
                self._assign(want)

    # -- fetching --------------------------------------------------------------------------

    def want(self, cid: CID, future: concurrent.futures.Future[bytes] | None) -> None:
        """Fetch ``cid``; ``future`` (None for a prefetch) gets the verified bytes or an error."""
        if future is not None and not future.set_running_or_notify_cancel():
            return
        existing = self.wants.get(cid.multihash)
        if existing is not None:
            if future is not None:
                existing.waiters.append(future)
            return
        if self.store.has(cid):
            if future is not None:
                try:
                    future.set_result(self.store.get(cid))
                except IpfsError as e:
                    future.set_exception(e)
            return
        if future is None and sum(1 for w in self.wants.values() if not w.waiters) >= \
                MAX_PREFETCH:
            return
        want = _Want(cid, _MAX_PRIORITY - next(self._priority) % _MAX_PRIORITY)
        if future is not None:
            want.waiters.append(future)
        self.wants[cid.multihash] = want
        self._assign(want)

    def cancel(self, cid: CID, future: concurrent.futures.Future[bytes]) -> None:
        """The caller gave up: forget ``future``; the block stays wanted as a prefetch."""
        want = self.wants.get(cid.multihash)
        if want is not None and future in want.waiters:
            want.waiters.remove(future)

    def _assign(self, want: _Want) -> None:
        candidates = [p for p in self.peers.values() if p.id not in want.tried]
        if not candidates:
            self._fail(want)
            return
        peer = max(candidates, key=lambda p: p.delivered)
        want.peer = peer.id
        want.asked_at = time.monotonic()
        peer.assigned.add(want.cid.multihash)
        peer.send(Message(wants=[WantEntry(bytes(want.cid), want.priority,
                                           want_type=WantType.BLOCK, send_dont_have=True)]))
        self._ensure_sender(peer)

    def _fail(self, want: _Want) -> None:
        self.wants.pop(want.cid.multihash, None)
        if want.tried:
            reason = (f"block {want.cid} is not in the local repository and none of "
                      f"{len(want.tried)} connected peer(s) gave it")
        else:
            reason = f"block {want.cid} is not in the local repository (no peers connected)"
        for future in want.waiters:
            if not future.done():
                future.set_exception(NotFoundError(reason))

    def _expire(self) -> None:
        now = time.monotonic()
        for want in list(self.wants.values()):
            if want.peer is not None and now - want.asked_at > self.peer_timeout:
                peer = self.peers.get(want.peer)
                if peer is not None:
                    peer.assigned.discard(want.cid.multihash)
                    peer.send(Message(wants=[WantEntry(bytes(want.cid), cancel=True)]))
                want.tried.add(want.peer)
                want.peer = None
                self._assign(want)

    def _received(self, peer_id: str, prefix: bytes, data: bytes) -> None:
        try:
            cid = cid_from_block(prefix, data)
        except BitswapError:
            self.stats["dropped"] += 1
            return
        want = self.wants.pop(cid.multihash, None)
        if want is None or len(data) > MAX_BLOCK_SIZE:
            self.stats["dropped"] += 1  # unsolicited: never stored
            return
        cid = want.cid  # the CID we asked for (a v0 and a v1 share the multihash)
        self.stats["blocks_in"] += 1
        self.stats["bytes_in"] += len(data)
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.delivered += 1
            peer.assigned.discard(cid.multihash)
        if want.peer is not None and want.peer != peer_id:
            other = self.peers.get(want.peer)
            if other is not None:
                other.assigned.discard(cid.multihash)
                other.send(Message(wants=[WantEntry(bytes(cid), cancel=True)]))
        try:
            shard = self.store.put(cid, (data,), sync=False)  # verified above: hashed here
        except OSError as e:
            error = IpfsError(f"cannot store block {cid}: {e.strerror}")
            for future in want.waiters:
                if not future.done():
                    future.set_exception(error)
            return
        if shard is not None:
            self.dirty.add(shard)
        for future in want.waiters:
            if not future.done():
                future.set_result(data)
        if cid.codec == DAG_PB:
            self._prefetch(data)

    def _prefetch(self, data: bytes) -> None:
        from . import dagpb

        try:
            links = dagpb.decode(data).links
        except IpfsError:
            return  # not ours to judge here: the reader reports a corrupt node
        for link in links:
            if link.cid.multihash not in self.wants:
                self.want(link.cid, None)

    # -- messages in ---------------------------------------------------------------------

    async def handle_stream(self, stream: Any) -> None:
        """An inbound Bitswap stream: the peer's wants, and its answers to ours."""
        peer_id = str(stream.muxed_conn.peer_id)
        self.peer_connected(peer_id)
        reader = _Reader(stream)
        try:
            while (msg := await reader.next()) is not None:
                self._on_message(peer_id, msg)
        except Exception:
            await _reset(stream)
            return
        await _close(stream)

    def _on_message(self, peer_id: str, msg: Message) -> None:
        for prefix, data in msg.blocks:
            self._received(peer_id, prefix, data)
        for raw, kind in msg.presences:
            if kind != Presence.DONT_HAVE:
                continue
            try:
                cid, _ = CID.decode(raw)
            except CidError:
                continue
            want = self.wants.get(cid.multihash)
            if want is not None and want.peer == peer_id:
                want.tried.add(peer_id)
                want.peer = None
                if (peer := self.peers.get(peer_id)) is not None:
                    peer.assigned.discard(cid.multihash)
                self._assign(want)
        if msg.wants:
            self._serve(peer_id, msg.wants)

    def _serve(self, peer_id: str, entries: list[WantEntry]) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        reply = Message()
        size = 0
        for entry in sorted(entries, key=lambda e: -e.priority):
            if entry.cancel:
                continue
            try:
                cid, _ = CID.decode(entry.cid)
            except CidError:
                if entry.send_dont_have:
                    reply.presences.append((entry.cid, Presence.DONT_HAVE))
                continue
            if not self.store.has(cid):
                if entry.send_dont_have:
                    reply.presences.append((entry.cid, Presence.DONT_HAVE))
                continue
            if entry.want_type == WantType.HAVE:
                reply.presences.append((entry.cid, Presence.HAVE))
                continue
            try:
                data = self.store.get(cid)  # verified: a corrupt copy is never served
            except IpfsError:
                if entry.send_dont_have:
                    reply.presences.append((entry.cid, Presence.DONT_HAVE))
                continue
            reply.blocks.append((prefix_of(cid), data))
            self.stats["blocks_out"] += 1
            self.stats["bytes_out"] += len(data)
            size += len(data)
            if size >= TARGET_MESSAGE:
                peer.send(reply)
                reply, size = Message(), 0
        if reply:
            peer.send(reply)
        self._ensure_sender(peer)

    # -- messages out --------------------------------------------------------------------

    def _ensure_sender(self, peer: _Peer) -> None:
        if not peer.sender_running and self._nursery is not None and peer.outbox:
            peer.sender_running = True
            self._nursery.start_soon(self._sender, peer)

    async def _sender(self, peer: _Peer) -> None:
        """Write ``peer``'s outbox on one stream of ours; a broken stream drops the peer."""
        import trio

        stream = None
        try:
            stream = await self._open_stream(peer.id)
            while not peer.gone:
                if not peer.outbox:
                    peer.wake = trio.Event()
                    await peer.wake.wait()
                    continue
                batch, peer.outbox = peer.outbox, []
                for data in _pack(batch):
                    await stream.write(data)
        except Exception:
            if stream is not None:
                await _reset(stream)
            if self.peers.get(peer.id) is peer:
                self.peer_disconnected(peer.id)  # its wants go to the next peer
            return
        finally:
            peer.sender_running = False
        await _close(stream)


def _pack(batch: list[Message]) -> list[bytes]:
    """Merge queued messages: all wants in one, blocks and presences up to the target size."""
    wants = Message()
    out: list[bytes] = []
    for msg in batch:
        wants.wants.extend(msg.wants)
        if msg.blocks or msg.presences:
            out.append(frame(Message(blocks=msg.blocks, presences=msg.presences)))
    if wants.wants:
        # A cancel after a want of the same block in one batch: keep only the last word.
        last: dict[bytes, WantEntry] = {}
        for entry in wants.wants:
            last[entry.cid] = entry
        out.insert(0, frame(Message(wants=list(last.values()))))
    return out


async def _reset(stream: Any) -> None:
    import trio

    with trio.CancelScope(shield=True):
        try:
            await stream.reset()
        except Exception:
            pass


async def _close(stream: Any) -> None:
    import trio

    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.close()
        except Exception:
            pass
