"""Multiaddr text forms and the kubo RPC address."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ww.core.multiaddr import DEFAULT_KUBO_API, MultiaddrError, parse, to_http_url
from ww.ipfs.api import IpfsError

PEER = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("/ip4/127.0.0.1/tcp/5001/http", "http://127.0.0.1:5001"),
        (DEFAULT_KUBO_API, "http://localhost:5001"),
        ("/ip4/127.0.0.1/tcp/5001", "http://127.0.0.1:5001"),  # kubo's own Addresses.API form
        ("/ip6/::1/tcp/5001/http", "http://[::1]:5001"),
        ("/dns6/node.example/tcp/443/https", "https://node.example:443"),
        ("/dns/node.example/tcp/443/tls/http", "https://node.example:443"),
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("http://localhost:5001/", "http://localhost:5001"),
        ("https://[::1]:5443", "https://[::1]:5443"),
        (" /ip4/10.0.0.1/tcp/1/http\n", "http://10.0.0.1:1"),
    ],
)
def test_to_http_url(address: str, url: str):
    assert to_http_url(address) == url


@pytest.mark.parametrize(
    "text",
    [
        "/ip4/127.0.0.1/tcp/4001",
        f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}",
        f"/ip6/2001:db8::1/udp/4001/quic-v1/p2p/{PEER}",
        "/dns4/localhost/tcp/5001/http",
        "/unix/run/kubo/api.sock",
        f"/dnsaddr/bootstrap.example/p2p/{PEER}",
    ],
)
def test_parse_and_format_round_trip(text: str):
    assert str(parse(text)) == text


def test_ipfs_is_the_old_name_of_p2p():
    addr = parse(f"/ip4/1.2.3.4/tcp/4001/ipfs/{PEER}")
    assert addr.peer_id == PEER
    assert str(addr) == f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}"


def test_unix_path_takes_the_rest():
    addr = parse("/unix/tmp/a b/kubo.sock")
    assert addr.value("unix") == "/tmp/a b/kubo.sock"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ip4/1.2.3.4", "expected a multiaddr"),
        ("", "expected a multiaddr"),
        ("/ip4/1.2.3.400/tcp/1", "not an IPv4 address"),
        ("/ip6/zz::1/tcp/1", "not an IPv6 address"),
        ("/ip4/1.2.3.4/tcp/65536", "not a tcp port"),
        ("/ip4/1.2.3.4/tcp/-1", "not a tcp port"),
        ("/ip4/1.2.3.4/tcp", "/tcp needs a value"),
        ("/carrier-pigeon/1", "unknown protocol 'carrier-pigeon'"),
        ("/ip4/1.2.3.4/tcp/1/p2p/notapeer", "invalid peer id"),
        ("/dns4/bad name/tcp/1", "not a DNS name"),
        ("/unix", "/unix needs a path"),
        ("/unix/tmp/kubo.sock", "not an HTTP address"),
        ("/ip4/1.2.3.4/udp/5001/http", "not an HTTP address"),
        ("/ip4/1.2.3.4/tcp/5001/ws", "unexpected /ws"),
        ("ftp://host:21", "expected a multiaddr"),
        ("http://host:99999", "invalid address"),
        ("http://host:5001/api/v0", "only scheme, host and port"),
    ],
)
def test_bad_addresses_give_one_line_errors(text: str, message: str):
    with pytest.raises(MultiaddrError, match=message) as info:
        to_http_url(text)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, IpfsError)


def test_parsing_goes_through_pypi_multiaddr(monkeypatch: pytest.MonkeyPatch):
    """One multiaddr implementation in the process: ww's parse is PyPI's (the one libp2p uses)."""
    import multiaddr

    from ww.core import multiaddr as glue

    seen: list[str] = []
    real = multiaddr.Multiaddr

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, addr, *args, **kwargs):  # noqa: ANN001
            seen.append(str(addr))
            super().__init__(addr, *args, **kwargs)

    monkeypatch.setattr(glue._lib, "Multiaddr", Spy)
    addr = parse(f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}")
    assert seen == [f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}"]
    assert isinstance(addr.lib, real)
    assert addr.lib.get_peer_id() == PEER


def test_no_other_multiaddr_module_in_ww():
    """No ww module of its own parses multiaddrs: the only one is the glue over PyPI's."""
    import importlib.util
    import pkgutil

    import ww

    names = [m.name for m in pkgutil.walk_packages(ww.__path__, "ww.")
             if "multiaddr" in m.name.rsplit(".", 1)[-1]]
    assert names == ["ww.core.multiaddr"]
    assert importlib.util.find_spec("ww.ipfs.multiaddr") is None


def test_an_address_the_library_misreads_is_refused():
    """PyPI multiaddr 0.2.0 writes /ip6zone's value without a length: eth0 reads back as ip4."""
    with pytest.raises(MultiaddrError, match="/ip6zone is not supported"):
        parse("/ip6zone/eth0/ip6/fe80::1/tcp/1")
    # (found by the hypothesis test below: a TypeError from the library's reader)
    with pytest.raises(MultiaddrError, match="/ip6zone is not supported"):
        parse("/ip6zone/\x80\U00010000")


_PROTOCOLS = ("ip4 ip6 ip6zone dns dns4 dnsaddr tcp udp p2p ipfs certhash unix http tls ws quic-v1 "
              "onion3 garlic32 memory ipcidr http-path").split()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PROTOCOLS), st.one_of(st.none(), st.text(max_size=20))),
                min_size=1, max_size=5))
def test_any_text_is_parsed_or_refused_with_a_one_line_multiaddr_error(
    pieces: list[tuple[str, str | None]],
) -> None:
    """No exception of the library's (or a TypeError, IndexError, ...) reaches ww's caller."""
    text = "".join(f"/{proto}" + ("" if value is None else f"/{value}") for proto, value in pieces)
    try:
        parse(text)
    except MultiaddrError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize("prefix", ["/p2p/1", "/p2p/k", "/p2p/f", "/ip4/1.2.3.4/tcp/1/p2p/z"])
def test_an_address_longer_than_any_libp2p_uses_is_refused_before_it_is_read(prefix: str):
    """(found by attack) The library decodes a ``/p2p/`` value in time quadratic in its
    length: 100,000 characters took 10 s, a base36 one minutes, on the event loop of the
    host serving a cell's ``P2P.dial`` (check_dial_addr), or in a worker for IPFS
    ``connect`` and ``swarm/connect``.  A text over MAX_TEXT is refused unread, in one short
    line; the longest address ww takes still parses."""
    from ww.core.addrs import check_dial_addr
    from ww.core.errors import AddressError

    with pytest.raises(MultiaddrError, match="longer than 1024") as info:
        parse(prefix + "z" * 1_000_000)
    assert len(str(info.value)) < 200
    with pytest.raises(AddressError, match="longer than 1024"):
        check_dial_addr(prefix + "z" * 1_000_000)
    from ww.core.multiaddr import MAX_TEXT

    unix = "/unix/" + "d" * (MAX_TEXT - len("/unix/"))
    assert parse(unix).value("unix") == "/" + "d" * (MAX_TEXT - len("/unix/"))
