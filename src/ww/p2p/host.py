"""The libp2p host: TCP, Noise and Yamux on a trio thread, and nothing else.

A :class:`Node` is started by `ww run` before the cell (so that a bad ``--listen`` fails
before anything runs) and stopped after it, and by `ww call` for one call.  Its whole
configuration is explicit and closed:

- transport TCP only; security Noise only (py-libp2p's default list also offers TLS, SECIO
  and *plaintext*, which we never accept); stream muxer Yamux only (``/yamux/1.0.0``, what
  go-libp2p and kubo speak; mplex is not offered), py-libp2p's with the costs that showed in
  profiles taken out (:mod:`ww.p2p.yamux`);
- no mDNS, no bootstrap list, no relay, no UPnP/NAT mapping, no DHT: the node dials only the
  addresses it is given (``--join``, ``dial``) and listens only where it is told;
- with a dial policy (:mod:`ww.p2p.dial_policy`; `ww run` always has one), every outbound
  TCP connection is checked against it before it is made -- a peer's announced addresses,
  dialed for a cell that names the peer by id alone, included;
- besides libp2p's own identify and ping, one protocol: `/ww/0.1.0`
  (:data:`ww.core.addrs.PROTOCOL_ID`), served only while an ``accept`` callback is set;
- inbound connections bounded at the door: in their handshake, in all, per remote address,
  and their streams (:mod:`ww.p2p.admission`).

The other threads talk to the node through :meth:`Node.open` (a future of a socket),
:meth:`Node.serve` (a callback that receives one socket per inbound stream; see
:mod:`ww.p2p.splice` for how a stream becomes a socket) and :meth:`Node.serve_lane` (a
callback that receives the inbound connections proposing ww's native lane, sockets of
their own: see :mod:`ww.p2p.admission`).

One host per `ww run`: the embedded IPFS node adds Bitswap to the same host
(:meth:`Node.add_protocol`), so a peer joined with ``--join`` is an IPFS peer too, and the
node key is never used by two hosts at once.  :meth:`Node.start` may therefore be called by
whichever part needs the host first (fetching an ``/ipfs/`` program, or the supervisor); the
later calls wait for the same start and return.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import multiaddr
import trio

from ww.core.addrs import DEFAULT_LISTEN, PROTOCOL_ID, P2PError, peer_of
from ww.core.bridge import TrioPortal, run_trio
from ww.core.foreign import chained_reason
from ww.core.identity import Identity
from ww.p2p import splice

if TYPE_CHECKING:
    from ww.p2p import lane
    from ww.p2p.admission import LaneAccept
    from ww.p2p.dial_policy import DialPolicy

# Seconds to start: import libp2p (seconds on a loaded machine), bind every listen address.
# Only stops a hang: an address that cannot be bound fails at once, not by this bound.
START_TIMEOUT = 60.0
DIAL_TIMEOUT = 10.0  # seconds to connect and open a /ww/0.1.0 stream
JOIN_TIMEOUT = 10.0  # seconds for each --join at start-up
# seconds between the tries of a --join that made no connection (refused, unreachable): a
# peer started with this one (a script that starts both) may listen a moment later; a dial
# alone tries a refused address once (a cut handshake it tries again itself: not the join)
JOIN_RETRIES = (0.1, 0.2, 0.4)
STOP_TIMEOUT = 3.0  # seconds to close connections when stopping
MAX_STREAMS = 256  # concurrent /ww/0.1.0 streams, both directions together

# Called on the libp2p thread with (our end of a new inbound stream, the remote peer id).
Accept = Callable[[socket.socket, str], None]


def _key_pair(identity: Identity) -> Any:
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair

    private = Ed25519PrivateKey.from_bytes(identity.private_key.seed)
    return KeyPair(private, private.get_public_key())


def _port_free(addr: str) -> bool:
    """Can ``addr``'s TCP port be bound by us alone?

    py-libp2p listens with SO_REUSEPORT, so its own ``listen`` succeeds on a port another
    libp2p process (another `ww run`) already holds, and connections are then shared
    between the two at random.  A plain bind, without SO_REUSEPORT, tells the truth.
    """
    parts = addr.strip("/").split("/")
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp" or parts[3] == "0":
        return True
    import socket

    family = socket.AF_INET if parts[0] == "ip4" else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((parts[1], int(parts[3])))
        except OSError:
            return False
    return True


def _guarded_tcp(policy: DialPolicy | None) -> Any:
    """py-libp2p's TCP transport, refusing to connect where ``policy`` says no."""
    from libp2p.transport.exceptions import OpenConnectionError
    from libp2p.transport.tcp.tcp import TCP

    if policy is None:
        return TCP()
    guard: DialPolicy = policy  # (the classes below close over it, known not None)

    class GuardedTCP(TCP):  # type: ignore[misc]
        async def dial(self, maddr: Any) -> Any:
            if reason := guard.refusal(str(maddr)):
                raise OpenConnectionError(reason)  # nothing was sent
            return await super().dial(maddr)

        async def dial_with_source(self, maddr: Any, source: Any) -> Any:
            if reason := guard.refusal(str(maddr)):
                raise OpenConnectionError(reason)
            return await super().dial_with_source(maddr, source)

    return GuardedTCP()


