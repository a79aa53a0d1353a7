"""Pins: which DAGs garbage collection must keep.

Each pin is one empty file, ``<repo>/pins/recursive/<cid>`` or ``<repo>/pins/direct/<cid>``:
creating or removing a file is atomic, so several processes can pin and unpin at once with no
lock and no read-modify-write of a shared list.  A recursive pin keeps the whole DAG under its
CID; a direct pin keeps only that one block (as in kubo).
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ww.core.cid import CID, CidError
from ww.core.fsutil import fsync_dir

from .api import IpfsError

__all__ = ["PinKind", "PinStore"]


class PinKind(enum.Enum):
    RECURSIVE = "recursive"
    DIRECT = "direct"


class PinStore:
    """The pin files of one repository (``root`` is ``<repo>/pins``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for kind in PinKind:
            (self.root / kind.value).mkdir(parents=True, exist_ok=True)

    def _path(self, cid: CID, kind: PinKind) -> Path:
        return self.root / kind.value / str(cid)

    def add(self, cid: CID, kind: PinKind) -> None:
        """Pin ``cid``.  A recursive pin replaces a direct one; a direct pin on a recursively
        pinned CID changes nothing (the block is kept either way)."""
        self.add_all([cid], kind)

    def add_all(self, cids: Iterable[CID], kind: PinKind) -> None:
        """Pin each of ``cids`` as :meth:`add` does, durable once this returns.  The pin files
        are empty: what makes one durable is its directory entry (the inode comes with it in
        the same journal commit), so the directory is synced once for all of them.  A file
        and its directory synced for each pin cost 1.7 ms a pin here (a CAR of 20,000 roots:
        33 s), synced once 0.03 ms (measured on ext4, 2,000 files)."""
        made = []
        for cid in cids:
            if kind is PinKind.DIRECT and self.kind_of(cid) is PinKind.RECURSIVE:
                continue
            try:
                os.close(os.open(self._path(cid, kind), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                                 0o644))
            except OSError as err:
                raise IpfsError(f"cannot record the pin for {cid}: {err.strerror}") from err
            made.append(cid)
        if not made:
            return
        fsync_dir(self.root / kind.value)
        if kind is PinKind.RECURSIVE:
            unlinked = False
            for cid in made:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(cid, PinKind.DIRECT))
                    unlinked = True
            if unlinked:
                fsync_dir(self.root / PinKind.DIRECT.value)

    def remove(self, cid: CID) -> bool:
        """Remove every pin of ``cid``; False if it had none."""
        removed = False
        for kind in PinKind:
            try:
                os.unlink(self._path(cid, kind))
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            for kind in PinKind:
                fsync_dir(self.root / kind.value)
        return removed

    def kind_of(self, cid: CID) -> PinKind | None:
        for kind in PinKind:
            if self._path(cid, kind).exists():
                return kind
        return None

    def iter(self) -> Iterator[CID]:
        """Pinned CIDs one at a time, as the pin directories are read, in no order and never
        held whole; a CID pinned both ways (between a pin and the removal of its direct
        file) may come twice.  Files that are not CIDs are skipped."""
        for kind in PinKind:
            with os.scandir(self.root / kind.value) as entries:
                for entry in entries:
                    try:
                        cid = CID.parse(entry.name)
                    except CidError:
                        continue
                    if str(cid) == entry.name:
                        yield cid

    def list(self, kind: PinKind | None = None) -> list[CID]:
        """Pinned CIDs, sorted by their string form; files that are not CIDs are ignored."""
        kinds = [kind] if kind is not None else list(PinKind)
        found: dict[str, CID] = {}
        for k in kinds:
            for name in os.listdir(self.root / k.value):
                try:
                    cid = CID.parse(name)
                except CidError:
                    continue  # a stray file, for example a text editor's backup
                if str(cid) == name:
                    found[name] = cid
        return [found[name] for name in sorted(found)]
