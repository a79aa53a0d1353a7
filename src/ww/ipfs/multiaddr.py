"""Multiaddrs in their text form, for the addresses ww deals in.

A multiaddr is a path of ``/protocol[/value]`` components: ``/ip4/127.0.0.1/tcp/5001/http``.
We parse the protocols a kubo RPC address or a peer address uses (hosts, transports,
``/p2p/<peer id>``, ``/unix/<path>``) and check every value, so a typo is reported here in
one line instead of as an obscure failure to connect later.  Binary multiaddrs are not needed.

:func:`to_http_url` turns the ``--ipfs`` / ``WW_IPFS`` setting (a multiaddr such as the
reference default ``/dns4/localhost/tcp/5001/http``, or a plain ``http://host:port`` URL)
into the base URL of kubo's RPC API.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from ww.core.identity import IdentityError, decode_peer_id

from .api import IpfsError

__all__ = ["MultiaddrError", "Multiaddr", "parse", "to_http_url", "DEFAULT_KUBO_API"]

DEFAULT_KUBO_API = "/dns4/localhost/tcp/5001/http"
"""The reference implementation's default ``--ipfs`` address."""

# Protocols that take a value, and those that take none.  ``unix`` takes the rest of the path.
_WITH_VALUE = frozenset(
    "ip4 ip6 ip6zone dns dns4 dns6 dnsaddr tcp udp sni p2p certhash unix".split()
)
_WITHOUT_VALUE = frozenset(
    "http https tls ws wss quic quic-v1 webtransport webrtc webrtc-direct p2p-circuit noise "
    "utp udt".split()
)
_HOSTS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})


class MultiaddrError(IpfsError, ValueError):
    """The text is not a multiaddr we understand; ``str()`` is one line naming the problem."""


@dataclass(frozen=True)
class Multiaddr:
    """A parsed multiaddr: its ``(protocol, value)`` components in order."""

    components: tuple[tuple[str, str | None], ...]

    def __str__(self) -> str:
        out = []
        for proto, value in self.components:
            out.append(f"/{proto}")
            if value is not None:
                out.append(value if proto == "unix" else f"/{value}")
        return "".join(out)

    def value(self, proto: str) -> str | None:
        """The value of the first ``proto`` component, or ``None`` if there is none."""
        for name, value in self.components:
            if name == proto:
                return value
        return None

    @property
    def peer_id(self) -> str | None:
        """The ``/p2p/<id>`` suffix, if any."""
        return self.value("p2p")

    def to_http_url(self) -> str:
        """``/ip4/127.0.0.1/tcp/5001/http`` -> ``http://127.0.0.1:5001``.

        A host (``ip4``, ``ip6``, ``dns``, ``dns4``, ``dns6``) and a ``tcp`` port, then
        optionally ``http``, ``https`` or ``tls/http``; nothing else.  Without a scheme
        component the URL is ``http``, as kubo's own ``Addresses.API`` is written.
        """
        names = [proto for proto, _ in self.components]
        if len(names) < 2 or names[0] not in _HOSTS or names[1] != "tcp":
            raise MultiaddrError(
                f"{self} is not an HTTP address: expected /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>"
                "[/http|/https]"
            )
        rest = names[2:]
        if rest in ([], ["http"]):
            scheme = "http"
        elif rest in (["https"], ["tls", "http"]):
            scheme = "https"
        else:
            raise MultiaddrError(f"{self} is not an HTTP address: unexpected /{'/'.join(rest)}")
        host = self.components[0][1] or ""
        if names[0] == "ip6":
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.components[1][1]}"


def parse(text: str) -> Multiaddr:
    """Parse and check the text form of a multiaddr; raises :class:`MultiaddrError`."""
    if not text.startswith("/"):
        raise MultiaddrError(f"invalid multiaddr {text!r}: must begin with '/'")
    parts = text.split("/")[1:]
    components: list[tuple[str, str | None]] = []
    i = 0
    while i < len(parts):
        proto = parts[i]
        if proto == "ipfs":  # the old name of /p2p
            proto = "p2p"
        i += 1
        if proto == "" and i == len(parts) and components:  # a trailing slash
            break
        if proto == "unix":
            path = "/" + "/".join(parts[i:])
            if path == "/":
                raise MultiaddrError(f"invalid multiaddr {text!r}: /unix needs a path")
            components.append((proto, path))
            break
        if proto in _WITHOUT_VALUE:
            components.append((proto, None))
            continue
        if proto not in _WITH_VALUE:
            shown = proto or "(empty)"
            raise MultiaddrError(f"invalid multiaddr {text!r}: unknown protocol {shown!r}")
        if i == len(parts) or parts[i] == "":
            raise MultiaddrError(f"invalid multiaddr {text!r}: /{proto} needs a value")
        value = _check_value(text, proto, parts[i])
        components.append((proto, value))
        i += 1
    if not components:
        raise MultiaddrError(f"invalid multiaddr {text!r}: it is empty")
    return Multiaddr(tuple(components))


def _check_value(text: str, proto: str, value: str) -> str:
    def bad(why: str) -> MultiaddrError:
        return MultiaddrError(f"invalid multiaddr {text!r}: {why}")

    if proto == "ip4":
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise bad(f"{value!r} is not an IPv4 address") from None
    if proto == "ip6":
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            raise bad(f"{value!r} is not an IPv6 address") from None
    if proto in ("tcp", "udp"):
        if not value.isdigit() or int(value) > 65535:
            raise bad(f"{value!r} is not a {proto} port (0-65535)")
        return str(int(value))
    if proto in ("dns", "dns4", "dns6", "dnsaddr", "sni"):
        if len(value) > 253 or not all(c.isascii() and (c.isalnum() or c in "-._") for c in value):
            raise bad(f"{value!r} is not a DNS name")
        return value
    if proto == "p2p":
        try:
            decode_peer_id(value)
        except IdentityError as err:
            raise bad(str(err)) from None
        return value
    return value


def to_http_url(address: str) -> str:
    """The base URL of a kubo RPC API given as a multiaddr or as ``http(s)://host:port``.

    >>> to_http_url("/dns4/localhost/tcp/5001/http")
    'http://localhost:5001'
    """
    address = address.strip()
    if address.startswith("/"):
        return parse(address).to_http_url()
    try:
        url = urllib.parse.urlsplit(address)
        port = url.port
    except ValueError as err:
        raise MultiaddrError(f"invalid address {address!r}: {err}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise MultiaddrError(
            f"invalid address {address!r}: expected a multiaddr such as "
            f"{DEFAULT_KUBO_API} or a URL such as http://127.0.0.1:5001"
        )
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise MultiaddrError(f"invalid address {address!r}: give only scheme, host and port")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{url.scheme}://{host}" + (f":{port}" if port is not None else "")
