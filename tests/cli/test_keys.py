"""Keys and identity on the command line, as a kubo user expects them: `ww idgen -o FILE`
(a new file of mode 0600, written atomically, never over anything), `ww id --key FILE` (a key
file's peer id) and `ww run --node-key FILE|new`'s command-line errors.  Through the real
console script (run_ww) or the in-process command (run_cli)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

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
    for name in ("text.key", "raw.key"):
        (tmp_path / name).chmod(0o600)
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
        path.chmod(0o600)
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


def _key_in(path, mode: int) -> str:
    """A key written by `ww idgen -o` at ``path``, then given ``mode``; its peer id."""
    peer = run_ww("idgen", "-o", str(path)).stdout.strip()
    path.chmod(mode)
    return peer


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610], ids=oct)
@pytest.mark.parametrize("how", ["id --key", "run --node-key", "run --identity"])
def test_a_key_file_open_to_group_or_others_is_refused_as_openssh_does(tmp_path, how, mode):
    """A private key file others could read (`ww idgen > cell.key` makes one 0644) or change
    was used as it was; now it is refused, as OpenSSH refuses such a key: one line naming
    the file, its mode and the fix, exit 2 (the flag named it), and nothing starts."""
    path = tmp_path / "cell.key"
    _key_in(path, mode)
    marker = tmp_path / "ran"
    command, flag = how.split()
    argv = [command, flag, str(path)]
    if command == "run":
        argv += ["--jail", "none", "/bin/touch", str(marker)]
    r = run_ww(*argv)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == [
        f"ww: {flag} {str(path)!r}: the key file is accessible by group or others (mode "
        f"{mode:04o}): a private key must be its owner's only: chmod 600 {path}"]
    assert not marker.exists()
    path.chmod(0o600)  # the fix the line names
    assert run_ww("id", "--key", str(path)).returncode == 0


def test_the_node_key_in_ww_home_open_to_others_is_refused(ww_home):
    """The node key `ww` keeps in $WW_HOME (made 0600) is held to the same rule: exit 1."""
    first = run_ww("id")
    assert first.returncode == 0, first.stderr
    path = ww_home / "identity.key"
    path.chmod(0o644)
    r = run_ww("id")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.splitlines() == [
        f"ww: {path}: the key file is accessible by group or others (mode 0644): a private "
        f"key must be its owner's only: chmod 600 {path}"]
    path.chmod(0o600)
    assert run_ww("id").stdout == first.stdout  # the same key, nothing replaced


@pytest.mark.parametrize("what, make, reason", [
    ("a directory", lambda p: p.mkdir(), "cannot read the key file: Is a directory"),
    ("a dangling symlink", lambda p: p.symlink_to("gone.key"),
     "cannot read the key file: No such file or directory"),
    ("a symlink to itself", lambda p: p.symlink_to(p.name),
     "cannot read the key file: Too many levels of symbolic links"),
    ("a FIFO nobody writes to", lambda p: os.mkfifo(p, 0o600),
     "not a private key: the input is empty"),
])
def test_a_node_key_in_ww_home_that_is_no_file_is_one_line(ww_home, what, make, reason):
    """Something other than a key file at $WW_HOME/identity.key: a directory, a dangling
    symlink or a loop was an "internal error: IsADirectoryError" (FileNotFoundError,
    OSError); a FIFO hung `ww id` (and `ww run`, `ww daemon`) for ever, as `--node-key FIFO`
    once did.  Now one line naming the file, exit 1, and the entry left as it was."""
    path = ww_home / "identity.key"
    make(path)
    r = run_ww("id")
    assert (r.returncode, r.stdout) == (1, ""), (what, r.stderr)
    assert r.stderr.splitlines() == [f"ww: {path}: {reason}"], what
    assert os.path.lexists(path)  # left as it was: no key written through or over it


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_file_of_another_user_is_refused_and_roots_is_not(tmp_path):
    """A key file another user owns (and so may change or swap) is refused, mode 0600 or
    not, as sshd refuses such files; root's own is the user's here (root runs the test)."""
    path = tmp_path / "cell.key"
    peer = _key_in(path, 0o600)
    os.chown(path, 65534, 65534)  # nobody
    r = run_ww("id", "--key", str(path))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == [
        f"ww: --key {str(path)!r}: the key file belongs to uid 65534, not to uid 0 running "
        "ww (nor to root): a private key must be its user's own (ww idgen -o FILE makes one)"]
    os.chown(path, 0, 0)
    assert run_ww("id", "--key", str(path)).stdout == peer + "\n"


def test_a_key_through_a_pipe_or_fifo_is_not_held_to_a_files_mode(tmp_path):
    """What only passes a key through -- a pipe (`--key <(pass show key)`, /dev/stdin), a
    FIFO -- has no mode that says who can read the key at rest: it is read as before."""
    path = tmp_path / "cell.key"
    peer = _key_in(path, 0o600)
    r = subprocess.run(["sh", "-c", 'cat "$1" | "$2" id --key /dev/stdin', "sh", str(path), WW],
                       capture_output=True, text=True, timeout=HANG)
    assert (r.returncode, r.stdout, r.stderr) == (0, peer + "\n", "")
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)
    r = subprocess.run(["sh", "-c", 'cat "$1" > "$3" & "$2" id --key "$3"; wait', "sh",
                        str(path), WW, str(fifo)], capture_output=True, text=True, timeout=HANG)
    assert (r.returncode, r.stdout, r.stderr) == (0, peer + "\n", "")


@pytest.mark.parametrize("umask, warned", [(0o022, True), (0o077, False)])
def test_idgen_to_a_file_others_can_read_warns_and_names_o(tmp_path, umask, warned):
    """`ww idgen > cell.key` leaves the key in a file the shell made 0644: the key is still
    written, as asked, with one warning line naming -o (which writes 0600); a file of the
    owner's only gets no warning."""
    path = tmp_path / "cell.key"
    r = subprocess.run(["sh", "-c", f'umask {umask:03o}; "$1" idgen > "$2"', "sh", WW,
                        str(path)], capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0
    parse_private_key(path.read_bytes())  # the key, whole, where the shell asked
    expected = [f"ww: warning: the private key goes to a file group or others can read (mode "
                f"{0o666 & ~umask:04o}); 'ww idgen -o FILE' writes a new file of mode 0600"]
    assert r.stderr.splitlines() == (expected if warned else [])


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a FIFO to another user needs root")
def test_a_fifo_of_another_user_cannot_feed_a_key(tmp_path):
    """(found by attack) The owner check held a regular file to its user, but a FIFO passed
    unchecked: another user who made ``/tmp/node.key`` a FIFO of theirs (the name free in a
    shared directory) fed ww a key they chose, and so knew the node's private key.  A named
    FIFO is now held to its owner as a file is; a pipe (``<(pass show key)``, /dev/stdin)
    still passes, whoever made it."""
    path = tmp_path / "cell.key"
    _key_in(path, 0o600)
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, 65534, 65534)  # nobody's, as another user's in /tmp
    r = subprocess.run(["sh", "-c", 'cat "$1" > "$3" & "$2" id --key "$3"; s=$?; '
                        'kill $! 2>/dev/null; exit $s', "sh", str(path), WW, str(fifo)],
                       capture_output=True, text=True, timeout=HANG)
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr.splitlines() == [
        f"ww: --key {str(fifo)!r}: the key file belongs to uid 65534, not to uid 0 running "
        "ww (nor to root): a private key must be its user's own (ww idgen -o FILE makes one)"]


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_a_pipe_of_another_user_behind_a_symlink_cannot_feed_root_a_key():
    """The FIFO rule, got round: another user (here ``nobody``) writes a key of their choice
    into a pipe of their own and plants a symlink at the key's expected name to
    ``/proc/<their pid>/fd/<the pipe>``; root, who may open any process's fds, followed it
    and ran with that key (``ww id --key`` printed its peer id, exit 0), as a pipe's owner
    was never checked.  A pipe (or terminal) of another user that is none of ww's own fds
    is now refused: one line naming its uid, exit 2."""
    from ww.core.identity import PrivateKey

    key = PrivateKey.generate()
    shared = Path(tempfile.mkdtemp(prefix="ww-shared-"))  # a shared directory, as /tmp
    shared.chmod(0o1777)
    link = shared / "node.key"
    planter = subprocess.Popen(  # bash: the test's own Python may be out of nobody's reach
        ["bash", "-c", 'exec 3< <(printf %s "$1"); ln -s "/proc/$$/fd/3" "$2"; '
                       'echo planted; read -r _', "planter", key.to_text(), str(link)],
        user=65534, group=65534, extra_groups=[], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert planter.stdout.readline() == "planted\n"
        r = run_ww("id", "--key", str(link))
    finally:
        planter.communicate("\n", timeout=HANG)
        shutil.rmtree(shared, ignore_errors=True)
    assert key.peer_id not in r.stdout
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.splitlines() == [
        f"ww: --key {str(link)!r}: the key comes through a pipe of uid 65534, not of uid 0 "
        "running ww (nor of root), that is none of ww's own file descriptors: whoever holds "
        "that pipe chooses the key"]
