"""`/ww/0.1.0`, the Cap'n Proto side: serving a cell's export, and reaching a remote one.

A `/ww/0.1.0` stream carries standard Cap'n Proto two-party RPC.  The side that accepted the
stream is the server; its bootstrap capability is a `Gateway` (cell.capnp), whose one method
returns the capability the cell exported.  The exported capability is held as an opaque
client and passed through untouched: calls on it are forwarded to the cell by the RPC
system itself, and a remote caller can reach nothing else (the `Gateway` has no other
method, and `Host`, the session and its capabilities are never on this connection).

Everything here runs on the asyncio thread that serves fd 3 (or `ww call`'s).  A connection
is either a `/ww/0.1.0` stream of py-libp2p spliced to a socket (:class:`ww.p2p.host.Node`)
or a stream of the native lane (:mod:`ww.p2p.lane`), served and bounded alike.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import capnp

from ww.core import bridge, capnp_stream
from ww.core.addrs import P2PError, peer_of
from ww.core.foreign import kj_reason
from ww.p2p import bounds, lane
from ww.schema import load

if TYPE_CHECKING:
    from ww.p2p.host import Node
    from ww.p2p.lane import LaneConn

_cell = load("cell")

MAX_INBOUND = 64  # remote connections served at once (see Exports._serve)
MAX_INBOUND_PER_PEER = 8  # of them from one peer id; more from it are closed at once
MAX_DIALED = 64  # connections to remote exports kept open by one host
MAX_DIALING = 16  # lane connections one host dials at once (a socket each); more wait


def hold(capability: Any) -> Any:
    """Keep a ``Capability``-typed value (an AnyPointer reader, valid only during the call
    that carried it) as a client; the interface it is typed as here does not matter."""
    return capability.as_interface(_cell.Gateway)


class GatewayServer(_cell.Gateway.Server):  # type: ignore[name-defined,misc]
    """The bootstrap of a `/ww/0.1.0` connection: hands out the current export."""

    def __init__(self, exports: Exports) -> None:
        self._exports = exports

    async def service(self, _context: Any, **kwargs: Any) -> None:
        export = self._exports.current
        if export is None:
            raise P2PError("p2p: this cell exports nothing")
        _context.results.service = export


class Exports:
    """A cell's export and the remote connections that reach it."""

    def __init__(self) -> None:
        self.current: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # (server, what closes its connection) -> the remote peer id, oldest first
        self._servers: dict[tuple[Any, Callable[[], Any]], str] = {}
        self._starting: list[str] = []  # the peer ids of connections being set up
        self._lane_tasks: set[asyncio.Task[None]] = set()  # lane streams served

    def set(self, service: Any) -> None:
        """Export ``service`` (a client); ``None`` withdraws the export."""
        self._loop = asyncio.get_running_loop()
        self.current = service
        if service is None:
            self.close_all()

    def accept(self, sock: socket.socket, peer: str) -> None:
        """For :meth:`ww.p2p.host.Node.serve`: called on the libp2p thread."""
        loop = self._loop
        if loop is None or self.current is None:
            raise P2PError("nothing exported")
        if not bridge.start_in_loop(loop, self._serve, sock, peer):
            raise P2PError("nothing exported")  # the loop is closed: the cell's session is over

    def lane_acceptor(self, seed: bytes, rest: lane.Rest | None = None,
                      ) -> Callable[[socket.socket, str, Any], None]:
        """For the host's lane door: ``accept(sock, ip, ticket)``, called on the libp2p
        thread with an inbound lane connection (:func:`ww.p2p.lane.serve`), served on this
        loop as the node whose Ed25519 seed is ``seed``; ``rest`` serves the other protocols
        of a connection that is not the lane's (:meth:`ww.p2p.host.Node.rest`).  Raises
        P2PError, the socket and the ticket left to the caller, when nothing is exported."""

        def accept(sock: socket.socket, ip: str, ticket: Any) -> None:
            loop = self._loop
            if loop is None or self.current is None:
                raise P2PError("nothing exported")
            if not bridge.start_in_loop(
                loop, lane.serve, sock, seed, ip, ticket, self.serve_lane_stream, rest
            ):
                raise P2PError("nothing exported")

        return accept

    def serve_lane_stream(self, stream: Any, peer: str) -> None:
        """On the loop: serve a `/ww/0.1.0` stream of a lane connection (a
        ``capnp.AsyncIoStream``) from ``peer``, under the same bounds as the others."""

        async def ready() -> Any:
            return stream

        task = asyncio.ensure_future(self._serve_rpc(peer, ready, stream.close))
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)

    async def _serve(self, sock: socket.socket, peer: str = "") -> None:
        """Serve one remote connection spliced to ``sock`` (from py-libp2p), its answers
        counted in the loop's answer budget with the lane's (:func:`bounds.spliced_capnp`)."""

        async def connect() -> Any:
            return (await bounds.spliced_capnp(sock))[1]

        await self._serve_rpc(peer, connect, sock.close)

    async def _serve_rpc(
        self, peer: str, connect: Callable[[], Awaitable[Any]], close: Callable[[], Any]
    ) -> None:
        """Serve one remote connection: ``connect()`` gives its ``capnp.AsyncIoStream``,
        ``close()`` ends it.  No peer holds the door shut: one peer id has at most
        :data:`MAX_INBOUND_PER_PEER` connections, and when all :data:`MAX_INBOUND` are taken
        a newcomer replaces the oldest connection of the peer holding the most."""
        # Those being set up count too: a burst all passes the check before one is set up.
        held = [*self._servers.values(), *self._starting]
        if self.current is None or held.count(peer) >= MAX_INBOUND_PER_PEER:
            close()
            return
        if len(held) >= MAX_INBOUND:
            serving = list(self._servers.values())
            if not serving:  # every place is being set up: nothing to replace yet
                close()
                return
            most = max(serving, key=held.count)
            self._close(next(e for e, p in self._servers.items() if p == most))
        self._starting.append(peer)
        try:
            stream = await connect()
        except Exception:  # it could not be set up: nothing to serve, nobody to tell
            close()
            return
        except BaseException:
            close()
            raise
        finally:
            self._starting.remove(peer)
        if self.current is None:  # withdrawn meanwhile (close_all did not see this one)
            close()
            return
        server = capnp.TwoPartyServer(stream, bootstrap=GatewayServer(self))
        entry = (server, close)
        self._servers[entry] = peer
        try:
            await server.on_disconnect()
        except Exception:
            pass
        finally:
            self._servers.pop(entry, None)
            close()

    def _close(self, entry: tuple[Any, Callable[[], Any]]) -> None:
        self._servers.pop(entry, None)
        server, close = entry
        try:
            server.close()
        except Exception:
            pass
        close()

    def close_all(self) -> None:
        """Drop every remote connection: their calls fail as disconnected."""
        for entry in list(self._servers):
            self._close(entry)


