"""``EmbeddedNode``: the default :class:`~ww.ipfs.api.CoreAPI` backend.

It is a repository directory (``$WW_HOME``, default ``~/.ww``): no daemon.  Several processes
may use one repository at once; see :mod:`ww.ipfs.repo` for how writes, pins and garbage
collection stay consistent.

It is offline until asked otherwise: :meth:`EmbeddedNode.connect` or
:meth:`EmbeddedNode.listen` start a libp2p host with the node key (:mod:`ww.ipfs.net`), and
so does a block missing locally when ``peers`` were given (``--peer``) to dial.  Given the
libp2p host `ww run` already has (``host``), the node serves Bitswap on that one instead of
starting its own.  From then on, a block the repository lacks is fetched from the connected
peers over Bitswap (:mod:`ww.ipfs.bitswap`), hashed against its CID and stored (unpinned,
like kubo's cache), and the repository's blocks are served to peers that want them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from ww.core import progress as _progress
from ww.core.cid import CID, DAG_PB
from ww.core.fsutil import SyncedTogether, fsync_dir, write_new_file

from . import car, exporter
from .api import (
    AddOptions,
    BackendUnavailableError,
    CoreAPI,
    Entry,
    IpfsError,
    Link,
    NotFoundError,
    PeerInfo,
    RepoStat,
    Stat,
    WouldWait,
    check_pin_type,
    current_token,
    is_local_only,
)
from .blockstore import Blockstore
from .importer import (
    BlockSink,
    Imported,
    ImportParams,
    NullSink,
    TreeEntry,
    import_directory,
    import_entries,
    import_file,
    import_path,
)
from .path import parse_path
from .pins import PinKind
from .repo import REPO_VERSION, GcReport, Repo, RepoCheck, default_repo_path

if TYPE_CHECKING:
    from ww.core.identity import Identity

    from .net import Host, Network, NewHost, NewRouter

__all__ = ["EmbeddedNode", "default_repo_path"]

_DEFAULT_OPTIONS = AddOptions()
_LINK_TAG = b"\x12"  # dag-pb writes its links (field 2) first: a leaf starts otherwise


class EmbeddedNode:
    """An offline IPFS node over a local repository."""

    guards_dials = True  # a host given a dial policy refuses every other connection
    local_reads = True  # a read under api.local_only() stops where a block is missing
    verifies_blocks = True  # every block read or fetched is hashed against its CID

    def __init__(self, repo: Path | str | None = None, *, peers: Iterable[str] = (),
                 host: Host | None = None, new_host: NewHost | None = None,
                 identity: Identity | None = None, router: NewRouter | None = None) -> None:
        """``peers``: ``/ip4/.../tcp/.../p2p/<peer id>`` addresses to dial the first time a
        block is missing locally (``--peer``).  ``host``: a libp2p host (started or not) to
        serve Bitswap on and fetch through, instead of one of the node's own; it must carry
        the repository's node key, and its owner starts and stops it.  ``new_host``: how to
        make a host of the node's own when it goes on the network (``ww.p2p.host_for_ipfs``,
        which carries where it may dial); without it nor ``host`` the node stays offline.
        ``identity``: the node's libp2p key instead of the repository's (`ww run --node-key`);
        a ``host`` given must carry it.  ``router``: how to find providers of a block no
        connected peer has (`--routing dht`; :class:`ww.ipfs.net.Router`); with one, a
        missing block takes the node online even with no ``peers``."""
        self._repo = Repo(Path(repo) if repo is not None else default_repo_path())
        self._blocks: Blockstore = self._repo.blocks
        self._closed = False
        self._net: Network | None = None
        self._net_lock = threading.Lock()
        self._dial_lock = threading.Lock()  # the first dial of the given peers
        self._peers = list(peers)
        self._new_host = new_host
        self._identity = identity
        self._peers_dialled = False
        self._router = router
        if host is not None:
            from .net import Network

            self._net = Network.on(host, self._blocks, router=router)

    @property
    def repo_path(self) -> Path:
        return self._repo.path

    # --- writing ----------------------------------------------------------------------

    def add_stream(self, chunks: Iterable[bytes], options: AddOptions = _DEFAULT_OPTIONS) -> str:
        """Add one file's bytes (any piece sizes); returns its CID, pinned unless told not to.

        With ``options.wrap``, as kubo's ``ipfs add -w`` of stdin: the result is a directory
        holding the file under ``options.stdin_name``, or, as kubo names it when no name is
        given, under the file's own CID."""
        params = ImportParams.from_options(options)
        chunks = _checked(chunks)  # a cancelled call stops at the next chunk, adding nothing
        added: list[tuple[str, Imported]] = []

        def build(sink: BlockSink) -> Imported:
            file = import_file(chunks, params, sink)
            if not options.wrap:
                added.append(("", file))
                return file
            name = options.stdin_name or str(file.cid)
            added.append((name, file))
            wrapper = import_directory([(os.fsencode(name), file)], params, sink)
            added.append(("", wrapper))
            return wrapper

        if options.only_hash:
            root = build(NullSink())
        else:
            with self._repo.writing():
                with self._blocks.writer() as sink:
                    root = build(sink)
                if options.pin:
                    self._repo.pins.add(root.cid, PinKind.RECURSIVE)
        if options.on_added is not None:
            for name, imported in added:
                options.on_added(name, str(imported.cid))
        return str(root.cid)

    def add_entries(self, entries: Iterable[TreeEntry], options: AddOptions = _DEFAULT_OPTIONS,
                    report: Callable[[str, str, int], None] | None = None
                    ) -> list[tuple[str, str]]:
        """Add a tree that arrives entry by entry (kubo's multipart ``add``, see
        :func:`ww.ipfs.importer.import_entries`); returns its top-level entries' names and
        CIDs, with ``options.wrap`` the wrapping directory's alone (named "").  ``report``
        is called with each entry's path, CID and cumulative size as kubo reports them.

        Pinned as kubo pins it: the one top-level entry, else the directory holding them.
        Cancelled or failed midway, nothing is pinned (the blocks written are whole, and the
        next gc reclaims them)."""
        params = ImportParams.from_options(options)
        entries = _checked(entries)
        told = None if report is None else (
            lambda name, node: report(name, str(node.cid), node.tsize))
        if options.only_hash:
            tops, wrapper = import_entries(entries, params, NullSink(), told)
        else:
            with self._repo.writing():
                with self._blocks.writer() as sink:
                    tops, wrapper = import_entries(entries, params, sink, told)
                if options.pin:
                    root = tops[0][1] if len(tops) == 1 and not options.wrap else wrapper
                    self._repo.pins.add(root.cid, PinKind.RECURSIVE)
        if options.wrap:
            return [("", str(wrapper.cid))]
        return [(name, str(node.cid)) for name, node in tops]

    def put_block(self, data: bytes, codec: int, cid_version: int = 1,
                  pin: bool = False) -> str:
        """Store one block as it is (``ipfs block put``); its CID (sha2-256)."""
        from ww.core import multihash

        mh = multihash.sha256(data)
        cid = CID.v0(mh) if cid_version == 0 else CID.v1(codec, mh)
        with self._repo.writing():
            shard = self._blocks.put(cid, (data,))
            if shard is not None:
                fsync_dir(shard)
            if pin:
                self._repo.pins.add(cid, PinKind.DIRECT)
        return str(cid)

    def block_size(self, cid: str) -> int:
        """The size of a block (``ipfs block stat``), fetched if missing."""
        return len(self.block(cid))

    def add_path(self, path: Path, options: AddOptions = _DEFAULT_OPTIONS) -> str:
        """Add a file, symlink or directory tree (``ipfs add -r``); returns the root CID.

        Symlinks are stored as symlinks, ``path`` itself included; hidden files are included.
        """
        params = ImportParams.from_options(options)
        path = Path(path)
        current_token().check()
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

    def _get_block(self, cid: CID) -> bytes:
        """A verified block: from the repository, else from the connected peers (stored).

        Online, a dag-pb block read from the repository has its links prefetched, as one that
        arrives for a reader has: the reader is about to ask for them.  So a DAG is fetched one
        level below what is read, never further.  A cancelled call stops here, at its next
        block (:class:`CallCancelled`), as the kubo client's does at its next read."""
        current_token().check()
        try:
            block = self._blocks.get(cid)
            if self._net is not None and cid.codec == DAG_PB and block[:1] == _LINK_TAG:
                self._net.prefetch(block)
        except NotFoundError as err:
            if is_local_only():
                raise WouldWait(f"block {cid} is not in the repository") from err
            net = self._online(err)
            if net is None:
                raise
            block = net.fetch(cid)
        if self._net is not None:
            self._report_fetched()
        return block

    def _report_fetched(self) -> None:
        """Tell the thread's progress, if anyone listens, what has come from peers so far
        (prefetched blocks arrive unasked for: the engine's counters see them all)."""
        progress = _progress.active()
        net = self._net
        if progress is not None and net is not None:
            progress.fetched(*net.received())

    def _node(self, path: str) -> exporter.UnixfsNode:
        return exporter.resolve(self._get_block, parse_path(path))

    def _cid(self, path: str) -> CID:
        """The CID ``path`` names; a bare CID is returned without touching the repository."""
        ipath = parse_path(path)
        if not ipath.segments:
            return ipath.root
        return exporter.resolve(self._get_block, ipath).cid

    def cat(self, path: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream a file's bytes; blocks outside ``[offset, offset + length)`` are not read."""
        return self._flushing(exporter.cat(self._get_block, self._node(path), offset, length))

    def block(self, cid: str) -> bytes:
        """One block's raw bytes (verified against the CID), like ``ipfs block get``."""
        return self._get_block(self._cid(cid))

    def ls(self, path: str) -> list[Entry]:
        return list(self.iter_ls(path))

    def iter_ls(self, path: str) -> Iterator[Entry]:
        """:meth:`ls` one entry at a time, as the directory is read (a HAMT shard at a
        time); the path is resolved now, so that a missing one raises here."""
        ipath = parse_path(path)
        node = exporter.resolve(self._get_block, ipath)
        return exporter.iter_ls(self._get_block, node, ipath.last_name)

    def stat(self, path: str, links: bool = True) -> Stat:
        """What ``path`` names; ``links=False``: without a directory's entries, which are
        then not read (:meth:`iter_ls` reads them one at a time)."""
        return exporter.stat(self._get_block, self._node(path), links)

    def iter_links(self, path: str) -> Iterator[Link]:
        """:meth:`stat`'s links one at a time, as the directory is read (a HAMT shard at a
        time); the path is resolved now, so that a missing one raises here."""
        return exporter.iter_links(self._get_block, self._node(path))

    def resolve(self, path: str) -> str:
        return str(self._cid(path))

    def get(self, path: str, dest: Path, executable: bool = False,
            force: bool | None = None) -> None:
        """Write a file or tree to ``dest`` atomically (``force``: see the CoreAPI's ``get``);
        never at, inside or over this node's own repository."""
        exporter.check_outside_repository(Path(dest), self.repo_path)
        exporter.get_path(self._get_block, path, dest, executable, force)
        if self._net is not None:
            self._net.flush()
            self._report_fetched()

    # --- pins -------------------------------------------------------------------------

    def pin(self, path: str, recursive: bool = True) -> None:
        """Pin what ``path`` names; a recursive pin needs every block of the DAG locally."""
        self.pin_paths([path], recursive)

    def pin_paths(self, paths: list[str], recursive: bool = True) -> None:
        """:meth:`pin` each of ``paths`` in turn, the blocks their DAGs share walked once (a
        request naming one path 1,024 times walked its DAG 1,024 times)."""
        seen: set[bytes] = set()
        for path in paths:
            self._pin(path, recursive, seen)

    def _pin(self, path: str, recursive: bool, seen: set[bytes]) -> None:
        cid = self._cid(path)
        with self._repo.writing():
            if recursive:
                for _ in exporter.walk(self._get_block, cid, seen):
                    pass
            else:
                self._get_block(cid)
            self._repo.pins.add(cid, PinKind.RECURSIVE if recursive else PinKind.DIRECT)

    def unpin(self, path: str) -> None:
        cid = self._cid(path)
        if not self._repo.pins.remove(cid):
            raise NotFoundError(f"{cid} is not pinned")

    def pins(self) -> list[str]:
        """Every pinned CID, recursive and direct."""
        return [str(cid) for cid in self._repo.pins.list()]

    def iter_pins(self) -> Iterator[str]:
        return (str(cid) for cid in self._repo.pins.iter())

    def pin_ls(self, type: str = "all") -> dict[str, str]:
        """Pinned CIDs -> ``"recursive"``, ``"direct"`` or ``"indirect"`` (``ipfs pin ls``).

        The indirect pins are found by walking every recursive pin's DAG (each block once);
        a block of one that is missing is a NotFoundError naming the pin."""
        check_pin_type(type)
        found: dict[str, str] = {}
        recursive = self._repo.pins.list(PinKind.RECURSIVE)
        if type in ("all", "recursive"):
            found.update((str(cid), "recursive") for cid in recursive)
        if type in ("all", "direct"):
            for cid in self._repo.pins.list(PinKind.DIRECT):
                found.setdefault(str(cid), "direct")
        if type in ("all", "indirect"):
            roots = {cid.multihash for cid in recursive}
            seen: set[bytes] = set()
            for root in recursive:
                try:
                    for cid, _ in exporter.walk(self._blocks.get, root, seen):
                        if cid.multihash not in roots:
                            found.setdefault(str(cid), "indirect")
                except NotFoundError as err:
                    raise NotFoundError(f"the DAG pinned as {root} is incomplete: {err}") from None
        return found

    def pinned_via(self, cid: str) -> str | None:
        """The first recursive pin whose DAG holds ``cid`` below its root (kubo's ``pin ls
        <cid>``: "indirect through <root>"), or None."""
        return self.pinned_through([cid]).get(cid)

    def pinned_through(self, cids: Iterable[str]) -> dict[str, str]:
        """For each of ``cids`` held below the root of a recursive pin, the first such pin:
        one walk of the recursive pins for all of them (each block once), stopping as soon
        as every one is found.  CIDs held by none are left out."""
        wanted: dict[bytes, list[str]] = {}
        for cid in cids:
            wanted.setdefault(CID.parse(cid).multihash, []).append(cid)
        through: dict[str, str] = {}
        seen: set[bytes] = set()
        for root in self._repo.pins.list(PinKind.RECURSIVE):
            if not wanted:
                break
            for found, _ in exporter.walk(self._blocks.get, root, seen):
                if found.multihash != root.multihash and found.multihash in wanted:
                    for cid in wanted.pop(found.multihash):
                        through[cid] = str(root)
            seen.difference_update(wanted)  # a wanted root, walked as itself, is still found
        return through                      # below another (its own blocks stay seen)

    def pins_by_kind(self) -> dict[str, list[str]]:
        """``{"recursive": [...], "direct": [...]}``."""
        return {k.value: [str(c) for c in self._repo.pins.list(k)] for k in PinKind}

    # --- maintenance ------------------------------------------------------------------

    def gc(self, removed: Callable[[str], object] | None = None,
           failed: Callable[[str, str], object] | None = None) -> GcReport:
        """Remove unpinned blocks and leftovers of interrupted writes; ``removed(cid)`` is
        told each block as it goes (see :meth:`ww.ipfs.repo.Repo.gc`)."""
        return self._repo.gc(removed, failed)

    def repo_stat(self) -> RepoStat:
        """The blocks stored and their bytes; there is no storage limit (``storage_max``)."""
        usage = self._repo.usage()
        return RepoStat(repo_size=usage.bytes, num_objects=usage.blocks,
                        repo_path=str(self._repo.path), version=f"ww-repo@{REPO_VERSION}")

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
        progress = _progress.current()
        progress.advance(car.write_header(out, cids))
        for cid in cids:
            for block_cid, block in exporter.walk(self._get_block, cid, seen):
                progress.advance(car.write_block(out, block_cid, block), blocks=1)

    def import_car(self, src: BinaryIO) -> list[str]:
        """Import a CAR v1 all or nothing, pin its roots recursively, return the roots
        (:meth:`import_car_pinning`, pinning)."""
        return self.import_car_pinning(src, True)

    def import_car_pinning(self, src: BinaryIO, pin: bool) -> list[str]:
        """Import a CAR v1 all or nothing, pin its roots recursively if ``pin`` (kubo's
        ``dag import --pin-roots``), return the roots (:meth:`import_cars_pinning`)."""
        return self.import_cars_pinning([src], pin)

    def import_cars_pinning(self, srcs: Iterable[BinaryIO], pin: bool) -> list[str]:
        """Import CAR v1 streams (each read to its end before the next is taken) all or
        nothing, pin their roots recursively if ``pin`` (kubo's ``dag import --pin-roots``),
        return the roots, each once.

        Every block is verified and staged first; only when every stream has been read and
        every root's DAG is complete (from the CARs and blocks already here: a root may come
        in one CAR and its blocks in another, as kubo takes them) are the blocks moved into
        the repository and the roots pinned.  A stream cut short or malformed, or the call
        cancelled, leaves nothing, none of the CARs before it either: kubo pins only once
        all are read.  What is staged is known by the staging directory's files alone, so
        the memory held does not grow with the blocks of the CARs (it did, some 600 bytes a
        block), only the walk over the roots' DAGs does, which reads each block once however
        many roots lead to it.
        """
        with self._repo.writing():
            staging = self._repo.staging / f"car-{os.getpid()}-{secrets.token_hex(6)}"
            staging.mkdir()
            try:
                roots: dict[CID, None] = {}  # in order, each once
                staged = SyncedTogether(staging)
                progress = _progress.current()
                for src in srcs:
                    reader = car.CarReader(src)
                    roots.update(dict.fromkeys(reader.roots))
                    read = 0
                    for cid, block in reader.blocks():
                        current_token().check()
                        progress.advance(reader.offset - read, blocks=1)
                        read = reader.offset
                        if self._blocks.has(cid):
                            continue
                        try:
                            staged.add(_stage(staging / cid.multihash.hex(), block))
                        except FileExistsError:
                            continue  # staged already
                current_token().check()

                def getter(cid: CID) -> bytes:
                    try:  # verified when it was staged
                        return (staging / cid.multihash.hex()).read_bytes()
                    except FileNotFoundError:
                        return self._blocks.get(cid)

                # one set over every root: a block a root's walk went through heads a
                # sub-DAG already found whole, so roots that share their blocks (thousands
                # in a CAR's header, each linking one large stored DAG) walk them once
                seen: set[bytes] = set()
                for root in roots:
                    try:
                        for _ in exporter.walk(getter, root, seen):
                            pass
                    except NotFoundError as err:
                        raise NotFoundError(
                            f"the CAR does not hold the whole DAG of root {root} ({err}); "
                            "nothing was imported"
                        ) from None
                if staged.count:  # one syncfs for many staged blocks (an fsync each: 1.2 ms
                    # a block here, 20,000 tiny blocks 24 s), an fsync each for a few, then
                    # their names
                    staged.sync()
                    fsync_dir(staging)
                dirty = set()
                with os.scandir(staging) as spots:
                    for spot in spots:
                        shard = self._blocks.adopt(bytes.fromhex(spot.name), Path(spot.path))
                        if shard is not None:
                            dirty.add(shard)
                for shard in dirty:
                    fsync_dir(shard)
                if pin:
                    self._repo.pins.add_all(roots, PinKind.RECURSIVE)
                return [str(root) for root in roots]
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    # --- network ----------------------------------------------------------------------

    def _network(self, listen: list[str] | None = None) -> Network:
        """The libp2p host, started on first use (listening where told, else nowhere)."""
        with self._net_lock:
            if self._closed:
                raise IpfsError("the IPFS node is closed")
            if self._net is None:
                from ww.core import identity

                from .net import Network

                if self._new_host is None:
                    raise BackendUnavailableError(
                        "ipfs: this node was given no libp2p host to go on the network with")
                ident = self._identity or identity.load_or_create(self._repo.path)
                self._net = Network.own(ident, self._blocks, self._new_host, listen=listen,
                                        router=self._router)
            net = self._net
        net.start()  # a shared host `ww run` has not started yet: now
        return net

    def _online(self, missing: NotFoundError) -> Network | None:
        """Where to fetch a missing block from; None when there is nobody to ask.

        The first time, the ``peers`` given are dialled (starting the host).  A shared host
        is started if its owner has not yet (it is about to anyway: `ww run` fetching its
        ``/ipfs/`` program), and its ``--join`` peers waited for.  Raises
        :class:`BackendUnavailableError` when peers were given and none could be reached."""
        if self._peers and not self._peers_dialled:
            # One thread dials; others missing blocks meanwhile (the IPFS capability reads
            # in several threads) wait for it rather than ask before anyone is connected.
            with self._dial_lock:
                if not self._peers_dialled:
                    net = self._network()
                    failures = []
                    for addr in self._peers:
                        try:
                            net.connect(addr)
                        except IpfsError as err:
                            failures.append(str(err))
                    self._peers_dialled = True
                    if len(failures) == len(self._peers) and not net.peers():
                        raise BackendUnavailableError(
                            f"{missing}, and no peer could be reached ({failures[0]})"
                        ) from None
                    return net
        if self._net is not None or self._router is not None:
            return self._network()
        return None

    def _flushing(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        yield from chunks
        if self._net is not None:
            self._net.flush()
            self._report_fetched()  # the last blocks read may have been counted only now

    def listen(self, addrs: list[str]) -> PeerInfo:
        """Start the libp2p host listening on ``addrs`` (``/ip4/.../tcp/<port>``, port 0: any
        free port) so that peers can dial this node; returns :meth:`id`.  Only before the host
        has started (by ``connect``, or a fetch from ``peers``), and not on a shared host
        (which listens where its owner says: `ww run --listen`)."""
        if self._net is not None:
            raise IpfsError("the IPFS node is already on the network; listen before connecting"
                            " (on `ww run`'s host: use --listen)")
        try:
            self._network(listen=addrs)
        except ValueError as err:
            raise IpfsError(f"ipfs: {err}") from None
        return self.id()

    def provide(self, cid: str) -> int:
        """Announce through the router (``--routing dht``) that this node provides ``cid``
        (a block it has), at the addresses it listens on; how many peers were told.  A node
        that listens nowhere, or has no router, tells nobody (0)."""
        root = CID.parse(cid)
        if not self._blocks.has(root):
            raise NotFoundError(f"cannot provide {cid}: the block is not in the repository")
        if self._router is None:
            return 0
        return self._network().provide(root)

    def id(self) -> PeerInfo:
        """This node's peer id (from the repository's identity key); once on the network, the
        addresses it listens on and the protocols it serves."""
        if self._net is not None:
            return self._net.id()
        from ww.core import identity  # imported late: only id() needs the key code

        ident = self._identity or identity.load_or_create(self._repo.path)
        return PeerInfo(id=ident.peer_id, addresses=[], protocols=[])

    def peers(self) -> list[PeerInfo]:
        """The peers connected now (none until the node is on the network)."""
        return self._net.peers() if self._net is not None else []

    def connect(self, addr: str) -> None:
        """Dial a peer (``/ip4/<address>/tcp/<port>/p2p/<peer id>``), starting the host."""
        from ww.core.addrs import check_join_addr
        from ww.core.errors import AddressError

        try:
            check_join_addr(addr)  # a malformed address starts nothing
        except AddressError as err:
            raise IpfsError(f"ipfs: {err}") from None
        self._network().connect(addr)

    def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id``; its outstanding wants go to other peers."""
        if self._net is not None:
            self._net.disconnect(peer_id)

    def close(self) -> None:
        with self._net_lock:
            self._closed = True
            net, self._net = self._net, None
        if net is not None:
            net.close()

    def __enter__(self) -> EmbeddedNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # a static check that EmbeddedNode implements CoreAPI
    _check: CoreAPI = EmbeddedNode(Path())


_T = TypeVar("_T")


def _checked(chunks: Iterable[_T]) -> Iterator[_T]:
    """``chunks``, stopping with CallCancelled before the next one once the call is cancelled."""
    token = current_token()
    for chunk in chunks:
        token.check()
        yield chunk
        del chunk  # not kept while the next one is waited for
    token.check()


def _stage(path: Path, block: bytes) -> Path:
    write_new_file(path, (block,), sync=False)  # synced with the others (import_cars_pinning)
    return path
