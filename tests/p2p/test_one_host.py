"""One libp2p host per `ww run`: `/ww/0.1.0` and Bitswap on the same host, and `--peer`
(`ww import`, `ww run`, `ww cat`, `ww ls`, `ww pin add`).

Real `ww run` hosts on 127.0.0.1 (port 0), each with its own $WW_HOME; they dial only each
other's loopback addresses.  Fetching from a real kubo peer with `--peer` is in
tests/ipfs/test_bitswap_kubo.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HANG, WW
from tests.p2p.conftest import LOOPBACK

pytest.importorskip("libp2p")

PEER = "12D3KooWHzee5NhcNJVjZhUFZ23uqbHPzTkCfvD4yMj2mWmVEEWE"  # nobody we can reach
MISSING = "/ipfs/QmPfT44cZdJm6svAxQ2Fe9J6DD3cuZNAj2fwbrzUPXXBqq"  # content nobody has

# Serves its $WW_HOME over the host `ww run` started: prints its IPFS address, then waits
# for stdin to close (or HANG seconds: a bound against a leak only).
SERVER = """
import asyncio, os
import ww.cell

async def main():
    async with ww.cell.connect() as s:
        print((await s.ipfs.id()).addresses[0], flush=True)
        loop = asyncio.get_running_loop()
        eof = asyncio.Event()
        loop.add_reader(0, lambda: os.read(0, 4096) or eof.set())
        try:
            await asyncio.wait_for(eof.wait(), HANG)
        except TimeoutError:
            pass

asyncio.run(main())
""".replace("HANG", str(HANG))

# argv: the peer it --join'ed, and a CID only that peer has.  Prints its IPFS address, then
# one JSON line of what it saw, then waits for stdin to close (or HANG seconds).
CLIENT = """
import asyncio, hashlib, json, os, sys
import ww.cell

async def main():
    joined, cid = sys.argv[1], sys.argv[2]
    async with ww.cell.connect() as s:
        me = await s.ipfs.id()
        print(me.addresses[0], flush=True)
        peer = joined.rsplit("/p2p/", 1)[1]
        for _ in range(HANG * 10):  # --join connects in the background: waited for
            peers = await s.ipfs.peers()
            if any(p.id == peer for p in peers):
                break
            await asyncio.sleep(0.1)
        await s.ipfs.connect(joined)  # connected already: no second connection
        data = await s.ipfs.cat(cid)
        p2p_id, p2p_addrs = await s.p2p.id()
        print(json.dumps({"id": me.id, "addresses": me.addresses, "protocols": me.protocols,
                          "peers": [p.id for p in await s.ipfs.peers()],
                          "p2p": [p2p_id, p2p_addrs],
                          "sha256": hashlib.sha256(data).hexdigest()}), flush=True)
        loop = asyncio.get_running_loop()
        eof = asyncio.Event()
        loop.add_reader(0, lambda: os.read(0, 4096) or eof.set())
        try:
            await asyncio.wait_for(eof.wait(), HANG)
        except TimeoutError:
            pass

asyncio.run(main())
""".replace("HANG", str(HANG))


def _tcp_sockets(pid: int) -> list[tuple[str, int, int]]:
    """(state, local port, remote port) of every TCP socket process ``pid`` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                    found.append(("LISTEN" if fields[3] == "0A" else fields[3], local, remote))
    return found


def _port(addr: str) -> int:
    return int(addr.split("/tcp/", 1)[1].split("/", 1)[0])