def _new_host(identity: Identity, policy: DialPolicy | None = None,
              lane: Callable[[], LaneAccept | None] | None = None,
              noise: bool = False) -> Any:
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX

    from ww.p2p import admission
    from ww.p2p.yamux import Yamux  # py-libp2p's, mended where it was slow

    if not os.environ.get("LIBP2P_DEBUG"):
        # py-libp2p logs its own failures at ERROR; ours reach the user as one line instead.
        logging.getLogger("libp2p").addHandler(logging.NullHandler())
    keys = _key_pair(identity)
    host = new_host(
        key_pair=keys,
        sec_opt={NOISE: Noise(keys, noise_privkey=new_x25519().private_key)},
        muxer_opt={YAMUX: Yamux},
        transports=[_guarded_tcp(policy)],
        enable_mDNS=False,
        enable_upnp=False,
        bootstrap=None,
        negotiate_timeout=int(DIAL_TIMEOUT),
        disable_identify_address_discovery=True,
        connection_config=ConnectionConfig(  # py-libp2p's defaults, ours said out loud
            inbound_upgrade_timeout=admission.HANDSHAKE_TIMEOUT,
            inbound_stream_protocol_negotiation_timeout=admission.STREAM_NEGOTIATE_TIMEOUT),
        resource_manager=_resource_manager(),
    )
    _retry_cut_handshakes_only(host.get_network())
    _disable_auto_connector(host)
    _use_muxer_given(host)
    _bound_rsa_keys()
    _propose_with_the_header()
    admission.install(host, lane, noise)  # what remote peers' connections may hold
    if str(host.get_id()) != identity.peer_id:  # the node key and libp2p must agree
        raise P2PError(f"libp2p derived peer id {host.get_id()} for node {identity.peer_id}")
    return host


UPGRADE_RETRIES = 3  # more tries of an address whose host cut the handshake (py-libp2p's 3)


def _retry_cut_handshakes_only(swarm: Any) -> None:
    """A dial tries an address again only where a connection was made and its handshake
    failed (up to :data:`UPGRADE_RETRIES` more times, py-libp2p's backoff: 0.1, 0.2, 0.4 s):
    a busy host cuts handshakes past its bounds (``ww.p2p.admission``: 16 at once from one
    address), and a crowd dialing it at once (a local cluster, hosts behind one NAT joining)
    gets in on a later try.  py-libp2p's default tried every failed dial so, refusals and
    dead ends alike: a closed port cost 0.7 s and four connections, and whoever hands the
    host addresses (mDNS, the DHT, a cell) made each dead one cost that (64 made-up mDNS
    peers held an honest one up 45 s).  A refused or unreachable address, one the dial
    policy refuses, a handshake that timed out and a peer id that does not match fail at
    once, as in go-libp2p's swarm (which tries an address once)."""
    import trio
    from libp2p.network.config import RetryConfig
    from libp2p.network.exceptions import SwarmException
    from libp2p.transport.exceptions import MuxerUpgradeFailure, SecurityUpgradeFailure

    single = swarm._dial_addr_single_attempt
    swarm.retry_config = RetryConfig(max_retries=UPGRADE_RETRIES)  # (its backoff's numbers)

    async def dial_with_retry(addr: Any, peer_id: Any, source: Any = None) -> Any:
        attempt = 0
        while True:
            try:
                return await single(addr, peer_id, source)
            except SwarmException as e:
                cut = isinstance(e.__cause__, (SecurityUpgradeFailure, MuxerUpgradeFailure))
                if (not cut or attempt >= UPGRADE_RETRIES or _timed_out(e)
                        or "Peer ID mismatch" in f"{e} {e.__cause__}"):
                    raise
            await trio.sleep(swarm._calculate_backoff_delay(attempt))
            attempt += 1

    swarm._dial_with_retry = dial_with_retry


