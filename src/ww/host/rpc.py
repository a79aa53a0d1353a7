"""The host's side of fd 3: the bootstrap `Host` capability, the login, and the session.

Login (docs/auth.md): a cell without an identity passes a null ``account``; a cell with one
passes its ``Signer``, which the host asks to sign a fresh random nonce (domain-separated,
see :func:`ww.core.identity.login_message`).  The verified public key gives the peer id, the
policy (:mod:`ww.host.policy`) gives that peer's grants.  A failed login, or no login before
the policy's deadline, ends :func:`serve` with a one-line reason: the supervisor then stops
the cell and ``ww run`` exits 64.

This module imports pycapnp, so the supervisor only imports it once the cell has sent
its first bytes on fd 3 (or at once when a login is required, to run its deadline).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import capnp

from ww.core.errors import DeniedError
from ww.core.foreign import kj_reason
from ww.host import wire
from ww.host.answers import ANSWER_LIMIT, AnswerBudget
from ww.host.denied import Caller
from ww.host.policy import (
    ANY_PEER,
    DEFAULT_LOGIN_TIMEOUT,
    Access,
    AuthenticationFailed,
    GrantSet,
)
from ww.host.policy_config import flag_grants
from ww.schema import load

_cell = load("cell")

@dataclass
class Grants:
    """What the operator granted, and how to build each capability.

    ``factories[name](grants, caller, held)`` builds the server of capability ``name`` for
    one login: ``grants`` is that login's :class:`~ww.host.policy.GrantSet`, ``caller`` its
    :class:`~ww.host.denied.Caller`, ``held`` the servers already built for it (in
    ``CAPABILITIES`` order).  ``access`` is the login policy; without one, any login gets
    the capabilities in ``names``.
    """

    names: list[str] = field(default_factory=list)
    factories: Mapping[str, Callable[..., object]] = field(default_factory=dict)
    access: Access | None = None

    def policy(self) -> Access:
        if self.access is not None:
            return self.access
        flags = flag_grants(self.names)
        return Access(anonymous=flags, identities={ANY_PEER: flags})


CHALLENGE_BYTES = 32
STOP_GRACE = 2.0  # seconds a failed login waits for the cell to be gone before answering


class HostServer(_cell.Host.Server):  # type: ignore[name-defined,misc]
    """The bootstrap capability: ``login`` checks the cell's identity against the policy and
    returns a session of exactly what the policy grants it."""

    def __init__(self, grants: Grants, fail: Callable[[str], None],
                 cell_gone: asyncio.Future[Any]) -> None:
        self.access = grants.policy()
        # The cell's large answers (ww.host.answers), audited the first time one waits.
        self.answers = AnswerBudget(on_wait=self._answers_wait)
        self._cell_gone = cell_gone
        self._factories = grants.factories
        self._made: dict[tuple[str, GrantSet, str | None], Any] = {}
        self._fail = fail
        self.logged_in = False
        self._key_given = False

    def _capability(self, name: str, grants: GrantSet, caller: Caller,
                    held: dict[str, Any]) -> Any:
        # One server per capability per (grants, peer), shared by repeated logins.
        key = (name, grants, caller.peer)
        if key not in self._made:
            self._made[key] = self._factories[name](grants, caller, held)
        return self._made[key]

    def _answers_wait(self, held: int) -> None:
        self.access.audit.emit("answer-limit", held=held, limit=ANSWER_LIMIT)

    async def identity(self, _context: Any, **kwargs: Any) -> None:
        if self.logged_in or self._key_given:
            raise DeniedError("the identity is handed out once, and only before login")
        self._key_given = True
        _context.results.key = self.access.identity_key or b""

    async def login(self, account: Any, _context: Any, **kwargs: Any) -> None:
        audit = self.access.audit
        try:
            peer = await self._authenticate(account) if _context.params._has("account") else None
            grants = self.access.grants_for(peer)
        except AuthenticationFailed as e:
            audit.emit("login-failed", reason=e.reason)
            self._fail(str(e))  # the supervisor stops the cell now
            # No answer while the cell may still run: it gets no chance to act on it.
            await asyncio.wait([self._cell_gone], timeout=STOP_GRACE)
            if self._cell_gone.done():
                return  # nobody is left to answer
            raise
        self.logged_in = True
        caller = Caller(peer, audit, self.answers)
        names = grants.names()
        held: dict[str, Any] = {}
        for name in names:
            held[name] = self._capability(name, grants, caller, held)
        session = _context.results.session
        session.granted = names
        for name, server in held.items():
            setattr(session, name, server)
        audit.emit("login", peer=peer, granted=names)
        for name in names:
            audit.emit("grant", capability=name, peer=peer, **grants.describe(name))

    async def _authenticate(self, account: Any) -> str:
        """Challenge the cell's Signer; its peer id, or AuthenticationFailed."""
        challenge = os.urandom(CHALLENGE_BYTES)  # fresh for every login: never replayable
        timeout = self.access.login_timeout or DEFAULT_LOGIN_TIMEOUT
        try:
            answer = await asyncio.wait_for(account.sign(challenge), timeout)
        except TimeoutError:
            raise AuthenticationFailed(
                f"the cell's Signer did not answer the challenge within {timeout:g} s"
            ) from None
        except capnp.KjException as e:
            raise AuthenticationFailed(f"the cell's Signer failed: {kj_reason(e)}") from None
        from ww.core.identity import IdentityError, verify_login

        try:
            return verify_login(bytes(answer.publicKey), challenge, bytes(answer.signature))
        except IdentityError as e:
            raise AuthenticationFailed(str(e)) from None

    async def close(self) -> None:
        """The cell is gone or hung up: end what its capabilities started (sub-cells), and
        give them up to STOP_GRACE seconds to be gone (so that they are reaped quietly)."""
        closing = []
        for server in self._made.values():
            close = getattr(server, "close", None)
            if close is not None:
                close()
            if hasattr(server, "wait_closed"):
                closing.append(server.wait_closed(STOP_GRACE))
        if closing:
            await asyncio.gather(*closing)


