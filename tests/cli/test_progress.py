"""Progress bars on a terminal (issue 12): `ww export`, `ww import` (of a path, a CAR, from a
peer), `ww export --car` and `ww cat` draw one line on stderr when it is a terminal, and
nothing anywhere else.

Each command runs as the real console script with stderr on a pseudo-terminal (os.openpty)
and stdout on a pipe.  A bar is redrawn at most 10 times a second, but always drawn a last
time when the work ends: the tests assert on that final frame, never on how many frames a
run happened to draw.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import select
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from tests.conftest import HANG, WW, run_ww
from tests.ipfs import conftest as ipfs_conftest

fake_kubo = ipfs_conftest.fake_kubo  # the kubo RPC stand-in of tests/ipfs, as a fixture here

MIB = 1 << 20
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(*args: str, env: dict[str, str] | None = None, stdin: Path | None = None,
                    stdout_too: bool = False, columns: int = 200) -> tuple[int, bytes, str]:
    """Run `ww ARGS` with stderr (and stdout, if ``stdout_too``) on a pseudo-terminal
    ``columns`` wide (stdin: the file ``stdin``, else /dev/null); returns its exit status,
    its stdout (bytes; empty if on the terminal) and what reached the terminal (text, escapes
    left in)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    with open(stdin or os.devnull, "rb") as source:
        proc = subprocess.Popen([WW, *args], stdin=source, env=env, stderr=slave,
                                stdout=slave if stdout_too else subprocess.PIPE)
    os.close(slave)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout
                                                        else b""), daemon=True)
    reader.start()
    seen = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], HANG)
            assert ready, "ww wrote nothing and did not exit"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            seen += data
    finally:
        os.close(master)
    status = proc.wait(timeout=HANG)
    reader.join(HANG)
    return status, out[0], seen.decode()


def final_frame(terminal: str) -> str:
    """The last line drawn, escapes removed; the line must have been ended."""
    plain = _ESCAPES.sub("", terminal)
    assert plain.endswith("\n"), f"the bar was not ended: {plain[-200:]!r}"
    frames = [f.strip() for f in re.split(r"[\r\n]", plain) if f.strip()]
    return frames[-1]


def frames_of(terminal: str, label: str) -> list[str]:
    plain = _ESCAPES.sub("", terminal)
    return [f.strip() for f in re.split(r"[\r\n]", plain) if f.strip().startswith(label)]


def mib(n: int) -> str:
    """``n`` bytes as the bar shows a total, e.g. 9.0 MiB."""
    return f"{n / MIB:,.1f}"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Three files of 3 MiB (9 MiB, over the 8 MiB a bar needs), a hidden file that ww export
    skips, and a symlink."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    rng = random.Random(12)
    for i in range(3):
        (root / ("sub" if i else "") / f"f{i}.bin").write_bytes(rng.randbytes(3 * MIB))
    (root / ".hidden").write_bytes(rng.randbytes(4 * MIB))
    (root / "link").symlink_to("f0.bin")
    return root


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(random.Random(5).randbytes(9 * MIB + 12345))
    return path


def test_export_of_a_directory_draws_its_files_and_bytes_and_ends_the_line(tree):
    status, out, terminal = run_on_terminal("export", str(tree))
    assert status == 0, terminal
    last = final_frame(terminal)
    assert last.startswith("adding tree")
    assert f"{mib(9 * MIB)}/{mib(9 * MIB)} MiB" in last  # the hidden file is not counted
    assert "3/3 files" in last
    assert terminal.endswith("\x1b[?25h")  # the cursor is shown again
    piped = run_ww("export", str(tree))
    assert piped.stderr == ""
    assert out.decode() == piped.stdout  # the same CID, and nothing else on stdout


def test_export_of_a_large_file_draws_its_bytes(big):
    status, out, terminal = run_on_terminal("export", "--cid-version", "1", str(big))
    assert status == 0, terminal
    last = final_frame(terminal)
    size = mib(big.stat().st_size)
    assert last.startswith("adding big.bin") and f"{size}/{size} MiB" in last
    assert "1/1 file" in last
    assert out.decode() == run_ww("export", "--cid-version", "1", str(big)).stdout


def test_export_of_stdin_draws_the_bytes_read(big):
    status, out, terminal = run_on_terminal("export", "-", stdin=big)
    assert status == 0, terminal
    last = final_frame(terminal)
    size = mib(big.stat().st_size)
    assert last.startswith("adding stdin") and f"{size}/{size} MiB" in last and "1 file" in last
    assert out.decode() == run_ww("export", str(big)).stdout


@pytest.mark.parametrize("flags", [["-q"], ["-Q"], ["--progress=false"], ["--no-progress"]])
def test_export_quiet_or_progress_false_draws_nothing(tree, flags):
    status, out, terminal = run_on_terminal("export", *flags, str(tree))
    assert status == 0
    assert terminal == ""
    assert out.decode() == run_ww("export", *flags, str(tree)).stdout


