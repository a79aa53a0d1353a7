"""The addresses `ww` speaks libp2p on, checked before anything is started.

Only TCP over IPv4 or IPv6 is spoken (``/ip4/<addr>/tcp/<port>``): the transport go-libp2p
and kubo share with py-libp2p.  A peer to dial is named by such an address followed by
``/p2p/<peer id>``; a peer already connected (for example through ``--join``) may be named
by its peer id alone.  Names are never resolved: ``/dns*`` addresses are refused, so ``ww``
contacts exactly the addresses it is given.
"""

from __future__ import annotations

from ww.core.errors import AddressError
from ww.core.errors import P2PError as P2PError  # re-exported: its home before the one tree

PROTOCOL_ID = "/ww/0.1.0"
"""The libp2p protocol on which a host serves its cell's export (Cap'n Proto two-party RPC)."""

LANE = "/ww/lane/0.1.0"
"""The security protocol a ww dialer proposes first: the native lane (`ww.p2p.lane`), the same
Noise handshake as `/noise` on a connection that carries `/ww/0.1.0` only."""

LANE_PROPOSAL = b"\x13/multistream/1.0.0\n\x0f/ww/lane/0.1.0\n"
"""A lane dialer's first write, in one segment: multistream's header and the :data:`LANE`
proposal (each line a varint length, the text and a newline).  A ww host's door
(`ww.p2p.admission`) hands a connection to the lane on exactly these first bytes."""

NOISE_PROPOSAL = b"\x13/multistream/1.0.0\n\x07/noise\n"
"""A libp2p dialer that is not ww (go-libp2p's: kubo, the Go reference; the C++ peer of the
tests) in its first write: multistream's header and ``/noise``.  Taken by the lane too when
the host serves inbound calls natively (`ww run --inbound calls`, `ww.p2p.admission`)."""

SIMOPEN_PROPOSAL = b"\x13/multistream/1.0.0\n\x1d/libp2p/simultaneous-connect\n"
"""The same from a go-libp2p dialer that offers simultaneous open first (go-multistream's
``SelectWithSimopenOrFail``): answered ``na``, it proposes ``/noise`` next."""

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/2020"
"""Where `ww run` listens when p2p is on and neither ``--listen`` nor ``WW_LISTEN`` is set.

The reference listens on TCP port 2020; we do too, but on the loopback interface only:
reaching the host from the network is an explicit ``--listen /ip4/0.0.0.0/tcp/2020``.
"""


def _parse(text: str, what: str) -> list[tuple[str, str | None]]:
    from ww.core.multiaddr import MultiaddrError, parse

    try:
        return list(parse(text.strip()).components)
    except MultiaddrError as e:
        raise AddressError(f"{what}: {e}") from None


def _is_tcp(components: list[tuple[str, str | None]]) -> bool:
    return (len(components) == 2 and components[0][0] in ("ip4", "ip6")
            and components[1][0] == "tcp")


def check_listen_addr(text: str) -> str:
    """``/ip4|ip6/<addr>/tcp/<port>`` (port 0: any free port); raises AddressError otherwise."""
    components = _parse(text, "listen address")
    if not _is_tcp(components):
        raise AddressError(f"listen address {text!r}: expected /ip4/<address>/tcp/<port> or "
                         "/ip6/<address>/tcp/<port>")
    return "/" + "/".join(f"{p}/{v}" for p, v in components)


def check_join_addr(text: str) -> str:
    """``/ip4|ip6/<addr>/tcp/<port>/p2p/<peer id>``; raises AddressError otherwise."""
    components = _parse(text, "peer address")
    if not (len(components) == 3 and _is_tcp(components[:2]) and components[2][0] == "p2p"):
        raise AddressError(f"peer address {text!r}: expected "
                         "/ip4/<address>/tcp/<port>/p2p/<peer id>")
    return "/" + "/".join(f"{p}/{v}" for p, v in components)


def check_dial_addr(text: str) -> str:
    """A full peer address, or ``/p2p/<peer id>`` or a bare peer id for a connected peer."""
    text = text.strip()
    if not text.startswith("/"):
        text = f"/p2p/{text}"
    components = _parse(text, "peer address")
    if len(components) == 1 and components[0][0] == "p2p":
        return text
    return check_join_addr(text)


def peer_of(addr: str) -> str:
    """The peer id at the end of a checked address."""
    return addr.rsplit("/p2p/", 1)[1]
