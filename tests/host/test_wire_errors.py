"""The reason of an error the host answers a cell with is exactly the documented text on the
wire: no ``message = `` (what pycapnp would put before it), no traceback.  A raw pycapnp client,
not the SDK, so nothing on the cell's side tidies the text up.  (The C++ cell checks the same in
tests/cxx/.)
"""

from __future__ import annotations

import capnp

from tests.conftest import run_ww
from ww.core.identity import PrivateKey
from ww.host.wire import _rpc_schema, exact_reason
from ww.schema import SCHEMA_DIR

RAW_CELL = f"""
import asyncio, socket, sys
import capnp

capnp.remove_import_hook()
root = __import__("os").path.dirname(__import__("os").path.dirname(capnp.__file__))
cell = capnp.load("{SCHEMA_DIR}/cell.capnp", imports=[root, "{SCHEMA_DIR}"])
ipfs = capnp.load("{SCHEMA_DIR}/ipfs.capnp", imports=[root, "{SCHEMA_DIR}"])

async def main():
    stream = await capnp.AsyncIoStream.create_connection(sock=socket.socket(fileno=3))
    host = capnp.TwoPartyClient(stream).bootstrap().cast_as(cell.Host)
    session = (await host.login()).session
    calls = []
    if session._has("ipfs"):
        calls.append(lambda: session.ipfs.add(ipfs.AddOptions.new_message()).writer
                     .write(b"x"))
    if session._has("p2p"):
        calls.append(lambda: session.p2p.dial(sys.argv[1]))
    for call in calls:
        try:
            await call()
            print("no error")
        except capnp.KjException as e:
            print(repr(e.description))

asyncio.run(capnp.run(main()))
"""


def test_a_denial_reaches_a_raw_pycapnp_client_as_the_documented_text(make_cell):
    cell = make_cell(RAW_CELL)
    r = run_ww("run", "--with-ipfs", "--ipfs-read-only", cell)
    assert r.returncode == 0, r.stderr
    # KJ itself puts "remote exception: " before a reason that came over the wire.
    assert r.stdout.splitlines() == [repr(
        "remote exception: capability denied: ipfs: add: this IPFS capability is read-only "
        "(cat, ls, stat and resolve only)")]


def test_a_p2p_error_reaches_a_raw_pycapnp_client_as_one_line_starting_p2p(make_cell):
    cell = make_cell(RAW_CELL)
    nobody = PrivateKey.generate().peer_id  # a port on loopback where no one listens
    r = run_ww("run", "--with-p2p", "--listen", "/ip4/127.0.0.1/tcp/0",
               "--allow-dial", "127.0.0.0/8", cell, f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}")
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    want = f"remote exception: p2p: cannot reach /ip4/127.0.0.1/tcp/1/p2p/{nobody} ("
    assert line.startswith(repr(want)[:-1]), line
    assert "message = " not in line and "Traceback" not in line and "\\n" not in line


def _return_exception(reason: str, pad: int = 0) -> bytes:
    rpc = _rpc_schema()
    msg = rpc.Message.new_message()
    ret = msg.init("return")
    ret.answerId = 7
    ret.init("exception").reason = reason
    return bytes(msg.to_bytes())


def test_only_a_returned_exception_loses_the_prefix():
    fixed = exact_reason(_return_exception("message = capability denied: x: y: z"))
    with _rpc_schema().Message.from_bytes(fixed) as msg:
        returned = getattr(msg, "return")
        assert (returned.answerId, returned.exception.reason) == (7, "capability denied: x: y: z")
    untouched = _return_exception("capability denied: message = inside")
    assert exact_reason(untouched) == untouched
    rpc = _rpc_schema()
    call = rpc.Message.new_message()
    call.init("call").interfaceId = 1
    call.call.params.content = "message = not an error"  # text inside a call's payload
    data = bytes(call.to_bytes())
    assert exact_reason(data) == data


class _Collect:
    """A stand-in for the asyncio transport: it only records what is written."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data


def test_the_stream_is_cut_into_messages_however_the_writes_fall():
    import random

    from ww.host.wire import MAX_INSPECTED, _ExactReasons

    rpc = _rpc_schema()
    big = rpc.Message.new_message()
    big.init("call").params.content = b"message = " * (MAX_INSPECTED // 5)  # streamed through
    builder = capnp._MallocMessageBuilder(1)  # a tiny first segment: five segments in all
    root = builder.init_root(rpc.Message)
    root.init("return").init("exception").reason = "message = " + "spread over segments " * 4
    multi = bytes(root.to_bytes())
    assert int.from_bytes(multi[:4], "little") + 1 > 1
    messages = [_return_exception("message = first"), bytes(big.to_bytes()),
                _return_exception("message = second"), multi,
                _return_exception("third, untouched")]
    want = b"".join(exact_reason(m) for m in messages)
    assert want.count(b"message = ") == MAX_INSPECTED // 5  # only the big call's payload
    assert want.count(b"spread over segments ") == 4
    stream = b"".join(messages)
    rng = random.Random(7)
    for _ in range(20):
        sink = _Collect()
        wrapped = _ExactReasons(sink)  # type: ignore[arg-type]
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 3, 8, 13, 4096, 70_000])
            wrapped.write(stream[pos:pos + step])
            pos += step
        assert bytes(sink.out) == want


def test_the_sdk_raises_the_hosts_reason_whole_even_with_failed_inside():
    """Real Cap'n Proto over a real socket pair, in one process: a Console served through
    :func:`ww.host.wire.connect` fails with a reason holding "failed: "; the SDK's error is
    that reason, whole (it used to keep only what followed "failed: ")."""
    import asyncio
    import socket

    from ww.cell import CapabilityDenied, RemoteError
    from ww.cell._session import call
    from ww.host import wire
    from ww.schema import load

    cell = load("cell")
    reasons = ["writing blocks failed: disk full",
               "capability denied: ipfs: add: this IPFS capability is read-only"]

    class Failing(cell.Console.Server):
        async def println(self, line, **kwargs):
            raise ValueError(reasons[int(line)])

    async def main():
        ours, theirs = socket.socketpair()
        server_stream = await wire.connect(ours)
        server = capnp.TwoPartyServer(server_stream, bootstrap=Failing())
        client_stream = await capnp.AsyncIoStream.create_connection(sock=theirs)
        client = capnp.TwoPartyClient(client_stream)
        console = client.bootstrap().cast_as(cell.Console)
        got = []
        for i in range(len(reasons)):
            try:
                await call(console.println(str(i)))
            except RemoteError as e:
                got.append((type(e), str(e)))
        client_stream.close()
        server_stream.close()
        del server
        return got

    from ww.core.foreign import send_one_line_errors

    send_one_line_errors(debug=False)  # what the supervisor does before serving fd 3

    got = asyncio.run(capnp.run(main()))
    assert got == [(RemoteError, reasons[0]), (CapabilityDenied, reasons[1])]
