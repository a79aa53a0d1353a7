"""Errors that end a `ww` command, each carrying the exit status the spec gives it.

The CLI prints ``str(error)`` as one line on stderr and exits with ``error.exit_code``;
tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

# Exit statuses, from the Cell API spec and decisions.md.
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
