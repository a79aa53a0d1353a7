"""What the host pays to cut and read one Cap'n Proto message (ww.core.capnp_frames).

    .venv/bin/python benchmarks/frames.py [--messages 20000] [--repeat 5] [--compare OTHER/src]

The messages are those of a remote echo call on a cell's fd 3, built with pycapnp's own
rpc.capnp: a Call (a question id, a promised-answer target, a short text in its params)
and a Return (an answer id, a short text result), alternating.  Timed, per message, best of
``--repeat`` runs:

- ``Framer.feed, a read each``: ww.host.wire's framer (what ``FlowLimit`` uses on fd 3, both
  ways), each message fed as a piece of its own, as a read brings it; the ``on_message``
  callback is a Python function that counts;
- ``Framer.feed, one read``: the same messages fed in one piece;
- ``rpc_member``: which member and id, from a message's segments and sizes;
- ``message_size``: the bytes of a message, from its table (what a remote peer's stream uses).

``--compare OTHER/src`` runs the same again with the ww package of another checkout
(``PYTHONPATH=OTHER/src``, a process of its own), for a before/after in one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import capnp


def _messages(n: int) -> list[bytes]:
    package = Path(capnp.__file__).resolve().parent
    rpc = capnp.load(str(package / "rpc.capnp"), imports=[str(package.parent)])
    out = []
    for i in range(n):
        m = rpc.Message.new_message()
        if i % 2 == 0:
            c = m.init("call")
            c.questionId = i
            c.interfaceId = 0x1234
            c.target.init("promisedAnswer").questionId = 1
            c.params.content.set_as_text("echo this")
        else:
            r = m.init("return")
            r.answerId = i - 1
            r.init("results").content.set_as_text("echo this")
        out.append(m.to_bytes())
    return out


def _best(run: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        best = min(best, time.perf_counter_ns() - start)
    return best


def measure(messages: int, repeat: int) -> list[tuple[str, float]]:
    from ww.core import capnp_frames
    from ww.host import wire

    stream = _messages(messages)
    whole = b"".join(stream)
    count = [0]

    def on_message(kind: int, ident: int, size: int) -> None:
        count[0] += 1

    def each() -> None:
        framer = wire._framer(on_message)
        for message in stream:
            framer.feed(memoryview(message))

    def one() -> None:
        wire._framer(on_message).feed(memoryview(whole))

    heads = []
    for message in stream:
        sizes = capnp_frames.segment_sizes(message)
        assert sizes is not None
        heads.append((message[capnp_frames.header_size(len(sizes)):], sizes))

    def member() -> None:
        for head, sizes in heads:
            capnp_frames.rpc_member(head, sizes)

    def size() -> None:
        for message in stream:
            capnp_frames.message_size(message)

    rows = []
    for name, run in (("Framer.feed, a read each", each), ("Framer.feed, one read", one),
                      ("rpc_member", member), ("message_size", size)):
        rows.append((name, _best(run, repeat) / messages / 1000))
    assert count[0] == 2 * repeat * messages, count  # every message reported, both ways
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compare", metavar="SRC",
                        help="also run with the ww package of SRC (another checkout's src)")
    parser.add_argument("--label", default="this", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.messages < 2 or options.repeat < 1:
        print("frames.py: --messages must be >= 2 and --repeat >= 1", file=sys.stderr)
        sys.exit(2)
    for name, us in measure(options.messages, options.repeat):
        print(f"{options.label:5} {name:26} {us:7.3f} us/message")
    if options.compare:
        env = {**os.environ, "PYTHONPATH": os.path.abspath(options.compare)}
        subprocess.run([sys.executable, __file__, "--messages", str(options.messages),
                        "--repeat", str(options.repeat), "--label", "SRC"],
                       env=env, check=True)
    if options.label == "this":
        print(f"load average {os.getloadavg()[0]:.2f}; SRC = {options.compare}")


if __name__ == "__main__":
    main()
