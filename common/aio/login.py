"""Logging in, client side, on a :class:`~common.aio.connection.QsmpConnection`: the login
attempts and their answers as futures, and the question about an unknown host key (whose
wait stops the connect timeout). The server's decision on an attempt calls the application
with the connection itself, so it stays in connection.py (``_decide_auth``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from common.protocol.auth import AuthFailed
from common.protocol.connection import Connection

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
