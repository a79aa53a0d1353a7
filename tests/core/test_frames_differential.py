"""ww.core.capnp_frames (C: frames.c) against the pure-Python reader it replaced
(tests/core/frames_reference.py), on the same input: real rpc.capnp messages from pycapnp
(one segment and many, far pointers), hand-made ones (struct, list, capability, far and
double-far pointers with any fields), random bytes, truncated heads, and any split of a
stream into ``feed()`` pieces.  Every answer must be the same, errors included."""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

import capnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core import frames_reference as ref
from ww.core import capnp_frames
from ww.host import wire

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

_site = os.path.dirname(os.path.dirname(capnp.__file__))
rpc = capnp.load(os.path.join(os.path.dirname(capnp.__file__), "rpc.capnp"), imports=[_site])


def _real(kind: str, ident: int, first_words: int | None, text: int) -> bytes:
    m = (rpc.Message.new_message(num_first_segment_words=first_words) if first_words
         else rpc.Message.new_message())
    if kind == "call":
        c = m.init("call")
        c.questionId = ident
        c.target.importedCap = 3
        c.params.content.set_as_text("x" * text)
    elif kind == "return":
        r = m.init("return")
        r.answerId = ident
        r.init("exception").reason = "y" * text
    elif kind == "bootstrap":
        m.init("bootstrap").questionId = ident
    elif kind == "finish":
        m.init("finish").questionId = ident
    else:
        m.init("abort").reason = "z" * text
    return m.to_bytes()


real_messages = st.builds(
    _real,
    st.sampled_from(["call", "return", "bootstrap", "finish", "abort"]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 1, 2, 3, 5]),
    st.integers(0, 300),
)


@st.composite
def words(draw: Any, nseg: int, nwords: int) -> int:
    """A word a reader may meet: a pointer of any kind with plausible or any fields, a
    discriminant and an id, or anything."""
    kind = draw(st.integers(0, 7))
    small = st.integers(0, 3) | st.integers(0, 0xFFFF)
    if kind == 0:
        return 0
    if kind == 1:
        return draw(st.integers(0, 2**64 - 1))
    if kind == 2:
        return draw(st.integers(0, 20)) | draw(st.integers(0, 2**32 - 1)) << 32
    if kind == 3:  # a list or a capability
        return draw(st.sampled_from([1, 3])) | draw(st.integers(0, 2**62 - 1)) << 2
    if kind in (4, 5):  # single or double far
        pad = draw(st.integers(0, nwords + 2) | st.integers(0, 0x1FFFFFFF))
        seg = draw(st.integers(0, nseg + 1) | st.integers(0, 2**32 - 1))
        return 2 | (kind - 4) << 2 | pad << 3 | seg << 32
    offset = draw(st.integers(-3, nwords + 1) | st.integers(-(2**29), 2**29 - 1))
    return (offset & 0x3FFFFFFF) << 2 | draw(small) << 32 | draw(small) << 48


@st.composite
def made(draw: Any) -> tuple[bytes, list[int]]:
    """(head, sizes): hand-made segments, the head maybe cut short, the sizes maybe not the
    segments' own."""
    nseg = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(0, 6), min_size=nseg, max_size=nseg))
    total = sum(sizes)
    head = b"".join(struct.pack("<Q", draw(words(nseg, total))) for _ in range(total))
    if draw(st.booleans()):
        head = head[: draw(st.integers(0, len(head)))]
    if draw(st.integers(0, 4)) == 0:
        sizes = draw(st.lists(st.integers(0, 8) | st.integers(0, 2**32 - 1), min_size=1,
                              max_size=5))
    return head, sizes


def _split(message: bytes) -> tuple[bytes, list[int]]:
    sizes = ref.segment_sizes(message)
    assert sizes is not None
    return message[ref.header_size(len(sizes)):], sizes


