"""What remote peers' connections may make the libp2p host hold: bounded at the door.

A peer id costs a new ed25519 key and a TCP connection costs nothing, so counts per peer id
bound nothing: what is bounded is the connections the host *accepts*, by state and by remote
address, and the streams each of them may have.  :func:`install` puts these bounds on one
py-libp2p host's own instance (:func:`ww.p2p.host._new_host` calls it):

- **connections being set up** (TCP accepted, Noise and Yamux not finished): at most
  :data:`MAX_HANDSHAKES` at a time, each within :data:`HANDSHAKE_TIMEOUT`, and at most
  :data:`MAX_HANDSHAKES_PER_IP` (half) from one remote address (counted as below), so that
  no address, 127.0.0.1 included, holds them all;
- **inbound connections in all** (set up or being set up): at most :data:`MAX_INBOUND`;
- **inbound connections per remote IP address** (set up or being set up; an IPv6 /56 is
  one address, an IPv4-mapped ``::ffff:a.b.c.d`` its IPv4 address): at most
  :data:`MAX_PER_IP`; 127.0.0.1 and ::1, each one address, at most
  :data:`MAX_PER_LOOPBACK` (half the host: local tools and tests run many peers there, and
  so does a local proxy for remote peers); and when all :data:`MAX_INBOUND` places are
  taken they are shared among addresses, loopback like any other (below);
- **inbound streams per connection not yet past protocol negotiation**: at most
  :data:`MAX_NEGOTIATING`, each within :data:`STREAM_NEGOTIATE_TIMEOUT`; once a stream has
  named its protocol, that protocol's own bounds hold it (Bitswap 4 streams a peer, each
  DHT 8, ping 2, `/ww/0.1.0` 256 in all), and :data:`MAX_STREAMS_PER_CONN` in all backs
  them up, a stream counted until the peer closes its side (at most
  :data:`STREAM_LINGER` seconds after its handler returned; then it is reset);
- **inbound streams per remote IP address** (all its connections together, an IPv6 /56 one
  address): at most :data:`MAX_STREAMS_PER_IP`, so that one address cannot take the
  host-wide streams below (its 8 connections x 256 would be 2048); 127.0.0.1 and ::1 at
  most :data:`MAX_STREAMS_PER_LOOPBACK` each (half the host's, as for connections);
- **inbound streams in all** (all connections together, counted alike): at most
  :data:`MAX_INBOUND_STREAMS`, shared among addresses when all are taken (as connections
  are, below: a new stream from an address holding at least 2 fewer than the address
  holding the most takes the place of that one's oldest stream, which is reset; see
  :meth:`Admission.stream_victim`), so that 8 addresses of MAX_STREAMS_PER_IP cannot shut
  every other peer out of opening a stream.  Each may hold the protocol's initial Yamux
  receive window (256 KiB) of unread data, so this bounds that memory; what windows grow
  beyond it is bounded by :data:`ww.p2p.yamux.GROWN_WINDOWS` (an inbound stream grows only
  once its protocol is chosen, which :func:`install` tells the muxer).

A connection over a bound is refused when it is accepted: closed before any byte is read or
any key computed, so the newest goes and the connections already there are untouched (a
connection counts from its accept, so no handshake can finish past a bound).  A stream over
the bound is reset as it arrives.  The connections this host dials are never counted nor
closed here: they are the user's work (a peer dialing us while we dial it makes one inbound
connection, counted and given back like any other).

One exception, so that a few addresses cannot shut the door on all others (16 addresses x 8
connections fill :data:`MAX_INBOUND`, as do 127.0.0.1's 64 and 8 addresses of 8): when the
host is full and a connection comes from an address under its own bound holding fewer
connections (set up or being set up) than another holds set up, by at least 2, that other
address (127.0.0.1 and ::1 included) gives up one of its set-up connections (see
:meth:`Admission.victim`: its oldest the peer has no stream open on, set up at least
:data:`EVICT_GRACE` seconds ago, else its oldest with no stream open, else its oldest),
closed at once, and the newcomer takes
its place.  The places end up shared out evenly among the addresses asking for them: an
address's last set-up connection is never trimmed (whatever it has in its handshake), and an
address trimmed to one below another's cannot take it back by connecting again.  This is
go-libp2p's connection manager's answer (trim rather than keep the door shut), made fair
per address and done at once rather than down to a low water mark.  What it leaves: the
trimming is decided at accept, before the newcomer's handshake (so the count never goes
past MAX_INBOUND), so one address's bare TCP connections can trim others' (at most as many
at a time as its address may hold, each holding its place until its handshake times out);
and 128 addresses of one connection each still fill the host, as they would any bound.
So no address, loopback included, keeps a newcomer from another address out: a local
process, or remote peers reaching the host through a local proxy (an ssh ``-R`` tunnel, a
``socat`` forward, an onion service: all arrive from 127.0.0.1), hold at most
:data:`MAX_PER_LOOPBACK` places, and give them up to newcomers as any address does.

The native lane (the C libp2p connection ww hosts call `/ww/0.1.0` over) shares the port: a
ww lane dialer proposes :data:`LANE` as the security protocol, sending multistream's header
and the proposal in one write (:data:`LANE_PROPOSAL`). When a lane acceptor is set
(:meth:`ww.p2p.host.Node.serve_lane`: the cell exports something), each connection, once it
has its place (counted as above: no byte is read before), is peeked at: its first bytes to
arrive, within :data:`HANDSHAKE_TIMEOUT` (a peer that sends nothing is cut then, as by
py-libp2p's handshake), are looked at with ``MSG_PEEK`` and left in the kernel. Exactly
:data:`LANE_PROPOSAL` (or, with ``noise``, as a ww host's node sets it, go-libp2p's and
js-libp2p's :data:`NOISE_PROPOSAL` or :data:`SIMOPEN_PROPOSAL`, whose start is waited for
:data:`PROPOSAL_WAIT` to come whole): the connection is handed to the acceptor (a duplicate
of its socket; this handler keeps the listener's until the lane ends, since the listener
closes it when the handler returns); anything else (py-libp2p's dialer sends the header
alone and waits for ours) goes to py-libp2p untouched. (So py-libp2p, which writes
multistream's header at once, writes it only after the peer's first bytes: every dialer
speaks first, py-libp2p's, go-libp2p's and the lane's.) Without an acceptor nothing is
peeked at. A lane connection holds its place (per address, in all) until the lane says it
ended (:class:`LaneTicket`); it counts as in its handshake until the lane says its Noise
handshake is done, within :data:`HANDSHAKE_TIMEOUT` of the accept (else it is shut down and
counted ``handshake_failed``); once set up it may give its place to a newcomer as any other
(its age from the end of its handshake, idle when the lane says it has no stream open). Its
streams are the lane's to bound: admission's stream bounds count py-libp2p's streams only.

Why not py-libp2p's own: 0.8.1 caps inbound connections at 250 with a slot taken at accept
and given back only when the *swarm* stops (its handler waits for that, since the TCP
listener closes a socket when its handler returns), so 250 connections over the host's life,
each closed at once, shut the door on every later peer (checked:
``tests/p2p/test_admission.py::test_connections_that_came_and_went_do_not_shut_the_door``).
Its other bounds are kept: 300 connections in all (``ConnectionConfig.max_connections``,
above :data:`MAX_INBOUND`, so the host's own dials always have room).  Its "3 per peer id"
(``max_connections_per_peer``) is no bound on what a peer holds: the excess is trimmed only
when another connection of that peer is added, and never a connection younger than its
20 s grace period, so any number arriving within 20 s stay (an attacker held 6 of one peer
id); :data:`MAX_PER_IP` and :data:`MAX_INBOUND` are what hold.  Its resource manager's
bounds per peer id are taken off (:func:`ww.p2p.host._resource_manager`): 10 new
connections a second after a burst of 50, and 8 established at once (counted until the
swarm has seen them end), each refused by closing it once set up, bound nothing a new key
escapes and cut an honest peer that dials a host's many addresses in turn.

What go-libp2p (kubo) does, for comparison: its upgrader sets up at most 16 inbound
connections at a time (``AcceptQueueLength``; it stops accepting beyond) within 15 s; its
resource manager allows 8 connections per IPv4 address (/32) and per IPv6 /56, loopback
excepted (here 127.0.0.1 and ::1 are held to :data:`MAX_PER_LOOPBACK`, and share); kubo's
connection manager trims to 32 connections once there are more than 96 (closing the least
useful, after a 20 s grace period).  The numbers here are measured in
docs/benchmarks.md ("Connections from remote peers").
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import trio

from ww.core.addrs import LANE, LANE_PROPOSAL, NOISE_PROPOSAL, SIMOPEN_PROPOSAL
from ww.p2p.yamux import allow_growth

__all__ = ["EVICT_GRACE", "HANDSHAKE_TIMEOUT", "LANE", "LANE_PROPOSAL", "MAX_HANDSHAKES",
           "MAX_HANDSHAKES_PER_IP",
           "MAX_INBOUND", "MAX_INBOUND_STREAMS", "MAX_NEGOTIATING", "MAX_PER_IP",
           "MAX_PER_LOOPBACK", "MAX_STREAMS_PER_CONN", "MAX_STREAMS_PER_IP",
           "MAX_STREAMS_PER_LOOPBACK", "STREAM_LINGER",
           "STREAM_NEGOTIATE_TIMEOUT", "Admission", "LaneAccept", "LaneTicket", "install"]


# Seconds from TCP accept to Noise and Yamux done (py-libp2p's inbound default, go-libp2p
# allows 15): an honest handshake is a few round trips.
HANDSHAKE_TIMEOUT = 10.0
# Seconds the rest of a dialer's first write may take to come when its first bytes are the
# start of a proposal (`--inbound calls` only: js-libp2p sends the header and ``/noise``
# apart); a py-libp2p dialer, which sends the header alone, waits this long for py-libp2p.
PROPOSAL_WAIT = 0.5
# Inbound connections in their handshake at once (go-libp2p: 16).  Each costs a socket and a
# task; the Noise handshake itself is the CPU a stranger can make us spend, so these few are
# plenty for honest arrivals (the handshake is quick) and bound the work of a flood.
MAX_HANDSHAKES = 32
# Inbound connections in their handshake from one address (counted as for MAX_PER_IP): half
# of them, so that no address keeps every other's newcomers out by holding them all (bare
# TCP connections renewed as they time out).  Only 127.0.0.1 and ::1 may hold that many
# (MAX_PER_LOOPBACK); any other address holds MAX_PER_IP in all, fewer.
MAX_HANDSHAKES_PER_IP = MAX_HANDSHAKES // 2
# Inbound connections in all, set up or being set up.  Measured at about 0.06 MiB each idle
# and 0.2 MiB with 16 streams in negotiation (docs/benchmarks.md): some 30 MiB for all 128
# at their worst.  kubo keeps 32 to 96 connections in all; a ww host serves a few cells'
# peers.
MAX_INBOUND = 128
# Inbound connections from one IP address (go-libp2p's default); 127.0.0.1 and ::1 have
# MAX_PER_LOOPBACK.  Other loopback addresses (127.0.0.2, ...) are held to this one, as any
# remote address, so the bound can be tested with them.
MAX_PER_IP = 8
# Inbound connections from 127.0.0.1, and from ::1 (each one address): local tools and
# tests run many peers there, and remote peers reaching the host through a local proxy (an
# ssh -R tunnel, socat, an onion service) all arrive from there.  Half the host, so that
# they can never hold it all; and they give places up to newcomers when the host is full as
# any address does (Admission.victim).  go-libp2p spares all of loopback.
MAX_PER_LOOPBACK = MAX_INBOUND // 2
# Inbound streams of one connection that have not named their protocol yet.  A stream in
# negotiation is work any peer can ask for (some 10 KiB and a task each, measured) and no
# protocol's bound holds it yet; a ww or kubo peer opens a few at once (its identify, ping,
# a Bitswap and a DHT stream).  py-libp2p's Yamux sets no limit at all (go-yamux: 1000).
MAX_NEGOTIATING = 16
# Inbound streams of one connection in all: a backstop under the protocols' own bounds, as
# many as /ww/0.1.0 carries for the whole host (ww.p2p.host.MAX_STREAMS).
MAX_STREAMS_PER_CONN = 256
# Inbound streams of all connections together.  An honest peer keeps a few open (identify,
# ping, up to 4 Bitswap, a DHT query's), so 8 for each of MAX_INBOUND connections; and each
# stream may hold 256 KiB of unread data (the protocol's initial window), so at most
# 256 MiB, where MAX_INBOUND x MAX_STREAMS_PER_CONN streams could hold 8 GiB.
MAX_INBOUND_STREAMS = 1024
# Inbound streams of one remote address (all its connections; counted as for MAX_PER_IP).
# A fair share: MAX_INBOUND_STREAMS / MAX_PER_IP, so it takes 8 addresses to fill the host,
# and 16 an honest peer's stream for each of the MAX_PER_IP connections an address may hold
# (twice the 8 counted above).  It is below MAX_STREAMS_PER_CONN: one connection from a
# remote address may hold half of what /ww/0.1.0 carries for the host, the rest left to
# other addresses; a connection from 127.0.0.1 still holds 256 (MAX_STREAMS_PER_LOOPBACK).
MAX_STREAMS_PER_IP = 128
# Inbound streams of 127.0.0.1, and of ::1 (each one address, all its connections): half the
# host's, as MAX_PER_LOOPBACK is of its connections (8 for each of those).
MAX_STREAMS_PER_LOOPBACK = MAX_INBOUND_STREAMS // 2
# Seconds a set-up inbound connection is spared from being the one its address gives up
# when it has no stream open (a new connection has not opened its first yet): those older
# and idle go first.  go-libp2p's connection manager spares new connections 20 s.
EVICT_GRACE = 10.0
# Seconds a new inbound stream may take to name its protocol (py-libp2p's default).
STREAM_NEGOTIATE_TIMEOUT = 10
# Seconds a peer has to close its side of a stream whose handler has returned (the host
# will not read it again): it is then reset.  It stays counted meanwhile.
STREAM_LINGER = 10

IP6_PREFIX = 56  # an IPv6 peer's addresses counted as one: those of its /56
_LOOPBACK = frozenset({"127.0.0.1", "::1"})  # held to the *_PER_LOOPBACK bounds


def _max_conns(ip: str) -> int:
    """The inbound connections the address ``ip`` (as counted) may hold."""
    return MAX_PER_LOOPBACK if ip in _LOOPBACK else MAX_PER_IP


def _max_streams(ip: str) -> int:
    """The inbound streams the address ``ip`` (as counted) may hold."""
    return MAX_STREAMS_PER_LOOPBACK if ip in _LOOPBACK else MAX_STREAMS_PER_IP


class Admission:
    """The counts, and what was refused (for tests and for a look with a debugger)."""

    def __init__(self) -> None:
        self.handshakes = 0  # inbound connections in their handshake
        self.ip_handshakes: dict[str, int] = {}  # of which by counted remote address
        self.inbound = 0  # inbound connections, set up or in their handshake
        self.per_ip: dict[str, int] = {}
        self.streams: dict[Any, int] = {}  # inbound streams, by muxed connection
        self.ip_streams: dict[str, int] = {}  # inbound streams, by counted remote address
        # set-up inbound connections of counted addresses, oldest first, with when set up
        self.held: dict[str, dict[Any, float]] = {}
        self.ip_of: dict[Any, str | None] = {}  # inbound muxed connections' addresses
        self.evicted: set[Any] = set()  # given their place to a newcomer, still closing
        # inbound streams of counted addresses, oldest first (the streams they may give up)
        self.ip_held: dict[str, dict[Any, None]] = {}
        self.dropped: set[Any] = set()  # streams that gave their place to a newcomer
        self.all_streams = 0  # inbound streams of all connections
        self.negotiating: dict[Any, int] = {}  # of which not past negotiation
        self.refused: dict[str, int] = {}  # refusals by the bound that made them
        # The lane acceptor now (None: none; then nothing is peeked at), asked at each accept.
        self.lane: Callable[[], LaneAccept | None] = _no_lane
        self.lane_in = 0  # inbound connections handed to the lane acceptor
        # Whether a dialer's first bytes proposing /noise (NOISE_PROPOSAL, SIMOPEN_PROPOSAL)
        # go to the lane acceptor too (`ww run --inbound calls`), as LANE_PROPOSAL does.
        self.noise = False

    def refusal(self, ip: str | None) -> str | None:
        """The bound a new inbound connection from ``ip`` would exceed, if any."""
        if self.handshakes >= MAX_HANDSHAKES:
            return "handshakes"
        if ip is not None and self.ip_handshakes.get(ip, 0) >= MAX_HANDSHAKES_PER_IP:
            return "ip_handshakes"
        if self.inbound >= MAX_INBOUND:
            return "inbound"
        if ip is not None and self.per_ip.get(ip, 0) >= _max_conns(ip):
            return "per_ip"
        return None

    def victim(self, ip: str | None) -> tuple[str, Any] | None:
        """Which connection (with its address) gives its place to a new one from ``ip`` when
        the host is full (None: none, the newcomer is refused).  If ``ip`` is under its own
        bound (:data:`MAX_PER_IP`, :data:`MAX_PER_LOOPBACK`: a newcomer never takes its
        address past it), the address holding the most set-up connections (127.0.0.1 and ::1
        as any other) gives one up if it holds at least 2 more
        than ``ip`` holds set up or being set up, so it keeps one set up (one in its
        handshake, which may never finish, does not count for it): its oldest on which the
        peer has no stream open
        (ours, identify and the like, do not count; a lane connection's: as its
        :attr:`LaneTicket.streams` says) set up at least
        :data:`EVICT_GRACE` seconds ago, else its oldest idle one (a busy one goes only when
        the address has no idle one: else a peer keeping fresh idle connections at a
        shared address, a proxy's, had another's working one cut), else its oldest (a
        set-up one: one in its handshake has its own timeout).  Only when the host is full:
        then a look at each address holding a set-up connection (at most MAX_INBOUND) and
        at MAX_PER_LOOPBACK connections at most."""
        if ip is None or not self.held or self.per_ip.get(ip, 0) >= _max_conns(ip):
            return None
        heaviest = max(self.held, key=lambda a: len(self.held[a]))
        conns = self.held[heaviest]
        if len(conns) < self.per_ip.get(ip, 0) + 2:
            return None
        now = trio.current_time()
        idle = [conn for conn in conns if self._idle(conn)]  # oldest first
        for conn in idle:  # at most MAX_PER_LOOPBACK
            if now - conns[conn] >= EVICT_GRACE:
                return heaviest, conn
        return heaviest, idle[0] if idle else next(iter(conns))

    def _idle(self, conn: Any) -> bool:
        """No stream the peer opened is open on ``conn`` (a lane's: as its acceptor says)."""
        if isinstance(conn, LaneTicket):
            return conn.streams <= 0
        return conn.muxed_conn not in self.streams

    def stream_victim(self, ip: str | None) -> tuple[str, Any] | None:
        """Which stream (with its address) gives its place to a new one from ``ip`` when the
        host holds :data:`MAX_INBOUND_STREAMS` (None: none, the newcomer is reset): the
        oldest of the address holding the most, if it holds at least 2 more than ``ip`` (as for
        connections, :meth:`victim`; 127.0.0.1 and ::1 as any other: ``ip`` is under its own
        bound, checked before).  A look at each address holding a stream (at most
        MAX_INBOUND_STREAMS)."""
        if ip is None or not self.ip_held:
            return None
        heaviest = max(self.ip_held, key=self.ip_streams.__getitem__)
        if self.ip_streams[heaviest] < self.ip_streams.get(ip, 0) + 2:
            return None
        return heaviest, next(iter(self.ip_held[heaviest]))

    def _take_stream(self, conn: Any, ip: str | None, stream: Any) -> None:
        _count(self.streams, conn, 1)
        if ip is not None:
            _count(self.ip_streams, ip, 1)
            self.ip_held.setdefault(ip, {})[stream] = None
        self.all_streams += 1

    def _give_back_stream(self, conn: Any, ip: str | None, stream: Any) -> None:
        _count(self.streams, conn, -1)
        if ip is not None:
            _count(self.ip_streams, ip, -1)
            streams = self.ip_held.get(ip, {})
            streams.pop(stream, None)
            if not streams:
                self.ip_held.pop(ip, None)
        self.all_streams -= 1

    def _refuse(self, bound: str) -> None:
        self.refused[bound] = self.refused.get(bound, 0) + 1

    def _take(self, ip: str | None) -> None:
        self.handshakes += 1
        self.inbound += 1
        if ip is not None:
            _count(self.per_ip, ip, 1)
            _count(self.ip_handshakes, ip, 1)

    def _handshake_done(self, ip: str | None) -> None:
        self.handshakes -= 1
        if ip is not None:
            _count(self.ip_handshakes, ip, -1)

    def _give_back(self, ip: str | None) -> None:
        self.inbound -= 1
        if ip is not None:
            _count(self.per_ip, ip, -1)

    def _hold(self, ip: str | None, conn: Any) -> None:
        if ip is not None:
            self.held.setdefault(ip, {})[conn] = trio.current_time()

    def _let_go(self, ip: str | None, conn: Any) -> None:
        conns = None if ip is None else self.held.get(ip)
        if ip is None or conns is None:
            return
        conns.pop(conn, None)
        if not conns:
            del self.held[ip]

    def _evict(self, ip: str, conn: Any) -> None:
        """``conn`` gives its place back now (its handler will not again)."""
        self._let_go(ip, conn)
        self._give_back(ip)
        self.evicted.add(conn)
        self._refuse("evicted")


# Called on the libp2p (trio) thread with a new lane connection's socket (non-blocking, its
# first bytes, LANE_PROPOSAL, still unread), its remote address as counted here, and its
# ticket; it must only hand them over (to an asyncio loop).  See LaneTicket.
LaneAccept = Callable[[socket.socket, str, "LaneTicket"], None]


def _no_lane() -> LaneAccept | None:
    return None


class LaneTicket:
    """An inbound connection handed to the lane acceptor: what the lane tells admission, and
    how admission cuts it.  It holds its admission place (per address, in all) from the
    accept until :meth:`ended`; until :meth:`handshaken` it counts as in its handshake
    (:data:`MAX_HANDSHAKES`), and must get there within :data:`HANDSHAKE_TIMEOUT` of the
    accept.  Once handshaken it is a set-up connection that may give its place to a newcomer
    (:meth:`Admission.victim`): its age is counted from :meth:`handshaken`, and it is idle
    while :attr:`streams` is 0.

    :meth:`handshaken`, :meth:`ended` and :meth:`on_close` may be called from any thread."""

    def __init__(self, sock: Any) -> None:
        # Streams the peer has open on the lane, as its acceptor keeps it (any thread may set
        # it; admission only reads it): 0 makes the connection idle, the first to give its
        # place once older than EVICT_GRACE.
        self.streams = 0
        self._sock = sock  # trio's socket of the connection (admission's, not the lane's)
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._closer: Callable[[], None] | None = None
        self._cut = False  # (under _lock) admission has closed it: no closer is called again
        self.is_handshaken = False  # (the trio thread's) what the lane has said
        self.is_ended = False
        self._news = trio.Event()

    def handshaken(self) -> None:
        """The lane's handshake is done: no longer counted as in its handshake."""
        self._tell(self._on_handshaken)

    def ended(self) -> None:
        """The lane connection is gone (its socket closed): its place is given back.
        Idempotent."""
        self._tell(self._on_ended)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the libp2p thread: it must be thread-safe and not block) when
        admission closes this connection: its handshake timed out, it gave its place to a
        newcomer, or the host stops; at once if that has happened already.  Admission has
        then shut the socket down (both ways) already; the lane should close its socket and
        call :meth:`ended` (its place is held until then, at most HANDSHAKE_TIMEOUT more)."""
        with self._lock:
            if not self._cut:
                self._closer = callback
                return
        callback()

    def _tell(self, news: Callable[[], None]) -> None:
        try:
            self._token.run_sync_soon(news)
        except trio.RunFinishedError:  # the host has stopped: nothing left to tell
            pass

    def _on_handshaken(self) -> None:
        self.is_handshaken = True
        self._news.set()

    def _on_ended(self) -> None:
        self.is_ended = True
        self._news.set()

    def close(self) -> None:
        """(the trio thread) Admission lets the connection go: its socket is shut down and the
        lane's callback called, once."""
        with self._lock:
            if self._cut:
                return
            self._cut = True
            closer, self._closer = self._closer, None
        self._news.set()
        if self.is_ended:
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # the peer is cut whatever the lane does
        except OSError:  # gone already
            pass
        if closer is not None:
            try:
                closer()
            except Exception:  # the lane's own failure: the socket is shut down anyway
                pass

    async def _until(self, done: Callable[[], bool]) -> None:
        """Wait (on the trio thread; one waiter) until ``done()``, checked at each news."""
        while not done():
            await self._news.wait()
            self._news = trio.Event()