class Remote:
    """One `/ww/0.1.0` connection we opened, and its `Gateway`.  ``transport``: what closes
    it (the socket spliced to py-libp2p, or the lane stream)."""

    def __init__(self, client: Any, transport: Any) -> None:
        self._client = client
        self._transport = transport
        self.gateway = client.bootstrap().cast_as(_cell.Gateway)
        self.closed = False
        self._watch = asyncio.ensure_future(self._until_disconnected())

    async def _until_disconnected(self) -> None:
        try:
            await self._client.on_disconnect()
        except Exception:
            pass
        self.closed = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._client.close()
        self._watch.cancel()
        self._transport.close()


class Dialer:
    """The `/ww/0.1.0` connections one host opened, one per address, reused by later dials.

    Each dial asks the remote `Gateway` again (an answer due within the dialer's
    ``timeout``, :data:`ww.p2p.lane.DIAL_TIMEOUT` unless told), so a new export over there
    is seen at once; a connection that broke is replaced.  Dials of one address at once
    share the one connection being made.  At most :data:`MAX_DIALED` are kept open: dialing one more
    address closes the least recently dialed one (and the capabilities from it).

    A full address of an Ed25519 peer id is dialed on the native lane (:mod:`ww.p2p.lane`:
    one connection per address, at most :data:`MAX_DIALING` being dialed at once (the
    others wait), kept for later dials of it and replaced once it closed (its socket freed
    as the peer's end is seen), closed with the address's `/ww/0.1.0` connection when that
    is dropped or could not be made: a lane connection is kept only for an address kept);
    anything else (``lane=False`` too)
    through the node's py-libp2p host (:meth:`ww.p2p.host.Node.open`).
    """

    def __init__(self, node: Node, *, lane: bool = True,
                 timeout: float = lane.DIAL_TIMEOUT) -> None:
        """``timeout``: seconds a lane dial, and then the remote `Gateway`'s answer, may
        take each (`ww call --timeout`)."""
        self._node = node
        self._lane = lane
        self._timeout = timeout
        self._remotes: dict[str, Remote] = {}
        self._connecting: dict[str, asyncio.Task[Remote]] = {}  # being made, one per address
        self._lanes: dict[str, asyncio.Task[LaneConn]] = {}  # being dialed, or dialed
        self._dialing = asyncio.Semaphore(MAX_DIALING)

    async def dial(self, addr: str) -> Any:
        """The capability the cell at ``addr`` exports, as a client of unknown interface.
        A kept connection found disconnected as it is asked (the peer ended it, and the
        loop had not seen it yet) is replaced by a new one, once."""
        for retry in (True, False):
            kept = self._remotes.get(addr)
            remote = await self._remote(addr)
            try:
                async with asyncio.timeout(self._timeout):  # the remote host answers it
                    return hold((await remote.gateway.service()).service)
            except (capnp.KjException, TimeoutError) as e:
                if self._remotes.get(addr) is remote:
                    self._forget(addr)
                remote.close()
                if isinstance(e, TimeoutError):
                    late = self._timeout
                    raise P2PError(f"p2p: {addr}: no answer within {late:g} s") from None
                if not (retry and remote is kept and e.type == "DISCONNECTED"):
                    raise P2PError(_dial_failure(addr, e)) from None
        raise AssertionError("unreachable")  # (the second turn returns or raises)

    async def _remote(self, addr: str) -> Remote:
        """The open connection to ``addr``, the one being made, or a new one."""
        remote = self._remotes.get(addr)
        if remote is not None and not remote.closed:
            self._remotes[addr] = self._remotes.pop(addr)  # most recently used last
            return remote
        if remote is not None:
            self._remotes.pop(addr).close()  # (its lane connection is kept: it may be open)
        task = self._connecting.get(addr)
        if task is None:
            task = self._connecting[addr] = asyncio.ensure_future(self._connect(addr))
            task.add_done_callback(lambda done: self._connected(addr, done))
        return await asyncio.shield(task)  # (a caller that gives up leaves it to the others)

    def _connected(self, addr: str, task: asyncio.Task[Remote]) -> None:
        """A connection to ``addr`` was made, or not: kept (the oldest past MAX_DIALED
        dropped), or nothing of it is."""
        ours = self._connecting.get(addr) is task
        if ours:
            del self._connecting[addr]
        if task.cancelled() or task.exception() is not None:
            if ours:
                self._drop_lane(addr)
            return
        remote = task.result()
        if not ours:  # close_all came meanwhile
            remote.close()
            return
        self._remotes[addr] = remote
        while len(self._remotes) > MAX_DIALED:
            self._forget(next(iter(self._remotes)))

    def _forget(self, addr: str) -> None:
        """Drop the connection to ``addr`` and its lane connection."""
        self._remotes.pop(addr).close()
        self._drop_lane(addr)

    async def _connect(self, addr: str) -> Remote:
        if peer_of(addr) == self._node.peer_id:
            raise P2PError(f"p2p: {addr} is this host itself")
        if self._lane:
            try:
                conn = await self._lane_conn(addr)
            except lane.LaneUnavailable:
                pass
            else:
                stream = await conn.open_ww()
                return Remote(capnp.TwoPartyClient(stream), stream)
        sock = await self._open_py(addr)
        try:
            stream = await capnp_stream.connect(sock)
            return Remote(capnp.TwoPartyClient(stream), sock)
        except BaseException:
            sock.close()
            raise

    async def _open_py(self, addr: str) -> socket.socket:
        """A `/ww/0.1.0` stream through py-libp2p, spliced to a socket."""
        return await bridge.wait_future(self._node.open(addr))

    async def _lane_conn(self, addr: str) -> LaneConn:
        """The lane connection to ``addr``: the one dialed before if it is still open (or
        still being dialed), else a new one.  LaneUnavailable: not for the lane."""
        task = self._lanes.get(addr)
        if task is not None and task.done() and ((conn := _dialed(task)) is None
                                                 or conn.closed.done()):
            self._drop_lane(addr)
            task = None
        if task is None:
            task = self._lanes[addr] = asyncio.ensure_future(self._dial_lane(addr))
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and self._lanes.get(addr) is task:
                self._drop_lane(addr)  # a failure is not kept: the next dial tries again
            raise

    async def _dial_lane(self, addr: str) -> LaneConn:
        """:func:`ww.p2p.lane.dial`, when one of the :data:`MAX_DIALING` places is free."""
        node = self._node
        lane.endpoint(addr)  # LaneUnavailable at once: it needs no place
        async with self._dialing:
            conn = await lane.dial(addr, node.identity.private_key.seed,
                                   policy=node.dial_policy, timeout=self._timeout)
        conn.closed.add_done_callback(lambda _: self._lane_ended(addr, conn))
        return conn

    def _lane_ended(self, addr: str, conn: LaneConn) -> None:
        """The peer ended the lane connection kept for ``addr``: its socket is freed now,
        not when the address is next dialed (the address's `/ww/0.1.0` connection, lost
        with it, is replaced then)."""
        task = self._lanes.get(addr)
        if task is not None and _dialed(task) is conn:
            del self._lanes[addr]
        conn.close()

    def _drop_lane(self, addr: str) -> None:
        task = self._lanes.pop(addr, None)
        if task is None:
            return
        if not task.done():
            task.cancel()  # (the dial closes what it had made)
        elif (conn := _dialed(task)) is not None:
            conn.close()

    def close_all(self) -> None:
        connecting, self._connecting = self._connecting, {}
        for task in connecting.values():
            task.cancel()
        for remote in self._remotes.values():
            remote.close()
        self._remotes.clear()
        for addr in list(self._lanes):
            self._drop_lane(addr)


def _dialed(task: asyncio.Task[LaneConn]) -> LaneConn | None:
    """The lane connection a dial made; None while it is dialing, or if it failed or was
    cancelled."""
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None


def _dial_failure(addr: str, e: capnp.KjException) -> str:
    reason = kj_reason(e)
    if "exports nothing" in reason:
        return f"p2p: the cell at {peer_of(addr)} exports nothing"
    if e.type == "DISCONNECTED" or "disconnect" in reason.lower() or "EOF" in reason:
        return lane.serves_nothing(peer_of(addr))
    return f"p2p: {peer_of(addr)}: {reason}"
