"""``EmbeddedNode.pinned_through``: which recursive pin holds each of several CIDs (kubo's
``pin ls <cid>`` "indirect through <root>"), found in one walk of the pins for all of them."""

from __future__ import annotations

from pathlib import Path

from ww.ipfs import AddOptions, EmbeddedNode


def _tree(tmp_path: Path) -> Path:
    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (outer / name).write_bytes(f"outer file {name}\n".encode())
        (outer / "inner" / name).write_bytes(f"inner file {name}\n".encode())
    return outer


def test_each_cid_is_named_with_a_pin_holding_it_in_one_walk(tmp_path: Path):
    node = EmbeddedNode(tmp_path / "repo")
    outer = node.add_path(_tree(tmp_path), AddOptions(pin=False))
    links = {link.name: link.cid for link in node.stat(outer).links}
    inner = links["inner"]
    inner_leaves = [link.cid for link in node.stat(inner).links]
    loose = node.add_stream([b"pinned by nothing"], AddOptions(pin=False))
    node.pin(inner)  # a recursive pin that is itself held below another one
    node.pin(outer)

    reads = []
    get = node._blocks.get

    def counted(cid):
        reads.append(cid.multihash)
        return get(cid)

    node._blocks.get = counted
    asked = [links["a"], links["c"], *inner_leaves, inner, loose]
    through = node.pinned_through(asked)

    assert through[links["a"]] == outer and through[links["c"]] == outer
    assert through[inner] == outer  # a root found below another, whichever was walked first
    assert {through[leaf] for leaf in inner_leaves} <= {inner, outer}
    assert loose not in through and set(through) == set(asked) - {loose}
    # one walk for every CID asked about: no block read twice, but a wanted root found
    # again below another (its link followed; its own children are not read again)
    assert len(reads) - len(set(reads)) <= 1, reads
    assert node.pinned_via(links["b"]) == outer and node.pinned_via(loose) is None