def install(host: Any, lane: Callable[[], LaneAccept | None] | None = None,
            noise: bool = False) -> Admission:
    """Put the bounds on ``host`` (py-libp2p 0.8.1's BasicHost); revisit when upgrading.
    ``lane`` gives the lane acceptor at each accept (None, or giving None: no lane, and
    nothing is peeked at); ``noise``: connections proposing ``/noise`` go to it too."""
    network = host.get_network()
    admission = Admission()
    if lane is not None:
        admission.lane = lane
    admission.noise = noise
    network.admission = admission
    network._handle_inbound_connection = _inbound_handler(network, admission)
    network.set_stream_handler(_stream_handler(network.common_stream_handler, admission))
    host.multiselect.negotiate = _negotiation(host.multiselect.negotiate, admission)
    return admission


def _count(counts: dict[Any, int], key: Any, change: int) -> None:
    left = counts.get(key, 0) + change
    if left:
        counts[key] = left
    else:
        del counts[key]


def _remote_ip(stream: Any) -> str | None:
    """The remote address ``stream`` (py-libp2p's TCP stream, or a connection) comes from, as
    counted: an IPv4 address (an IPv4-mapped IPv6 one, ``::ffff:a.b.c.d``, as what it maps:
    an IPv4 peer of a dual-stack listener), or a global IPv6 address's /56 (one subscriber's
    usual share, go-libp2p's rule); loopback, link-local and unique local IPv6 addresses as
    they are.  The socket is asked first: py-libp2p 0.8.1's ``get_remote_address`` gives
    None for every IPv6 socket (its peer name is a 4-tuple), which left IPv6 and dual-stack
    peers counted by no address at all."""
    try:
        try:
            address = stream.stream.socket.getpeername()
        except AttributeError:  # not a TCP stream of py-libp2p's: ask it
            address = stream.get_remote_address()
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
    except Exception:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not (ip.is_loopback or ip.is_link_local or ip in _IP6_LOCAL):
            return str(ipaddress.ip_network(f"{ip}/{IP6_PREFIX}", strict=False))
    return str(ip)


