"""The one exception tree of ``ww``: every error it raises on purpose is a :class:`WwError`.

Each class carries the exit status the spec gives it (``exit_code``).  The CLI prints
``str(error)`` as one line on stderr and exits with ``error.exit_code``; tracebacks appear only
with ``--debug``.  A capability server answers a cell with the same one line.

The tree, roots of each area (the areas add named subclasses of their own, e.g.
``ww.ipfs.api.NotFoundError`` or ``ww.cell.CapabilityDenied``)::

    WwError                      1
    +-- UsageError               2    the command line is wrong; nothing was started
    |   +-- AddressError         2    a multiaddr, peer address or CIDR is malformed
    |   +-- ChunkerError         2    a chunker string (size-N, rabin..., buzhash) kubo refuses
    +-- CallError                1    a capability call refused for its arguments or state
    +-- DeniedError              65   outside what was granted
    +-- AuthenticationFailed     64   a login failed
    +-- ResourceLimitError       66   a limit refused work
    +-- NotExecutableError       126
    +-- CommandNotFoundError     127
    +-- HostError                1    any other failure of the host itself
    +-- IpfsError                1    an IPFS operation failed; its kinds: InvalidPathError,
    |                                 NotFoundError, NotAFileError, CorruptBlockError,
    |                                 BackendUnavailableError, UnsupportedError, CallCancelled
    +-- P2PError                 1    a peer could not be reached, listened on or called
    +-- RpcError                 1    a Cap'n Proto call failed; its one-line reason
    +-- CellError                1    the cell SDK's errors (ww.cell)

Errors of other libraries (pycapnp, py-libp2p, the builtins a capability raises) become one
of these in one place, :mod:`ww.core.foreign`; a kubo node's HTTP answers become the kinds of
``IpfsError`` in its client, which alone knows kubo's messages.  This module imports nothing,
so that every layer (the SDK a cell imports included) can use it at no cost.
"""

from __future__ import annotations

# Exit statuses, from the Cell API specification (docs/protocol.md lists them).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH_FAILED = 64
EXIT_CAP_DENIED = 65
EXIT_RESOURCE_LIMIT = 66
EXIT_ISOLATION_VIOLATION = 67
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class WwError(Exception):
    """A failure to report to the user in one line, with a given exit status."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(WwError):
    """The command line is wrong (exit 2); no cell was started."""

    exit_code = EXIT_USAGE


class AddressError(UsageError, ValueError):
    """A network address (multiaddr, peer address, CIDR range) is malformed or of a kind
    ``ww`` does not speak.  A usage error on the command line; from a cell, the reason its
    call is refused.  Still a ValueError, as the address checkers raised before."""


class ChunkerError(UsageError, ValueError):
    """A chunker string (``ww export --chunker``) that kubo's ``ipfs add`` would refuse, with
    kubo's own reason.  Still a ValueError: the string is a bad value wherever it comes from."""


class CallError(WwError, ValueError):
    """A capability refused a call because of its arguments or of the state of the object it
    was made on (a write after ``done()``, a line too long); the message goes to the caller.
    Still a ValueError, as the capability servers raised before."""


class DeniedError(WwError, PermissionError):
    """The call or action is outside what was granted (exit 65, capability access denied)."""

    exit_code = EXIT_CAP_DENIED


class AuthenticationFailed(WwError):
    """A login failed; ``ww run`` stops the cell and exits 64 with this one line."""

    exit_code = EXIT_AUTH_FAILED

    def __init__(self, reason: str) -> None:
        super().__init__(f"authentication failed: {reason}")
        self.reason = reason


class CommandNotFoundError(WwError):
    """The executable to run does not exist (exit 127)."""

    exit_code = EXIT_NOT_FOUND


class NotExecutableError(WwError):
    """The executable exists but cannot be executed (exit 126)."""

    exit_code = EXIT_NOT_EXECUTABLE


class ResourceLimitError(WwError):
    """A limit of the command line (--fsize, ...) refused work before the cell ran (exit 66)."""

    exit_code = EXIT_RESOURCE_LIMIT


class HostError(WwError):
    """Any other failure of the host itself (exit 1)."""

    exit_code = EXIT_FAILURE


class OutputError(HostError):
    """A command's stdout cannot be written: closed by the caller, a full disk, an I/O error
    (exit 1).  A reader that went away (EPIPE) is not this: see ``ww.cli._output``."""


class IpfsError(WwError):
    """Base class of every IPFS error; ``str(err)`` is one line fit for a user (exit 1).

    Its kinds follow; :mod:`ww.ipfs` re-exports them beside the CoreAPI."""


class InvalidPathError(IpfsError):
    """The string is not a valid CID or IPFS path."""


class NotFoundError(IpfsError):
    """The content (a block, or a name inside a directory) is not available."""


class DestinationExistsError(IpfsError):
    """``ww import``'s destination exists and ``--force`` was not given (exit 1)."""


class UnsafeDestinationError(IpfsError):
    """``ww import``'s destination is a symlink, device, FIFO or socket: never written
    through or replaced, even with ``--force`` (exit 1)."""


class NotAFileError(IpfsError):
    """A file was needed (cat, run) but the path names a directory or symlink."""


class CorruptBlockError(IpfsError):
    """A stored or received block does not hash to its CID, or does not decode."""


class BackendUnavailableError(IpfsError):
    """The configured backend (for example a remote kubo node) cannot be reached."""


class UnsupportedError(IpfsError):
    """The backend cannot do this (for example ``connect`` on the offline embedded node)."""


class CallCancelled(IpfsError):
    """The caller gave up on the call (a cell cancelled it, dropped its reader or writer, or
    hung up); the work it started has stopped."""


class P2PError(WwError):
    """A peer could not be reached, listened on or called; ``str()`` is one line (exit 1)."""


class CellError(WwError):
    """Base class of the cell SDK's errors (:mod:`ww.cell`)."""


class RpcError(WwError):
    """A Cap'n Proto call failed on the other side (or the connection did); ``str()`` is the
    one-line reason it sent, without KJ's prefixes or a remote traceback (exit 1)."""
