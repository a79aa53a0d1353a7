"""The native lane: `/ww/0.1.0` over the C libp2p connection, on the asyncio loop.

:mod:`ww.p2p._native` is a libp2p connection in C (multistream-select, Noise XX with
libp2p's handshake payload, Yamux) whose streams feed pycapnp's asyncio protocol from C.
This module is its Python side, on the loop that runs pycapnp (fd 3's, or `ww call`'s):

- :class:`LaneConn` and :class:`LaneStream`: the connection and its streams, with
  multistream-select on each stream in Python (:class:`Negotiation`) until a protocol takes
  it; the handshake is the C state machine stepped by the loop under a deadline;
- :func:`dial`: a full address ``/ip4|ip6/A/tcp/P/p2p/ID`` of an Ed25519 peer id, dialed
  without py-libp2p.  It proposes ``/ww/lane/0.1.0`` (:data:`LANE`) as the security
  protocol; a peer that answers ``na`` (py-libp2p, kubo, an older ww, a ww host exporting
  nothing) gets ``/noise`` next and a standard libp2p connection, on which `/ww/0.1.0`
  works the same.  Anything else raises :class:`LaneUnavailable`: the caller dials through
  py-libp2p (:meth:`ww.p2p.host.Node.open`) instead;
- :meth:`LaneConn.open_ww`: a `/ww/0.1.0` stream as a ``capnp.AsyncIoStream``;
- :func:`serve`: an inbound lane connection handed over by the host's admission (which
  counted it and peeked at its lane proposal), served until it closes.

Every connection, dialed or served, bounds what the peer may open on it: at most
:data:`MAX_NEGOTIATING` streams in negotiation, each for at most
:data:`STREAM_NEGOTIATE_TIMEOUT` seconds and :data:`NEGOTIATION_LIMIT` bytes; at most
:data:`MAX_STREAMS` inbound streams open; ping (:data:`PING`) on at most
:data:`MAX_PING_STREAMS` streams; `/ww/0.1.0` only where a handler is given (the served
ones: :class:`ww.p2p.protocol.Exports` bounds them per peer and in all); ``na`` to anything
else, unless the connection's ``bridge`` takes it (a served ``/noise`` connection's other
protocols go to py-libp2p: :mod:`ww.p2p.hybrid`, which raises ``max_inbound`` to
admission's bound for streams, whose bounds then hold them).  The constants that mirror
:mod:`ww.p2p.admission`'s are repeated here because that
module loads py-libp2p, which `ww call` on the lane never imports
(tests/p2p/test_lane.py checks they agree).

This module imports neither py-libp2p nor trio.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ww.core.addrs import LANE, PROTOCOL_ID, P2PError
from ww.p2p import _native

if TYPE_CHECKING:
    from ww.p2p.dial_policy import DialPolicy

__all__ = [
    "LANE",
    "LaneConn",
    "LaneStream",
    "LaneUnavailable",
    "bounded_stream",
    "capnp_stream",
    "dial",
    "serve",
]

PING = "/ipfs/ping/1.0.0"
PING_SIZE = 32  # bytes of one libp2p ping, echoed
MAX_PING_STREAMS = 2  # ping streams open at once on one connection (admission's ping bound)
MAX_PINGS = 1024  # pings one ping stream answers; then it is reset (a peer that never reads
# the echoes holds at most this many of them, 32 KiB, in the stream's send queue)
NEGOTIATION_LIMIT = 1024  # bytes of multistream-select one stream may take
MAX_PROPOSALS = 8  # protocols a peer may propose on one stream (answered na)
HOLD_LIMIT = 1 << 20  # bytes after the negotiation held until the protocol takes the stream
DIAL_TIMEOUT = 10.0  # seconds to connect, handshake and open a stream (ww.p2p.host's)
# As ww.p2p.admission's (checked by the tests):
HANDSHAKE_TIMEOUT = 10.0  # seconds an inbound connection's handshake may take
MAX_NEGOTIATING = 16  # inbound streams of one connection not past negotiation
STREAM_NEGOTIATE_TIMEOUT = 10.0  # seconds an inbound stream may take to name its protocol
# Inbound streams open at once on one lane connection.  What it carries: at most
# ww.p2p.protocol.MAX_INBOUND_PER_PEER (8) `/ww/0.1.0` streams served (more are closed at
# once), 2 pings and MAX_NEGOTIATING in negotiation: 26.  64 leaves room for streams being
# closed, a quarter of admission's MAX_STREAMS_PER_CONN (256), which backs up every
# protocol of a py-libp2p connection (Bitswap, the DHT, identify ...).
MAX_STREAMS = 64
TICKET_REFRESH = 1.0  # seconds between counts of a served connection's open streams


class LaneUnavailable(P2PError):
    """The lane cannot take this address (not a full TCP address, or a peer id that is not
    Ed25519): dial it through py-libp2p instead."""


def ms_line(proto: str) -> bytes:
    """One multistream-select message: varint length, the text, a newline."""
    line = proto.encode() + b"\n"
    assert len(line) < 128
    return bytes([len(line)]) + line


def serves_nothing(peer: str) -> str:
    """The refusal of a peer whose `/ww/0.1.0` answers nothing (as the py-libp2p path says)."""
    return (
        f"p2p: {peer} serves nothing on {PROTOCOL_ID} (its cell exports nothing, or it "
        "runs without --with-p2p)"
    )


class Negotiation:
    """multistream-select on a stream, before a protocol takes it.  The stream class supplies
    ``write``, ``reset``, ``_done`` and ``conn`` (whose ``handlers`` map a protocol to a
    callable taking the stream); :meth:`_handler` may be overridden to refuse one."""

    conn: Any
    write: Any
    reset: Any
    _done: Any

    def _start(self, loop: asyncio.AbstractEventLoop, outbound: bool) -> None:
        self.outbound = outbound
        self.proto: str | None = None
        self.negotiated: asyncio.Future[str] = loop.create_future()
        self._neg = bytearray()
        self._neg_state = 0  # lines of multistream read
        self.on_data: Any = self._negotiate

    def _unattached_lost(self) -> None:
        """Gone before a protocol took it: whoever awaits the negotiation is told."""
        if not self.negotiated.done():
            self.negotiated.set_exception(ConnectionError("stream reset"))
            self.negotiated.exception()  # retrieved: whoever awaits it still gets it

    def _handler(self, proto: str) -> Callable[[Any], None] | None:
        handler: Callable[[Any], None] | None = self.conn.handlers.get(proto)
        return handler

    def _line(self) -> str | None:
        """The next whole multistream-select message, or None for more bytes first."""
        buf = self._neg
        if not buf:
            return None
        n = buf[0]
        if n >= 0x80 or n == 0:  # every line ww speaks is shorter than 128 bytes
            raise ValueError("multistream: bad length")
        if len(buf) < 1 + n:
            return None
        line = bytes(buf[1 : 1 + n])
        del buf[: 1 + n]
        if not line.endswith(b"\n"):
            raise ValueError("multistream: no newline")
        return line[:-1].decode()

    def _negotiate(self, data: bytes) -> None:
        self._neg += data
        if len(self._neg) > NEGOTIATION_LIMIT:
            self.reset()
            return
        try:
            while self.on_data == self._negotiate and (line := self._line()) is not None:
                self._neg_state += 1
                if self.outbound:
                    expected = "/multistream/1.0.0" if self._neg_state == 1 else self.proto
                    if line != expected:
                        raise ValueError(f"refused: {line}")
                    if self._neg_state == 2:
                        self._done()
                elif self._neg_state == 1:
                    if line != "/multistream/1.0.0":
                        raise ValueError("multistream: bad header")
                    self.write(ms_line(line))
                elif (handler := self._handler(line)) is not None:
                    self.proto = line
                    self.write(ms_line(line))
                    self._done()
                    handler(self)
                elif (rest := getattr(self.conn, "bridge", None)) is not None:
                    self.proto = line  # not answered: py-libp2p negotiates it again
                    self._done()
                    rest(self, line)
                elif self._neg_state > MAX_PROPOSALS:
                    raise ValueError("multistream: too many proposals")
                else:
                    self.write(ms_line("na"))
        except ValueError as e:  # UnicodeDecodeError included
            if not self.negotiated.done():
                self.negotiated.set_exception(ConnectionError(str(e)))
                self.negotiated.exception()
            self.reset()


def _discard(_data: bytes) -> None:
    """Bytes for a stream already reset (the C still hands them over): dropped."""


class LaneStream(_native.Stream, Negotiation):  # type: ignore[misc]
    """One Yamux stream.  The transport is C (``write`` queues; one flush per loop turn);
    multistream-select is Python until a protocol is attached (:meth:`connect`), and from
    then on the C feeds the protocol."""

    conn: LaneConn

    def __init__(self, conn: LaneConn, sid: int, outbound: bool) -> None:
        super().__init__(conn, sid)
        self._start(conn.loop, outbound)  # type: ignore[arg-type]
        self._early_eof = False
        self._gone = False  # lost (reset, or its connection gone) before a protocol took it
        self._deadline: asyncio.TimerHandle | None = None  # an inbound one's negotiation

    def _handler(self, proto: str) -> Callable[[Any], None] | None:
        return self.conn.handler_for(proto)

    def _settled(self) -> None:
        """Out of negotiation (a protocol took it, or it is gone): no longer counted."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self.conn.negotiating -= 1

    def _expire(self) -> None:
        self._deadline = None
        self.conn.negotiating -= 1
        self.reset()

    def _done(self) -> None:
        self.on_data = self._hold
        self._settled()
        if not self.negotiated.done():
            self.negotiated.set_result(self.proto or "")

    def _hold(self, data: bytes) -> None:
        """Bytes after the negotiation, kept for the protocol (at most :data:`HOLD_LIMIT`)."""
        self._neg += data
        if len(self._neg) > HOLD_LIMIT:
            self.reset()

    def _unattached_lost(self) -> None:
        self._gone = True
        self.on_data = _discard
        self._settled()
        Negotiation._unattached_lost(self)

    def connect(self, protocol: Any) -> None:
        """Hand the stream to ``protocol`` (asyncio's BufferedProtocol calls).  A stream lost
        after its negotiation ended and before this (its peer's answer and reset in one read)
        is handed over and lost at once: the protocol is told, as it would have been."""
        held = bytes(self._neg)
        self._neg.clear()
        self.on_data = _discard
        self.attach(protocol, held, self._early_eof)
        if self._gone:
            protocol.connection_lost(ConnectionResetError("stream reset"))

    def remote_closed(self, reset: bool) -> None:
        """The peer closed or reset the stream before a protocol took it."""
        if reset:
            self._lost()
        else:
            self._early_eof = True