@st.composite
def heads(draw: Any) -> tuple[bytes, list[int]]:
    which = draw(st.integers(0, 3))
    if which == 0:
        head, sizes = _split(draw(real_messages))
        if draw(st.booleans()):
            head = head[: draw(st.integers(0, len(head)))]
        return head, sizes
    if which == 1:
        return draw(st.binary(max_size=80)), draw(st.lists(st.integers(0, 12), max_size=4))
    return draw(made())


members = st.none() | st.sets(st.integers(0, 16), max_size=5).map(tuple)


def _same(c: Any, r: Any) -> None:
    assert c == r


def _call(f: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return f(*args, **kwargs)
    except ValueError as e:  # TooManySegments: the C and the reference classes differ
        return type(e).__name__, str(e)


@SETTINGS
@given(heads(), members, st.booleans())
def test_rpc_member_is_the_references(got: tuple[bytes, list[int]], members: Any,
                                      far: bool) -> None:
    head, sizes = got
    args = (head, sizes) if members is None else (head, sizes, members)
    assert capnp_frames.rpc_member(*args, far=far) == ref.rpc_member(*args, far=far)
    assert capnp_frames.rpc_member(memoryview(head), sizes, far=far) == \
        ref.rpc_member(memoryview(head), sizes, far=far)


@SETTINGS
@given(made(), st.integers(0, 7), st.integers(0, 12) | st.integers(0, 2**32), st.booleans())
def test_struct_at_is_the_references(got: tuple[bytes, list[int]], segment: int, at: int,
                                     far: bool) -> None:
    head, sizes = got
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if max(starts) >= 2**32:
        return
    segment %= len(sizes)
    assert capnp_frames.struct_at(head, starts, sizes, segment, at, far) == \
        ref.struct_at(head, starts, sizes, segment, at, far)


tables = st.one_of(
    real_messages,
    st.binary(max_size=40),
    st.builds(lambda n, rest: struct.pack("<I", n) + rest,
              st.integers(0, 600) | st.integers(2**32 - 3, 2**32 - 1), st.binary(max_size=3000)),
)


@SETTINGS
@given(tables)
def test_tables_are_the_references(buf: bytes) -> None:
    for name in ("segment_sizes", "message_size"):
        assert _call(getattr(capnp_frames, name), buf) == _call(getattr(ref, name), buf)
        assert _call(getattr(capnp_frames, name), memoryview(buf)) == \
            _call(getattr(ref, name), buf)
    with pytest.raises(capnp_frames.TooManySegments, match="a message of 513 segments"):
        capnp_frames.message_size(struct.pack("<I", 512))


@given(st.integers(-(2**40), 2**40))
def test_header_size_is_the_references(n: int) -> None:
    assert capnp_frames.header_size(n) == ref.header_size(n)


# --- the Framer ------------------------------------------------------------------------------

def ref_wire_classify(head: bytes, sizes: list[int]) -> tuple[int, int]:
    """ww.host.wire.classify over the reference reader."""
    member = ref.rpc_member(head, sizes, (ref.CALL, ref.RETURN, ref.BOOTSTRAP))
    if member is None:
        return wire.UNSURE, 0
    which, ident = member
    if which in (ref.CALL, ref.BOOTSTRAP):
        return wire.CALL, ident or 0
    if which == ref.RETURN:
        return wire.RETURN, ident or 0
    return wire.OTHER, 0


def _ref_call_or_return(head: bytes, sizes: list[int]) -> tuple[int, int]:
    """Three kinds: a Bootstrap is OTHER."""
    member = ref.rpc_member(head, sizes)
    if member is None:
        return wire.UNSURE, 0
    which, ident = member
    if which == ref.CALL:
        return wire.CALL, ident or 0
    if which == ref.RETURN:
        return wire.RETURN, ident or 0
    return wire.OTHER, 0


def _table(sizes: list[int]) -> bytes:
    table = struct.pack(f"<I{len(sizes)}I", len(sizes) - 1, *sizes)
    return table + b"\0" * (-len(table) % 8)


@st.composite
def streams(draw: Any) -> bytes:
    """Messages one after the other: real ones, hand-made ones, ones without segments, a
    table past the limit (the rest unreadable), a last one cut short."""
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 5))
        if kind <= 1:
            out += draw(real_messages)
        elif kind == 2:
            head, sizes = draw(made())
            if sum(sizes) > 64:
                continue
            body = head + bytes(8 * sum(sizes) - len(head)) if 8 * sum(sizes) >= len(head) \
                else head[: 8 * sum(sizes)]
            out += _table(sizes) + body
        elif kind == 3:
            out += _table([0] * draw(st.integers(1, 3)))
        elif kind == 4:
            out += draw(st.binary(max_size=64))
        else:
            out += struct.pack("<I", draw(st.integers(512, 2**32 - 1))) + \
                draw(st.binary(max_size=32))
    return out


