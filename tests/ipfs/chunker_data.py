"""The inputs of the chunker vectors (chunker_vectors.json), made the same way every time."""

from __future__ import annotations

import random


def vector_data(spec: str) -> bytes:
    """``random:SEED:SIZE`` (Python's Mersenne Twister), ``zeros:SIZE`` or ``repeat:HEX:SIZE``
    (the bytes HEX over and over)."""
    kind, _, rest = spec.partition(":")
    if kind == "random":
        seed, size = rest.split(":")
        return random.Random(int(seed)).randbytes(int(size))
    if kind == "zeros":
        return bytes(int(rest))
    if kind == "repeat":
        pattern, size = rest.split(":")
        unit = bytes.fromhex(pattern)
        return (unit * (int(size) // len(unit) + 1))[: int(size)]
    raise ValueError(f"unknown vector data {spec!r}")
