"""One line to tell a user why something failed, from exceptions that nest."""

from __future__ import annotations

__all__ = ["one_line_reason"]


def one_line_reason(e: BaseException) -> str:
    """A one-line reason from an exception that may be empty and wrap the real one (as
    libp2p's do): the first line of the first non-empty message along its causes, at most
    200 characters, or the exception's type name."""
    while not str(e) and (e.__cause__ or e.__context__):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
