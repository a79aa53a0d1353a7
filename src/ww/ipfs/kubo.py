"""The CoreAPI backend that sends every operation to a kubo node's HTTP RPC API.

``ww --ipfs /dns4/localhost/tcp/5001/http`` (or ``WW_IPFS``) selects it.  Each call is one or
a few ``POST /api/v0/<command>`` requests, each on a fresh connection (so a client is safe to
share between threads), made with the standard library only.

Three things about kubo's RPC protocol shape this module:

* **Errors** come either as a non-200 reply carrying ``{"Message": ..., "Code": ...,
  "Type": "error"}``, or -- once a streamed reply has begun -- in the HTTP trailer
  ``X-Stream-Error``, so a ``cat`` cut short by a missing block raises instead of returning a
  truncated file.  :func:`classify_error` maps them onto our error classes: by kubo's error
  code and HTTP status where they tell, else by the message (one table, ``_ERROR_PHRASES``).
* **Uploads are full duplex**: ``add`` and ``dag/import`` answer while the body still
  arrives (the transport reads the reply on a helper thread, :mod:`ww.ipfs.kubo_transport`).
* **Bodies are streamed** both ways in bounded pieces: multipart uploads are generated on
  the fly (chunked transfer encoding), ``cat`` and ``dag/export`` are read piecewise.

This module maps the CoreAPI onto kubo's commands; carrying the requests is the transport's
job (:class:`~ww.ipfs.kubo_transport.HttpTransport` by default; a
:class:`~ww.ipfs.kubo_transport.MockTransport` tests this mapping without a socket).

``stat`` and ``get`` fetch raw blocks (``block/get``, each verified against its CID) and run
the embedded node's own exporter on them, so the two backends report sizes and write trees
identically.
"""

from __future__ import annotations

import io
import json
import os
import stat as stat_mod
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ww.core import multihash
from ww.core import progress as _progress
from ww.core.cid import CID, CidError
from ww.core.multiaddr import DEFAULT_KUBO_API, MultiaddrError
from ww.core.multiaddr import parse as parse_multiaddr

from . import car, exporter
from .api import (
    PIN_TYPES,
    AddOptions,
    BackendUnavailableError,
    CorruptBlockError,
    Entry,
    EntryType,
    InvalidPathError,
    IpfsError,
    Link,
    NotAFileError,
    NotFoundError,
    PeerInfo,
    RepoStat,
    Stat,
    UnsupportedError,
    check_pin_type,
)
from .importer import file_chunks
from .kubo_transport import HttpTransport, KuboTransport, Query, Reply
from .path import parse_path

__all__ = ["KuboClient", "DEFAULT_KUBO_API", "classify_error"]

_CHUNK = 256 * 1024  # read size for cat / export, and the coalescing size for uploads
_MAX_BLOCK = 4 << 20  # kubo refuses blocks over 2 MiB (bitswap's limit); allow some slack
_MAX_ERROR_BODY = 64 * 1024
_MAX_LINE = 16 << 20
_NO_LIMIT = (1 << 64) - 1  # kubo's repo stat StorageMax when there is none
_ADD_FILE_NAME = "data"  # the multipart file name for add_stream; it never reaches the CID
_DEFAULT_ADD = AddOptions()

# kubo's ``ls`` reports UnixFS data types as numbers (unixfs.pb Data.DataType).
_LS_TYPES = {
    0: EntryType.FILE,
    1: EntryType.DIRECTORY,
    2: EntryType.FILE,
    3: EntryType.FILE,
    4: EntryType.SYMLINK,
    5: EntryType.DIRECTORY,
}

# kubo's structured errors: the "Code" of its {"Message", "Code", "Type": "error"} replies is
# go-ipfs-cmds' ErrorType (error.go: ErrNormal 0, ErrClient 1, ErrImplementation 2,
# ErrRateLimited 3, ErrForbidden 4, ErrBlocked 5; its HTTP handler answers ErrClient with 400,
# ErrRateLimited with 429, ErrForbidden with 403, the others with 500).  There is no "not
# found" code: a missing block or name is ErrNormal, so the message decides (below).  A
# refusal -- forbidden or rate-limited -- means the backend will not serve us.
_ERR_RATE_LIMITED, _ERR_FORBIDDEN = 3, 4
_REFUSALS = {_ERR_RATE_LIMITED, _ERR_FORBIDDEN}


