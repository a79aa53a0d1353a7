"""The one place where errors of other libraries become ``ww``'s (:mod:`ww.core.errors`).

As httpx's ``_exceptions.py`` does for its transports: pycapnp's ``KjException``, py-libp2p's
nested and often empty exceptions, and the builtins a capability raises on purpose are read
here, and nowhere else, into one line (the reason a caller is told).

pycapnp is not imported here (only by :func:`send_one_line_errors`): its exception is told by
its class name and attributes, so that the CLI can use this module without loading it.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from ww.core.errors import WwError

# Builtins a capability server raises on purpose (its arguments or state are wrong, the call
# is not allowed, not implemented): their message is one line meant for the caller.  Any
# other exception is a bug, whose traceback stays on the host.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    WwError, ValueError, PermissionError, NotImplementedError,
)

MAX_REASON = 500
"""Characters of a reason kept from the other side of a connection (a peer may send more)."""

# What KJ puts before a reason: "remote exception: " for one that came over the wire, a
# "file:line: kind: " location for one raised locally (a null capability, a hang-up); what
# pycapnp puts before a Python server's message: "message = ".
_REMOTE = "remote exception: "
_PYCAPNP = "message = "
_LOCAL = re.compile(r"^\S+:\d+: [a-z ]+: ")
_LOST = "the connection ended before the answer came"


def is_kj_exception(e: BaseException) -> bool:
    """Whether ``e`` is pycapnp's ``KjException`` (told without importing pycapnp)."""
    return type(e).__name__ == "KjException" and hasattr(e, "description")


def kj_reason(e: BaseException) -> str:
    """The one line a Cap'n Proto failure means, without KJ's or pycapnp's prefixes.

    Each hop that relays an error (a remote cell's, through its host and ours) puts one more
    ``remote exception: `` before it; a Python server that is not the host sends its whole
    traceback, of which the last line is the error itself, not its source paths.
    """
    text = (getattr(e, "description", None) or str(e)).split("\nstack:", 1)[0].strip()
    if text.startswith(_REMOTE):
        while text.startswith((_REMOTE, _PYCAPNP)):
            text = text.removeprefix(_REMOTE).removeprefix(_PYCAPNP)
        if text == "None":  # the same, relayed: a cell's host lost the stream it dialed
            return _LOST
    else:
        text = _LOCAL.sub("", text, count=1)
        if _REMOTE in text:
            text = text.split(_REMOTE, 1)[1].removeprefix(_PYCAPNP)
        elif text.startswith(_PYCAPNP):
            # pycapnp's own transport lost the connection: it writes ``str(exc)``, "None"
            # when the stream just ended (the remote host cut it off, or went away)
            text = text.removeprefix(_PYCAPNP)
            if text == "None":
                return _LOST
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    traceback = any(line.startswith("Traceback (most recent call last)") for line in lines)
    return (lines[-1] if traceback else lines[0])[:MAX_REASON]


def chained_reason(e: BaseException, limit: int = 200) -> str:
    """A one-line reason from an exception that nests and is often empty (py-libp2p's,
    trio's): the first message found along its causes, else its class name."""
    while not str(e) and (e.__cause__ or e.__context__):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:limit]


def expected_reason(e: BaseException) -> str | None:
    """The one line to answer a caller with for an error raised on purpose; None for a bug
    (or anything else not meant for the caller's eyes)."""
    if is_kj_exception(e):
        return str(getattr(e, "description", ""))
    if isinstance(e, EXPECTED_ERRORS):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


class _OneLineErrors:
    """Stands in for the ``traceback`` module inside pycapnp (see :func:`send_one_line_errors`).

    pycapnp sends a failing server method's whole Python traceback to the caller, which
    would show the cell the host's source paths and code.  The cell gets one line instead:
    the message of an error raised on purpose (:func:`expected_reason`), or a generic line
    for a bug, whose traceback goes to the host's stderr only (with --debug).
    """

    debug = False

    @classmethod
    def format_exception(cls, etype: type, exc: BaseException, tb: Any) -> list[str]:
        reason = expected_reason(exc)
        if reason is not None:
            return [reason]
        if cls.debug:
            import traceback

            sys.stderr.write("".join(traceback.format_exception(etype, exc, tb)))
        return [f"internal error in the host ({etype.__name__})"]


def send_one_line_errors(debug: bool) -> None:
    """Make this process's pycapnp answer a failing call with one line, never a traceback.

    pycapnp has no hook for how a server's exception becomes the reason sent to the caller:
    it formats it with the ``traceback`` module it keeps as the private ``_traceback``.  The
    host replaces that, once, before it serves anything (``ww run``'s supervisor calls this
    before serving fd 3); every connection of the process is then served alike.  With
    ``debug``, a bug's traceback is printed on the host's stderr.  Calling it again only
    changes ``debug``.  A cell's SDK never calls it: a cell's own servers are its business.
    """
    import capnp

    _OneLineErrors.debug = debug
    capnp.lib.capnp._traceback = _OneLineErrors  # type: ignore[attr-defined]