# Link-local (fe80::/10) and unique local (fc00::/7) addresses are a LAN's or a site's, not
# one subscriber's: their /56 would count every peer of the LAN as one address (8
# connections for all of them), so each is counted as itself, as an IPv4 address is.
_IP6_LOCAL = ipaddress.ip_network("fc00::/7")


def _inbound_handler(network: Any, admission: Admission) -> Any:
    """Replaces ``Swarm._handle_inbound_connection`` (what the TCP listener calls)."""
    from libp2p.network.connection.raw_connection import RawConnection

    async def handle(stream: Any, maddr: Any) -> None:
        ip = _remote_ip(stream)
        bound = admission.refusal(ip)
        victim = admission.victim(ip) if bound == "inbound" else None
        if bound is not None and victim is None:  # no await between the check and the count
            admission._refuse(bound)
            await stream.close()
            return
        if victim is not None:
            admission._evict(*victim)
        admission._take(ip)
        handshaking = True
        conn = muxed = None
        try:
            if victim is not None:
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    await _close(victim[1])
            deadline = trio.current_time() + HANDSHAKE_TIMEOUT
            try:
                with trio.fail_at(deadline):
                    lane = await _lane_wanted(stream, admission)
            except (trio.TooSlowError, OSError):  # sent nothing in time, or reset
                admission._refuse("handshake_failed")
                await stream.close()
                return
            if lane is not None:
                conn = ticket = LaneTicket(stream.stream.socket)
                if not _hand_over(lane, ticket, ip, admission):
                    await stream.close()
                    return
                with trio.move_on_at(deadline):
                    await ticket._until(lambda: ticket.is_handshaken or ticket.is_ended)
                if not ticket.is_handshaken:  # its handshake failed, or is too slow
                    admission._refuse("handshake_failed")
                    ticket.close()  # shut down: no more work of ours; its place is held
                admission._handshake_done(ip)
                handshaking = False
                if ticket.is_handshaken:
                    admission._hold(ip, ticket)
                    await ticket._until(lambda: ticket.is_ended or ticket._cut)
                with trio.move_on_after(HANDSHAKE_TIMEOUT):  # cut: the lane lets go
                    await ticket._until(lambda: ticket.is_ended)
                return
            raw = RawConnection(stream, False)
            try:
                with trio.fail_at(deadline):
                    secured = await network.upgrader.upgrade_security(raw, False)
                    muxed = await network.upgrader.upgrade_connection(
                        secured, secured.get_remote_peer())
            except Exception:  # trio.TooSlowError included
                admission._refuse("handshake_failed")
                await raw.close()
                return
            admission._handshake_done(ip)
            handshaking = False
            admission.ip_of[muxed] = ip  # for its streams (py-libp2p cannot say, for IPv6)
            try:
                conn = await network.add_conn(muxed, direction="inbound")
            except Exception:  # py-libp2p's own limits (300 in all, its resource manager)
                await muxed.close()
                return
            admission._hold(ip, conn)
            # The TCP listener closes the socket when this returns: wait for the end.
            await conn.event_closed.wait()
        finally:
            if isinstance(conn, LaneTicket):  # (the host stops, say) the lane goes too
                conn.close()
            if handshaking:
                admission._handshake_done(ip)
            admission.ip_of.pop(muxed, None)
            if conn in admission.evicted:  # its place is another's already
                admission.evicted.discard(conn)
            else:
                admission._let_go(ip, conn)
                admission._give_back(ip)

    return handle


