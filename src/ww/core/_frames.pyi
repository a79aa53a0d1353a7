# Types of the extension module built from _frames.c (frames.c; see capnp_frames.py).
from collections.abc import Callable, Collection, Sequence
from typing import Any

MAX_SEGMENTS: int

class TooManySegments(ValueError): ...

def header_size(segments: int) -> int: ...
def segment_sizes(buf: Any) -> list[int] | None: ...
def message_size(buf: Any) -> int | None: ...
def struct_at(
    head: Any, starts: Sequence[int], sizes: Sequence[int], segment: int, at: int,
    far: bool = True,
) -> tuple[int, int, int, int] | None: ...
def rpc_member(
    head: Any, sizes: Sequence[int], members: Collection[int] = ..., far: bool = True
) -> tuple[int, int | None] | None: ...

class Framer:
    # True after a segment table past MAX_SEGMENTS: every later byte is reported unsure
    broken: bool
    def __init__(
        self,
        on_message: Callable[[Any, Any, int], object],
        # a function (head, sizes) -> (kind, id), or (call, return, other[, bootstrap]) kinds:
        # rpc_member in C (with a bootstrap kind, a Bootstrap is that kind with its question id)
        classify: Callable[[bytes, list[int]], tuple[Any, Any]]
        | tuple[Any, Any, Any]
        | tuple[Any, Any, Any, Any],
        unsure: Any,
        head: int,
    ) -> None: ...
    def feed(self, data: Any) -> None: ...
