"""Signed login end to end: real cells log in with Ed25519 identities through real `ww run`."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import LOGIN_TIMEOUT, run_ww

WHO_AM_I = """
import ww.cell
with ww.cell.session() as s:
    print(s.peer_id, ",".join(s.granted))
    s.console.println("signed in")
"""


def audit_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_good_login_with_the_operators_key_gives_the_flags_grants(make_cell, keyfile):
    path, peer = keyfile
    r = run_ww("--json", "run", "--identity", path, "--with-console", make_cell(WHO_AM_I))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [peer, "console"]
    assert "[cell] signed in" in r.stderr
    events = audit_lines(r.stderr)
    login = next(e for e in events if e["event"] == "login")
    assert login["peer"] == peer and login["granted"] == ["console"]
    assert any(e["event"] == "grant" and e["capability"] == "console" for e in events)


def test_raw_key_file_and_a_fresh_identity_per_run(make_cell, tmp_path):
    raw = run_ww("idgen", "--raw", text=False)
    (tmp_path / "raw.key").write_bytes(raw.stdout)
    (tmp_path / "raw.key").chmod(0o600)
    from ww.core.identity import parse_private_key

    cell = make_cell(WHO_AM_I)
    r = run_ww("run", "--identity", str(tmp_path / "raw.key"), "--with-console", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [parse_private_key(raw.stdout).peer_id, "console"]
    first = run_ww("run", "--identity", "new", "--with-console", cell)
    second = run_ww("run", "--identity", "new", "--with-console", cell)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.startswith("12D3KooW") and first.stdout != second.stdout


def test_the_key_is_not_in_the_cells_environment_or_files_and_is_handed_out_once(
        make_cell, keyfile):
    path, _ = keyfile
    cell = make_cell("""
        import os, sys, asyncio, socket, capnp
        from ww.schema import load
        secret = sys.stdin.read().strip()  # the key text, to look for (stdin is not a file)
        found = [k for k, v in os.environ.items() if secret in v or k.startswith("WW_")]
        files = [os.path.join(d, f) for top in ("/cell", "/tmp")
                 for d, _, fs in os.walk(top) for f in fs]
        holding = [f for f in files if secret.encode() in open(f, "rb").read()]
        print("env", found, "files", holding, "fds", sorted(os.listdir("/proc/self/fd")))
        cell = load("cell")
        async def main():
            client = capnp.TwoPartyClient(
                await capnp.AsyncIoStream.create_connection(sock=socket.socket(fileno=3)))
            host = client.bootstrap().cast_as(cell.Host)
            key = bytes((await host.identity()).key)
            print("key bytes", len(key))
            try:
                await host.identity()
            except capnp.KjException as e:
                print("again:", "only before login" in str(e))
        asyncio.run(capnp.run(main()))
    """)
    # The cell never logs in: it ends on its own, with its status, before a deadline generous
    # by design (it was 5 s, and a loaded machine took 6.6 s to run this cell).
    r = run_ww("run", "--identity", path, "--login-timeout", str(LOGIN_TIMEOUT), cell,
               input=open(path).read())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "env [] files [] fds ['0', '1', '2', '3', '4']"  # 4: listdir's own
    assert lines[1:] == ["key bytes 68", "again: True"]


REPLAY = """
import asyncio, sys
import ww.cell
from ww.cell._session import Signer

class Replaying(Signer):
    recorded = None
    async def sign(self, challenge, _context, **kwargs):
        if Replaying.recorded is None:
            await super().sign(challenge, _context)
            Replaying.recorded = (bytes(_context.results.publicKey),
                                  bytes(_context.results.signature))
        else:  # the second login: answer with the first login's signature
            _context.results.publicKey, _context.results.signature = Replaying.recorded

async def main():
    async with ww.cell.connect() as s:
        first = s.peer_id
        s._signer = Replaying(s._signer.key)
        again = await s.relogin()  # records a good answer
        print("second login ok", again.peer_id == first, flush=True)
        try:
            await again.relogin()  # replays it against a fresh nonce
        except ww.cell.AuthenticationFailed as e:
            print("refused:", e, flush=True)
        await asyncio.sleep(3600)  # stopped long before: the test would hang here
        print("not stopped", flush=True)
