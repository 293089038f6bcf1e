"""Serving: :func:`serve` listens and runs every accepted connection isolated;
:func:`adopt` serves a connection another process handed over."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from common.aio.client import core_args
from common.aio.connection import AuthHandler, ChannelHandler, GlobalRequestHandler, QsmpConnection
from common.aio.memory import tune_allocator
from common.crypto.rng import Rng
from common.protocol import handoff  # noqa: F401  (now, before a sandbox: see below)
from common.protocol.connection import Connection
from common.protocol.handshake import ServerHandshake
from common.protocol.transport import TransportSettings

log = logging.getLogger("qsh.aio")

# common.protocol.handoff is loaded above although nothing here names it: the core loads
# it on first use (a client never does), and qshd's pre-auth process exports its
# connection inside its sandbox, where nothing new can be loaded.


class Server:
    """A listening qsh endpoint: the asyncio server plus the connections it accepted."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        self.connections: set[QsmpConnection] = set()

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.sockets[0].getsockname()[1])

    def close(self, *, connections: bool = False) -> None:
        """Stop listening; with ``connections``, also close every accepted connection."""
        self._server.close()
        if connections:
            for connection in list(self.connections):
                connection.close("server shutting down")

    async def wait_closed(self) -> None:
        await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close(connections=True)
        for connection in list(self.connections):
            await connection.wait_closed()
        await self.wait_closed()


class AdmissionTicket(Protocol):
    """An admitted connection as admission control sees it (see :func:`serve`)."""

    def started(self, connection: QsmpConnection) -> None:
        """The connection exists (its handshake has not read a byte yet)."""

    def closed(self, connection: QsmpConnection | None) -> None:
        """Its socket is closed (None: it could not even be set up). Called once."""


#: Server: ``admit(peername, sockname)`` right after accept; None closes the socket at once.
AdmitHandler = Callable[[Any, Any], AdmissionTicket | None]


async def serve(host: str | None, port: int, *,
                make_handshake: Callable[[], ServerHandshake],
                on_channel: ChannelHandler | None,
                settings: TransportSettings | None = None,
                on_global_request: GlobalRequestHandler | None = None,
                window: int | None = None, max_packet: int | None = None,
                rng: Rng | None = None, backlog: int = 100,
                on_auth: AuthHandler | None = None, max_auth_attempts: int | None = None,
                login_grace: float | None = None, auth_methods: tuple[str, ...] | None = None,
                max_unauthenticated: int | None = None,
                admit: AdmitHandler | None = None) -> Server:
    """Listen on ``host:port`` (port 0: any free port, see :attr:`Server.port`).

    Each accepted socket gets a fresh ``make_handshake()`` and runs isolated: anything that
    goes wrong in it, a peer's garbage, a stalled handshake or our own bug, ends only that
    connection. ``on_channel(connection, channel)`` runs as its own task for each channel
    a client opens; it must :meth:`Channel.accept` or :meth:`Channel.reject` it, and the
    channel is closed when the handler returns.

    With ``on_auth``, clients must log in first: ``on_auth(connection, request)`` decides
    each attempt, and channels are refused until one succeeds.

    ``max_unauthenticated`` (a plain cap) limits the connections that have not logged
    in yet (all of them without ``on_auth``): one more is closed as it is accepted, before
    any handshake work, so a flood of half-open logins cannot eat the CPU or the memory that
    logged-in users need. Logged-in connections do not count.

    ``admit`` is the general form (qshd's MaxStartups and per-source penalties): it sees
    the peer's and our address before any protocol object exists, and refuses by returning
    None (the socket is closed, nothing is read). Its ticket hears when the connection
    starts and when its socket closes; one listener can share an ``admit`` among several
    :func:`serve` calls. A ticket whose hook fails is logged and the connection goes on.
    """
    auth_args = (_auth_args(max_auth_attempts, login_grace, auth_methods)
                 if on_auth is not None else {})
    tune_allocator()
    loop = asyncio.get_running_loop()
    server_ref: list[Server] = []

    def make_connection(ticket: AdmissionTicket | None) -> QsmpConnection | None:
        server = server_ref[0]
        try:
            core = Connection(make_handshake(),
                              **core_args(settings, window, max_packet, rng, **auth_args))
        except Exception:
            log.exception("could not set up a connection; dropping it")
            return None
        connection = QsmpConnection(core, loop=loop, on_channel=on_channel,
                                    on_global_request=on_global_request, on_auth=on_auth)
        server.connections.add(connection)

        def gone(_: object) -> None:
            server.connections.discard(connection)
            if ticket is not None:
                _tell(ticket.closed, connection)

        connection._closed.add_done_callback(gone)
        if ticket is not None:
            _tell(ticket.started, connection)
        return connection

    def factory() -> asyncio.BaseProtocol:
        server = server_ref[0]
        if max_unauthenticated is not None:
            waiting = sum(1 for c in server.connections
                          if c.terminated is None and c.user is None)
            if waiting >= max_unauthenticated:
                log.warning("dropping a connection: %d are not logged in yet (the limit)",
                            waiting)
                return _Refuse()
        if admit is not None:
            return _Gate(admit, make_connection)
        return make_connection(None) or _Refuse()

    aserver = await loop.create_server(factory, host, port, backlog=backlog)
    server = Server(aserver)
    server_ref.append(server)
    return server