class _Ping(asyncio.BufferedProtocol):
    """libp2p ping: each 32 bytes echoed, at most :data:`MAX_PINGS` on a stream."""

    def __init__(self, stream: LaneStream) -> None:
        self.stream = stream
        self.buf = bytearray(PING_SIZE)
        self.got = 0
        self.pings = 0
        self.done = False

    def connection_made(self, _transport: Any) -> None: ...

    def get_buffer(self, _hint: int) -> memoryview:
        return memoryview(self.buf)[self.got :]

    def buffer_updated(self, n: int) -> None:
        self.got += n
        if self.got == PING_SIZE:
            self.got = 0
            self.pings += 1
            self.stream.write(bytes(self.buf))
            if self.pings >= MAX_PINGS:
                self.stream.reset()

    def eof_received(self) -> None:
        self.stream.close()

    def connection_lost(self, _exc: Any) -> None:
        if not self.done:
            self.done = True
            self.stream.conn.pings -= 1


def fail_conn(conn: Any, writing: bool) -> None:
    """A connection (a :class:`LaneConn`, or the benchmark's ctypes one) is done: off the
    loop, every stream told, ``conn.closed`` resolved."""
    if conn.closed.done():
        return
    conn.loop.remove_reader(conn.sock.fileno())
    if writing:
        conn.loop.remove_writer(conn.sock.fileno())
    for stream in list(conn.streams.values()):
        stream._lost()
    conn.closed.set_result(None)