async def serve(sock: socket.socket, grants: Grants, until: asyncio.Future[Any],
                on_failure: Callable[[str], object] | None = None) -> str | None:
    """Serve `Host` on ``sock`` until ``until`` completes, the cell hangs up, or a login fails.

    A failed login calls ``on_failure`` with its one-line reason at once, before the
    connection is dropped (the supervisor stops the cell there, so that the cell gets no
    chance to act on the failure), and is returned; else None is.  When the policy requires
    a login, the cell must complete one within its deadline, counted from now, even if it
    hangs up fd 3 first.
    """
    loop = asyncio.get_running_loop()
    failure: asyncio.Future[str] = loop.create_future()

    def fail(message: str) -> None:
        if not failure.done():
            failure.set_result(message)
            if on_failure is not None:
                on_failure(message)

    hung_up: asyncio.Future[None] = loop.create_future()  # the cell's end of fd 3 is closed
    host = HostServer(grants, fail, hung_up)
    access = host.access
    timer = None
    if access.login_timeout is not None:
        timeout = access.login_timeout

        def deadline() -> None:
            if not host.logged_in:
                reason = f"the cell did not log in within {timeout:g} s"
                access.audit.emit("login-failed", reason=reason)
                fail(str(AuthenticationFailed(reason)))

        timer = loop.call_later(timeout, deadline)
    def flow_limited(in_flight: int) -> None:
        access.audit.emit("flow-limit", in_flight=in_flight, limit=wire.FLOW_LIMIT)

    # Each error's reason exactly as the host wrote it; reading paused while the cell's
    # unanswered calls are over wire.FLOW_LIMIT.
    stream = await wire.connect(sock, on_pause=flow_limited, answers=host.answers)
    server = capnp.TwoPartyServer(stream, bootstrap=host)
    disconnected = asyncio.ensure_future(server.on_disconnect())
    disconnected.add_done_callback(lambda _: hung_up.done() or hung_up.set_result(None))
    try:
        await asyncio.wait([disconnected, until, failure], return_when=asyncio.FIRST_COMPLETED)
        if timer is not None and not host.logged_in and not until.done():
            # Hung up before logging in: the deadline still stands while the cell runs.
            await asyncio.wait([until, failure], return_when=asyncio.FIRST_COMPLETED)
        if failure.done():
            # The cell is being stopped: keep fd 3 open until its last process is gone (the
            # jail's processes die a moment after bubblewrap), so that it does not see a
            # hang-up it could act on.
            await asyncio.wait([hung_up], timeout=STOP_GRACE)
            return failure.result()
        return None
    finally:
        if timer is not None:
            timer.cancel()
        disconnected.cancel()
        await host.close()
