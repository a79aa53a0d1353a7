"""Remote peers adding files through a cell's exported *IPFS capability*, as fast as they send.

A cell may export the IPFS capability the host gave it, ``add`` included.  A remote peer's
``Writer.write`` is answered once its bytes are queued for the writer's importer thread, so
the inbound bounds (which count a call until its ``Return`` leaves) let go of them there;
what the importers held then (the piece each works on, those queued for it, and the last
one each idle importer's frames still kept) was counted nowhere, and a write waiting to be
queued held pycapnp's copy of its bytes.  With a cell's 16 writers busy at once the memory
guard hung up the cell's fd 3.  Now a cell's writers hold at most ``WRITE_BUFFERS`` between
a write and the importers (``ww.caps.ipfs._WriteBuffers``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tests.conftest import HANG
from tests.p2p.conftest import LOOPBACK
from tests.p2p.deaf_peer import IPFS_EXPORTER, bootstrap, gateway_service, pipelined_call
from tests.p2p.test_lane_bounds import _until
from tests.p2p.test_ww_bounds import GUARD
from ww.core.addrs import PROTOCOL_ID
from ww.p2p import bounds, lane
from ww.schema import load

_ipfs = load("ipfs")
STREAMS = 4  # on one lane connection (a peer may have 8)
WRITERS = 4  # a stream: 16 in all, a cell's MAX_WRITERS
WRITES = 96  # a stream, of PIECE bytes each: 1.5 GiB in all
PIECE = 4 << 20  # the most one write takes


class Returns(asyncio.BufferedProtocol):
    """Reads what the host answers and notes the question ids its ``Return``s answer."""

    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self.answered: set[int] = set()
        self._buf = bytearray(1 << 16)
        self._data = bytearray()

    def connection_made(self, transport: Any) -> None:
        pass

    def get_buffer(self, sizehint: int) -> Any:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        self._data += self._buf[:nbytes]
        while (size := bounds.frame_size(self._data)) is not None and len(self._data) >= size:
            kind = bounds.classify(bytes(self._data[:size]))
            if kind is not None and kind[0] == bounds._RETURN:
                self.answered.add(kind[1])
            del self._data[:size]

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def test_peers_adding_files_through_an_exported_ipfs_capability_do_not_cut_the_cell_off(
        start_host, cell_file) -> None:
    """One lane peer, 4 streams, on each 4 ``add``s (the cell's 16 writers) and 96 pipelined
    writes of 4 MiB, then each writer's ``done()``: every
    file is added, and the host keeps the cell's session (its guard stays silent)."""
    host = start_host("b", "--with-p2p", "--with-ipfs", "--listen", LOOPBACK,
                      cell_file(IPFS_EXPORTER, "ipfs_exporter.py"))
    host.readline()  # the cell's own file

    def hung_up() -> bool:
        return any(GUARD in line for line in host._stderr)

    async def attack() -> int:
        conn = await lane.dial(host.addr, os.urandom(32), timeout=HANG)
        streams = []
        try:
            for _ in range(STREAMS):
                stream = conn.open(PROTOCOL_ID)
                await asyncio.wait_for(stream.negotiated, HANG)
                protocol = Returns()
                stream.connect(protocol)
                adds = []
                for k in range(WRITERS):
                    adds.append(pipelined_call(2 + k, _ipfs.IPFS, "add", 1)[1].to_bytes())
                stream.write(bootstrap() + gateway_service() + b"".join(adds))
                streams.append((stream, protocol))
            piece = bytearray(os.urandom(PIECE))
            dones: set[tuple[Returns, int]] = set()
            for n in range(WRITES + WRITERS):  # the writes, then each writer's done()
                for stream, protocol in streams:
                    q = 2 + WRITERS + n
                    on = 2 + n % WRITERS
                    await _until(lambda s=stream, p=protocol: s.get_write_buffer_size() < PIECE
                                 or p.lost.done() or hung_up())
                    if n < WRITES:
                        piece[:8] = os.urandom(8)  # each file its own bytes
                        frame = pipelined_call(q, _ipfs.Writer, "write", on,
                                               data=bytes(piece))[1].to_bytes()
                    else:
                        frame = pipelined_call(q, _ipfs.Writer, "done", on)[1].to_bytes()
                        dones.add((protocol, q))
                    stream.write(frame)
            await _until(lambda: hung_up() or all(q in p.answered or p.lost.done()
                                                  for p, q in dones))
            return sum(q in p.answered for p, q in dones)
        finally:
            conn.close()

    added = asyncio.run(attack())
    assert not hung_up(), "".join(host._stderr)
    assert added == STREAMS * WRITERS
    status, stderr = host.stop()
    assert GUARD not in stderr, stderr
