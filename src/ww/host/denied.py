"""Refusing a call outside a grant: one error shape for every capability, and its audit line.

A denial reaches the cell as a Cap'n Proto exception whose description starts with
:data:`DENIED_PREFIX`; that prefix is the protocol (the SDK raises it as
``ww.cell.CapabilityDenied``, cells in other languages test for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ww.core.errors import DeniedError
from ww.host.answers import UNBOUNDED, AnswerBudget
from ww.host.audit import NULL, Audit

DENIED_PREFIX = "capability denied: "


class CapabilityDenied(DeniedError):
    """A call outside the capability's grant: ``capability denied: <cap>: <method>: <why>``."""

    def __init__(self, capability: str, method: str, reason: str) -> None:
        super().__init__(f"{DENIED_PREFIX}{capability}: {method}: {reason}")
        self.capability = capability
        self.method = method
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    """Who holds a capability server: the peer id of the login that received it, where its
    audit lines go, and the budget of its cell's large answers (:mod:`ww.host.answers`)."""

    peer: str | None = None
    audit: Audit = field(default=NULL)
    answers: AnswerBudget = field(default=UNBOUNDED, compare=False)

    def deny(self, capability: str, method: str, reason: str) -> CapabilityDenied:
        """Audit a refused call and return the error to raise."""
        self.audit.emit("denied", capability=capability, method=method, peer=self.peer,
                        reason=reason)
        return CapabilityDenied(capability, method, reason)


NOBODY = Caller()
