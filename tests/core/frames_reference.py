"""The pure-Python reader that ww.core.capnp_frames was before it became C (frames.c): kept
here, unchanged but for this docstring, as the reference model the C code is checked
against (tests/core/test_frames_differential.py).  Not used by the package."""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from typing import Any

MAX_SEGMENTS = 512
"""KJ refuses a message with more segments; a table this large is not read."""

# rpc.capnp's Message union: the members whose id the host needs.
CALL, RETURN, BOOTSTRAP = 2, 3, 8

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class TooManySegments(ValueError):
    """A segment table of more than :data:`MAX_SEGMENTS` segments."""


def header_size(segments: int) -> int:
    """Bytes of the segment table of a message of ``segments`` segments (a whole word)."""
    return (4 + 4 * segments + 7) & ~7


def segment_sizes(buf: Any) -> list[int] | None:
    """The segment sizes, in words, of the message starting ``buf`` (None: its table is
    not all there yet).  Raises :class:`TooManySegments`."""
    if len(buf) < 4:
        return None
    segments = _U32.unpack_from(buf)[0] + 1
    if segments > MAX_SEGMENTS:
        raise TooManySegments(f"a message of {segments} segments")
    if len(buf) < header_size(segments):
        return None
    return list(struct.unpack_from(f"<{segments}I", buf, 4))


def message_size(buf: Any) -> int | None:
    """Bytes of the message starting ``buf``, table included (None: its table is not all
    there yet).  Raises :class:`TooManySegments`."""
    sizes = segment_sizes(buf)
    if sizes is None:
        return None
    return header_size(len(sizes)) + 8 * sum(sizes)


def struct_at(head: Any, starts: list[int], sizes: list[int], segment: int, at: int,
              far: bool = True) -> tuple[int, int, int, int] | None:
    """The struct the pointer in word ``at`` of ``segment`` points to, as (segment, first word,
    data words, pointer words); (0, 0, 0, 0) for a null pointer (a struct of defaults); None
    when it is not a struct pointer this reader can follow within ``head`` (the first bytes
    of the segments, ``starts`` the word each segment starts at).  ``far``: follow far
    pointers into other segments (else they are not followed: None)."""
    for _ in range(3):  # a pointer, a far pointer, a double-far's landing pad at the most
        if at >= sizes[segment] or 8 * (starts[segment] + at + 1) > len(head):
            return None
        word = _U64.unpack_from(head, 8 * (starts[segment] + at))[0]
        kind = word & 3
        if word == 0:
            return 0, 0, 0, 0
        if kind == 0:  # a struct pointer: signed offset from the word after it
            offset = (word >> 2) & 0x3FFFFFFF
            if offset & 0x20000000:
                offset -= 0x40000000
            data, pointers = (word >> 32) & 0xFFFF, word >> 48
            first = at + 1 + offset
            if first < 0 or first + data + pointers > sizes[segment]:
                return None
            return segment, first, data, pointers
        if kind != 2 or not far:  # a list or a capability where a struct belongs: KJ refuses
            return None
        pad_segment, pad = word >> 32, (word >> 3) & 0x1FFFFFFF
        if pad_segment >= len(sizes):
            return None
        if not (word >> 2) & 1:  # single far: the landing pad is an ordinary pointer
            segment, at = pad_segment, pad
            continue
        # double far: the pad is a far pointer to the content, the word after it its tag
        if pad + 2 > sizes[pad_segment] or 8 * (starts[pad_segment] + pad + 2) > len(head):
            return None
        far_word, tag = _U64.unpack_from(head, 8 * (starts[pad_segment] + pad))[0], \
            _U64.unpack_from(head, 8 * (starts[pad_segment] + pad + 1))[0]
        segment, first = far_word >> 32, (far_word >> 3) & 0x1FFFFFFF
        if far_word & 7 != 2 or tag & 3 != 0 or segment >= len(sizes):
            return None
        data, pointers = (tag >> 32) & 0xFFFF, tag >> 48
        if first + data + pointers > sizes[segment]:
            return None
        return segment, first, data, pointers
    return None


