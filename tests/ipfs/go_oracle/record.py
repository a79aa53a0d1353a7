"""Write ../chunker_vectors.json: kubo's own chunk lengths for the inputs of CASES, and kubo's
own message for each chunker string of REFUSED.

Needs the oracle built from main.go (Go, with boxo v0.11.0 from the Go module proxy):
    cd tests/ipfs/go_oracle && go mod tidy && go build -o oracle .
    python -m tests.ipfs.go_oracle.record tests/ipfs/go_oracle/oracle
The tests (tests/ipfs/test_chunker.py) read the JSON; they do not need Go.

The JSON in the repository was recorded on a machine without the Go module proxy: there the
oracle was built with ``replace`` directives pointing at the sources of the three modules the
chunker package compiles from -- boxo v0.11.0's chunker/ directory, github.com/whyrusleeping/
chunker (its Rabin fingerprint) and github.com/libp2p/go-buffer-pool -- and a stand-in for
github.com/ipfs/go-log/v2 (the chunker only logs a rejected label; the error it returns is
unchanged), with Go 1.27.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.ipfs.chunker_data import vector_data

CASES = {
    "buzhash": ["random:1:0", "random:2:1", "random:3:131071", "random:4:131072",
                "random:5:131073", "random:6:524287", "random:7:524288", "random:8:524289",
                "random:9:3145745", "random:10:2000000", "zeros:1200000",
                "repeat:616263:1100000"],
    "rabin": ["random:11:0", "random:12:1", "random:13:87381", "random:14:87382",
              "random:15:393216", "random:16:393217", "random:17:3145745", "zeros:1000000"],
    "rabin-48": ["random:18:20000"],
    "rabin-1000": ["random:19:300000"],
    "rabin-699051": ["random:20:2500000"],
    "rabin-16-32-64": ["random:21:20000", "zeros:5000", "repeat:00ff:5000"],
    "rabin-min:100-avg:4096-max:8192": ["random:22:400000"],
    "rabin-16-1048575-1048576": ["random:23:2200000"],
    "rabin-1024-1025-1026": ["random:24:100000"],
    "rabin-17-1000-2000": ["random:25:100000"],
    # kubo 0.22's parser accepts these, as written
    "size-+5": ["random:26:100"],
    "size-10-20": ["random:27:100"],
    "rabinx": ["random:28:900000"],
    "rabin-+100": ["random:29:3000"],
    "default": ["random:30:600000"],
}

REFUSED = [
    "size-0", "size-", "size-abc", "size-1048577", "size-99999999999999999999", "size--5",
    "rabin-x", "rabin-1-2", "rabin-1-2-3-4", "rabin-15-32-64", "rabin-x:16-32-64",
    "rabin-min:16-x:32-64", "rabin-min:16-avg:32-x:64", "rabin-min:abc-32-64", "rabin-16-32-32",
    "rabin-16-64-32", "rabin-32-32-64", "rabin-16-32-1048577", "rabin-699052", "rabin-abc",
    "rabin-1048576", "buzhash-1", "bogus", "fixed-10", "Rabin", "size-1e3", "rabin-16-32-x",
]


def main(oracle: str, out: Path) -> None:
    cases = []
    with tempfile.TemporaryDirectory() as scratch:
        for chunker, inputs in CASES.items():
            for data in inputs:
                path = Path(scratch) / "data"
                path.write_bytes(vector_data(data))
                r = subprocess.run([oracle, str(path), chunker], capture_output=True, text=True,
                                   check=True)
                cases.append({"chunker": chunker, "data": data,
                              "lengths": [int(n) for n in r.stdout.split()]})
        refused = []
        for chunker in REFUSED:
            r = subprocess.run([oracle, "/dev/null", chunker], capture_output=True, text=True)
            assert r.returncode == 3 and r.stdout.startswith("error: "), (chunker, r)
            refused.append({"chunker": chunker, "error": r.stdout[len("error: "):].rstrip("\n")})
    doc = {"oracle": "boxo v0.11.0 chunker.FromString (kubo 0.22), tests/ipfs/go_oracle/main.go",
           "cases": cases, "refused": refused}
    out.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], Path(__file__).resolve().parent.parent / "chunker_vectors.json")
