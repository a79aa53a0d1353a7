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
from collections.abc import Iterator
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
        if kind is PinKind.DIRECT and self.kind_of(cid) is PinKind.RECURSIVE:
            return
        path = self._path(cid, kind)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise IpfsError(f"cannot record the pin for {cid}: {err.strerror}") from err
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        if kind is PinKind.RECURSIVE:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(cid, PinKind.DIRECT))

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
