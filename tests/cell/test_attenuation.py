"""Narrowed IPFS capabilities seen from real cells: read-only, roots, and narrowing further."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_ww


def export(path) -> str:
    r = run_ww("export", str(path))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture
def trees(tmp_path):
    """Two exported trees: `inside` (a/x.txt, sub/y.txt) and `outside` (z.txt)."""
    inside = tmp_path / "inside"
    (inside / "sub").mkdir(parents=True)
    (inside / "x.txt").write_text("x marks the spot\n")
    (inside / "sub" / "y.txt").write_text("why not\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "z.txt").write_text("zzz\n")
    return export(inside), export(outside)


def test_read_only_ipfs_reads_and_refuses_every_write(make_cell, trees):
    root, _ = trees
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            print(s.ipfs.cat("{root}/x.txt").decode().strip())
            print([e.name for e in s.ipfs.ls("{root}")], s.ipfs.stat("{root}/sub").type.value)
            for name, call in [("add", lambda: s.ipfs.add(b"new data")),
                               ("pin", lambda: s.ipfs.pin("{root}")),
                               ("unpin", lambda: s.ipfs.unpin("{root}")),
                               ("pins", lambda: s.ipfs.pins()),
                               ("connect", lambda: s.ipfs.connect("/ip4/127.0.0.1/tcp/1"))]:
                try:
                    call()
                    print(name, "allowed")
                except ww.cell.CapabilityDenied as e:
                    print(name, "denied:", e)
    """)
    r = run_ww("--json", "run", "--with-ipfs", "--ipfs-read-only", cell)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["x marks the spot", "['sub', 'x.txt'] directory"]
    assert lines[2] == ("add denied: capability denied: ipfs: add: this IPFS capability is "
                        "read-only (cat, ls, stat and resolve only)")
    assert [line.split()[:2] for line in lines[3:]] == [
        ["pin", "denied:"], ["unpin", "denied:"], ["pins", "denied:"], ["connect", "denied:"]]
    denied = [json.loads(x) for x in r.stderr.splitlines() if '"denied"' in x]
    assert [d["method"] for d in denied] == ["add", "pin", "unpin", "pins", "connect"]
    assert all(d["capability"] == "ipfs" and d["peer"] is None for d in denied)
    grant = [json.loads(x) for x in r.stderr.splitlines() if '"grant"' in x]
    assert grant[0]["read_only"] is True and grant[0]["roots"] == []


def test_an_uncaught_denial_ends_the_cell_with_65_and_one_line(make_cell):
    cell = make_cell("""
        import ww.cell
        with ww.cell.session() as s:
            s.ipfs.add(b"not allowed")
            print("never")
    """)
    r = run_ww("run", "--with-ipfs", "--ipfs-read-only", cell)
    assert r.returncode == 65
    assert r.stdout == ""
    assert r.stderr == ("cell: capability denied: ipfs: add: this IPFS capability is read-only "
                        "(cat, ls, stat and resolve only)\n")


def test_roots_limit_every_path_to_the_dags_under_them(make_cell, trees):
    root, other = trees
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            ipfs = s.ipfs
            y = ipfs.resolve("{root}/sub/y.txt")
            print(ipfs.cat(y).decode().strip())         # a CID reachable from the root
            print(ipfs.cat("/ipfs/" + y).decode().strip())
            print(ipfs.add(b"writes are still allowed", only_hash=True).startswith("Qm"))
            for path in ["{other}", "{other}/z.txt"]:
                try:
                    ipfs.cat(path)
                except ww.cell.CapabilityDenied as e:
                    print("denied:", e)
    """)
    r = run_ww("run", "--with-ipfs", "--ipfs-root", root, cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "why not", "why not", "True",
        f"denied: capability denied: ipfs: cat: {other} is outside the DAGs this capability "
        "is limited to",
        f"denied: capability denied: ipfs: cat: {other}/z.txt is outside the DAGs this "
        "capability is limited to",
    ]


def test_a_cell_narrows_its_capability_further_but_never_widens_it(make_cell, trees):
    root, other = trees
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            full = s.ipfs
            sub = full.attenuate(roots=["{root}/sub"])            # a path inside the root
            ro = sub.attenuate(read_only=True)
            for label, call in [
                ("sub cat", lambda: sub.ls(full.resolve("{root}/sub"))),
                ("sub outside", lambda: sub.cat("{root}/x.txt")),
                ("ro add", lambda: ro.add(b"x")),
                ("ro widen to rw", lambda: ro.attenuate(read_only=False).add(b"x")),
                ("sub widen roots", lambda: sub.attenuate(roots=["{other}"])),
                ("full still writes", lambda: full.add(b"x", only_hash=True)),
            ]:
                try:
                    result = call()
                    print(label, "ok", type(result).__name__)
                except ww.cell.CapabilityDenied as e:
                    print(label, "denied", str(e).split(": ", 3)[2])
    """)
    r = run_ww("run", "--with-ipfs", "--ipfs-root", root, cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "sub cat ok list",
        "sub outside denied cat",
        "ro add denied add",
        "ro widen to rw denied add",
        "sub widen roots denied attenuate",
        "full still writes ok str",
    ]


