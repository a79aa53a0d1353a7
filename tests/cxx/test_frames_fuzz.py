"""src/ww/core/frames.c (Cap'n Proto framing of a cell's fd 3 and a remote peer's stream, the
C behind ww.core.capnp_frames) under random and structured input in a build with
AddressSanitizer and UBSan: tests/cxx/frames_fuzz.c.  Its answers are checked against the
pure-Python reference in tests/core/test_frames_differential.py; here, that untrusted bytes
never make it read past what it was given, overflow, or lose a byte of the stream.  Needs
gcc, which `./dev` installs before building the package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCES = ROOT / "src" / "ww" / "core"  # frames.c, which the harness includes
HANG = 300  # seconds: only stops a hang


def test_framing_under_random_input(tmp_path: Path) -> None:
    """100 000 cases, each a message head into rpc_member and struct_at (1 to 600 segments,
    truncated heads, far and double-far pointers, every read checked by ASan against a
    buffer of exactly the head's length) and a stream of messages through the framer, fed
    whole and in random pieces: the same events, every head min(body, head size) bytes,
    every byte of a whole stream reported."""
    if shutil.which("gcc") is None:
        pytest.fail("missing gcc: './dev test' installs it")
    fuzz = tmp_path / "fuzz"
    r = subprocess.run(
        ["gcc", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=undefined", f"-I{SOURCES}", "-o", str(fuzz),
         str(Path(__file__).parent / "frames_fuzz.c")],
        capture_output=True, text=True, timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(fuzz), "100000", "2026"], capture_output=True, text=True,
                       timeout=HANG)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "100000 cases, no crash", "")