def rpc_member(head: Any, sizes: list[int], members: Collection[int] = (CALL, RETURN),
               far: bool = True) -> tuple[int, int | None] | None:
    """(which member of rpc.capnp's ``Message`` union, id) of a message, from its segment
    sizes (in words) and the first bytes of its segments (``head``): for one of
    ``members``, id is the first 32 bits of the member's struct (a call's question id, a
    return's answer id, a bootstrap's question id), or None when the member's pointer is
    null or absent (a struct of defaults: id 0 to a Cap'n Proto reader); -1 for any other
    member.  None when ``head`` does
    not show it.  Read as Cap'n Proto readers do: a field past a struct's end is 0."""
    if not sizes:
        return None
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    root = struct_at(head, starts, sizes, 0, 0, far)
    if root is None:
        return None
    segment, first, data, pointers = root
    if data == 0:
        return 0, -1  # discriminant 0: unimplemented
    if 8 * (starts[segment] + first) + 2 > len(head):
        return None
    which = _U16.unpack_from(head, 8 * (starts[segment] + first))[0]
    if which not in members:
        return which, -1
    if pointers == 0:
        return which, None
    body = struct_at(head, starts, sizes, segment, first + data, far)
    if body is None:
        return None
    if body == (0, 0, 0, 0):  # a null pointer (no struct starts where the root pointer is)
        return which, None
    segment, first, data, _ = body
    if data == 0:
        return which, 0
    if 8 * (starts[segment] + first) + 4 > len(head):
        return None
    return which, _U32.unpack_from(head, 8 * (starts[segment] + first))[0]


class Framer:
    """Cuts a byte stream, fed in pieces of any size, into Cap'n Proto messages and reports
    each as ``on_message(kind, id, size)`` once its last byte is in, ``(kind, id)`` being
    ``classify(head, sizes)`` of its first ``head`` bytes of segments: a pause then never
    stops a message half-read.  Segments are skipped, not copied.  A segment table past
    :data:`MAX_SEGMENTS`, or a message without segments, is reported as kind ``unsure``; after
    such a table the stream is unreadable: every byte after it is reported as ``unsure``
    too (KJ drops such a connection anyway)."""

    def __init__(self, on_message: Callable[[int, int, int], None],
                 classify: Callable[[bytes, list[int]], tuple[int, int]],
                 unsure: int, head: int) -> None:
        self._on_message = on_message
        self._classify_head = classify
        self._unsure = unsure
        self._head_size = head
        self._table = bytearray()  # the segment table being collected
        self._sizes: list[int] = []
        self._size = 0  # the current message's size, table included
        self._left = 0  # bytes of the current message's segments still to come
        self._head = bytearray()
        self._want = 0  # bytes of the head still to collect
        self._kind, self._id = unsure, 0  # the current message's, once its head is in
        self.broken = False

    def feed(self, data: Any) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self.broken:
                self._on_message(self._unsure, 0, end - pos)
                return
            if self._left:
                take = min(self._left, end - pos)
                if self._want:
                    piece = min(take, self._want)
                    self._head += view[pos:pos + piece]
                    self._want -= piece
                    if not self._want:
                        self._classify()
                pos += take
                self._left -= take
                if not self._left:
                    self._on_message(self._kind, self._id, self._size)
            else:
                pos = self._read_table(view, pos, end)

    def _read_table(self, view: memoryview, pos: int, end: int) -> int:
        table = self._table
        need = 4 if len(table) < 4 else header_size(_U32.unpack_from(table)[0] + 1)
        take = min(need - len(table), end - pos)
        table += view[pos:pos + take]
        pos += take
        if len(table) < need:
            return pos
        if need == 4:
            if _U32.unpack_from(table)[0] >= MAX_SEGMENTS:
                self.broken = True
                self._on_message(self._unsure, 0, len(table))
            return pos
        count = _U32.unpack_from(table)[0] + 1
        self._sizes = list(struct.unpack_from(f"<{count}I", table, 4))
        body = 8 * sum(self._sizes)
        self._size, self._left = len(table) + body, body
        self._table = bytearray()
        self._head = bytearray()
        self._want = min(body, self._head_size)
        if not body:
            self._kind, self._id = self._unsure, 0  # no root at all: KJ refuses it
            self._on_message(self._unsure, 0, self._size)
        return pos

    def _classify(self) -> None:
        try:
            self._kind, self._id = self._classify_head(bytes(self._head), self._sizes)
        except Exception:  # noqa: BLE001 - never raise inside the transport: count it
            self._kind, self._id = self._unsure, 0
        self._head = bytearray()
