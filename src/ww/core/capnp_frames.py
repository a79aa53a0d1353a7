"""Cap'n Proto's stream framing, read by hand where the host must count before pycapnp reads.

pycapnp offers no flow limit and no message-size limit of its own, so the host cuts the
byte streams it relays into messages itself: a cell's fd 3 (:mod:`ww.host.wire`: the flow
limit, the exact error reasons) and a remote peer's `/ww/0.1.0` stream
(:mod:`ww.p2p.splice`: message size, the node's budget, calls held).  Both use this module.

A framed message is a segment table -- a 32-bit count of segments minus one, then each
segment's size in 64-bit words, padded to a whole word -- followed by the segments.
:func:`message_size` and :class:`Framer` find message boundaries; :func:`rpc_member` reads
which member of rpc.capnp's ``Message`` union a message is, and the question or answer id
of a call or return, from the first bytes of its segments, following pointers as Cap'n
Proto readers do.  No message is ever decoded whole here.

The reading is C (``frames.c``, the extension :mod:`ww.core._frames`): it runs on every
message the host relays, and in Python it was an eighth of the host's busy time on a
remote call (docs/benchmarks.md, "Cap'n Proto framing in C").  ``Framer`` also classifies
in C when given ``(call, return, other)`` kinds, or ``(call, return, other, bootstrap)``,
instead of a ``classify`` function.  Segment
sizes (and ``struct_at``'s starts) are 32-bit, as a segment table holds them (ValueError
otherwise); ``head`` and fed data are any contiguous buffer.
"""

from __future__ import annotations

from ww.core import _frames
from ww.core._frames import (
    Framer,
    TooManySegments,
    header_size,
    message_size,
    rpc_member,
    segment_sizes,
    struct_at,
)

__all__ = [
    "BOOTSTRAP",
    "CALL",
    "MAX_SEGMENTS",
    "RETURN",
    "Framer",
    "TooManySegments",
    "header_size",
    "message_size",
    "rpc_member",
    "segment_sizes",
    "struct_at",
]

MAX_SEGMENTS: int = _frames.MAX_SEGMENTS  # 512
"""KJ refuses a message with more segments; a table this large is not read."""

# rpc.capnp's Message union: the members whose id the host needs.
CALL, RETURN, BOOTSTRAP = 2, 3, 8