class LaneConn(_native.Conn):  # type: ignore[misc]
    """A libp2p connection of the extension on the running asyncio loop.

    ``handlers`` map a protocol the peer may open to a callable taking the
    :class:`LaneStream` (called once it is negotiated); ping is answered on every
    connection.  ``closed`` resolves when the connection ends (``failure`` says why: the
    peer's orderly end is "closed by the peer", ours ""); :meth:`close` frees it."""

    def __init__(
        self,
        sock: socket.socket,
        initiator: bool,
        handlers: dict[str, Callable[[Any], None]] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(sock.fileno(), initiator, loop)
        self.sock = sock
        self.handlers = dict(handlers or {})
        self.closed: asyncio.Future[None] = loop.create_future()
        self.remote_key = b""
        self.peer_id = ""  # the peer's, once the handshake is done
        self.addr = ""  # the address dialed (a dialed connection)
        self.failure = ""
        self.freed = False
        self.negotiating = 0  # inbound streams in negotiation
        self.max_inbound = MAX_STREAMS  # the C resets SYNs past it, unseen by _new_stream
        self.pings = 0  # ping streams open
        # What takes an inbound stream proposing a protocol not served here, with the
        # proposal, unanswered (ww.p2p.hybrid: py-libp2p); None: answered na
        self.bridge: Callable[[LaneStream, str], None] | None = None
        # Called once the peer is known (``peer_id`` set), before any stream is read
        self.on_handshake: Callable[[], None] | None = None
        self._handshake: asyncio.Future[bytes] | None = None
        # A served one's admission ticket: its ``streams`` kept to the inbound streams open
        # (set as one opens, and every TICKET_REFRESH seconds as they close)
        self.ticket: Any = None

    async def handshake(
        self,
        seed: bytes,
        expect: bytes | None,
        *,
        timeout: float | None = HANDSHAKE_TIMEOUT,
        lane: bool = False,
        other_keys: bool = False,
    ) -> None:
        """The C state machine on this loop: each readiness one ``handshake_step``, the
        whole within ``timeout`` seconds (None: the caller bounds it); no thread, nothing
        waits.  ``lane``: propose (dialer) or accept (listener) :data:`LANE`.
        ``other_keys`` (a listener): a peer whose identity is RSA or secp256k1 is taken too,
        its signature checked here (:func:`checked_identity`) before any stream is read, and
        ``peer_id`` set.  Raises ConnectionError."""
        fd = self.sock.fileno()
        self.sock.setblocking(False)
        done = self._handshake = self.loop.create_future()

        def step() -> None:
            if done.done():
                return
            try:
                key = self.handshake_step()
            except ConnectionError as e:
                done.set_exception(e)
                return
            if key is not None:
                done.set_result(key)

        if other_keys:
            self.start_handshake(seed, expect, lane=lane, other_keys=True)
        elif lane:
            self.start_handshake(seed, expect, lane=True)
        else:  # (the tests' subclasses override it with two arguments)
            self.start_handshake(seed, expect)
        self.loop.add_reader(fd, step)
        try:
            step()
            self.remote_key = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise ConnectionError("handshake: timed out") from None
        finally:
            if not self.freed:  # (closed: its fd may be another socket's already)
                self.loop.remove_reader(fd)
        if self.freed:
            raise ConnectionError("connection closed")
        if other_keys and (other := self.other_identity()) is not None:
            self.peer_id = checked_identity(*other)
        if self.on_handshake is not None:
            self.on_handshake()
        self.loop.add_reader(fd, self.readable)
        self.readable()  # bytes that came with the handshake's last read

    def handler_for(self, proto: str) -> Callable[[Any], None] | None:
        """What serves ``proto`` on an inbound stream, or None (answered ``na``)."""
        if proto == PING:
            return self._ping if self.pings < MAX_PING_STREAMS else None
        return self.handlers.get(proto)

    def _ping(self, stream: LaneStream) -> None:
        self.pings += 1
        stream.connect(_Ping(stream))

    def _new_stream(self, sid: int) -> LaneStream:
        """The C's call for a stream the peer opens: reset at once past the bounds.  The C
        calls it for at most 64 SYNs at once and 256 a second (conn.c's bucket; more are reset
        there, and a peer that goes on past it by 4096 fails the connection), and for none
        while :data:`MAX_STREAMS` inbound streams are open (``max_inbound``).  The checks
        here stay (the negotiating bound is Python's: a stream reset and a SYN in one read
        are parsed by the C before Python hears of the reset)."""
        stream = self.streams[sid] = LaneStream(self, sid, False)
        inbound = self.inbound()
        if inbound > self.max_inbound or self.negotiating >= MAX_NEGOTIATING:
            stream.reset()
            return stream
        if self.ticket is not None:
            self.ticket.streams = inbound
        self.negotiating += 1
        stream._deadline = self.loop.call_later(STREAM_NEGOTIATE_TIMEOUT, stream._expire)
        return stream

    def inbound(self) -> int:
        """The streams the peer opened that are open."""
        return sum(1 for s in self.streams.values() if not s.outbound)

    def _fail(self, why: str) -> None:
        # (C's "" is an orderly end: the peer's, unless it is close()'s own)
        self.failure = self.failure or why or ("" if self.freed else "closed by the peer")
        fail_conn(self, self.writing)

    def open(self, proto: str) -> LaneStream:  # type: ignore[override]
        """A new stream proposing ``proto``; await its ``negotiated``, then :meth:`LaneStream.
        connect` a protocol.  Raises ConnectionError on a closed connection."""
        sid = _native.Conn.open(self)
        stream = self.streams[sid] = LaneStream(self, sid, True)
        stream.proto = proto
        stream.write(ms_line("/multistream/1.0.0") + ms_line(proto))
        return stream

    async def open_ww(self, timeout: float = DIAL_TIMEOUT) -> Any:
        """A `/ww/0.1.0` stream as a ``capnp.AsyncIoStream``, once the peer agreed (within
        ``timeout`` seconds); P2PError if it did not."""
        where = self.addr or self.peer_id
        try:
            stream = self.open(PROTOCOL_ID)
        except ConnectionError as e:
            raise P2PError(f"p2p: cannot reach {where} ({self.failure or e})") from None
        try:
            async with asyncio.timeout(timeout):
                await stream.negotiated
        except TimeoutError:
            stream.reset()
            raise P2PError(f"p2p: {where}: no answer within {timeout:g} s") from None
        except ConnectionError:
            raise P2PError(serves_nothing(self.peer_id)) from None
        return bounded_stream(stream)

    def close(self) -> None:
        """Close the connection (a last reset or FIN of its streams sent if it can be) and
        free it; idempotent."""
        if self.freed:
            return
        self.freed = True
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError("connection closed"))
        if self.remote_key and not self.closed.done():
            self.flush()
        self._fail("")
        if self.sock.fileno() >= 0:  # (nothing watches the fd once it is another socket's)
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.free()


