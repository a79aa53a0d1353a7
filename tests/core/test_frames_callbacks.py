"""ww.core._frames while the Python it calls changes what the C holds: an item's
``__index__`` that changes the list of sizes being read, an ``on_message`` or ``classify``
that re-initialises the Framer calling it (dropping the Framer's reference to the callable
running).  Reading freed memory does not always crash, so the cases that would read it run
in a process of their own with ``PYTHONMALLOC=debug``, which overwrites freed memory."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import weakref
from functools import partial

from tests.conftest import HANG
from ww.core import capnp_frames
from ww.host import wire

KINDS = (wire.CALL, wire.RETURN, wire.OTHER)
# a call: a one-segment message, its root (data 1 word, pointers 1) with which = CALL, the
# call struct (data 1 word) with question id 7
CALL = struct.pack("<II", 0, 4) + struct.pack(
    "<QQQQ", 1 << 32 | 1 << 48, 2, 0 << 2 | 1 << 32, 7
)


def _debug_python(code: str) -> str:
    """stdout of ``code`` run by this Python with freed memory overwritten; fails on a crash."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONMALLOC": "debug"},
        capture_output=True,
        text=True,
        timeout=HANG,  # a bound on a hang, not a timing
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    return done.stdout


def test_the_call_is_what_the_cases_read() -> None:
    assert capnp_frames.rpc_member(CALL[8:], [4]) == (capnp_frames.CALL, 7)
    seen: list[tuple[int, int, int]] = []
    capnp_frames.Framer(lambda *r: seen.append(r), KINDS, wire.UNSURE, 64).feed(CALL)
    assert seen == [(wire.CALL, 7, len(CALL))]


def test_a_size_whose_index_changes_the_list_being_read() -> None:
    """rpc_member and struct_at read the sizes (and starts) given as they were when called,
    whatever an item's ``__index__`` does to the list meanwhile (it used to free the items
    being read: a crash)."""
    out = _debug_python(
        """
        from ww.core import capnp_frames as cf

        class Shrinks:
            def __init__(self, values):
                self.values = values

            def __index__(self):
                self.values.clear()  # frees the list's items
                self.values.extend(range(1000))
                return 4

        head = bytes.fromhex(
            "0000000001000100" "0200000000000000" "0000000001000000" "0700000000000000")
        sizes = [None, 9]
        sizes[0] = Shrinks(sizes)
        print(cf.rpc_member(head, sizes))
        sizes = [None, 9]
        sizes[0] = Shrinks(sizes)
        starts = [0, 4]
        print(cf.struct_at(head, starts, sizes, 0, 0))
        sizes = [4, 9]
        starts = [None, 4]
        starts[0] = Shrinks(starts)
        print(cf.struct_at(head, starts, sizes, 1, 0))
        """
    )
    assert out.split("\n") == ["(2, 7)", "(0, 1, 1, 1)", "None", ""]


def test_on_message_that_reinitialises_its_framer() -> None:
    """The Framer holds the on_message it calls until the call returns, even when the call
    re-initialises the Framer with another: a C callable (an lru_cache wrapper) that uses
    itself after calling back used to be freed under it (a crash)."""
    out = _debug_python(
        f"""
        import functools
        from ww.core import capnp_frames as cf

        seen = []
        framer = cf.Framer(print, (0, 1, 2), 3, 64)

        def first(kind, ident, size):
            seen.append(("first", kind, ident, size))
            framer.__init__(lambda *r: seen.append(("second", *r)), (0, 1, 2), 3, 64)
            return object()  # a new result: the wrapper stores it in its cache

        on_message = functools.lru_cache(maxsize=None)(first)
        framer.__init__(on_message, (0, 1, 2), 3, 64)
        del on_message  # the Framer holds the only reference
        message = bytes.fromhex("{CALL.hex()}")
        framer.feed(message + message)
        print(seen)
        """
    )
    n = len(CALL)
    assert out.strip() == repr([("first", 0, 7, n), ("second", 0, 7, n)])


def _alive_while_called(make_framer: object) -> list[bool]:
    """Whether a callable (a partial: weakly referable) is still alive inside its own call
    that re-initialises the Framer which held the only reference to it."""
    alive: list[bool] = []
    framer = capnp_frames.Framer(print, KINDS, wire.UNSURE, 64)
    ref: list[weakref.ref[object]] = []

    def body(*args: object) -> tuple[int, int]:
        framer.__init__(lambda *r: None, KINDS, wire.UNSURE, 64)
        alive.append(ref[0]() is not None)
        return wire.OTHER, 0

    callable_ = partial(body)
    ref.append(weakref.ref(callable_))
    make_framer(framer, callable_)  # type: ignore[operator]
    del callable_
    framer.feed(CALL)
    return alive


def test_on_message_outlives_its_call() -> None:
    assert _alive_while_called(
        lambda framer, f: framer.__init__(f, KINDS, wire.UNSURE, 64)) == [True]


def test_classify_outlives_its_call() -> None:
    assert _alive_while_called(
        lambda framer, f: framer.__init__(print, f, wire.UNSURE, 64)) == [True]
