"""`./dev demo`: run the sample cells the way an operator would, and show what they saw.

Opens a file, hands it to each cell as the fd named "input", grants the console
capability to the Python cell, and runs both in the jail with `ww run`.  Then exports a
small directory to IPFS (in a throw-away repository, not your ~/.ww) and runs a cell that
reads it through the IPFS capability.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WW = str(Path(sys.executable).with_name("ww"))


def run(argv: list[str], fd: int | None = None) -> int:
    shown = " ".join(shlex.quote(a) for a in argv)
    redirect = f" {fd}<input.txt" if fd is not None else ""
    print(f"\n$ ww {shown}{redirect}", flush=True)
    return subprocess.run([WW, *argv], pass_fds=(fd,) if fd is not None else ()).returncode


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.txt")
        with open(path, "w") as f:
            f.write("a line the operator handed to the cell\n")
        statuses = []
        with open(path, "rb") as f:
            fd = f.fileno()
            statuses.append(run(["run", "--fd", f"input={fd}", str(HERE / "read_fd.sh")], fd))
            f.seek(0)
            statuses.append(run(["run", "--with-console", "--fd", f"input={fd}",
                                 str(HERE / "hello_cell.py")], fd))
        os.environ["WW_HOME"] = os.path.join(tmp, "ww-home")
        site = Path(tmp, "site")
        (site / "docs").mkdir(parents=True)
        (site / "index.html").write_text("<h1>hello from IPFS</h1>\n")
        (site / "docs" / "readme.txt").write_text("nested\n")
        print(f"\n$ ww export {site}", flush=True)
        exported = subprocess.run([WW, "export", str(site)], capture_output=True, text=True)
        print(exported.stdout, end="")
        statuses.append(exported.returncode)
        statuses.append(run(["run", "--with-ipfs", str(HERE / "ipfs_cell.py"),
                             exported.stdout.strip()]))
    ok = all(s == 0 for s in statuses)
    print("\ndemo: " + ("every cell ran and exited 0" if ok else f"exit statuses {statuses}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
