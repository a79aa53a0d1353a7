"""How long work says how far it has come: counts reported to whoever shows them.

The IPFS layer counts as it works (bytes and files added or written, bytes of a CAR read or
written, blocks received from peers) and reports to the :class:`Progress` of its thread,
set for a stretch of work with :func:`reporting` (as a call's cancel token is); the command
line draws it.  Nobody listening is the default: a :class:`Progress` whose methods do
nothing, which the hooks recognise (:func:`active`) and skip their counting for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Progress", "active", "current", "reporting"]


class Progress:
    """What long work reports; this base ignores it (override what you show).

    Called from the thread doing the work, each call cheap: a hook calls :meth:`advance` at
    most once per block or piece it handles, never per byte."""

    def expect(self, nbytes: int | None = None, files: int | None = None) -> None:
        """The totals of the work, once they are known (None: not known)."""

    def advance(self, nbytes: int = 0, files: int = 0, blocks: int = 0) -> None:
        """``nbytes`` more bytes, ``files`` more files and ``blocks`` more blocks done."""

    def fetched(self, blocks: int, nbytes: int) -> None:
        """Blocks, and their bytes, received from peers so far (totals, not increments)."""


_IGNORED = Progress()
_local = threading.local()


def current() -> Progress:
    """The progress this thread's work reports to (one that ignores it outside any)."""
    return getattr(_local, "progress", _IGNORED)


def active() -> Progress | None:
    """:func:`current`, or None when nobody listens (so that a hook can skip its counting)."""
    progress = current()
    return None if progress is _IGNORED else progress


@contextmanager
def reporting(progress: Progress) -> Iterator[Progress]:
    """Have the block's work, in this thread, report to ``progress``."""
    before = current()
    _local.progress = progress
    try:
        yield progress
    finally:
        _local.progress = before