def test_export_quiet_with_progress_draws_the_bar_as_kubo_does(tree):
    status, out, terminal = run_on_terminal("export", "-Q", "--progress", str(tree))
    assert status == 0
    assert "3/3 files" in final_frame(terminal)
    assert out.decode() == run_ww("export", "-Q", str(tree)).stdout


def test_small_work_draws_no_bar(tmp_path):
    (tmp_path / "small").write_bytes(b"x" * 1000)
    status, out, terminal = run_on_terminal("export", str(tmp_path / "small"))
    assert (status, terminal) == (0, "")
    assert out.startswith(b"/ipfs/")


def test_many_small_files_draw_a_bar(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(1000):  # 1000 files: a bar, though their bytes are few
        (root / f"{i:04}").write_bytes(b"%d" % i)
    status, _, terminal = run_on_terminal("export", "-n", str(root))  # -n: hash, no store
    assert status == 0, terminal
    assert "1000/1000 files" in final_frame(terminal)


def test_without_a_bar_rich_is_not_imported(tree):
    code = ("import sys\nfrom ww.cli.main import run_cli\n"
            f"status = run_cli(['export', '-Q', {str(tree)!r}])\n"
            "print(status, 'rich' in sys.modules, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=HANG)
    assert r.stderr == "0 False\n"


def test_on_an_80_column_terminal_the_whole_line_fits(big, tmp_path):
    """The usual terminal width: the counts, the rate and the time left are drawn whole,
    never cropped (a narrower bar makes room)."""
    status, out, terminal = run_on_terminal("export", "--car", str(tmp_path / "snapshot.car"),
                                            str(big), columns=80)
    assert status == 0, terminal
    last = final_frame(terminal)
    assert "…" not in last and re.search(r"\d+ blocks [\d.]+ MiB/s 0:00:00$", last), last
    assert len(last) <= 80


def test_import_draws_the_dag_written_and_its_files(tree, tmp_path, ww_home):
    cid = run_ww("export", "-Q", str(tree)).stdout.strip()
    from ww.ipfs.node import EmbeddedNode

    with EmbeddedNode(ww_home) as node:
        size = node.stat(cid).cumulative_size
    status, out, terminal = run_on_terminal("import", f"/ipfs/{cid}", "-o",
                                            str(tmp_path / "copy"))
    assert status == 0, terminal
    last = final_frame(terminal)
    assert last.startswith("saving copy")
    assert f"{mib(size)}/{mib(size)} MiB" in last and "3 files" in last
    assert out == b""
    assert (tmp_path / "copy" / "sub" / "f2.bin").read_bytes() == \
        (tree / "sub" / "f2.bin").read_bytes()
    assert (tmp_path / "copy" / "link").readlink() == Path("f0.bin")


def test_import_progress_false_or_a_pipe_writes_nothing_on_stderr(tree, tmp_path):
    cid = run_ww("export", "-Q", str(tree)).stdout.strip()
    status, _, terminal = run_on_terminal("import", "--progress=false", f"/ipfs/{cid}", "-o",
                                          str(tmp_path / "a"))
    assert (status, terminal) == (0, "")
    piped = run_ww("import", f"/ipfs/{cid}", "-o", str(tmp_path / "b"))
    assert (piped.returncode, piped.stderr) == (0, "")


@pytest.mark.parametrize("command", [["cat"], ["import", "-o", "-"]])
def test_file_to_stdout_is_byte_identical_with_and_without_the_bar(big, command):
    cid = run_ww("export", "-Q", str(big)).stdout.strip()
    status, out, terminal = run_on_terminal(*command, f"/ipfs/{cid}")
    assert status == 0, terminal
    size = big.stat().st_size
    assert f"{mib(size)}/{mib(size)} MiB" in final_frame(terminal)
    assert out == big.read_bytes()
    piped = run_ww(*command, f"/ipfs/{cid}", text=False)
    assert (piped.stdout, piped.stderr) == (out, b"")
    quiet_status, quiet_out, quiet = run_on_terminal(*command, "--progress=false",
                                                     f"/ipfs/{cid}")
    assert (quiet_status, quiet, quiet_out) == (0, "", out)


@pytest.mark.parametrize("command", [["cat"], ["import", "-o", "-"]])
def test_no_bar_is_drawn_over_a_file_written_to_the_same_terminal(tmp_path, command):
    text = tmp_path / "text"
    text.write_bytes(b"0123456789abcdef\n" * (9 * MIB // 17))  # no "MiB" in it
    cid = run_ww("export", "-Q", str(text)).stdout.strip()
    status, _, terminal = run_on_terminal(*command, f"/ipfs/{cid}", stdout_too=True)
    assert status == 0
    assert "MiB" not in terminal and terminal.count("0123456789abcdef") == 9 * MIB // 17


def test_cat_with_offset_and_length_counts_what_it_writes(big):
    cid = run_ww("export", "-Q", str(big)).stdout.strip()
    status, out, terminal = run_on_terminal("cat", "-o", "1000", "-l", str(9 * MIB),
                                            f"/ipfs/{cid}")
    assert status == 0
    assert out == big.read_bytes()[1000:1000 + 9 * MIB]
    assert f"{mib(9 * MIB)}/{mib(9 * MIB)} MiB" in final_frame(terminal)


def test_car_export_and_import_draw_their_bars(big, tmp_path):
    car = tmp_path / "x.car"
    status, out, terminal = run_on_terminal("export", "--car", str(car), str(big))
    assert status == 0, terminal
    size = car.stat().st_size
    writing = frames_of(terminal, "writing x.car")
    assert writing, terminal
    assert f"{mib(size)}/{mib(size)} MiB" in writing[-1]
    blocks = int(re.search(r"(\d+) blocks", writing[-1]).group(1))
    assert blocks == 1 + -(-big.stat().st_size // 262144)  # the leaves and their root
    assert out.decode() == run_ww("export", "--car", str(tmp_path / "y.car"), str(big)).stdout
    assert car.read_bytes() == (tmp_path / "y.car").read_bytes()

    status, out, terminal = run_on_terminal("import", str(car), "-o", str(tmp_path / "back"))
    assert status == 0, terminal
    importing = frames_of(terminal, "importing x.car")
    assert importing and f"{mib(size)}/{mib(size)} MiB" in importing[-1]
    assert f"{blocks} blocks" in importing[-1]
    assert final_frame(terminal).startswith("saving back")
    assert (tmp_path / "back").read_bytes() == big.read_bytes()


@pytest.mark.parametrize("command", ["import", "cat"])
def test_a_fetch_from_a_peer_counts_the_blocks_fetched(big, tmp_path, command):
    """`ww import --peer` and `ww cat --peer`: the bar counts the blocks fetched over
    Bitswap; what is written is the file's bytes alone."""
    pytest.importorskip("libp2p")
    from ww.core.cid import CID
    from ww.ipfs import exporter
    from ww.ipfs.node import EmbeddedNode
    from ww.p2p import host_for_ipfs

    output = ["-o", str(tmp_path / "got")] if command == "import" else []
    peer = EmbeddedNode(tmp_path / "peer", new_host=host_for_ipfs())
    try:
        cid = peer.add_stream([big.read_bytes()])
        blocks = sum(1 for _ in exporter.walk(lambda c: peer.block(str(c)), CID.parse(cid)))
        info = peer.listen(["/ip4/127.0.0.1/tcp/0"])
        env = {**os.environ, "WW_HOME": str(tmp_path / "empty-home")}
        status, out, terminal = run_on_terminal(command, "--peer", info.addresses[0],
                                                f"/ipfs/{cid}", *output, env=env)
    finally:
        peer.close()
    assert status == 0, terminal
    last = final_frame(terminal)
    assert last.startswith("saving got" if output else "cat"), terminal
    assert f"{blocks} blocks fetched" in last, terminal
    if output:
        assert (tmp_path / "got").read_bytes() == big.read_bytes()
    else:
        size = mib(big.stat().st_size)
        assert f"{size}/{size} MiB" in last and out == big.read_bytes()


def test_through_a_kubo_node_the_same_bars_are_drawn(tree, tmp_path, fake_kubo):
    """With --ipfs the files read for the upload and the blocks read from kubo are counted
    as the embedded node's are (kubo's RPC API: a stand-in over kubo's own adder)."""
    status, out, terminal = run_on_terminal("export", "--ipfs", fake_kubo.api, str(tree))
    assert status == 0, terminal
    last = final_frame(terminal)
    assert f"{mib(9 * MIB)}/{mib(9 * MIB)} MiB" in last and "3/3 files" in last
    cid = out.decode().strip().removeprefix("/ipfs/")
    status, out, terminal = run_on_terminal("import", "--ipfs", fake_kubo.api, f"/ipfs/{cid}",
                                            "-o", str(tmp_path / "copy"))
    assert status == 0, terminal
    last = final_frame(terminal)
    assert last.startswith("saving copy") and "3 files" in last
    assert (tmp_path / "copy" / "f0.bin").read_bytes() == (tree / "f0.bin").read_bytes()


def test_a_failure_ends_the_bar_before_its_one_line_error(big, tmp_path, ww_home):
    """A block missing half-way: the bar is drawn a last time where the work stopped and its
    line ended, then the error has a line of its own; nothing is written."""
    cid = run_ww("export", "-Q", "--cid-version", "1", str(big)).stdout.strip()
    from ww.ipfs.node import EmbeddedNode

    with EmbeddedNode(ww_home) as node:
        leaves = node._node(f"/ipfs/{cid}").links
        assert len(leaves) > 10
        assert node._blocks.delete(leaves[-5].cid.multihash)
    status, out, terminal = run_on_terminal("import", f"/ipfs/{cid}", "-o",
                                            str(tmp_path / "copy"))
    assert status == 1
    plain = _ESCAPES.sub("", terminal).replace("\r\n", "\n")  # the terminal's newline
    lines = plain.rstrip("\n").split("\n")
    assert lines[-1].startswith("ww: ") and "\r" not in lines[-1]
    assert lines[-2].split("\r")[-1].startswith("saving copy")
    assert not (tmp_path / "copy").exists()
