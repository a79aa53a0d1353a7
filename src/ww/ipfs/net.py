"""The embedded node on the network: Bitswap on a libp2p host, used from plain threads.

:class:`Network` adds :data:`ww.ipfs.bitswap.PROTOCOL` and a :class:`ww.ipfs.bitswap.Engine` to
a libp2p host (a :class:`Host`: ``ww.p2p.host.Node`` is the one `ww` has, TCP + Noise + Yamux,
identify and ping, on a trio thread of its own, with the node key of ``$WW_HOME``).  This
layer never imports the p2p one: the host, or the means to make one (:data:`NewHost`), is
handed in by whoever builds the node.  Either the host is the one `ww run` already has for
p2p (:meth:`Network.on`: one host per `ww run`, so a peer joined with ``--join`` is an IPFS
peer too, and `/ww/0.1.0` and Bitswap share its connections), or a host of its own that serves
Bitswap and nothing else (:meth:`Network.own`).  The embedded node calls it synchronously:
:meth:`Network.fetch` blocks until a block has arrived, been hashed against its CID and
stored, or every peer has been tried.

Nothing here is imported until the embedded node needs the network (``connect``, ``listen``,
a block missing while peers were named with ``--peer``, or `ww run` has a libp2p host anyway),
so ``ww run /bin/true`` never loads libp2p.  The host dials only the addresses it is given and
listens only where it is told (a host of its own: nowhere unless ``listen`` says; a peer that
dialled us, or that we dialled, can fetch from us either way).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ww.core import bridge
from ww.core.addrs import P2PError, check_join_addr, check_listen_addr
from ww.core.cid import CID
from ww.core.errors import AddressError
from ww.core.fsutil import fsync_dir, sync_filesystem
from ww.core.identity import Identity

from . import bitswap
from .api import (
    BackendUnavailableError,
    CallCancelled,
    IpfsError,
    NotFoundError,
    PeerInfo,
    current_token,
)
from .blockstore import Blockstore

__all__ = ["Host", "NewHost", "NewRouter", "Network", "Router", "CONNECT_TIMEOUT",
           "FETCH_TIMEOUT"]

CONNECT_TIMEOUT = 10.0  # seconds to dial and secure a connection to a peer
SETTLE_WAIT = 5.0  # seconds a flush waits for blocks stored but not yet counted
FETCH_TIMEOUT = 120.0  # the longest a caller waits for one block (each peer is given less)
STREAM_TIMEOUT = 10.0  # seconds to open a Bitswap stream to a peer
SEARCH_DELAY = 1.0  # seconds the connected peers have for a block before the router is asked
SEARCH_TIMEOUT = 60.0  # the longest a provider search and its dials may take
MAX_PROVIDERS = 3  # providers a search connects to
# providers a search asks the router for, tried in turn until MAX_PROVIDERS are connected:
# providers named that cannot be reached (lies, old records) hide no others
MAX_NAMED = 20


class Host(Protocol):
    """What Bitswap needs of a libp2p host on a thread of its own (``ww.p2p.host.Node``).

    Its failures to start or dial are :class:`ww.core.addrs.P2PError`, one line each."""

    peer_id: str
    addrs: list[str]  # where it really listens, each ending in /p2p/<peer id>

    @property
    def running(self) -> bool: ...

    @property
    def protocols(self) -> list[str]: ...

    @property
    def host(self) -> Any:
        """py-libp2p's host, to use on the host's thread only."""

    def add_protocol(self, protocol: str, handler: Callable[[Any], Any],
                     setup: Callable[[], Any] | None = None) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait_joined(self) -> None: ...

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]: ...

    async def dial(self, info: Any) -> None: ...


NewHost = Callable[[Identity, list[str]], Host]
"""Makes a host of the node's own with its key, listening on the (checked) addresses given,
serving nothing until Bitswap is added, dialing where its maker's dial policy allows."""


class Router(Protocol):
    """Content routing: who provides a CID (``ww.p2p.routing.DualDht``, kubo's dual DHT).  Its
    coroutines run on the host's thread; each is bounded in time and in peers contacted."""

    async def find_providers(self, cid: CID, limit: int) -> list[PeerInfo]:
        """At most ``limit`` peers that say they provide ``cid``, with addresses to dial."""

    async def provide(self, cid: CID) -> int:
        """Announce that this host provides ``cid``; how many peers were told."""


NewRouter = Callable[[Host], Router]
"""Makes the router of a host (``ww.p2p.routing.new_router``: the DHT, its bootstrap peers)."""