def bounded_stream(stream: LaneStream) -> Any:
    """A `/ww/0.1.0` ``stream`` as a ``capnp.AsyncIoStream`` within the bounds the splice
    holds a py-libp2p stream to (:func:`ww.p2p.bounds.bounded_capnp`: whole messages of at
    most 8 MiB that must keep arriving, 16 calls held, the loop's 32 MiB budget, answers that
    must move, of at most 8 MiB, and 32 MiB of them unsent in all), both ways: served streams
    and dialed ones alike.

    A dialed stream's writer (pycapnp: the calls of `ww call`, or of a cell through
    ``P2P.dial``) waits while the stream holds more than the lane's high-water mark unsent
    (1 MiB: the peer's Yamux window paces it), as on an asyncio socket; the calls behind
    wait in KJ, a cell's bounded by its fd 3 flow limit; meanwhile the peer's own calls wait
    unread (their answers could not leave).  A served stream's writer (the
    host's answers) does not wait: its answers are bounded by the node's answer budget and
    clock instead (:class:`ww.p2p.bounds.Answers`)."""
    from ww.p2p.bounds import bounded_capnp

    protocol, capnp_io = bounded_capnp(pause_writes=stream.outbound, calls_wait=stream.outbound)
    stream.connect(protocol)
    return capnp_io