async def _lane_wanted(stream: Any, admission: Admission) -> LaneAccept | None:
    """The lane acceptor, if one is set and the connection's first bytes are exactly
    :data:`LANE_PROPOSAL` (or, with ``admission.noise``, :data:`NOISE_PROPOSAL` or
    :data:`SIMOPEN_PROPOSAL`).  Decided on the first bytes that arrive, peeked at (left in
    the kernel for whoever reads them): a py-libp2p dialer sends multistream's header alone
    and waits for ours, so no more is ever waited for; except with ``admission.noise``,
    where bytes that are the start of a proposal are given :data:`PROPOSAL_WAIT` seconds to
    come whole (js-libp2p writes the header and ``/noise`` in two sends, which may arrive
    apart: a py-libp2p dialer's connection waits that long before py-libp2p takes it).
    Nothing is peeked at without a lane."""
    if admission.lane() is None:
        return None
    sock = stream.stream.socket
    first = await sock.recv(_PEEK, socket.MSG_PEEK)
    if admission.noise:
        with trio.move_on_after(PROPOSAL_WAIT):
            while (need := _rest_of(first)) is not None:
                more = await _peek_at_least(sock, need)
                if len(more) <= len(first):  # the peer's end: nothing more is coming
                    break
                first = more
    wanted = _PROPOSALS if admission.noise else (LANE_PROPOSAL,)
    return admission.lane() if first.startswith(wanted) else None


