"""What a remote peer's calls make a `ww run` host hold of its cell's *answers*.

A call of 100 bytes may ask for an answer of megabytes (the cell chooses its size).  The
inbound bounds count what the peer sends; these tests are about what the host writes back
and the peer does not take: a real `ww run --with-p2p` host whose Python cell exports
``blob N`` (N bytes back), and a lane peer (tests/p2p/deaf_peer.py) that asks and never
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from tests.conftest import HANG
from tests.p2p.conftest import LOOPBACK, ww_call
from tests.p2p.deaf_peer import (
    BLOB_EXPORTER,
    DeafProtocol,
    blob_calls,
    deaf_py_streams,
    deaf_streams,
    service_call,
)
from tests.p2p.test_lane import Listener, RecordingDialer
from tests.p2p.test_lane import run as lane_run
from tests.p2p.test_lane_bounds import Host, _Echo, _Gateway, _host, _run, _until
from tests.p2p.test_ww_bounds import GUARD
from ww.core.addrs import PROTOCOL_ID
from ww.p2p import bounds
from ww.p2p.protocol import Exports
from ww.schema import load

_cell = load("cell")


def test_a_peer_that_asks_for_big_answers_and_never_reads_them_does_not_cost_the_cell_its_session(
        start_host, cell_file) -> None:
    """One lane connection, 8 streams, 15 pipelined calls of ~100 bytes each asking for 4 MiB,
    not a byte read: 480 MiB of answers asked for with 13 KiB.  The old host read every answer
    from fd 3 and queued it for the peer; past 128 MiB its memory guard hung up the cell's fd 3,
    the export went with it, and no one was served (measured: 142 MiB, `ww call` answered
    "serves nothing").  Now the streams holding the most are cut off as the node's unsent
    answers pass ANSWER_BUDGET, and the cell keeps its session."""
    host = start_host("b", "--with-p2p", "--listen", LOOPBACK,
                      cell_file(BLOB_EXPORTER, "blob.py"))

    def hung_up() -> bool:
        return any(GUARD in line for line in host._stderr)

    async def attack() -> None:
        conn, protocols = await deaf_streams(host.addr, 8, blob_calls(15, 4 << 20), HANG)
        try:  # until every stream is cut off by the host, or the host hangs up fd 3
            await _until(lambda: all(p.lost.done() for p in protocols) or hung_up())
        finally:
            conn.close()

    asyncio.run(attack())
    assert not hung_up(), "".join(host._stderr)
    r = ww_call(host.addr, "echo", "still", "here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    status, stderr = host.stop()
    assert GUARD not in stderr, stderr


def test_a_py_libp2p_peer_that_asks_for_big_answers_and_never_reads_them_is_cut(
        start_host, cell_file, peer) -> None:
    """The same attack through py-libp2p (a peer without the lane: its streams reach the
    host's splice, trio copying to a socketpair into pycapnp): 8 streams, 15 calls of 4 MiB
    each, not a byte read.  The old host let KJ queue the answers behind the socketpair while
    the splice waited on the peer's window, and its memory guard hung up the cell's fd 3.
    Now the splice's answers count in the node's answer budget with the lane's, the streams
    holding the most are cut, and the cell keeps its session."""
    host = start_host("b", "--with-p2p", "--listen", LOOPBACK,
                      cell_file(BLOB_EXPORTER, "blob.py"))

    def hung_up() -> bool:
        return any(GUARD in line for line in host._stderr)

    cut = peer.submit(deaf_py_streams, peer, host.addr, 8, blob_calls(15, 4 << 20), hung_up,
                      HANG).result(HANG + 10)
    assert not hung_up(), "".join(host._stderr)
    assert cut == 8
    r = ww_call(host.addr, "echo", "still", "here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    status, stderr = host.stop()
    assert GUARD not in stderr, stderr


class _Blob(_Echo):
    async def call(self, method: str, args: Any, **kwargs: Any) -> str:
        if method == "blob":
            return "x" * int(args[0])
        return await super().call(method, args, **kwargs)


def test_an_answer_larger_than_a_peer_takes_cuts_its_stream_unsent() -> None:
    """A 100-byte call asking for more than MAX_MESSAGE (1 MiB here): a ww peer would cut
    its own stream on reading it (its messages are bounded alike), so the host does not
    write it, nor hold it: the stream is cut off, with the reason.  One under the bound
    before it is answered.  The old host wrote it."""
    limit = 1 << 20

    async def main() -> None:
        host = await _host(service=_Blob(), max_message=limit)
        try:
            await host.send(blob_calls(0, 0) + service_call(2, "blob", str(limit // 2)))
            got = 0
            for _ in range(16):  # bounded: the bootstrap's, service()'s and the blob's Returns
                message = await host.recv_message()
                kind = bounds.classify(message)
                if kind == (bounds._RETURN, 2):
                    got = len(message)
                    break
            assert got > limit // 2
            await host.send(service_call(3, "blob", str(limit + 1)))
            await _until(lambda: host.protocol.violation is not None)
            await host.cut_off()
            assert host.protocol.violation.startswith("an answer of "), host.protocol.violation
            assert f"more than the {limit} a peer takes" in host.protocol.violation
        finally:
            host.close()

    _run(main)


def test_answers_the_peer_does_not_take_are_cut_off_however_much_more_is_written(
        start_host, cell_file) -> None:
    """One stream, 120 calls asking for 256 KiB each (30 MiB, under the node's answer
    budget), never read.  The old clock gave the answers 10 s plus what had been *written*
    at 100 KiB/s, so each answer written moved the deadline 2.6 s further out: 310 s for
    these, longer than this test waits.  Now it runs on what the peer took (its 256 KiB
    window): the stream is cut within 10 s and 2.6 s, and the cell keeps its session."""
    host = start_host("b", "--with-p2p", "--listen", LOOPBACK,
                      cell_file(BLOB_EXPORTER, "blob.py"))

    async def attack() -> None:
        conn, (protocol,) = await deaf_streams(host.addr, 1, blob_calls(120, 256 << 10), HANG)
        try:
            await asyncio.wait_for(protocol.lost, HANG)  # (the old host: not within HANG)
        finally:
            conn.close()

    asyncio.run(attack())
    r = ww_call(host.addr, "echo", "still", "here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    status, stderr = host.stop()
    assert GUARD not in stderr, stderr


class _LaneBlob(_cell.Service.Server):  # type: ignore[name-defined,misc]
    async def call(self, method: str, args: Any, **kwargs: Any) -> str:
        return "x" * int(args[0]) if method == "blob" else " ".join(args)


@contextlib.asynccontextmanager
async def _blob_node() -> Any:
    """A node serving ``_LaneBlob`` on a real lane listener (its `Exports`, as a host's),
    and an honest caller's ``Service`` on a connection of its own: (listener, service)."""
    exports = Exports()
    exports.set(_LaneBlob())
    listener = Listener(exports.lane_acceptor)
    dialer = RecordingDialer()
    try:
        service = (await dialer.dial(listener.addr)).cast_as(_cell.Service)
        assert (await service.call("echo", ["hi"])).result == "hi"
        yield listener, service
    finally:
        dialer.close_all()
        exports.close_all()
        listener.close()


def test_the_stream_holding_the_most_unsent_is_cut_and_an_honest_caller_is_served() -> None:
    """One loop serving a real lane listener (its `Exports`, as a host's): a deaf stream
    asks for 15 answers of 4 MiB; an honest caller on a connection of its own pipelines 8
    of 1 MiB and reads them.  Once the node's unsent answers pass 32 MiB the deaf stream
    holds at least 24 of them (the honest one at most its 8), so it is the one cut; every
    honest answer arrives whole.  (The old host held the deaf stream's answers for 10 s
    plus 60 MiB at 100 KiB/s.)"""

    async def main() -> None:
        async with _blob_node() as (listener, service):
            conn, (deaf,) = await deaf_streams(listener.addr, 1, blob_calls(15, 4 << 20), HANG)
            try:
                honest = [service.call("blob", [str(1 << 20)]) for _ in range(8)]
                for answer in honest:
                    assert len((await answer).result) == 1 << 20
                await asyncio.wait_for(deaf.lost, HANG)
                answers = bounds.loop_budget().answers
                assert answers.cut == 1
                assert answers.peak > answers.total
            finally:
                conn.close()

    lane_run(main)


def test_answers_left_behind_a_half_closed_stream_stay_counted_and_are_cut() -> None:
    """A deaf stream asks for 7 answers of 4 MiB, then half-closes (FIN) once they are
    written: pycapnp ends its side, and the lane queues the host's FIN behind the 28 MiB the
    peer never takes.  The old bounds forgot the stream as it closed while the lane kept its
    answers until the connection ended: each such stream cost 28 MiB more, uncounted and
    unclocked (a real host: +129 MiB after 5 of them, its guard hung up the cell's fd 3).
    Now they stay counted until taken: the next stream's answers pass the node's 32 MiB and
    the half-closed stream, holding the most, is reset (what it held is dropped)."""

    async def main() -> None:
        answers = bounds.loop_budget().answers

        def held() -> int:
            return sum(p.unsent() for p in answers.streams)

        async with _blob_node() as (listener, _service):
            conn, (first,) = await deaf_streams(listener.addr, 1, blob_calls(7, 4 << 20), HANG)
            try:
                await _until(lambda: held() >= 7 * (4 << 20) - (1 << 20))
                (stream,) = [s for s in conn.streams.values() if s.protocol is first]
                (host_side,) = [p for p in answers.streams if p.unsent() >= 1 << 20]
                stream.write_eof()
                await _until(lambda: host_side._lost)
                assert host_side.unsent() >= 7 * (4 << 20) - (1 << 20)  # the old bounds: 0
                second = conn.open(PROTOCOL_ID)
                await asyncio.wait_for(second.negotiated, HANG)
                second.connect(DeafProtocol())
                second.write(blob_calls(7, 4 << 20))
                await asyncio.wait_for(first.lost, HANG)  # the old bounds: never
                assert answers.cut == 1
            finally:
                conn.close()

    lane_run(main)


def test_many_streams_each_holding_less_than_an_honest_answer_do_not_get_it_cut() -> None:
    """4 deaf connections x 8 streams, each asking for 2 answers of 768 KiB and taking only
    their window: about 1.25 MiB unsent each, the node's 32 MiB of answers nearly full.  An
    honest caller then asks for one answer of 4 MiB: written at once, it made its stream the
    one holding the most before the peer could take a byte, and the old bounds cut the honest
    stream (a real host: `ww call` got "remote error", on loopback; the attacker's streams
    untouched and renewable every 10 s).  Now the stream holding the most bytes written over
    ANSWER_AGE ago is cut first: the attacker's; the honest answer arrives whole."""

    async def main() -> None:
        answers = bounds.loop_budget().answers
        loop = asyncio.get_running_loop()

        def old_and_full() -> bool:  # every answer asked for written, none of it recent
            return (sum(p.unsent() for p in answers.streams) >= 28 << 20
                    and not any(p.age.recent(loop.time()) for p in answers.streams))

        async with _blob_node() as (listener, service):
            made = [await deaf_streams(listener.addr, 8, blob_calls(2, 768 << 10), HANG)
                    for _ in range(4)]
            try:
                await _until(old_and_full)
                cut = answers.cut
                assert len((await service.call("blob", [str(4 << 20)])).result) == 4 << 20
                assert answers.cut > cut  # one of theirs instead
            finally:
                for conn, _ in made:
                    conn.close()

    lane_run(main)


async def _spliced(answers: bounds.Answers, service: _Echo, **limits: Any) -> Host:
    """A pycapnp server on one end of a socketpair as the host serves a splice's socket
    (:func:`bounds.spliced_capnp`), its answers counted in ``answers``; the peer's end (the
    splice's, here the test's) is ``peer``."""
    import capnp

    ours, peer = socket.socketpair()
    peer.setblocking(False)
    protocol, stream = await bounds.spliced_capnp(ours, answers, **limits)
    server = capnp.TwoPartyServer(stream, bootstrap=_Gateway(service))
    return Host(service, protocol, server, peer, bounds.AsyncBudget())


def test_the_splice_and_the_lane_share_one_answer_budget() -> None:
    """On one loop, a lane stream (``bounded_capnp``, on a socket standing for one) whose
    peer leaves 6 answers of 4 MiB untaken (24 MiB, under the budget alone), then a spliced
    socket whose peer leaves 3 (12 MiB, under it alone): together they pass the node's
    32 MiB, and the stream holding the most, the lane's, is cut.  Before, a spliced
    socket's answers were counted nowhere (KJ queued them behind pycapnp, paused at
    64 KiB), so neither was."""
    size = 4 << 20

    async def main() -> None:
        budget = bounds.AsyncBudget()
        lane_host = await _host(budget=budget, service=_Blob(), grace=HANG)
        # a lane stream never asks pycapnp to pause (its queue is what Answers bounds): the
        # socket standing for it here does not either
        lane_host.protocol.transport.set_write_buffer_limits(high=1 << 30)
        splice_host = await _spliced(budget.answers, _Blob())
        try:
            await lane_host.send(blob_calls(6, size))
            await _until(lambda: lane_host.protocol.unsent() >= 5 * size)
            await splice_host.send(blob_calls(3, size))
            await _until(lambda: lane_host.protocol.violation is not None)
            assert "had not taken" in lane_host.protocol.violation
            assert splice_host.protocol.violation is None
            assert budget.answers.cut == 1
        finally:
            lane_host.close()
            splice_host.close()

    _run(main)


def test_an_answer_larger_than_a_peer_takes_cuts_a_spliced_stream_unsent() -> None:
    """The splice's socket as the lane's stream: an answer over MAX_MESSAGE (1 MiB here) is
    refused at its segment table, the stream cut, not a byte of it written."""
    limit = 1 << 20

    async def main() -> None:
        host = await _spliced(bounds.Answers(), _Blob(), max_message=limit)
        try:
            await host.send(blob_calls(0, 0) + service_call(2, "blob", str(limit + 1)))
            await _until(lambda: host.protocol.violation is not None)
            assert host.protocol.violation.startswith("an answer of "), host.protocol.violation
            got = 0
            for _ in range(16):  # bounded: the bootstrap's and service()'s Returns, then the end
                try:
                    piece = await host.loop.sock_recv(host.peer, 1 << 16)
                except ConnectionResetError:
                    break
                if not piece:
                    break
                got += len(piece)
            assert got < limit
        finally:
            host.close()

    _run(main)
