"""Remote peers asking a cell's exported *IPFS capability* for big reads they never take.

A cell may export the IPFS capability the host gave it.  That capability is the host's own
object, so a remote peer's ``cat`` and ``read`` on it are served by the host directly and
never cross fd 3: their answers go from the host's readers to the lane.  Each bound holds on
its own there (the cell's open readers, its answer budget, the node's unsent answers), but
the old host hung up the cell's fd 3 all the same: the answers' copies, freed, stayed with
the allocator (4 MiB pieces in its heap, not given back), and the memory guard counted them
as held.  Measured on the old host: +126 to +195 MiB, the guard fired in 6 runs of 7.
"""

from __future__ import annotations

import asyncio
import hashlib

import capnp

from tests.conftest import HANG
from tests.p2p.conftest import LOOPBACK
from tests.p2p.deaf_peer import IPFS_EXPORTER, IPFS_FILE_SIZE, deaf_streams, ipfs_read_calls
from tests.p2p.test_lane_bounds import _until
from tests.p2p.test_ww_bounds import GUARD
from ww.schema import load


def test_peers_asking_an_exported_ipfs_capability_for_reads_they_never_take_do_not_cut_the_cell_off(
        start_host, cell_file, peer) -> None:
    """4 lane connections, 8 streams each, on each 7 pipelined ``cat`` + ``read(4 MiB)``
    pairs, not a byte read: 896 MiB of answers asked for with 33 KiB.  The streams are cut
    off, the host keeps the cell's session (its guard stays silent), and an honest peer
    then reads the whole file through the same export."""
    host = start_host("b", "--with-p2p", "--with-ipfs", "--listen", LOOPBACK,
                      cell_file(IPFS_EXPORTER, "ipfs_exporter.py"))
    cid, digest = host.readline().split()

    def hung_up() -> bool:
        return any(GUARD in line for line in host._stderr)

    async def attack() -> None:
        made = [await deaf_streams(host.addr, 8, ipfs_read_calls(cid, 7, 4 << 20), HANG)
                for _ in range(4)]
        try:  # until every stream is cut off by the host, or the host hangs up fd 3
            await _until(lambda: all(p.lost.done() for _, ps in made for p in ps)
                         or hung_up())
        finally:
            for conn, _ in made:
                conn.close()

    asyncio.run(attack())
    assert not hung_up(), "".join(host._stderr)

    async def honest_read() -> bytes:
        ipfs = load("ipfs")
        sock = await asyncio.wrap_future(peer.open(host.addr))
        client = capnp.TwoPartyClient(await capnp.AsyncIoStream.create_connection(sock=sock))
        try:
            gateway = client.bootstrap().cast_as(load("cell").Gateway)
            export = (await gateway.service()).service.as_interface(ipfs.IPFS)
            reader = (await export.cat(f"/ipfs/{cid}", 0, -1)).reader
            data = bytearray()
            for _ in range(IPFS_FILE_SIZE // (1 << 20) + 1):  # the last read is empty
                chunk = (await reader.read(1 << 20)).data
                if not chunk:
                    break
                data += chunk
            return bytes(data)
        finally:
            client.close()
            sock.close()

    data = asyncio.run(capnp.run(asyncio.wait_for(honest_read(), HANG)))
    assert (len(data), hashlib.sha256(data).hexdigest()) == (IPFS_FILE_SIZE, digest)
    status, stderr = host.stop()
    assert GUARD not in stderr, stderr
