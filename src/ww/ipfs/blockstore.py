"""Blocks on disk: one file per block under ``<repo>/blocks``, written atomically.

Layout: ``blocks/<shard>/<multihash hex>``, the shard being the two hex digits before the last
one (flatfs's ``next-to-last/2``: uniform, 256 directories).  Blocks are keyed by multihash, as
in kubo, so a raw and a dag-pb CID of the same bytes share one file.

Why it is safe:

* **Atomic writes.** A block is written to ``.tmp-<pid>-<random>`` in its shard directory,
  then ``os.replace``-d onto its name.  A reader sees the whole block or nothing; a
  writer killed half-way leaves only a temp file, which :meth:`Blockstore.temp_files` reports
  and garbage collection removes.  A batch of blocks (one add) is made durable at once by
  one ``syncfs`` before it is pinned, and then its directory entries are fsynced.
* **Several processes.** Two writers of one block each write their own temp file and rename
  it onto the same name; both renames carry the same bytes.
* **Verified reads.** Every :meth:`Blockstore.get` hashes the bytes against the CID and raises
  :class:`~ww.ipfs.api.CorruptBlockError` on a mismatch: a damaged block is never returned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from ww.core import multihash
from ww.core.cid import CID
from ww.core.fsutil import SyncedTogether, fsync_dir, write_new_file

from .api import CorruptBlockError, IpfsError, NotFoundError

__all__ = ["Blockstore", "BatchWriter", "MAX_BLOCK_SIZE", "TEMP_PREFIX"]

MAX_BLOCK_SIZE = 4 << 20  # kubo's own blocks are <= 1 MiB; anything far bigger is refused
TEMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")


def temp_file_pid(name: str) -> int | None:
    """The writer's pid encoded in a temp file's name, if it has one."""
    try:
        return int(name[len(TEMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return None


class Blockstore:
    """The block files of one repository (``root`` is ``<repo>/blocks``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_shards: set[Path] = set()  # shard directories known to exist

    # --- naming -----------------------------------------------------------------------

    def path_for(self, mh: bytes) -> Path:
        name = mh.hex()
        return self.root / name[-3:-1] / name

    # --- reading ----------------------------------------------------------------------

    def has(self, cid: CID) -> bool:
        return cid.inline is not None or self.path_for(cid.multihash).is_file()

    def get(self, cid: CID) -> bytes:
        """The verified bytes of ``cid``'s block (an identity CID's: its own, never read
        from disk, as kubo's identity store answers them)."""
        content = cid.inline
        if content is not None:
            return content
        path = self.path_for(cid.multihash)
        try:
            with open(path, "rb", buffering=0) as f:
                too_big = os.fstat(f.fileno()).st_size > MAX_BLOCK_SIZE
                data = b"" if too_big else f.readall()
        except FileNotFoundError:
            raise NotFoundError(f"block {cid} is not in the local repository") from None
        if too_big or not multihash.verify(cid.multihash, data):
            raise CorruptBlockError(
                f"block {cid} is corrupt on disk (its bytes do not match its CID); "
                "add the content again to repair it"
            )
        return data

    def size(self, cid: CID) -> int | None:
        content = cid.inline
        if content is not None:
            return len(content)
        try:
            return self.path_for(cid.multihash).stat().st_size
        except FileNotFoundError:
            return None

    def iter_multihashes(self) -> Iterator[bytes]:
        """Every stored block's multihash (temp files and stray names are skipped)."""
        for shard in sorted(self._shards()):
            with os.scandir(shard) as it:
                for entry in it:
                    name = entry.name
                    if len(name) % 2 == 0 and set(name) <= _HEX:
                        yield bytes.fromhex(name)

    def temp_files(self) -> list[Path]:
        """Temp files left in shard directories (by writers still running, or killed)."""
        found = []
        for shard in self._shards():
            with os.scandir(shard) as it:
                found.extend(Path(e.path) for e in it if e.name.startswith(TEMP_PREFIX))
        return sorted(found)

    def _shards(self) -> list[Path]:
        with os.scandir(self.root) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]

    # --- writing ----------------------------------------------------------------------

    def put(
        self, cid: CID, parts: Sequence[bytes | memoryview], sync: bool = True
    ) -> Path | None:
        """Store a block atomically unless it is already there; returns its shard directory
        if something was written (so that a caller can fsync it), else None.

        The caller vouches that ``parts`` hash to ``cid`` (the importer computed the CID from
        these very bytes); use :meth:`put_verified` for bytes from elsewhere.  With
        ``sync=False`` the block is renamed into place without its own fsync: readers still
        see all of it or nothing, and the caller makes the batch durable at once.
        """
        if cid.inline is not None:  # the CID holds it: nothing to store
            return None
        final = self.path_for(cid.multihash)
        if self._holds(final, cid.multihash, sum(len(p) for p in parts)):
            return None
        shard = final.parent
        if shard not in self._known_shards:
            shard.mkdir(exist_ok=True)
            self._known_shards.add(shard)
        tmp = self._write_temp(shard, parts, sync)
        try:
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return shard

    @staticmethod
    def _holds(path: Path, mh: bytes, size: int) -> bool:
        """Is a good copy already there?  A damaged one (wrong size or hash) is overwritten,
        so adding content again repairs it."""
        try:
            with open(path, "rb", buffering=0) as f:
                if os.fstat(f.fileno()).st_size != size:
                    return False
                return multihash.verify(mh, f.readall())
        except FileNotFoundError:
            return False

    def put_verified(self, cid: CID, data: bytes) -> Path | None:
        if not multihash.verify(cid.multihash, data):
            raise CorruptBlockError(f"block {cid} does not match its CID")
        return self.put(cid, (data,))

    def adopt(self, mh: bytes, staged: Path) -> Path | None:
        """Move an already verified, fsynced file into place (from a staging directory on the
        same file system); returns the shard directory to fsync, or None if already present."""
        final = self.path_for(mh)
        if multihash.inline(mh) is not None or self._holds(final, mh, staged.stat().st_size):
            staged.unlink()
            return None
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return final.parent

    def delete(self, mh: bytes) -> bool:
        try:
            os.unlink(self.path_for(mh))
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _write_temp(
        directory: Path, parts: Sequence[bytes | memoryview], sync: bool = True
    ) -> Path:
        tmp = directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        write_new_file(tmp, parts, sync=sync)
        return tmp

    def writer(self) -> BatchWriter:
        return BatchWriter(self)


