"""The pre-auth process: every byte a client sends before login, with no privileges.

Forked by the connection's monitor (:mod:`qshd.monitor`) before the monitor loads a host
key, it confines itself at once (:func:`qshd.privsep.sandbox_preauth`: ``PrivsepUser``, an
empty chroot, no new privileges, no fork, few files, bounded memory) and only then reads
from the socket. It runs the QSMP handshake and the login protocol with the sans-IO core;
what needs more than it has is a request to the monitor:

* the handshake's signature: :class:`MonitorSigner` stands in for the host key, and the
  monitor signs the transcript hash (and only that, once);
* each login attempt: the monitor decides, with the passwd file and the user's
  authorized_keys, and verifies a key's signature again;
* a login the monitor accepted: the connection is handed over
  (:meth:`~common.aio.QsmpConnection.accept_and_hand_off`) and this process exits; the
  user's process carries on over the same socket.

Its exit status tells the monitor nothing it relies on: the monitor knows from its own
answers whether logins failed. It never imports anything after the sandbox is up (the
listener imported what it needs), never starts a thread, never opens a file.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from common import aio
from common.accounts.keys import PublicKey
from common.aio import server as _server  # noqa: F401  (common.aio loads lazily: now, not later)
from common.crypto.rng import SYSTEM_RNG, Rng
from common.errors import LocalError, UsageError
from common.protocol.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthRequested
from common.protocol.handshake import ServerHandshake, State
from common.protocol.schedule import signed_data

from . import outcome
from .config import ServerConfig
from .monitor_protocol import (
    HASH_SIZE,
    Handoff,
    MonitorError,
    MonitorLink,
    Password,
    PublicKeyLogin,
    Sign,
    Signature,
    Verdict,
)

log = logging.getLogger("qshd")

#: The host-key signature's context; the monitor adds it itself.
_CONTEXT = signed_data(b"")
#: How long a monitor answer may take (a password check is a bcrypt run or two).
MONITOR_TIMEOUT = 60.0


class MonitorSigner:
    """A host key without its private half: signing is the monitor's."""

    def __init__(self, public: PublicKey, link: MonitorLink) -> None:
        self._public = public
        self._link = link

    @property
    def public(self) -> PublicKey:
        return self._public

    def sign(self, message: bytes, rng: Rng = SYSTEM_RNG) -> bytes:
        if not message.startswith(_CONTEXT) or len(message) != len(_CONTEXT) + HASH_SIZE:
            raise LocalError("the pre-auth process only asks for handshake signatures")
        try:
            answer = self._link.call(Sign(self._public.key_id, message[len(_CONTEXT):]),
                                     Signature, MONITOR_TIMEOUT)
        except MonitorError as exc:
            raise LocalError(f"monitor: {exc}") from None
        assert isinstance(answer, Signature)
        return answer.signature


def serve(config: ServerConfig, sock: socket.socket, link: MonitorLink,
          host_keys: Sequence[PublicKey], tag: str) -> int:
    """Run the handshake and the login; 0 once handed over, else an outcome status."""
    return asyncio.run(_serve(config, sock, link, host_keys, tag))


async def _serve(config: ServerConfig, sock: socket.socket, link: MonitorLink,
                 host_keys: Sequence[PublicKey], tag: str) -> int:
    loop = asyncio.get_running_loop()
    handed_over = False

    async def on_auth(connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        nonlocal handed_over
        ask: Password | PublicKeyLogin
        if request.method == METHOD_PASSWORD and request.password is not None:
            ask = Password(request.user, request.password)
        elif request.method == METHOD_PUBLICKEY and request.public_key is not None:
            ask = PublicKeyLogin(request.user, request.public_key.encode(),
                                 request.session_id, request.signature)
        else:
            return False
        # Blocking on purpose: this process serves one client, and has no thread to spare.
        try:
            verdict = link.call(ask, Verdict, MONITOR_TIMEOUT)
        except (MonitorError, OSError) as exc:  # the monitor is gone: so is this login
            log.error("%s: monitor: %s", tag, exc)
            connection.abort()
            return False
        assert isinstance(verdict, Verdict)
        if not verdict.accepted:
            return False
        try:
            state = await connection.accept_and_hand_off()
        except UsageError:  # a rekey in flight: refuse, the client may try again
            log.info("%s: login could not be handed over now; refused", tag)
            return False
        link.send(Handoff(request.user, state))
        handed_over = True
        return True

    handshake = ServerHandshake([MonitorSigner(k, link) for k in host_keys], config.policy(),
                                step_timeout=config.step_timeout)
    connection = await aio.accept(sock, handshake, on_auth=on_auth,
                                  settings=config.transport_settings(),
                                  max_auth_attempts=config.max_auth_tries,
                                  login_grace=config.login_grace_time,
                                  auth_methods=config.auth_methods())
    first = config.first_message_timeout
    if first > 0:
        peer = sock.getpeername()
        loop.call_later(first, first_message_due, connection, f"{peer[0]} port {peer[1]}")
    await connection.wait_closed()
    return 0 if handed_over else outcome.EXIT_NOAUTH


def first_message_due(connection: aio.QsmpConnection, where: str) -> None:
    """FirstMessageTimeout ran out: close a connection whose connect request has not
    arrived whole (``where``: ``<ip> port <n>``). Also the in-process server's check."""
    if (connection.terminated is None
            and connection.core.handshake.state is State.AWAIT_CONNECT_REQUEST):
        # sshd's words for a client that never sent its version line.
        log.info("Did not receive identification string from %s", where)
        connection.close("no connect request in time")


def warm_up() -> None:
    """Run one login in memory, in the listener, with throwaway keys: every module the
    pre-auth path imports on first use is then imported before the fork, because a process
    in an empty chroot cannot import anything."""
    import time

    from common.accounts.keys import HostKey
    from common.protocol.connection import Connection
    from common.protocol.handshake import ClientHandshake
    from common.protocol.negotiation import Offer

    now = time.time()
    host = HostKey.generate("mldsa65", now=now)
    user = HostKey.generate("mldsa65", now=now)
    server = Connection(ServerHandshake([host]), require_auth=True)
    client = Connection(ClientHandshake(Offer(), host.public))
    client.authenticate_publickey("warmup", user)
    server.start(now)
    client.start(now)
    for _ in range(20):
        for sender, receiver in ((client, server), (server, client)):
            for data in sender.data_to_send():
                receiver.receive_data(bytes(data), now)
        for event in server.events_received():
            if isinstance(event, AuthRequested):
                server.reject_auth(now)
        client.events_received()
    server.close()
    client.close()
