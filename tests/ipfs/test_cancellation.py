"""Cancelling blocking CoreAPI work (the capability does so when a cell cancels a call, drops
its reader or writer, or hangs up): the work stops, whatever it waits on."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG
from ww.caps.ipfs_scope import IpfsScope
from ww.ipfs.api import CallCancelled, CancelToken, cancellable
from ww.ipfs.kubo import KuboClient
from ww.ipfs.node import EmbeddedNode
from ww.p2p import host_for_ipfs

HELLO_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def in_thread(token: CancelToken, fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` under ``token`` in a thread; its outcome lands in the returned list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            with cancellable(token):
                outcome.append(fn())
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


class SilentHttp:
    """A TCP server on 127.0.0.1 that reads a request and never answers (a mock of a kubo
    node that hangs: kubo's daemon cannot run here); it records when the client hangs up."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.api = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.received = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:  # closed before anyone connected
            return
        with conn:
            conn.recv(65536)
            self.received.set()
            while conn.recv(65536):
                pass
            self.closed.set()

    def close(self) -> None:
        self._server.close()


@pytest.mark.parametrize("call", ["cat", "ls", "stat", "pins"])
def test_a_cancelled_kubo_call_closes_its_connection_and_raises_call_cancelled(call):
    server = SilentHttp()
    client = KuboClient(server.api, timeout=600)  # only the cancellation can end the wait
    work = {"cat": lambda: next(client.cat(f"/ipfs/{HELLO_CID}")),
            "ls": lambda: client.ls(f"/ipfs/{HELLO_CID}"),
            "stat": lambda: client.stat(f"/ipfs/{HELLO_CID}"),
            "pins": client.pins}[call]
    token = CancelToken()
    thread, outcome = in_thread(token, work)
    try:
        assert server.received.wait(HANG)
        assert thread.is_alive()  # waiting on kubo
        token.cancel()
        thread.join(60)
        assert not thread.is_alive()
        assert isinstance(outcome[0], CallCancelled), outcome
        assert server.closed.wait(HANG)
    finally:
        server.close()


def test_a_call_under_a_cancelled_token_does_not_start(tmp_path: Path):
    server = SilentHttp()
    token = CancelToken()
    token.cancel()
    try:
        with cancellable(token), pytest.raises(CallCancelled):
            KuboClient(server.api).pins()
        assert not server.received.is_set()
    finally:
        server.close()


@pytest.fixture
def nodes() -> Iterator[list[EmbeddedNode]]:
    made: list[EmbeddedNode] = []
    yield made
    for node in made:
        node.close()


def test_a_cancelled_bitswap_fetch_from_a_silent_peer_stops(tmp_path: Path,
                                                            nodes: list[EmbeddedNode]):
    pytest.importorskip("libp2p")
    a, b = (EmbeddedNode(tmp_path / n, new_host=host_for_ipfs())
            for n in ("a", "b"))
    nodes += [a, b]
    cid = a.add_stream([b"only a has this\n"])
    info = a.listen(["/ip4/127.0.0.1/tcp/0"])
    engine = a._net._engine  # type: ignore[union-attr]
    asked = threading.Event()

    def silent(peer_id: str, entries: list[Any], full: bool = False) -> None:  # never answers
        asked.set()

    engine._serve = silent  # type: ignore[method-assign]
    b.connect(info.addresses[0])
    token = CancelToken()
    thread, outcome = in_thread(token, lambda: b"".join(b.cat(cid)))
    assert asked.wait(HANG)
    assert thread.is_alive()  # waiting for the block (up to the peer timeout, 15 s)
    token.cancel()
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(outcome[0], CallCancelled), outcome


def test_a_cancelled_scope_walk_stops_between_ls_calls_and_resumes_later(tmp_path: Path):
    node = EmbeddedNode(tmp_path / "repo", new_host=host_for_ipfs())
    try:
        tree = tmp_path / "tree"
        deep = tree
        for i in range(5):
            deep = deep / f"d{i}"
        deep.mkdir(parents=True)
        (deep / "leaf.txt").write_text("leaf\n")
        root = node.add_path(tree)
        leaf = node.resolve(f"{root}/d0/d1/d2/d3/d4/leaf.txt")
        listed: list[str] = []
        token = CancelToken()

        class Counting:  # the real node, with the ls calls counted and the second cancelling
            def __getattr__(self, name: str) -> Any:
                return getattr(node, name)

            def iter_ls(self, path: str) -> Any:
                listed.append(path)
                if len(listed) == 2:
                    token.cancel()
                return node.iter_ls(path)

        scope = IpfsScope(Counting(), roots=[root])  # type: ignore[arg-type]
        with cancellable(token), pytest.raises(CallCancelled):
            scope.contains(leaf)
        assert len(listed) == 2  # stopped right after the listing that saw the cancellation
        assert scope.contains(leaf)  # a later question walks on
    finally:
        node.close()
