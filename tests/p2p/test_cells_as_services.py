"""Cells as services on /ww/0.1.0: two real `ww run` hosts on 127.0.0.1, real cells, real
libp2p (TCP + Noise + Yamux), `ww call` and `ww id` as an operator uses them."""

from __future__ import annotations

import asyncio
import socket

import capnp
import pytest

from tests.conftest import HANG, run_ww
from tests.p2p.conftest import LOOPBACK, ww_call

DIALER = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        print("granted", ",".join(s.granted), flush=True)
        remote = await s.p2p.dial_service(sys.argv[1])
        print(await remote.call("echo", "from", "cell", "A"), flush=True)
        print(await remote.call("upper", "again"), flush=True)
        try:
            await remote.call("format-disk")
        except ww.cell.RemoteError as e:
            print("error:", repr(str(e)), flush=True)

asyncio.run(main())
"""


def test_a_cell_calls_a_cell_on_another_host(exporter, start_host, cell_file):
    b = exporter()
    assert b.addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in b.addr
    # b listens on loopback, which a cell may dial only if the operator allows it.
    a = start_host("a", "--with-p2p", "--listen", LOOPBACK, "--allow-dial", "127.0.0.0/8",
                   cell_file(DIALER, "dialer.py"), b.addr)
    assert a.addr == "granted p2p"
    assert a.readline() == "from cell A"
    assert a.readline() == "AGAIN"
    # One line, the remote cell's error itself: none of its traceback or source paths.
    assert a.readline() == "error: \"ValueError: unknown method 'format-disk'\""
    status, err = a.stop()
    assert status == 0, err
    assert "Traceback" not in err


def test_ww_call_calls_the_exported_service_from_the_shell(exporter):
    b = exporter()
    r = ww_call(b.addr, "echo", "hello", "--not-a-flag", "world")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello --not-a-flag world\n"
    r = ww_call(b.addr, "nope")
    assert r.returncode == 1
    assert r.stderr.strip() == "ww: remote error: ValueError: unknown method 'nope'"


def test_a_remote_caller_gets_the_export_and_nothing_of_the_host(exporter):
    """A peer speaking /ww/0.1.0 by hand: the bootstrap is a Gateway whose one method gives
    the export; casting either to the host's own interfaces gets it nothing."""
    from ww.core.identity import Identity, PrivateKey
    from ww.p2p.host import Node
    from ww.schema import load

    cell = load("cell")
    b = exporter()
    node = Node(Identity.from_private_key(PrivateKey.generate()), listen=[])
    node.start()

    async def probe() -> list[str]:
        sock = await asyncio.wrap_future(node.open(b.addr))
        client = capnp.TwoPartyClient(await capnp.AsyncIoStream.create_connection(sock=sock))
        seen = []
        bootstrap = client.bootstrap()
        export = (await bootstrap.cast_as(cell.Gateway).service()).service
        seen.append((await export.as_interface(cell.Service).call("echo", ["ok"])).result)
        attempts = {
            "login on the bootstrap": lambda: bootstrap.cast_as(cell.Host).login(),
            "login on the export": lambda: export.as_interface(cell.Host).login(),
            "dial through the export": lambda: export.as_interface(cell.P2P).dial(b.addr),
            "console on the export": lambda: export.as_interface(cell.Console).ping(b"x"),
            "ipfs on the bootstrap": lambda: bootstrap.cast_as(load("ipfs").IPFS).id(),
        }
        for what, attempt in attempts.items():
            try:
                await attempt()
                seen.append(f"{what}: SUCCEEDED")
            except capnp.KjException as e:
                assert "not implemented" in e.description, e.description
                seen.append(f"{what}: refused")
        client.close()
        sock.close()
        return seen

    try:
        seen = asyncio.run(capnp.run(asyncio.wait_for(probe(), HANG)))
    finally:
        node.stop()
    assert seen == ["ok"] + [f"{what}: refused" for what in (
        "login on the bootstrap", "login on the export", "dial through the export",
        "console on the export", "ipfs on the bootstrap")]


