#!/usr/bin/env python3
"""The flow limit's cost on the host's inbound path (ww.host.wire): 1 GiB of ``Writer.write``
calls, as a cell sends them, fed to the incoming framer in the pieces a socket read gives,
and their Returns to the outgoing one.  Prints the CPU time per GiB and the rate, to compare
with what a cell's add runs at (docs/benchmarks.md)."""

import argparse
import time

from ww.host import wire


def call(question: int, payload: int) -> bytes:
    message = wire._rpc_schema().Message.new_message()
    body = message.init("call")
    body.questionId, body.interfaceId, body.methodId = question, 0x1234, 0
    body.target.importedCap = 0
    body.params.content.set_as_text("x" * payload)  # the size is what counts
    return message.to_bytes()


def answer(question: int) -> bytes:
    message = wire._rpc_schema().Message.new_message()
    message.init("return").answerId = question
    return message.to_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--read", type=int, default=256 * 1024, help="bytes per socket read")
    args = parser.parse_args()
    print(f"{'write size':>12} {'read size':>10} {'CPU s/GiB':>10} {'MiB/s':>8}")
    for piece in (64 * 1024, 1024 * 1024, 4 * 1024 * 1024):
        message, returned = call(7, piece), answer(7)
        count = args.size_mib * 1024 * 1024 // piece
        stream = memoryview(message * 8)  # 8 in flight, as the SDK sends them
        flow = wire.FlowLimit(lambda: None, lambda: None)
        start = time.process_time()
        for _ in range(count // 8):
            for at in range(0, len(stream), args.read):
                flow.incoming.feed(stream[at:at + args.read])
            for _ in range(8):
                flow.outgoing.feed(returned)
        seconds = time.process_time() - start
        assert flow.total == 0
        gib = count * len(message) / 2**30
        print(f"{piece // 1024:>9} KiB {args.read // 1024:>6} KiB {seconds / gib:>10.3f} "
              f"{gib * 1024 / seconds:>8.0f}")


if __name__ == "__main__":
    main()