def _no_connection_made(e: BaseException) -> bool:
    """Whether a failed dial made no connection at any address (each refused or unreachable):
    the failure the swarm tries once and a ``--join`` again (:data:`JOIN_RETRIES`).  A cut
    handshake the swarm tried again already (:func:`_retry_cut_handshakes_only`); a join
    trying it again too made each try four (16 connects to a host cutting every handshake)."""
    from libp2p.exceptions import MultiError
    from libp2p.transport.exceptions import OpenConnectionError

    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:  # the swarm's errors, one an address
        seen.add(id(cause))
        if isinstance(cause, MultiError):
            return bool(cause.errors) and all(
                isinstance(error.__cause__, OpenConnectionError) for error in cause.errors)
        cause = cause.__cause__
    return False


def _timed_out(error: BaseException) -> bool:
    """Whether ``error`` or one of its causes says the peer did not answer in time (a
    multistream selection's timeout: py-libp2p words it so, and so does ours)."""
    seen = 0
    cause: BaseException | None = error
    while cause is not None and seen < 16:
        if isinstance(cause, trio.TooSlowError) or "timed out" in str(cause):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def _resource_manager() -> Any:
    """py-libp2p's default resource manager (``new_resource_manager()``'s), less its bounds
    per peer id, which a peer id (a new key) escapes and an honest peer ran into: new
    connections of one peer id held to 10 a second after a burst of 50, and 8 established
    at once, counted until the host has seen them end.  Each was refused by closing it
    just after its handshake: a cell dialing a host's 68 addresses in turn (each connection
    closed before the next) had its last ones cut whenever they came quicker than that.
    :mod:`ww.p2p.admission` bounds inbound connections per remote address and in all."""
    from libp2p.rcmgr.connection_limits import new_connection_limits_with_defaults
    from libp2p.rcmgr.manager import ResourceManager

    limits = new_connection_limits_with_defaults()
    limits.max_established_per_peer = None
    return ResourceManager(connection_limits=limits, enable_memory_pooling=True,
                           enable_rate_limiting=False)


def _bound_rsa_keys() -> None:
    """py-libp2p 0.8.1 reads any RSA public key of up to 4096 bits whatever its public
    exponent, and a peer's Noise handshake makes the host check a signature with it: an
    exponent of 4000 bits costs 17 ms a handshake (0.15 ms with 65537), as often as a
    stranger likes.  And its reader (pycryptodome's ``import_key``, then `cryptography`'s
    loader) takes a private key too, testing its primes, and a Diffie-Hellman key, whose
    parameters OpenSSL checks, before any bound: 1.8 s and 3.1 s of the host's CPU.
    Where py-libp2p reads a public key (its Noise, identify, and the signed peer record an
    identify push carries, which calls ``RSAPublicKey.from_bytes`` itself), an RSA key is
    read by :func:`ww.p2p.lane.rsa_public_key` (a public key only, within go-libp2p's and
    Go's bounds) instead.  Process-wide, and idempotent."""
    from libp2p.crypto import serialization
    from libp2p.crypto.keys import KeyType
    from libp2p.crypto.rsa import RSAPublicKey

    from ww.p2p.lane import rsa_public_key

    serialization.key_type_to_public_key_deserializer[KeyType.RSA.value] = rsa_public_key
    RSAPublicKey.from_bytes = staticmethod(rsa_public_key)  # type: ignore[method-assign]


