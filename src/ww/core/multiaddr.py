"""Multiaddrs in their text form, parsed by PyPI's ``multiaddr`` (the one py-libp2p uses).

A multiaddr is a path of ``/protocol[/value]`` components: ``/ip4/127.0.0.1/tcp/5001/http``.
The process holds one multiaddr implementation: :func:`parse` hands the text to
:class:`multiaddr.Multiaddr`, which checks every value; this module only adds what ``ww``
needs on top -- the old ``/ipfs/`` name of ``/p2p/``, ``/unix`` paths given unescaped, a
:class:`Multiaddr` view of ``(protocol, value)`` pairs, and a one-line
:class:`MultiaddrError` naming the bad component instead of the library's exception.

:func:`to_http_url` turns the ``--ipfs`` / ``WW_IPFS`` setting (a multiaddr such as the
reference default ``/dns4/localhost/tcp/5001/http``, or a plain ``http://host:port`` URL)
into the base URL of kubo's RPC API.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

import multiaddr as _lib
from multiaddr.exceptions import Error as _LibError
from multiaddr.protocols import protocol_with_name

from ww.core.errors import IpfsError

__all__ = ["MultiaddrError", "Multiaddr", "MAX_TEXT", "parse", "to_http_url",
           "DEFAULT_KUBO_API"]

DEFAULT_KUBO_API = "/dns4/localhost/tcp/5001/http"
"""The reference implementation's default ``--ipfs`` address."""

_HOSTS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})

MAX_TEXT = 1024
"""The longest multiaddr text parsed (libp2p's are under 300 characters: a DNS name is at
most 253, a ``/unix`` path 107 bytes, a peer id 385 even in base2).  The library decodes a
``/p2p/`` value in time quadratic in its length (100,000 characters took 10 s, a base36 one
minutes), so a longer text is refused before it is read: a cell's ``P2P.dial`` or IPFS
``connect``, a client's ``swarm/connect``, hand it the text."""


class MultiaddrError(IpfsError, ValueError):
    """The text is not a multiaddr we understand; ``str()`` is one line naming the problem."""


@dataclass(frozen=True)
class Multiaddr:
    """A parsed multiaddr: its ``(protocol, value)`` components in order.

    ``lib`` is the :class:`multiaddr.Multiaddr` that parsed and checked it (what libp2p
    takes); ``components`` holds its values, a ``/unix`` path unescaped.
    """

    components: tuple[tuple[str, str | None], ...]
    lib: _lib.Multiaddr = field(compare=False, repr=False)

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
    if len(text) > MAX_TEXT:
        raise MultiaddrError(f"invalid multiaddr {_short(text)!r}: longer than {MAX_TEXT} "
                             "characters")
    if not text.startswith("/"):
        raise MultiaddrError(f"invalid multiaddr {text!r}: must begin with '/'")
    pieces = _split(text)
    if any(proto == "ip6zone" for proto, _ in pieces):
        # multiaddr 0.2.0 writes an /ip6zone value without its length, then reads it back as
        # whatever its bytes say: /ip6zone/eth0/ip6/fe80::1 as /ip6zone/ip4/101.116.104.48/...,
        # /ip6zone/\x80\U00010000 as a TypeError from deep inside it (found by hypothesis)
        raise MultiaddrError(f"invalid multiaddr {text!r}: /ip6zone is not supported")
    # The library reads a /unix path percent-escaped; ww takes it as written.
    canonical = "".join(
        f"/{proto}" + ("" if value is None else "/" + (urllib.parse.quote(value[1:])
                                                       if proto == "unix" else value))
        for proto, value in pieces
    )
    try:
        parsed = _lib.Multiaddr(canonical)
        components = tuple(
            (proto.name, None if value is None
             else urllib.parse.unquote(value) if proto.name == "unix" else str(value))
            for proto, value in parsed.items()
        )
    except (_LibError, ValueError, TypeError, EOFError) as err:  # (its reader's, on bytes it wrote)
        raise MultiaddrError(f"invalid multiaddr {text!r}: {_why(pieces, err)}") from None
    # Take an address only if it reads back as the protocols written (the library may write
    # what it cannot read back, as /ip6zone above).
    if [name for name, _ in components] != [name for name, _ in pieces]:
        same = 0
        while same < min(len(pieces), len(components)) and pieces[same][0] == components[same][0]:
            same += 1
        unsupported = pieces[max(same - 1, 0)][0]  # the last one read back: its value was not
        raise MultiaddrError(f"invalid multiaddr {text!r}: /{unsupported} is not supported")
    return Multiaddr(components, parsed)


def _split(text: str) -> list[tuple[str, str | None]]:
    """``(protocol, value text)`` pairs, as the library's protocol table says which take a value.

    Only the shape is checked here (known names, values present); values are the library's
    to check.
    """
    parts = text.split("/")[1:]
    if parts and parts[-1] == "" and len(parts) > 1:  # a trailing slash
        parts.pop()
    pieces: list[tuple[str, str | None]] = []
    i = 0
    while i < len(parts):
        name = "p2p" if parts[i] == "ipfs" else parts[i]  # /ipfs is the old name of /p2p
        i += 1
        if name == "unix":
            path = "/" + "/".join(parts[i:])
            if path == "/":
                raise _bad(text, "/unix needs a path")
            pieces.append((name, path))
            break
        try:
            proto = protocol_with_name(name)
        except _LibError:
            raise _bad(text, f"unknown protocol {name or '(empty)'!r}") from None
        if proto.codec is None:
            pieces.append((name, None))
            continue
        if i == len(parts) or parts[i] == "":
            raise _bad(text, f"/{name} needs a value")
        pieces.append((name, parts[i]))
        i += 1
    if not pieces:
        raise _bad(text, "it is empty")
    return pieces


def _why(pieces: list[tuple[str, str | None]], err: Exception) -> str:
    """One line naming the first component the library refuses."""
    for proto, value in pieces:
        if value is None or proto == "unix":
            continue
        try:
            _lib.Multiaddr(f"/{proto}/{value}")
        except (_LibError, ValueError):
            if proto == "ip4":
                return f"{value!r} is not an IPv4 address"
            if proto == "ip6":
                return f"{value!r} is not an IPv6 address"
            if proto in ("tcp", "udp"):
                return f"{value!r} is not a {proto} port (0-65535)"
            if proto in ("dns", "dns4", "dns6", "dnsaddr", "sni"):
                return f"{value!r} is not a DNS name"
            if proto == "p2p":
                return f"invalid peer id {value!r}"
            return f"bad /{proto} value {value!r}"
    message = getattr(err, "message", None) or str(err)
    return message.splitlines()[0] if message else type(err).__name__


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(text: str, why: str) -> MultiaddrError:
    return MultiaddrError(f"invalid multiaddr {text!r}: {why}")


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
