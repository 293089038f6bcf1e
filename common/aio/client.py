"""Opening a connection: :func:`connect`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from common.accounts.keys import HostKey
from common.aio.connection import (
    ChannelHandler,
    GlobalRequestHandler,
    HostKeyCallback,
    QsmpConnection,
)
from common.aio.limits import DEFAULT_CONNECT_TIMEOUT
from common.aio.memory import tune_allocator
from common.crypto.rng import Rng
from common.protocol.connection import Connection
from common.protocol.handshake import ClientHandshake
from common.protocol.transport import TransportSettings


def core_args(settings: TransportSettings | None, window: int | None,
               max_packet: int | None, rng: Rng | None, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"settings": settings, "window": window, "max_packet": max_packet}
    if rng is not None:
        args["rng"] = rng
    args.update(extra)
    return args


async def connect(host: str, port: int, *, handshake: ClientHandshake,
                  settings: TransportSettings | None = None,
                  on_host_key: HostKeyCallback | None = None,
                  on_channel: ChannelHandler | None = None,
                  on_global_request: GlobalRequestHandler | None = None,
                  window: int | None = None, max_packet: int | None = None,
                  rng: Rng | None = None,
                  timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                  user: str | None = None, identity: HostKey | None = None,
                  password: bytes | None = None, family: int = 0,
                  local_addr: tuple[str, int] | None = None,
                  sock: socket.socket | None = None,
                  warm: Callable[[], object] | None = None) -> QsmpConnection:
    """Connect over TCP and run the handshake; return the established connection.

    ``on_host_key`` decides on a server key that ``handshake`` does not already trust
    (TOFU); None rejects it. ``on_channel`` serves channels the *server* opens (None
    refuses them). Raises :class:`OSError` for TCP failures, :class:`TimeoutError` after
    ``timeout`` seconds, and a :class:`~common.errors.QsmpError` for a failed handshake:
    :class:`~common.errors.RemoteReportedError` if the server reported it, the local
    error's class (e.g. ``VerifyFailure``) otherwise, :class:`ConnectionLost` if the
    socket simply closed.

    With ``user`` and an ``identity`` (a user key) or a ``password``, the first login
    attempt rides behind the handshake's last message; :meth:`QsmpConnection.wait_authenticated`
    gives its answer. ``family`` (``socket.AF_INET``/``AF_INET6``; 0 for either) limits
    the addresses a name may resolve to, as ssh's -4 and -6; ``local_addr`` binds our end
    (a source address, as ssh's -b). With ``sock`` (a connected stream socket: a
    ProxyCommand's end of a socketpair) no connect is made: the handshake runs over it,
    ``host`` and ``port`` only naming the peer, and the connection owns the socket.

    ``warm`` is called once our first flight is on its way: work the next steps will need
    (a client's lazy imports), done while the server computes its answer instead of after.
    """
    tune_allocator()
    loop = asyncio.get_running_loop()
    core = Connection(handshake, **core_args(settings, window, max_packet, rng))
    connection = QsmpConnection(core, loop=loop, on_channel=on_channel,
                                on_host_key=on_host_key, on_global_request=on_global_request)
    if user is not None and identity is not None:
        connection._start_login(lambda: core.authenticate_publickey(user, identity))
    elif user is not None and password is not None:
        connection._start_login(lambda: core.authenticate_password(user, password))
    try:
        async with asyncio.timeout(timeout) as deadline:
            connection._connect_deadline = deadline
            if sock is not None:
                await loop.create_connection(lambda: connection, sock=sock)
            else:
                await loop.create_connection(lambda: connection, host, port, family=family,
                                             local_addr=local_addr)
            if warm is not None:  # (connection_made has sent the first flight)
                warm()
            await connection.wait_established()
    except BaseException:
        connection.abort()
        raise
    return connection