class Network:
    """Bitswap on a libp2p host: serving from ``store``, and fetching into it."""

    def __init__(self, node: Host, store: Blockstore, *, owned: bool,
                 peer_timeout: float = bitswap.PEER_TIMEOUT,
                 router: NewRouter | None = None) -> None:
        """Use :meth:`on` or :meth:`own`.  ``owned``: :meth:`close` stops ``node`` too.
        ``router``: how to find providers of a block no connected peer has (None: ask only
        the connected peers)."""
        self.peer_id = node.peer_id
        self._node = node
        self._router = router(node) if router is not None else None
        # One provider search at a time: fetches of the same block share it, a fetch of
        # another waits for it to end first (the providers it connected may have that block
        # too), so a slow provider cannot make many readers start a lookup each.
        self._search_lock = threading.Lock()
        self._searching: tuple[CID, concurrent.futures.Future[tuple[int, int, str]]] | None \
            = None
        self._owned = owned
        self._store = store
        self._engine: bitswap.Engine | None = None
        self._peer_timeout = peer_timeout
        node.add_protocol(bitswap.PROTOCOL, self._inbound, self._setup)

    @classmethod
    def on(cls, node: Host, store: Blockstore, **kw: Any) -> Network:
        """Bitswap on ``node``, started or not (it serves as soon as the node runs)."""
        return cls(node, store, owned=False, **kw)

    @classmethod
    def own(cls, identity: Identity, store: Blockstore, new_host: NewHost,
            listen: list[str] | None = None, **kw: Any) -> Network:
        """A host of its own made by ``new_host``, started now, serving Bitswap only
        (listening where told)."""
        listen = [check_listen_addr(a) for a in (listen or [])]
        node = new_host(identity, listen)
        net = cls(node, store, owned=True, **kw)
        net.start()
        return net

    def start(self) -> None:
        """Start the host if nothing has yet, and wait for its ``--join`` peers to connect."""
        try:
            self._node.start()
        except P2PError as e:
            if self._owned:
                self._node.stop()
            raise BackendUnavailableError(str(e)) from None
        self._node.wait_joined()

    @property
    def running(self) -> bool:
        return self._node.running

    # -- the libp2p thread -------------------------------------------------------------------

    async def _setup(self) -> None:
        from libp2p.abc import INotifee

        host = self._node.host
        engine = bitswap.Engine(self._store, self_id=self.peer_id,
                                open_stream=self._open_stream, peer_timeout=self._peer_timeout)

        class Notifee(INotifee):
            async def opened_stream(self, network: Any, stream: Any) -> None: ...
            async def closed_stream(self, network: Any, stream: Any) -> None: ...
            async def listen(self, network: Any, multiaddr: Any) -> None: ...
            async def listen_close(self, network: Any, multiaddr: Any) -> None: ...

            async def connected(self, network: Any, conn: Any) -> None:
                engine.peer_connected(str(conn.muxed_conn.peer_id))

            async def disconnected(self, network: Any, conn: Any) -> None:
                peer = conn.muxed_conn.peer_id
                if not [c for c in network.get_connections(peer) if c is not conn]:
                    engine.peer_disconnected(str(peer))

        host.get_network().register_notifee(Notifee())
        self._engine = engine
        for conn in host.get_network().get_connections():
            engine.peer_connected(str(conn.muxed_conn.peer_id))
        self._node.submit(engine.run)  # on the host's nursery: it ends when the host stops

    async def _inbound(self, stream: Any) -> None:
        engine = self._engine
        if engine is None:
            await stream.reset()
            return
        await engine.handle_stream(stream)

    async def _open_stream(self, peer: str) -> Any:
        """A Bitswap stream on a connection we have: Bitswap never dials (a peer that went
        away is not called back at addresses it announced)."""
        import trio
        from libp2p.peer.id import ID

        peer_id = ID.from_base58(peer)
        if not self._node.host.get_network().get_connections(peer_id):
            raise P2PError(f"p2p: not connected to {peer}")
        with trio.fail_after(STREAM_TIMEOUT):
            return await self._node.host.new_stream(peer_id, [bitswap.PROTOCOL])

    async def _connect(self, addr: str) -> str:
        import multiaddr
        import trio
        from libp2p.peer.peerinfo import info_from_p2p_addr

        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await self._node.dial(info)
        except trio.TooSlowError:
            raise P2PError(f"no answer within {CONNECT_TIMEOUT:g} s") from None
        if self._engine is not None:
            self._engine.peer_connected(str(info.peer_id))
        return str(info.peer_id)

    async def _peers(self) -> list[PeerInfo]:
        host = self._node.host
        network = host.get_network()
        store = host.get_peerstore()
        found: dict[str, PeerInfo] = {}
        for conn in network.get_connections():
            peer = conn.muxed_conn.peer_id
            key = str(peer)
            addrs = [str(a) for a in conn.get_transport_addresses()]
            if not addrs:
                addrs = [str(a) for a in store.addrs(peer)] if peer in store.peer_ids() else []
            try:
                protocols = sorted(str(p) for p in store.get_protocols(peer))
            except Exception:
                protocols = []
            if key in found:
                addrs = found[key].addresses + [a for a in addrs
                                                if a not in found[key].addresses]
            found[key] = PeerInfo(id=key, addresses=addrs, protocols=protocols)
        return sorted(found.values(), key=lambda p: p.id)

    async def _search(self, cid: CID) -> tuple[int, int, str]:
        """Ask the router who provides ``cid`` (at most :data:`MAX_NAMED`) and connect to
        those we are not connected to, in turn, until :data:`MAX_PROVIDERS` are connected
        (each dial within :data:`CONNECT_TIMEOUT`): how many it named, how many are connected
        now, and why the first that could not be dialed could not."""
        import multiaddr
        import trio
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo as LibPeerInfo

        from ww.core.foreign import chained_reason

        assert self._router is not None
        network = self._node.host.get_network()
        found = [p for p in await self._router.find_providers(cid, MAX_NAMED)
                 if p.id != self.peer_id]
        connected = 0
        reason = ""
        for provider in found:
            if connected >= MAX_PROVIDERS:
                break
            peer_id = ID.from_base58(provider.id)
            if not network.get_connections(peer_id):
                info = LibPeerInfo(peer_id, [multiaddr.Multiaddr(a)
                                             for a in provider.addresses])
                try:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        await self._node.dial(info)
                except trio.TooSlowError:
                    reason = reason or f"no answer within {CONNECT_TIMEOUT:g} s"
                    continue
                except Exception as e:
                    reason = reason or chained_reason(e)
                    continue
            connected += 1
            if self._engine is not None:
                self._engine.peer_connected(provider.id)
        return len(found), connected, reason

    async def _provide(self, cid: CID) -> int:
        assert self._router is not None
        return await self._router.provide(cid)

    async def _disconnect(self, peer: str) -> None:
        from libp2p.peer.id import ID

        await self._node.host.get_network().close_peer(ID.from_base58(peer))

    async def _want(self, cid: CID, future: concurrent.futures.Future[bytes]) -> None:
        assert self._engine is not None
        self._engine.want(cid, future)

    async def _prefetch(self, links: list[CID]) -> None:
        if self._engine is not None:
            self._engine.prefetch(links)

    async def _cancel(self, cid: CID, future: concurrent.futures.Future[bytes]) -> None:
        if self._engine is not None:
            self._engine.cancel(cid, future)

    async def _take_dirty(self) -> set[Path]:
        if self._engine is None:
            return set()
        import trio

        # Bounded well inside _call's timeout: past it, what is dirty now is taken (the
        # blocks are stored all the same; only a count may lag), never a failed read.
        with trio.move_on_after(SETTLE_WAIT):
            await self._engine.settled()
        dirty, self._engine.dirty = self._engine.dirty, set()
        return dirty

    async def _stats(self) -> dict[str, int]:
        return dict(self._engine.stats) if self._engine else {}

    # -- any thread ---------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any, timeout: float) -> Any:
        try:
            return self._node.submit(fn, *args).result(timeout)
        except concurrent.futures.TimeoutError:
            raise BackendUnavailableError("ipfs: the libp2p host did not answer in time") \
                from None

    @property
    def addrs(self) -> list[str]:
        """Where the host really listens, each ending in ``/p2p/<peer id>``."""
        return list(self._node.addrs)

    def id(self) -> PeerInfo:
        return PeerInfo(id=self.peer_id, addresses=self.addrs, protocols=self._node.protocols)

    def connect(self, addr: str) -> str:
        """Dial ``/ip4|ip6/<addr>/tcp/<port>/p2p/<peer id>``; returns the peer id."""
        try:
            addr = check_join_addr(addr)
        except AddressError as e:
            raise IpfsError(f"ipfs: {e}") from None
        try:
            return self._call(self._connect, addr, timeout=CONNECT_TIMEOUT + 5)
        except P2PError as e:
            raise IpfsError(f"ipfs: cannot connect to {addr} ({e})") from None
        except IpfsError:
            raise
        except Exception as e:
            from ww.core.foreign import chained_reason

            raise IpfsError(f"ipfs: cannot connect to {addr} ({chained_reason(e)})") from None

    def disconnect(self, peer: str) -> None:
        if not self.running:
            return
        self._call(self._disconnect, peer, timeout=CONNECT_TIMEOUT)

    def peers(self) -> list[PeerInfo]:
        if not self.running:
            return []
        return self._call(self._peers, timeout=CONNECT_TIMEOUT)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, int]:
        """Blocks and bytes received and served so far (for benchmarks and tests)."""
        return self._call(self._stats, timeout=CONNECT_TIMEOUT)  # type: ignore[no-any-return]

    def received(self) -> tuple[int, int]:
        """Blocks and bytes received from peers so far, as the engine's counters stand: read
        without a hop to the libp2p thread, for a progress display to follow cheaply."""
        engine = self._engine
        if engine is None:
            return 0, 0
        return engine.stats["blocks_in"], engine.stats["bytes_in"]

    def fetch(self, cid: CID, timeout: float = FETCH_TIMEOUT) -> bytes:
        """The block ``cid``, from the connected peers: verified, stored, then returned.

        With a router, a block the connected peers have not given within
        :data:`SEARCH_DELAY` (or have all said they lack) is looked up: the providers the
        router finds are connected to and asked too (once per fetch, within
        :data:`SEARCH_TIMEOUT`)."""
        token = current_token()
        token.check()
        deadline = time.monotonic() + timeout
        future = self._ask(cid)
        if self._router is not None:
            done = bridge.wait_in_thread(future, min(SEARCH_DELAY, timeout), token.on_cancel)
            if done and future.exception() is None:
                return future.result()
            if token.cancelled:
                return self._give_up(cid, future, token, timeout)
            search = self._search_for(cid, token)
            bridge.wait_in_thread(search, min(SEARCH_TIMEOUT, timeout), token.on_cancel)
            named, connected, reason = (search.result() if search.done()
                                        and search.exception() is None else (0, 0, ""))
            if done:  # every connected peer said no: ask again, the providers included
                if not named:
                    raise NotFoundError(f"{future.exception()}, and the DHT found no provider")
                if not connected:
                    raise NotFoundError(f"{future.exception()}, and none of the {named} "
                                        f"provider(s) the DHT found could be reached ({reason})")
                future = self._ask(cid)
        # The caller giving up (a cell cancelling its cat) ends the wait and withdraws the
        # want; the engine's future is left to the engine.
        if bridge.wait_in_thread(future, max(0.0, deadline - time.monotonic()),
                                 token.on_cancel):
            return future.result()
        return self._give_up(cid, future, token, timeout)

    def _search_for(self, cid: CID, token: Any) -> concurrent.futures.Future[tuple[int, int, str]]:
        """The provider search for ``cid``: the one in flight, or a new one once any search
        for another block has ended."""
        with self._search_lock:
            current = self._searching
        if current is not None and current[0] != cid and not current[1].done():
            bridge.wait_in_thread(current[1], SEARCH_TIMEOUT, token.on_cancel)
        with self._search_lock:
            current = self._searching
            if current is None or current[0] != cid or current[1].done():
                current = self._searching = (cid, self._node.submit(self._search, cid))
            return current[1]

    def _ask(self, cid: CID) -> concurrent.futures.Future[bytes]:
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self._call(self._want, cid, future, timeout=CONNECT_TIMEOUT)
        return future

    def _give_up(self, cid: CID, future: concurrent.futures.Future[bytes], token: Any,
                 timeout: float) -> bytes:
        self._call(self._cancel, cid, future, timeout=CONNECT_TIMEOUT)
        if token.cancelled:
            raise CallCancelled(f"the fetch of block {cid} was cancelled")
        raise NotFoundError(f"block {cid} did not arrive from any connected peer within "
                            f"{timeout:g} s")

    def provide(self, cid: CID, timeout: float = SEARCH_TIMEOUT) -> int:
        """Announce ``cid`` through the router; how many peers were told (0 without one)."""
        if self._router is None:
            return 0
        return self._call(self._provide, cid, timeout=timeout)  # type: ignore[no-any-return]

    def prefetch(self, block: bytes) -> None:
        """Want the links of a dag-pb block a reader got from the repository (one level
        below what is read; see :meth:`ww.ipfs.bitswap.Engine.prefetch`).  Does not wait."""
        if not self.running:
            return
        # Decoded and looked up here, in the reader's thread, not on the libp2p one.
        scanned = bitswap.links_of(block, bitswap.PREFETCH_SCAN)
        missing = (c for c in scanned if not self._store.has(c))
        links = list(itertools.islice(missing, bitswap.MAX_PREFETCH))
        if links:
            self._node.submit(self._prefetch, links)

    def flush(self) -> None:
        """Make every block fetched so far durable (one syncfs, then their directories), and
        count it in :meth:`received`."""
        if not self.running:
            return
        dirty: set[Path] = self._call(self._take_dirty, timeout=CONNECT_TIMEOUT)
        if dirty:
            sync_filesystem(self._store.root)
            for shard in dirty:
                fsync_dir(shard)

    def close(self) -> None:
        """Stop the host if it is this network's own; a shared one is stopped by its owner."""
        if self._owned:
            self._node.stop()
