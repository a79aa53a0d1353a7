"""``ww run /ipfs/<cid>[/path]``: a content-addressed cache of executables fetched from IPFS.

The file is fetched once into ``$WW_HOME/exec-cache/<cid>``, written atomically (a
temporary sibling, fsync, rename) with mode 0555, and verified by hashing it again the way
its CID was made (kubo's fixed-size chunks, with dag-pb or raw leaves).  On later runs the
cached copy is hashed again before use (about 2 GB/s), so a tampered cache entry is fetched
anew instead of run.  A file chunked some other way (another chunker or layout) cannot be
re-derived: the embedded node has already checked every block of it against its CID while
reading, and a kubo node's answer for it is refused as unverifiable.

The size of a program is what its DAG says, and a few blocks linked over and over can say
terabytes: a program larger than :data:`MAX_PROGRAM_SIZE` (1 GiB; the operator's
``WW_MAX_PROGRAM_SIZE``, which sub-cells' ``ww run`` keep, sets another), or than
``max_size`` (the run's ``--fsize``, which sub-cells inherit) if that is lower, is refused
before a byte is written, and the writing stops should more arrive.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ww.core.errors import CommandNotFoundError, NotExecutableError, ResourceLimitError, UsageError
from ww.ipfs.api import AddOptions, CoreAPI, EntryType, InvalidPathError, NotFoundError

# The largest program fetched from IPFS without --fsize.  Its size is what three blocks a
# peer serves may claim (terabytes), and a sub-cell's `ww run` would write all of it into
# the exec cache on the host's disk; 1 GiB is far above any real program (a static binary
# of a large Go or Rust service is well under 200 MiB) and still a size a disk can spare.
MAX_PROGRAM_SIZE = 1 << 30
MAX_PROGRAM_SIZE_ENV = "WW_MAX_PROGRAM_SIZE"  # another default (a size, as --fsize takes)


def program_size_cap(fsize: int | None) -> tuple[int, str]:
    """The size an ``/ipfs/`` program may have, and the flag or setting that says so."""
    from ww.host.limits.flags import parse_size

    cap, why = MAX_PROGRAM_SIZE, "the cap on programs fetched from IPFS"
    if text := os.environ.get(MAX_PROGRAM_SIZE_ENV):
        cap, why = parse_size(text, MAX_PROGRAM_SIZE_ENV), MAX_PROGRAM_SIZE_ENV
    if fsize is not None and fsize <= cap:
        return fsize, "--fsize"
    return cap, why


def is_ipfs_path(command: str) -> bool:
    return command.startswith("/ipfs/")


def cache_dir() -> Path:
    from ww.core.fsutil import private_directory
    from ww.ipfs.repo import default_repo_path

    home = default_repo_path()
    private_directory(home)  # its owner alone may change what is run from the cache
    return home / "exec-cache"


def _verified(path: Path, cid: str) -> bool:
    """Does the file hash to ``cid`` with the add options that can have made it?

    Files are chunked as kubo chunks them by default; the CID's version and whether its
    leaves are raw are the only choices `ww export` and `ipfs add` leave, so the default for
    the CID's version is tried first and the other leaf kind second.
    """
    from ww.ipfs.importer import ImportParams, NullSink, import_file

    version = 0 if cid.startswith("Qm") else 1
    for raw_leaves in ((False, True) if version == 0 else (True, False)):
        options = AddOptions(cid_version=version, raw_leaves=raw_leaves)
        with open(path, "rb") as f:
            chunks = iter(lambda: f.read(1 << 20), b"")
            made = import_file(chunks, ImportParams.from_options(options), NullSink()).cid
        if str(made) == cid:
            return True
    return False


def _too_large(ipfs_path: str, size: int | str, max_size: int, why: str) -> ResourceLimitError:
    from ww.host.limits.flags import format_size

    return ResourceLimitError(
        f"resource limit: {ipfs_path} is a program of {size} bytes, larger than "
        f"{format_size(max_size)} ({why}); it was not fetched")


def fetch(api: CoreAPI, ipfs_path: str, max_size: int | None = None) -> str:
    """The local path of the executable at ``ipfs_path``, fetching it if not cached.

    A program larger than ``max_size`` bytes (``--fsize``), or than the default cap
    (:func:`program_size_cap`), is refused (ResourceLimitError, exit 66).

    A bare ``/ipfs/<cid>`` is looked up in the cache before the backend is asked anything,
    so a cached program runs even when its blocks are gone or the network is.
    """
    from ww.ipfs.path import parse_path

    try:
        parsed = parse_path(ipfs_path)
    except InvalidPathError as e:
        raise UsageError(str(e)) from None
    max_size, why = program_size_cap(max_size)
    directory = cache_dir()
    if not parsed.segments:
        cached = directory / str(parsed.root)
        if cached.is_file() and _verified(cached, str(parsed.root)):
            return str(cached)
    try:
        stat = api.stat(ipfs_path)
    except NotFoundError as e:
        raise CommandNotFoundError(f"{ipfs_path}: {e}") from None
    if stat.type is not EntryType.FILE:
        raise NotExecutableError(f"{ipfs_path}: is a {stat.type.value}, not a file")
    cid = stat.cid
    cached = directory / cid
    if cached.is_file():
        if _verified(cached, cid):
            return str(cached)
        cached.unlink()  # tampered with, or stored with other add options: fetch again
    if stat.size > max_size:
        raise _too_large(ipfs_path, stat.size, max_size, why)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{cid}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            written = 0
            for chunk in api.cat(cid):
                written += len(chunk)
                if written > max_size:
                    raise _too_large(ipfs_path, f"more than {written}", max_size, why)
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), 0o555)
            os.fsync(out.fileno())
        if not _verified(Path(tmp), cid) and not api.verifies_blocks:
            raise NotExecutableError(
                f"{ipfs_path}: the bytes received do not hash to {cid} with kubo's fixed-size "
                "chunking, so they cannot be verified; add the program with default options"
            )
        os.replace(tmp, cached)
    except BaseException:
        os.unlink(tmp)
        raise
    return str(cached)

