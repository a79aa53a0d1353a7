"""Small file-system helpers shared by the repository parts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, creations, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, parts: Sequence[bytes | memoryview], mode: int = 0o444) -> None:
    """Create ``path`` (which must not exist), write ``parts`` and fsync it.

    On any failure the file is removed again.  ``writev`` writes the parts without joining them.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        pending = [memoryview(p) for p in parts if len(p)]
        while pending:
            written = os.writev(fd, pending)
            while written:
                if written >= len(pending[0]):
                    written -= len(pending.pop(0))
                else:
                    pending[0] = pending[0][written:]
                    written = 0
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
