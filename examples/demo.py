"""`./dev demo`: run the sample cells the way an operator would, and show what they saw.

Opens a file, hands it to each cell as the fd named "input", grants the console
capability to the Python cell, and runs both in the jail with `ww run`.
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


def run(argv: list[str], fd: int) -> int:
    shown = " ".join(shlex.quote(a) for a in argv)
    print(f"\n$ ww {shown} {fd}<input.txt", flush=True)
    return subprocess.run([WW, *argv], pass_fds=(fd,)).returncode


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
    ok = all(s == 0 for s in statuses)
    print("\ndemo: " + ("both cells ran and exited 0" if ok else f"exit statuses {statuses}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
