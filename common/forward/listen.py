"""Listening sockets for forwards: ``bind`` as ssh reads it.

An empty bind address (or ``localhost``) means loopback only, both families: 127.0.0.1 and
::1, the second best effort (a host without IPv6 still gets its tunnel). ``*`` means every
address. Anything else is used as given. With port 0 the first socket's port is reused for
the others, so one tunnel has one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable

from common.forward.pump import STREAM_LIMIT, Forwarder

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ProtocolFactory = Callable[[], asyncio.Protocol]

LOOPBACK = ("127.0.0.1", "::1")
#: Connections queued by the kernel for one listener before it refuses more.
BACKLOG = 128


def bind_addresses(bind: str) -> tuple[str | None, ...]:
    if bind in ("", "localhost"):
        return LOOPBACK
    if bind == "*":
        return (None,)
    return (bind,)


def is_loopback_bind(bind: str) -> bool:
    if bind in ("", "localhost"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def stream_protocol(handler: Handler) -> ProtocolFactory:
    """What ``asyncio.start_server`` makes for each connection: streams, ``handler`` in a
    task (``-D``, whose SOCKS dialogue reads a stream)."""
    def make() -> asyncio.Protocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=STREAM_LIMIT), handler)
    return make


async def listen(bind: str, port: int, factory: ProtocolFactory) -> list[asyncio.Server]:
    """Listen on ``bind``:``port``, each accepted connection served by a protocol from
    ``factory``; raise OSError if no address could be bound (the first address's error),
    else return the servers (call ``close`` on each to stop)."""
    servers: list[asyncio.Server] = []
    first_error: OSError | None = None
    loop = asyncio.get_running_loop()
    for address in bind_addresses(bind):
        try:
            server = await loop.create_server(factory, address, port, backlog=BACKLOG,
                                              reuse_address=True)
        except OSError as exc:
            if first_error is None:
                first_error = exc
            continue
        servers.append(server)
        if port == 0:
            port = bound_port(servers)
    if not servers:
        assert first_error is not None
        raise first_error
    return servers


def bound_port(servers: list[asyncio.Server]) -> int:
    for server in servers:
        for sock in server.sockets:
            return int(sock.getsockname()[1])
    return 0


async def close_servers(servers: list[asyncio.Server]) -> None:
    for server in servers:
        server.close()
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


def describe_os_error(exc: BaseException) -> str:
    """A socket error as one short line: the errno's text ("Connection refused"), not
    asyncio's wrapping of it ("Connect call failed ('127.0.0.1', 9)")."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror)
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


async def connect_forwarder(forwarder: Forwarder, host: str, port: int, timeout: float) -> None:
    """Connect with a deadline (name resolution included), ``forwarder`` the socket's
    protocol."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        await loop.create_connection(lambda: forwarder, host, port, family=socket.AF_UNSPEC)