def capnp_stream(stream: Any) -> Any:
    """``stream`` (a :class:`LaneStream`, or anything whose ``connect(protocol)`` attaches an
    asyncio protocol) under pycapnp's asyncio protocol, as a ``capnp.AsyncIoStream``, with no
    bounds: for the benchmarks' raw cost only (ww's streams go through
    :func:`bounded_stream`)."""
    import capnp

    protocol = capnp.lib.capnp._PyAsyncIoStreamProtocol()  # type: ignore[attr-defined]
    stream.connect(protocol)
    s = capnp.AsyncIoStream()
    s._post_init(protocol)
    return s


def checked_identity(key: bytes, signature: bytes, static: bytes) -> str:
    """The peer id of an identity that is not Ed25519 (a PublicKey message, RSA or
    secp256k1), which the C took unchecked (``other_keys``), once its ``signature`` of the
    Noise ``static`` key verifies with py-libp2p's crypto, as py-libp2p's Noise checks it;
    ConnectionError if it does not.  The id is of the key as py-libp2p encodes it, however
    the peer encoded it.  An RSA key is read by :func:`rsa_public_key` (however the
    message is laid out).  (Only a host's listener gets here: py-libp2p is loaded there.)"""
    from libp2p.crypto.keys import KeyType, PublicKey
    from libp2p.crypto.serialization import deserialize_public_key

    try:
        message = PublicKey.deserialize_from_protobuf(key)
        public = (rsa_public_key(message.data) if message.key_type == KeyType.RSA.value
                  else deserialize_public_key(key))
        verified = public.verify(b"noise-libp2p-static-key:" + static, signature)
        canonical = public.serialize()
    except Exception:  # a key py-libp2p cannot read is one that does not verify
        verified = False
    if not verified:
        raise ConnectionError("noise: identity signature does not verify")
    from ww.core.identity import peer_id_from_public_key

    return peer_id_from_public_key(canonical)


