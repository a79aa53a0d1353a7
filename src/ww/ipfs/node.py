"""``EmbeddedNode``: the default, offline :class:`~ww.ipfs.api.CoreAPI` backend.

It is a repository directory (``$WW_HOME``, default ``~/.ww``) and nothing else: no daemon,
no network.  Several processes may use one repository at once; see :mod:`ww.ipfs.repo` for
how writes, pins and garbage collection stay consistent.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import car, exporter
from ._fsutil import fsync_dir, write_new_file
from .api import (
    AddOptions,
    CoreAPI,
    Entry,
    IpfsError,
    NotFoundError,
    PeerInfo,
    Stat,
    UnsupportedError,
)
from .blockstore import Blockstore
from .cid import CID
from .importer import ImportParams, NullSink, import_file, import_path
from .path import parse_path
from .pins import PinKind
from .repo import GcReport, Repo, RepoCheck, default_repo_path

__all__ = ["EmbeddedNode", "default_repo_path"]

_DEFAULT_OPTIONS = AddOptions()


class EmbeddedNode:
    """An offline IPFS node over a local repository."""

    def __init__(self, repo: Path | str | None = None) -> None:
        self._repo = Repo(Path(repo) if repo is not None else default_repo_path())
        self._blocks: Blockstore = self._repo.blocks
        self._closed = False

    @property
    def repo_path(self) -> Path:
        return self._repo.path

    # --- writing ----------------------------------------------------------------------

    def add_stream(self, chunks: Iterable[bytes], options: AddOptions = _DEFAULT_OPTIONS) -> str:
        """Add one file's bytes (any piece sizes); returns its CID, pinned unless told not to."""
        params = ImportParams.from_options(options)
        if options.only_hash:
            return str(import_file(chunks, params, NullSink()).cid)
        with self._repo.writing():
            with self._blocks.writer() as sink:
                root = import_file(chunks, params, sink)
            if options.pin:
                self._repo.pins.add(root.cid, PinKind.RECURSIVE)
        return str(root.cid)

    def add_path(self, path: Path, options: AddOptions = _DEFAULT_OPTIONS) -> str:
        """Add a file, symlink or directory tree (``ipfs add -r``); returns the root CID.

        Symlinks are stored as symlinks, ``path`` itself included; hidden files are included.
        """
        params = ImportParams.from_options(options)
        path = Path(path)
        try:
            if options.only_hash:
                return str(import_path(path, params, NullSink()).cid)
            with self._repo.writing():
                with self._blocks.writer() as sink:
                    root = import_path(path, params, sink)
                if options.pin:
                    self._repo.pins.add(root.cid, PinKind.RECURSIVE)
            return str(root.cid)
        except FileNotFoundError as err:
            raise NotFoundError(f"cannot add {err.filename or path}: no such file") from None
        except OSError as err:
            raise IpfsError(f"cannot add {err.filename or path}: {err.strerror}") from None

    # --- reading ----------------------------------------------------------------------

    def _node(self, path: str) -> exporter.UnixfsNode:
        return exporter.resolve(self._blocks.get, parse_path(path))

    def _cid(self, path: str) -> CID:
        """The CID ``path`` names; a bare CID is returned without touching the repository."""
        ipath = parse_path(path)
        if not ipath.segments:
            return ipath.root
        return exporter.resolve(self._blocks.get, ipath).cid

    def cat(self, path: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream a file's bytes; blocks outside ``[offset, offset + length)`` are not read."""
        return exporter.cat(self._blocks.get, self._node(path), offset, length)

    def block(self, cid: str) -> bytes:
        """One block's raw bytes (verified against the CID), like ``ipfs block get``."""
        return self._blocks.get(self._cid(cid))

    def ls(self, path: str) -> list[Entry]:
        ipath = parse_path(path)
        node = exporter.resolve(self._blocks.get, ipath)
        return exporter.ls(self._blocks.get, node, ipath.last_name)

    def stat(self, path: str) -> Stat:
        return exporter.stat(self._blocks.get, self._node(path))

    def resolve(self, path: str) -> str:
        return str(self._cid(path))

    def get(self, path: str, dest: Path, executable: bool = False) -> None:
        """Write a file or tree to ``dest`` with ``ww import`` semantics, atomically."""
        ipath = parse_path(path)
        node = exporter.resolve(self._blocks.get, ipath)
        try:
            exporter.get(self._blocks.get, node, ipath.last_name, Path(dest), executable)
        except OSError as err:
            raise IpfsError(f"cannot write {err.filename or dest}: {err.strerror}") from None

    # --- pins -------------------------------------------------------------------------

    def pin(self, path: str, recursive: bool = True) -> None:
        """Pin what ``path`` names; a recursive pin needs every block of the DAG locally."""
        cid = self._cid(path)
        with self._repo.writing():
            if recursive:
                for _ in exporter.walk(self._blocks.get, cid):
                    pass
            else:
                self._blocks.get(cid)
            self._repo.pins.add(cid, PinKind.RECURSIVE if recursive else PinKind.DIRECT)

    def unpin(self, path: str) -> None:
        cid = self._cid(path)
        if not self._repo.pins.remove(cid):
            raise NotFoundError(f"{cid} is not pinned")

    def pins(self) -> list[str]:
        """Every pinned CID, recursive and direct."""
        return [str(cid) for cid in self._repo.pins.list()]

    def pins_by_kind(self) -> dict[str, list[str]]:
        """``{"recursive": [...], "direct": [...]}``."""
        return {k.value: [str(c) for c in self._repo.pins.list(k)] for k in PinKind}

    # --- maintenance ------------------------------------------------------------------

    def gc(self) -> GcReport:
        """Remove unpinned blocks and leftovers of interrupted writes."""
        return self._repo.gc()

    def check(self) -> RepoCheck:
        """Verify the repository: corrupt or missing blocks, leftover temp files."""
        return self._repo.check()

    # --- CAR interchange --------------------------------------------------------------

    def export_car(self, roots: list[str], out: BinaryIO) -> None:
        """Write a CAR v1 with every block of each root's DAG, each block once."""
        if not roots:
            raise IpfsError("export_car needs at least one root")
        cids = [self._cid(r) for r in roots]
        seen: set[bytes] = set()
        car.write_header(out, cids)
        for cid in cids:
            for block_cid, block in exporter.walk(self._blocks.get, cid, seen):
                car.write_block(out, block_cid, block)

    def import_car(self, src: BinaryIO) -> list[str]:
        """Import a CAR v1 all or nothing, pin its roots recursively, return the roots.

        Every block is verified and staged first; only when the whole stream has been read and
        every root's DAG is complete (from the CAR and blocks already here) are the blocks moved
        into the repository.
        """
        with self._repo.writing():
            staging = self._repo.staging / f"car-{os.getpid()}-{secrets.token_hex(6)}"
            staging.mkdir()
            try:
                reader = car.CarReader(src)
                staged: dict[bytes, Path] = {}
                for cid, block in reader.blocks():
                    mh = cid.multihash
                    if mh in staged or self._blocks.has(cid):
                        continue
                    staged[mh] = _stage(staging / mh.hex(), block)

                def getter(cid: CID) -> bytes:
                    spot = staged.get(cid.multihash)
                    if spot is None:
                        return self._blocks.get(cid)
                    return spot.read_bytes()  # verified when it was staged

                for root in reader.roots:
                    try:
                        for _ in exporter.walk(getter, root):
                            pass
                    except NotFoundError as err:
                        raise NotFoundError(
                            f"the CAR does not hold the whole DAG of root {root} ({err}); "
                            "nothing was imported"
                        ) from None
                if staged:
                    fsync_dir(staging)
                dirty = set()
                for mh, spot in staged.items():
                    shard = self._blocks.adopt(mh, spot)
                    if shard is not None:
                        dirty.add(shard)
                for shard in dirty:
                    fsync_dir(shard)
                for root in reader.roots:
                    self._repo.pins.add(root, PinKind.RECURSIVE)
                return [str(root) for root in reader.roots]
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    # --- network ----------------------------------------------------------------------

    def id(self) -> PeerInfo:
        """This node's peer id (from the repository's identity key); no addresses: offline."""
        from . import identity  # imported late: only id() needs the key code

        ident = identity.load_or_create(self._repo.path)
        return PeerInfo(id=ident.peer_id, addresses=[], protocols=[])

    def peers(self) -> list[PeerInfo]:
        return []

    def connect(self, addr: str) -> None:
        raise UnsupportedError(
            "the embedded node is offline and cannot connect to peers; "
            "use a kubo node (--ipfs / WW_IPFS) for networking"
        )

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> EmbeddedNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # a static check that EmbeddedNode implements CoreAPI
    _check: CoreAPI = EmbeddedNode(Path())


def _stage(path: Path, block: bytes) -> Path:
    write_new_file(path, (block,))
    return path
