"""What the RPC API holds while it answers: `ls?stream=true` and `get` of a directory stream
it as they read it, so the daemon's memory does not grow with the directory (a HAMT-sharded
one may have millions of entries)."""

from __future__ import annotations

import json
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import HANG

from .conftest import Daemon

TAIL = "-" + "n" * 250  # long names: the text a held listing grows by


def _directory(home: Path, count: int) -> str:
    """A directory of ``count`` empty files with long names, built straight into the blocks
    of the repository at ``home`` (HAMT-sharded past kubo's 256 KiB threshold, as `ww export`
    makes it)."""
    from ww.core.cid import CID
    from ww.ipfs import EmbeddedNode, importer

    with EmbeddedNode(home) as node:
        empty = importer.Imported(CID.parse(node.add_stream([b""])), 6, 0)
        names = (f"{i:06d}{TAIL}".encode() for i in range(count))
        root = importer.import_directory(((name, empty) for name in names),
                                         importer.ImportParams(), node._blocks)
    return str(root.cid)


def _peak(daemon: Daemon) -> int:
    """The daemon's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _open(daemon: Daemon, command: str, cid: str, **options: str):
    query = urllib.parse.urlencode([("arg", cid), *options.items()])
    request = urllib.request.Request(f"{daemon.url}/api/v0/{command}?{query}", data=b"",
                                     method="POST")
    return urllib.request.urlopen(request, timeout=HANG)


def _ls_and_get(daemon: Daemon, cid: str, count: int) -> int:
    """`ls?stream=true` and `get` of ``cid``, read as they come; checks both name every entry
    and returns the size of the listing's text."""
    size = 0
    names = []
    with _open(daemon, "ls", cid, stream="true") as reply:
        for line in reply:
            size += len(line)
            (link,) = json.loads(line)["Objects"][0]["Links"]
            names.append(link["Name"])
    expected = [f"{i:06d}{TAIL}" for i in range(count)]
    assert sorted(names) == expected
    names = []
    with _open(daemon, "get", cid) as reply, tarfile.open(fileobj=reply, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                assert member.size == 0
                names.append(member.name.removeprefix(f"{cid}/"))
    assert sorted(names) == expected
    return size


def test_ls_stream_and_get_of_a_huge_directory_hold_no_more_than_of_a_small_one(
        ww_home: Path):
    """`ls?stream=true` listed every link of the directory twice over before its first line
    (a `stat` of each path, twice, held every link; then the entries, a list), and `get` put
    every entry of each directory on its stack (and `tarfile` kept a member per entry): the
    daemon's memory grew with the directory, several times the listing's text (measured: 84
    MB for this one's 22 MB).  Now each reads the directory as it answers: after a listing
    and a `get` of 1,000 entries, those of 50,000 (a HAMT) raise the daemon's peak memory by
    less than half the listing's text (measured: 7 MB; what is left is the allocator's and
    the interpreter's own growth, such as its table of interned strings doubling once)."""
    small, huge = _directory(ww_home, 1000), _directory(ww_home, 50000)
    daemon = Daemon(ww_home)
    try:
        _ls_and_get(daemon, small, 1000)
        base = _peak(daemon)
        text = _ls_and_get(daemon, huge, 50000)
        peak = _peak(daemon)
    finally:
        daemon.stop()
    assert peak - base < text // 2, (base, peak, text)


def test_get_writes_the_tar_tarfile_writes(daemon: Daemon, tmp_path: Path):
    """The tar `get` writes itself, header by header (``tarfile`` kept every member), is the
    one ``tarfile`` writes for those members: directories 0755 (named without a trailing
    "/", as kubo's), files 0644, symlinks 0777, all the reply's time, PAX format, entries
    in link order, a file's bytes padded to a block."""
    import io
    import os

    from .test_rpc import add

    data = os.urandom(300_000)
    long = "x" * 120  # a name past ustar's 100 bytes: a PAX header
    root = add(daemon, [("t", "application/x-directory", b""),
                        ("t/a", "application/x-directory", b""),
                        (f"t/a/{long}", "application/octet-stream", data),
                        ("t/e", "application/x-directory", b""),
                        ("t/link", "application/symlink", b"a/../e"),
                        ("t/small", "application/octet-stream", b"small\n")])[-1]["Hash"]
    status, _, body = daemon.post("get", root)
    assert status == 200
    mtime = tarfile.TarInfo.frombuf(body[:512], "utf-8", "surrogateescape").mtime

    class Member(tarfile.TarInfo):  # a directory named as kubo names it: without a "/"
        def get_info(self):  # type: ignore[no-untyped-def]
            return {**super().get_info(), "name": self.name}

    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content in [
                (root, tarfile.DIRTYPE, None), (f"{root}/a", tarfile.DIRTYPE, None),
                (f"{root}/a/{long}", tarfile.REGTYPE, data), (f"{root}/e", tarfile.DIRTYPE, None),
                (f"{root}/link", tarfile.SYMTYPE, None),
                (f"{root}/small", tarfile.REGTYPE, b"small\n")]:
            member = Member(name)
            member.mtime, member.type = mtime, kind
            member.mode = {tarfile.DIRTYPE: 0o755, tarfile.SYMTYPE: 0o777}.get(kind, 0o644)
            if kind == tarfile.SYMTYPE:
                member.linkname = "a/../e"
            if content is not None:
                member.size = len(content)
            tar.addfile(member, None if content is None else io.BytesIO(content))
    assert body == expected.getvalue()


def test_get_of_a_tree_deeper_than_its_bound_is_cut_short(ww_home: Path):
    """`get` holds one open listing per directory level: a tree deeper than MAX_GET_DEPTH
    levels (content may nest as deep as it likes) is cut short there, not followed."""
    import http.client

    from ww.core.cid import CID
    from ww.ipfs import EmbeddedNode, importer
    from ww.serve.rpc import MAX_GET_DEPTH

    with EmbeddedNode(ww_home) as node:
        leaf = node.add_stream([b"deep"])
        inner = importer.Imported(CID.parse(leaf), node.block_size(leaf), 4)
        for _ in range(MAX_GET_DEPTH + 1):
            inner = importer.import_directory([(b"d", inner)], importer.ImportParams(),
                                              node._blocks)
    daemon = Daemon(ww_home)
    try:
        with _open(daemon, "get", str(inner.cid)) as reply:
            try:
                body = reply.read()
            except http.client.IncompleteRead as cut:
                body = cut.partial
            else:
                raise AssertionError("the tar was sent whole")
        assert daemon.json("version")  # and the daemon serves on
    finally:
        daemon.stop()
    assert b"deep" not in body and body.count(b"/d/d/d") > 0


def test_get_cuts_the_tar_short_at_a_name_that_steps_out_of_its_directory(ww_home: Path):
    """Names come from the content: one that is ``..``, holds a ``/`` or is empty would, in
    a tar, put a file outside (or across) the directory a client unpacks into.  `get` cuts
    the tar short there, as `ww get` refuses to write such a tree; the daemon serves on."""
    import http.client

    from ww.core.cid import CID
    from ww.ipfs import EmbeddedNode, importer

    roots = {}
    with EmbeddedNode(ww_home) as node:
        evil = node.add_stream([b"evil file\n"])
        leaf = importer.Imported(CID.parse(evil), node.block_size(evil), 10)
        for name in (b"..", b"a/../../x", b""):
            roots[name] = importer.import_directory(
                [(b"+fine", leaf), (name, leaf)], importer.ImportParams(), node._blocks).cid
    daemon = Daemon(ww_home)
    try:
        for name, root in roots.items():
            with _open(daemon, "get", str(root)) as reply:
                try:
                    body = reply.read()
                except http.client.IncompleteRead as cut:
                    body = cut.partial
                else:
                    raise AssertionError(f"the tar with an entry named {name!r} was sent whole")
            assert body.count(b"evil file") <= 1, name  # never the bad entry's
            assert name == b"" or name not in body, name
        assert daemon.json("version")  # and the daemon serves on
    finally:
        daemon.stop()


def test_ls_without_stream_lists_a_sharded_directory_sorted_by_name(ww_home: Path):
    """kubo's ls without ``stream`` sorts each path's links by name before it answers
    (core/commands/ls.go); a HAMT shard holds them in hash order, which the streamed `ls`
    keeps, as kubo's does."""
    cid = _directory(ww_home, 1500)
    daemon = Daemon(ww_home)
    try:
        (reply,) = daemon.json("ls", cid)
        names = [link["Name"] for link in reply["Objects"][0]["Links"]]
        streamed = [line["Objects"][0]["Links"][0]["Name"]
                    for line in daemon.json("ls", cid, stream=True)]
    finally:
        daemon.stop()
    expected = [f"{i:06d}{TAIL}" for i in range(1500)]
    assert streamed != expected and sorted(streamed) == expected  # a HAMT: hash order
    assert names == expected
