"""`ww run --ipfs <ww daemon's API>`: the kubo backend against a real server, end to end."""

from __future__ import annotations

import os

from tests.conftest import run_ww


def test_a_cell_adds_and_reads_through_the_ipfs_capability_with_the_daemon_as_backend(
        daemon, make_cell, tmp_path):
    data = bytes(range(256)) * 3000  # several chunks
    cell = make_cell("""
        import hashlib, sys, ww.cell
        data = bytes(range(256)) * 3000
        with ww.cell.session() as s:
            cid = s.ipfs.add(data)
            print(cid)
            back = s.ipfs.cat("/ipfs/" + cid)
            print(hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest())
            print(s.ipfs.cat("/ipfs/" + cid, offset=256, length=4).hex())
    """)
    # the cell's ww run has a repository of its own: the content can only be the daemon's
    other_home = tmp_path / "elsewhere"
    r = run_ww("run", "--with-ipfs", "--ipfs", daemon.api, cell,
               env={**os.environ, "WW_HOME": str(other_home)})
    assert r.returncode == 0, r.stderr
    cid, same, piece = r.stdout.split()
    assert same == "True" and piece == "00010203"
    (tmp_path / "data.bin").write_bytes(data)
    r = run_ww("export", "-n", str(tmp_path / "data.bin"))  # ww's own CID of the same bytes
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1].removeprefix("/ipfs/") == cid
    # the daemon holds and pins it; ww cat through --ipfs reads it back
    pins = daemon.json("pin/ls", type="recursive")[0]["Keys"]
    assert cid in pins
    r = run_ww("cat", "--ipfs", daemon.api, f"/ipfs/{cid}", text=False,
               env={**os.environ, "WW_HOME": str(other_home)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_ww_run_ipfs_at_kubos_default_address_reaches_ww_daemons_default(ww_home, make_cell,
                                                                          tmp_path):
    """The address kubo's documentation uses, /ip4/127.0.0.1/tcp/5001/http, is where a plain
    `ww daemon` listens, its gateway on kubo's 8080 (skipped when something else holds a
    port)."""
    import socket

    import pytest

    from .conftest import Daemon

    for port in (5001, 8080):  # kubo's API and gateway
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip(f"127.0.0.1:{port} is taken by another program")
    try:
        daemon = Daemon(ww_home, api=None, gateway=None)
    except AssertionError as err:  # taken between the probe and the start
        pytest.skip(f"127.0.0.1:5001 or 8080 was taken meanwhile: {err}")
    try:
        assert daemon.api == "/ip4/127.0.0.1/tcp/5001/http"
        assert daemon.gateway == "/ip4/127.0.0.1/tcp/8080/http"
        cell = make_cell("""
            import ww.cell
            with ww.cell.session() as s:
                print(s.ipfs.cat("/ipfs/" + s.ipfs.add(b"at kubo's address\\n")).decode(), end="")
        """)
        r = run_ww("run", "--with-ipfs", "--ipfs", "/ip4/127.0.0.1/tcp/5001/http", cell,
                   env={**os.environ, "WW_HOME": str(tmp_path / "elsewhere")})
        assert r.returncode == 0, r.stderr
        assert r.stdout == "at kubo's address\n"
    finally:
        daemon.stop()
