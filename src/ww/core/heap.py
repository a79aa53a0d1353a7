"""The C allocator's free memory, handed back to the kernel: glibc's ``malloc_trim(0)``.

glibc keeps freed memory for reuse: the free top of each heap up to its trim threshold, and
the free pages inside a heap until a trim.  It also raises its threshold for serving a
block with ``mmap`` to the size of the largest such block freed (up to 32 MiB), so once a
few MiB-sized blocks have come and gone, the next ones come from the heap and, freed, stay
there.  A trim gives back the main heap's free top and every heap's free whole pages (not
a thread arena's top).  It took about 0.1 ms for a few MiB and 21 ms for 200 MiB.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def trimmer() -> Callable[[], object] | None:
    """``malloc_trim(0)`` as a function of no arguments; None where the C library has none
    (not glibc).  ``ctypes`` releases the interpreter lock while it runs."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)
