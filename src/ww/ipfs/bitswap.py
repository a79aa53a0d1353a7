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

* serving, bounded per peer and overall as go-bitswap's server (boxo) is: each peer has a
  ledger, its wantlist, keyed by CID (a CID wanted twice is one entry) and capped at
  :data:`MAX_WANTLIST` entries (more are dropped, as boxo truncates), and all ledgers
  together at :data:`MAX_LEDGERS` but for :data:`LEDGER_RESERVE` a peer; a want-have is
  answered HAVE or, when asked, DONT_HAVE; a want-block with the block or, when asked,
  DONT_HAVE.  Replies are built by one sender per peer, highest priority first, at most
  :data:`TARGET_MESSAGE` bytes of blocks (plus one block) at a time, read from the store
  in a worker thread, never on the libp2p thread.  A reply holds one of
  :data:`REPLY_SLOTS` (all peers together) while it is read and for the first
  :data:`REPLY_SLICE` of its write; a write still going then continues in one of
  :data:`OVERDUE_SLOTS`, and the slot serves the next peer, so a peer that reads slowly or
  not at all holds no slot another peer waits for (while :data:`OVERDUE_SLOTS` such peers
  are being written to already, a ninth keeps its reply slot; if another reply waits for
  one, the slowest of those writes is given up).  One sender per peer: a peer holds one
  slot at most.  A write that moves nothing for :data:`STALL_TIMEOUT`, or averages less
  than :data:`MIN_SEND_RATE`, is given up: the write stops at the end of the Yamux frame
  under way (:mod:`ww.p2p.yamux` never cuts one short: the connection carries the peer's
  other streams), the stream is reset, the slot freed and the peer dropped (its ledger
  with it; it may ask again); a slow peer that keeps taking gets all, unless it is the
  slowest while others wait.
  A peer whose ledger is full is not read from (unless it owes us blocks) until it takes
  some replies, so its TCP window closes.
  Inbound messages are at most :data:`MAX_MESSAGE` bytes, and all streams together buffer
  at most :data:`RECEIVE_BUDGET` bytes of message bodies (more waits); a peer's streams are
  read :data:`MAX_INBOUND_STREAMS` at a time, :data:`MAX_WAITING_STREAMS` more wait their
  turn (kubo sends each message on a stream of its own), and past those a stream is reset.
  Received blocks are hashed and stored in a worker thread, not on the libp2p thread.
  The server keeps no ledger of wants it could not satisfy (a peer asks again, as kubo does
  on its rebroadcast).