class _PastTheEnd(IpfsError):
    """``cat`` from an offset past the end (kubo's error; the embedded node gives no bytes)."""


# Where kubo gives only a message -- almost always: its commands answer ErrNormal (Code 0,
# HTTP 500) for a bad path, a missing block or a directory given to cat alike, and a streamed
# reply's X-Stream-Error trailer is a bare message -- the message decides, by the phrases
# below (case-insensitive substrings, first match wins).  Messages vary across kubo
# versions; each phrase below has been seen in at least one release.
_ERROR_PHRASES: tuple[tuple[type[IpfsError], tuple[str, ...]], ...] = (
    (_PastTheEnd, ("offset was past the end",)),
    (
        InvalidPathError,
        (
            "invalid path",
            "invalid cid",
            "invalid ipfs path",
            "selected encoding not supported",
            "illegal base",
            "path must start",
            "path does not begin",
            "unknown namespace",
        ),
    ),
    (
        NotAFileError,
        (
            "is a directory",
            "is not a file",
            "not a regular file",
            "not unixfs file",
            "can't read symlink",
            "cannot read symlink",
            "cannot cat",
        ),
    ),
    (
        NotFoundError,
        (
            "no link named",
            "not found",
            "could not find",
            "not pinned",
            "no such",
            "does not exist",
            "context deadline exceeded",
        ),
    ),
    (UnsupportedError, ("online mode", "not supported", "unknown command")),
)


def classify_error(message: str, code: int | None = None) -> IpfsError:
    """The IpfsError for one of kubo's errors, carrying its message: by kubo's error code
    where it tells (``code``, from a ``{"Message", "Code"}`` reply), else by the message."""
    message = " ".join(message.split()) or "kubo reported an error without a message"
    if code in _REFUSALS:
        return BackendUnavailableError(message)
    lower = message.lower()
    for cls, phrases in _ERROR_PHRASES:
        if any(phrase in lower for phrase in phrases):
            return cls(message)
    return IpfsError(message)


def _normalize_path(path: str) -> str:
    """``/ipfs/<cid>/a`` or ``<cid>/a`` -> ``/ipfs/<cid>/a``, checked as the embedded node does."""
    return str(parse_path(path))


def _quote_name(name: str) -> str:
    """A multipart file name as Go's ``url.QueryEscape`` writes it (kubo unescapes it)."""
    return urllib.parse.quote_plus(os.fsencode(name), safe="")


