"""Listening sockets for forwards: ``bind`` as ssh reads it.

An empty bind address (or ``localhost``) means loopback only, both families: 127.0.0.1 and
::1, the second best effort (a host without IPv6 still gets its tunnel). ``*`` means every
address. Anything else is used as given. With port 0 the first socket's port is reused for
the others, so one tunnel has one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from common.forward.pump import Forwarder

log = logging.getLogger("qsh.forward")

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
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


class Listener:
    """Listening sockets whose connections go to :class:`Forwarder` objects, accepted by the
    event loop's reader callback (no transport, no task per connection): the same
    ``close``/``wait_closed``/``sockets`` as an ``asyncio.Server``."""

    def __init__(self, sock: socket.socket, factory: Callable[[], Forwarder]) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(BACKLOG):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors, say: drop this turn, retry later
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(1.0, self._resume)
                log.warning("accept failed: %s", exc)
                return
            forwarder = self._factory()
            try:
                forwarder.start(conn, (str(peer[0]), int(peer[1])))
            except Exception:  # a bug: this connection goes, the listener stays
                log.exception("forwarded connection failed")
                forwarder.abort()
                conn.close()

    def _resume(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    async def wait_closed(self) -> None:
        return None


async def listen_forwarders(bind: str, port: int, factory: Callable[[], Forwarder]
                            ) -> list[Listener]:
    """:func:`listen` for :class:`Forwarder` connections (``-T``, ``-R``)."""
    listeners: list[Listener] = []
    first_error: OSError | None = None
    loop = asyncio.get_running_loop()
    for address in bind_addresses(bind):
        try:
            infos = await loop.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
        except OSError as exc:
            first_error = first_error or exc
            continue
        for family, kind, proto, _name, sockaddr in infos:
            try:
                sock = _bound(family, kind, proto, sockaddr)
            except OSError as exc:
                first_error = first_error or exc
                continue
            listeners.append(Listener(sock, factory))
            if port == 0:
                port = int(sock.getsockname()[1])
    if not listeners:
        raise first_error or OSError(errno.EADDRNOTAVAIL, f"no address for {bind!r}")
    return listeners


def _bound(family: int, kind: int, proto: int, sockaddr: tuple[Any, ...]) -> socket.socket:
    """A listening socket as asyncio's ``create_server`` makes one."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_port(servers: Sequence[asyncio.Server | Listener]) -> int:
    for server in servers:
        for sock in server.sockets:
            return int(sock.getsockname()[1])
    return 0


async def close_servers(servers: Sequence[asyncio.Server | Listener]) -> None:
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


async def connect_forwarder(forwarder: Forwarder, host: str, port: int, timeout: float, *,
                            started: socket.socket | None = None) -> None:
    """Connect with a deadline (name resolution included) and give the socket to
    ``forwarder``; the addresses in the resolver's order, the first one's error if none
    answers. ``started``: the socket :func:`connect_now` left in progress, the only one.

    Leaner than ``loop.create_connection``: no resolver round trip for an address, and a
    connect the kernel completes within the call (loopback does) takes no turn of the event
    loop at all -- a short tunnelled connection pays this once (bench/tunnel.py's
    connections/s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if started is not None:
        try:
            async with asyncio.timeout_at(deadline):
                await _writable(loop, started)
            error = started.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
        except BaseException:
            started.close()
            raise
        forwarder.start(started)
        return
    infos: Sequence[tuple[int, int, int, str, tuple[Any, ...]]] = _numeric(host, port)
    if not infos:
        async with asyncio.timeout_at(deadline):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    first_error: OSError | None = None
    for family, kind, proto, _name, address in infos:
        sock, error = _start_connect(family, kind, proto, address)
        try:
            if error in (errno.EALREADY, errno.EINPROGRESS):
                async with asyncio.timeout_at(deadline):
                    await _writable(loop, sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error not in (0, errno.EISCONN):
                raise OSError(error, os.strerror(error))
        except OSError as exc:  # TimeoutError included
            sock.close()
            if first_error is None:
                first_error = exc
            continue
        except BaseException:
            sock.close()
            raise
        forwarder.start(sock)
        return
    raise first_error or OSError(errno.EHOSTUNREACH, f"no address for {host}")


def connect_now(forwarder: Forwarder, host: str, port: int) -> socket.socket | None:
    """:func:`connect_forwarder` for a loopback address, without waiting: None once the
    forwarder has the connected socket (the kernel completes a loopback connect within the
    call), else the socket whose connect is still in progress (a full backlog), for
    ``connect_forwarder(..., started=sock)``. OSError if it failed at once (refused), and
    ValueError for a host that is not a loopback address (use :func:`connect_forwarder`)."""
    if not _is_loopback(host):
        raise ValueError(f"{host} is not a loopback address")
    family, kind, proto, _name, address = _numeric(host, port)[0]
    sock, error = _start_connect(family, kind, proto, address)
    if error in (errno.EALREADY, errno.EINPROGRESS):
        return sock
    if error not in (0, errno.EISCONN):
        sock.close()
        raise OSError(error, os.strerror(error))
    try:
        forwarder.start(sock)
    except BaseException:
        sock.close()
        raise
    return None


@functools.lru_cache(maxsize=64)
def _is_loopback(host: str) -> bool:
    """A loopback address given as such (a tunnel names the same few again and again)."""
    if not _numeric(host, 1):
        return False
    return ipaddress.ip_address(host).is_loopback


def _start_connect(family: int, kind: int, proto: int, address: tuple[Any, ...]
                   ) -> tuple[socket.socket, int]:
    """A non-blocking socket and its connect's state: 0 once established (loopback:
    already), EINPROGRESS/EALREADY while under way, else the error."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        error = sock.connect_ex(address)
        if error in (errno.EINPROGRESS, errno.EAGAIN):
            error = sock.connect_ex(address)  # 0 once established (loopback: already)
    except BaseException:
        sock.close()
        raise
    return sock, error


def _numeric(host: str, port: int) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
    """An address given as such, without asking the resolver (none for a name)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return []
    if ip.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, 0, "", (host, port))]
    if "%" in host:
        return []  # a scope: the resolver turns its name into a number
    return [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", (host, port, 0, 0))]


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()
    loop.add_writer(sock.fileno(), _set_done, ready)
    try:
        await ready
    finally:
        loop.remove_writer(sock.fileno())


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