def test_a_roots_limited_capability_unpins_only_its_own_pins_never_the_operators(
        make_cell, trees):
    root, _ = trees  # `ww export` pinned both trees: the operator's pins
    from ww.core.cid import CID

    cid = root.removeprefix("/ipfs/")
    v1 = str(CID.parse(cid).to_v1())
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            ipfs = s.ipfs
            sub = ipfs.resolve("{root}/sub")
            print("root visible", "{cid}" in ipfs.pins())
            for label, call in [
                ("unpin root", lambda: ipfs.unpin("{cid}")),
                ("unpin root by path", lambda: ipfs.unpin("{root}")),
                ("unpin root as CIDv1", lambda: ipfs.unpin("{v1}")),
                ("narrowed unpin root", lambda: ipfs.attenuate(roots=[sub]).unpin("{cid}")),
            ]:
                try:
                    call()
                    print(label, "allowed")
                except ww.cell.CapabilityDenied as e:
                    print(label, "denied:", str(e).split(": ", 3)[3])
            ipfs.pin(sub)                        # a pin of its own, inside the root
            print("own pin listed", sub in ipfs.pins())
            ipfs.attenuate(roots=[sub]).unpin(sub)  # the same session, narrowed: its own
            mine = ipfs.add(b"a file of the cell's own")  # add pins it: also its own
            print("own add listed", mine in ipfs.pins())
            ipfs.unpin(mine)
            print("own pins gone", sub not in ipfs.pins() and mine not in ipfs.pins())
            try:
                ipfs.unpin(sub)                  # no longer pinned by it
            except ww.cell.CapabilityDenied:
                print("unpin twice denied")
            print("root still pinned", "{cid}" in ipfs.pins())
    """)
    r = run_ww("run", "--with-ipfs", "--ipfs-root", root, cell)
    assert r.returncode == 0, r.stderr
    reason = ("was not pinned by this capability (a capability limited to roots unpins only "
              "what it pinned itself in this session)")
    assert r.stdout.splitlines() == [
        "root visible True",
        f"unpin root denied: {cid} {reason}",
        f"unpin root by path denied: {root} {reason}",
        f"unpin root as CIDv1 denied: {v1} {reason}",
        f"narrowed unpin root denied: {cid} {reason}",
        "own pin listed True",
        "own add listed True",
        "own pins gone True",
        "unpin twice denied",
        "root still pinned True",
    ]
    # The operator's content is still pinned, so gc keeps it.
    assert run_ww("repo", "gc").returncode == 0
    reader = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            print(s.ipfs.cat("{root}/sub/y.txt").decode().strip())
    """, name="reader.py")
    r = run_ww("run", "--with-ipfs", reader)
    assert (r.returncode, r.stdout) == (0, "why not\n"), r.stderr


def test_a_sub_cell_with_roots_cannot_unpin_its_parents_or_the_operators_pins(make_cell, trees):
    root, _ = trees
    cid = root.removeprefix("/ipfs/")
    child = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            try:
                s.ipfs.unpin("{root}")
                print("child unpinned")
            except ww.cell.CapabilityDenied:
                print("child denied")
    """, name="child.py")
    program = export(child)
    parent = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            c = s.exec.spawn("{program}", ipfs=True, ipfs_roots=["{root}"])
            print(c.stdout.read_all().decode().strip(), c.wait())
            print("root still pinned", "{cid}" in s.ipfs.pins())
    """)
    r = run_ww("run", "--with-ipfs", "--with-exec", parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["child denied 0", "root still pinned True"]
