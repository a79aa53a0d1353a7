"""Attacks on the sharing of a host's places (ww.p2p.admission) by 127.0.0.1 and by any
address: what one address may hold of the handshakes, and which of an address's
connections gives its place to a newcomer.

Real hosts and real libp2p connections of fresh peer ids (:mod:`tests.p2p.sybils`) from
127.0.0.1 and from 127.0.0.2, 127.0.0.3, ... (each counted as a remote address)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from tests.conftest import HANG
from tests.p2p.test_admission_share import _attempt, _counts, _fill, _small, start
from tests.p2p.test_stream_memory import _on_host, _open

pytest.importorskip("libp2p")

__all__ = ["start"]  # the fixture, used by name


def _refused(host: Any) -> dict[str, int]:
    return dict(host.get_network().admission.refused)


def test_127_0_0_1_cannot_hold_every_handshake(start, monkeypatch) -> None:
    """MAX_HANDSHAKES made 4 (HANDSHAKE_TIMEOUT longer than the test): 127.0.0.1 opens 4 TCP
    connections that never start their handshake (a local process, or one peer through a
    local proxy, renewing them as they time out).  Before, 127.0.0.1 (64 places) held all 4
    handshakes, and a peer from 127.0.0.2 was refused ("handshakes") for as long as they
    were renewed: one address kept every newcomer out, though the host held no connection
    set up.  Now an address holds at most half the handshakes (MAX_HANDSHAKES_PER_IP; any
    other address is held to fewer by MAX_PER_IP already): 2 are refused, and the newcomer
    from 127.0.0.2 is let in."""
    _small(monkeypatch, MAX_HANDSHAKES=4, MAX_HANDSHAKES_PER_IP=2,
           HANDSHAKE_TIMEOUT=10 * HANG)
    server = start()
    port = int(server.addrs[0].split("/tcp/")[1].split("/")[0])

    async def main() -> tuple[bool, dict[str, Any], dict[str, int]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                bare = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
                while True:  # until the host has let in or refused all 4 (fail_after bounds)
                    counts = await trio.to_thread.run_sync(_on_host, server, _counts)
                    refused = await trio.to_thread.run_sync(_on_host, server, _refused)
                    if counts["handshakes"] + sum(refused.values()) >= 4:
                        break
                    await trio.sleep(0.02)
                newcomer = await _attempt(server, nursery, "127.0.0.2") is not None
                for sock in bare:
                    await sock.aclose()
            nursery.cancel_scope.cancel()
        return newcomer, counts, refused

    newcomer, counts, refused = trio.run(main)
    assert newcomer
    assert (counts["handshakes"], counts["per_ip"]) == (2, {"127.0.0.1": 2})


def test_a_busy_connection_is_not_trimmed_while_its_address_has_an_idle_one(
        start, monkeypatch) -> None:
    """MAX_INBOUND made 3, MAX_PER_IP 3, EVICT_GRACE longer than the test: 127.0.0.2 (say a
    proxy's address, shared by an honest peer and an attacker) holds 3 connections, the
    oldest with a stream open, the other two idle and newer than EVICT_GRACE.  127.0.0.3
    connects.  Before, with no idle connection past its grace the oldest went, busy as it
    was: an attacker keeping fresh idle connections at the shared address (renewed before
    EVICT_GRACE) had the honest peer's working one cut each time it trimmed the address.
    Now an idle connection goes before a busy one (the oldest idle past its grace first,
    then the oldest idle): the busy one and its stream stay."""
    _small(monkeypatch, MAX_INBOUND=3, MAX_PER_IP=3, EVICT_GRACE=10 * HANG)
    server = start()

    async def main() -> tuple[bool, list[bool], dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANG):
                conns = (await _fill(server, nursery, {"127.0.0.2": 1}))["127.0.0.2"]
                stream = await _open(conns[0])
                assert stream is not None
                conns += (await _fill(server, nursery, {"127.0.0.2": 2}))["127.0.0.2"]
                newcomer = await _attempt(server, nursery, "127.0.0.3") is not None
                if newcomer:  # (else the assertions below fail)
                    deadline = time.monotonic() + HANG
                    while (sum(c.event_shutting_down.is_set() for c in conns) < 1
                           and time.monotonic() < deadline):
                        await trio.sleep(0.02)  # until the host has hung up on one
                alive = [not c.event_shutting_down.is_set() for c in conns]
                counts = await trio.to_thread.run_sync(_on_host, server, _counts)
            nursery.cancel_scope.cancel()
        return newcomer, alive, counts

    newcomer, alive, counts = trio.run(main)
    assert newcomer
    assert alive == [True, False, True]
    assert counts["ip_streams"] == {"127.0.0.2": 1}