def _tell(hook: Callable[[Any], None], argument: Any) -> None:
    """Call an admission hook; its failure is a bug of ours, logged, never the peer's."""
    try:
        hook(argument)
    except Exception:
        log.exception("admission hook %s failed", getattr(hook, "__qualname__", hook))


class _Refuse(asyncio.Protocol):
    """Stands in when a connection could not even be set up: closes the socket."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Gate(asyncio.Protocol):
    """Stands in for an accepted socket until admission control has seen its addresses:
    then closes it, or hands the transport to a new :class:`QsmpConnection` before the
    first read (asyncio only starts reading after ``connection_made`` returns)."""

    def __init__(self, admit: AdmitHandler,
                 make: Callable[[AdmissionTicket | None], QsmpConnection | None]) -> None:
        self._admit = admit
        self._make = make

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        try:
            ticket = self._admit(transport.get_extra_info("peername"),
                                 transport.get_extra_info("sockname"))
        except Exception:  # admission is a security check: a bug in it refuses
            log.exception("admission control failed; dropping the connection")
            ticket = None
        if ticket is None:
            transport.close()
            return
        connection = self._make(ticket)
        if connection is None:
            _tell(ticket.closed, None)
            transport.close()
            return
        transport.set_protocol(connection)
        connection.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Never reached (the socket is handed over or closed first); ignore."""


async def adopt(sock: socket.socket, state: bytes | bytearray | memoryview, *,
                on_channel: ChannelHandler | None,
                settings: TransportSettings | None = None,
                on_global_request: GlobalRequestHandler | None = None,
                window: int | None = None, max_packet: int | None = None,
                rng: Rng | None = None, user: str | None = None,
                number: int | None = None,
                before_reading: Callable[[], None] | None = None) -> QsmpConnection:
    """Carry on a connection another process handed over (its
    :meth:`QsmpConnection.accept_and_hand_off` state) over ``sock``, the same TCP socket,
    already connected. Returns the logged-in server connection, which serves channels as
    :func:`serve`'s do; the peer notices nothing.

    ``user`` is the user the privileged side approved; the state must name the same one
    (:class:`~common.protocol.handoff.HandoffError` otherwise, or if the state is malformed: then
    the socket is left alone and the caller closes it). ``settings``, ``window`` and
    ``max_packet`` are this process's; the suite, keys and sequence numbers come from the
    state. ``number`` names the connection in log lines (``conn=N``), as the process that
    accepted it numbered it.

    ``before_reading`` is called once everything is built and before the socket is
    touched: it may block (nothing else runs yet) until the socket is this process's alone
    (qshd: until the pre-auth process has exited), or raise, which leaves the socket alone
    for the caller.
    """
    tune_allocator()
    loop = asyncio.get_running_loop()
    offset = time.time() - loop.time()
    core = Connection.from_handoff(state, now=loop.time() + offset, user=user,
                                   **core_args(settings, window, max_packet, rng))
    connection = QsmpConnection(core, loop=loop, on_channel=on_channel,
                                on_global_request=on_global_request)
    if number is not None:
        connection.number = number
    connection._offset = offset  # the clock the core's times were given on
    connection._pre_auth = False  # logged in: the full read and write budgets
    transport = core.transport
    assert transport is not None
    connection.suite = transport.suite
    connection.session_id = transport.session_id
    connection._established.set_result(None)
    if before_reading is not None:
        before_reading()
    await loop.connect_accepted_socket(lambda: connection, sock=sock)
    return connection


async def accept(sock: socket.socket, handshake: ServerHandshake, *,
                 on_auth: AuthHandler, settings: TransportSettings | None = None,
                 window: int | None = None, max_packet: int | None = None,
                 rng: Rng | None = None, max_auth_attempts: int | None = None,
                 login_grace: float | None = None,
                 auth_methods: tuple[str, ...] | None = None) -> QsmpConnection:
    """Serve the handshake and the login of one socket another process accepted (qshd's
    pre-auth process; the listener forked it with the socket). Channels are refused: a
    login is decided by ``on_auth``, which hands the connection on with
    :meth:`QsmpConnection.accept_and_hand_off`. Returns once the connection runs; wait on
    :meth:`QsmpConnection.wait_closed`."""
    auth_args = _auth_args(max_auth_attempts, login_grace, auth_methods)
    loop = asyncio.get_running_loop()
    core = Connection(handshake, **core_args(settings, window, max_packet, rng, **auth_args))
    connection = QsmpConnection(core, loop=loop, on_channel=None, on_auth=on_auth)
    await loop.connect_accepted_socket(lambda: connection, sock=sock)
    return connection


def _auth_args(max_auth_attempts: int | None, login_grace: float | None,
               auth_methods: tuple[str, ...] | None) -> dict[str, Any]:
    """The core's login arguments: required, with the limits that were given."""
    args: dict[str, Any] = {"require_auth": True}
    for name, value in (("max_auth_attempts", max_auth_attempts),
                        ("login_grace", login_grace), ("auth_methods", auth_methods)):
        if value is not None:
            args[name] = value
    return args