asyncio.run(main())
"""


def test_a_replayed_signature_fails_the_login_and_stops_the_cell(make_cell, keyfile):
    path, peer = keyfile
    r = run_ww("run", "--identity", path, "--with-console", make_cell(REPLAY))
    assert r.returncode == 64, r.stdout + r.stderr
    assert "second login ok True" in r.stdout
    assert "not stopped" not in r.stdout
    assert r.stderr.splitlines()[-1] == (
        f"ww: authentication failed: login signature does not verify for peer {peer}")


def test_a_bare_nonce_signature_is_not_a_login(make_cell, keyfile):
    path, peer = keyfile
    cell = make_cell("""
        import ww.cell
        from ww.cell._session import Signer
        class Bare(Signer):  # signs the nonce without the "ww-login-v1" domain
            async def sign(self, challenge, _context, **kwargs):
                _context.results.publicKey = self.key.public_key.to_protobuf()
                _context.results.signature = self.key.sign(bytes(challenge))
        from ww.core.identity import parse_private_key
        key = parse_private_key(open(0, "rb").read())
        with ww.cell.session(identity=Bare(key)) as s:
            print("logged in")
    """)
    with open(path, "rb") as f:
        r = run_ww("run", "--identity", path, cell, stdin=f)
    assert r.returncode == 64
    assert "logged in" not in r.stdout
    assert r.stderr.strip() == (
        f"ww: authentication failed: login signature does not verify for peer {peer}")


def test_a_wrong_key_is_refused(make_cell, keyfile):
    path, _ = keyfile
    cell = make_cell("""
        import ww.cell
        from ww.core.identity import PrivateKey
        with ww.cell.session(identity=PrivateKey.generate()) as s:
            print("logged in")
    """)
    r = run_ww("--json", "run", "--identity", path, "--with-console", cell)
    assert r.returncode == 64
    assert "logged in" not in r.stdout
    last = r.stderr.splitlines()[-1]
    assert last.startswith("ww: authentication failed: peer 12D3KooW")
    assert last.endswith("is not allowed by the host's policy")
    failed = [e for e in audit_lines(r.stderr) if e["event"] == "login-failed"]
    assert len(failed) == 1 and "not allowed" in failed[0]["reason"]


def test_no_login_within_the_time_limit_stops_the_cell(make_cell, keyfile):
    path, _ = keyfile
    cell = make_cell("""
        import time
        print("started", flush=True)
        time.sleep(3600)
        print("never")
    """)
    r = run_ww("run", "--identity", path, "--login-timeout", "0.5", cell)
    assert r.returncode == 64
    # Stopped, not left to sleep: whether it printed before its 0.5 s were up is the
    # machine's speed, so either is right.
    assert r.stdout in ("", "started\n")
    assert r.stderr == "ww: authentication failed: the cell did not log in within 0.5 s\n"


def test_login_without_identity_where_one_is_required_fails(make_cell, keyfile):
    path, _ = keyfile
    cell = make_cell("""
        import ww.cell
        with ww.cell.session(identity=False) as s:
            print("logged in")
    """)
    r = run_ww("run", "--identity", path, "--with-console", cell)
    assert r.returncode == 64
    assert r.stdout == ""
    assert r.stderr == ("ww: authentication failed: the cell logged in without an identity, "
                        "but this host requires a signed login (--identity, --allow or "
                        "--policy)\n")


def test_without_identity_flags_a_cell_may_still_sign_and_gets_the_flags_grants(make_cell):
    cell = make_cell("""
        import ww.cell
        from ww.core.identity import PrivateKey
        key = PrivateKey.generate()
        with ww.cell.session(identity=key) as s:
            print(s.peer_id == key.peer_id, s.granted)
    """)
    r = run_ww("run", "--with-console", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "True ['console']\n"


def test_bad_identity_flags_are_usage_errors(make_cell, tmp_path):
    (tmp_path / "junk.key").write_text("not a key")
    (tmp_path / "junk.key").chmod(0o600)
    r = run_ww("run", "--identity", str(tmp_path / "junk.key"), "/bin/true")
    assert r.returncode == 2
    assert r.stderr.startswith("ww: --identity ") and r.stderr.count("\n") == 1
    r = run_ww("run", "--identity", str(tmp_path / "missing.key"), "/bin/true")
    assert r.returncode == 2 and "cannot read the key file" in r.stderr
    r = run_ww("run", "--allow", "12D3KooWnot-a-peer", "/bin/true")
    assert r.returncode == 2 and r.stderr.startswith("ww: --allow '12D3KooWnot-a-peer': ")


def test_the_documented_login_works_from_raw_capnp_without_the_sdk(make_cell, keyfile):
    """docs/auth.md, step by step, as a cell in another language would do it."""
    path, peer = keyfile
    cell = make_cell("""
        import asyncio, os, socket, capnp
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        capnp.remove_import_hook()
        root = os.path.dirname(os.path.dirname(capnp.__file__))  # its c++.capnp
        schema = capnp.load("SCHEMA/cell.capnp", imports=[root, "SCHEMA"])

        class Signer(schema.Signer.Server):
            def __init__(self, key68):
                assert key68[:4] == b"\\x08\\x01\\x12\\x40"  # Type=Ed25519, Data=seed||public
                self.key = Ed25519PrivateKey.from_private_bytes(key68[4:36])
            async def sign(self, challenge, _context, **kwargs):
                public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                _context.results.publicKey = b"\\x08\\x01\\x12\\x20" + public
                _context.results.signature = self.key.sign(b"ww-login-v1\\x00" + challenge)

        async def main():
            stream = await capnp.AsyncIoStream.create_connection(sock=socket.socket(fileno=3))
            host = capnp.TwoPartyClient(stream).bootstrap().cast_as(schema.Host)
            key = bytes((await host.identity()).key)
            result = await host.login(Signer(key))
            print(list(result.session.granted))
            await result.session.console.println("raw login")
        asyncio.run(capnp.run(main()))
    """.replace("SCHEMA", run_ww("schema").stdout.strip()))
    r = run_ww("--json", "run", "--identity", path, "--with-console", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['console']\n"
    assert "[cell] raw login" in r.stderr
    assert any(e["event"] == "login" and e["peer"] == peer for e in audit_lines(r.stderr))


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "0", "-1", "1e999"])
def test_login_timeout_must_be_a_finite_positive_number(keyfile, value):
    path, _ = keyfile
    for args, env in [(["--identity", path, "--login-timeout", value], None),
                      (["--login-timeout", value], None),  # a bad value, even if unused
                      (["--identity", path], {**os.environ, "WW_LOGIN_TIMEOUT": value})]:
        r = run_ww("run", *args, "/bin/true", env=env)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("ww: --login-timeout ") and r.stderr.count("\n") == 1
        assert "expected a finite number of seconds greater than 0" in r.stderr


FORGER = """
import os, sys
print("fds", sorted(os.listdir("/proc/self/fd")), flush=True)
import ww.cell
# The cell's stderr is the host's: it can print lines that look like audit lines.
sys.stderr.write('{"ts":1,"event":"login","cell":1,"peer":"12D3KooWforged","granted":["exec"]}\\n')
sys.stderr.flush()
with ww.cell.session() as s:
    try:
        s.ipfs.add(b"not allowed")
    except ww.cell.CapabilityDenied:
        print("denied")
