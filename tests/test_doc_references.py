"""The docs name the tests that prove each defence (``test_file::test_name``) and the modules
that implement it (``ww.x.y``): every such name must exist, so that moving or renaming a test
or a module cannot leave docs/security.md pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
TEST_REF = re.compile(r"(?<![\w/])([\w/]*test_\w+|\w*conftest)(?:\.py)?::([A-Za-z_]\w*)")
MODULE_REF = re.compile(r"`(ww(?:\.[a-z_]\w*)+)")


def _test_files() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in (ROOT / "tests").rglob("*.py"):
        found.setdefault(path.stem, []).append(path)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_a_doc_names_exists(doc: Path):
    files = _test_files()
    missing = []
    for m in TEST_REF.finditer(doc.read_text()):
        name, test = m.group(1), m.group(2)
        candidates = [ROOT / f"{name}.py"] if "/" in name else files.get(name, [])
        defined = re.compile(rf"^\s*(?:async\s+)?(?:def|class) {re.escape(test)}\b", re.M)
        if not any(p.exists() and defined.search(p.read_text()) for p in candidates):
            missing.append(m.group(0))
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


def _module_file(parts: list[str]) -> Path | None:
    path = ROOT / "src" / Path(*parts)
    # a .pyi: a C extension module's stub (ww.core._frames)
    for candidate in (path.with_suffix(".py"), path / "__init__.py", path.with_suffix(".pyi")):
        if candidate.exists():
            return candidate
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_a_doc_names_exists(doc: Path):
    """``ww.a.b`` is a module, or ``ww.a.b.name`` names something module ``ww.a.b`` has."""
    missing = []
    for m in MODULE_REF.finditer(doc.read_text()):
        parts = m.group(1).split(".")
        k = next((k for k in range(len(parts), 1, -1) if _module_file(parts[:k])), None)
        module = _module_file(parts[:k]) if k else None
        if module is None or (k < len(parts) and not re.search(
                rf"\b{re.escape(parts[k])}\b", module.read_text())):
            missing.append(m.group(1))
    assert not missing, f"{doc.name} names modules that do not exist: {missing}"
