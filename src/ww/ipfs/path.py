"""IPFS paths: ``/ipfs/<cid>[/name/...]`` or a bare ``<cid>[/name/...]``.

Parsing is strict so that a typo gives a one-line :class:`~ww.ipfs.api.InvalidPathError`
instead of a confusing lookup failure later: empty segments (``a//b``), ``.`` and ``..`` are
refused, as is any namespace other than ``/ipfs/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ww.core.cid import CID

from .api import InvalidPathError

__all__ = ["IpfsPath", "parse_path"]


@dataclass(frozen=True, slots=True)
class IpfsPath:
    """A root CID and the names to follow from it."""

    root: CID
    segments: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "/ipfs/" + "/".join((str(self.root), *self.segments))

    @property
    def last_name(self) -> str:
        """The last path component (the CID itself for a bare root), for naming downloads."""
        return self.segments[-1] if self.segments else str(self.root)


def parse_path(path: str | CID | IpfsPath) -> IpfsPath:
    """Parse ``/ipfs/<cid>/a/b`` or ``<cid>/a/b``; a trailing slash is allowed."""
    if isinstance(path, IpfsPath):
        return path
    if isinstance(path, CID):
        return IpfsPath(path)
    if not isinstance(path, str) or not path:
        raise InvalidPathError("empty IPFS path")
    text = path
    if text.startswith("/"):
        if text.startswith("/ipfs/"):
            text = text[len("/ipfs/") :]
        else:
            namespace = text.split("/")[1] if len(text) > 1 else ""
            raise InvalidPathError(
                f"unsupported path namespace /{namespace}/ in {path!r} (expected /ipfs/<cid>)"
            )
    if text.endswith("/"):
        text = text[:-1]
    parts = text.split("/")
    if not parts[0]:
        raise InvalidPathError(f"no CID in IPFS path {path!r}")
    root = CID.parse(parts[0])
    segments = tuple(parts[1:])
    for seg in segments:
        if seg in ("", ".", ".."):
            raise InvalidPathError(f"invalid path component {seg!r} in {path!r}")
    return IpfsPath(root, segments)
