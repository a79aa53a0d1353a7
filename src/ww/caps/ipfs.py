"""The IPFS capability: a thin adapter from ipfs.capnp onto :class:`ww.ipfs.api.CoreAPI`.

**Off the event loop.**  The CoreAPI is synchronous and may wait long (a Bitswap fetch from
a silent peer, a slow kubo node, a scope walk of many ``ls`` calls), so every call that
touches the backend runs in one of the cell's own worker threads (a
:class:`ww.core.bridge.DaemonWorkers`, at most :data:`WORKERS`), never on the event loop
that serves fd 3: a waiting ``cat`` does not hold up the cell's other calls.  Each call runs under a
:class:`~ww.ipfs.api.CancelToken`: when the cell cancels the call (or drops the reader or
writer it works for, or hangs up), the token is cancelled and the backend stops the work
(the kubo connection is shut down, the Bitswap want withdrawn, the scope walk ends).

**Writing.**  ``add`` hands the cell a ``Writer`` whose ``write`` is a ``-> stream`` method:
Cap'n Proto delivers a capability's stream calls to the server one at a time, in the order
sent, so bytes reach the importer in order whatever the number of writes in flight; a cell
writing faster than the host stores waits for its ``write`` calls to return (flow control),
and is never refused.  The writes go through a bounded queue (:data:`QUEUE_CHUNKS` pieces)
to an importer thread of the writer's own, so the host holds a few pieces of a file at a
time, and all the cell's writers together at most :data:`WRITE_BUFFERS` of them
(:class:`_WriteBuffers`: a write waits for room).  At most :data:`MAX_WRITERS` files of one
cell are being added at once; one more ``add`` waits for one to finish.  A writer dropped
without ``done()`` (or left open when the cell exits) is abandoned: its importer stops and
nothing is pinned.

**Reading.**  ``cat`` hands out a ``Reader`` whose ``read(count)`` returns at most ``count``
bytes (capped at 4 MiB) pulled from the backend's streaming ``cat``, reads applied in the
order sent.  A cell has at most :data:`MAX_READERS` readers open, and what they hold between
its reads is bounded by :data:`READ_BUFFERS` (:class:`_Buffers`).

Attenuation: a server may carry an :class:`~ww.caps.ipfs_scope.IpfsScope` (read-only, and/or
limited to the DAGs under some roots) and checks every call against it before touching the
backend; ``attenuate`` hands out a new server with a narrower scope over the same backend
(and the same worker threads).  A server without a scope is the full capability and pays
nothing for the checks.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ww.caps.ipfs_scope import IpfsScope, WalkBudget, canonical
from ww.core import bridge
from ww.core.errors import CallError
from ww.host.answers import UNBOUNDED, AnswerBudget
from ww.host.denied import NOBODY, Caller
from ww.ipfs.api import (
    WOULD_WAIT,
    AddOptions,
    CallCancelled,
    CancelToken,
    CoreAPI,
    Entry,
    EntryType,
    Link,
    PeerInfo,
    ShardBoundError,
    ShardCount,
    Stat,
    WouldWait,
    cancellable,
    counting_shards,
    local_only,
)
from ww.p2p.dial_policy import STRICT, DialPolicy
from ww.schema import load

_ipfs = load("ipfs")

MAX_READ = 4 * 1024 * 1024
MAX_WRITE = 4 * 1024 * 1024
QUEUE_CHUNKS = 8  # pieces buffered between a writer and its importer thread
WORKERS = 4  # threads per cell for its IPFS calls (reads, ls, stat, ...)
MAX_WRITERS = 16  # files one cell may be adding at once (each has an importer thread)
READ_AHEAD = 2 * 1024 * 1024  # bytes a reader fetches ahead of the cell's reads
MAX_READERS = 1024
"""Readers one cell may have open at once: each costs the host about 17 KiB even when it
holds no bytes, so past this ``cat`` fails (as open(2) does with EMFILE) until the cell drops
one."""
WRITE_BUFFERS = 16 * 1024 * 1024
"""Bytes one cell's writers may hold between a ``write`` and their importer threads having
gone past them (queued for an importer, or the piece it works on): a ``write`` waits for
room (:class:`_WriteBuffers`)."""
READ_BUFFERS = 16 * 1024 * 1024
"""Bytes one cell's open readers may hold between its reads (what they fetched ahead, and the
block their stream is at): past it, the readers least recently read drop theirs
(:class:`_Buffers`)."""

MAX_LISTED = 8 * 1024 * 1024
"""Bytes an answer of ``ls``, ``stat``, ``pins`` or ``peers`` may have, at most: their size is
the content's or the node's, not their call's (a 100-byte ``ls`` of a directory block a cell
made can answer 260 KiB), so each takes its share of the cell's
:class:`~ww.host.answers.AnswerBudget` before it is produced, is measured as it is produced
(:meth:`IpfsServer._listed`), and keeps what its answer has; a longer one stops there and
fails with one line (some 70,000 entries)."""
LISTED_FIRST = 64 * 1024
"""The share such an answer takes first: most are this small (a ``stat`` of a file, a
directory of a few hundred entries), so 256 of them are produced at once, and one waiting on
the network holds no more.  One that turns out longer takes :data:`MAX_LISTED` in its place
if the budget has room for it at once, and goes on from where it is; otherwise it drops what
it has, gives its share back, waits for :data:`MAX_LISTED` and is produced again."""
TOO_LONG = ("{method}: the answer would be more than {mib} MiB, what a call answers at most"
            "{hint}")
"""The one line a longer answer fails with; ``hint``: what the cell can do instead."""
MAX_LISTED_SHARDS = 65_536
"""HAMT sub-shards an ``ls`` or ``stat`` reads, at most, resolving its path and listing (each
counted as it is read, :func:`ww.ipfs.api.shard_read`).  The answer's bytes do not bound them:
kubo writes a chain of single-link shards where names share a hash prefix, so an entry may lie
63 shards down (fanout 2; 7 at kubo's 256), and a cell's HAMT of such chains had a 32 KB
``ls`` of 500 entries read 31,500 blocks, 0.9 s of the host's CPU (some 5 minutes at the
8 MiB bound).  Listings that fit in :data:`MAX_LISTED` need fewer: a HAMT of random names has
some 0.3 sub-shards an entry at fanout 256, 0.4 at 16, 0.5 at 8, 1.44 at 2, so the 174,762
entries of 48 bytes that 8 MiB holds at most have some 50,000 at fanout 256 (67,000 at 16;
there, the 95,000 entries of kubo's CIDv0 that 8 MiB holds at most, some 37,000).  Past it
the listing stops and fails with one line."""
TOO_MANY_SHARDS = ("{method}: the listing would read more than {shards} HAMT shards, what a "
                   "call reads at most{hint}")
_HINTS = {
    "ls": "; reach the entries you need by name instead (ls, stat or cat PATH/NAME)",
    "stat": "; reach the entries you need by name instead (ls, stat or cat PATH/NAME)",
    "pins": "; a capability attenuated to roots lists only the pins under them and its own",
    "peers": "",
}

T = TypeVar("T")

_ENTRY_TYPES = {EntryType.FILE: "file", EntryType.DIRECTORY: "directory",
                EntryType.SYMLINK: "symlink"}
_RAW_LEAVES = {"default": None, "yes": True, "no": False}


def _fill_peer(builder: Any, info: PeerInfo) -> None:
    builder.id = info.id
    builder.addresses = list(info.addresses)
    builder.protocols = list(info.protocols)


def _text(name: str) -> str:
    """A name or target from content as Cap'n Proto Text (UTF-8): bytes that are not UTF-8
    (kept as surrogates) become U+FFFD, as in kubo's JSON, rather than fail the call."""
    if name.isascii():
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _fill_entry(builder: Any, entry: Entry) -> None:
    builder.name = _text(entry.name)
    builder.type = _ENTRY_TYPES[entry.type]
    builder.size = entry.size
    builder.cid = entry.cid


def _fill_stat(builder: Any, stat: Stat) -> None:
    builder.cid = stat.cid
    builder.type = _ENTRY_TYPES[stat.type]
    builder.size = stat.size
    builder.cumulativeSize = stat.cumulative_size
    links = builder.init("links", len(stat.links))
    for i, link in enumerate(stat.links):
        out = links[i]
        out.name = _text(link.name)
        out.size = link.size
        out.cid = link.cid
    if stat.target is not None:
        builder.target = _text(stat.target)


def _text_bytes(text: str | None) -> int:
    """What a Text takes in a Cap'n Proto message: its UTF-8, a NUL, padded to a word.  A
    byte of a name that is not UTF-8 (a lone surrogate here) is counted as the 3 bytes of
    the U+FFFD :func:`_text` makes of it, at most: counted as 1 byte, names of such bytes
    made the answers the budget let in three times as large as it counted."""
    if text is None:
        return 0
    if text.isascii():
        return (len(text) + 8) & ~7
    return (len(text.encode("utf-8", "surrogatepass")) + 8) & ~7


def _entry_bytes(entry: Entry | Link) -> int:
    """An ``Entry`` of ``ls`` or a link of ``stat``: 2 data words, 2 pointers, their texts."""
    name, cid = entry.name, entry.cid
    if name.isascii() and cid.isascii():  # the common case, without two calls
        return 32 + ((len(name) + 8) & ~7) + ((len(cid) + 8) & ~7)
    return 32 + _text_bytes(name) + _text_bytes(cid)


def _stat_bytes(stat: Stat) -> int:
    links = sum(_entry_bytes(link) for link in stat.links)
    return 64 + _text_bytes(stat.cid) + _text_bytes(stat.target) + links


def _peer_bytes(info: PeerInfo) -> int:
    return (32 + _text_bytes(info.id) + sum(8 + _text_bytes(a) for a in info.addresses)
            + sum(8 + _text_bytes(p) for p in info.protocols))


def _pin_bytes(cid: str) -> int:
    return 8 + _text_bytes(cid)


class _Listing:
    """An answer of ``ls``, ``stat``, ``pins`` or ``peers`` as it is produced, in worker
    threads, one :meth:`fill` at a time: ``start()`` gives its head (``stat``'s node, or
    None), the head's bytes, and an iterator of its items, each ``measure(item)`` bytes."""

    __slots__ = ("head", "items", "size", "shards", "_start", "_source", "_measure")

    def __init__(self, start: Callable[[], tuple[Any, int, Iterator[Any]]],
                 measure: Callable[[Any], int]) -> None:
        self._start = start
        self._measure = measure
        self._source: Iterator[Any] | None = None
        self.head: Any = None
        self.items: list[Any] = []
        self.size = 0
        self.shards = ShardCount(MAX_LISTED_SHARDS)  # HAMT sub-shards read so far

    def fill(self, limit: int) -> bool:
        """Read on until the answer is whole (True) or has passed ``limit`` bytes (False):
        the item that passed it is kept, so that a :meth:`fill` with a larger limit goes on
        from there; nothing is read past it.  Every HAMT sub-shard read on the way is counted
        in :attr:`shards`: past :data:`MAX_LISTED_SHARDS`, :class:`ShardBoundError`."""
        with counting_shards(self.shards):
            if self._source is None:
                self.head, self.size, self._source = self._start()
            size = self.size
            if size > limit:
                return False
            append, measure = self.items.append, self._measure
            try:
                for item in self._source:
                    append(item)
                    size += measure(item)
                    if size > limit:
                        return False
            finally:
                self.size = size
            return True

    def drop(self) -> None:
        """Let go of everything read (and of the source: a kubo reply is closed), so that the
        next :meth:`fill` starts from the beginning."""
        source, self._source = self._source, None
        self.head, self.items, self.size = None, [], 0
        self.shards.read = 0
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _within(token: CancelToken, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    token.check()  # cancelled while it waited for a thread: do nothing
    with cancellable(token):
        return fn(*args)


class IpfsCell:
    """What one cell's IPFS capability, and those narrowed from it, share: the worker
    threads, the bound on open writers, and the tokens of the work in progress.

    One per cell, whatever identities it logs in with (``ww.app.build`` shares it between
    the servers of its logins): a server per identity made these bounds per identity, and a
    cell that logged in with fresh keys had the host start 16 importer threads and 4 workers
    for each, without end (10 identities: 482 threads; the machine's pids next)."""

    def __init__(self) -> None:
        self.workers = bridge.DaemonWorkers(WORKERS, "ww-ipfs", lambda: CallCancelled(
            "the cell's IPFS capability is closed"))
        self.writers = asyncio.Semaphore(MAX_WRITERS)
        self.tokens: weakref.WeakSet[CancelToken] = weakref.WeakSet()
        self.buffers = _Buffers(READ_BUFFERS)
        self.written = _WriteBuffers(WRITE_BUFFERS)
        self.readers = 0  # readers open (or being opened)
        self.walks = WalkBudget()  # what its scopes' reachability walks may take together
        self.closed = False

    def token(self) -> CancelToken:
        """A token cancelled when the cell goes away, if not before."""
        token = CancelToken()
        if self.closed:
            token.cancel()
        self.tokens.add(token)
        return token

    async def run(self, fn: Callable[..., T], *args: Any,
                  token: CancelToken | None = None) -> T:
        """``fn(*args)`` in a worker thread under ``token`` (a new one if None).  If the call
        is cancelled, so is the token (the work stops) and CancelledError is raised at once."""
        if token is None:
            token = self.token()
        return await bridge.wait_future(  # inline: no local of this frame holds the future
            self.workers.submit(_within, token, fn, args), on_cancel=token.cancel)

    def close(self) -> None:
        """The cell is gone: stop all its work, abandon its writers."""
        self.closed = True
        for token in list(self.tokens):
            token.cancel()
        self.workers.close()


class _Buffers:
    """The bytes one cell's readers hold between reads, within ``limit``.

    A reader that was opened, or read, holds what it fetched ahead and the block its stream
    is at; a cell can open readers by the thousand and never read from them again (each
    call is small, so fd 3's flow limit lets them all in), and 2,000 readers of one file
    grew the host past its memory guard within a second.  So each reader reports what it
    holds (:meth:`charge`) and, past ``limit``, the readers least recently read that are
    not fetching or answering drop what they hold (:meth:`ReaderServer._drop`): their next
    read opens the stream again at their position (content under ``/ipfs/`` does not
    change).  Nothing waits and nothing fails, so this costs an honest cell no deadlock;
    one reading more files at once than fit costs re-reading the start of a block (from
    the local repository for the embedded node, a new request for kubo).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.drops = 0  # readers made to drop what they held
        # id -> (reader, bytes charged), least recently charged first
        self._readers: collections.OrderedDict[int, tuple[weakref.ref[ReaderServer], int]] = (
            collections.OrderedDict())

    def charge(self, reader: ReaderServer, size: int) -> None:
        """``reader`` now holds ``size`` bytes and was just used: others drop theirs while
        the cell's readers hold more than the limit."""
        key = id(reader)
        old = self._readers.pop(key, None)
        self.held += size - (old[1] if old else 0)
        if size:
            self._readers[key] = (weakref.ref(reader), size)
        if self.held <= self.limit:
            return
        for other_key, (ref, _) in list(self._readers.items()):
            if self.held <= self.limit:
                break
            other = ref()
            if other_key != key and other is not None and other._droppable():
                other._drop()
                self.held -= self._readers.pop(other_key)[1]
                self.drops += 1

    def forget(self, reader: ReaderServer) -> None:
        old = self._readers.pop(id(reader), None)
        if old is not None:
            self.held -= old[1]


class _WriteBuffers(AnswerBudget):
    """The bytes one cell's writers hold, within ``limit``: taken by ``write`` before its
    piece is queued for the importer thread, given back once that thread has gone past the
    piece (it asks for the next one), or its import ended.

    ``write`` is answered once its piece is queued, so the bounds on calls in flight (fd 3's
    flow limit, a remote peer's inbound budget) let go of its bytes there, and what the
    importers held was counted nowhere: a cell's 16 writers, each with up to
    :data:`QUEUE_CHUNKS` pieces of 4 MiB queued and one in hand, could hold 500 MiB; remote
    peers adding files through a cell's exported IPFS capability as fast as they sent made
    the host's memory guard hang up its fd 3 (the importers held 60-110 MiB).  A ``write``
    waits for room, first come first served (flow control, as a full queue makes it wait);
    a piece larger than the limit is let in alone.  No deadlock: what holds the room is
    queued for importers, which go on without any ``write``.

    (An :class:`~ww.host.answers.AnswerBudget` that never produces an answer: the same
    first-come-first-served room, taken and given back by bytes.)"""

    async def take(self, size: int) -> None:
        await self._admit(size)

    def give(self, size: int) -> None:
        self._give_back(size)


class _Held:
    """On the loop: the bytes one writer holds of its cell's :class:`_WriteBuffers`."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: _WriteBuffers) -> None:
        self.budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        self.size += size

    def give(self, size: int) -> None:
        size = min(size, self.size)
        self.size -= size
        self.budget.give(size)

    def give_all(self) -> None:
        self.give(self.size)


_END = object()


def _chunks(feed: bridge.ThreadFeed[Any], past: Callable[[int], object]) -> Iterator[bytes]:
    """The importer thread's input: the pieces in order until the end marker; ``past(n)``
    once the importer asks for the piece after one of ``n`` bytes."""
    for item in feed.items():
        if item is _END:
            return
        size = len(item)
        yield item
        del item  # not kept while the next piece is waited for
        past(size)


def _import(api: CoreAPI, options: AddOptions, feed: bridge.ThreadFeed[Any],
            token: CancelToken, past: Callable[[int], object]) -> str:
    """An importer thread: one file from ``feed`` into the backend; its CID."""
    try:
        with cancellable(token):
            return api.add_stream(_chunks(feed, past), options)
    finally:
        feed.end()


class WriterServer(_ipfs.Writer.Server):  # type: ignore[name-defined,misc]
    """Feeds one file's bytes to ``api.add_stream`` running in an importer thread.

    ``write`` is a stream method, so the RPC system hands this server one write at a time in
    the order sent; ``_order`` (a fair lock) keeps that order even for a server built from a
    schema without ``-> stream``.  Dropped without ``done()``: the import is abandoned.
    """

    def __init__(self, cell: IpfsCell, api: CoreAPI, options: AddOptions,
                 on_done: Callable[[str], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._on_done = on_done  # told the CID once the file is added
        self._finished = False
        self._order = asyncio.Lock()
        # Nothing in the feed refers to the writer, so that a writer the cell drops is
        # collected (and abandons the import) even while its importer waits.
        self._feed: bridge.ThreadFeed[Any] = bridge.ThreadFeed(
            loop, QUEUE_CHUNKS,
            lambda: CallCancelled("the cell dropped the writer without done()"))
        self._token = cell.token()
        self._token.on_cancel(self._feed.end)
        writers = cell.writers
        held = self._held = _Held(cell.written)

        def ended(future: asyncio.Future[str]) -> None:
            writers.release()
            held.give_all()  # what is still queued is dropped
            if not future.cancelled():
                future.exception()  # a dropped writer's error is nobody's to see

        self._result: asyncio.Future[str] = bridge.in_new_thread(
            loop, "ww-ipfs-add", _import, api, options, self._feed, self._token,
            lambda n: bridge.call_in_loop(loop, held.give, n))
        self._result.add_done_callback(ended)

    async def _put(self, read: Callable[[], bytes] | None) -> None:
        """Queue for the importer the piece ``read()`` gives (None: the end marker).  A piece
        takes its room in the cell's write buffers first, and is read out of its call (a
        copy) only then: the most a write carries, given back down to its size once read."""
        async with self._order:
            held, reserved, queued = self._held, 0, False
            try:
                item: Any = _END
                if read is not None:
                    if not self._result.done():  # (ended: the feed takes nothing more)
                        await held.budget.take(MAX_WRITE)
                        held.take(MAX_WRITE)
                        reserved = MAX_WRITE
                    item = read()
                    if reserved:
                        held.give(reserved - len(item))
                        reserved = len(item)
                queued = await self._feed.put(item)
            finally:
                if not queued:
                    held.give(reserved)
            if queued:
                return
        await asyncio.shield(self._result)  # the import ended: raise its error
        raise CallError("the file was already finished")

    async def write_context(self, context: Any) -> None:
        """``write(data)``, given its call rather than its bytes: pycapnp copies a ``Data``
        parameter out of the call as it hands it to a method, and a write waiting for room
        held that copy besides the call's own bytes."""
        if self._finished:
            raise CallError("write after done()")

        def read() -> bytes:
            data = context.params.data
            if len(data) > MAX_WRITE:
                raise CallError(f"write of {len(data)} bytes: at most {MAX_WRITE} per call")
            return bytes(data)

        await self._put(read)

    async def done(self, **kwargs: Any) -> str:
        if self._finished:
            raise CallError("done() was already called")
        self._finished = True
        await self._put(None)
        cid = await asyncio.shield(self._result)
        if self._on_done is not None:
            self._on_done(cid)
        return cid

    def __del__(self) -> None:
        # Dropped (by the cell, or with its connection): an import not finished is abandoned.
        self._token.cancel()


class ReaderServer(_ipfs.Reader.Server):  # type: ignore[name-defined,misc]
    """Serves ``read(count)`` from the backend's chunk iterator.

    With a backend whose reads can stop short of the network (``local``: the embedded node,
    see :func:`ww.ipfs.api.local_only`), a read is served on the loop from the repository,
    one read's worth at a time (at most MAX_READ of verified local blocks), and only where a
    block is missing does the reader go to the worker threads.  Otherwise the iterator is
    advanced in the cell's worker threads, one job at a time, each fetching up to READ_AHEAD
    bytes ahead of the cell's reads, so that the next pieces are read and verified while the
    loop sends the last ones.  Reads are answered in the order they arrive (a fair lock); a
    cancelled read cancels the reader (its position would be unknown).  Each read takes the
    bytes it asks for from the cell's :class:`~ww.host.answers.AnswerBudget` first, so a
    cell that does not read fd 3 makes the host wait, not hold ever more answers.  What the
    reader holds between reads counts in the cell's :class:`_Buffers`: past its limit, an
    idle reader drops it and opens its stream again (``open_at``) when next read.
    """

    def __init__(self, cell: IpfsCell, open_at: Callable[[int, int | None], Iterator[bytes]],
                 first: bytes, chunks: Iterator[bytes] | None, token: CancelToken,
                 start: int = 0, end: int | None = None, local: bool = False,
                 answers: AnswerBudget = UNBOUNDED) -> None:
        self._cell = cell  # first: __del__ gives back the cell's count of open readers
        self._answers = answers
        self._open_at = open_at  # (offset, length) -> the stream from there
        self._chunks = chunks  # None: dropped (or at the end); opened again when read
        self._pos = start + len(first)  # where the stream is in the file
        self._end = end  # where it ends (None: at the file's end)
        self._tail = len(first)  # the last piece the stream gave: its frame still holds it
        self._token = token
        self._local = local
        self._ready: collections.deque[memoryview] = collections.deque()
        self._buffered = 0
        self._eof = chunks is None
        self._error: BaseException | None = None
        self._filling: asyncio.Future[None] | None = None
        self._busy = False  # a read was let in and is answering
        self._order = asyncio.Lock()
        if first:
            self._ready.append(memoryview(first))
            self._buffered = len(first)
        self._charge()

    def _charge(self) -> None:
        self._cell.buffers.charge(self, self._buffered + self._tail)

    def _droppable(self) -> bool:
        return (self._filling is None and not self._busy and self._error is None
                and (self._chunks is not None or self._buffered > 0))

    def _drop(self) -> None:
        """Drop what is held (the cell's :class:`_Buffers` is over its limit): the stream is
        closed, and opened again at the cell's position by the next read."""
        self._pos -= self._buffered
        self._ready.clear()
        self._buffered = self._tail = 0
        self._eof = False
        chunks, self._chunks = self._chunks, None
        close = getattr(chunks, "close", None)
        if close is not None:  # here: no thread runs it (no fetch is under way)
            _close(close)

    def _fetch(self, want: int) -> tuple[list[bytes], bool]:
        """The next pieces, ``want`` bytes or more, and whether that is the end: in a worker,
        or on the loop under local_only(), where it stops early at a block it would wait for."""
        if self._chunks is None:  # dropped: open the stream again where it was
            length = None if self._end is None else max(0, self._end - self._pos)
            self._chunks = self._open_at(self._pos, length)
        got: list[bytes] = []
        size = 0
        while size < want:
            chunk = next(self._chunks, None)
            if chunk is None:
                return got, True
            if chunk is WOULD_WAIT:
                break
            got.append(chunk)
            size += len(chunk)
        return got, False

    def _fetch_here(self, want: int) -> bool:
        """On the loop, from the repository alone: whether ``want`` bytes (or the end) came."""
        try:
            with local_only():
                chunks, self._eof = self._fetch(want)
        except WouldWait:  # dropped, and opening it again would wait: a worker opens it
            return False
        except Exception as e:  # the stream's error: raised by the read that reaches it
            self._error = e
            return True
        got = self._took(chunks)
        return self._eof or got >= want

    def _took(self, chunks: list[bytes]) -> int:
        """Keep what the stream gave; its size."""
        got = 0
        for chunk in chunks:
            self._ready.append(memoryview(chunk))
            got += len(chunk)
        self._buffered += got
        self._pos += got
        if self._eof:
            self._tail = 0
        elif chunks:
            self._tail = len(chunks[-1])
        self._charge()
        return got

    def _fill(self, count: int) -> asyncio.Future[None]:
        """The job fetching ahead, started if none runs."""
        if self._filling is None:
            want = max(count, READ_AHEAD) - self._buffered
            self._filling = asyncio.ensure_future(self._fetch_ahead(want))
        return self._filling

    async def _fetch_ahead(self, want: int) -> None:
        # The state is updated before this job counts as done, so whoever sees it done
        # sees what it fetched.
        try:
            chunks, self._eof = await self._cell.run(self._fetch, want, token=self._token)
            self._took(chunks)
        except asyncio.CancelledError:
            self._error = CallCancelled("the read was cancelled")
        except Exception as e:  # the stream's error: raised by the read that reaches it
            self._error = e
        finally:
            self._filling = None

    def _take(self, count: int) -> bytes:
        parts: list[memoryview] = []
        while count > 0 and self._ready:
            head = self._ready[0]
            piece = head[:count]
            if len(piece) == len(head):
                self._ready.popleft()
            else:
                self._ready[0] = head[len(piece):]
            parts.append(piece)
            count -= len(piece)
            self._buffered -= len(piece)
        return b"".join(parts)

    async def read(self, count: int, **kwargs: Any) -> bytes:
        count = min(count, MAX_READ)
        if count == 0:
            return b""
        async with self._order, self._answers.answer(count) as answer:
            self._busy = True
            try:
                while self._buffered < count and not self._eof:
                    if self._error is not None:
                        raise self._error
                    self._token.check()
                    if (self._local and self._filling is None
                            and self._fetch_here(count - self._buffered)):
                        continue
                    await asyncio.shield(self._fill(count))
            except asyncio.CancelledError:
                self._token.cancel()
                raise
            finally:
                self._busy = False
            data = self._take(count)
            self._charge()
            answer.size = len(data)
            if (not self._local and not self._eof and self._error is None
                    and self._buffered < READ_AHEAD):
                self._fill(count)  # read on while the loop sends this
            return data

    def __del__(self) -> None:
        # Dropped: stop what the backend still does for it, and close its stream.
        self._cell.readers -= 1
        self._token.cancel()
        self._cell.buffers.forget(self)
        close = getattr(self._chunks, "close", None)
        if close is not None:
            try:
                self._cell.workers.submit(_close, close)
            except CallCancelled:
                pass


def _close(close: Callable[[], None]) -> None:
    try:
        close()
    except ValueError:  # still running in a cancelled read: it ends on its own
        pass


class IpfsServer(_ipfs.IPFS.Server):  # type: ignore[name-defined,misc]
    """The IPFS interface of ipfs.capnp over one CoreAPI backend, within ``scope`` if given.

    The servers narrowed from one (``attenuate``) share its :class:`IpfsCell`: its worker
    threads and writers, all stopped by :meth:`close` when the cell is gone.
    """

    def __init__(self, api: CoreAPI, scope: IpfsScope | None = None,
                 caller: Caller = NOBODY, cell: IpfsCell | None = None,
                 dial_policy: DialPolicy = STRICT) -> None:
        self._api = api
        self.scope = scope
        self._caller = caller
        self._cell = cell if cell is not None else IpfsCell()
        self.dial_policy = dial_policy  # where `connect` may make the host dial

    def close(self) -> None:
        """The cell hung up or is gone: cancel its calls, abandon its writers."""
        self._cell.close()

    def _check(self, method: str, path: str | None = None) -> None:
        if self.scope is not None and (reason := self.scope.denied(method, path)):
            raise self._caller.deny("ipfs", method, reason)

    async def _check_path(self, method: str, path: str) -> None:
        """``_check`` of a call on ``path``: off the loop when it may walk the roots' DAGs."""
        scope = self.scope
        if scope is not None and scope.roots:
            await self._cell.run(self._check, method, path)
        else:
            self._check(method, path)

    def narrowed(self, method: str, read_only: bool, roots: list[str]) -> IpfsScope:
        """The scope of a capability narrower than this one (for ``attenuate`` and for a
        sub-cell's grant); a root outside this capability's own is refused."""
        scope = self.scope or IpfsScope(self._api, walks=self._cell.walks)
        resolved = []
        for root in roots:
            if reason := scope.path_denied(root):
                raise self._caller.deny("ipfs", method, f"cannot widen the capability: {reason}")
            resolved.append(canonical(self._api.resolve(root)))
        return scope.narrowed(read_only, resolved)

    async def narrow(self, method: str, read_only: bool, roots: list[str]) -> IpfsScope:
        """:meth:`narrowed` in this cell's worker threads (it resolves paths and may walk the
        roots' DAGs): the RPC loop serves the cell's other calls meanwhile."""
        return await self._cell.run(self.narrowed, method, read_only, roots)

    async def program_denied(self, path: str) -> str | None:
        """Why this capability may not have a sub-cell run the ``/ipfs/`` program ``path``,
        or None.  The host fetches (so reads) the program for the cell: under roots it must
        lie within them, as a ``cat`` must.  In the worker threads when it may walk."""
        scope = self.scope
        if scope is None or not scope.roots:
            return None
        return await self._cell.run(scope.path_denied, path)

    async def attenuate(self, readOnly: bool, roots: Any, _context: Any, **kwargs: Any) -> None:
        scope = await self.narrow("attenuate", readOnly, [str(r) for r in roots])
        self._caller.audit.emit("grant", capability="ipfs", peer=self._caller.peer,
                                via="attenuate", read_only=scope.read_only,
                                roots=list(scope.roots))
        _context.results.ipfs = IpfsServer(self._api, scope, self._caller, self._cell,
                                           self.dial_policy)

    async def add(self, options: Any, _context: Any, **kwargs: Any) -> None:
        self._check("add")
        if options.cidVersion not in (0, 1):
            raise CallError(f"cidVersion {options.cidVersion}: expected 0 or 1")
        opts = AddOptions(
            cid_version=options.cidVersion,
            raw_leaves=_RAW_LEAVES[str(options.rawLeaves)],
            pin=options.pin,
            only_hash=options.onlyHash,
        )
        on_done = None
        scope = self.scope
        if scope is not None and scope.roots and opts.pin and not opts.only_hash:
            # a pin this add makes is the session's own
            before = await self._cell.run(scope.pinned_now)

            def on_done(cid: str) -> None:
                scope.pinned(cid, before)

        await self._cell.writers.acquire()  # released when the writer's import ends
        try:
            writer = WriterServer(self._cell, self._api, opts, on_done)
        except BaseException:
            self._cell.writers.release()
            raise
        _context.results.writer = writer

    async def cat(self, path: str, offset: int, length: int, _context: Any,
                  **kwargs: Any) -> None:
        await self._check_path("cat", path)

        api = self._api

        def open_at(at: int, left: int | None) -> Iterator[bytes]:
            return api.cat(path, at, left)

        def open_() -> tuple[bytes, Iterator[bytes] | None]:
            chunks = open_at(offset, None if length < 0 else length)
            # Fail now on a bad path or a non-file, rather than on the first read.
            first = next(chunks, None)
            return (b"", None) if first is None else (first, chunks)

        cell = self._cell
        if cell.readers >= MAX_READERS:
            raise CallError(f"too many open readers: a cell may have {MAX_READERS} open at "
                            "once (drop one to open another)")
        cell.readers += 1  # taken now, so that cats in flight cannot pass the bound together
        token = cell.token()  # the reader's: its reads run under it
        try:
            first, chunks = await cell.run(open_, token=token)
        except BaseException:
            cell.readers -= 1
            raise
        _context.results.reader = ReaderServer(
            cell, open_at, first, chunks, token, start=offset,
            end=None if length < 0 else offset + length, local=api.local_reads,
            answers=self._caller.answers)

    async def _listed(self, method: str, listing: _Listing) -> _Listing:
        """``listing`` produced in worker threads and measured as it is, once its share of the
        cell's answer budget is taken: a cell that asks for such answers and does not read fd
        3 makes the host wait, not hold them all.  The share is :data:`LISTED_FIRST`; an
        answer that passes it takes :data:`MAX_LISTED` in its place if that fits at once and
        goes on from there, else it is dropped, the share given back, and produced again once
        :data:`MAX_LISTED` is taken (nothing held while it waits for it, so no two listings
        wait on each other).  Past :data:`MAX_LISTED` it stops and fails with one line.  The
        answer keeps its own bytes until they are written to fd 3."""
        cell, answers = self._cell, self._caller.answers
        token = cell.token()  # one for the whole listing: it goes on in another thread
        try:
            async with answers.answer(LISTED_FIRST) as answer:
                whole = await cell.run(listing.fill, LISTED_FIRST, token=token)
                if not whole and answers.grow(answer, MAX_LISTED):
                    whole = await cell.run(listing.fill, MAX_LISTED, token=token)
                    if not whole:
                        raise self._too_long(method, listing)
                if whole:
                    answer.size = listing.size
                    return listing
                answer.size = 0  # no room for it now: nothing held while it waits for room
                listing.drop()
            async with answers.answer(MAX_LISTED) as answer:
                if not await cell.run(listing.fill, MAX_LISTED, token=token):
                    raise self._too_long(method, listing)
                answer.size = listing.size
                return listing
        except asyncio.CancelledError:
            raise  # its worker may be reading still: the listing goes when it is done
        except ShardBoundError:
            listing.drop()
            raise CallError(TOO_MANY_SHARDS.format(
                method=method, shards=MAX_LISTED_SHARDS, hint=_HINTS[method])) from None
        except BaseException:
            listing.drop()  # the backend's error: not kept by its traceback
            raise

    @staticmethod
    def _too_long(method: str, listing: _Listing) -> CallError:
        listing.drop()  # not kept by the error's traceback
        return CallError(TOO_LONG.format(method=method, mib=MAX_LISTED >> 20,
                                         hint=_HINTS[method]))

    async def ls(self, path: str, _context: Any, **kwargs: Any) -> None:
        await self._check_path("ls", path)
        api = self._api

        def start() -> tuple[None, int, Iterator[Entry]]:
            return None, 0, api.iter_ls(path)  # read as listed, stopped at the bound

        entries = (await self._listed("ls", _Listing(start, _entry_bytes))).items
        out = _context.results.init("entries", len(entries))
        for i, entry in enumerate(entries):
            _fill_entry(out[i], entry)

    async def stat(self, path: str, _context: Any, **kwargs: Any) -> None:
        await self._check_path("stat", path)
        api = self._api

        def start() -> tuple[Stat, int, Iterator[Link]]:
            # The links one at a time, stopped at the bound: read whole first, a HAMT of
            # 960,000 entries a cell made from 12 MiB of blocks held some 170 MiB per stat.
            stat = api.stat(path, links=False)
            links: Iterator[Link] = iter(())
            if stat.type is EntryType.DIRECTORY:
                links = api.iter_links(f"/ipfs/{stat.cid}")
            return stat, _stat_bytes(stat), links

        listing = await self._listed("stat", _Listing(start, _entry_bytes))
        _fill_stat(_context.results.init("info"),
                   dataclasses.replace(listing.head, links=listing.items))

    async def resolve(self, path: str, **kwargs: Any) -> str:
        await self._check_path("resolve", path)
        return await self._cell.run(self._api.resolve, path)

    async def pin(self, path: str, recursive: bool, **kwargs: Any) -> None:
        await self._check_path("pin", path)
        scope = self.scope
        if scope is None or not scope.roots:
            await self._cell.run(self._api.pin, path, recursive)
            return

        def pin_own() -> None:
            before = scope.pinned_now()  # only a new pin is this session's to unpin later
            cid = self._api.resolve(path)
            self._api.pin(path, recursive)
            scope.pinned(cid, before)

        await self._cell.run(pin_own)

    async def unpin(self, path: str, **kwargs: Any) -> None:
        self._check("unpin")
        scope = self.scope
        if scope is None or not scope.roots:
            await self._cell.run(self._api.unpin, path)
            return
        # Under roots, only the session's own pins: never the operator's (see ipfs_scope).
        key = await self._cell.run(scope.own_pin, path)
        if key is None:
            raise self._caller.deny("ipfs", "unpin", f"{path} was not pinned by this "
                                    "capability (a capability limited to roots unpins only "
                                    "what it pinned itself in this session)")
        await self._cell.run(self._api.unpin, path)
        scope.own_pins.discard(key)

    async def pins(self, **kwargs: Any) -> list[str]:
        self._check("pins")
        scope = self.scope

        def start() -> tuple[None, int, Iterator[str]]:
            # One at a time (CoreAPI.iter_pins), stopped at the bound: read whole first, a
            # cell that pinned 300,000 identity CIDs (a file each, no block; 2,000 a second)
            # had every `pins` hold them all before it was measured.
            def once(pins: Iterator[str]) -> Iterator[str]:
                seen: set[str] = set()  # (a CID pinned two ways comes twice)
                for cid in pins:
                    if cid in seen or (scope is not None and scope.roots  # what it may see
                                       and canonical(cid) not in scope.own_pins
                                       and not scope.contains(cid)):
                        continue
                    seen.add(cid)
                    yield cid

            return None, 0, once(self._api.iter_pins())

        return sorted((await self._listed("pins", _Listing(start, _pin_bytes))).items)

    async def id(self, _context: Any, **kwargs: Any) -> None:
        self._check("id")
        _fill_peer(_context.results.init("info"), await self._cell.run(self._api.id))

    async def connect(self, addr: str, **kwargs: Any) -> None:
        self._check("connect")
        if reason := self.dial_policy.refusal(addr, full_address=not self._api.guards_dials):
            raise self._caller.deny("ipfs", "connect", reason)  # before any network traffic
        await self._cell.run(self._api.connect, addr)  # a dial can take its whole timeout

    async def peers(self, _context: Any, **kwargs: Any) -> None:
        self._check("peers")

        def start() -> tuple[None, int, Iterator[PeerInfo]]:
            return None, 0, iter(self._api.peers())

        peers = (await self._listed("peers", _Listing(start, _peer_bytes))).items
        out = _context.results.init("peers", len(peers))
        for i, peer in enumerate(peers):
            _fill_peer(out[i], peer)