@st.composite
def pieces(draw: Any, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _run(framer_type: Any, classify: Any, head: int, chunks: list[bytes], as_view: bool,
         unsure: Any = wire.UNSURE) -> tuple[list[tuple[Any, ...]], bool]:
    seen: list[tuple[Any, ...]] = []
    framer = framer_type(lambda *r: seen.append(r), classify, unsure, head)
    for chunk in chunks:
        framer.feed(memoryview(bytearray(chunk)) if as_view else chunk)
    return seen, framer.broken


def _odd_classify(head: bytes, sizes: list[int]) -> Any:
    """A classify that sometimes fails or answers in another shape: the message is unsure."""
    n = len(head) % 5
    if n == 0:
        raise RuntimeError("no")
    if n == 1:
        return [len(head), sizes[0]]
    if n == 2:
        return (1, 2, 3)
    if n == 3:
        return "k", bytes(head[:3])
    return iter([sizes[0], "x"])


@SETTINGS
@given(st.data(), streams(), st.sampled_from([0, 1, 8, 24, 4096]), st.booleans())
def test_framer_is_the_references(data: Any, stream: bytes, head: int, as_view: bool) -> None:
    chunks = data.draw(pieces(stream))
    expected = _run(ref.Framer, ref_wire_classify, head, chunks, False)
    whole = _run(ref.Framer, ref_wire_classify, head, [stream], False)
    # C, with wire's classify function; with the kinds (classified in C); other functions
    assert _run(capnp_frames.Framer, wire.classify, head, chunks, as_view) == expected
    assert _run(capnp_frames.Framer, (wire.CALL, wire.RETURN, wire.OTHER, wire.CALL), head,
                chunks, as_view) == expected
    assert _run(capnp_frames.Framer, (wire.CALL, wire.RETURN, wire.OTHER), head, chunks,
                as_view) == _run(ref.Framer, _ref_call_or_return, head, chunks, False)
    assert _run(capnp_frames.Framer, _odd_classify, head, chunks, as_view, "unsure") == \
        _run(ref.Framer, _odd_classify, head, chunks, False, "unsure")
    # any split reports the same messages (a broken stream's tail may come in more pieces)
    if not expected[1]:
        assert expected == whole


def test_framer_lets_an_interrupt_through_and_a_callback_error_out() -> None:
    """An exception that is not an ``Exception`` from classify is not swallowed (as in the
    reference's ``except Exception``); one from on_message reaches the caller, the framer's
    state already past the message."""
    message = _real("call", 5, None, 0)

    def interrupted(head: bytes, sizes: list[int]) -> tuple[int, int]:
        raise KeyboardInterrupt

    framer = capnp_frames.Framer(lambda *r: None, interrupted, wire.UNSURE, 64)
    with pytest.raises(KeyboardInterrupt):
        framer.feed(message)
    seen: list[tuple[int, int, int]] = []

    def on_message(kind: int, ident: int, size: int) -> None:
        seen.append((kind, ident, size))
        if len(seen) == 1:
            raise OSError("boom")

    framer = capnp_frames.Framer(on_message, (wire.CALL, wire.RETURN, wire.OTHER),
                                 wire.UNSURE, 64)
    with pytest.raises(OSError, match="boom"):
        framer.feed(message + message)
    framer.feed(message)
    assert seen == [(wire.CALL, 5, len(message))] * 2
