"""Reading the access policy from ``ww run``'s flags and the ``--policy`` TOML file.

:func:`build_access` turns ``--with-*`` (narrowed by ``--ipfs-read-only`` / ``--ipfs-root`` /
``--exec-allow``), ``--identity``, ``--allow``, ``--policy`` and ``--login-timeout`` into the
:class:`ww.host.policy.Access` of one run; every bad value is a UsageError naming where it was
(docs/auth.md has the rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ww.core.errors import UsageError
from ww.host.audit import NULL, Audit
from ww.host.policy import (
    ANY_PEER,
    CAPABILITIES,
    DEFAULT_LOGIN_TIMEOUT,
    Access,
    ExecGrant,
    GrantSet,
    IpfsGrant,
)

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from typing import Any


def check_login_timeout(seconds: float) -> float:
    """``--login-timeout``: a finite number of seconds greater than 0 (not nan, not inf)."""
    if not 0 < seconds < float("inf"):  # false for nan too
        raise UsageError(f"--login-timeout {seconds:g}: expected a finite number of seconds "
                         "greater than 0, such as 10 or 2.5")
    return seconds


def flag_grants(capabilities: Iterable[str], ipfs_read_only: bool = False,
                ipfs_roots: Iterable[str] = (), exec_allow: Iterable[str] = ()) -> GrantSet:
    """The grant the ``--with-*`` flags (and their attenuation flags) describe."""
    names = set(capabilities)
    ipfs = IpfsGrant(ipfs_read_only, canonical_roots(ipfs_roots, "--ipfs-root"))
    return GrantSet(
        console="console" in names,
        ipfs=ipfs if "ipfs" in names else None,
        exec=ExecGrant(exec_allowlist(exec_allow, "--exec-allow")) if "exec" in names else None,
        p2p="p2p" in names,
    )


def canonical_roots(roots: Iterable[str], where: str) -> tuple[str, ...]:
    """Root CIDs (bare or ``/ipfs/<cid>``) in a canonical form, so that v0 and v1 match."""
    roots = list(roots)
    if not roots:
        return ()
    from ww.ipfs.api import InvalidPathError
    from ww.ipfs.path import parse_path

    out: list[str] = []
    for root in roots:
        try:
            parsed = parse_path(root)
        except InvalidPathError as e:
            raise UsageError(f"{where} {root!r}: {e}") from None
        if parsed.segments:
            raise UsageError(f"{where} {root!r}: give a CID, not a path inside a DAG")
        key = str(parsed.root.to_v1())
        if key not in out:
            out.append(key)
    return tuple(out)


def exec_allowlist(paths: Iterable[str], where: str) -> tuple[str, ...]:
    import os

    out: list[str] = []
    for path in paths:
        if not os.path.isabs(path):
            raise UsageError(f"{where} {path!r}: give an absolute path")
        out.append(os.path.normpath(path))
    return tuple(dict.fromkeys(out))


def canonical_peer_id(text: str, where: str) -> str:
    """An Ed25519 peer id in base58btc (``12D3KooW...``), accepting the CIDv1 form too.

    Only Ed25519 identities can log in, so the peer id must carry an Ed25519 public key.
    """
    from ww.core.identity import IdentityError, public_key_from_peer_id

    try:
        return public_key_from_peer_id(text).peer_id
    except IdentityError as e:
        raise UsageError(f"{where}: not the peer id of an Ed25519 key ({e})") from None


def load_identity(spec: str) -> bytes:
    """``--identity KEYFILE`` (raw or base58, as ``ww idgen`` writes) or ``new``: key bytes."""
    from ww.core.identity import key_from_flag

    return key_from_flag("--identity", spec).to_protobuf()


def peer_of_key(key: bytes) -> str:
    from ww.core.identity import PrivateKey

    return PrivateKey.from_protobuf(key).peer_id


# ---- the policy file -------------------------------------------------------------------

_IPFS_MODES = {"read-write": False, "read-only": True}


def load_policy_file(path: str) -> tuple[dict[str, GrantSet], GrantSet | None]:
    """Parse a policy file: (peer id -> grants, the ``[anonymous]`` grants or None)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"--policy {path}: cannot read it: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--policy {path}: not valid TOML: {e}") from None
    where = f"--policy {path}"
    unknown = set(doc) - {"identities", "anonymous"}
    if unknown:
        raise UsageError(f"{where}: unknown top-level key {sorted(unknown)[0]!r} "
                         "(expected [identities.\"<peer id>\"] tables and [anonymous])")
    identities: dict[str, GrantSet] = {}
    table = doc.get("identities", {})
    if not isinstance(table, dict):
        raise UsageError(f"{where}: 'identities' must be a table of peer ids")
    for peer, entry in table.items():
        key = peer if peer == ANY_PEER else canonical_peer_id(peer, f"{where}: identity {peer!r}")
        if key in identities:
            raise UsageError(f"{where}: identity {peer!r} is named twice")
        identities[key] = parse_grants(entry, f"{where}: identities.{peer!r}")
    anonymous = None
    if "anonymous" in doc:
        anonymous = parse_grants(doc["anonymous"], f"{where}: anonymous")
    return identities, anonymous


