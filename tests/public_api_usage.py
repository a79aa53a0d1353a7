"""Every public name of ``ww.cell`` and ``ww.ipfs``, used as an embedder or a cell would.

Never run: ``tests/test_public_api_types.py`` type-checks it with mypy, and each
``assert_type`` fails if a public call's result is not the promised type (an unannotated
public function makes its result ``Any``, which fails too).  A name added to ``__all__``
must be used here; that test checks it.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import assert_type

import ww.cell
import ww.ipfs
from ww.cell import (
    P2P,
    AuthenticationFailed,
    CapabilityDenied,
    CapabilityNotGranted,
    CellError,
    Console,
    Executor,
    FdNotProvided,
    Ipfs,
    Process,
    RemoteError,
    RemoteService,
    Service,
    Session,
    Signer,
    Stream,
    SyncConsole,
    SyncExecutor,
    SyncIpfs,
    SyncP2P,
    SyncProcess,
    SyncRemoteService,
    SyncSession,
    SyncStream,
    connect,
    fd,
    session,
)
from ww.ipfs import (
    AddOptions,
    AsyncCoreAPI,
    BackendUnavailableError,
    CallCancelled,
    CancelToken,
    CoreAPI,
    CorruptBlockError,
    EmbeddedNode,
    Entry,
    EntryType,
    InvalidPathError,
    IpfsError,
    KuboClient,
    Link,
    NotAFileError,
    NotFoundError,
    PeerInfo,
    RepoStat,
    Stat,
    UnsupportedError,
    cancellable,
    open_backend,
)

# --- ww.ipfs ---------------------------------------------------------------------------------


def use_ipfs_sync(tmp: Path) -> None:
    node = EmbeddedNode(tmp / "repo")
    kubo = KuboClient("/ip4/127.0.0.1/tcp/5001", timeout=10.0, connect_timeout=2.0)
    backend: CoreAPI = node
    backend = kubo
    assert_type(open_backend(None), CoreAPI)
    options = AddOptions(cid_version=1, raw_leaves=True, pin=False, only_hash=True, hidden=False)
    cid = backend.add_stream([b"x"], options)
    assert_type(cid, str)
    assert_type(backend.add_path(tmp), str)
    assert_type(backend.cat(cid, 0, None), Iterator[bytes])
    entries = backend.ls(cid)
    assert_type(entries, list[Entry])
    assert_type(entries[0].type, EntryType)
    info = backend.stat(cid)
    assert_type(info, Stat)
    assert_type(info.links, list[Link])
    assert_type(info.target, str | None)
    assert_type(backend.resolve(cid), str)
    assert_type(backend.get(cid, tmp / "out", executable=True), None)
    assert_type(backend.pin(cid, recursive=False), None)
    assert_type(backend.unpin(cid), None)
    assert_type(backend.pins(), list[str])
    assert_type(backend.pin_ls("indirect"), dict[str, str])
    usage = backend.repo_stat()
    assert_type(usage, RepoStat)
    assert_type(usage.storage_max, int | None)
    assert_type(backend.export_car([cid], io.BytesIO()), None)
    assert_type(backend.import_car(io.BytesIO()), list[str])
    assert_type(backend.id(), PeerInfo)
    assert_type(backend.peers(), list[PeerInfo])
    assert_type(backend.connect("/ip4/127.0.0.1/tcp/4001/p2p/x"), None)
    token = CancelToken()
    with cancellable(token):
        assert_type(token.cancelled, bool)
    token.cancel()
    backend.close()
    errors: list[type[IpfsError]] = [
        BackendUnavailableError, CallCancelled, CorruptBlockError, InvalidPathError,
        NotAFileError, NotFoundError, UnsupportedError,
    ]
    assert_type(errors, list[type[IpfsError]])
    assert_type(ww.ipfs.__all__, list[str])


async def use_ipfs_async(tmp: Path) -> None:
    async with AsyncCoreAPI(EmbeddedNode(tmp)) as ipfs:
        cid = await ipfs.add_stream([b"x"], AddOptions())
        assert_type(cid, str)
        assert_type(await ipfs.add_path(tmp), str)
        assert_type(ipfs.cat(cid, 1, 2), AsyncIterator[bytes])
        assert_type(await ipfs.ls(cid), list[Entry])
        assert_type(await ipfs.stat(cid), Stat)
        assert_type(await ipfs.resolve(cid), str)
        assert_type(await ipfs.get(cid, tmp, executable=False), None)
        assert_type(await ipfs.pin(cid, recursive=True), None)
        assert_type(await ipfs.unpin(cid), None)
        assert_type(await ipfs.pins(), list[str])
        assert_type(await ipfs.pin_ls(), dict[str, str])
        assert_type(await ipfs.repo_stat(), RepoStat)
        assert_type(await ipfs.export_car([cid], io.BytesIO()), None)
        assert_type(await ipfs.import_car(io.BytesIO()), list[str])
        assert_type(await ipfs.id(), PeerInfo)
        assert_type(await ipfs.peers(), list[PeerInfo])
        assert_type(await ipfs.connect("/p2p/x"), None)
        assert_type(ipfs.backend, CoreAPI)


# --- ww.cell ---------------------------------------------------------------------------------


async def use_cell_async() -> None:
    async with connect(identity=Signer(b"key")) as s:
        assert_type(s, Session)
        assert_type(s.granted, list[str])
        assert_type(s.peer_id, str | None)
        assert_type(await s.relogin(), Session)
        console = s.console
        assert_type(console, Console)
        assert_type(await console.println("hi"), None)
        assert_type(await console.ping(b"x"), bytes)
        ipfs = s.ipfs
        assert_type(ipfs, Ipfs)
        cid = await ipfs.add(b"x", cid_version=1, raw_leaves=None, pin=True, only_hash=False)
        assert_type(cid, str)
        assert_type(ipfs.cat_stream(cid, 0, None), AsyncIterator[bytes])
        assert_type(await ipfs.cat(cid), bytes)
        assert_type(await ipfs.ls(cid), list[Entry])
        assert_type(await ipfs.stat(cid), Stat)
        assert_type(await ipfs.resolve(cid), str)
        assert_type(await ipfs.pin(cid, True), None)
        assert_type(await ipfs.unpin(cid), None)
        assert_type(await ipfs.pins(), list[str])
        assert_type(await ipfs.id(), PeerInfo)
        assert_type(await ipfs.connect("/p2p/x"), None)
        assert_type(await ipfs.peers(), list[PeerInfo])
        assert_type(await ipfs.attenuate(read_only=True, roots=[cid]), Ipfs)
        executor = s.exec
        assert_type(executor, Executor)
        child = await executor.spawn("/ipfs/x", "a", env={"K": "v"}, console=True, ipfs=True,
                                     ipfs_read_only=True, ipfs_roots=[cid], can_exec=False)
        assert_type(child, Process)
        assert_type(child.stdout, Stream)
        assert_type(await child.stdout.read(10), bytes)
        assert_type(child.stderr.chunks(10), AsyncIterator[bytes])
        assert_type(await child.stderr.read_all(), bytes)
        assert_type(await child.write(b"in"), None)
        assert_type(await child.close_stdin(), None)
        assert_type(await child.kill(9), None)
        assert_type(await child.wait(), int)
        p2p = s.p2p
        assert_type(p2p, P2P)
        assert_type(await p2p.export(None), None)
        assert_type(await p2p.id(), tuple[str, list[str]])
        await p2p.dial("/p2p/x", Service)
        remote = await p2p.dial_service("/p2p/x")
        assert_type(remote, RemoteService)
        assert_type(await remote.call("m", "a"), str)
        assert_type(await p2p.serve(1.0), None)


def use_cell_sync() -> None:
    assert_type(fd("db"), int)
    with session(identity=False) as s:
        assert_type(s, SyncSession)
        assert_type(s.granted, list[str])
        assert_type(s.peer_id, str | None)
        assert_type(s.relogin(), SyncSession)
        console = s.console
        assert_type(console, SyncConsole)
        assert_type(console.println("hi"), None)
        assert_type(console.ping(b"x"), bytes)
        ipfs = s.ipfs
        assert_type(ipfs, SyncIpfs)
        cid = ipfs.add(b"x", cid_version=1, raw_leaves=None, pin=True, only_hash=False)
        assert_type(cid, str)
        assert_type(ipfs.cat_stream(cid, 0, None), Iterator[bytes])
        assert_type(ipfs.cat(cid), bytes)
        assert_type(ipfs.ls(cid), list[Entry])
        assert_type(ipfs.stat(cid), Stat)
        assert_type(ipfs.resolve(cid), str)
        assert_type(ipfs.pin(cid, True), None)
        assert_type(ipfs.unpin(cid), None)
        assert_type(ipfs.pins(), list[str])
        assert_type(ipfs.id(), PeerInfo)
        assert_type(ipfs.connect("/p2p/x"), None)
        assert_type(ipfs.peers(), list[PeerInfo])
        assert_type(ipfs.attenuate(read_only=True, roots=[cid]), SyncIpfs)
        executor = s.exec
        assert_type(executor, SyncExecutor)
        child = executor.spawn("/ipfs/x", "a", env={"K": "v"}, console=True, ipfs=True,
                               ipfs_read_only=True, ipfs_roots=[cid], can_exec=False)
        assert_type(child, SyncProcess)
        assert_type(child.stdout, SyncStream)
        assert_type(child.stdout.read(10), bytes)
        assert_type(child.stderr.chunks(10), Iterator[bytes])
        assert_type(child.stderr.read_all(), bytes)
        assert_type(child.write(b"in"), None)
        assert_type(child.close_stdin(), None)
        assert_type(child.kill(9), None)
        assert_type(child.wait(), int)
        p2p = s.p2p
        assert_type(p2p, SyncP2P)
        assert_type(p2p.export(None), None)
        assert_type(p2p.id(), tuple[str, list[str]])
        p2p.dial("/p2p/x", Service)
        remote = p2p.dial_service("/p2p/x")
        assert_type(remote, SyncRemoteService)
        assert_type(remote.call("m", "a"), str)
        assert_type(p2p.serve(1.0), None)
        assert_type(s.close(), None)
    errors: list[type[CellError]] = [
        AuthenticationFailed, CapabilityDenied, CapabilityNotGranted, FdNotProvided, RemoteError,
    ]
    assert_type(errors, list[type[CellError]])
    assert_type(CapabilityNotGranted("ipfs").name, str)
    assert_type(ww.cell.__all__, list[str])