def _export(tmp_path: Path, env: dict[str, str], name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    out = subprocess.run([WW, "export", str(tmp_path / name)], capture_output=True, text=True,
                         env=env, timeout=HANG)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().removeprefix("/ipfs/")


def test_joined_peer_is_an_ipfs_peer_of_the_one_host(tmp_path: Path, home, start_host,
                                                     cell_file) -> None:
    data_a = hashlib.shake_256(b"a").digest(700_000)  # several blocks
    data_b = hashlib.shake_256(b"b").digest(300_000)
    cid_a = _export(tmp_path, home("a"), "only-a", data_a)
    cid_b = _export(tmp_path, home("b"), "only-b", data_b)
    a = start_host("a", "--with-ipfs", "--listen", LOOPBACK, cell_file(SERVER, "server.py"))
    b = start_host("b", "--with-p2p", "--with-ipfs", "--listen", LOOPBACK, "--join", a.addr,
                   cell_file(CLIENT, "client.py"), a.addr, cid_a)
    seen = json.loads(b.readline())
    # The IPFS capability sees the p2p host: its addresses, its protocols, its --join peer.
    assert seen["addresses"] == [b.addr] == seen["p2p"][1]
    assert seen["id"] == seen["p2p"][0]
    assert "/ww/0.1.0" in seen["protocols"] and "/ipfs/bitswap/1.2.0" in seen["protocols"]
    assert seen["peers"] == [a.addr.rsplit("/p2p/", 1)[1]]
    assert seen["sha256"] == hashlib.sha256(data_a).hexdigest()  # fetched from the joined peer
    # One host: one listening socket, one connection to the peer (the --join; ipfs.connect
    # and Bitswap went over it).
    sockets = _tcp_sockets(b.proc.pid)
    assert [s for s in sockets if s[0] == "LISTEN"] == [("LISTEN", _port(b.addr), 0)]
    assert len([s for s in sockets if s[0] != "LISTEN" and s[2] == _port(a.addr)]) == 1
    # ... and it serves Bitswap to anyone: `ww import --peer` from a fresh $WW_HOME.
    out = subprocess.run([WW, "import", "--peer", b.addr, f"/ipfs/{cid_b}",
                          str(tmp_path / "got")], capture_output=True, text=True,
                         env=home("c"), timeout=HANG)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "got").read_bytes() == data_b
    status, stderr = b.stop()
    assert status == 0, stderr
    assert a.stop()[0] == 0


def test_ww_import_and_ww_run_with_peer_fetch_from_a_ww_node(tmp_path: Path, home, start_host,
                                                               cell_file) -> None:
    program = tmp_path / "hello.sh"
    program.write_text("#!/bin/sh\necho hello over bitswap \"$@\"\n")
    program.chmod(0o755)
    cid = _export(tmp_path, home("a"), "hello.sh", program.read_bytes())
    a = start_host("a", "--with-ipfs", "--listen", LOOPBACK, cell_file(SERVER, "server.py"))
    got = subprocess.run([WW, "import", "--peer", a.addr, f"/ipfs/{cid}", str(tmp_path / "x")],
                         capture_output=True, text=True, env=home("b"), timeout=HANG)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "x").read_bytes() == program.read_bytes()
    ran = subprocess.run([WW, "run", "--peer", a.addr, f"/ipfs/{cid}", "and", "ww"],
                         capture_output=True, text=True, env=home("c"), timeout=HANG)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello over bitswap and ww\n"
    # The environment form, space-separated; an unreachable peer beside a good one is fine.
    env = {**home("d"), "WW_IPFS_PEERS": f"/ip4/127.0.0.1/tcp/1/p2p/{PEER} {a.addr}"}
    again = subprocess.run([WW, "import", f"/ipfs/{cid}", str(tmp_path / "y")],
                           capture_output=True, text=True, env=env, timeout=HANG)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "y").read_bytes() == program.read_bytes()
    assert a.stop()[0] == 0


