"""The host's flow limit on a cell's calls in flight (ww.host.wire): the framing of the
Cap'n Proto byte stream and the accounting of calls against their returns, on real messages
built with pycapnp's own rpc.capnp, fed in pieces of random sizes."""

from __future__ import annotations

import random
import struct

from ww.host import wire


def rpc():
    return wire._rpc_schema()


def call(question: int, payload: int) -> bytes:
    message = rpc().Message.new_message()
    body = message.init("call")
    body.questionId, body.interfaceId, body.methodId = question, 0x1234, 3
    body.target.importedCap = 0
    body.params.content.set_as_text("x" * payload)
    return message.to_bytes()


def answer(question: int) -> bytes:
    message = rpc().Message.new_message()
    message.init("return").answerId = question
    return message.to_bytes()


def finish(question: int) -> bytes:
    message = rpc().Message.new_message()
    message.init("finish").questionId = question
    return message.to_bytes()


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 3, 7, 8, 9, 64, 4095, 4097, 65536, 300_000])
        out.append(data[pos:pos + step])
        pos += step
    return out


def test_messages_are_framed_and_classified_whatever_the_chunk_boundaries():
    rng = random.Random(11)
    messages, expected = [], []
    for i in range(60):
        kind = rng.choice(["call", "return", "finish"])
        if kind == "call":
            q = rng.randrange(1 << 32)
            m = call(q, rng.choice([0, 10, 5000, 70_000, 300_000]))
            expected.append((wire.CALL, q, len(m)))
        elif kind == "return":
            q = rng.randrange(1 << 32)
            m = answer(q)
            expected.append((wire.RETURN, q, len(m)))
        else:
            m = finish(i)
            expected.append((wire.OTHER, 0, len(m)))
        messages.append(m)
    assert any(struct.unpack_from("<I", m)[0] > 0 for m in messages)  # multi-segment ones too
    for seed in range(5):
        seen: list[tuple[int, int, int]] = []
        framer = wire._Framer(lambda *r, s=seen: s.append(r))
        for piece in pieces(b"".join(messages), random.Random(seed)):
            framer.feed(memoryview(piece))
        assert seen == expected


def test_over_the_limit_reading_pauses_and_resumes_once_the_host_answers():
    events: list[str] = []
    flow = wire.FlowLimit(lambda: events.append("pause"), lambda: events.append("resume"),
                          limit=1_000_000, resume_at=500_000)
    calls = [call(q, 200_000) for q in range(8)]  # 8 x ~200 kB: over 1 MB after 5
    rng = random.Random(3)
    for piece in pieces(b"".join(calls), rng):
        flow.incoming.feed(piece)
    assert events == ["pause"]
    assert flow.total == sum(map(len, calls))
    flow.outgoing.feed(answer(999))  # no such call: changes nothing
    flow.outgoing.feed(finish(0))
    assert events == ["pause"]
    for q in range(4):
        for piece in pieces(answer(q), rng):
            flow.outgoing.feed(piece)
    assert events == ["pause"]  # 4 left, ~800 kB: still over resume_at
    flow.outgoing.feed(answer(4) + answer(5))
    assert events == ["pause", "resume"]
    flow.outgoing.feed(answer(6) + answer(7))
    assert flow.total == 0 and flow.in_flight == {}


def test_a_question_id_used_twice_counts_both_calls():
    flow = wire.FlowLimit(lambda: None, lambda: None)
    flow.incoming.feed(call(5, 1000) + call(5, 1000))
    flow.outgoing.feed(answer(5))
    assert flow.total == 0  # both released by the one Return KJ would send (or the
    # connection is dropped): neither was forgotten while in flight
    flow.incoming.feed(call(5, 1000))
    assert flow.total == len(call(5, 1000))


def test_a_root_beyond_the_head_or_garbage_is_counted_and_never_released():
    flow = wire.FlowLimit(lambda: None, lambda: None)
    # One segment of 1000 words whose root pointer points at its last struct: past HEAD.
    words = 1000
    root = ((words - 3) << 2) | (1 << 32) | (1 << 48)  # struct, offset, 1 data, 1 pointer
    message = struct.pack("<II", 0, words) + struct.pack("<Q", root) + bytes(8 * (words - 1))
    flow.incoming.feed(message)
    assert flow.total == len(message)
    flow.outgoing.feed(answer(0))
    assert flow.total == len(message)
    # A segment table KJ would refuse: everything from there on counts.
    flow.incoming.feed(struct.pack("<I", 1 << 30) + bytes(10_000))
    assert flow.total == len(message) + 4 + 10_000


def test_random_bytes_never_raise_and_never_lower_the_count():
    for seed in range(30):
        rng = random.Random(seed)
        flow = wire.FlowLimit(lambda: None, lambda: None)
        before = 0
        for _ in range(50):
            piece = rng.randbytes(rng.randrange(1, 3000))
            if rng.random() < 0.3:  # a plausible table in front of garbage segments
                piece = struct.pack("<II", 0, rng.randrange(1, 400)) + piece
            flow.incoming.feed(piece)
            assert flow.total >= before
            before = flow.total


def test_far_pointers_are_followed():
    # The root as a single far pointer into segment 1, whose landing pad points at a Call.
    sizes = [1, 6]
    far = 2 | (0 << 3) | (1 << 32)  # single far, pad at word 0 of segment 1
    pad = (0 << 2) | (1 << 32) | (1 << 48)  # struct right after the pad: 1 data, 1 pointer
    message_data = 2  # which = call
    call_ptr = (0 << 2) | (1 << 32)  # the Call right after this pointer: 1 data word
    call_data = 77  # questionId
    segment0 = struct.pack("<Q", far)
    segment1 = struct.pack("<QQQQ", pad, message_data, call_ptr, call_data)
    sizes[1] = len(segment1) // 8
    head = segment0 + segment1
    assert wire.classify(head, sizes) == (wire.CALL, 77)
    # A double far: the pad is a far pointer to the content plus a tag word.
    double = 2 | (1 << 2) | (0 << 3) | (1 << 32)
    landing = 2 | (2 << 3) | (1 << 32)  # content at word 2 of segment 1
    tag = (1 << 32) | (1 << 48)
    segment1 = struct.pack("<QQQ", landing, tag, message_data) + \
        struct.pack("<Q", (0 << 2) | (1 << 32)) + struct.pack("<Q", 99)
    assert wire.classify(struct.pack("<Q", double) + segment1,
                         [1, len(segment1) // 8]) == (wire.CALL, 99)