MIN_RSA_BITS = 2048  # go-libp2p's MinRsaKeyBits (py-libp2p reads at most 4096)
MAX_RSA_BITS = 4096  # py-libp2p's MAX_RSA_KEY_SIZE
# The most bytes an RSA key's DER may have (as the C's bound on the whole key message: 4096
# bits take some 550): pycryptodome decodes an INTEGER in quadratic time, 1 s for one of
# 62 KB (py-libp2p's Noise takes 64 KiB), and py-libp2p's reader 9.2 s a handshake.
MAX_RSA_KEY_BYTES = 1100
MAX_RSA_EXPONENT = (1 << 31) - 1  # Go's crypto/rsa refuses a larger one


def rsa_public_key(data: bytes) -> Any:
    """py-libp2p's RSAPublicKey of ``data``, an RSA public key as go-libp2p reads one (PKIX
    with the rsaEncryption algorithm and its NULL parameters: Go's
    ``x509.ParsePKIXPublicKey``; a bare PKCS#1 key, which pycryptodome also reads, would
    give one key a second peer id) of :data:`MIN_RSA_BITS` to
    :data:`MAX_RSA_BITS` with a public exponent from 3 to :data:`MAX_RSA_EXPONENT` (checking
    a signature costs in proportion to the exponent's length: 0.15 ms with 65537, 17 ms with
    an exponent of 4000 bits, measured; no key generator makes one, any peer may send it);
    CryptographyError for anything else.  Its modulus and exponent are read from the DER
    here (strict DER, pycryptodome's decoder: it only decodes), and nothing is computed
    before the bounds are looked at.  py-libp2p's reader (pycryptodome's ``import_key``,
    then `cryptography`'s ``load_der_public_key``) takes a private key (PKCS#1, PKCS#8) as
    well and tests its primes for primality, and a Diffie-Hellman key (X9.42) whose
    parameters OpenSSL checks, all before any bound: of 4150 bits (within the C's 1100
    bytes) 41 ms (private) and 29 ms (DH) a handshake, of 16000 bits 1.8 s and 3.1 s,
    whatever the signature (measured, tests/p2p/test_inbound_calls.py); and a real private
    key was taken as an identity.  At most :data:`MAX_RSA_KEY_BYTES` are decoded: a modulus
    of 60 KB cost py-libp2p's reader 9.2 s of the host's CPU a handshake (measured)."""
    from Crypto.PublicKey import RSA
    from Crypto.Util.asn1 import DerBitString, DerObjectId, DerSequence
    from libp2p.crypto.exceptions import CryptographyError
    from libp2p.crypto.rsa import RSAPublicKey

    if len(data) > MAX_RSA_KEY_BYTES:  # (pycryptodome decodes an INTEGER in quadratic time)
        raise CryptographyError("RSA key outside go-libp2p's bounds")
    try:
        outer = DerSequence().decode(data, strict=True, nr_elements=2)  # SubjectPublicKeyInfo
        algorithm = DerSequence().decode(outer[0], strict=True, nr_elements=2)
        if DerObjectId().decode(algorithm[0], strict=True).value != _RSA_OID:
            raise ValueError("not rsaEncryption")
        if algorithm[1] != _NULL:  # Go compares the bytes; pycryptodome's DerNull takes
            raise ValueError("no NULL parameters")  # a NULL with content (05 01 00)
        bits = DerBitString().decode(outer[1], strict=True).value
        n, e = DerSequence().decode(bits, strict=True, nr_elements=2,
                                    only_ints_expected=True)[:]
    except (ValueError, IndexError, TypeError, EOFError):
        raise CryptographyError("not an RSA public key") from None
    if not (MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS and 3 <= e <= MAX_RSA_EXPONENT):
        raise CryptographyError("RSA key outside go-libp2p's bounds")
    try:
        key = RSA.construct((n, e))  # checks e against n (a gcd), no more
    except ValueError:
        raise CryptographyError("not an RSA public key") from None
    return RSAPublicKey(key)


