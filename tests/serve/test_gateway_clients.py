"""The gateway met by clients nobody here wrote: npm ``@ipld/car`` reads its CARs and checks
every block against its CID, npm ``ipfs-car`` unpacks them to the original bytes, and a
headless Chromium renders a directory listing and a file.

The npm packages are pinned in tests/serve/js_car/package-lock.json (``./dev test`` runs
``npm ci`` there); Chromium is Debian's ``chromium``.  The tests skip only where ``node`` or
``chromium`` is not installed.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.serve.gateway_server import HANG, served
from ww.ipfs import exporter
from ww.ipfs.api import AddOptions
from ww.ipfs.node import EmbeddedNode
from ww.ipfs.path import parse_path

JS = Path(__file__).parent / "js_car"
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium")

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (Debian: nodejs)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (Debian: chromium)")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("content") / "site"
    (root / "docs" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "hello.txt").write_bytes(b"hello from the gateway\n")
    (root / "docs" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 777))
    (root / "docs" / "deeper" / "small.txt").write_bytes(b"small\n")
    (root / "zero").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNode]:
    n = EmbeddedNode(tmp_path_factory.mktemp("repo"))
    yield n
    n.close()


@pytest.fixture(scope="module")
def gw(node: EmbeddedNode) -> Iterator[str]:
    with served(node) as url:
        yield url


def npm_installed() -> None:
    if not (JS / "node_modules" / "@ipld" / "car").is_dir() or \
            not (JS / "node_modules" / "ipfs-car").is_dir():
        pytest.fail(f"the npm packages are not installed: run `npm ci` in {JS} "
                    "(./dev test does)")


def download(url: str, dest: Path) -> Path:
    with urllib.request.urlopen(url, timeout=HANG) as response, dest.open("wb") as out:
        assert response.status == 200
        shutil.copyfileobj(response, out)
    return dest


def verify_car(car: Path) -> dict[str, object]:
    """@ipld/car's reading of ``car``: each block hashed against its CID in JavaScript."""
    npm_installed()
    assert NODE is not None
    done = subprocess.run([NODE, str(JS / "verify_car.mjs"), str(car)], capture_output=True,
                          text=True, timeout=HANG)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def unpack(car: Path, dest: Path, root: str | None = None) -> Path:
    """``ipfs-car unpack``, which verifies the blocks and writes the tree it finds."""
    npm_installed()
    assert NODE is not None
    argv = [NODE, str(JS / "node_modules" / "ipfs-car" / "bin.js"), "unpack", str(car),
            "--output", str(dest)]
    if root is not None:
        argv += ["--root", root]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, done.stderr
    return dest


def dag_blocks(node: EmbeddedNode, cid: str) -> list[str]:
    """Every block of the DAG under ``cid``, once each, by the node's own walk."""
    return [str(c) for c, _ in exporter.walk(lambda c: node.block(str(c)), parse_path(cid).root)]


def same_tree(a: Path, b: Path) -> None:
    """The same names, kinds and bytes under ``a`` and ``b``."""
    listing_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    listing_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert listing_a == listing_b
    for rel in listing_a:
        if (a / rel).is_file():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        else:
            assert (b / rel).is_dir(), rel


@needs_node
@pytest.mark.parametrize("options", [AddOptions(), AddOptions(cid_version=1)],
                         ids=["cidv0", "cidv1-raw-leaves"])
def test_a_files_car_is_verified_by_ipld_car_and_unpacked_by_ipfs_car(
        gw: str, node: EmbeddedNode, tree: Path, tmp_path: Path, options: AddOptions) -> None:
    data = (tree / "docs" / "big.bin").read_bytes()
    cid = node.add_stream([data], options)
    car = download(f"{gw}/ipfs/{cid}?format=car", tmp_path / "file.car")
    seen = verify_car(car)
    assert seen["version"] == 1 and seen["roots"] == [cid]
    assert seen["blocks"] == dag_blocks(node, cid)  # each once, depth first
    assert len(seen["blocks"]) > 10  # type: ignore[arg-type]
    out = unpack(car, tmp_path / "out.bin")
    assert out.read_bytes() == data


@needs_node
def test_a_directorys_car_is_verified_and_unpacked_to_the_tree(
        gw: str, node: EmbeddedNode, tree: Path, tmp_path: Path) -> None:
    cid = node.add_path(tree)
    car = download(f"{gw}/ipfs/{cid}?format=car", tmp_path / "dir.car")
    seen = verify_car(car)
    assert seen["roots"] == [cid]
    assert sorted(seen["blocks"]) == sorted(dag_blocks(node, cid))  # type: ignore[arg-type]
    same_tree(tree, unpack(car, tmp_path / "out"))