def parse_grants(entry: Any, where: str) -> GrantSet:
    """One identity's table: ``console``, ``ipfs`` and ``exec``, each true/false or a table."""
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where}: expected a table such as {{ console = true }}")
    unknown = set(entry) - set(CAPABILITIES)
    if unknown:
        raise UsageError(f"{where}: unknown capability {sorted(unknown)[0]!r} "
                         f"(expected {', '.join(CAPABILITIES)})")
    console = entry.get("console", False)
    if not isinstance(console, bool):
        raise UsageError(f"{where}.console: expected true or false")
    return GrantSet(console=console, ipfs=_parse_ipfs(entry.get("ipfs", False), where),
                    exec=_parse_exec(entry.get("exec", False), where),
                    p2p=_parse_flag(entry.get("p2p", False), f"{where}.p2p"))


def _parse_flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{where}: expected true or false")
    return value


def _parse_ipfs(value: Any, where: str) -> IpfsGrant | None:
    if isinstance(value, bool):
        return IpfsGrant() if value else None
    if not isinstance(value, Mapping):
        raise UsageError(f"{where}.ipfs: expected true, false or a table")
    unknown = set(value) - {"mode", "roots"}
    if unknown:
        raise UsageError(f"{where}.ipfs: unknown key {sorted(unknown)[0]!r} "
                         "(expected mode, roots)")
    mode = value.get("mode", "read-write")
    if mode not in _IPFS_MODES:
        raise UsageError(f"{where}.ipfs.mode: expected \"read-only\" or \"read-write\"")
    roots = value.get("roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise UsageError(f"{where}.ipfs.roots: expected a list of CIDs")
    return IpfsGrant(_IPFS_MODES[mode], canonical_roots(roots, f"{where}.ipfs.roots"))


def _parse_exec(value: Any, where: str) -> ExecGrant | None:
    if isinstance(value, bool):
        return ExecGrant() if value else None
    if not isinstance(value, Mapping) or set(value) - {"allow"}:
        raise UsageError(f"{where}.exec: expected true, false or {{ allow = [\"/path\", ...] }}")
    allow = value.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(p, str) for p in allow):
        raise UsageError(f"{where}.exec.allow: expected a list of absolute paths")
    return ExecGrant(exec_allowlist(allow, f"{where}.exec.allow"))


def build_access(flags: GrantSet, identity: str | None = None, allow: Iterable[str] = (),
                 policy_file: str | None = None,
                 login_timeout: float = DEFAULT_LOGIN_TIMEOUT, audit: Audit = NULL,
                 narrowing_flags: Iterable[str] = ()) -> Access:
    """The policy of one ``ww run`` from its flags (see the module docstring).

    ``narrowing_flags`` names the IPFS narrowing flags given (``--ipfs-read-only``,
    ``--ipfs-root``): with ``--policy`` they are a usage error, never silently dropped.
    """
    allow = list(allow)
    check_login_timeout(login_timeout)
    narrowing = list(narrowing_flags)
    if policy_file is not None and narrowing:
        # The policy file decides every IPFS grant; applying the flags to some logins and
        # not others would be silently wider than asked for the rest (docs/auth.md).
        raise UsageError(f"--policy and {narrowing[0]} cannot be combined: narrow IPFS in "
                         "the policy file instead (mode = \"read-only\", roots = [...])")
    key = load_identity(identity) if identity is not None else None
    if key is None and not allow and policy_file is None:
        # Today's behaviour: anyone gets the flags' grant; a cell that chooses to sign
        # anyway is still checked, and gets the same.
        return Access(anonymous=flags, identities={ANY_PEER: flags}, audit=audit)
    identities: dict[str, GrantSet] = {}
    anonymous: GrantSet | None = None
    if policy_file is not None:
        identities, anonymous = load_policy_file(policy_file)
    for peer in allow:
        canonical = canonical_peer_id(peer, f"--allow {peer!r}")
        if canonical in identities and identities[canonical] != flags:
            raise UsageError(f"--allow {peer}: the policy file already names this peer")
        identities[canonical] = flags
    if key is not None and not allow and policy_file is None:
        identities[peer_of_key(key)] = flags
    return Access(anonymous=anonymous, identities=identities, identity_key=key,
                  login_timeout=None if anonymous is not None else login_timeout, audit=audit)