* fetching: each wanted block is asked of one connected peer at a time as want-block with
  send-dont-have; a DONT_HAVE, a peer that disconnects, one that resets the stream it
  answers on (a server giving up its reply drops our wants with it), or one that stays
  silent about it moves the want to the next peer; when every peer has been tried, the
  want fails with one line counting why each did not give it.  Silent
  means: nothing from that peer, no block we wanted and no DONT_HAVE, for
  :data:`PEER_TIMEOUT` since the want was asked or since its last answer (a peer behind a
  slow link that works through our wants in turn keeps them however long the queue), or
  a want passed over while the peer answered :data:`PEER_WANTS` others after it.  Wants
  are spread over the peers, least loaded first (peers that answer DONT_HAVE, let wants
  time out or reset their answers more often than they deliver come last: a want waits
  for room at a peer that delivers rather than go to one of those; the last
  :data:`MAX_LIARS` such peers that hung up are remembered, so one that comes back is
  asked last still), each peer holding a window of them: what it answers in
  :data:`QUEUE_SECONDS` at the pace it has been answering, :data:`MIN_WANTS` to
  :data:`PEER_WANTS`.  The rest wait in turn (a want a reader waits for goes first) and are
  asked of whichever peer has room next, so a faster peer takes more of a file, and when
  the last wants are out every peer holds about as many seconds of work: a slow one does
  not hold the end of a file for long after the fast ones are done.  A peer that sends a
  block neither wanted nor among the last :data:`ASKED_MEMORY` asked of it (bytes that are
  not the block asked, a prefix we never ask for), or a malformed message, is a liar: it is
  asked nothing more (the last :data:`MAX_LIARS` are remembered, so one that hangs up and
  comes back is one still), and its wants move on at once.  What was asked of a peer
  outlives its dropping (for the last :data:`MAX_DROPPED` peers dropped): an honest peer
  whose stream broke while the connection stayed up may still send what it was asked, and
  is no liar for that.  The links of a dag-pb block
  a reader gets (received for it, or read from the repository) are wanted at once (prefetch,
  at most :data:`MAX_PREFETCH` outstanding, below a server's wantlist cap), so a file
  arrives at the pace of the link, not of round trips.  Only one level below what is read:
  a prefetched block's own links wait until it is read, or one ``stat`` of a root would
  store the whole DAG a peer serves.
  The engine opens streams only on existing connections: it never dials.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ww.core import multihash, varint
from ww.core import protobuf as pb
from ww.core.cid import CID, DAG_PB, CidError

from .api import IpfsError, NotFoundError
from .blockstore import MAX_BLOCK_SIZE, Blockstore

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
# Want-blocks outstanding at one peer at a time: what it answers in QUEUE_SECONDS (at the
# pace of its answers so far; START_WANTS before it has answered twice), at least
# MIN_WANTS and at most PEER_WANTS (8 MiB of 256 KiB blocks: enough to keep a fast link
# busy).  QUEUE_SECONDS must exceed a peer's latency, or its window would shrink.
PEER_WANTS = 32
MIN_WANTS = 4
START_WANTS = 8
QUEUE_SECONDS = 2.0
MAX_PREFETCH = 512  # outstanding prefetch wants (blocks nobody asked for yet)
PREFETCH_SCAN = 4 * MAX_PREFETCH
"""Links of a block read from the repository looked up, at most, for missing ones to
prefetch: a block of 131,000 links all present cost each read 1.1 s to decode them and a
lookup each, 3-4 s in all (a gateway request); the rest are fetched when read."""
# Blocks last asked of a peer that are remembered, so that one arriving late (after another
# peer gave it, or after the want moved on) is not taken for a block it was never asked for.
ASKED_MEMORY = 4 * MAX_PREFETCH
MAX_LIARS = 1024  # peer ids remembered as liars (one that hangs up and comes back is one still)
# Peers dropped (gone, or their stream broke) whose asked blocks are remembered, so that one
# that answers a want after the drop, on a stream of its own, is not taken for a liar: at
# most MAX_DROPPED * ASKED_MEMORY multihashes (some 13 MiB), kept only while they are recent.
MAX_DROPPED = 64
_STORED = object()  # _hash_and_store's mark: stored, no new shard directory to flush
# Why a peer did not give a block (a failed fetch's line counts them)
WRONG_DATA = "sent wrong data"
NO_BLOCK = "does not have it"
WENT_AWAY = "went away"
RESET = "reset its reply"

# What one peer, and all of them, can make the server hold (boxo's defaults where it has one).
MAX_WANTLIST = 1024  # entries of a peer's ledger (boxo: MaxQueuedWantlistEntriesPerPeer)
MAX_LEDGERS = 16 * MAX_WANTLIST
"""Entries of all ledgers together past which a peer holding :data:`LEDGER_RESERVE` or more
has its new wants dropped: 100 peers that never read their replies held 102,000 entries,
RSS +85 MiB (300 peers, the 1024 each: some 250 MiB); now 16,384 (some 9 MiB) plus the
reserve of each peer."""
LEDGER_RESERVE = 64
"""Entries a peer may always hold, whatever the others hold: a ww peer asks at most
:data:`PEER_WANTS` of one peer at a time, so flooders never shut it out."""
MAX_CID_SIZE = 168  # bytes; wants of longer CIDs are ignored (boxo: MaximumAllowedCid)
# Blocks in one message: an honest peer answers the wants we asked of it, PEER_WANTS at a
# time (and a few late ones); more is a lie, refused before a block is hashed.
MAX_BLOCKS = MAX_WANTLIST
_MAX_ENTRY_FIELDS = 16  # fields of one want, block or presence entry (5 at most are ours)
# fields of one message: a wantlist, the blocks and presences, pendingBytes, a few spare
_MAX_FIELDS = MAX_BLOCKS + MAX_WANTLIST + _MAX_ENTRY_FIELDS
REPLY_SLOTS = 8  # replies being read or written at pace, all peers together (boxo: 8 workers)
REPLY_SLICE = 1.0
"""Seconds a reply's write holds its reply slot: a write still going then (its peer takes it
slowly, or not at all) goes on in one of :data:`OVERDUE_SLOTS`, and its reply slot serves the
next peer (a slow or stalled peer held a slot for the whole write: 8 of them, every other peer
waited)."""
OVERDUE_SLOTS = REPLY_SLOTS  # replies being written slowly at once, all peers together
STALL_TIMEOUT = 10.0  # seconds a reply's write may move nothing before it is given up
MIN_SEND_RATE = 12_500  # bytes per second a write must average, after SEND_TIMEOUT (boxo's)
WRITE_CHUNK = 60 << 10  # bytes handed to the stream at a time (one Yamux frame): its progress
REPLY_BATCH = 256  # ledger entries considered for one reply
RECEIVE_BUDGET = 32 << 20  # bytes of inbound message bodies buffered at once, all streams
MAX_INBOUND_STREAMS = 4  # Bitswap streams of one peer read at once
# More of its streams wait their turn (kubo opens one for each message it sends); past these
# a stream is reset.
MAX_WAITING_STREAMS = 64
READ_CHUNK = 64 << 10  # bytes read from a stream at a time
SEND_TIMEOUT = 10.0  # seconds, plus one per MIN_SEND_RATE bytes, to write one message
RECEIVE_TIMEOUT = 30.0  # seconds, plus one per MIN_RATE bytes, for a message body to arrive
MIN_RATE = 100 << 10  # bytes per second a peer must at least give
_MAX_PRIORITY = (1 << 31) - 1


class BitswapError(IpfsError):
    """A malformed Bitswap message, or a stream that broke mid-message."""


class MalformedError(BitswapError):
    """What no Bitswap peer sends: a message that does not parse, or one over the limit
    (the peer that sent it is asked nothing more)."""


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
    """Parse one message; raises :class:`BitswapError` if it is not well-formed.

    At most :data:`MAX_WANTLIST` wants and as many cancels are kept, in all the message's
    wantlist fields together; past twice that many entries the rest of the wantlist is not
    read (boxo's server truncates a wantlist the same way), and the message is taken as
    ``full``: the peer's whole wantlist, the wants kept replacing its ledger.  Its own
    ``full`` flag comes after the entries, unread: a peer that sends so many at once is
    most likely sending its whole wantlist (Helia does on connecting, in messages of up to
    2 MiB; kubo's never set the flag, each carries what changed), and a flag taken as false
    would keep the peer's stale wants in its ledger beside the new ones.  More than
    :data:`MAX_BLOCKS` blocks, more than :data:`MAX_WANTLIST` block presences, more than
    :data:`_MAX_FIELDS` fields in all, or an entry of more than :data:`_MAX_ENTRY_FIELDS`
    fields, is malformed (no honest peer sends one: it answers at most the
    :data:`PEER_WANTS` wants we asked).  So the objects one message becomes, and the fields
    read to make them, are bounded whatever it holds: a 4 MiB message of two-byte fields
    was two million of them (blocks: 600 MB and 14 s of CPU; presences or wantlist
    entries: 5 s on the libp2p thread)."""
    msg = Message()
    entries = [0, 0]  # wantlist entries read, and cancels kept, in all its wantlist fields
    try:
        for n_field, (num, wt, value) in enumerate(pb.fields(data)):
            if n_field >= _MAX_FIELDS:
                raise MalformedError(f"bitswap: more than {_MAX_FIELDS} fields in a message")
            if num == 1 and wt == pb.LEN:
                _decode_wantlist(value, msg, entries)  # type: ignore[arg-type]
            elif num in (2, 3) and wt == pb.LEN:
                if len(msg.blocks) >= MAX_BLOCKS:
                    raise MalformedError(f"bitswap: more than {MAX_BLOCKS} blocks in a message")
                if num == 2:  # Bitswap 1.0.0 blocks: CIDv0 implied
                    msg.blocks.append((_CIDV0_PREFIX, bytes(value)))  # type: ignore[arg-type]
                    continue
                prefix, block = b"", b""
                for n, w, v in _entry_fields(value):  # type: ignore[arg-type]
                    if n == 1 and w == pb.LEN:
                        prefix = bytes(v)  # type: ignore[arg-type]
                    elif n == 2 and w == pb.LEN:
                        block = bytes(v)  # type: ignore[arg-type]
                msg.blocks.append((prefix, block))
            elif num == 4 and wt == pb.LEN:
                if len(msg.presences) >= MAX_WANTLIST:
                    raise MalformedError(f"bitswap: more than {MAX_WANTLIST} block presences "
                                         "in a message")
                cid, kind = b"", 0
                for n, w, v in _entry_fields(value):  # type: ignore[arg-type]
                    if n == 1 and w == pb.LEN:
                        cid = bytes(v)  # type: ignore[arg-type]
                    elif n == 2 and w == pb.VARINT:
                        kind = int(v)  # type: ignore[arg-type]
                msg.presences.append((cid, Presence.DONT_HAVE if kind == 1
                                      else Presence.HAVE))
            elif num == 5 and wt == pb.VARINT:
                msg.pending_bytes = int(value)  # type: ignore[arg-type]
    except pb.ProtobufError as e:
        raise MalformedError(f"bitswap: malformed message: {e}") from None
    return msg


def _entry_fields(data: memoryview) -> Any:
    """The fields of one entry (a want, a block, a presence): a handful in any honest one."""
    for i, field_ in enumerate(pb.fields(data)):
        if i >= _MAX_ENTRY_FIELDS:
            raise MalformedError(f"bitswap: an entry of more than {_MAX_ENTRY_FIELDS} fields")
        yield field_


def _decode_wantlist(data: memoryview, msg: Message, entries: list[int]) -> None:
    """One wantlist field into ``msg``; ``entries``: the entries read and the cancels kept so
    far in the message (a message may repeat the field: protobuf merges them)."""
    for num, wt, value in pb.fields(data):
        entries[0] += 1
        if entries[0] > 2 * MAX_WANTLIST + _MAX_ENTRY_FIELDS:
            # Past what we keep, the rest is not read, its `full` flag (after the entries)
            # with it: taken as the peer's whole wantlist, whatever that flag says.
            msg.full = True
            return
        if num == 1 and wt == pb.LEN:
            e = WantEntry(b"")
            for n, w, v in _entry_fields(value):  # type: ignore[arg-type]
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
            if e.cancel:
                if entries[1] >= MAX_WANTLIST:
                    continue
                entries[1] += 1
            elif len(msg.wants) - entries[1] >= MAX_WANTLIST:
                continue
            msg.wants.append(e)
        elif num == 2 and wt == pb.VARINT:
            msg.full = bool(value)


class _Budget:
    """Bytes that all holders together may hold at most; :meth:`acquire` waits for room."""

    def __init__(self, limit: int) -> None:
        import trio

        self.limit = limit
        self.used = 0
        self.peak = 0
        self._freed = trio.Event()

    async def acquire(self, n: int) -> int:
        """Wait until ``n`` bytes fit (a claim above the limit waits for all of it)."""
        n = min(n, self.limit)
        while self.used + n > self.limit:
            await self._freed.wait()
        self.used += n
        self.peak = max(self.peak, self.used)
        return n

    def release(self, n: int) -> None:
        import trio

        self.used -= n
        self._freed.set()
        self._freed = trio.Event()


class _Reader:
    """Length-prefixed messages from a libp2p stream (which reads in arbitrary pieces).

    A stream holds at most :data:`READ_CHUNK` bytes before a message's length is known;
    its body is read only once ``budget`` has room for it, and must arrive at
    :data:`MIN_RATE` or better."""

    def __init__(self, stream: Any, budget: _Budget | None = None) -> None:
        self._stream = stream
        self._budget = budget
        self._buf = bytearray()

    async def _fill(self, limit: int = READ_CHUNK) -> bool:
        from libp2p.network.stream.exceptions import StreamEOF

        try:
            data = await self._stream.read(max(1, min(limit, READ_CHUNK)))
        except StreamEOF:
            data = b""
        if not data:
            return False
        self._buf += data
        return True

    async def next(self) -> tuple[Message, int] | None:
        """The next message and the bytes of ``budget`` it holds (give them back with
        ``budget.release`` once done with it), or None at a clean end of stream."""
        import trio

        while True:
            try:
                length, pos = varint.decode(self._buf, 0)
                break
            except varint.VarintError:
                if len(self._buf) >= 10:
                    raise MalformedError("bitswap: bad message length") from None
                if not await self._fill():
                    if self._buf:
                        raise BitswapError("bitswap: stream ended mid-message") from None
                    return None
        if length > MAX_MESSAGE:
            raise MalformedError(f"bitswap: message of {length} bytes is over the limit")
        held = await self._budget.acquire(length) if self._budget is not None else 0
        try:
            with trio.move_on_after(RECEIVE_TIMEOUT + length / MIN_RATE) as scope:
                while len(self._buf) < pos + length:
                    if not await self._fill(pos + length - len(self._buf)):
                        raise BitswapError("bitswap: stream ended mid-message")
            if scope.cancelled_caught:
                raise BitswapError("bitswap: a message arrived too slowly")
            body = bytes(self._buf[pos : pos + length])
            del self._buf[: pos + length]
            return decode(body), held
        except BaseException:
            if self._budget is not None:
                self._budget.release(held)
            raise


# --- the engine (on the libp2p thread) ------------------------------------------------------


@dataclass
class _Want:
    cid: CID
    priority: int
    waiters: list[concurrent.futures.Future[bytes]] = field(default_factory=list)
    tried: dict[str, str] = field(default_factory=dict)  # peer id: why it did not give it
    peer: str | None = None
    asked_at: float = 0.0
    answered_before: int = 0  # the peer's answers when it was asked (see _expire)
    queued: bool = False  # waiting for a peer with room (Engine._queue)


@dataclass(eq=False)
class _Hold:
    """A write and how it goes; for a reply, the slot it holds: a reply slot, then (past
    :data:`REPLY_SLICE`) an overdue one (so that the slowest can be given up for a peer that
    waits)."""

    slot: Any = None  # a trio.Semaphore it has acquired (a reply's)
    scope: Any = None  # a trio.CancelScope around its write: cancelled to give it up
    started: float = 0.0  # trio.current_time() when its write began
    moved: float = 0.0  # ... when its last chunk went out (or it began)
    sent: int = 0  # bytes written so far
    size: int = 0  # bytes to write
    given_up: bool = False  # too slow, stalled, or for another peer's reply (_make_room)
    why: str = ""  # why it was given up
    stats: dict[str, int] | None = None  # the engine's, counting replies given up

    def rate(self, now: float) -> float:
        """Bytes a second its write has averaged."""
        return self.sent / max(now - self.started, 1e-3)

    @property
    def ongoing(self) -> bool:
        """Its write goes on: neither given up nor done."""
        return not self.given_up and (self.sent < self.size or not self.size)

    def give_up(self, why: str) -> None:
        """Stop the write: at once if it waits for the peer's window, at the end of the
        frame it is sending otherwise (:mod:`ww.p2p.yamux` never cuts one short, or the
        peer's whole connection would be lost, not just the stream)."""
        if not self.ongoing:
            return
        self.given_up = True
        self.why = why
        if self.stats is not None:
            self.stats["replies_given_up"] += 1
        if self.scope is not None:
            self.scope.cancel()


@dataclass
class _Task:
    """One entry of a peer's ledger: a block it wants from us."""

    key: bytes  # the binary CID, as the peer sent it (a reply names it the same way)
    cid: CID | None  # None: not a CID we can parse (DONT_HAVE, if asked)
    priority: int
    want_type: WantType
    send_dont_have: bool


class _Peer:
    """One connected peer: what we asked of it, what it asks of us, our stream to it."""

    def __init__(self, peer_id: str) -> None:
        import trio

        self.id = peer_id
        self.assigned: set[bytes] = set()  # multihashes of wants asked of this peer
        self.asked: dict[bytes, None] = {}  # the last ASKED_MEMORY multihashes asked of it
        self.delivered = 0  # blocks it gave us
        self.dont_have = 0  # DONT_HAVEs it answered to our wants (such peers are asked last)
        self.timeouts = 0  # wants it kept past the peer timeout (so are these)
        self.liar = False  # it sent what no honest peer sends: it is asked nothing more
        self.heard = 0.0  # time.monotonic() of its last answer to one of our wants
        self._busy_at: float | None = None  # ... if it still had wants of ours after it
        # seconds between its last answers while busy (a mean over a few: answers come in
        # bursts, several blocks read at once, and windows are computed right after them)
        self._gaps: collections.deque[float] = collections.deque(maxlen=16)
        self.outbox: list[Message] = []  # our wants and cancels (bounded by our wants)
        self.ledger: dict[bytes, _Task] = {}  # its wants, by binary CID
        self.wake = trio.Event()
        self.room = trio.Event()  # set when its ledger shrinks
        self.inbound = 0  # its Bitswap streams open to us, being read
        self.waiting = 0  # more of its streams, waiting for one of those to end
        self.stream_ended = trio.Event()  # set when one of those ends
        self.gone = False
        self.sender_running = False

    def send(self, msg: Message) -> None:
        self.outbox.append(msg)
        self.wake.set()

    def answered(self, now: float) -> None:
        """It has answered one of our wants (a block, or DONT_HAVE), at ``now``; call once
        that want is no longer in ``assigned``.  Only the time between answers while it
        had wants outstanding is its pace (not the time it had nothing to do)."""
        if self._busy_at is not None:
            self._gaps.append(now - self._busy_at)
        self.heard = now
        self._busy_at = now if self.assigned else None

    def idle(self) -> None:
        """It had none of our wants until now: the wait for its next answer is not its pace."""
        self._busy_at = None

    def window(self) -> int:
        """How many of our wants it may hold at once (see :data:`QUEUE_SECONDS`)."""
        if not self._gaps:
            return START_WANTS
        gap = sum(self._gaps) / len(self._gaps)
        if gap <= QUEUE_SECONDS / PEER_WANTS:
            return PEER_WANTS
        return max(MIN_WANTS, min(PEER_WANTS, math.ceil(QUEUE_SECONDS / gap)))

    def shrunk(self) -> None:
        import trio

        self.room.set()
        self.room = trio.Event()


def links_of(block: bytes, limit: int | None = None) -> list[CID]:
    """The links of a dag-pb block, to prefetch: the first ``limit`` (all if None), decoded
    no further (the engine wants at most :data:`MAX_PREFETCH`: decoding all of a 4 MiB
    block's 524,000 tiny links took 4.3 s of the thread that serves every peer); those
    before the first that does not decode (the reader reports a corrupt node, not the
    prefetch)."""
    from . import dagpb

    found: list[CID] = []
    try:
        for link in itertools.islice(dagpb.iter_links(block), limit):
            found.append(link.cid)
    except IpfsError:
        pass
    return found


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
        self.liars: dict[str, None] = {}  # the last MAX_LIARS peers that lied, oldest first
        # what the last MAX_LIARS peers that left while asked last (they failed more wants
        # than they delivered) had done: delivered, DONT_HAVEs, timeouts, by peer id; one
        # that hangs up and comes back is asked last still (it was asked first again, a
        # PEER_TIMEOUT per reconnection)
        self.slow: dict[str, tuple[int, int, int]] = {}
        self._queue: collections.deque[bytes] = collections.deque()  # wants waiting for room
        # what was asked of the last MAX_DROPPED peers dropped, by peer id, oldest first
        self.dropped_asked: dict[str, dict[bytes, None]] = {}
        self.dirty: set[Path] = set()  # shard directories written since the last flush
        # One event per message whose blocks a worker is storing: stored there (a reader may
        # already find them in the repository), counted and handed over once it is set.
        self.storing: set[Any] = set()  # trio.Events
        self._priority = itertools.count()
        self._nursery: Any = None
        self.target_message = TARGET_MESSAGE
        self._reply_slots: Any = None  # a trio.Semaphore, made on the trio thread
        self._overdue_slots: Any = None  # another
        self._overdue: set[_Hold] = set()  # the replies that hold an overdue slot
        self._giving_up: set[_Hold] = set()  # replies given up for others, slot not yet freed
        self._receive_budget: _Budget | None = None
        self.stats = {"blocks_in": 0, "bytes_in": 0, "blocks_out": 0, "bytes_out": 0,
                      "dropped": 0, "liars": 0, "wants_dropped": 0, "ledger_peak": 0,
                      "ledgers_peak": 0, "reply_bytes": 0, "reply_bytes_peak": 0,
                      "receive_bytes_peak": 0, "replies_overdue": 0, "replies_given_up": 0,
                      "resets_in": 0}

    def _limits(self) -> tuple[Any, Any, _Budget]:
        """The reply slots, the overdue slots and the receive budget (made on first use, on
        the trio thread)."""
        import trio

        if self._reply_slots is None:
            self._reply_slots = trio.Semaphore(REPLY_SLOTS)
            self._overdue_slots = trio.Semaphore(OVERDUE_SLOTS)
        if self._receive_budget is None:
            self._receive_budget = _Budget(RECEIVE_BUDGET)
        return self._reply_slots, self._overdue_slots, self._receive_budget

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
        peer = self.peers[peer_id] = _Peer(peer_id)
        peer.liar = peer_id in self.liars
        if (record := self.slow.pop(peer_id, None)) is not None:
            peer.delivered, peer.dont_have, peer.timeouts = record
        peer.asked = self.dropped_asked.pop(peer_id, peer.asked)
        for want in list(self.wants.values()):  # wants that were waiting for anyone at all
            if want.peer is None and not want.queued:
                self._assign(want)
        self._refill()

    def peer_disconnected(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        peer.gone = True
        if peer.dont_have + peer.timeouts > peer.delivered:  # asked last: it stays so
            self.slow[peer_id] = (peer.delivered, peer.dont_have, peer.timeouts)
            if len(self.slow) > MAX_LIARS:
                del self.slow[next(iter(self.slow))]
        if peer.asked and not peer.liar:  # it may still answer: see MAX_DROPPED
            self.dropped_asked[peer_id] = peer.asked
            if len(self.dropped_asked) > MAX_DROPPED:
                del self.dropped_asked[next(iter(self.dropped_asked))]
        peer.ledger.clear()
        peer.wake.set()
        peer.stream_ended.set()
        peer.shrunk()
        self._move_on(peer, WENT_AWAY)

    def _move_on(self, peer: _Peer, why: str) -> None:
        """Give the wants asked of ``peer`` to the next peers, noting ``why`` it failed them.
        Its window is emptied first: a peer that stays (one that reset a reply) has room
        for the wants waiting in turn at once, and one asked of it now stays counted."""
        assigned = list(peer.assigned)
        peer.assigned.clear()
        for mh in assigned:
            want = self.wants.get(mh)
            if want is not None and want.peer == peer.id:
                want.tried[peer.id] = why
                want.peer = None
                self._assign(want)
        self._refill()

    def _reply_reset(self, peer_id: str) -> None:
        """``peer_id`` reset a stream it sent us its messages on: what it was sending is lost,
        and a peer that resets one has given up on us (a ww server gives up a reply the
        network does not take, and drops our wants with it; whether another implementation
        keeps them is not relied on), so what it was asked goes to the next peer now, not
        after :data:`PEER_TIMEOUT` (alone, it fails now).  A reply given up while its last
        frame was already going out is lost the same way: py-libp2p drops what the reader
        had not read when the reset comes.  It stays a peer: a later want may be asked of
        it again."""
        self.stats["resets_in"] += 1
        peer = self.peers.get(peer_id)
        if peer is None or not peer.assigned:
            return
        peer.timeouts += len(peer.assigned)  # failed as if they had timed out: asked last
        self._move_on(peer, RESET)

    def _lied(self, peer_id: str) -> None:
        """``peer_id`` sent a block it was not asked for (bytes that are not the block asked,
        a hash function or codec we never ask for) or a malformed message: it is asked
        nothing more (:attr:`liars`), and what it was asked goes to the next peer now."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.liar:
            return
        peer.liar = True
        self.stats["liars"] += 1
        self.liars[peer_id] = None
        if len(self.liars) > MAX_LIARS:
            del self.liars[next(iter(self.liars))]
        self._move_on(peer, WRONG_DATA)

    # -- fetching --------------------------------------------------------------------------

    def want(self, cid: CID, future: concurrent.futures.Future[bytes] | None) -> None:
        """Fetch ``cid``; ``future`` (None for a prefetch) gets the verified bytes or an error."""
        if future is not None and not future.set_running_or_notify_cancel():
            return
        existing = self.wants.get(cid.multihash)
        if existing is not None:
            if future is not None:
                existing.waiters.append(future)
                if existing.queued:  # a reader waits for it now: it goes first
                    self._queue.appendleft(cid.multihash)
                    self._refill()
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
        candidates = self._askable(want)
        if not candidates:
            self._fail(want)
            return
        candidates = [p for p in candidates if len(p.assigned) < p.window()]
        if not candidates:  # every peer has its window full: wait for the next answer
            want.peer = None
            if not want.queued:
                want.queued = True
                if want.waiters:
                    self._queue.appendleft(want.cid.multihash)
                else:
                    self._queue.append(want.cid.multihash)
            return
        # Spread over the peers that serve: least loaded (for its window) first, so that
        # three peers holding a file each send their share of it.
        peer = min(candidates, key=lambda p: len(p.assigned) / p.window())
        if not peer.assigned:
            peer.idle()
        want.queued = False
        want.peer = peer.id
        want.asked_at = time.monotonic()
        want.answered_before = peer.delivered + peer.dont_have
        mh = want.cid.multihash
        peer.assigned.add(mh)
        peer.asked.pop(mh, None)
        peer.asked[mh] = None
        if len(peer.asked) > ASKED_MEMORY:
            del peer.asked[next(iter(peer.asked))]
        peer.send(Message(wants=[WantEntry(bytes(want.cid), want.priority,
                                           want_type=WantType.BLOCK, send_dont_have=True)]))
        self._ensure_sender(peer)

    def _askable(self, want: _Want) -> list[_Peer]:
        """The peers ``want`` may go to: those not tried for it that never lied; of them, if
        any delivers more than it fails (answers DONT_HAVE or lets a want time out), only
        those: the others are asked last, once no peer that delivers is left to try, and a
        want waits for room at one that delivers rather than go to one that does not."""
        peers = [p for p in self.peers.values() if p.id not in want.tried and not p.liar]
        good = [p for p in peers if p.dont_have + p.timeouts <= p.delivered]
        return good or peers

    def _refill(self) -> None:
        """Ask the wants waiting in turn of peers that have room now (in order, a reader's
        first)."""
        while self._queue:
            want = self.wants.get(self._queue[0])
            if want is None or not want.queued:  # fetched, failed, or asked meanwhile
                self._queue.popleft()
                continue
            askable = self._askable(want)
            if askable and not any(len(p.assigned) < p.window() for p in askable):
                return  # its peers are busy: wait for their next answer
            self._queue.popleft()
            want.queued = False
            self._assign(want)

    def _fail(self, want: _Want) -> None:
        want.queued = False
        self.wants.pop(want.cid.multihash, None)
        for peer in self.peers.values():  # not asked: they lied before
            if peer.liar and peer.id not in want.tried:
                want.tried[peer.id] = WRONG_DATA
        if want.tried:
            counts: dict[str, int] = {}
            for why in want.tried.values():
                counts[why] = counts.get(why, 0) + 1
            whys = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
            reason = (f"block {want.cid} is not in the local repository and none of "
                      f"{len(want.tried)} connected peer(s) gave it ({whys})")
        else:
            reason = f"block {want.cid} is not in the local repository (no peers connected)"
        for future in want.waiters:
            if not future.done():
                future.set_exception(NotFoundError(reason))

    def _expire(self) -> None:
        """Move the wants a peer is silent about to the next peer (see the module doc): no
        answer from it since the want was asked or since its last answer, or the want
        passed over while it answered more than :data:`PEER_WANTS` others."""
        now = time.monotonic()
        for want in list(self.wants.values()):
            if want.peer is None or now - want.asked_at <= self.peer_timeout:
                continue
            peer = self.peers.get(want.peer)
            if peer is not None and now - peer.heard <= self.peer_timeout and \
                    peer.delivered + peer.dont_have - want.answered_before <= PEER_WANTS:
                continue  # it answers, and has not passed this one over: its turn comes
            if peer is not None:
                peer.assigned.discard(want.cid.multihash)
                peer.timeouts += 1
                peer.send(Message(wants=[WantEntry(bytes(want.cid), cancel=True)]))
            want.tried[want.peer] = f"did not answer within {self.peer_timeout:g} s"
            want.peer = None
            self._assign(want)
        self._refill()

    def _hash_and_store(self, blocks: list[tuple[bytes, bytes]],
                        wanted: dict[bytes, CID]) -> list[tuple[CID | None, Any]]:
        """In a worker thread: each block's CID (None: a prefix we do not take), computed from
        its bytes, and the outcome of storing it when it was wanted (``wanted``: the wants'
        CIDs by multihash as the message arrived): a shard directory to flush, None, or the
        OSError.  The libp2p thread, which every stream shares, neither hashes nor writes."""
        out: list[tuple[CID | None, Any]] = []
        for prefix, data in blocks:
            try:
                cid: CID | None = cid_from_block(prefix, data)
            except BitswapError:
                out.append((None, None))
                continue
            assert cid is not None
            ours = wanted.get(cid.multihash)
            stored: Any = None
            if ours is not None and len(data) <= MAX_BLOCK_SIZE:
                try:  # the CID we asked for (a v0 and a v1 share the multihash)
                    stored = self.store.put(ours, (data,), sync=False)  # verified: hashed
                    if stored is None:
                        stored = _STORED
                except OSError as e:
                    stored = e
            out.append((cid, stored))
        return out

    def _received(self, peer_id: str, cid: CID | None, data: bytes, stored: Any) -> None:
        """A block has arrived, been hashed and (if wanted) stored: hand it to its readers."""
        peer = self.peers.get(peer_id)
        want = self.wants.get(cid.multihash) if cid is not None else None
        if cid is None or (want is None and peer is not None
                           and cid.multihash not in peer.asked):
            # Neither wanted nor ever asked of it: not the bytes of the block asked, a lie
            # (a block wanted is taken from anyone: its bytes hash to what we want).
            self.stats["dropped"] += 1
            self._lied(peer_id)
            return
        if want is None or len(data) > MAX_BLOCK_SIZE:
            self.stats["dropped"] += 1  # no longer wanted (another peer gave it first)
            if want is None and stored is not None and not isinstance(stored, OSError):
                # stored as it arrived, for a want that ended before it was handed over (it
                # failed meanwhile on a loaded machine): it came from a peer all the same, and
                # a reader will find it in the repository
                self.stats["blocks_in"] += 1
                self.stats["bytes_in"] += len(data)
                if stored is not _STORED:
                    self.dirty.add(stored)
            return
        if stored is None and not self.store.has(want.cid):
            try:  # wanted only since the message arrived (so not stored yet)
                stored = self.store.put(want.cid, (data,), sync=False)
            except OSError as e:
                stored = e
        del self.wants[cid.multihash]
        cid = want.cid
        self.stats["blocks_in"] += 1
        self.stats["bytes_in"] += len(data)
        if peer is not None:
            peer.delivered += 1
            peer.assigned.discard(cid.multihash)
            peer.answered(time.monotonic())
        if want.peer is not None and want.peer != peer_id:
            other = self.peers.get(want.peer)
            if other is not None:
                other.assigned.discard(cid.multihash)
                other.send(Message(wants=[WantEntry(bytes(cid), cancel=True)]))
        if isinstance(stored, OSError):
            error = IpfsError(f"cannot store block {cid}: {stored.strerror}")
            for future in want.waiters:
                if not future.done():
                    future.set_exception(error)
            return
        if stored is not None and stored is not _STORED:
            self.dirty.add(stored)
        read = bool(want.waiters)
        for future in want.waiters:
            if not future.done():
                future.set_result(data)
        if read and cid.codec == DAG_PB:
            # Only below a block someone reads: a prefetched block's own links are not
            # followed, or one stat of a root would store the whole DAG a peer serves.
            self.prefetch(links_of(data, MAX_PREFETCH))

    async def settled(self) -> None:
        """Return once every block stored so far has been counted and handed over: a block
        is in the repository (a reader may find it there) a moment before the message that
        brought it is done with, and a flush or a final count must not run in that moment.
        Messages that arrive meanwhile are not waited for."""
        for handed_over in list(self.storing):
            await handed_over.wait()

    def prefetch(self, links: list[CID]) -> None:
        """Want ``links`` (of a dag-pb block a reader has just got), ahead of the reader
        asking for them one by one."""
        # Stop once MAX_PREFETCH are outstanding: counting them again for each of a 4 MiB
        # directory's 80,000 links took 2 s of this thread, which serves every peer.
        room = MAX_PREFETCH - sum(1 for w in self.wants.values() if not w.waiters)
        for link in links:
            if room <= 0:
                return
            if link.multihash not in self.wants:
                before = len(self.wants)
                self.want(link, None)
                room -= len(self.wants) - before  # 0 if it is here already (or failed)

    # -- messages in ---------------------------------------------------------------------

    async def handle_stream(self, stream: Any) -> None:
        """An inbound Bitswap stream: the peer's wants, and its answers to ours."""
        import trio

        peer_id = str(stream.muxed_conn.peer_id)
        self.peer_connected(peer_id)
        peer = self.peers.get(peer_id)
        if peer is None or peer.waiting >= MAX_WAITING_STREAMS:
            await _reset(stream)
            return
        if peer.inbound >= MAX_INBOUND_STREAMS:
            peer.waiting += 1  # wait for a turn: resetting would lose the blocks it carries
            try:
                while peer.inbound >= MAX_INBOUND_STREAMS and not peer.gone:
                    await peer.stream_ended.wait()
            finally:
                peer.waiting -= 1
            if peer.gone:
                await _reset(stream)
                return
        from ww.core.bridge import to_worker

        _, _, budget = self._limits()
        reader = _Reader(stream, budget)
        peer.inbound += 1
        try:
            while True:
                await self._until_room(peer)
                got = await reader.next()
                if got is None:
                    break
                if peer.gone:  # dropped (it did not take our replies): it may start over
                    budget.release(got[1])
                    raise BitswapError("bitswap: peer dropped")
                msg, held = got
                self.stats["receive_bytes_peak"] = budget.peak
                handed_over = trio.Event()
                self.storing.add(handed_over)
                try:
                    arrived: list[tuple[CID | None, Any]] = []
                    if msg.blocks:
                        wanted = {mh: w.cid for mh, w in self.wants.items()}
                        arrived = await to_worker(self._hash_and_store, msg.blocks, wanted)
                    self._on_message(peer_id, msg, arrived)
                finally:
                    self.storing.discard(handed_over)
                    handed_over.set()
                    del msg
                    budget.release(held)
        except MalformedError:
            self._lied(peer_id)
            await _reset(stream)
            return
        except Exception as e:
            if _was_reset(stream, e):
                self._reply_reset(peer_id)
            await _reset(stream)
            return
        finally:
            peer.inbound -= 1
            peer.stream_ended.set()
            peer.stream_ended = trio.Event()
        if _was_reset(stream):  # between messages
            self._reply_reset(peer_id)
        await _close(stream)

    async def _until_room(self, peer: _Peer) -> None:
        """Read no more from a peer whose ledger is full, until it takes some replies; a
        peer that owes us blocks is read on (its answers are in the same stream)."""
        while len(peer.ledger) >= MAX_WANTLIST and not peer.assigned and not peer.gone:
            await peer.room.wait()

    def _on_message(self, peer_id: str, msg: Message,
                    arrived: list[tuple[CID | None, Any]]) -> None:
        """``arrived``: :meth:`_hash_and_store`'s outcome for ``msg.blocks``."""
        for (_, data), (cid, stored) in zip(msg.blocks, arrived, strict=True):
            self._received(peer_id, cid, data, stored)
        for raw, kind in msg.presences:
            if kind != Presence.DONT_HAVE:
                continue
            try:
                cid, _ = CID.decode(raw)
            except CidError:
                continue
            want = self.wants.get(cid.multihash)
            if want is not None and want.peer == peer_id:
                want.tried[peer_id] = NO_BLOCK
                want.peer = None
                if (peer := self.peers.get(peer_id)) is not None:
                    peer.assigned.discard(cid.multihash)
                    peer.dont_have += 1
                    peer.answered(time.monotonic())
                self._assign(want)
        self._refill()
        if msg.wants or msg.full:
            self._serve(peer_id, msg.wants, msg.full)

    def _serve(self, peer_id: str, entries: list[WantEntry], full: bool = False) -> None:
        """Enter ``peer_id``'s wants and cancels in its ledger (see the module docstring)."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        ledger = peer.ledger
        before = len(ledger)
        if full:
            ledger.clear()
        # All ledgers' entries (only this method adds any; once per message: a message holds
        # at most 2 * MAX_WANTLIST entries, and the peers are a few hundred at most).
        total = sum(len(p.ledger) for p in self.peers.values())
        for entry in entries:
            key = entry.cid
            if len(key) > MAX_CID_SIZE:
                continue
            if entry.cancel:
                ledger.pop(key, None)
                continue
            task = ledger.get(key)
            if task is not None:  # wanted again: one entry, the strongest ask
                task.priority = entry.priority
                task.want_type = min(task.want_type, entry.want_type)
                task.send_dont_have = task.send_dont_have or entry.send_dont_have
                continue
            if len(ledger) >= MAX_WANTLIST or (
                    total >= MAX_LEDGERS and len(ledger) >= LEDGER_RESERVE):
                self.stats["wants_dropped"] += 1
                continue
            try:
                cid: CID | None = CID.decode(key)[0]
            except CidError:
                cid = None
            ledger[key] = _Task(key, cid, entry.priority, entry.want_type,
                                entry.send_dont_have)
            total += 1
        self.stats["ledger_peak"] = max(self.stats["ledger_peak"], len(ledger))
        self.stats["ledgers_peak"] = max(self.stats["ledgers_peak"], total)
        if len(ledger) < before:
            peer.shrunk()
        if ledger:
            peer.wake.set()
            self._ensure_sender(peer)

    def _collect(self, tasks: list[_Task]) -> tuple[bytes, list[_Task], int, int]:
        """In a worker thread: the reply to ``tasks`` in order, up to the target size.

        Returns the framed message (b"" if there is nothing to say), the tasks it answers,
        and the blocks and block bytes in it."""
        reply = Message()
        done: list[_Task] = []
        size = blocks = 0
        for task in tasks:
            if size >= self.target_message:
                break
            done.append(task)
            cid = task.cid
            if cid is None or not self.store.has(cid):
                if task.send_dont_have:
                    reply.presences.append((task.key, Presence.DONT_HAVE))
                    size += len(task.key) + 4
                continue
            if task.want_type == WantType.HAVE:
                reply.presences.append((task.key, Presence.HAVE))
                size += len(task.key) + 4
                continue
            try:
                data = self.store.get(cid)  # verified: a corrupt copy is never served
            except IpfsError:
                if task.send_dont_have:
                    reply.presences.append((task.key, Presence.DONT_HAVE))
                continue
            reply.blocks.append((prefix_of(cid), data))
            blocks += 1
            size += len(data)
        if not reply:
            return b"", done, 0, 0
        framed = frame(reply)
        return framed, done, blocks, sum(len(d) for _, d in reply.blocks)

    async def _reply(self, peer: _Peer, stream: Any) -> None:
        """Send ``peer`` one reply from its ledger: read and written holding one of the
        reply slots, the write going on in an overdue slot past :data:`REPLY_SLICE`."""
        import trio

        from ww.core.bridge import to_worker  # trio's worker threads, imported when used

        slots, overdue, _ = self._limits()
        await slots.acquire()
        hold = _Hold(slots, stats=self.stats)
        try:
            tasks = sorted(peer.ledger.values(), key=lambda t: -t.priority)[:REPLY_BATCH]
            framed, done, blocks, block_bytes = await to_worker(self._collect, tasks)
            for task in done:
                if peer.ledger.get(task.key) is task:  # not wanted anew meanwhile
                    del peer.ledger[task.key]
            peer.shrunk()
            if not framed:
                return
            stats = self.stats
            stats["reply_bytes"] += len(framed)
            stats["reply_bytes_peak"] = max(stats["reply_bytes_peak"], stats["reply_bytes"])
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._overdue_after, hold, slots, overdue)
                    try:  # stalled, too slow, given up, reset: the peer is dropped
                        await _write(stream, framed, hold)
                    except Exception:
                        if not hold.given_up:  # counted as given up already otherwise
                            stats["replies_given_up"] += 1
                        raise
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                stats["reply_bytes"] -= len(framed)
            stats["blocks_out"] += blocks
            stats["bytes_out"] += block_bytes
        finally:
            self._overdue.discard(hold)
            self._giving_up.discard(hold)
            hold.slot.release()

    async def _overdue_after(self, hold: _Hold, slots: Any, overdue: Any) -> None:
        """Past :data:`REPLY_SLICE`, move a reply still being written from its reply slot to
        an overdue slot (once one is free): the next peer's reply need not wait for it.
        While the overdue slots are full and another reply waits for a reply slot, the
        slowest of those writes (this one among them) is given up (:meth:`_make_room`):
        peers that read just fast enough never to be given up held all of them, every
        other peer waiting a slow write's end for each reply (long enough to fail a
        fetch)."""
        import trio

        await trio.sleep(REPLY_SLICE)
        while True:
            try:
                overdue.acquire_nowait()
                break
            except trio.WouldBlock:
                pass
            if hold.given_up or self._make_room(hold, slots.statistics().tasks_waiting):
                return  # this one was given up: _reply ends, its slot freed
            await trio.sleep(REPLY_SLICE)
        # Nothing is awaited from here on, so this task is never cancelled half-way: the
        # hold always names the one slot the reply holds, which _reply releases.
        hold.slot.release()
        hold.slot = overdue
        self._overdue.add(hold)
        self.stats["replies_overdue"] += 1

    def _make_room(self, hold: _Hold, waiting: int) -> bool:
        """For ``waiting`` replies waiting for a reply slot, give up the slowest of the
        overdue writes and ``hold``'s (whose reply waits for an overdue slot, holding a
        reply slot); True if that was ``hold``'s.  One for each reply waiting: none while
        as many given up have not yet freed their slots."""
        import trio

        if len(self._giving_up) >= waiting:
            return False
        now = trio.current_time()
        candidates = [h for h in (*self._overdue, hold) if h.ongoing]
        if not candidates:  # every one given up or done, its slot on its way back
            return False
        slowest = min(candidates, key=lambda h: h.rate(now))
        self._giving_up.add(slowest)
        slowest.give_up("the peer took its reply slower than the others, while another "
                        "waited")
        return slowest is hold

    # -- messages out --------------------------------------------------------------------

    def _ensure_sender(self, peer: _Peer) -> None:
        if not peer.sender_running and self._nursery is not None and \
                (peer.outbox or peer.ledger):
            peer.sender_running = True
            self._nursery.start_soon(self._sender, peer)

    async def _sender(self, peer: _Peer) -> None:
        """Write ``peer``'s outbox and replies on one stream of ours; a broken or stalled
        stream drops the peer."""
        import trio

        stream = None
        try:
            stream = await self._open_stream(peer.id)
            while not peer.gone:
                if peer.outbox:
                    batch, peer.outbox = peer.outbox, []
                    for data in _pack(batch):
                        await _write(stream, data)
                elif peer.ledger:
                    await self._reply(peer, stream)
                else:
                    peer.wake = trio.Event()
                    await peer.wake.wait()
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


async def _write(stream: Any, data: bytes, hold: _Hold | None = None) -> None:
    """Write one message, :data:`WRITE_CHUNK` bytes at a time: a peer that takes none of a
    chunk for :data:`STALL_TIMEOUT`, or takes the message slower than :data:`MIN_SEND_RATE`
    (after :data:`SEND_TIMEOUT`), is given up; one that takes it slowly gets all of it.
    ``hold`` follows the write (and may be given up from outside, :meth:`_Hold.give_up`);
    :class:`BitswapError` if it was given up."""
    import trio

    hold = hold if hold is not None else _Hold()
    view = memoryview(data)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as hold.scope:
            hold.started = hold.moved = trio.current_time()
            hold.size = len(data)
            nursery.start_soon(_watch, hold, len(data))
            for start in range(0, len(data), WRITE_CHUNK):
                if hold.given_up:  # while the last frame went out: stop between chunks
                    break
                await stream.write(bytes(view[start:start + WRITE_CHUNK]))
                hold.sent = min(len(data), start + WRITE_CHUNK)
                hold.moved = trio.current_time()
        nursery.cancel_scope.cancel()
    if hold.given_up:
        raise BitswapError(f"bitswap: {hold.why}")


async def _watch(hold: _Hold, size: int) -> None:
    """Give ``hold``'s write of ``size`` bytes up once it is stalled or too slow."""
    import trio

    until = hold.started + SEND_TIMEOUT + size / MIN_SEND_RATE
    while hold.ongoing:
        await trio.sleep_until(min(until, hold.moved + STALL_TIMEOUT))
        now = trio.current_time()
        if now >= until:
            hold.give_up("the peer does not take what it asked for")
        elif now >= hold.moved + STALL_TIMEOUT:
            hold.give_up(f"the peer took nothing for {STALL_TIMEOUT:g} s")


def _was_reset(stream: Any, error: Exception | None = None) -> bool:
    """Whether the peer reset ``stream`` (reading it ended with ``error``, or at its end)
    while the connection stays: py-libp2p 0.8.1's Yamux reads a stream reset, once it has
    given what it holds, as its end (the stream is gone from the connection), so the
    stream's flag says it; a connection that breaks flags each of its streams so too (the
    peer went away: :meth:`Engine.peer_disconnected` follows).  py-libp2p flags a stream
    this host reset (:mod:`ww.p2p.admission` giving its place to another) the same way:
    ``reset_sent`` (:class:`ww.p2p.yamux.Stream`) tells ours apart, and those are not the
    peer's."""
    from libp2p.network.stream.exceptions import StreamReset

    muxed = getattr(stream, "muxed_stream", None)
    conn = getattr(stream, "muxed_conn", None)
    shutting = getattr(conn, "event_shutting_down", None)
    if getattr(conn, "is_closed", False) is True or (
            shutting is not None and shutting.is_set()):
        return False
    if getattr(muxed, "reset_sent", False) is True:
        return False
    return isinstance(error, StreamReset) or getattr(muxed, "reset_received", False) is True


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
