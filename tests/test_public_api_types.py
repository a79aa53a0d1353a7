"""The public API of ``ww.cell`` and ``ww.ipfs``: what ``__all__`` names, that it all
type-checks (mypy over the public modules and over ``public_api_usage.py``, which uses every
public name), and that the synchronous cell SDK mirrors the asynchronous one call for call."""

from __future__ import annotations

import collections.abc
import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import ww.cell
import ww.ipfs
from tests.conftest import HANG

ROOT = Path(__file__).resolve().parent.parent
USAGE = Path(__file__).with_name("public_api_usage.py")
PUBLIC_MODULES = [
    "src/ww/cell",
    "src/ww/ipfs/__init__.py",
    "src/ww/ipfs/api.py",
    "src/ww/ipfs/aio.py",
    "src/ww/ipfs/backend.py",
    "src/ww/ipfs/kubo.py",
    "src/ww/ipfs/kubo_transport.py",
    "src/ww/ipfs/node.py",
]


@pytest.mark.timeout(900)
def test_every_public_name_type_checks(tmp_path: Path):
    """Annotations are required on every function of the public modules, and each public
    call's result, as the usage file sees it, is the promised type (``assert_type``)."""
    command = [
        sys.executable, "-m", "mypy",
        "--disallow-untyped-defs", "--disallow-incomplete-defs", "--ignore-missing-imports",
        "--cache-dir", str(tmp_path / "cache"),
        str(USAGE.relative_to(ROOT)), *PUBLIC_MODULES,
    ]
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}  # this tree, not an installed copy
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=3 * HANG)  # a cold mypy run on a loaded machine is long
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


@pytest.mark.parametrize("module", [ww.cell, ww.ipfs], ids=lambda m: m.__name__)
def test_all_names_the_public_api_and_the_usage_file_uses_each(module: typing.Any):
    names = module.__all__
    assert len(names) == len(set(names))
    for name in names:
        getattr(module, name)  # resolves (the lazy ones included)
    # every class or function the package exposes is in __all__
    exposed = {
        name for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith(module.__name__ + ".")
    }
    assert exposed <= set(names)
    used = set(re.findall(r"\w+", USAGE.read_text()))
    assert set(names) - used == set()


def test_importing_ww_ipfs_does_not_load_the_backends():
    code = "import sys, ww.ipfs; print(sorted(m for m in sys.modules if m.startswith('ww.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=HANG).stdout
    assert "ww.ipfs.api" in out
    assert "ww.ipfs.node" not in out and "ww.ipfs.kubo" not in out


# --- the synchronous SDK mirrors the asynchronous one ------------------------------------

MIRRORS = {
    ww.cell.Session: ww.cell.SyncSession,
    ww.cell.Console: ww.cell.SyncConsole,
    ww.cell.Ipfs: ww.cell.SyncIpfs,
    ww.cell.Executor: ww.cell.SyncExecutor,
    ww.cell.Process: ww.cell.SyncProcess,
    ww.cell.Stream: ww.cell.SyncStream,
    ww.cell.P2P: ww.cell.SyncP2P,
    ww.cell.RemoteService: ww.cell.SyncRemoteService,
}
SYNC_ONLY = {ww.cell.SyncSession: {"close"}}  # the async session closes with its `async with`


def public(cls: type) -> dict[str, typing.Any]:
    return {
        name: value for name, value in vars(cls).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


def hints(fn: typing.Any) -> dict[str, typing.Any]:
    if isinstance(fn, property):
        fn = fn.fget
    module = sys.modules[fn.__module__]
    return typing.get_type_hints(fn, {**vars(module), **vars(ww.cell)})


def synchronous(annotation: typing.Any) -> typing.Any:
    """What a synchronous mirror returns for an asynchronous result type."""
    if annotation in MIRRORS:
        return MIRRORS[annotation]
    if typing.get_origin(annotation) is collections.abc.AsyncIterator:
        return collections.abc.Iterator[typing.get_args(annotation)]  # type: ignore[misc]
    return annotation


@pytest.mark.parametrize("async_cls", list(MIRRORS), ids=lambda c: c.__name__)
def test_the_sync_face_mirrors_every_async_call(async_cls: type):
    sync_cls = MIRRORS[async_cls]
    async_api, sync_api = public(async_cls), public(sync_cls)
    assert set(sync_api) - SYNC_ONLY.get(sync_cls, set()) == set(async_api)
    for name, method in async_api.items():
        mirror = sync_api[name]
        assert isinstance(mirror, property) == isinstance(method, property), name
        if not isinstance(method, property):
            assert not inspect.iscoroutinefunction(mirror), name
            assert not inspect.isasyncgenfunction(mirror), name
            params = list(inspect.signature(method).parameters.values())
            mirrored = list(inspect.signature(mirror).parameters.values())
            assert [(p.name, p.kind, p.default) for p in params] == [
                (p.name, p.kind, p.default) for p in mirrored], name
        want, got = hints(method), hints(mirror)
        returns = want.pop("return")
        assert got.pop("return") == synchronous(returns), name
        assert got == want, name


def test_the_embedding_example_of_docs_ipfs_runs(tmp_path: Path):
    text = (ROOT / "docs" / "ipfs.md").read_text()
    start = text.index("### Embedding")
    section = text[start:text.index("\n### ", start + 1)]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello world\n"
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "nope" in line
