"""The IPFS capability: a thin adapter from ipfs.capnp onto :class:`ww.ipfs.api.CoreAPI`.

Data moves in bounded pieces both ways.  ``add`` hands the cell a ``Writer``: each
``write`` is queued for an importer thread through a small bounded queue, so the host
holds at most a few chunks of a file at a time, whatever its size.  ``cat`` hands out a
``Reader`` whose ``read(count)`` returns at most ``count`` bytes (capped at 4 MiB) pulled
from the backend's streaming ``cat``.

Attenuation: a server may carry an :class:`~ww.caps.ipfs_scope.IpfsScope` (read-only, and/or
limited to the DAGs under some roots) and checks every call against it before touching the
backend; ``attenuate`` hands out a new server with a narrower scope over the same backend.
A server without a scope is the full capability and pays nothing for the checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ww.caps.denied import NOBODY, Caller
from ww.caps.ipfs_scope import IpfsScope, canonical
from ww.ipfs.api import AddOptions, CoreAPI, Entry, EntryType, PeerInfo, Stat
from ww.schema import load

_ipfs = load("ipfs")

MAX_READ = 4 * 1024 * 1024
MAX_WRITE = 4 * 1024 * 1024
QUEUE_CHUNKS = 8  # chunks buffered between the RPC side and the importer thread
MAX_PENDING_WRITES = 64  # writes a cell may have in flight before they are refused

_ENTRY_TYPES = {EntryType.FILE: "file", EntryType.DIRECTORY: "directory",
                EntryType.SYMLINK: "symlink"}
_RAW_LEAVES = {"default": None, "yes": True, "no": False}


def _fill_peer(builder: Any, info: PeerInfo) -> None:
    builder.id = info.id
    builder.addresses = list(info.addresses)
    builder.protocols = list(info.protocols)


def _fill_entry(builder: Any, entry: Entry) -> None:
    builder.name = entry.name
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
        links[i].name = link.name
        links[i].size = link.size
        links[i].cid = link.cid
    if stat.target is not None:
        builder.target = stat.target


_END = object()
CALL_THREADS = 8  # IPFS calls that may wait on the network at once, for all of a host's cells
_calls: concurrent.futures.ThreadPoolExecutor | None = None


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread: a call that may wait on the network (a dial, a block
    fetched from peers) must not hold up the loop that serves every other call of the cell
    and its export's remote peers.  A pool of its own, not the loop's default one: the
    importer threads of ``add`` hold those while the cell writes."""
    global _calls
    if _calls is None:
        _calls = concurrent.futures.ThreadPoolExecutor(CALL_THREADS, "ww-ipfs-call")
    return await asyncio.get_running_loop().run_in_executor(_calls, lambda: fn(*args))


