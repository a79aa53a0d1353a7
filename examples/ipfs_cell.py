#!/usr/bin/env python3
"""A cell using the IPFS capability: lists a directory, reads its files, adds a summary.

    ww run --with-ipfs examples/ipfs_cell.py /ipfs/<cid of a directory>
"""

import sys

import ww.cell


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: ipfs_cell.py /ipfs/<directory cid>", file=sys.stderr)
        return 2
    root = sys.argv[1]
    with ww.cell.session() as session:
        ipfs = session.ipfs
        lines = []
        for entry in ipfs.ls(root):
            if entry.type.value == "file":
                head = ipfs.cat(f"{root}/{entry.name}", length=40)
                lines.append(f"{entry.name}: {entry.size} bytes, starts {head!r}")
            else:
                lines.append(f"{entry.name}: {entry.type.value}")
        summary = "\n".join(lines) + "\n"
        print(summary, end="")
        print(f"summary added as /ipfs/{ipfs.add(summary.encode())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
