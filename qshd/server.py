"""qshd in one process: every connection a set of tasks on one event loop.

The daemon itself (``qshd``) runs a process per connection (:mod:`qshd.listener`,
:mod:`qshd.monitor`); this is the same policy without that split -- admission
(:class:`~qshd.admission.Admission`, fed by :class:`_Admitted`), logins decided by
:class:`~qshd.login.Authenticator`, then session channels (:func:`qshd.sessions.serve_channel`)
-- for what wants a server inside its own process: the tests of login policy, which read its
log through pytest's caplog, and programs that embed a server. A bug here ends only the
connection it hit, but nothing is privilege-separated and sessions end with the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref

from common import aio
from common.accounts.keys import HostKey
from common.channels.copy import COPY
from common.protocol.auth import AuthRequested
from common.protocol.handshake import ServerHandshake
from common.protocol.mux import GlobalRequest, OpenFailureReason

from .admission import Admission, Penalty, Refused, Ticket, classify
from .config import ServerConfig
from .login import Account, Authenticator, peer_text
from .preauth import first_message_due
from .sessions import HANGUP_GRACE, Session, serve_channel
from .tunnels import Tunnels

log = logging.getLogger("qshd")


def _address(info: object) -> tuple[str, int]:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return "unknown", 0


#: A connection that ends this close to LoginGraceTime without a login exceeded it.
_GRACE_SLACK = 0.5


class _Admitted:
    """The link between one admitted connection and :class:`~qshd.admission.Admission`:
    reports its login and its end, and closes it if its first message does not arrive in
    time (a held socket then frees its slot long before LoginGraceTime)."""

    def __init__(self, daemon: Daemon, ticket: Ticket, now: float) -> None:
        self.daemon = daemon
        self.ticket = ticket
        self.accepted = now
        self.attempted = False
        self._timer: asyncio.TimerHandle | None = None

    def started(self, connection: aio.QsmpConnection) -> None:
        self.daemon._admitted[connection] = self
        timeout = self.daemon.config.first_message_timeout
        if timeout > 0:
            self._timer = connection.loop.call_later(timeout, self._first_message_due,
                                                     connection)

    def _first_message_due(self, connection: aio.QsmpConnection) -> None:
        self._timer = None
        first_message_due(connection, f"{self.ticket.address} port {self.ticket.port}")

    def closed(self, connection: aio.QsmpConnection | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        daemon = self.daemon
        if connection is not None:
            daemon._admitted.pop(connection, None)
        now = asyncio.get_running_loop().time()
        terminated = connection.terminated if connection is not None else None
        crashed = (terminated is not None and not terminated.by_peer
                   and terminated.reason.startswith("internal error"))
        grace = (not self.ticket.authenticated
                 and now - self.accepted >= daemon.config.login_grace_time - _GRACE_SLACK)
        penalty = classify(authenticated=self.ticket.authenticated, attempted=self.attempted,
                           grace_exceeded=grace, crashed=crashed)
        if penalty is Penalty.GRACE_EXCEEDED:
            log.info("Timeout before authentication for %s port %d", self.ticket.address,
                     self.ticket.port)
        daemon.admission.ended(self.ticket, penalty, now)


class Daemon:
    def __init__(self, config: ServerConfig, host_keys: list[HostKey]) -> None:
        self.config = config
        self.host_keys = host_keys
        self.authenticator = Authenticator(config)
        self.admission = Admission(config.admission_settings())
        self._admitted: dict[aio.QsmpConnection, _Admitted] = {}
        self.euid = os.geteuid()
        self._servers: list[aio.Server] = []
        self.sessions: set[Session] = set()
        self._tunnel_sets: weakref.WeakKeyDictionary[aio.QsmpConnection, Tunnels] = (
            weakref.WeakKeyDictionary())
        self._global_locks: weakref.WeakKeyDictionary[aio.QsmpConnection, asyncio.Lock] = (
            weakref.WeakKeyDictionary())
        self.port = config.port

    def _handshake(self) -> ServerHandshake:
        return ServerHandshake(self.host_keys, self.config.policy(),
                               step_timeout=self.config.step_timeout)

    def _admit(self, peer: object, local: object) -> _Admitted | None:
        """aio's ``admit`` hook: the sans-IO decision, with the loop's clock."""
        now = asyncio.get_running_loop().time()
        address, port = _address(peer)
        local_address, local_port = _address(local)
        decision = self.admission.admit(address, port, local_address, local_port, now)
        if isinstance(decision, Refused):
            return None
        return _Admitted(self, decision, now)

    async def _on_auth(self, connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        admitted = self._admitted.get(connection)
        if admitted is not None:
            admitted.attempted = True
        ok = await self.authenticator(connection, request)
        if ok and admitted is not None and connection.terminated is None:
            self.admission.authenticated(admitted.ticket)
        return ok

    async def _on_channel(self, connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        user = connection.user
        if user is None:  # the core refuses these before login; never rely on one check
            channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED, "not logged in")
            return
        account = await asyncio.get_running_loop().run_in_executor(None, Account.lookup, user)
        if account is None:
            log.warning("conn=%d: account %s vanished after login", connection.number, user)
            channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED, "no such account")
            return
        if channel.kind == COPY and self.euid != account.uid:
            # Files a copy opens are opened by this process: never as root for a user.
            log.info("conn=%d: refusing a copy channel for %s: this server does not run as "
                     "that user", connection.number, user)
            channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                           "copies need a server running as the user")
            return
        transport = connection.transport
        client = _address(connection.peername)
        local = _address(transport.get_extra_info("sockname") if transport else None)
        log.debug("conn=%d chan=%d: channel for %s from %s", connection.number, channel.id,
                  user, peer_text(connection))
        await serve_channel(channel, account, euid=self.euid,
                            connection_info=f"{client[0]} {client[1]} {local[0]} {local[1]}",
                            sessions=self.sessions, tunnels=self._tunnels(connection, account))

    def _tunnels(self, connection: aio.QsmpConnection, account: Account) -> Tunnels:
        """This process is not privilege-separated: it connects and listens for a user only
        when it already is that user, never as root on the user's behalf."""
        tunnels = self._tunnel_sets.get(connection)
        if tunnels is None:
            disabled = None if self.euid == account.uid else (
                "tunnels are not served by this server: it does not run as the user")
            tunnels = Tunnels(connection, self.config.tunnel_policy, account.name, disabled)
            self._tunnel_sets[connection] = tunnels
        return tunnels

    async def _on_global_request(self, connection: aio.QsmpConnection,
                                 event: GlobalRequest) -> tuple[bool, bytes]:
        # Replies must leave in request order: one request at a time per connection.
        lock = self._global_locks.setdefault(connection, asyncio.Lock())
        async with lock:
            user = connection.user
            if user is None:
                return False, b""
            account = await asyncio.get_running_loop().run_in_executor(None, Account.lookup,
                                                                       user)
            if account is None:
                return False, b""
            return await self._tunnels(connection, account).on_global_request(connection, event)

    async def start(self) -> None:
        cfg = self.config
        port = cfg.port
        for address in cfg.listen_addresses:
            server = await aio.serve(address, port, make_handshake=self._handshake,
                                     on_channel=self._on_channel,
                                     on_global_request=self._on_global_request,
                                     settings=cfg.transport_settings(),
                                     on_auth=self._on_auth,
                                     max_auth_attempts=cfg.max_auth_tries,
                                     login_grace=cfg.login_grace_time,
                                     auth_methods=cfg.auth_methods(), admit=self._admit)
            port = server.port  # with -p 0, later addresses share the first's port
            self._servers.append(server)
            log.info("listening on %s port %d", address, server.port)
        self.port = port

    async def close(self) -> None:
        """Stop listening, end every connection, and hang up their sessions: in one
        process, sessions cannot outlive the daemon, so leave no program behind."""
        for server in self._servers:
            server.close(connections=True)
        for server in self._servers:
            await server.wait_closed()
        self.authenticator.password_checks.close()
        sessions = [asyncio.ensure_future(s.wait_closed()) for s in self.sessions]
        if sessions:
            await asyncio.wait(sessions, timeout=2 * HANGUP_GRACE + 1)