class WriterServer(_ipfs.Writer.Server):  # type: ignore[name-defined,misc]
    """Feeds one file's bytes to ``api.add_stream`` running in a worker thread.

    Writes go through a bounded asyncio queue: a cell that writes faster than the importer
    hashes and stores simply waits for its ``write`` calls to return.
    """

    def __init__(self, api: CoreAPI, options: AddOptions,
                 on_done: Callable[[str], None] | None = None) -> None:
        self._on_done = on_done  # told the CID once the file is added
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self._pending = 0
        self._finished = False
        self._abandoned = threading.Event()
        self._result: asyncio.Future[str] = self._loop.run_in_executor(
            None, lambda: api.add_stream(self._chunks(), options)
        )
        # A cell that drops the writer never awaits the result: mark its error as seen.
        self._result.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _chunks(self) -> Iterator[bytes]:
        """Runs in the worker thread: take chunks off the queue until the end marker."""
        while True:
            future = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop)
            while True:
                try:
                    item = future.result(timeout=1.0)
                    break
                except concurrent.futures.TimeoutError:
                    if self._abandoned.is_set() or self._loop.is_closed():
                        future.cancel()
                        raise ConnectionAbortedError("the cell dropped the writer") from None
            if item is _END:
                return
            yield item

    async def _put(self, item: Any) -> None:
        put = asyncio.ensure_future(self._queue.put(item))
        done, _ = await asyncio.wait([put, self._result], return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            self._result.result()  # the importer failed: raise its error
            raise ValueError("the file was already finished")

    async def write(self, data: bytes, **kwargs: Any) -> None:
        if self._finished:
            raise ValueError("write after done()")
        if len(data) > MAX_WRITE:
            raise ValueError(f"write of {len(data)} bytes: at most {MAX_WRITE} per call")
        if self._pending >= MAX_PENDING_WRITES:
            raise ValueError(f"more than {MAX_PENDING_WRITES} writes in flight")
        self._pending += 1
        try:
            await self._put(bytes(data))
        finally:
            self._pending -= 1

    async def done(self, **kwargs: Any) -> str:
        if self._finished:
            raise ValueError("done() was already called")
        self._finished = True
        await self._put(_END)
        cid = await self._result
        if self._on_done is not None:
            self._on_done(cid)
        return cid

    def __del__(self) -> None:
        # Dropped without done(): let the importer thread give up instead of waiting.
        if not self._finished:
            self._abandoned.set()


class ReaderServer(_ipfs.Reader.Server):  # type: ignore[name-defined,misc]
    """Serves ``read(count)`` from the backend's chunk iterator, buffering one chunk at most."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")
        self._lock = asyncio.Lock()  # reads run in a worker thread, one at a time, in order
        self._orphan: asyncio.Future[bytes] | None = None  # a cancelled read still running

    async def read(self, count: int, **kwargs: Any) -> bytes:
        count = min(count, MAX_READ)
        if count == 0:
            return b""
        async with self._lock:  # a block may have to come from the network: off the loop
            if self._orphan is not None:  # what a cancelled read took comes next
                taken, self._orphan = await self._orphan, None
                self._buffer = memoryview(taken + self._buffer.tobytes())
            running = asyncio.ensure_future(_off_loop(self._read, count))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                self._orphan = running
                raise

    def _read(self, count: int) -> bytes:
        parts: list[bytes | memoryview] = []
        wanted = count
        while wanted > 0:
            if not self._buffer:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer = memoryview(chunk)
            piece = self._buffer[:wanted]
            self._buffer = self._buffer[len(piece):]
            parts.append(piece)
            wanted -= len(piece)
        return b"".join(parts)


class IpfsServer(_ipfs.IPFS.Server):  # type: ignore[name-defined,misc]
    """The IPFS interface of ipfs.capnp over one CoreAPI backend, within ``scope`` if given."""

    def __init__(self, api: CoreAPI, scope: IpfsScope | None = None,
                 caller: Caller = NOBODY) -> None:
        self._api = api
        self.scope = scope
        self._caller = caller

    def _check(self, method: str, path: str | None = None) -> None:
        if self.scope is not None and (reason := self.scope.denied(method, path)):
            raise self._caller.deny("ipfs", method, reason)

    def narrowed(self, method: str, read_only: bool, roots: list[str]) -> IpfsScope:
        """The scope of a capability narrower than this one (for ``attenuate`` and for a
        sub-cell's grant); a root outside this capability's own is refused."""
        scope = self.scope or IpfsScope(self._api)
        resolved = []
        for root in roots:
            if reason := scope.path_denied(root):
                raise self._caller.deny("ipfs", method, f"cannot widen the capability: {reason}")
            resolved.append(canonical(self._api.resolve(root)))
        return scope.narrowed(read_only, resolved)

    async def attenuate(self, readOnly: bool, roots: Any, _context: Any, **kwargs: Any) -> None:
        scope = self.narrowed("attenuate", readOnly, [str(r) for r in roots])
        self._caller.audit.emit("grant", capability="ipfs", peer=self._caller.peer,
                                via="attenuate", read_only=scope.read_only,
                                roots=list(scope.roots))
        _context.results.ipfs = IpfsServer(self._api, scope, self._caller)

    async def add(self, options: Any, _context: Any, **kwargs: Any) -> None:
        self._check("add")
        if options.cidVersion not in (0, 1):
            raise ValueError(f"cidVersion {options.cidVersion}: expected 0 or 1")
        opts = AddOptions(
            cid_version=options.cidVersion,
            raw_leaves=_RAW_LEAVES[str(options.rawLeaves)],
            pin=options.pin,
            only_hash=options.onlyHash,
        )
        on_done = None
        scope = self.scope
        if scope is not None and scope.roots and opts.pin and not opts.only_hash:
            before = scope.pinned_now()  # a pin this add makes is the session's own

            def on_done(cid: str) -> None:
                scope.pinned(cid, before)

        _context.results.writer = WriterServer(self._api, opts, on_done)

    async def cat(self, path: str, offset: int, length: int, _context: Any,
                  **kwargs: Any) -> None:
        self._check("cat", path)
        chunks = self._api.cat(path, offset, None if length < 0 else length)
        # Fail now on a bad path or a non-file, rather than on the first read.
        first = await _off_loop(next, chunks, b"")
        _context.results.reader = ReaderServer(_prepend(first, chunks))

    async def ls(self, path: str, _context: Any, **kwargs: Any) -> None:
        self._check("ls", path)
        entries = await _off_loop(self._api.ls, path)
        out = _context.results.init("entries", len(entries))
        for i, entry in enumerate(entries):
            _fill_entry(out[i], entry)

    async def stat(self, path: str, _context: Any, **kwargs: Any) -> None:
        self._check("stat", path)
        _fill_stat(_context.results.init("info"), await _off_loop(self._api.stat, path))

    async def resolve(self, path: str, **kwargs: Any) -> str:
        self._check("resolve", path)
        return await _off_loop(self._api.resolve, path)

    async def pin(self, path: str, recursive: bool, **kwargs: Any) -> None:
        self._check("pin", path)
        scope = self.scope
        if scope is None or not scope.roots:
            self._api.pin(path, recursive)
            return
        before = scope.pinned_now()  # only a new pin is this session's to unpin later
        cid = self._api.resolve(path)
        self._api.pin(path, recursive)
        scope.pinned(cid, before)

    async def unpin(self, path: str, **kwargs: Any) -> None:
        self._check("unpin")
        scope = self.scope
        if scope is None or not scope.roots:
            self._api.unpin(path)
            return
        # Under roots, only the session's own pins: never the operator's (see ipfs_scope).
        key = scope.own_pin(path)
        if key is None:
            raise self._caller.deny("ipfs", "unpin", f"{path} was not pinned by this "
                                    "capability (a capability limited to roots unpins only "
                                    "what it pinned itself in this session)")
        self._api.unpin(path)
        scope.own_pins.discard(key)

    async def pins(self, **kwargs: Any) -> list[str]:
        self._check("pins")
        pins = self._api.pins()
        scope = self.scope
        if scope is not None and scope.roots:  # only what it may see, and its own pins
            pins = [cid for cid in pins if canonical(cid) in scope.own_pins
                    or scope.contains(cid)]
        return list(pins)

    async def id(self, _context: Any, **kwargs: Any) -> None:
        self._check("id")
        _fill_peer(_context.results.init("info"), self._api.id())

    async def connect(self, addr: str, **kwargs: Any) -> None:
        self._check("connect")
        from ww.p2p.dial_policy import for_cells

        if reason := for_cells().refusal(addr):  # before anything touches the network
            raise self._caller.deny("ipfs", "connect", reason)
        # Dialing takes up to its timeout: in a worker thread, so that the cell's other
        # calls (and remote peers of its export, on the same loop) are served meanwhile.
        await _off_loop(self._api.connect, addr)

    async def peers(self, _context: Any, **kwargs: Any) -> None:
        self._check("peers")
        peers = await _off_loop(self._api.peers)
        out = _context.results.init("peers", len(peers))
        for i, peer in enumerate(peers):
            _fill_peer(out[i], peer)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