_RSA_OID = "1.2.840.113549.1.1.1"  # rsaEncryption (PKCS#1)
_NULL = b"\x05\x00"  # its parameters, DER's NULL (Go's asn1.NullBytes)


def peer_id_of(key: bytes) -> str:
    """The peer id of a raw Ed25519 public key."""
    from ww.core.identity import KEY_TYPE_ED25519, marshal_public_key, peer_id_from_public_key

    return peer_id_from_public_key(marshal_public_key(KEY_TYPE_ED25519, key))


def endpoint(addr: str) -> tuple[socket.AddressFamily, str, int, str, bytes]:
    """(family, host, port, peer id, the peer's Ed25519 key) of a full address the lane can
    dial; :class:`LaneUnavailable` otherwise."""
    from ww.core.identity import IdentityError, public_key_from_peer_id
    from ww.core.multiaddr import MultiaddrError, parse

    try:
        components = parse(addr.strip()).components
    except MultiaddrError:
        raise LaneUnavailable(f"p2p: {addr}: not a full peer address") from None
    shape = [p for p, _ in components]
    if shape not in (["ip4", "tcp", "p2p"], ["ip6", "tcp", "p2p"]):
        raise LaneUnavailable(f"p2p: {addr}: not /ip4|ip6/<address>/tcp/<port>/p2p/<peer id>")
    (kind, host), (_, port), (_, peer) = components
    if not host or not port or not peer or "%" in host:
        raise LaneUnavailable(f"p2p: {addr}: not an address the lane dials")
    try:
        key = public_key_from_peer_id(peer).raw
    except IdentityError as e:
        raise LaneUnavailable(f"p2p: {addr}: {e}") from None
    family = socket.AF_INET if kind == "ip4" else socket.AF_INET6
    return family, host, int(port), peer, key


