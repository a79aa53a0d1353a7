"""The pipes of a child of the exec capability are closed once, by the event loop's transport.

uvloop's pipe transports close their fd twice: libuv closes it, then uvloop calls the file
object's ``close()``, which closes the same number again (uvloop's own comment counts on
EBADF).  In a host with other threads (trio's, the IPFS workers') that number may be another
file's by then: the second close would close it under that thread.
"""

from __future__ import annotations

import io
import os

import pytest

from ww.caps import exec as exec_cap
from ww.core import bridge
from ww.host import process as process_module


class _Watched(io.FileIO):
    """A pipe end that records, each time its fd is closed, whether the fd was still it."""

    log: list[bool] = []

    def __init__(self, fd: int, mode: str, **kwargs) -> None:
        super().__init__(fd, mode.replace("b", ""), **kwargs)
        st = os.fstat(fd)
        self._was = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if not self.closed and self.closefd:
            try:
                st = os.fstat(self.fileno())
                self.log.append((st.st_dev, st.st_ino) == self._was)
            except OSError:  # closed already: this close hits whatever has the number now
                self.log.append(False)
        super().close()


def _watched_open(fd, mode="r", buffering=-1, closefd=True, **kwargs):
    return _Watched(fd, mode, closefd=closefd)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_child_s_pipes_are_closed_once_and_only_while_they_are_the_pipes(loop, monkeypatch):
    monkeypatch.setenv(bridge.EVENT_LOOP_ENV, loop)
    monkeypatch.setattr(process_module, "open", _watched_open, raising=False)
    monkeypatch.setattr(bridge, "open", _watched_open, raising=False)
    _Watched.log = []

    async def main() -> int:
        import asyncio

        assert (type(asyncio.get_running_loop()).__module__ == "uvloop") == (loop == "uvloop")
        child = await exec_cap._Child.start(["/bin/sh", "-c", "echo out; echo err >&2"],
                                            {}, ())
        assert await child.stdout.read() == b"out\n"
        assert await child.stderr.read() == b"err\n"
        child.stdin.close()
        rc = await child.exited
        await child.stdin.wait_closed()
        for _ in range(3):  # the read pipes' transports close on the loop's next turns
            await asyncio.sleep(0)
        return rc

    assert bridge.run(main()) == 0
    assert _Watched.log and all(_Watched.log), _Watched.log
