"""The values the IPFS interface returns: directory entries, links, stats, peers.

They are shared by the backends (:class:`ww.ipfs.api.CoreAPI`, which re-exports them) and
the cell SDK (``ww.cell``), which builds them from the capability's answers without
importing the IPFS code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Entry", "EntryType", "Link", "PeerInfo", "Stat"]


class EntryType(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry, as ``ls`` returns it."""

    name: str
    type: EntryType
    size: int  # file content size in bytes; 0 for directories
    cid: str


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    size: int  # Tsize of the link, as dag-pb records it
    cid: str


@dataclass(frozen=True, slots=True)
class Stat:
    """What ``stat`` knows of a node."""

    cid: str
    type: EntryType
    size: int  # content size: file bytes, 0 for a directory, target length for a symlink
    cumulative_size: int  # the whole DAG's encoded size, as kubo's CumulativeSize
    links: list[Link] = field(default_factory=list)  # a directory's entries
    target: str | None = None  # a symlink's target


@dataclass(frozen=True, slots=True)
class PeerInfo:
    id: str
    addresses: list[str]
    protocols: list[str] = field(default_factory=list)
