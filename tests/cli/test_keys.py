"""Keys and identity on the command line, as a kubo user expects them: `ww idgen -o FILE`
(a new file of mode 0600, written atomically, never over anything), `ww id --key FILE` (a key
file's peer id) and `ww run --node-key FILE|new`'s command-line errors.  Through the real
console script (run_ww) or the in-process command (run_cli)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tests.conftest import HANG, WW, run_ww
from ww.app.options import FLAGS
from ww.cli.main import run_cli
from ww.core.identity import parse_private_key


def _umask_zero() -> None:
    os.umask(0)  # so that a file created 0666 would stay 0666: the mode must come from ww


@pytest.mark.parametrize("raw", [False, True], ids=["text", "raw"])
def test_idgen_o_writes_a_new_key_file_readable_by_its_owner_only(tmp_path, raw):
    path = tmp_path / "cell.key"
    r = run_ww("idgen", *(["--raw"] if raw else []), "-o", str(path), preexec_fn=_umask_zero)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    if raw:
        assert len(data) == 68 and data[:1] == b"\x08"
    else:
        assert data.endswith(b"\n") and data[:1] != b"\x08"
    peer = parse_private_key(data).peer_id
    assert r.stdout == peer + "\n"  # the peer id, never the key, on stdout
    assert sorted(os.listdir(tmp_path)) == ["cell.key"]  # no temporary file left
    assert run_ww("id", "--key", str(path)).stdout == peer + "\n"


def test_idgen_output_long_form_and_fresh_keys(tmp_path):
    first = run_cli(["idgen", "--output", str(tmp_path / "a.key")])
    second = run_cli(["idgen", "-o", str(tmp_path / "b.key")])
    assert (first, second) == (0, 0)
    keys = {parse_private_key((tmp_path / name).read_bytes()) for name in ("a.key", "b.key")}
    assert len(keys) == 2


def _existing(tmp_path, kind: str):
    """Something already at FILE; returns (its path, a function telling it is untouched)."""
    path = tmp_path / "cell.key"
    if kind == "file":
        path.write_text("precious\n")
        return path, lambda: path.read_text() == "precious\n"
    if kind == "directory":
        path.mkdir()
        return path, lambda: path.is_dir() and os.listdir(path) == []
    target = tmp_path / "target"
    if kind == "symlink":
        target.write_text("precious\n")
        path.symlink_to(target)
        return path, lambda: path.is_symlink() and target.read_text() == "precious\n"
    path.symlink_to(target)  # dangling: O_CREAT through it would create the target
    return path, lambda: path.is_symlink() and not target.exists()


@pytest.mark.parametrize("kind, described", [
    ("file", "a file"), ("directory", "a directory"), ("symlink", "a symlink"),
    ("dangling", "a symlink"),
])
@pytest.mark.parametrize("raw", [False, True], ids=["text", "raw"])
def test_idgen_o_never_writes_over_or_through_anything(tmp_path, kind, described, raw):
    path, untouched = _existing(tmp_path, kind)
    before = sorted(os.listdir(tmp_path))
    r = run_ww("idgen", *(["--raw"] if raw else []), "-o", str(path))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (f"ww: {path} exists ({described}); a key is never written over "
                        "anything: remove it or choose another name\n")
    assert untouched()
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind


def test_idgen_o_into_a_missing_directory_is_one_line(tmp_path):
    path = tmp_path / "no" / "cell.key"
    r = run_ww("idgen", "-o", str(path))
    assert r.returncode == 1
    assert r.stderr == f"ww: cannot write the key to {path}: No such file or directory\n"
    assert not (tmp_path / "no").exists()


def test_idgen_o_dash_is_stdout_and_an_empty_file_a_usage_error(tmp_path):
    """`-o -` wrote the private key to a file named ./- (and printed the peer id where a
    pipe expected the key); `-o ''` said "ww:  exists (it appeared meanwhile)"."""
    r = run_ww("idgen", "-o", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    parse_private_key(r.stdout.encode())  # the key itself, as without -o
    raw = run_ww("idgen", "--raw", "-o", "-", cwd=tmp_path, text=False)
    assert len(raw.stdout) == 68 and raw.stdout[:1] == b"\x08"
    empty = run_ww("idgen", "-o", "", cwd=tmp_path)
    assert empty.returncode == 2
    assert empty.stderr.splitlines() == [
        "ww: -o '': an empty FILE names no file (give a path such as ./cell.key)"]
    assert os.listdir(tmp_path) == []


def test_id_key_prints_the_peer_id_of_either_form_ww_idgen_writes(tmp_path, capsys, ww_home):
    text = run_ww("idgen")
    raw = run_ww("idgen", "--raw", text=False)
    (tmp_path / "text.key").write_text(text.stdout)
    (tmp_path / "raw.key").write_bytes(raw.stdout)
    for name, data in (("text.key", text.stdout), ("raw.key", raw.stdout)):
        assert run_cli(["id", "--key", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out == parse_private_key(data).peer_id + "\n"
    assert os.listdir(ww_home) == []  # the node key is neither read nor created


@pytest.mark.parametrize("content, reason", [
    (None, "cannot read the key file: No such file or directory"),
    ("dir", "cannot read the key file: Is a directory"),
    (b"", "not a private key: the input is empty"),
    (b"hello, world\n", "not a private key: invalid base58 text"),
    (b"\x08\x01\x12\x02ab", "Ed25519 private key data must be 64 or 96 bytes, not 2"),
    (b"1" * 5000, "not a private key: the file is longer than 4096 bytes"),
], ids=["missing", "directory", "empty", "text", "short", "long"])
def test_id_key_with_a_bad_key_is_one_line_and_exit_2(tmp_path, content, reason):
    path = tmp_path / "bad.key"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    r = run_ww("id", "--key", str(path))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith(f"ww: --key {str(path)!r}: {reason}"), r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_id_key_prints_no_addresses_and_refuses_listen(keyfile, capsys, monkeypatch):
    path, peer = keyfile
    assert run_cli(["id", "--key", path, "--listen", "/ip4/127.0.0.1/tcp/1"]) == 2
    assert capsys.readouterr().err == \
        "ww: --key prints a key's peer id only; --listen cannot go with it\n"
    monkeypatch.setenv("WW_LISTEN", "/ip4/127.0.0.1/tcp/1")  # the variable adds no lines
    assert run_cli(["id", "--key", path]) == 0
    assert capsys.readouterr().out == peer + "\n"


def test_node_key_is_a_run_flag_with_its_variable():
    (flag,) = [f for f in FLAGS if f.flag == "--node-key"]
    assert (flag.field, flag.kind, flag.envvar) == ("node_key", "one", "WW_NODE_KEY")


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_a_bad_node_key_is_a_usage_error_before_anything_starts(tmp_path, how):
    path = tmp_path / "nope.key"
    marker = tmp_path / "ran"
    argv = ["run", "--jail", "none", "/bin/touch", str(marker)]
    if how == "flag":
        r = run_ww(argv[0], "--node-key", str(path), *argv[1:])
    else:
        r = run_ww(*argv, env={**os.environ, "WW_NODE_KEY": str(path)})
    assert r.returncode == 2
    flag = "--node-key" if how == "flag" else "--node-key (from WW_NODE_KEY)"
    assert r.stderr == (f"ww: {flag} {str(path)!r}: cannot read the key file: "
                        "No such file or directory\n")
    assert not marker.exists()


def test_a_node_key_fifo_without_a_writer_is_one_line_and_a_pipe_with_one_is_read(tmp_path):
    """`--node-key FIFO` with nobody writing to it waited for a writer forever; now it reads
    as empty at once (exit 2), while a pipe with its writer (`--node-key <(cat node.key)`)
    is still read to its end."""
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    r = run_ww("id", "--key", str(fifo))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"ww: --key {str(fifo)!r}: not a private key: the input "
                                      "is empty"]
    key = tmp_path / "node.key"
    peer = run_ww("idgen", "-o", str(key)).stdout.strip()
    with open(key, "rb") as f:
        r = run_ww("id", "--key", "/dev/stdin", stdin=f)  # a file
    assert r.stdout.strip() == peer, r.stderr
    r = subprocess.run(["sh", "-c", 'cat "$1" | "$2" id --key /dev/stdin', "sh", str(key), WW],
                       capture_output=True, text=True, timeout=HANG)
    assert r.stdout.strip() == peer, r.stderr
