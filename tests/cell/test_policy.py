"""The operator's policy: which identities log in and what each gets (--allow, --policy)."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_ww

CELL = """
import ww.cell
with ww.cell.session() as s:
    print(",".join(s.granted) or "-")
    if "ipfs" in s.granted:
        try:
            s.ipfs.add(b"a write")
            print("write ok")
        except ww.cell.CapabilityDenied:
            print("write denied")
"""


def new_key(tmp_path, name: str) -> tuple[str, str]:
    from ww.core.identity import PrivateKey

    key = PrivateKey.generate()
    path = tmp_path / f"{name}.key"
    path.write_text(key.to_text())
    path.chmod(0o600)  # a private key others can read is refused
    return str(path), key.peer_id


@pytest.fixture
def alice_and_bob(tmp_path):
    return new_key(tmp_path, "alice"), new_key(tmp_path, "bob")


def test_a_policy_gives_two_identities_different_grants(make_cell, tmp_path, alice_and_bob):
    (alice, alice_peer), (bob, bob_peer) = alice_and_bob
    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
        # alice may read IPFS and print; bob may only print
        [identities."{alice_peer}"]
        console = true
        ipfs = {{ mode = "read-only" }}

        [identities."{bob_peer}"]
        console = true
    """.replace("\n        ", "\n"))
    cell = make_cell(CELL)
    a = run_ww("--json", "run", "--policy", str(policy), "--identity", alice, cell)
    b = run_ww("--json", "run", "--policy", str(policy), "--identity", bob, cell)
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    assert a.stdout.splitlines() == ["console,ipfs", "write denied"]
    assert b.stdout.splitlines() == ["console"]
    logins = [json.loads(x) for x in a.stderr.splitlines() + b.stderr.splitlines()
              if '"login"' in x]
    assert [(e["peer"], e["granted"]) for e in logins] == [
        (alice_peer, ["console", "ipfs"]), (bob_peer, ["console"])]
    # Anyone else is refused, however many --with-* flags the operator gives.
    stranger, _ = new_key(tmp_path, "stranger")
    c = run_ww("run", "--policy", str(policy), "--with-all", "--identity", stranger, cell)
    assert c.returncode == 64 and "is not allowed by the host's policy" in c.stderr


def test_policy_roots_and_any_identity_and_anonymous(make_cell, tmp_path, alice_and_bob):
    (alice, alice_peer), (bob, _) = alice_and_bob
    (tmp_path / "doc.txt").write_text("the document\n")
    doc = run_ww("export", str(tmp_path / "doc.txt")).stdout.strip()
    (tmp_path / "elsewhere.txt").write_text("not under the root\n")
    other = run_ww("export", str(tmp_path / "elsewhere.txt"))
    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
[identities."{alice_peer}"]
ipfs = {{ mode = "read-only", roots = ["{doc}"] }}

[identities."*"]
console = true

[anonymous]
""")
    cell = make_cell(f"""
        import ww.cell
        with ww.cell.session() as s:
            print(",".join(s.granted) or "-")
            if "ipfs" in s.granted:
                print(s.ipfs.cat("{doc}").decode().strip())
                try:
                    s.ipfs.cat("{other.stdout.strip()}")
                except ww.cell.CapabilityDenied as e:
                    print("outside:", e.args[0].split(": ")[-1])
    """)
    r = run_ww("run", "--policy", str(policy), "--identity", alice, cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "ipfs", "the document", "outside: /ipfs/" + other.stdout.strip().split("/")[-1]
        + " is outside the DAGs this capability is limited to"]
    r = run_ww("run", "--policy", str(policy), "--identity", bob, cell)  # any other identity
    assert r.stdout == "console\n", r.stderr
    r = run_ww("run", "--policy", str(policy), cell)  # no identity: the [anonymous] table
    assert (r.returncode, r.stdout) == (0, "-\n"), r.stderr


def test_allow_lets_named_peers_in_with_the_flags_grants(make_cell, tmp_path, alice_and_bob):
    (alice, alice_peer), (bob, _) = alice_and_bob
    cell = make_cell(CELL)
    r = run_ww("run", "--allow", alice_peer, "--with-ipfs", "--ipfs-read-only",
               "--identity", alice, cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["ipfs", "write denied"]
    r = run_ww("run", "--allow", alice_peer, "--with-ipfs", "--identity", bob, cell)
    assert r.returncode == 64
    assert r.stderr.startswith("ww: authentication failed: peer ") and r.stdout == ""


@pytest.mark.parametrize("text, message", [
    ("[identities.x\n", "not valid TOML"),
    ('[identities."12D3KooWnope"]\nconsole = true\n', "not the peer id of an Ed25519 key"),
    ('[identities."*"]\nnetwork = true\n', "unknown capability 'network'"),
    ('[identities."*"]\nipfs = { mode = "write-only" }\n', 'expected "read-only"'),
    ('[identities."*"]\nipfs = { roots = ["not-a-cid"] }\n', "roots"),
    ('[identities."*"]\nexec = { allow = ["relative/path"] }\n', "absolute path"),
    ('grants = 1\n', "unknown top-level key 'grants'"),
])
def test_a_bad_policy_file_is_a_one_line_usage_error(tmp_path, text, message):
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    r = run_ww("run", "--policy", str(policy), "/bin/true")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"ww: --policy {policy}") and r.stderr.count("\n") == 1
    assert message in r.stderr


def test_policy_with_an_ipfs_narrowing_flag_is_a_usage_error_never_a_wider_grant(
        make_cell, tmp_path):
    (tmp_path / "doc.txt").write_text("the document\n")
    doc = run_ww("export", str(tmp_path / "doc.txt")).stdout.strip()
    policy = tmp_path / "p3.toml"
    policy.write_text(f'[anonymous]\nipfs = {{ roots = ["{doc}"] }}\n')  # read-write
    cell = make_cell(CELL)
    for flags in (["--ipfs-read-only"], ["--ipfs-root", doc],
                  ["--ipfs-root", doc, "--ipfs-read-only"]):
        r = run_ww("run", "--policy", str(policy), *flags, "--with-ipfs", cell)
        assert (r.returncode, r.stdout) == (2, ""), r.stdout + r.stderr  # no cell started
        named = "--ipfs-read-only" if "--ipfs-read-only" in flags else "--ipfs-root"
        assert r.stderr == (
            f"ww: --policy and {named} cannot be combined: narrow IPFS in the policy "
            'file instead (mode = "read-only", roots = [...])\n')
    r = run_ww("run", "--with-ipfs", cell, env={**os.environ, "WW_POLICY": str(policy),
                                               "WW_IPFS_READ_ONLY": "1"})
    # Each value that came from a variable is named by it (issue 12).
    assert r.returncode == 2 and r.stderr.startswith(
        "ww: --policy (from WW_POLICY) and --ipfs-read-only (from WW_IPFS_READ_ONLY) cannot ")
    # Without the flags, [anonymous] gets exactly the file's grant (--with-* do not add to it).
    r = run_ww("run", "--policy", str(policy), "--with-all", cell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["ipfs", "write ok"]