def _propose_with_the_header() -> None:
    """py-libp2p 0.8.1's multistream-select client writes the header, waits for the
    listener's, and only then proposes: a round trip more than go-libp2p's and js-libp2p's,
    which write the header and their one proposal at once.  And a ww host whose cell exports
    takes a connection whose first write is the header and ``/noise`` to its native
    connection at once, but waits ``PROPOSAL_WAIT`` (0.5 s) for the rest of a first write
    that is the header alone (js-libp2p's two sends may arrive apart): so every py-libp2p
    dial of one ww host to another that exports cost 0.5 s more (measured: the admission
    tests' 148 connections 66 s, from 20 s).  Here a selection of one protocol (the
    security protocol, the muxer, a stream's protocol: ww proposes one each time) writes
    the header and the proposal at once and reads the two answers, as go-libp2p does; a
    selection among several is py-libp2p's.  Process-wide, and idempotent."""
    from libp2p.protocol_muxer import multiselect_client as ms
    from libp2p.utils import encode_delim

    original = getattr(ms.MultiselectClient.select_one_of, "_ww_original",
                       ms.MultiselectClient.select_one_of)

    async def select_one_of(self: Any, protocols: Any, communicator: Any,
                            negotiate_timeout: int = ms.DEFAULT_NEGOTIATE_TIMEOUT) -> Any:
        if len(protocols) != 1 or protocols[0] is None:
            return await original(self, protocols, communicator, negotiate_timeout)
        (protocol,) = protocols
        # (py-libp2p's security and muxer selections pass none: its default is 30 s, three
        # times the whole dial's bound, so a peer answering the header only held a dial
        # that long, and it was tried again 3 times: 2 minutes; found by attack)
        with trio.move_on_after(min(negotiate_timeout, DIAL_TIMEOUT)):
            try:
                await communicator.read_writer.write(
                    encode_delim(ms.MULTISELECT_PROTOCOL_ID.encode())
                    + encode_delim(str(protocol).encode()))
                header = await communicator.read()
                answer = await communicator.read()
            except Exception as e:  # (the communicator's errors, the stream's)
                raise ms.MultiselectClientError(f"multistream: {e}") from e
            if header != ms.MULTISELECT_PROTOCOL_ID:
                raise ms.MultiselectClientError(f"multistream: header {header!r}")
            if answer != protocol:
                raise ms.MultiselectClientError(
                    f"protocols not supported: tried [{protocol!r}], response={answer!r}")
            return protocol
        raise ms.MultiselectClientError(
            f"response timed out after {min(negotiate_timeout, DIAL_TIMEOUT):g}s, protocols "
            f"tried: [{protocol}]")

    select_one_of._ww_original = original  # type: ignore[attr-defined]
    ms.MultiselectClient.select_one_of = select_one_of  # type: ignore[method-assign]


def _disable_auto_connector(host: Any) -> None:
    """Stop py-libp2p's auto-connector from ever dialing: we dial only what we are told to.

    py-libp2p 0.8.1 starts an ``AutoConnector`` on every swarm: it dials every peer of the
    peerstore that has an address -- addresses a remote peer merely announced through
    identify included -- whenever there are fewer connections than its target (every 30 s,
    and after each disconnect): any peer could make the host dial addresses it announced.
    py-libp2p has no switch for it: its target is the midpoint of the low and high watermarks of
    ``ConnectionConfig``, so a zero low watermark still dials up to half the high one, and a
    zero high watermark makes the connection pruner close every connection.  So the
    connector's two entry points (``start``, which runs its periodic task, and
    ``maybe_connect``, which the swarm calls on a disconnect) are replaced here, on this
    host's own instance, with coroutines that do nothing
    (``tests/ipfs/test_bitswap.py::test_a_peer_that_hangs_up_is_not_redialled`` checks it).
    Revisit when upgrading libp2p (pinned in pyproject.toml).
    """
    connector = host.get_network().auto_connector

    async def _never() -> None:
        return None

    connector.start = _never
    connector.maybe_connect = _never


def _use_muxer_given(host: Any) -> None:
    """Make the host build its connections with the Yamux class it was given.

    py-libp2p 0.8.1's ``MuxerMultistream.new_conn`` constructs its own ``Yamux`` whenever
    ``/yamux/1.0.0`` is negotiated, whatever class ``muxer_opt`` names for it, so
    :class:`ww.p2p.yamux.Yamux` would never run.  This host's own instance gets a
    ``new_conn`` that negotiates as py-libp2p's does and then uses the class given
    (``tests/p2p/test_yamux.py`` checks that both ends' streams are ours).  Revisit when
    upgrading libp2p (pinned in pyproject.toml).
    """
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX

    muxers = host.get_network().upgrader.muxer_multistream

    async def new_conn(conn: Any, peer_id: Any) -> Any:
        transport = await muxers.select_transport(conn)  # Yamux only is offered
        return muxers._annotate_connection(transport(conn, peer_id), conn, YAMUX)

    muxers.new_conn = new_conn


def _report_identified(host: Any, callbacks: list[Callable[[Any], None]]) -> None:
    """Call each of ``callbacks`` with a peer's id (on the libp2p thread) whenever identify, or
    an identify push, has told the host's peerstore which protocols the peer serves.

    go-libp2p emits ``EvtPeerIdentificationCompleted`` and ``EvtPeerProtocolsUpdated``, on
    which go-libp2p-kad-dht decides whether a peer may join its routing table; py-libp2p
    0.8.1 has no such event.  Both identify and identify push end in
    ``update_peerstore_from_identify``, which sets a peer's protocols with the peerstore's
    ``add_protocols`` (nothing else in py-libp2p calls it); so this host's own peerstore
    instance gets an ``add_protocols`` that does the same, then tells ``callbacks``
    (``tests/p2p/test_dht_tables.py`` checks that a DHT server hears of its peers this way).
    Revisit when upgrading libp2p (pinned in pyproject.toml).
    """
    store = host.get_peerstore()
    add = store.add_protocols

    def add_protocols(peer_id: Any, protocols: Any) -> None:
        add(peer_id, protocols)
        for callback in list(callbacks):
            callback(peer_id)

    store.add_protocols = add_protocols


