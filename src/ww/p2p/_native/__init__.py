"""A libp2p connection in C (design (e) in docs/benchmarks.md, issue 14): the native lane.

``conn.c`` is multistream-select, Noise XX with libp2p's handshake payload (Ed25519
identities) and Yamux over libsodium; ``ext.c`` wraps it as the extension module
:mod:`ww.p2p._native._ext`, built with the package (``setup.py``; ``./dev`` installs gcc,
libsodium-dev and Python's headers first).  Its two types:

- :class:`Conn` ``(fd, initiator, loop)``: ``start_handshake(seed, expect, lane=False)``
  (``lane``: a dialer proposes ``/ww/lane/0.1.0`` as the security protocol, header and
  proposal in one send, and falls back to ``/noise`` on ``na``; a listener accepts it as
  well as ``/noise``; either way Noise XX and Yamux follow, and ``Conn.lane`` says whether
  the lane was agreed), then
  ``handshake_step`` is the loop's ``add_reader`` callback until it returns the peer's key
  (a state machine that never waits; the caller bounds the whole with a deadline); from
  then on ``readable`` is that callback: it decrypts and parses and hands each stream's
  bytes to the asyncio ``BufferedProtocol`` attached to it; ``flush`` sends what the
  streams queued (scheduled once per loop turn); ``free()`` releases the C connection.
- :class:`Stream` ``(conn, sid)``: that protocol's transport (``write``, ``close``,
  ``pause_reading`` ...); ``attach(protocol, leftover, eof)`` hands the stream to it.
  Yamux credit goes back to the peer only for bytes the protocol took (and those the
  multistream-select exchange used), so a paused stream holds at most its 256 KiB window
  (``held``) and the peer waits; what a stream held when it ended is credited back (the
  peer can finish); a peer that sends past its window fails the connection.
  ``Conn.open_streams`` counts the Yamux streams the C side holds.
  ``Stream.get_write_buffer_size()`` (asyncio's call) counts what the stream was given and
  has not framed yet (written this loop turn, waiting for the peer's window, or for room in
  the connection's out buffer, where data is framed only under 128 KiB);
  ``Conn.get_write_buffer_size()`` the connection's encrypted bytes the socket has not
  taken.  What the peer makes the connection send (ping answers, ACKs, RSTs ...) is
  bounded: no frames are read while the out buffer holds more than 512 KiB, until it holds
  less than 256 KiB (``Conn.reading`` False; the socket's reader is removed meanwhile), so
  a peer that never reads waits; one ``readable`` call reads at most 256 KiB and parses
  at most ``PARSE_BUDGET`` (128) Noise messages and Yamux frames: what is left goes on in
  a ``readable`` call scheduled with ``call_soon`` (the socket's reader removed meanwhile),
  so a flooding peer holds the loop one budget at a time (``Conn.most_parsed``,
  ``Conn.reads_cut``).  A SYN must name a stream id the peer has not used (above the
  highest it opened, or a late one among the 63 of its ids just below that); else the
  connection fails.
  ``Conn.ping()`` sends a Yamux ping.

Subclasses supply the Python side (multistream-select on a stream, inbound streams and
their bounds, failures): :mod:`ww.p2p.lane`'s ``LaneConn`` and ``LaneStream``, which ww's
dialer, `ww call`, the benchmarks and ``tests/cxx/test_native_p2p.py`` drive.  Both types
take part in the cyclic GC, so a connection or stream dropped in a cycle is collected with
its C memory.

Only :mod:`ww.p2p.lane` imports this package: remote `/ww/0.1.0` calls a host or `ww call`
dials (:class:`ww.p2p.protocol.Dialer`) go over it, and inbound lane connections are served
by it; everything else of the host runs on py-libp2p (:mod:`ww.p2p.host`).
"""

from __future__ import annotations

from ww.p2p._native._ext import Conn, Stream

__all__ = ["Conn", "Stream"]