def test_the_export_ends_when_the_cell_hangs_up_and_the_host_when_it_exits(exporter):
    b = exporter("hangup")
    assert b.readline() == "hung up"  # fd 3 closed; the cell itself runs on
    r = ww_call(b.addr, "echo", "x")
    assert r.returncode == 1
    assert "serves nothing on /ww/0.1.0" in r.stderr or "exports nothing" in r.stderr, r.stderr
    status, err = b.stop()
    assert status == 0, err
    r = ww_call(b.addr, "echo", "x")
    assert r.returncode == 1
    # Refused at once, not the call's --timeout running out ("no answer within").
    assert r.stderr.startswith("ww: p2p: cannot reach "), r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_no_p2p_capability_without_the_flag(start_host, cell_file, make_cell):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            print("granted", s.granted)
            try:
                s.p2p
            except ww.cell.CapabilityNotGranted as e:
                print("caught:", e)
    """)
    r = run_ww("run", "--with-console", cell)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "granted ['console']"
    assert lines[1].startswith("caught: the 'p2p' capability was not granted")
    assert "--with-p2p" in lines[1]

    # A host that listens (--listen) but whose cell was not granted p2p serves nothing.
    listener = start_host("b", "--listen", LOOPBACK, cell_file("""
        import asyncio, os, sys
        import ww.cell
        async def main():
            async with ww.cell.connect() as s:
                print("granted", s.granted, flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        asyncio.run(main())
    """, "plain.py"))
    assert listener.addr == "granted []"
    announced = listener.stderr_line()
    assert announced.startswith("ww: p2p: listening on /ip4/127.0.0.1/tcp/")
    r = ww_call(announced.rsplit(" ", 1)[1], "echo", "x")
    assert r.returncode == 1
    assert "serves nothing on /ww/0.1.0" in r.stderr, r.stderr


def test_join_lets_a_cell_dial_a_peer_by_its_id_alone(exporter, start_host, cell_file):
    b = exporter()
    peer = b.addr.rsplit("/p2p/", 1)[1]
    a = start_host("a", "--with-p2p", "--listen", LOOPBACK, "--join", b.addr,
                   cell_file("""
        import asyncio, sys
        import ww.cell
        async def main():
            async with ww.cell.connect() as s:
                for _ in range(3000):  # --join connects in the background: waited for
                    try:
                        remote = await s.p2p.dial_service(sys.argv[1])
                        break
                    except ww.cell.RemoteError:
                        await asyncio.sleep(0.1)
                print(await remote.call("echo", "joined"), flush=True)
        asyncio.run(main())
    """, "joiner.py"), peer)
    assert a.addr == "joined"
    status, err = a.stop()
    assert status == 0, err


def test_ww_id_prints_the_node_peer_id_and_listen_addresses(ww_home):
    from ww.core.identity import load_or_create

    r = run_ww("id")
    assert r.returncode == 0, r.stderr
    peer = load_or_create(ww_home).peer_id
    assert r.stdout.splitlines() == [peer, f"/ip4/127.0.0.1/tcp/2020/p2p/{peer}"]
    r = run_ww("id", "--listen", "/ip4/0.0.0.0/tcp/4001", "--listen", "/ip6/::1/tcp/4002")
    assert r.stdout.splitlines() == [peer, f"/ip4/0.0.0.0/tcp/4001/p2p/{peer}",
                                     f"/ip6/::1/tcp/4002/p2p/{peer}"]


@pytest.mark.parametrize("flag, value", [
    ("--listen", "/ip4/127.0.0.1/udp/1"),
    ("--listen", "/dns4/localhost/tcp/1"),
    ("--join", "/ip4/127.0.0.1/tcp/1"),
    ("--join", "/ip4/300.0.0.1/tcp/1/p2p/12D3KooWBnFkQeZQnH7HbGeDgRvoLbvRm3AuYxP6tXei8RCqcnPJ"),
])
def test_bad_p2p_addresses_are_usage_errors(flag, value):
    r = run_ww("run", flag, value, "/bin/true")
    assert r.returncode == 2
    assert flag in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_listen_address_in_use_fails_before_the_cell_starts(make_cell):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_ww("run", "--with-p2p", "--listen", f"/ip4/127.0.0.1/tcp/{port}",
                   make_cell("print('the cell ran')"))
    assert r.returncode == 1
    assert r.stdout == ""
    assert f"cannot listen on /ip4/127.0.0.1/tcp/{port}" in r.stderr


def test_ww_call_to_an_unreachable_peer_fails_in_one_line(ww_home):
    from ww.core.identity import PrivateKey

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    peer = PrivateKey.generate().peer_id
    r = ww_call(f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}", "echo")
    assert r.returncode == 1
    assert r.stderr.startswith(f"ww: p2p: cannot reach /ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
    r = ww_call("/ip4/127.0.0.1/tcp/1", "echo")
    assert r.returncode == 2


def test_a_port_another_ww_host_listens_on_is_in_use(exporter, make_cell, home):
    """py-libp2p listens with SO_REUSEPORT; a second host must not share the port."""
    b = exporter()  # listens on 127.0.0.1:<free port>, holding it while it runs
    port = b.addr.split("/tcp/")[1].split("/")[0]
    r = run_ww("run", "--with-p2p", "--listen", f"/ip4/127.0.0.1/tcp/{port}",
               make_cell("print('the cell ran')"), env=home("second"))
    assert r.returncode == 1
    assert r.stdout == ""
    assert f"cannot listen on /ip4/127.0.0.1/tcp/{port}" in r.stderr


def test_ww_call_timeout_must_be_finite_and_positive():
    from ww.core.identity import PrivateKey

    peer = PrivateKey.generate().peer_id
    for bad in ("nan", "inf", "0", "-1"):
        r = ww_call("--timeout", bad, f"/ip4/127.0.0.1/tcp/1/p2p/{peer}", "echo")
        assert r.returncode == 2, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