def test_cat_ls_and_pin_add_with_peer_fetch_from_a_ww_node(tmp_path: Path, home, start_host,
                                                             cell_file, ww) -> None:
    """`ww cat`, `ww ls` and `ww pin add --peer` read from a serving `ww run` what their own
    repository lacks; `pin add` stores the whole DAG, so it stays readable with the peer gone."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    big = hashlib.shake_256(b"big").digest(600_000)  # three chunks
    (tree / "big.bin").write_bytes(big)
    (tree / "sub" / "note.txt").write_text("a note\n")
    out = subprocess.run([WW, "export", str(tree)], capture_output=True, text=True,
                         env=home("a"), timeout=HANG)
    assert out.returncode == 0, out.stderr
    root = out.stdout.strip()
    listed = ww("ls", root, env=home("a"))
    assert listed.returncode == 0, listed.stderr
    a = start_host("a", "--with-ipfs", "--listen", LOOPBACK, cell_file(SERVER, "server.py"))

    cat = subprocess.run([WW, "cat", "--peer", a.addr, f"{root}/big.bin"], capture_output=True,
                         env=home("b"), timeout=HANG)
    assert cat.returncode == 0, cat.stderr
    assert hashlib.sha256(cat.stdout).digest() == hashlib.sha256(big).digest()
    ls = ww("ls", "--peer", a.addr, root, env=home("c"))
    assert ls.returncode == 0, ls.stderr
    assert ls.stdout == listed.stdout
    pinned = ww("pin", "add", "--peer", a.addr, root, env=home("d"))
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout == f"pinned {root.removeprefix('/ipfs/')} recursively\n"
    assert a.stop()[0] == 0

    # The peer is gone: what pin add fetched is all in d's repository, and verifies.
    again = ww("cat", f"{root}/sub/note.txt", env=home("d"))
    assert again.returncode == 0 and again.stdout == "a note\n", again.stderr
    check = ww("repo", "check", env=home("d"))
    assert check.returncode == 0, check.stdout + check.stderr
    # ... and without a peer, what the repository lacks is one line, exit 1.
    lost = ww("cat", f"{root}/sub/note.txt", env=home("e"))
    assert lost.returncode == 1 and lost.stdout == ""
    assert lost.stderr.count("\n") == 1 and "not in the local repository" in lost.stderr


@pytest.mark.parametrize("command", [["cat"], ["ls"], ["pin", "add"]])
def test_a_missing_block_without_peers_is_one_line_and_exit_1(command: list[str], ww) -> None:
    out = ww(*command, MISSING, env={**os.environ, "WW_IPFS_PEERS": ""})
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    assert out.stderr == (f"ww: block {MISSING.removeprefix('/ipfs/')} is not in the local "
                          "repository\n")


@pytest.mark.parametrize("args", [
    ["cat", "--peer", "/ip4/127.0.0.1/tcp/4001", MISSING],  # no peer id
    ["ls", "--peer", PEER, MISSING],  # a peer id alone
    ["pin", "add", "--peer", f"/dns4/example.com/tcp/4001/p2p/{PEER}", MISSING],  # a name
    ["cat", "--ipfs", "/ip4/127.0.0.1/tcp/5001/http", "--peer",
     f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}", MISSING],  # kubo dials its own peers
    ["import", "--peer", "/ip4/127.0.0.1/tcp/4001", MISSING],  # no peer id
    ["import", "--peer", f"/dns4/example.com/tcp/4001/p2p/{PEER}", MISSING],  # a name
    ["import", "--peer", PEER, MISSING],  # a peer id alone
    ["import", "--peer", "/ip4/127.0.0.1/tcp/4001/p2p/not-a-peer-id", MISSING],
    ["run", "--peer", "garbage", "/bin/true"],
    ["run", "--ipfs", "/ip4/127.0.0.1/tcp/5001/http", "--peer",
     f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}", "/bin/true"],  # kubo dials its own peers
])
def test_a_bad_peer_is_a_one_line_usage_error(args: list[str], ww) -> None:
    out = ww(*args)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.splitlines()) == 1 and "--peer" in out.stderr, out.stderr


def test_a_bad_peer_in_the_environment_names_the_variable(ww) -> None:
    out = ww("run", "/bin/true", env={**os.environ, "WW_IPFS_PEERS": "/ip4/127.0.0.1/tcp/1"})
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and "WW_IPFS_PEERS" in out.stderr, out.stderr


@pytest.mark.parametrize("command", [["import"], ["run"], ["cat"], ["ls"], ["pin", "add"]])
def test_an_unreachable_peer_is_one_line_and_exit_1(command: list[str], ww,
                                                    tmp_path: Path) -> None:
    dest = [str(tmp_path / "x")] if command == ["import"] else []
    out = ww(*command, "--peer", f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", MISSING, *dest)
    assert out.returncode == 1, out.stderr
    assert len(out.stderr.splitlines()) == 1 and "no peer could be reached" in out.stderr
    assert not (tmp_path / "x").exists()


def test_ww_run_fetches_its_program_from_a_joined_peer(tmp_path: Path, home, start_host,
                                                       cell_file, ww) -> None:
    program = tmp_path / "hi.sh"
    program.write_text("#!/bin/sh\necho hi from the joined peer\n")
    program.chmod(0o755)
    cid = _export(tmp_path, home("a"), "hi.sh", program.read_bytes())
    a = start_host("a", "--with-ipfs", "--listen", LOOPBACK, cell_file(SERVER, "server.py"))
    ran = ww("run", "--listen", LOOPBACK, "--join", a.addr, f"/ipfs/{cid}", env=home("b"))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hi from the joined peer\n"
    assert a.stop()[0] == 0
