"""LAN discovery with multicast DNS, as go-libp2p (kubo) does it: `ww run --mdns`.

go-libp2p's ``p2p/discovery/mdns`` announces the service ``_p2p._udp.local`` under a random
instance name (32 to 63 letters and digits), port 4001 (unused), and one TXT string
``dnsaddr=<multiaddr>/p2p/<peer id>`` per address; a peer that sees one dials the addresses
of those strings.  This module does the same with ``zeroconf`` (already a dependency of
py-libp2p).  py-libp2p 0.8.1's own ``libp2p.discovery.mdns`` is not used: it writes the
second and later addresses under the keys ``dnsaddr2``, ``dnsaddr3`` ..., which go-libp2p
does not read, and it only fills the peerstore.

Bounded: at most :data:`MAX_ADDRS` addresses are read from one announcement and
:data:`MAX_PEERS` peers are dialed in a run (each once, under the host's dial policy); only
a dial that succeeded counts, so that made-up announcements cannot use the 64 up, and a peer
announced at addresses that could not be dialed is tried again when announced at others
(one host claiming an honest peer's id cannot shadow it); the latest :data:`MAX_FAILED`
failed announcements are not tried again.  Announcements wait in a queue of :data:`QUEUE`
(more are dropped), each resolved within :data:`RESOLVE_TIMEOUT`.
"""

from __future__ import annotations

import queue
import secrets
import string
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["SERVICE", "Mdns", "txt_addrs"]

SERVICE = "_p2p._udp.local."
PREFIX = b"dnsaddr="
MAX_ADDRS = 16  # addresses read from one announcement
MAX_PEERS = 64  # peers dialed in one run at most
MAX_FAILED = 1024  # announcements (peer and addresses) remembered as not dialable
QUEUE = 64  # announcements waiting to be resolved
RESOLVE_TIMEOUT = 3.0  # seconds to resolve one announcement
DIAL_TIMEOUT = 10.0  # seconds for one dial


def _instance_name() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32 + secrets.randbelow(32)))


def _txt(strings: list[bytes]) -> bytes:
    """TXT record data: each string prefixed by its length (at most 255 bytes each)."""
    return b"".join(bytes([len(s)]) + s for s in strings if len(s) <= 255)


def txt_addrs(text: bytes) -> dict[str, list[str]]:
    """The ``/ip4|ip6/.../tcp/<port>`` addresses of the ``dnsaddr=`` strings of TXT record
    data, by peer id (at most :data:`MAX_ADDRS` in all); anything else is skipped."""
    import multiaddr

    from ww.core.addrs import check_join_addr
    from ww.core.errors import AddressError

    found: dict[str, list[str]] = {}
    pos = count = 0
    while pos < len(text) and count < MAX_ADDRS:
        size = text[pos]
        item = text[pos + 1:pos + 1 + size]
        pos += 1 + size
        if not item.startswith(PREFIX):
            continue
        count += 1
        try:
            addr = check_join_addr(str(multiaddr.Multiaddr(item[len(PREFIX):].decode())))
        except (AddressError, ValueError, UnicodeDecodeError):
            continue
        transport, peer = addr.rsplit("/p2p/", 1)
        found.setdefault(peer, []).append(transport)
    return found


class Mdns:
    """Announce ``node`` (a started :class:`ww.p2p.host.Node`) on the LAN and dial the peers
    that announce themselves.  :meth:`start` returns at once; the work runs on threads of
    its own (zeroconf's, and one that resolves and dials)."""

    def __init__(self, node: Any) -> None:
        self._node = node
        self._zc: Any = None
        self._names: queue.Queue[str] = queue.Queue(QUEUE)
        self._dialed: set[str] = set()  # peers dialed: each counts against MAX_PEERS
        # (peer, addresses) that could not be dialed, the latest MAX_FAILED
        self._failed: OrderedDict[tuple[str, tuple[str, ...]], None] = OrderedDict()
        self._stopped = threading.Event()
        self.found: list[str] = []  # peer ids dialed, in order

    def start(self) -> None:
        threading.Thread(target=self._run, name="ww-mdns", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        zc, self._zc = self._zc, None
        if zc is not None:
            zc.close()

    def _announcement(self, name: str) -> Any:
        import ipaddress

        from zeroconf import ServiceInfo

        addrs = [a for a in self._node.addrs if a.startswith(("/ip4/", "/ip6/"))]
        ips = sorted({ipaddress.ip_address(a.split("/")[2]).packed for a in addrs})
        return ServiceInfo(SERVICE, f"{name}.{SERVICE}", port=4001,
                           properties=_txt([PREFIX + a.encode() for a in addrs]),
                           server=f"{name}.local.", addresses=ips)

    def _run(self) -> None:
        from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

        zc = self._zc = Zeroconf()
        name = _instance_name()
        me = self

        def changed(zeroconf: Any, service_type: str, name: str,
                    state_change: ServiceStateChange) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                try:
                    me._names.put_nowait(name)
                except queue.Full:
                    pass

        ServiceBrowser(zc, SERVICE, handlers=[changed])
        threading.Thread(target=zc.register_service, args=(self._announcement(name),),
                         name="ww-mdns-announce", daemon=True).start()
        while not self._stopped.is_set():
            try:
                found = self._names.get(timeout=1.0)
            except queue.Empty:
                continue  # a poll of the stop flag; announcements wake it at once
            if f"{name}.{SERVICE}" != found:
                self._resolve(zc, found)

    def _resolve(self, zc: Any, name: str) -> None:
        from libp2p.peer.peerinfo import info_from_p2p_addr

        info = zc.get_service_info(SERVICE, name, timeout=int(RESOLVE_TIMEOUT * 1000))
        if info is None:
            return
        for peer, addrs in txt_addrs(info.text or b"").items():
            tried = (peer, tuple(addrs))
            if peer == self._node.peer_id or peer in self._dialed \
                    or len(self._dialed) >= MAX_PEERS or tried in self._failed:
                continue
            import multiaddr

            info_ = info_from_p2p_addr(multiaddr.Multiaddr(f"{addrs[0]}/p2p/{peer}"))
            info_.addrs = [multiaddr.Multiaddr(a) for a in addrs]
            try:
                self._node.submit(self._node.dial, info_).result(DIAL_TIMEOUT)
            except Exception:  # refused by the dial policy, or unreachable: as any dial
                self._failed[tried] = None  # not tried again at these addresses
                if len(self._failed) > MAX_FAILED:
                    self._failed.popitem(last=False)
                continue
            self._dialed.add(peer)
            self.found.append(peer)