@needs_node
def test_a_hamt_sharded_directorys_car_is_unpacked_to_the_tree(
        gw: str, node: EmbeddedNode, tmp_path: Path) -> None:
    many = tmp_path / "many"
    many.mkdir()
    for i in range(3000):  # past kubo's 256 KiB threshold: HAMT-sharded
        (many / f"{i:04d}-{'n' * 60}").write_bytes(b"%d\n" % i)
    cid = node.add_path(many)
    car = download(f"{gw}/ipfs/{cid}?format=car", tmp_path / "many.car")
    seen = verify_car(car)
    assert sorted(seen["blocks"]) == sorted(dag_blocks(node, cid))  # type: ignore[arg-type]
    same_tree(many, unpack(car, tmp_path / "out"))


@needs_node
def test_a_paths_car_proves_the_path_and_unpacks_the_file_it_names(
        gw: str, node: EmbeddedNode, tree: Path, tmp_path: Path) -> None:
    cid = node.add_path(tree)
    file_cid = node.resolve(f"/ipfs/{cid}/docs/deeper/small.txt")
    car = download(f"{gw}/ipfs/{cid}/docs/deeper/small.txt?format=car&dag-scope=entity",
                   tmp_path / "path.car")
    seen = verify_car(car)
    docs = node.resolve(f"/ipfs/{cid}/docs")
    deeper = node.resolve(f"/ipfs/{cid}/docs/deeper")
    assert seen["blocks"][:4] == [cid, docs, deeper, file_cid]  # type: ignore[index]
    out = unpack(car, tmp_path / "small.txt", root=file_cid)
    assert out.read_bytes() == b"small\n"


@needs_node
def test_the_probe_car_names_the_empty_identity_cid(gw: str, tmp_path: Path) -> None:
    seen = verify_car(download(f"{gw}/ipfs/bafkqaaa?format=car", tmp_path / "probe.car"))
    assert seen == {"version": 1, "roots": ["bafkqaaa"], "blocks": []}


# --- a browser ------------------------------------------------------------------------------


def render(url: str, profile: Path, *flags: str) -> str:
    """The DOM headless Chromium builds for ``url`` (its background networking off: it
    talks to the gateway alone)."""
    assert CHROMIUM is not None
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--no-first-run", "--disable-extensions",
            "--disable-domain-reliability", "--no-pings", f"--user-data-dir={profile}",
            *flags, "--dump-dom", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Rendered(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: dict[str, str] = {}  # text -> href
        self.text: list[str] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._href is not None:
            self.anchors[data] = self._href
            self._href = None


@needs_chromium
def test_chromium_renders_a_listing_and_a_file(gw: str, node: EmbeddedNode, tree: Path,
                                                tmp_path: Path) -> None:
    cid = node.add_path(tree)
    # The directory named without its slash: Chromium follows the redirect.
    page = _Rendered()
    page.feed(render(f"{gw}/ipfs/{cid}/docs", tmp_path / "profile"))
    assert f"Index of /ipfs/{cid}/docs/" in "".join(page.text)
    assert page.anchors["big.bin"] == "big.bin" and page.anchors["deeper"] == "deeper"
    assert page.anchors[".."] == ".."
    assert page.anchors[node.resolve(f"/ipfs/{cid}/docs/big.bin")].startswith("/ipfs/")
    # A text file: Chromium shows it as text.
    shown = _Rendered()
    shown.feed(render(f"{gw}/ipfs/{cid}/hello.txt", tmp_path / "profile"))
    assert "hello from the gateway" in "".join(shown.text)


_PROBING_PAGE = """<html><body><pre id="out"></pre><script>
for (const [name, url] of [["held", "{held}"], ["absent", "{absent}"]]) {{
  const script = document.createElement("script");
  script.src = url;
  const out = document.getElementById("out");
  const note = (what) => {{ out.textContent += `${{name}} ${{what}};`; }};
  script.onload = () => note("load");
  script.onerror = () => note("error");
  document.body.appendChild(script);
}}
</script></body></html>"""


@needs_chromium
def test_a_page_of_another_site_cannot_tell_a_held_text_file_by_loading_it_as_a_script(
        gw: str, node: EmbeddedNode, tmp_path: Path) -> None:
    """A page of another site (``localhost``; the gateway is ``127.0.0.1``) adds
    ``<script src>`` for a text file the daemon holds and for one it lacks: without
    ``nosniff`` Chromium ran the text as a script and fired ``load`` for the one held,
    ``error`` for the other, so the page learned what the daemon holds (and ran it)."""
    held = node.add_stream([b"held = 1;\n"], AddOptions())
    absent = node.add_stream([b"absent = 1;\n"], AddOptions(only_hash=True))
    site = tmp_path / "site"
    site.mkdir()
    (site / "probe.html").write_text(_PROBING_PAGE.format(
        held=f"{gw}/ipfs/{held}?filename=held.txt", absent=f"{gw}/ipfs/{absent}"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=pages.serve_forever, daemon=True)
    thread.start()
    try:
        dom = render(f"http://localhost:{pages.server_address[1]}/probe.html",
                     tmp_path / "profile", "--virtual-time-budget=10000")
    finally:
        pages.shutdown()
        thread.join(HANG)
    out = dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]
    outcomes = sorted(part for part in out.split(";") if part)
    assert outcomes[0] == "absent error"  # the page ran: both scripts were tried
    assert outcomes == ["absent error", "held error"]
