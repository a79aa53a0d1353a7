"""The multiformats and codecs on the block path: ww's own code next to the PyPI library.

    .venv/bin/python benchmarks/codecs.py [--rounds 5] [--n 2000]

Each row times one operation as the importer, exporter or Bitswap does it per block, on the
same inputs, own and library interleaved round by round (the machine is shared: compare the
two columns of a row, not rows across runs).  Prints microseconds per operation, the best
round of each, and library/own.  A codec of ww's own stays only where the library is much
slower on such a path, or weaker on hostile input (see the comment beside each).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def _pb_node_class() -> type:
    """dag-pb's PBNode as a runtime protobuf message class (upb), built from a descriptor."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="bench_dagpb.proto", package="bench",
                                           syntax="proto2")
    link = f.message_type.add(name="PBLink")
    opt = descriptor_pb2.FieldDescriptorProto
    link.field.add(name="Hash", number=1, type=opt.TYPE_BYTES, label=opt.LABEL_OPTIONAL)
    link.field.add(name="Name", number=2, type=opt.TYPE_STRING, label=opt.LABEL_OPTIONAL)
    link.field.add(name="Tsize", number=3, type=opt.TYPE_UINT64, label=opt.LABEL_OPTIONAL)
    node = f.message_type.add(name="PBNode")
    node.field.add(name="Links", number=2, type=opt.TYPE_MESSAGE, label=opt.LABEL_REPEATED,
                   type_name=".bench.PBLink")
    node.field.add(name="Data", number=1, type=opt.TYPE_BYTES, label=opt.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.PBNode"))


def _best(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="operations per round")
    args = ap.parse_args()

    import cid as pycid
    import multibase as pymultibase
    import multihash as pymultihash
    import varint as pyvarint

    from ww.core import multibase, multihash, varint
    from ww.core.cid import CID, RAW
    from ww.ipfs import dagpb

    block = os.urandom(256 * 1024)
    mh = multihash.sha256(block)
    v1 = CID.v1(RAW, mh)
    v1_bytes, v1_text = bytes(v1), str(v1)
    v0_text = str(CID.v0(mh))
    # A file root as the importer writes it: 174 links of 256 KiB leaves (kubo's fan-out).
    root = dagpb.encode(dagpb.PBNode(
        tuple(dagpb.PBLink(CID.v1(RAW, multihash.sha256(i.to_bytes(4, "big"))), b"", 262158)
              for i in range(174)),
        b"\x08\x02\x18" + varint.encode(174 * 262144),
    ))
    pb_node = _pb_node_class()
    big = 174 * 262144

    rows: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("varint decode (5 bytes)", lambda: varint.decode(pyvarint.encode(big)),
         lambda: pyvarint.decode_bytes(pyvarint.encode(big))),
        ("multihash decode sha2-256", lambda: multihash.decode(mh),
         lambda: pymultihash.decode(mh)),
        ("CID decode binary v1", lambda: CID.decode(v1_bytes), lambda: pycid.from_bytes(v1_bytes)),
        ("CID parse base32 v1", lambda: CID.parse(v1_text), lambda: pycid.from_string(v1_text)),
        ("CID parse base58 v0", lambda: CID.parse(v0_text), lambda: pycid.from_string(v0_text)),
        ("CID to base32 text", lambda: str(v1), lambda: pymultibase.encode("base32", v1_bytes)),
        ("base58btc decode (v0)", lambda: multibase.b58decode(v0_text),
         lambda: pymultibase.decode("z" + v0_text)),
        ("dag-pb decode, 174 links", lambda: dagpb.decode(root),
         lambda: pb_node.FromString(root)),
        ("sha2-256 verify 256 KiB", lambda: multihash.verify(mh, block),
         lambda: hashlib.sha256(block).digest() == pymultihash.decode(mh).digest),
    ]
    results: dict[str, tuple[list[float], list[float]]] = {r[0]: ([], []) for r in rows}
    for _ in range(args.rounds):
        for name, own, lib in rows:
            n = args.n if "256 KiB" not in name else max(1, args.n // 100)
            results[name][0].append(_best(own, n))
            results[name][1].append(_best(lib, n))

    print(f"# {args.rounds} rounds x {args.n} ops; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"{'operation':32} {'own us':>9} {'library us':>11} {'lib/own':>8}")
    for name, _, _ in rows:
        own_t, lib_t = min(results[name][0]), min(results[name][1])
        print(f"{name:32} {own_t:9.2f} {lib_t:11.2f} {lib_t / own_t:8.1f}")


if __name__ == "__main__":
    main()