"""


def test_audit_file_holds_the_trail_the_cell_cannot_reach_or_forge(make_cell, keyfile,
                                                                   tmp_path):
    path, peer = keyfile
    trail = tmp_path / "audit.jsonl"
    cell = make_cell(FORGER)
    r = run_ww("run", "--audit", str(trail), "--identity", path, "--with-ipfs",
               "--ipfs-read-only", cell)
    assert r.returncode == 0, r.stderr
    # The cell sees no fd beyond stdio and fd 3 (4 is listdir's own).
    assert r.stdout.splitlines() == ["fds ['0', '1', '2', '3', '4']", "denied"]
    assert "12D3KooWforged" in r.stderr  # its stderr passes through, as the spec says
    assert '"event":"denied"' not in r.stderr  # the real trail is only in the file
    assert os.stat(trail).st_mode & 0o777 == 0o600
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [e["event"] for e in events] == ["login", "grant", "denied"]
    assert events[0]["peer"] == peer and events[0]["granted"] == ["ipfs"]
    assert all("forged" not in json.dumps(e) for e in events)
    # Appended to, never truncated; WW_AUDIT names it too, and --json adds nothing on stderr.
    r = run_ww("--json", "run", "--with-ipfs", "--ipfs-read-only", cell,
               env={**os.environ, "WW_AUDIT": str(trail)})
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if "forged" not in line] == []
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [e["event"] for e in events] == ["login", "grant", "denied"] * 2
    assert events[3]["peer"] is None


def test_an_audit_file_that_cannot_be_opened_is_a_usage_error(tmp_path):
    r = run_ww("run", "--audit", str(tmp_path / "missing" / "audit.jsonl"), "/bin/true")
    assert r.returncode == 2
    assert r.stderr.startswith(f"ww: --audit {tmp_path}/missing/audit.jsonl: cannot open it")
    assert r.stderr.count("\n") == 1
