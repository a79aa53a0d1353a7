"""`ww run --node-key FILE|new`: two `ww run`s of one $WW_HOME on one machine as two peers.

By default every `ww run` of a $WW_HOME is the one peer of its node key; with --node-key each
run is the peer its key makes it, so two cells on one machine can dial each other.  Real
`ww run` hosts on 127.0.0.1, real cells, real libp2p."""

from __future__ import annotations

from tests.conftest import run_ww
from tests.p2p.conftest import EXPORTER, LOOPBACK

# Prints its own peer id, then dials argv[1] and prints the answer.
DIALER = """
import asyncio, sys
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        peer, addrs = await s.p2p.id()
        print(peer, flush=True)
        remote = await s.p2p.dial_service(sys.argv[1])
        print(await remote.call("echo", "hello", "from", peer), flush=True)

asyncio.run(main())
"""


def _peer(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[1]


def test_two_runs_of_one_home_are_two_peers_that_dial_each_other(start_host, cell_file, home,
                                                                 tmp_path):
    env = home("one")  # both hosts below use this one $WW_HOME
    made = run_ww("idgen", "-o", str(tmp_path / "node.key"), env=env)
    assert made.returncode == 0, made.stderr
    b_peer = made.stdout.strip()
    b = start_host("one", "--with-p2p", "--node-key", str(tmp_path / "node.key"),
                   "--listen", LOOPBACK, cell_file(EXPORTER, "exporter.py"))
    assert _peer(b.addr) == b_peer

    a = start_host("one", "--with-p2p", "--node-key", "new", "--listen", LOOPBACK,
                   "--allow-dial", "127.0.0.0/8", cell_file(DIALER, "dialer.py"), b.addr)
    a_peer = a.addr
    assert a.readline() == f"hello from {a_peer}"
    status, err = a.stop()
    assert status == 0, err

    home_peer = run_ww("id", env=env).stdout.splitlines()[0]
    assert len({a_peer, b_peer, home_peer}) == 3  # `new` is neither b's nor $WW_HOME's key
    assert a_peer.startswith("12D3KooW")

    # Without --node-key a run is the peer of $WW_HOME's key, as every other run of it is,
    # and a cell of one cannot dial a cell of another: what --node-key is for.
    c = start_host("one", "--with-p2p", "--listen", LOOPBACK,
                   cell_file(EXPORTER, "exporter.py"))
    assert _peer(c.addr) == home_peer
    r = run_ww("run", "--with-p2p", "--listen", LOOPBACK, "--allow-dial", "127.0.0.0/8",
               cell_file(DIALER, "dialer.py"), c.addr, env=env)
    assert r.stdout.splitlines() == [home_peer]
    assert r.returncode != 0
    assert f"p2p: {c.addr} is this host itself" in r.stderr, r.stderr


def test_a_fresh_node_key_per_run(start_host, cell_file):
    peers = set()
    for _ in range(2):
        host = start_host("one", "--with-p2p", "--node-key", "new", "--listen", LOOPBACK,
                          cell_file(EXPORTER, "exporter.py"))
        peers.add(_peer(host.addr))
        status, err = host.stop()
        assert status == 0, err
    assert len(peers) == 2


def test_the_embedded_ipfs_node_is_the_peer_of_the_node_key(make_cell, tmp_path, ww_home):
    """The IPFS capability's id() names the run's node key, not $WW_HOME's."""
    key = tmp_path / "node.key"
    peer = run_ww("idgen", "--raw", "-o", str(key)).stdout.strip()
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            print(s.ipfs.id().id)
    """)
    r = run_ww("run", "--with-ipfs", "--node-key", str(key), cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout == peer + "\n"
    r = run_ww("run", "--with-ipfs", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout == run_ww("id").stdout.splitlines()[0] + "\n"


def test_sub_cells_get_the_parents_node_key(make_cell, tmp_path):
    """A sub-cell's `ww run` is given the parent's --node-key: a file makes it the same peer
    as its parent, `new` a peer of its own (never $WW_HOME's).  Seen through the IPFS
    capability's id(), whose node a sub-cell's `ww run` opens with that key."""
    child = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            print("child", s.ipfs.id().id, flush=True)
    """, name="child.py")
    parent = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            print("parent", s.ipfs.id().id, flush=True)
            child = s.exec.spawn({child!r}, ipfs=True)
            print(child.stdout.read_all().decode(), end="", flush=True)
            print("status", child.wait(), flush=True)
    """, name="parent.py")
    key = tmp_path / "node.key"
    made = run_ww("idgen", "-o", str(key)).stdout.strip()
    home_peer = run_ww("id").stdout.splitlines()[0]

    def ids(node_key: str) -> dict[str, str]:
        r = run_ww("run", "--with-ipfs", "--with-exec", "--exec-allow", child,
                   "--node-key", node_key, parent, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        seen = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        assert seen.pop("status") == "0", r.stderr
        return seen

    assert ids("node.key") == {"parent": made, "child": made}  # relative to ww run's cwd
    fresh = ids("new")
    assert len({fresh["parent"], fresh["child"], home_peer, made}) == 4
