"""The limit flags as the operator writes them: sizes (``64M``), durations (``500ms``), counts.

Each parser returns the value or raises a UsageError naming the flag; the bounds are the
largest values the kernel takes (and the host can hand it).
"""

from __future__ import annotations

from ww.core.errors import UsageError

# Tasks of a jailed cell that are not the cell's own: bubblewrap and its init in the jail.
JAIL_TASKS = 2

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?"
_SECONDS = r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?"

# The largest values the kernel takes (and the host can hand it): sizes and durations
# become 64-bit signed rlimits or cgroup values; --pids becomes pids.max, at most
# PID_MAX_LIMIT (2**22) with the jail's own tasks on top.
MAX_SIZE = (1 << 63) - 1  # bytes
MAX_SECONDS = 1 << 32  # about 136 years: RLIMIT_CPU is set a second or two past it
PID_MAX_LIMIT = 1 << 22


def _too_large(flag: str, text: str, largest: str) -> UsageError:
    return UsageError(f"{flag} {text!r}: too large (at most {largest})")


def parse_size(text: str, flag: str) -> int:
    """``64M``, ``1.5G``, ``4096``, ``10KiB`` -> a whole, positive number of bytes.

    A UsageError naming ``flag`` otherwise: fewer than one byte (``0.5``), more than
    :data:`MAX_SIZE`, or not a size at all.  A fraction of a byte is dropped.
    """
    import re  # here: a `ww run` without limits does without it
    from decimal import Decimal

    m = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE | re.ASCII)
    if not m:
        raise UsageError(f"{flag} {text!r}: expected a size such as 4096, 64K, 256M or 2G")
    size = int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 1:
        raise UsageError(f"{flag} {text!r}: expected at least one byte, such as 4096, 64K, "
                         "256M or 2G")
    if size > MAX_SIZE:
        raise _too_large(flag, text, "8388607T, 2**63-1 bytes")
    return size


def parse_seconds(text: str, flag: str) -> float:
    """``2``, ``0.5``, ``3s``, ``2m``, ``500ms`` -> seconds, more than 0 and at most
    :data:`MAX_SECONDS`."""
    import re  # here: a `ww run` without limits does without it

    m = re.fullmatch(_SECONDS, text.strip(), re.ASCII)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a duration such as 30, 2.5s, 500ms or 5m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    seconds = float(m.group(1)) * scale
    if seconds > MAX_SECONDS:
        raise _too_large(flag, text, f"{MAX_SECONDS} seconds")
    return seconds


def parse_count(text: str, flag: str) -> int:
    """``--pids``: a whole number from 1 to PID_MAX_LIMIT less the jail's own tasks."""
    import re  # here: a `ww run` without limits does without it

    if not re.fullmatch(r"[0-9]+", text.strip(), re.ASCII) or int(text) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a positive whole number")
    if int(text) > PID_MAX_LIMIT - JAIL_TASKS:
        raise _too_large(flag, text, str(PID_MAX_LIMIT - JAIL_TASKS))
    return int(text)


def format_size(n: int) -> str:
    for unit in ("G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return f"{n} bytes"
