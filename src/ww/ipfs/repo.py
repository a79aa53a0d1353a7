"""The on-disk repository (``$WW_HOME``, default ``~/.ww``) and its maintenance: gc, check.

Layout::

    <repo>/version            repository format ("1")
    <repo>/blocks/<shard>/... one file per block (see blockstore)
    <repo>/pins/{recursive,direct}/<cid>
    <repo>/staging/<tmp>/     CAR imports being verified before they are committed
    <repo>/gc.lock            flock: writers share it, garbage collection takes it alone
    <repo>/identity.key       the node's Ed25519 key (see identity)

Garbage collection and writers exclude each other through ``gc.lock``: every operation that
stores blocks and then pins them holds the lock *shared* from the first block to the pin, and
gc holds it *exclusive*, so gc never sees the blocks of an add that is not yet pinned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ww.core import multihash
from ww.core.cid import CID, RAW, CidError
from ww.core.fsutil import private_directory

from . import dagpb, exporter
from .api import IpfsError
from .blockstore import TEMP_PREFIX, Blockstore, temp_file_pid
from .pins import PinKind, PinStore

__all__ = ["Repo", "RepoCheck", "GcReport", "BlockUsage", "default_repo_path", "REPO_VERSION"]

REPO_VERSION = "1"


def default_repo_path() -> Path:
    """``$WW_HOME`` if set, else ``~/.ww``."""
    return Path(os.environ.get("WW_HOME") or "~/.ww").expanduser()


@dataclass(frozen=True)
class RepoCheck:
    """What :meth:`Repo.check` found.  ``ok`` means nothing needs attention."""

    blocks: int = 0
    corrupt_blocks: list[Path] = field(default_factory=list)  # bytes do not match the name
    missing_blocks: list[str] = field(default_factory=list)  # needed by a pin, absent
    temp_files: list[Path] = field(default_factory=list)  # left by writers no longer running
    stray_files: list[Path] = field(default_factory=list)  # names that are not blocks

    @property
    def ok(self) -> bool:
        return not (self.corrupt_blocks or self.missing_blocks or self.temp_files)


@dataclass(frozen=True)
class BlockUsage:
    """What the block store holds: how many blocks, how many bytes."""

    blocks: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class GcReport:
    removed_blocks: int = 0
    freed_bytes: int = 0
    removed_temp_files: int = 0
    failed_blocks: int = 0  # blocks gc could not remove (each told to ``failed``)


def _block_name(mh: bytes) -> str:
    """A stored block's name as kubo's ``repo gc`` and ``refs local`` print it: the CIDv1 of
    its multihash with the raw codec; a stray name that is no multihash, in hex."""
    try:
        return str(CID.v1(RAW, mh))
    except CidError:
        return mh.hex()


def _pid_alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Repo:
    """Opens (creating if needed) a repository directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        try:
            private_directory(self.path)  # 0700, the user's own: see the function
            version_file = self.path / "version"
            if version_file.exists():
                found = version_file.read_text().strip()
                if found != REPO_VERSION:
                    raise IpfsError(
                        f"{self.path} is a version {found!r} repository; "
                        f"this ww understands version {REPO_VERSION}"
                    )
            else:
                tmp = self.path / f"{TEMP_PREFIX}version-{os.getpid()}-{secrets.token_hex(4)}"
                tmp.write_text(REPO_VERSION + "\n")
                os.replace(tmp, version_file)
            self.blocks = Blockstore(self.path / "blocks")
            self.pins = PinStore(self.path / "pins")
            self.staging = self.path / "staging"
            self.staging.mkdir(exist_ok=True)
            self._lock_path = self.path / "gc.lock"
            self._lock_path.touch(exist_ok=True)
        except OSError as err:
            home = os.environ.get("WW_HOME")
            named = " (WW_HOME)" if home and Path(home).expanduser() == self.path else ""
            raise IpfsError(f"cannot open the repository {self.path}{named}: "
                            f"{err.strerror}") from err

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the gc lock shared: for an add/import/pin from first block to pin."""
        with self._lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def _lock(self, how: int) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)  # releases the lock

    def usage(self) -> BlockUsage:
        """Count the stored blocks and their bytes (a block gc removes meanwhile is skipped).
        Takes no lock: a writer or gc running at the same time makes it a moment's view."""
        count = size = 0
        for mh in self.blocks.iter_multihashes():
            with contextlib.suppress(FileNotFoundError):
                size += self.blocks.path_for(mh).stat().st_size
                count += 1
        return BlockUsage(count, size)

    # --- reachability -----------------------------------------------------------------

    def _live(self) -> set[bytes]:
        """Multihashes gc must keep: every DAG under a recursive pin, every direct pin."""
        live: set[bytes] = set()
        for cid in self.pins.list(PinKind.RECURSIVE):
            try:
                for _ in exporter.walk(self.blocks.get, cid, live):
                    pass
            except IpfsError as err:
                raise IpfsError(
                    f"garbage collection stopped, nothing was removed: pinned DAG {cid} is "
                    f"damaged ({err}); run a repository check"
                ) from err
        live.update(cid.multihash for cid in self.pins.list(PinKind.DIRECT))
        return live

    # --- maintenance ------------------------------------------------------------------

    def gc(self, removed: Callable[[str], object] | None = None,
           failed: Callable[[str, str], object] | None = None) -> GcReport:
        """Remove every block not reachable from a pin, and leftover temp files.

        ``removed(cid)`` is told each block as it goes, named as kubo's ``repo gc`` names it:
        the CIDv1 of its multihash with the raw codec (``bafkrei...``; the store keeps no
        codec).  A block that cannot be removed is told to ``failed(cid, reason)`` and gc goes
        on (as kubo's); without ``failed``, gc ends with an :class:`IpfsError` once done.
        Memory: the live set (the pinned DAGs' multihashes) and one directory entry at a
        time -- the stored blocks are never listed whole."""
        with self._lock(fcntl.LOCK_EX):
            live = self._live()
            count = freed = failures = 0
            first_failure = ""
            # Lazily, one shard directory at a time: with the lock held no writer adds a
            # name, and removing names already read does not disturb the listing (POSIX
            # readdir leaves only the removed entries themselves unspecified).
            for mh in self.blocks.iter_multihashes():
                if mh in live:
                    continue
                path = self.blocks.path_for(mh)
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as err:
                    failures += 1
                    reason = f"could not remove {_block_name(mh)}: {err.strerror}"  # kubo's words
                    first_failure = first_failure or reason
                    if failed is not None:
                        failed(_block_name(mh), reason)
                    continue
                count += 1
                freed += size
                if removed is not None:
                    removed(_block_name(mh))
            # The lock stops every writer that takes it, not Bitswap, which stores what it
            # fetches without it (in this process or another sharing the repository): a temp
            # file of a live writer may be a block in flight.  Those of writers gone go.
            temps = [p for p in self.blocks.temp_files()
                     if not _pid_alive(temp_file_pid(p.name))]
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            staged = list(self.staging.iterdir())
            for leftover in staged:
                shutil.rmtree(leftover, ignore_errors=True)
            for tmp in self.path.glob(f"{TEMP_PREFIX}*"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            if failures and failed is None:
                raise IpfsError(f"garbage collection incomplete: {failures} block(s) could "
                                f"not be removed ({first_failure})")
            return GcReport(count, freed, len(temps) + len(staged), failures)

    def check(self) -> RepoCheck:
        """Verify every block against its name and every pin's DAG for completeness.

        Reads everything; takes no lock, so temp files of writers still running are not
        reported (their writer's pid is alive).
        """
        corrupt: list[Path] = []
        count = 0
        for mh in self.blocks.iter_multihashes():
            count += 1
            path = self.blocks.path_for(mh)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed by a concurrent gc
            except OSError:
                corrupt.append(path)
                continue
            try:
                good = multihash.verify(mh, data)
            except Exception:
                good = False
            if not good:
                corrupt.append(path)
        missing: list[str] = []
        seen: set[bytes] = set()
        pinned = [(c, True) for c in self.pins.list(PinKind.RECURSIVE)]
        pinned += [(c, False) for c in self.pins.list(PinKind.DIRECT)]
        for cid, recursive in pinned:
            missing.extend(self._missing_under(cid, recursive, seen))
        temps = [p for p in self.blocks.temp_files() if not _pid_alive(temp_file_pid(p.name))]
        temps += self._stale_staging()
        strays = []
        for shard in self.blocks.root.iterdir():
            if not shard.is_dir():
                strays.append(shard)
                continue
            for entry in shard.iterdir():
                name = entry.name
                if name.startswith(TEMP_PREFIX):
                    continue
                try:
                    ok = bytes.fromhex(name).hex() == name
                except ValueError:
                    ok = False
                if not ok:
                    strays.append(entry)
        return RepoCheck(count, sorted(corrupt), sorted(set(missing)), temps, sorted(strays))

    def _stale_staging(self) -> list[Path]:
        """Staging directories (``car-<pid>-<random>``) of CAR imports no longer running: a
        killed import leaves the blocks it had verified there, up to the whole CAR."""
        stale = []
        for entry in sorted(self.staging.iterdir()):
            try:
                pid: int | None = int(entry.name.split("-")[1])
            except (IndexError, ValueError):
                pid = None
            if not _pid_alive(pid):
                stale.append(entry)
        return stale

    def _missing_under(self, root: CID, recursive: bool, seen: set[bytes]) -> list[str]:
        """CIDs under ``root`` that are absent (corrupt ones are reported by the scan)."""
        missing = []
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.multihash in seen:
                continue
            seen.add(cid.multihash)
            try:
                block = self.blocks.get(cid)
            except IpfsError:
                if not self.blocks.has(cid):
                    missing.append(str(cid))
                continue
            if recursive and cid.codec != RAW:
                try:
                    stack.extend(link.cid for link in dagpb.decode(block).links)
                except IpfsError:
                    continue
        return missing
