"""ww.core.capnp_frames: the one Cap'n Proto framer under fd 3's flow limit (ww.host.wire)
and the `/ww/0.1.0` splice's bounds (ww.p2p.splice)."""

from __future__ import annotations

import struct

import pytest

from ww.core import capnp_frames
from ww.host import wire
from ww.p2p import splice


def framed(*segments: bytes) -> bytes:
    table = struct.pack(f"<I{len(segments)}I", len(segments) - 1,
                        *(len(s) // 8 for s in segments))
    table += b"\0" * (-len(table) % 8)
    return table + b"".join(segments)


def a_call(question: int) -> bytes:
    root = (0 << 2) | (1 << 32) | (1 << 48)  # the Message right after: 1 data, 1 pointer
    which = capnp_frames.CALL
    member = (0 << 2) | (1 << 32)  # the Call right after this pointer: 1 data word
    return framed(struct.pack("<QQQQ", root, which, member, question))


def test_one_reading_of_a_message_for_both_sides():
    message = a_call(41)
    assert capnp_frames.message_size(message) == len(message)
    assert capnp_frames.message_size(message[:3]) is None
    assert capnp_frames.message_size(message[:8]) == len(message)  # the table is all there
    assert wire.classify(message[8:], [4]) == (wire.CALL, 41)
    assert splice.classify(message) == (capnp_frames.CALL, 41)
    seen: list[tuple[int, int, int]] = []
    framer = capnp_frames.Framer(lambda *r: seen.append(r), wire.classify, wire.UNSURE, 4096)
    for byte in message + message:
        framer.feed(bytes([byte]))
    assert seen == [(wire.CALL, 41, len(message))] * 2


def test_a_table_past_capn_protos_segment_limit_is_refused_by_both():
    table = struct.pack("<I", capnp_frames.MAX_SEGMENTS)  # MAX_SEGMENTS + 1 segments
    with pytest.raises(capnp_frames.TooManySegments):
        capnp_frames.message_size(table)
    with pytest.raises(splice.ProtocolViolation):
        splice._frame_size(table)
    seen: list[tuple[int, int, int]] = []
    framer = wire._framer(lambda *r: seen.append(r))
    framer.feed(table + a_call(1))
    assert framer.broken and all(kind == wire.UNSURE for kind, _, _ in seen)


def test_a_member_behind_a_null_pointer_counts_as_id_0_on_fd_3_and_unreadable_on_p2p():
    root = (0 << 2) | (1 << 32) | (1 << 48)
    message = framed(struct.pack("<QQQ", root, capnp_frames.CALL, 0))
    assert capnp_frames.rpc_member(message[8:], [3]) == (capnp_frames.CALL, None)
    assert wire.classify(message[8:], [3]) == (wire.CALL, 0)
    assert splice.classify(message) is None  # reset: not a message the splice passes on


def test_far_pointers_are_followed_on_fd_3_only():
    far = 2 | (0 << 3) | (1 << 32)  # single far: the landing pad at word 0 of segment 1
    pad = (0 << 2) | (1 << 32) | (1 << 48)
    segment1 = struct.pack("<QQQQ", pad, capnp_frames.CALL, (0 << 2) | (1 << 32), 77)
    message = framed(struct.pack("<Q", far), segment1)
    sizes = capnp_frames.segment_sizes(message)
    assert sizes == [1, 4]
    assert wire.classify(message[16:], sizes) == (wire.CALL, 77)
    assert splice.classify(message) is None  # near pointers in the first segment only