def _part_header(name: str, content_type: str) -> bytes:
    return (
        f'Content-Disposition: form-data; name="file"; filename="{_quote_name(name)}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode("ascii")


def _tree_parts(
    root: Path, root_name: str, hidden: bool = True
) -> Iterator[tuple[str, str, Iterable[bytes]]]:
    """``(name, content type, body)`` for every node under ``root``, parents first.

    This is the layout kubo's own client sends for ``ipfs add -r``: a directory is an empty
    ``application/x-directory`` part, a symlink an ``application/symlink`` part holding its
    target, and every name is the full slash-separated path from the root.  Symlinks are
    stored, never followed; hidden entries are included unless ``hidden`` is false (as in the
    embedded importer).
    """
    stack: list[tuple[str, str]] = [(os.fsdecode(root), root_name)]
    while stack:
        fs_path, name = stack.pop()
        mode = os.lstat(fs_path).st_mode
        if stat_mod.S_ISLNK(mode):
            yield name, "application/symlink", (os.fsencode(os.readlink(fs_path)),)
        elif stat_mod.S_ISREG(mode):
            yield name, "application/octet-stream", file_chunks(fs_path)
        elif stat_mod.S_ISDIR(mode):
            yield name, "application/x-directory", ()
            with os.scandir(fs_path) as it:
                names = sorted(
                    (os.fsencode(e.name) for e in it if hidden or not e.name.startswith(".")),
                    reverse=True,
                )
            stack.extend(
                (os.path.join(fs_path, os.fsdecode(n)), f"{name}/{os.fsdecode(n)}") for n in names
            )
        else:
            raise UnsupportedError(
                f"cannot add {fs_path!r}: not a regular file, directory or symlink"
            )


def _multipart(
    parts: Iterable[tuple[str, str, Iterable[bytes]]], boundary: str
) -> Iterator[bytes | memoryview]:
    delimiter = f"--{boundary}\r\n".encode("ascii")
    first = True
    for name, content_type, body in parts:
        yield (b"" if first else b"\r\n") + delimiter + _part_header(name, content_type)
        first = False
        yield from body
    yield (b"" if first else b"\r\n") + f"--{boundary}--\r\n".encode("ascii")


def _car_pieces(src: BinaryIO) -> Iterator[bytes]:
    """A CAR v1 re-emitted section by section, each block verified before it is passed on.

    The header is read (and checked) at once, so a stream that is not a CAR v1 fails before
    anything is sent; a block that does not hash to its CID aborts the upload, so kubo never
    stores it.
    """
    reader = car.CarReader(src)
    progress = _progress.current()  # of the caller's thread, which iterates the pieces

    def pieces() -> Iterator[bytes]:
        buf = io.BytesIO()
        car.write_header(buf, reader.roots)
        yield buf.getvalue()
        read = 0
        for cid, block in reader.blocks():
            progress.advance(reader.offset - read, blocks=1)
            read = reader.offset
            buf = io.BytesIO()
            car.write_block(buf, cid, block)
            yield buf.getvalue()

    return pieces()


class KuboClient:
    """:class:`~ww.ipfs.api.CoreAPI` over kubo's HTTP RPC API.

    ``api`` is a multiaddr (``/ip4/127.0.0.1/tcp/5001``, ``/dns4/localhost/tcp/5001/http``,
    ``/unix/run/kubo.sock``) or an ``http(s)://host:port`` URL.  ``connect_timeout`` bounds
    reaching the node; ``timeout`` bounds every wait for kubo once connected (it is per wait,
    so a long transfer that keeps moving never times out).
    """

    guards_dials = False  # kubo dials a peer's known addresses with its own filters only
    local_reads = False  # every read is an HTTP response, which may wait
    verifies_blocks = False  # kubo's answers are taken as they come

    def __init__(
        self,
        api: str = DEFAULT_KUBO_API,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        transport: KuboTransport | None = None,
    ) -> None:
        """``transport``: how requests reach kubo (default: :class:`HttpTransport` to
        ``api`` with the two timeouts; a :class:`~ww.ipfs.kubo_transport.MockTransport`
        tests the client without a socket)."""
        if transport is None:
            transport = HttpTransport(api, timeout=timeout, connect_timeout=connect_timeout)
        self._transport = transport
        self.api = transport.api

    def __repr__(self) -> str:
        return f"KuboClient({self.api!r})"

    # --- plumbing -----------------------------------------------------------------------

    @staticmethod
    def _query(args: Iterable[str], params: dict[str, Any] | None) -> Query:
        query: Query = [("arg", a) for a in args]
        for name, value in (params or {}).items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            query.append((name, str(value)))
        return query

    def _check(self, reply: Reply, command: str) -> None:
        """Raise the error a non-200 reply carries (kubo's own, :func:`classify_error`)."""
        if reply.status == 200:
            return
        body = reply.read(_MAX_ERROR_BODY)
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            value = None
        message, code = None, None
        if isinstance(value, dict) and value.get("Message"):
            message = " ".join(str(value["Message"]).split())
            code = value.get("Code") if isinstance(value.get("Code"), int) else None
        text = message or " ".join(body.decode("utf-8", "replace").split()) or reply.reason
        if reply.status in (401, 403, 429) or code in _REFUSALS:
            raise BackendUnavailableError(
                f"the kubo RPC API at {self.api} refused {command} (HTTP {reply.status}: {text})"
            )
        if message:
            raise classify_error(message, code)
        if reply.status == 404:  # no JSON: kubo's router has no such command
            raise UnsupportedError(f"the kubo RPC API at {self.api} has no {command!r} ({text})")
        raise IpfsError(
            f"the kubo RPC API at {self.api} failed {command} (HTTP {reply.status}: {text})"
        )

    def _post(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> Reply:
        """Send a body-less command; return its 200 reply (the caller closes it)."""
        reply = self._transport.post(command, self._query(args, params))
        try:
            self._check(reply, command)
        except BaseException:
            reply.close()
            raise
        return reply

    def _values(self, reply: Reply, command: str) -> Iterator[Any]:
        """The JSON values of a reply (kubo writes one per line), then its stream error if any."""
        while True:
            line = reply.readline(_MAX_LINE)
            if not line:
                break
            if line.strip():
                try:
                    value = json.loads(line)
                except (ValueError, RecursionError):  # RecursionError: nested too deep
                    raise IpfsError(
                        f"the kubo RPC API at {self.api} sent malformed JSON for {command}"
                    ) from None
                yield value
        if reply.stream_error:
            raise classify_error(reply.stream_error)

    def _json(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> list[Any]:
        reply = self._post(command, args, params)
        try:
            return list(self._values(reply, command))
        finally:
            reply.close()

    def _object(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        values = self._json(command, args, params)
        if len(values) != 1 or not isinstance(values[0], dict):
            raise self._unexpected(command)
        return values[0]

    def _unexpected(self, command: str) -> IpfsError:
        """A reply without the fields kubo sends (a broken or foreign server): one line, not
        the KeyError or TypeError reading it met."""
        return IpfsError(f"the kubo RPC API at {self.api} sent an unexpected reply to {command}")

    def _stream(
        self, command: str, args: Iterable[str] = (), params: dict[str, Any] | None = None
    ) -> Iterator[bytes]:
        """Send the command now (so errors raise here), then yield the reply body in pieces."""
        reply = self._post(command, args, params)

        def pieces() -> Iterator[bytes]:
            try:
                while piece := reply.read(_CHUNK):
                    yield piece
                if reply.stream_error:
                    raise classify_error(reply.stream_error)
            finally:
                reply.close()

        return pieces()

    def _upload(
        self,
        command: str,
        params: dict[str, Any],
        parts: Iterable[tuple[str, str, Iterable[bytes]]],
        on_value: Callable[[Any], None],
    ) -> None:
        """POST a multipart body while reading kubo's line-by-line reply (see module doc)."""
        boundary = uuid.uuid4().hex

        def on_reply(reply: Reply) -> None:
            self._check(reply, command)
            for value in self._values(reply, command):
                on_value(value)

        self._transport.upload(
            command,
            self._query((), params),
            f"multipart/form-data; boundary={boundary}",
            _multipart(parts, boundary),
            on_reply,
        )

    # --- writing ------------------------------------------------------------------------

    @staticmethod
    def _add_params(options: AddOptions) -> dict[str, Any]:
        """kubo's add parameters.  Every option that decides the CID is sent explicitly: a kubo
        whose ``Import.*`` settings differ from the defaults still gives the embedded node's CIDs.
        """
        raw_leaves = options.raw_leaves
        if raw_leaves is None:
            raw_leaves = options.cid_version >= 1  # kubo's rule
        return {
            "cid-version": options.cid_version,
            "raw-leaves": raw_leaves,
            "chunker": options.chunker,
            "hash": "sha2-256",
            "pin": options.pin,
            "only-hash": options.only_hash,
            "wrap-with-directory": options.wrap,
        }

    def _add(
        self, parts: Iterable[tuple[str, str, Iterable[bytes]]], root: str, o: AddOptions
    ) -> str:
        found: dict[str, str] = {}

        def on_value(value: Any) -> None:
            if isinstance(value, dict) and "Hash" in value:
                try:  # a number, a list, null, text that is no CID (escapes for a terminal)
                    CID.parse(value["Hash"])
                except CidError:
                    raise self._unexpected("add") from None
            if isinstance(value, dict) and value.get("Hash"):
                found["last"] = value["Hash"]
                if o.on_added is not None:
                    o.on_added(value.get("Name", ""), value["Hash"])
                if value.get("Name") == root:
                    found["root"] = value["Hash"]

        self._upload("add", self._add_params(o), parts, on_value)
        # -w: the wrapping directory, named "", comes last
        cid = found.get("last") if o.wrap else found.get("root") or found.get("last")
        if not cid:
            raise IpfsError(f"the kubo RPC API at {self.api} added nothing (no CID in its reply)")
        return cid

    def add_stream(self, chunks: Iterable[bytes], options: AddOptions = _DEFAULT_ADD) -> str:
        """Add one file's bytes; returns its CID.  Memory stays bounded by the chunk size.

        With ``options.wrap`` the file is named ``options.stdin_name`` in the directory: the
        RPC API names it by its upload's file name, and only kubo's command line names an
        unnamed stream by its CID, so a wrapped stream needs a name here."""
        if options.wrap and not options.stdin_name:
            raise UnsupportedError("a kubo node names a wrapped stream only as given: "
                                   "name it (ww export -w --stdin-name NAME)")
        name = options.stdin_name or _ADD_FILE_NAME
        return self._add([(name, "application/octet-stream", chunks)], name, options)

    def add_path(self, path: Path, options: AddOptions = _DEFAULT_ADD) -> str:
        """Add a file, symlink or directory tree (as ``ipfs add -r``); returns the root CID."""
        path = Path(path)
        name = path.name or "root"
        try:
            os.lstat(path)  # a missing path fails before any request
            return self._add(_tree_parts(path, name, options.hidden), name, options)
        except FileNotFoundError as err:  # as the embedded node words it
            raise NotFoundError(f"cannot add {err.filename or path}: no such file") from None
        except OSError as err:
            raise IpfsError(f"cannot add {err.filename or path}: {err.strerror}") from None

    # --- reading ------------------------------------------------------------------------

    def cat(self, path: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream a file's bytes from ``offset``, at most ``length`` of them.

        An offset past the end gives no bytes (kubo calls that an error; the embedded node,
        like ``read(2)``, does not).
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("cat: offset and length must not be negative")
        params = {"offset": offset or None, "length": length}
        try:
            return self._stream("cat", [_normalize_path(path)], params)
        except _PastTheEnd:
            return iter(())

    def ls(self, path: str) -> list[Entry]:
        """A directory's entries; for a file or symlink, one entry for itself (as Unix ``ls``
        and the embedded node do -- kubo itself answers with no entries, or with the unnamed
        links of a file's blocks)."""
        return list(self.iter_ls(path))

    def iter_ls(self, path: str) -> Iterator[Entry]:
        """:meth:`ls` with kubo's ``stream`` option: a JSON line per link, read and given
        one at a time (a kubo that ignores the option sends one line with them all: read
        the same way).  The request is sent now, so that a missing path raises here."""
        ipath = parse_path(path)
        reply = self._post("ls", [str(ipath)], {"stream": True})

        def entries() -> Iterator[Entry]:
            listed = False
            try:
                for value in self._values(reply, "ls"):
                    objects = value.get("Objects") if isinstance(value, dict) else None
                    if not isinstance(objects, list) or len(objects) != 1 \
                            or not isinstance(objects[0], dict):
                        raise self._unexpected("ls")
                    links = objects[0].get("Links") or []
                    if not isinstance(links, list):
                        raise self._unexpected("ls")
                    for link in links:
                        if not listed and isinstance(link, dict) and link.get("Name") == "" \
                                and self.stat(str(ipath)).type != EntryType.DIRECTORY:
                            # kubo lists a file of several blocks by its blocks' links,
                            # unnamed (core/coreapi/unixfs.go: lsFromLinks): not entries
                            break
                        listed = True
                        yield self._entry(link)
                    else:
                        continue
                    break
            finally:
                reply.close()
            if not listed:
                info = self.stat(str(ipath))
                if info.type != EntryType.DIRECTORY:
                    yield Entry(ipath.last_name, info.type, info.size, info.cid)

        return entries()

    def _entry(self, link: Any) -> Entry:
        if not isinstance(link, dict):
            raise self._unexpected("ls")
        listed_type: Any = link.get("Type")
        try:
            kind = _LS_TYPES.get(listed_type)
        except TypeError:  # unhashable: a list or a map
            raise self._unexpected("ls") from None
        if kind is None:
            raise IpfsError(
                f"kubo listed {link.get('Name')!r} with unknown type {link.get('Type')}")
        try:
            return Entry(str(link["Name"]), kind, int(link.get("Size") or 0), str(link["Hash"]))
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise self._unexpected("ls") from None

    def resolve(self, path: str) -> str:
        result = self._object("resolve", [_normalize_path(path)], {"recursive": True})
        resolved = str(result.get("Path", ""))
        if not resolved.startswith("/ipfs/") or "/" in resolved[len("/ipfs/") :]:
            raise IpfsError(f"kubo resolved {path!r} to {resolved!r}, not to a CID")
        return resolved[len("/ipfs/") :]

    def stat(self, path: str, links: bool = True) -> Stat:
        """Type, sizes and links of a node, computed from its blocks as the embedded node does
        (``links=False``: without a directory's entries, which are then not read)."""
        return exporter.stat(self._block, exporter.resolve(self._block, parse_path(path)), links)

    def iter_links(self, path: str) -> Iterator[Link]:
        """:meth:`stat`'s links one at a time, from kubo's blocks as the embedded node reads
        its own; the path is resolved now, so that a missing one raises here."""
        return exporter.iter_links(self._block, exporter.resolve(self._block, parse_path(path)))

    def get(self, path: str, dest: Path, executable: bool = False,
            force: bool | None = None) -> None:
        """Write a file or tree to ``dest`` atomically (``force``: see the CoreAPI's ``get``).

        The blocks come from kubo (``block/get``, each verified); writing them out is the
        embedded node's own code (:func:`ww.ipfs.exporter.get`), so both backends behave alike.
        """
        exporter.get_path(self._block, path, dest, executable, force)

    def _block(self, cid: CID) -> bytes:
        """One raw block from kubo, checked against its CID (an exporter block getter)."""
        reply = self._post("block/get", [str(cid)])
        try:
            block = reply.read(_MAX_BLOCK + 1)
            if reply.stream_error:
                raise classify_error(reply.stream_error)
        finally:
            reply.close()
        if len(block) > _MAX_BLOCK or not multihash.verify(cid.multihash, block):
            raise CorruptBlockError(f"kubo sent a block that does not hash to its CID {cid}")
        return block

    # --- pins ---------------------------------------------------------------------------

    def pin(self, path: str, recursive: bool = True) -> None:
        self._json("pin/add", [_normalize_path(path)], {"recursive": recursive})

    def unpin(self, path: str) -> None:
        self._json("pin/rm", [_normalize_path(path)], {"recursive": True})

    def iter_pins(self) -> Iterator[str]:
        """kubo's list, read whole (``pin ls`` answers it in one reply)."""
        return iter(self.pins())

    def pins(self) -> list[str]:
        """Every direct and recursive pin (not the blocks pinned indirectly through them)."""
        cids: set[str] = set()
        for kind in ("recursive", "direct"):
            keys = self._object("pin/ls", (), {"type": kind}).get("Keys") or {}
            if not isinstance(keys, dict):
                raise self._unexpected("pin/ls")
            cids.update(keys)
        return sorted(cids)

    def pin_ls(self, type: str = "all") -> dict[str, str]:
        """kubo's ``pin/ls`` of one type (or all), each CID once with its type.

        Asked to stream, kubo writes one ``{"Cid", "Type"}`` line per pin, so a repository
        with millions of indirect pins is not one JSON value; a kubo that ignores ``stream``
        answers with one ``{"Keys": {cid: {"Type"}}}``, which is read as well."""
        check_pin_type(type)
        found: dict[str, str] = {}

        def record(cid: object, value: object) -> None:
            # kubo names an indirect pin "indirect" (or, asked about one path, "indirect
            # through <cid>"): the type is its first word.
            kind = str(value or "").split(" ", 1)[0]
            if kind not in PIN_TYPES:
                raise IpfsError(f"kubo listed pin {cid} with unknown type {kind!r}")
            found.setdefault(str(cid), kind)

        reply = self._post("pin/ls", (), {"type": type, "stream": True})
        try:
            for value in self._values(reply, "pin/ls"):
                if not isinstance(value, dict):
                    raise self._unexpected("pin/ls")
                try:
                    if "Keys" in value:
                        for cid, info in (value["Keys"] or {}).items():
                            record(cid, (info or {}).get("Type"))
                    else:
                        record(value.get("Cid"), value.get("Type"))
                except (AttributeError, TypeError):
                    raise self._unexpected("pin/ls") from None
        finally:
            reply.close()
        return found

    # --- the repository -------------------------------------------------------------------

    def repo_stat(self) -> RepoStat:
        """kubo's ``repo/stat``: its repository's size on disk, blocks, path and version."""
        info = self._object("repo/stat")
        try:
            storage_max = int(info.get("StorageMax") or 0)
            return RepoStat(
                repo_size=int(info["RepoSize"]),
                num_objects=int(info["NumObjects"]),
                repo_path=str(info.get("RepoPath") or ""),
                version=str(info.get("Version") or ""),
                # kubo reports "no limit" as the largest uint64 (corerepo.NoLimit)
                storage_max=storage_max if 0 < storage_max < _NO_LIMIT else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise self._unexpected("repo/stat") from None

    # --- CAR interchange ------------------------------------------------------------------

    def export_car(self, roots: list[str], out: BinaryIO) -> None:
        """Write a CAR v1 of the DAGs under ``roots`` (kubo's ``dag/export``).

        kubo exports one root per call; several roots are merged into one CAR with all of them
        in its header and each block once.
        """
        cids = [CID.parse(self.resolve(root)) for root in roots]
        progress = _progress.current()
        if len(cids) == 1:
            for piece in self._stream("dag/export", [str(cids[0])]):
                out.write(piece)
                progress.advance(len(piece))
            return
        progress.advance(car.write_header(out, cids))
        seen: set[bytes] = set()
        for cid in cids:
            reply = self._post("dag/export", [str(cid)])
            try:
                for block_cid, block in car.CarReader(reply).blocks():  # type: ignore[arg-type]
                    if block_cid.multihash not in seen:
                        seen.add(block_cid.multihash)
                        progress.advance(car.write_block(out, block_cid, block), blocks=1)
                if reply.stream_error:
                    raise classify_error(reply.stream_error)
            finally:
                reply.close()

    def import_car(self, src: BinaryIO) -> list[str]:
        """Import a CAR v1, verifying every block before kubo sees it; returns its roots.

        kubo pins the roots (its default, as the embedded node does).  Unlike the embedded
        node, kubo keeps the blocks it received before a failure (unpinned).
        """
        roots: list[str] = []
        failures: list[str] = []

        def on_value(value: Any) -> None:
            root = value.get("Root") if isinstance(value, dict) else None
            if root:
                try:
                    cid = str(root["Cid"]["/"])
                    error = root.get("PinErrorMsg")
                except (KeyError, TypeError, AttributeError):
                    raise self._unexpected("dag/import") from None
                roots.append(cid)
                if error:
                    failures.append(f"{cid}: {error}")

        part = ("data.car", "application/octet-stream", _car_pieces(src))
        self._upload("dag/import", {"pin-roots": True}, [part], on_value)
        if failures:
            raise NotFoundError(f"CAR imported but its roots could not be pinned: {failures[0]}")
        return roots

    # --- network ------------------------------------------------------------------------

    def id(self) -> PeerInfo:
        info = self._object("id")
        try:
            return PeerInfo(str(info["ID"]), [str(a) for a in info.get("Addresses") or []],
                            [str(p) for p in info.get("Protocols") or []])
        except (KeyError, TypeError):
            raise self._unexpected("id") from None

    def peers(self) -> list[PeerInfo]:
        by_peer: dict[str, list[str]] = {}
        try:
            for peer in self._object("swarm/peers").get("Peers") or []:
                addresses = by_peer.setdefault(str(peer["Peer"]), [])
                if peer.get("Addr"):
                    addresses.append(str(peer["Addr"]))
        except (KeyError, TypeError, AttributeError):
            raise self._unexpected("swarm/peers") from None
        return [PeerInfo(peer, addresses) for peer, addresses in by_peer.items()]

    def connect(self, addr: str) -> None:
        """Dial a peer by a multiaddr that ends in ``/p2p/<peer id>``."""
        if parse_multiaddr(addr).peer_id is None:
            raise MultiaddrError(f"cannot connect to {addr!r}: the address has no /p2p/<peer id>")
        self._json("swarm/connect", [addr])

    def close(self) -> None:
        self._transport.close()
