"""Logging in, client side, on a :class:`~common.aio.connection.QsmpConnection`: the login
attempts and their answers as futures, and the question about an unknown host key (whose
wait stops the connect timeout). The server's decision on an attempt calls the application
with the connection itself, so it stays in connection.py (``_decide_auth``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from common.accounts.keys import HostKey, PublicKey
from common.aio.engine import retrieve
from common.aio.errors import termination_error
from common.errors import UsageError
from common.protocol.auth import AuthFailed, AuthSucceeded
from common.protocol.connection import Connection, HostKeyUnverified

if TYPE_CHECKING:
    from common.aio.connection import HostKeyCallback

log = logging.getLogger("qsh.aio")


class Login:
    """Mixin of :class:`~common.aio.connection.QsmpConnection`: the client's login and the
    host key question. The annotations below are the connection's state they use."""

    number: int
    loop: asyncio.AbstractEventLoop
    _core: Connection
    _transport: asyncio.Transport | None
    _auth_answer: asyncio.Future[AuthFailed | None] | None
    _on_host_key: HostKeyCallback | None
    _connect_deadline: asyncio.Timeout | None

    if TYPE_CHECKING:
        def _pump(self) -> None: ...
        def _crash(self, exc: BaseException) -> None: ...
        def _spawn(self, coro: Awaitable[Any], what: str) -> None: ...

    # -- authentication

    @property
    def user(self) -> str | None:
        """The authenticated user (either side), once login succeeded."""
        return self._core.authenticated_user

    def _start_login(self, start: Callable[[], None]) -> asyncio.Future[AuthFailed | None]:
        if self._auth_answer is not None and not self._auth_answer.done():
            raise UsageError("a login attempt is already waiting for its answer")
        self._auth_answer = self.loop.create_future()
        self._auth_answer.add_done_callback(retrieve)
        terminated = self._core.terminated
        if terminated is not None:  # no answer can come: say why now, not never
            self._auth_answer.set_exception(termination_error(terminated))
            return self._auth_answer
        start()
        if self._transport is not None:
            self._pump()
        return self._auth_answer

    async def login_password(self, user: str, password: bytes) -> AuthFailed | None:
        """Client: one password attempt. None on success; the server's refusal otherwise
        (it arrives after the server's growing delay)."""
        return await self._start_login(lambda: self._core.authenticate_password(user, password))

    async def login_publickey(self, user: str, key: HostKey) -> AuthFailed | None:
        """Client: one user-key attempt (the key signs this session's ID)."""
        return await self._start_login(lambda: self._core.authenticate_publickey(user, key))

    async def wait_authenticated(self) -> AuthFailed | None:
        """Client: the answer to the attempt :func:`connect` pipelined."""
        if self._auth_answer is None:
            raise UsageError("no login attempt was made")
        return await asyncio.shield(self._auth_answer)

    def _on_auth_answer(self, event: AuthSucceeded | AuthFailed) -> None:
        waiter = self._auth_answer
        if waiter is not None and not waiter.done():
            waiter.set_result(None if isinstance(event, AuthSucceeded) else event)

    def _on_host_key_unverified(self, event: HostKeyUnverified) -> None:
        self._spawn(self._decide_host_key(event.host_key), "host key decision")

    async def _decide_host_key(self, key: PublicKey) -> None:
        accept = False
        if self._on_host_key is not None:
            # Reading a fingerprint is a person's time, not the network's: the connect
            # timeout stops while the callback runs and resumes with what was left.
            deadline = self._connect_deadline
            when = deadline.when() if deadline is not None else None
            remaining = None if when is None else when - self.loop.time()
            if deadline is not None and remaining is not None:
                deadline.reschedule(None)
            try:
                accept = bool(await self._on_host_key(key))
            except Exception:
                log.exception("conn=%d: host key callback failed; rejecting", self.number)
            finally:
                # connect() may have ended meanwhile (the peer closed, or gave up on us):
                # its timeout is then finished and must not be restarted.
                if deadline is not None and remaining is not None and not self._core.closed:
                    with contextlib.suppress(RuntimeError):
                        deadline.reschedule(self.loop.time() + max(remaining, 0.0))
        if self._core.closed:
            return
        try:
            if accept:
                self._core.accept_host_key()
            else:
                self._core.reject_host_key()
            self._pump()
        except Exception as exc:
            self._crash(exc)