_PROPOSALS = (NOISE_PROPOSAL, LANE_PROPOSAL, SIMOPEN_PROPOSAL)
_PEEK = max(len(p) for p in _PROPOSALS)


def _rest_of(first: bytes) -> int | None:
    """How many bytes the shortest proposal ``first`` is the start of (not all of) has."""
    lengths = [len(p) for p in _PROPOSALS if len(p) > len(first) and p.startswith(first)]
    return min(lengths) if first and lengths else None


async def _peek_at_least(sock: Any, need: int) -> bytes:
    """What the socket holds once it holds ``need`` bytes (the kernel's low-water mark
    makes it readable only then, or at its end), peeked at."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
    try:
        await trio.lowlevel.wait_readable(sock)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    return bytes(await sock.recv(_PEEK, socket.MSG_PEEK))


def _hand_over(accept: LaneAccept, ticket: LaneTicket, ip: str | None,
               admission: Admission) -> bool:
    """Give the lane acceptor a socket of its own for the connection (a duplicate of the
    listener's descriptor, which the listener closes when its handler returns); False if it
    refused (raised): the connection is then to be closed."""
    fd = -1
    try:
        fd = os.dup(ticket._sock.fileno())
        lane_sock = socket.socket(fileno=fd)
    except OSError:
        if fd >= 0:
            os.close(fd)
        admission._refuse("lane_failed")
        return False
    lane_sock.setblocking(False)  # as it is already: O_NONBLOCK is shared with trio's
    try:
        accept(lane_sock, ip or "", ticket)
    except Exception:
        lane_sock.close()
        admission._refuse("lane_failed")
        return False
    admission.lane_in += 1
    return True


def _stream_handler(inner: Any, admission: Admission) -> Any:
    """Wraps the swarm's handler of every inbound stream (the host's protocol negotiation,
    then the protocol's handler)."""

    async def handle(stream: Any) -> None:
        conn = stream.muxed_conn
        ip = admission.ip_of[conn] if conn in admission.ip_of else _remote_ip(conn)
        bound = ("streams" if admission.streams.get(conn, 0) >= MAX_STREAMS_PER_CONN else
                 "ip_streams" if ip is not None and admission.ip_streams.get(ip, 0) >=
                 _max_streams(ip) else
                 "all_streams" if admission.all_streams >= MAX_INBOUND_STREAMS else None)
        victim = admission.stream_victim(ip) if bound == "all_streams" else None
        if bound is not None and victim is None:
            admission._refuse(bound)
            await stream.reset()
            return
        if victim is not None:  # its place is this one's now; its handler gives back nothing
            admission._give_back_stream(victim[1].muxed_conn, *victim)
            admission.dropped.add(victim[1])
            admission._refuse("stream_evicted")
        admission._take_stream(conn, ip, stream)
        try:
            if victim is not None:
                await _drop(victim[1])
            await inner(stream)
            await _linger(stream)
        finally:
            if stream in admission.dropped:
                admission.dropped.discard(stream)
            else:
                admission._give_back_stream(conn, ip, stream)

    return handle


async def _close(conn: Any) -> None:
    if isinstance(conn, LaneTicket):
        conn.close()
        return
    try:
        await conn.close()
    except Exception:  # it was going anyway
        pass


async def _drop(stream: Any) -> None:
    """Reset ``stream``, which has given its place to another.  If the reset cannot be
    written within :data:`STREAM_NEGOTIATE_TIMEOUT` (a peer that does not read, its socket
    buffers full) the stream's connection is closed, or the stream would stay, counted by
    nobody, and the peer could resume it once it read again."""
    with trio.move_on_after(STREAM_NEGOTIATE_TIMEOUT):
        try:
            await stream.reset()
        except Exception:  # it was going anyway
            pass
        return
    conn = getattr(stream, "swarm_conn", None)
    if conn is not None:  # marked closed at once: its handler returns, its socket is closed
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            await _close(conn)


async def _linger(stream: Any) -> None:
    """After a stream's handler has returned the host never reads it again, but py-libp2p's
    Yamux keeps it, and what the peer sends on it, until the peer closes its side: a peer
    that never did held any number of streams (each with up to its receive window of
    data) past :data:`MAX_STREAMS_PER_CONN`.  So the stream stays counted while the peer
    has :data:`STREAM_LINGER` seconds to close its side (an honest one reads the answer
    and closes); what it sends meanwhile is dropped, and then the stream is reset."""
    muxed = getattr(stream, "muxed_stream", None)
    if (linger := getattr(muxed, "linger", None)) is not None:  # ww.p2p.hybrid's
        await linger(STREAM_LINGER)
        return
    events = getattr(getattr(muxed, "conn", None), "stream_events", None)
    buffers = getattr(getattr(muxed, "conn", None), "stream_buffers", None)
    if events is None or buffers is None:
        return
    with trio.move_on_after(STREAM_LINGER):
        while not (muxed.recv_closed or muxed.closed):
            buffers.get(muxed.stream_id, bytearray()).clear()
            event = events.get(muxed.stream_id)
            if event is None:  # the stream is gone
                return
            await event.wait()
            events[muxed.stream_id] = trio.Event()  # nobody else waits: the reader is done
        return
    buffers.get(muxed.stream_id, bytearray()).clear()
    try:
        await stream.reset()
    except Exception:  # the connection went meanwhile: nothing left to reset
        pass


def _negotiation(negotiate: Any, admission: Admission) -> Any:
    """Wraps the host's ``Multiselect.negotiate`` (inbound streams only: ours dial with
    ``MultiselectClient``); refusing is raising, and the host then resets the stream."""
    from libp2p.protocol_muxer.exceptions import MultiselectError

    async def bounded(communicator: Any, *args: Any, **kwargs: Any) -> Any:
        conn = getattr(communicator.read_writer, "muxed_conn", None)
        if admission.negotiating.get(conn, 0) >= MAX_NEGOTIATING:
            admission._refuse("negotiating")
            raise MultiselectError(f"more than {MAX_NEGOTIATING} streams in negotiation")
        _count(admission.negotiating, conn, 1)
        try:
            chosen = await negotiate(communicator, *args, **kwargs)
        finally:
            _count(admission.negotiating, conn, -1)
        allow_growth(communicator.read_writer)  # its receive window may grow now
        return chosen

    return bounded
