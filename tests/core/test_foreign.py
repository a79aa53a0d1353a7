"""ww.core.foreign: the one place where pycapnp's, py-libp2p's and the builtins' errors become
one line or an error of the tree.  Real pycapnp exceptions, as KJ describes them."""

from __future__ import annotations

import subprocess
import sys

import capnp
import pytest

from tests.conftest import HANG
from ww.core.errors import CallError, UsageError, WwError
from ww.core.foreign import chained_reason, expected_reason, kj_reason


@pytest.mark.parametrize(("description", "reason"), [
    # the host's exact reason, as a cell's KJ shows it
    ("remote exception: capability denied: ipfs: add: read-only",
     "capability denied: ipfs: add: read-only"),
    # a pycapnp server that is not the host, relayed by two hosts
    ("remote exception: remote exception: message = p2p: no such peer", "p2p: no such peer"),
    # a Python server's default answer: its traceback, of which the error is the last line
    ("remote exception: message = Traceback (most recent call last):\n  File \"x.py\", "
     "line 1, in f\nValueError: bad argument\n", "ValueError: bad argument"),
    # a failure of the local KJ: its source location goes
    ("src/capnp/rpc.c++:1234: disconnected: Peer disconnected.", "Peer disconnected."),
    # KJ's stack trace goes
    ("remote exception: no export\nstack: 0x1 0x2", "no export"),
    ("", "no reason given"),
    # pycapnp's transport lost the connection: its error, or None when the stream just ended
    # (a stream the remote host cut off: "message = None" reached `ww call` before)
    ("message = [Errno 104] Connection reset by peer", "[Errno 104] Connection reset by peer"),
    ("message = None", "the connection ended before the answer came"),
    # the same, relayed to a cell by its host (a stream it dialed, cut off by the remote host:
    # the cell's SDK said `RemoteError: None`)
    ("remote exception: message = None", "the connection ended before the answer came"),
])
def test_a_kj_exception_is_one_line_without_prefixes(description, reason):
    e = capnp.KjException(description)
    assert kj_reason(e) == reason


def test_a_reason_from_the_other_side_is_bounded():
    assert len(kj_reason(capnp.KjException("remote exception: " + "x" * 10_000))) == 500


def test_the_sdk_and_the_p2p_dialer_read_a_kj_exception_alike():
    from ww.cell import CapabilityDenied, RemoteError
    from ww.cell._session import remote_error

    e = capnp.KjException("remote exception: message = Traceback (most recent call last):\n"
                          "  File \"cell.py\", line 3\nPermissionError: capability denied: "
                          "p2p: dial: not allowed\n")
    mapped = remote_error(e)
    assert isinstance(mapped, CapabilityDenied) and isinstance(mapped, RemoteError)
    assert str(mapped) == "capability denied: p2p: dial: not allowed"


def test_a_nested_empty_libp2p_error_gives_the_first_message_on_its_chain():
    try:
        try:
            raise ConnectionRefusedError("connection refused")
        except OSError as inner:
            raise RuntimeError() from inner
    except RuntimeError as e:
        assert chained_reason(e) == "connection refused"
    assert chained_reason(TimeoutError()) == "TimeoutError"


def test_errors_raised_on_purpose_have_a_reason_and_bugs_none():
    assert expected_reason(PermissionError("no")) == "no"
    assert expected_reason(ValueError("bad\nsecond line")) == "bad"
    assert expected_reason(UsageError("u")) == "u"
    assert expected_reason(KeyError("k")) is None
    assert expected_reason(WwError("one\ntwo")) == "one"


def test_importing_the_host_does_not_patch_pycapnp():
    """Replacing pycapnp's private _traceback is explicit (send_one_line_errors), not a side
    effect of an import; a fresh interpreter, since the tests' own may have called it."""
    code = (
        "import capnp, ww.host.rpc, ww.host.supervisor, ww.cell\n"
        "import traceback\n"
        "assert capnp.lib.capnp._traceback is traceback, capnp.lib.capnp._traceback\n"
        "from ww.core.foreign import send_one_line_errors\n"
        "send_one_line_errors(False)\n"
        "assert capnp.lib.capnp._traceback is not traceback\n"
        "print(capnp.lib.capnp._traceback.format_exception(KeyError, KeyError('x'), None))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['internal error in the host (KeyError)']\n"


def test_a_capability_refusing_a_call_raises_a_named_call_error():
    """Raised at the source as CallError (still the ValueError callers caught before), and
    sent to the cell as its one line."""
    import asyncio
    import io

    from ww.caps.console import MAX_LINE, ConsoleServer

    out = io.StringIO()
    with pytest.raises(CallError) as caught:
        asyncio.run(ConsoleServer(out).println("x" * (MAX_LINE + 1)))
    assert isinstance(caught.value, ValueError)
    assert expected_reason(caught.value) == (
        f"console line too long ({MAX_LINE + 1} > {MAX_LINE} characters)")
    assert out.getvalue() == ""
