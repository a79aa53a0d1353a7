"""Errors a cell can catch, each with a one-line message.

They are part of the one tree of ``ww``'s errors (:mod:`ww.core.errors`): ``CellError`` is
a ``WwError``, and a denial is also a ``DeniedError`` (exit status 65).
"""

from __future__ import annotations

from ww.core.errors import CellError, DeniedError, RpcError

__all__ = ["AuthenticationFailed", "CapabilityDenied", "CapabilityNotGranted", "CellError",
           "FdNotProvided", "RemoteError"]


class FdNotProvided(CellError, LookupError):
    """``fd(name)``: the operator did not pass ``--fd name=...``."""


class CapabilityNotGranted(CellError, DeniedError):
    """The session does not hold this capability: the operator did not grant it.

    A cell that gives up because of it should exit with status 65 (capability access
    denied), which the synchronous SDK does for an uncaught one.
    """

    exit_code = 65

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the {name!r} capability was not granted to this cell "
            f"(the operator grants it with 'ww run --with-{name}' or '--with-all')"
        )
        self.name = name


class RemoteError(CellError, RpcError):
    """The host answered a call with an error; the message is the host's one line."""


class CapabilityDenied(RemoteError, DeniedError):
    """The call is outside the capability's grant (a read-only IPFS asked to add, a path
    outside its roots, a sub-cell asking for more than its parent holds).

    The host's message starts with ``capability denied: ``.  A cell that gives up because
    of it should exit with status 65, which the synchronous SDK does for an uncaught one.
    """

    exit_code = 65


class AuthenticationFailed(RemoteError):
    """The host refused the login; it stops the cell right after (``ww run`` exits 64)."""
