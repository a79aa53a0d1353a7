"""Who may log in on fd 3, and what each identity gets: the operator's access policy.

Three sources, decided on the command line (see docs/auth.md for the exact rules):

* the ``--with-*`` flags, narrowed by ``--ipfs-read-only`` / ``--ipfs-root``: the grant of a
  cell without an identity when nothing else is configured (today's behaviour), of every
  ``--allow PEERID``, and of the ``--identity`` peer when no policy names peers;
* ``--allow PEERID`` (repeatable): these peers get the flags' grant;
* ``--policy FILE.toml``: a table of peer ids, each with its own grants and attenuations
  (``--ipfs-read-only`` / ``--ipfs-root`` with it are a usage error: the file narrows).

As soon as any of ``--identity``, ``--allow`` or ``--policy`` is given, a login must be
signed: a cell without an identity is refused (unless the policy file has an
``[anonymous]`` table), and the cell has ``--login-timeout`` seconds to log in.

This module is the model: the grants and the :class:`Access` a login is decided by.  Reading
them from the flags and the TOML file is :mod:`ww.host.policy_config`'s job.  Both are
imported by every ``ww run``: they hold plain data and import nothing heavy (TOML and the
Ed25519 code are imported only when a flag needs them).
"""

from __future__ import annotations

from ww.core.errors import AuthenticationFailed
from ww.core.records import NamedTuple
from ww.host.audit import NULL, Audit

TYPE_CHECKING = False  # importing typing costs `ww run` milliseconds
if TYPE_CHECKING:
    from typing import Any


# Capability names, in the order Session.granted lists them.
CAPABILITIES = ("console", "ipfs", "exec", "p2p")

ANY_PEER = "*"  # a policy entry for every verified identity the policy does not name

DEFAULT_LOGIN_TIMEOUT = 10.0


# Grants are immutable and hashable (a login's capability servers are cached by them); they
# are NamedTuples rather than frozen dataclasses, which cost `ww run` milliseconds to create.


class IpfsGrant(NamedTuple):
    """The IPFS capability, possibly narrowed."""

    read_only: bool = False
    roots: tuple[str, ...] = ()  # canonical CID strings; empty: not limited to any DAG

    def describe(self) -> dict[str, Any]:
        return {"read_only": self.read_only, "roots": list(self.roots)}


class ExecGrant(NamedTuple):
    """The process-execution capability: ``/ipfs/...`` programs and these local paths."""

    allow: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"allow": list(self.allow)}


class GrantSet(NamedTuple):
    """The capabilities one login receives."""

    console: bool = False
    ipfs: IpfsGrant | None = None
    exec: ExecGrant | None = None
    p2p: bool = False  # serve an export on /ww/0.1.0 and dial other cells (docs/p2p.md)

    def names(self) -> list[str]:
        return [name for name in CAPABILITIES if getattr(self, name)]

    def describe(self, name: str) -> dict[str, Any]:
        """A capability's attenuations, for the audit trail."""
        value = getattr(self, name)
        return value.describe() if hasattr(value, "describe") else {}


class Access:
    """The whole login policy of one ``ww run``."""

    def __init__(self, anonymous: GrantSet | None,
                 identities: dict[str, GrantSet] | None = None,
                 identity_key: bytes | None = None, login_timeout: float | None = None,
                 audit: Audit = NULL) -> None:
        self.anonymous = anonymous  # a login without identity; None: refused
        self.identities = identities or {}  # peer id or "*" -> grants
        self.identity_key = identity_key  # --identity: the key Host.identity hands the cell
        self.login_timeout = login_timeout  # seconds to log in; None: no login required
        self.audit = audit  # where logins, grants and denials are reported

    def capabilities(self) -> list[str]:
        """Every capability some login may receive (what the host must be ready to serve)."""
        sets = [g for g in (self.anonymous, *self.identities.values()) if g is not None]
        return [name for name in CAPABILITIES if any(getattr(g, name) for g in sets)]

    def grants_for(self, peer_id: str | None) -> GrantSet:
        """The grants of a verified ``peer_id`` (None: no identity), or AuthenticationFailed."""
        if peer_id is None:
            if self.anonymous is None:
                raise AuthenticationFailed(
                    "the cell logged in without an identity, but this host requires a signed "
                    "login (--identity, --allow or --policy)"
                )
            return self.anonymous
        grants = self.identities.get(peer_id, self.identities.get(ANY_PEER))
        if grants is None:
            raise AuthenticationFailed(f"peer {peer_id} is not allowed by the host's policy")
        return grants
