"""The cell's environment: built from WW_ENV, --env and the WW_FD_* and WW_DIR_* variables,
nothing else.

decisions.md (2): an entry is ``NAME`` (pass the host's value through, if it has one) or
``NAME=VALUE`` (set it).  ``WW_ENV`` is comma-separated, ``--env`` repeats; later entries
win.  No other host variable reaches the cell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ww.core.errors import UsageError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*\Z"  # matched with re, imported only for a variable


def parse_ww_env(value: str) -> list[str]:
    """Split a ``WW_ENV`` value into entries, ignoring empty ones (``A,,B`` or a trailing comma)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def build_env(
    entries: Iterable[str],
    host_env: Mapping[str, str],
    fd_vars: Mapping[str, str],
) -> dict[str, str]:
    """Return the cell's whole environment.

    ``entries`` come from WW_ENV first, then each ``--env`` in order.  The ``WW_FD_*`` and
    ``WW_DIR_*`` variables (``fd_vars``) are set last, and no entry may name one, so that
    none can make them lie about the fd layout or the granted directories.
    """
    env: dict[str, str] = {}
    for entry in entries:
        import re  # here: `ww run` without variables does without it

        name, sep, value = entry.partition("=")
        if not re.match(_NAME, name):
            raise UsageError(
                f"invalid environment entry {entry!r}: expected NAME or NAME=VALUE "
                "with NAME made of letters, digits and '_'"
            )
        if name.upper().startswith(("WW_FD_", "WW_DIR_")):
            raise UsageError(
                f"invalid environment entry {entry!r}: WW_FD_* and WW_DIR_* variables are "
                "set by the host from --fd and --dir"
            )
        if sep:
            env[name] = value
        elif name in host_env:
            env[name] = host_env[name]
    env.update(fd_vars)
    return env