class Node:
    """A libp2p host on its own thread.  Thread-safe: every method may be called anywhere."""

    def __init__(self, identity: Identity, listen: list[str] | None = None,
                 join: list[str] | None = None, *, warn: Callable[[str], None] | None = None,
                 handlers: dict[str, Callable[[Any], Any]] | None = None,
                 serve_ww: bool = True, announce: bool = True,
                 dial_policy: DialPolicy | None = None, inbound_calls: bool = False) -> None:
        """``listen=None`` means :data:`DEFAULT_LISTEN` (falling back to a free port if it is
        taken); an empty list listens nowhere (a node that only dials, as `ww call`).

        ``handlers`` maps further protocol ids to async stream handlers (run on the libp2p
        thread; the embedded IPFS node serves Bitswap this way); ``serve_ww=False`` leaves
        `/ww/0.1.0` out, ``announce=False`` keeps quiet about a port 0 listen.
        ``dial_policy``: where the host may connect (None: wherever it is told, as for
        `ww call`, whose one address the operator typed).  While the cell exports
        something, inbound connections proposing ``/noise`` (libp2p peers that are not ww)
        go to the lane as ww's own do (:meth:`serve_lane`), their other protocols handed
        back to py-libp2p (:meth:`rest`); ``inbound_calls``: they carry `/ww/0.1.0` and
        ping only (`ww run --inbound calls`, docs/p2p.md)."""
        self.identity = identity
        self.inbound_calls = inbound_calls
        self.dial_policy = dial_policy
        self.peer_id = identity.peer_id
        self._default = listen is None
        self._listen = [DEFAULT_LISTEN] if listen is None else list(listen)
        self._join = list(join or [])
        self._warn = warn or (lambda message: print(f"ww: warning: {message}", file=sys.stderr))
        self._accept: Accept | None = None
        self._lane: LaneAccept | None = None
        self._streams = 0
        self._bridges: Any = None  # streams bridged to py-libp2p (ww.p2p.hybrid.Bridges)
        self._budget: splice.Budget | None = None
        self.addrs: list[str] = []  # where we really listen, each ending in /p2p/<peer id>
        self._thread: threading.Thread | None = None
        # The libp2p thread's trio run, for every other thread (ww.core.bridge).
        self._portal = TrioPortal(lambda finished: P2PError(
            "p2p: the libp2p host has stopped" if finished else
            "p2p: the libp2p host is not running"))
        self._stop: trio.Event | None = None
        self._host: Any = None
        self._session_end: list[Callable[[], None]] = []
        self._handlers = dict(handlers or {})
        self._setups: list[Callable[[], Any]] = []
        self._identified: list[Callable[[Any], None]] = []
        self._serve_ww = serve_ww
        self._announce = announce
        self._ready: concurrent.futures.Future[None] | None = None
        self._start_lock = threading.Lock()
        self._joined = threading.Event()  # every --join attempt has ended

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Listen, then join in the background; raises :class:`P2PError` if it cannot listen.

        Idempotent: a second call waits for the first start and shares its outcome."""
        with self._start_lock:
            ready = self._ready
            if ready is None:
                ready = self._ready = concurrent.futures.Future()
                self._thread = threading.Thread(target=self._run, args=(ready,), name="ww-p2p",
                                                daemon=True)
                self._thread.start()
        try:
            ready.result(timeout=START_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise P2PError("p2p: the libp2p host did not start in time") from None

    @property
    def running(self) -> bool:
        """Started, and not stopped since."""
        return self._portal.open

    def wait_joined(self, timeout: float = JOIN_TIMEOUT + 1) -> None:
        """Wait (at most ``timeout`` seconds) until every ``--join`` has connected or failed."""
        self._joined.wait(timeout)

    def add_protocol(self, protocol: str, handler: Callable[[Any], Any],
                     setup: Callable[[], Any] | None = None) -> None:
        """Serve ``protocol`` with ``handler`` too; ``await setup()`` first on the libp2p thread.

        Before :meth:`start`, both take effect when the host starts (``setup`` after it
        listens, before any ``--join`` dials); on a running host, at once (this call waits).
        """
        with self._start_lock:
            self._handlers[protocol] = handler
            ready = self._ready
            if ready is None:
                if setup is not None:
                    self._setups.append(setup)
                return
        ready.result(START_TIMEOUT)  # starting on another thread: wait for it

        async def add() -> None:
            if setup is not None:
                await setup()
            self._host.set_stream_handler(protocol, handler)

        self.submit(add).result(START_TIMEOUT)

    def when_started(self, setup: Callable[[], Any]) -> None:
        """``await setup()`` on the libp2p thread once the host listens (before any
        ``--join`` dials); on a running host, at once (this call waits)."""
        with self._start_lock:
            ready = self._ready
            if ready is None:
                self._setups.append(setup)
                return
        ready.result(START_TIMEOUT)
        self.submit(setup).result(START_TIMEOUT)

    def when_identified(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(peer_id)`` (a py-libp2p ``ID``; on the libp2p thread, so it must
        not block) each time identify tells the host which protocols a peer serves (they are
        then in the peerstore): once a connection's identify ends, and on an identify push."""
        self._identified.append(callback)

    @property
    def listen_addrs(self) -> list[str]:
        """The addresses the host was told to listen on (``--listen``), as given: known
        before it starts, where :attr:`addrs` is filled only once it listens."""
        return list(self._listen)

    @property
    def protocols(self) -> list[str]:
        """The protocols this host serves, libp2p's identify and ping included."""
        return (([PROTOCOL_ID] if self._serve_ww else []) + list(self._handlers)
                + ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"])

    def stop(self) -> None:
        """Close every connection and end the thread (bounded by :data:`STOP_TIMEOUT`)."""
        self._accept = None
        self._lane = None
        stop = self._stop
        if stop is not None:
            self._portal.call_soon(stop.set)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)

    def serve(self, accept: Accept | None) -> None:
        """Hand every new inbound `/ww/0.1.0` stream to ``accept``; ``None`` refuses them.

        ``accept`` runs on the libp2p thread and must only hand the socket over (for example
        with :func:`ww.core.bridge.start_in_loop`); if it raises, the stream is reset.
        """
        self._accept = accept

    def serve_lane(self, accept: LaneAccept | None) -> None:
        """Hand every new inbound connection whose first bytes propose the lane
        (:data:`ww.p2p.admission.LANE_PROPOSAL`, and ``/noise``: :meth:`rest`)
        to ``accept``; ``None``: none (py-libp2p
        takes every connection, and answers ``na`` to the lane: nothing is peeked at).

        ``accept(sock, ip, ticket)`` runs on the libp2p thread with a socket of the
        connection of its own (non-blocking; the proposal still unread in it), the remote
        address as admission counts it, and a :class:`ww.p2p.admission.LaneTicket`; it must
        only hand them over (to an asyncio loop).  If it raises, the connection is closed.
        The connection keeps its admission place until the lane calls ``ticket.ended()``.
        A node made with ``serve_ww=False`` never diverts a connection."""
        self._lane = accept

    def rest(self) -> lane.Rest | None:
        """For :meth:`ww.p2p.protocol.Exports.lane_acceptor`: what serves the protocols other
        than `/ww/0.1.0` and ping of a served connection a libp2p peer that is not ww dialed
        (``/noise``): py-libp2p, through :mod:`ww.p2p.hybrid`; None with ``inbound_calls``
        (they are answered ``na``)."""
        if self.inbound_calls:
            return None
        from ww.p2p import hybrid

        if self._bridges is None:
            self._bridges = hybrid.Bridges()
        bridges = self._bridges

        def rest(conn: lane.LaneConn, ip: str, ticket: Any) -> None:
            hybrid.Rest(conn, ip, ticket, bridges,
                        lambda muxed: self._portal.start_soon(self._add_bridged, muxed, ip))

        return rest

    async def _add_bridged(self, muxed: Any, ip: str) -> None:
        """(the libp2p thread) A served native connection joins the swarm (its streams
        counted by admission as ``ip``'s) until it ends."""
        network = self._host.get_network()
        admission = network.admission
        admission.ip_of[muxed] = ip
        try:
            conn = await network.add_conn(muxed, direction="inbound")
            await conn.event_closed.wait()
        except Exception:  # py-libp2p's own limits
            await muxed.close()
        finally:
            admission.ip_of.pop(muxed, None)

    def when_session_ends(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` from :meth:`end_session` (on the thread that calls that)."""
        self._session_end.append(callback)

    def end_session(self) -> None:
        """The cell hung up fd 3 (or exited): refuse inbound streams and lane connections,
        run the callbacks."""
        self._accept = None
        self._lane = None
        callbacks, self._session_end = self._session_end, []
        for callback in callbacks:
            callback()

    def open(self, addr: str) -> concurrent.futures.Future[socket.socket]:
        """Connect to ``addr`` (checked by :func:`ww.core.addrs.check_dial_addr`) and open a
        `/ww/0.1.0` stream; the future gives our end of it as a socket, or a P2PError."""
        future: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()
        if not self._portal.open:
            future.set_exception(P2PError("p2p: the libp2p host is not running"))
        elif not self._portal.start_soon(self._open, addr, future):
            future.set_exception(P2PError("p2p: the libp2p host has stopped"))
        return future

    @property
    def host(self) -> Any:
        """py-libp2p's host; use it only on the libp2p thread (from :meth:`submit`)."""
        return self._host

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``await fn(*args)`` on the libp2p thread; the future gives its result."""
        return self._portal.submit(fn, *args)

    # -- the libp2p thread ----------------------------------------------------------------

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            run_trio(self._main, ready)
        except BaseException as e:  # noqa: BLE001 - reported to whoever waits for start()
            if not ready.done():
                ours = _find(e, P2PError)
                ready.set_exception(ours or P2PError(f"p2p: the libp2p host failed: "
                                                     f"{chained_reason(_innermost(e))}"))
        finally:
            self._joined.set()

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        host = _new_host(self.identity, self.dial_policy,
                         (lambda: self._lane) if self._serve_ww else None, True)
        _report_identified(host, self._identified)
        if self._serve_ww:
            host.set_stream_handler(PROTOCOL_ID, self._inbound)
        for protocol, handler in self._handlers.items():
            host.set_stream_handler(protocol, handler)
        self._stop = trio.Event()
        self._budget = splice.Budget()  # what remote peers' /ww/0.1.0 messages may hold
        async with host.run([]):
            network = host.get_network()
            for addr in self._listen:
                if not _port_free(addr) or not await network.listen(multiaddr.Multiaddr(addr)):
                    if not self._default:
                        raise P2PError(f"p2p: cannot listen on {addr} (in use, or not an "
                                       "address of this machine)")
                    fallback = addr.rsplit("/", 1)[0] + "/0"
                    if not await network.listen(multiaddr.Multiaddr(fallback)):
                        raise P2PError(f"p2p: cannot listen on {addr} or {fallback}")
                    self._warn(f"p2p: {addr} is in use; listening on a free port instead "
                               "(choose one with --listen)")
            self.addrs = [str(a) for a in host.get_addrs()]
            if self._announce and any(addr.endswith("/tcp/0") for addr in self._listen):
                for addr in self.addrs:  # the operator asked for a free port: say which
                    print(f"ww: p2p: listening on {addr}", file=sys.stderr, flush=True)
            self._host = host
            async with trio.open_nursery() as nursery:
                self._portal.bind(nursery)
                for setup in self._setups:  # e.g. Bitswap's engine, before any peer joins
                    await setup()
                nursery.start_soon(self._join_all)
                ready.set_result(None)
                await self._stop.wait()
                _cut_sends(host)  # every connection closes below: no frame is waited for
                nursery.cancel_scope.cancel()
            self._portal.unbind()
            with trio.move_on_after(STOP_TIMEOUT) as scope:
                scope.shield = True
                await host.close()

    async def dial(self, info: Any) -> None:
        """Connect to ``info`` (a py-libp2p PeerInfo) at its addresses, on the libp2p thread.

        The addresses we are told to dial are the ones tried.  py-libp2p on its own would
        dial only the first TCP address its peerstore holds for the peer (an earlier, dead
        one included), and refuse for 60 s every dial of a peer whose addresses all failed
        once (its "negative cache"): a second, good address of a peer would fail too."""
        network = self._host.get_network()
        if hasattr(network, "unblock_peer"):
            network.unblock_peer(info.peer_id)
        listed = network.get_connections(info.peer_id)
        if info.addrs and not open_connections(network, info.peer_id):
            if self.dial_policy is not None:  # say so now, rather than fail in the transport
                refusals = [r for a in info.addrs if (r := self.dial_policy.refusal(str(a)))]
                if len(refusals) == len(info.addrs):
                    from ww.p2p.dial_policy import AddressNotAllowed

                    raise AddressNotAllowed(f"p2p: {refusals[0]}")
            self._host.get_peerstore().clear_addrs(info.peer_id)
            if listed:  # only closing ones, which py-libp2p's connect takes for a connection
                self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 120)
                await network.dial_peer(info.peer_id)  # skips closed ones: dials anew
                return
        await self._host.connect(info)

    async def _join_all(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for addr in self._join:
                    nursery.start_soon(self._join_one, addr)
        finally:
            self._joined.set()

    async def _join_one(self, addr: str) -> None:
        from libp2p.peer.peerinfo import info_from_p2p_addr

        from ww.p2p.dial_policy import AddressNotAllowed

        try:
            with trio.fail_after(JOIN_TIMEOUT):
                for delay in (*JOIN_RETRIES, None):
                    try:
                        await self.dial(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                        return
                    except AddressNotAllowed:
                        raise
                    except Exception as e:
                        if delay is None or not _no_connection_made(e):
                            raise
                    await trio.sleep(delay)
        except trio.TooSlowError:  # its reason would be the cancelled dial's (a nursery's
            # "Exceptions from Trio nursery (1 sub-exception)"), not the bound
            self._warn(f"p2p: --join {addr}: cannot connect (no answer within "
                       f"{JOIN_TIMEOUT:g} s)")
        except Exception as e:
            self._warn(f"p2p: --join {addr}: cannot connect ({chained_reason(e)})")

    async def _open(self, addr: str, future: concurrent.futures.Future[socket.socket]) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

        peer = peer_of(addr)
        if peer == self.peer_id:
            _fail(future, P2PError(f"p2p: {addr} is this host itself"))
            return
        if self._streams >= MAX_STREAMS:
            _fail(future, P2PError(f"p2p: too many open streams ({MAX_STREAMS})"))
            return
        connected = False
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                if addr.startswith("/p2p/"):
                    peer_id = ID.from_base58(peer)
                    peerstore = self._host.get_peerstore()
                    known = peerstore.addrs(peer_id) if peer_id in peerstore.peer_ids() else []
                    if not self._host.get_network().get_connections(peer_id) and not known:
                        raise P2PError(f"p2p: not connected to {peer} and no address known "
                                       "for it (give its full address, or --join it)")
                    await self.dial(PeerInfo(peer_id, known))
                else:
                    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
                    peer_id = info.peer_id
                    await self.dial(info)
                connected = True
                stream = await self._host.new_stream(peer_id, [PROTOCOL_ID])
        except P2PError as e:
            _fail(future, e)
            return
        except trio.TooSlowError:
            _fail(future, P2PError(f"p2p: {addr}: no answer within {DIAL_TIMEOUT:g} s"))
            return
        except Exception as e:
            if connected:
                _fail(future, P2PError(f"p2p: {peer} serves nothing on {PROTOCOL_ID} (its cell "
                                       "exports nothing, or it runs without --with-p2p)"))
            else:
                _fail(future, P2PError(f"p2p: cannot reach {addr} ({chained_reason(e)})"))
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if not future.set_running_or_notify_cancel():
            theirs.close()
            ours.close()
            await stream.reset()
            return
        future.set_result(theirs)
        self._streams += 1
        try:
            await splice.splice(stream, ours, self._budget)
        finally:
            self._streams -= 1

    async def _inbound(self, stream: Any) -> None:
        accept = self._accept
        if accept is None or self._streams >= MAX_STREAMS:
            await stream.reset()  # nothing exported (yet, or any more): refuse
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            accept(theirs, str(stream.muxed_conn.peer_id))
        except Exception:
            theirs.close()
            ours.close()
            await stream.reset()
            return
        self._streams += 1
        try:
            await splice.splice(stream, ours, self._budget)
        finally:
            self._streams -= 1


def _find(e: BaseException, kind: type[P2PError]) -> P2PError | None:
    """``e`` itself or the first ``kind`` inside it (trio nurseries group exceptions)."""
    if isinstance(e, kind):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None


def _innermost(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def open_connections(network: Any, peer_id: Any) -> list[Any]:
    """The host's connections to ``peer_id`` that are not closed.  A connection closing (its
    peer hung up, under load) stays listed for a while: py-libp2p's ``new_stream`` then
    fails on it ("no valid connections") and its ``connect`` dials nothing."""
    return [c for c in network.get_connections(peer_id) if not c.is_closed]


def _fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    if future.set_running_or_notify_cancel():  # False: the caller gave up and cancelled it
        future.set_exception(error)


def _cut_sends(host: Any) -> None:
    """The host stops: each connection's frame under way is cut and later ones are bounded
    (:meth:`ww.p2p.yamux.Yamux.cut_sends`), so that stopping never waits on a peer that
    reads nothing (a frame's send is otherwise shielded, up to
    :data:`ww.p2p.yamux.CONNECTION_WRITE_TIMEOUT`, and the GO_AWAYs are written in turn)."""
    from ww.p2p.yamux import Yamux

    for conns in list(host.get_network().connections.values()):
        for conn in list(conns):
            muxed = getattr(conn, "muxed_conn", None)
            if isinstance(muxed, Yamux):
                muxed.cut_sends()
