#!/usr/bin/env python3
"""A Python cell: reads the fd the operator named "input" and talks to the host over fd 3.

    ww run --with-console --fd input=5 examples/hello_cell.py 5<some-file
"""

import os
import sys

import ww.cell


def main() -> int:
    with os.fdopen(ww.cell.fd("input"), "rb") as f:
        data = f.read()
    print(f"cell: read {len(data)} bytes from the fd named 'input' (fd {ww.cell.fd('input')})")
    print(f"cell: my environment is {sorted(os.environ)}")
    print(f"cell: I can see {sorted(os.listdir('/'))} at /")

    with ww.cell.session() as session:  # fd 3: connect and log in
        print(f"cell: the host granted me {session.granted}")
        echoed = session.console.ping(data[:64])
        print(f"cell: ping over fd 3 echoed {echoed!r}")
        session.console.println(f"hello from a jailed cell, which read {len(data)} bytes")
        try:
            session.ipfs.id()  # not granted by the demo: raises
        except ww.cell.CapabilityNotGranted as e:
            print(f"cell: as expected, {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