_STOP = object()


class BatchWriter:
    """A :class:`~ww.ipfs.importer.BlockSink` that writes blocks on background threads.

    Hashing (in the caller's thread) and disk writes overlap, and a few writer threads keep
    the disk busy; the queue is bounded so memory stays at a few blocks.  Blocks are not
    fsynced as they are written: :meth:`close` waits for every write, makes the whole batch
    durable with one ``syncfs`` of the repository's file system, or an fsync each if they are
    few (:class:`~ww.core.fsutil.SyncedTogether`) (the pin that follows is written only
    after it), and re-raises the first write error.  Use it as a context manager: on an
    exception it stops without raising.
    """

    _QUEUE_BLOCKS = 16
    # Blocks handed to a writer at once: each hand-off between threads wakes one (a lock, a
    # condition, the interpreter lock changing hands), so fewer, larger ones cost less.
    _BATCH = 4
    # Blocks remembered as already queued, the most recent: a repeated block (a file of
    # zeros) repeats within a few blocks; remembering every block of an upload grew with it
    # (about 100 bytes a block: 50 MB for 100 GiB), and writing a block twice is harmless.
    _REMEMBERED = 4096

    def __init__(self, store: Blockstore, threads: int = 2) -> None:
        self._store = store
        self._queue: queue.Queue[object] = queue.Queue(self._QUEUE_BLOCKS // self._BATCH)
        self._batch: list[tuple[CID, tuple[bytes, ...]]] = []
        self._dirty: set[Path] = set()
        self._written = SyncedTogether(store.root)
        self._queued: dict[bytes, None] = {}  # the last _REMEMBERED queued, oldest first
        self._error: BaseException | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"ww-block-writer-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, cid: CID, parts: Sequence[bytes | memoryview]) -> None:
        if self._error is not None:
            raise IpfsError(f"writing blocks failed: {self._error}") from self._error
        if cid.multihash in self._queued:
            return  # a repeated block (a file of zeros, say) is written once
        self._queued[cid.multihash] = None
        if len(self._queued) > self._REMEMBERED:
            del self._queued[next(iter(self._queued))]
        # A view into the caller's larger buffer would keep that whole buffer alive while
        # queued; a copy costs far less than the disk write that follows.
        owned = tuple(bytes(p) if isinstance(p, memoryview) else p for p in parts)
        self._batch.append((cid, owned))
        if len(self._batch) >= self._BATCH:
            self._queue.put(self._batch)
            self._batch = []

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            for cid, parts in item:  # type: ignore[attr-defined]
                if self._error is not None:
                    break  # drain so that the producer never blocks forever
                try:
                    shard = self._store.put(cid, parts, sync=False)
                    if shard is not None:
                        self._dirty.add(shard)  # set.add is atomic under the GIL
                        self._written.add(self._store.path_for(cid.multihash))
                except BaseException as err:  # reported to the producer
                    self._error = err

    def _stop(self) -> None:
        self._closed = True
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def close(self) -> None:
        """Finish all writes and make them durable; raises if any write failed."""
        if self._closed:
            return
        self._stop()
        if self._error is not None:
            err = self._error
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise IpfsError("no space left on the device holding the repository") from err
            raise IpfsError(f"writing blocks failed: {err}") from err
        self._written.sync()  # an fsync each for a few blocks, else one syncfs
        for shard in self._dirty:
            fsync_dir(shard)
        self._dirty.clear()

    def abort(self) -> None:
        """Stop after the writes already queued, without raising."""
        if not self._closed:
            self._stop()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
