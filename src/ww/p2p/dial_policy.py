"""Which addresses the host may dial on a cell's behalf.

A capability is not network reach: a cell's IPFS ``connect`` or p2p ``dial`` may make the
host dial public unicast addresses -- reaching other peers is the point of p2p -- but not
loopback, private (RFC 1918), shared (CGNAT, 100.64.0.0/10), link-local, unique-local
(fc00::/7), unspecified, multicast, documentation, benchmarking, reserved or any other
special-use address (IANA's special-purpose registries), nor an IPv6 address that embeds
such an IPv4 one (IPv4-mapped, 6to4, NAT64).  Without that rule a cell could make the host
connect to its own loopback services and tell open ports from closed ones by the answer.

The operator widens it: ``--allow-dial CIDR`` (repeatable) allows a range, and the addresses
the operator named (``--join``, ``--peer``) are allowed as chosen.  Names are never resolved
for a cell: ``/dns*`` addresses are refused, so what is checked is what is dialed.

A refused dial never reaches the network: :meth:`DialPolicy.refusal` is a pure function of
the address, checked before anything is sent (the capability refuses the call; the host's
TCP transport refuses the connection, for addresses the host learned from peers too).

``ww run`` builds the policy from its flags (:func:`ww.app.build.dial_policy`) and hands it
to its libp2p host and to the capability servers that dial for its cells; a server given
none holds its cells to :data:`STRICT` (public addresses only).  ``ww call`` and ``ww import``
dial only what the operator typed and use no policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from ww.core.addrs import P2PError
from ww.core.errors import AddressError

__all__ = ["AddressNotAllowed", "DialPolicy", "STRICT", "parse_range"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Special-use ranges (IANA IPv4/IPv6 special-purpose address registries), most specific
# first where they nest; anything else Python's ``is_global`` rejects is refused too.
_SPECIAL: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), what) for net, what in (
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT, RFC 6598)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing (SRv6) SIDs"),
        ("2001::/23", "IETF protocol assignments"),
        ("fc00::/7", "unique local (ULA)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (SIIT, RFC 2765)


def parse_range(text: str) -> Network:
    """``CIDR`` or a single address (``/32`` or ``/128``); raises AddressError naming it."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise AddressError(f"{text!r} is not an IP address or CIDR range (such as "
                         "127.0.0.0/8 or fd00::/8)") from None


def special_use(ip: Address) -> tuple[str, Network] | None:
    """What kind of special-use address ``ip`` is and the range it is in (for the operator
    to allow), or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _NAT64 or ip in _TRANSLATED):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = special_use(embedded)
            if inner is None:
                return None
            return f"{inner[0]}, embedded in an IPv6 address", ipaddress.ip_network(ip)
    for net, what in _SPECIAL:
        if ip.version == net.version and ip in net:
            return what, net
    if not ip.is_global:
        return "special-use", ipaddress.ip_network(ip)
    return None


class AddressNotAllowed(P2PError):
    """A dial the policy refuses; ``str()`` is one line starting ``address not allowed``."""


@dataclass(frozen=True)
class DialPolicy:
    """Public unicast addresses, plus the ranges ``allowed`` and the operator's own peers."""

    allowed: tuple[Network, ...] = ()
    operator: frozenset[tuple[Address, int | None]] = field(default_factory=frozenset)

    @classmethod
    def from_flags(cls, allow: Iterable[str] = (), operator: Iterable[str] = ()) -> DialPolicy:
        """From ``--allow-dial`` values and the addresses the operator named (``--join``,
        ``--peer``: already checked peer addresses)."""
        named = set()
        for addr in operator:
            endpoint = _endpoint(addr)
            if isinstance(endpoint, tuple):
                named.add(endpoint)
        return cls(tuple(parse_range(a) for a in allow), frozenset(named))

    def refusal(self, addr: str, *, full_address: bool = False) -> str | None:
        """Why a cell may not make the host dial ``addr``, or None if it may.

        A bare peer id (``/p2p/<id>`` or ``<id>``) names no address: allowed here, the
        addresses the host knows for it are checked when it dials them -- unless
        ``full_address`` (a backend such as kubo that would dial them unchecked).  The reason
        is one line of bounded length whatever ``addr`` is (it is audited, and a cell
        chooses it)."""
        if len(addr) > MAX_ADDR:
            return f"address not allowed: {_shown(addr)} (longer than {MAX_ADDR} characters)"
        endpoint = _endpoint(addr)
        if endpoint == "" and full_address:
            return (f"address not allowed: {_shown(addr)} (a bare peer id: the kubo backend "
                    "would dial its addresses unchecked; give /ip4|ip6/<address>/tcp/<port>/p2p/"
                    "<peer id>)")
        if isinstance(endpoint, str):
            return f"address not allowed: {_shown(addr)} ({endpoint})" if endpoint else None
        ip, port = endpoint
        if (ip, port) in self.operator or any(ip in net for net in self.allowed
                                              if net.version == ip.version):
            return None
        special = special_use(ip)
        if special is None:
            return None
        kind, net = special
        return (f"address not allowed: {_shown(addr)} ({ip} is {kind}; the operator can allow it "
                f"with --allow-dial {net})")

    def check(self, addr: str) -> None:
        """Raise :class:`AddressNotAllowed` if :meth:`refusal` has a reason."""
        if reason := self.refusal(addr):
            raise AddressNotAllowed(reason)


MAX_ADDR = 1024  # characters: a longer "address" is refused unread


def _shown(addr: str) -> str:
    """``addr`` as a refusal shows it: one line (escaped if need be), at most 200 characters."""
    text = addr if addr.isprintable() else repr(addr)[1:-1]
    return text if len(text) <= 200 else text[:200] + "..."


def _endpoint(addr: str) -> tuple[Address, int | None] | str:
    """``(ip, port)`` of a peer address; "" for a bare peer id; else why it is refused."""
    from ww.core.multiaddr import MultiaddrError, parse

    text = addr.strip()
    if not text.startswith("/"):
        text = f"/p2p/{text}"
    try:
        components = parse(text).components
    except MultiaddrError as e:
        return f"not a peer address: {_shown(str(e))}"
    if not components:
        return "not a peer address"
    proto, value = components[0]
    if proto == "p2p" and len(components) == 1:
        return ""
    if proto not in ("ip4", "ip6") or value is None:
        return (f"/{proto} addresses are not dialed for a cell (names are not resolved): "
                "give an /ip4 or /ip6 address")
    # Exactly one host and one TCP port: libp2p dials the *last* host of a longer address
    # (/ip4/<public>/ip4/127.0.0.1/tcp/22 reaches 127.0.0.1), so nothing may follow but the
    # peer id -- a peer's announced addresses included.
    shape = [p for p, _ in components]
    if shape not in (["ip4", "tcp"], ["ip6", "tcp"], ["ip4", "tcp", "p2p"], ["ip6", "tcp", "p2p"]):
        return "only /ip4|ip6/<address>/tcp/<port>[/p2p/<peer id>] addresses are dialed"
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return "an IPv6 address with a zone (%...) is not dialed"
    return ip, int(components[1][1] or 0)


STRICT = DialPolicy()  # public unicast addresses only