async def dial(
    addr: str,
    seed: bytes,
    *,
    policy: DialPolicy | None = None,
    timeout: float = DIAL_TIMEOUT,
    lane: bool = True,
) -> LaneConn:
    """A connection to the peer at ``addr`` (a checked full address), from the identity
    whose Ed25519 seed is ``seed``, connected and handshaken within ``timeout`` seconds;
    ``lane``: propose :data:`LANE` first.

    Raises :class:`LaneUnavailable` for an address the lane cannot take (before anything
    is sent), :class:`ww.p2p.dial_policy.AddressNotAllowed` for one ``policy`` refuses
    (before any socket is made), and P2PError (one line, as the py-libp2p path says it)
    when the peer cannot be reached or is not the one named."""
    family, host, port, peer, expect = endpoint(addr)
    if policy is not None and (reason := policy.refusal(addr)):
        from ww.p2p.dial_policy import AddressNotAllowed

        raise AddressNotAllowed(f"p2p: {reason}")
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    conn: LaneConn | None = None
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            try:
                await loop.sock_connect(sock, (host, port))
            except OSError as e:  # (asyncio words it "Connect call failed (address)")
                why = os.strerror(e.errno) if e.errno else str(e)
                raise P2PError(f"p2p: cannot reach {addr} ({why})") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = LaneConn(sock, True)
            conn.addr = addr
            try:
                await conn.handshake(seed, expect, timeout=None, lane=lane)
            except ConnectionError as e:
                raise P2PError(f"p2p: cannot reach {addr} ({e})") from None
        if peer_id_of(conn.remote_key) != peer:  # the C checked the key; checked again here
            raise P2PError(f"p2p: cannot reach {addr} (the peer's key is not {peer}'s)")
    except TimeoutError:
        _close(conn, sock)
        raise P2PError(f"p2p: {addr}: no answer within {timeout:g} s") from None
    except BaseException:
        _close(conn, sock)
        raise
    conn.peer_id = peer
    return conn


def _close(conn: LaneConn | None, sock: socket.socket) -> None:
    if conn is not None:
        conn.close()
    else:
        sock.close()


OnWw = Callable[[Any, str], None]  # (a /ww/0.1.0 stream as a capnp.AsyncIoStream, peer id)
# (the connection, the peer's address, its ticket): what serves the other protocols of a
# connection that is not the lane's (ww.p2p.hybrid), set up once its peer is known
Rest = Callable[[LaneConn, str, Any], None]


async def serve(sock: socket.socket, seed: bytes, ip: str, ticket: Any, on_ww: OnWw,
                rest: Rest | None = None) -> None:
    """Serve one inbound lane connection, on the loop, until it closes.

    ``sock``: the accepted TCP socket, its lane proposal unread; ``ip``: the peer's address;
    ``ticket``: its place in the host's admission: ``handshaken()`` once the handshake is
    done, ``ended()`` when the connection is (always), ``on_close(callback)`` for the
    admission to close it (the callback may be called on any thread), and ``streams`` set
    to the inbound streams open (as one opens, and every :data:`TICKET_REFRESH` seconds).
    The responder's handshake (:data:`LANE` or ``/noise``) must end within
    :data:`HANDSHAKE_TIMEOUT`;
    each `/ww/0.1.0` stream the peer opens is given to ``on_ww`` (on the loop, at once: it
    must not block) with the peer's id; ping is answered; the bounds are the connection's
    (the module's docstring).  ``rest``: a connection that is not a lane's (a libp2p
    peer's ``/noise``) is given to it once its peer is known, for every other protocol;
    without it they are answered ``na``."""
    loop = asyncio.get_running_loop()
    conn: LaneConn | None = None
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # (not TCP: a socket pair in a test)
        lane_conn = conn = LaneConn(sock, False)
        lane_conn.addr = ip

        def on_stream(stream: LaneStream) -> None:
            on_ww(bounded_stream(stream), lane_conn.peer_id)

        conn.handlers[PROTOCOL_ID] = on_stream

        def handshaken() -> None:
            lane_conn.peer_id = lane_conn.peer_id or peer_id_of(lane_conn.remote_key)
            if rest is not None and not lane_conn.lane:
                rest(lane_conn, ip, ticket)

        conn.on_handshake = handshaken
        ticket.on_close(lambda: _close_from_any_thread(loop, lane_conn))
        try:
            await conn.handshake(seed, None, timeout=HANDSHAKE_TIMEOUT, lane=True,
                                 other_keys=True)
        except ConnectionError:
            return
        ticket.handshaken()
        conn.ticket = ticket
        while not conn.closed.done():  # (the C tells nothing as a stream closes: counted)
            await asyncio.wait([conn.closed], timeout=TICKET_REFRESH)
            ticket.streams = conn.inbound() if not conn.freed else 0
    finally:
        _close(conn, sock)
        ticket.ended()


def _close_from_any_thread(loop: asyncio.AbstractEventLoop, conn: LaneConn) -> None:
    try:
        loop.call_soon_threadsafe(conn.close)
    except RuntimeError:  # the loop is closed: the connection went with it
        pass
