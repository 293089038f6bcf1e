"""The user's process: one logged-in connection, with the user's rights and nothing else.

Forked by the connection's monitor before any secret existed in it, it waits idle for the
handoff of a login the monitor accepted. Then it becomes the user for good (groups, gid,
uid, verified by :func:`qshd.privsep.become_user`: regaining root fails, no capability is
left), rebuilds the connection from the handed-over state and, once the monitor says the
pre-auth process is gone (:func:`wait_preauth_gone`; the two overlap: the handoff comes
as soon as the pre-auth process sends it), carries on over the same socket
(:func:`common.aio.adopt`). Every shell, command -- and, as they arrive, copy and
tunnel -- of that connection runs here or below, so whatever a user names is opened and
connected with that user's rights, never root's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable

from common import aio
from common.aio import server as _server  # noqa: F401  (common.aio loads lazily: now, not later)
from common.aio.memory import release_free_memory
from common.protocol.mux import GlobalRequest

from . import privsep, utmp
from .config import ConnectionSpec, ServerConfig
from .login import Account, group_names
from .monitor_protocol import (
    Handoff,
    MonitorError,
    MonitorLink,
    PreauthGone,
    PtyClosed,
    PtyOpened,
)
from .policy import key_options, session_policy, tunnel_policy
from .sessions import HANGUP_GRACE, Session, serve_channel
from .tunnels import Tunnels

log = logging.getLogger("qshd")

#: How long the user's process waits to hear that the pre-auth process is gone: the
#: monitor gives it 5 s to exit, then ends it (SIGTERM, SIGKILL 2 s later).
PREAUTH_GONE_TIMEOUT = 30.0


def wait_for_handoff(link: MonitorLink, timeout: float) -> Handoff | None:
    """The monitor's handoff, or None when the connection ended without a login."""
    try:
        message = link.receive(timeout)
    except MonitorError:
        return None
    return message if isinstance(message, Handoff) else None


def wait_preauth_gone(link: MonitorLink, timeout: float = PREAUTH_GONE_TIMEOUT) -> None:
    """Block until the monitor says the pre-auth process has exited. Until then it may
    still hold the socket (and it holds the session keys): not one byte is read before.
    Raises :class:`MonitorError` on anything else, or when the link ends or times out."""
    message = link.receive(timeout)
    if not isinstance(message, PreauthGone):
        raise MonitorError(f"expected PreauthGone, got {type(message).__name__}")


class MonitorAccounting:
    """Terminal accounting by way of the monitor, the one process here that is root."""

    def __init__(self, link: MonitorLink) -> None:
        self.link = link

    def opened(self, line: str, pid: int) -> None:
        self.link.send(PtyOpened(line, pid))

    def closed(self, line: str, pid: int, status: int) -> None:
        self.link.send(PtyClosed(line, pid, status & 0xFFFFFFFF))


#: Seconds after the takeover before the heap's free pages go back to the kernel: not
#: between the login and the client's first channel, and not at all for a short command.
RELEASE_DELAY = 1.0


def serve(config: ServerConfig, sock: socket.socket, handoff: Handoff, link: MonitorLink,
          number: int, tag: str) -> int:
    """Become the user and serve the connection; the exit status is 0 once it ends."""
    account = Account.lookup(handoff.user)
    if account is None:
        log.error("%s: account %s vanished during login", tag, handoff.user)
        return 1
    if os.geteuid() == 0:
        # What pam_loginuid does for sshd: the audit login uid of everything the session
        # starts, which ``last`` also reads to tell a live login from a dead one.
        utmp.set_loginuid(account.uid)
    privsep.become_user(account.uid, account.gid, account.groups, user=account.name,
                        allow_root=account.uid == 0)
    return asyncio.run(_serve(config, sock, handoff, account, MonitorAccounting(link), number,
                              tag))


async def _serve(config: ServerConfig, sock: socket.socket, handoff: Handoff,
                 account: Account, accounting: MonitorAccounting, number: int,
                 tag: str) -> int:
    sessions: set[Session] = set()
    peer = sock.getpeername()
    local = sock.getsockname()
    info = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
    euid = os.geteuid()
    # The Match blocks for this connection, then the accepted key's options on top.
    config = config.for_connection(ConnectionSpec(account.name, group_names(account),
                                                  peer[0], local[0], local[1]))
    options = key_options(handoff.key_options)
    session_rules = session_policy(config, options)
    tunnel_rules = tunnel_policy(config, options)
    open_channels = [0]

    tunnels: list[Tunnels] = []

    def tunnels_of(connection: aio.QsmpConnection) -> Tunnels:
        # Made on first use: the client's first tunnel request may be read before adopt()
        # returns. Already the user (become_user above): tunnels act with its rights.
        if not tunnels:
            tunnels.append(Tunnels(connection, tunnel_rules, account.name))
        return tunnels[0]

    async def on_channel(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        open_channels[0] += 1
        try:
            await serve_channel(channel, account, euid=euid, connection_info=info,
                                sessions=sessions, accounting=accounting,
                                tunnels=tunnels_of(connection), policy=session_rules)
        finally:
            open_channels[0] -= 1

    async def on_global_request(connection: aio.QsmpConnection,
                                event: GlobalRequest) -> tuple[bool, bytes]:
        return await tunnels_of(connection).on_global_request(connection, event)

    try:
        connection = await aio.adopt(
            sock, handoff.state, on_channel=on_channel, on_global_request=on_global_request,
            settings=config.transport_settings(), user=account.name, number=number,
            before_reading=functools.partial(wait_preauth_gone, accounting.link))
    except MonitorError as exc:
        log.error("%s: no word that the pre-auth process is gone (%s); not serving", tag, exc)
        return 1
    asyncio.get_running_loop().call_later(RELEASE_DELAY, release_free_memory)
    if config.unused_connection_timeout > 0:
        def unused() -> bool:
            listening = bool(tunnels and getattr(tunnels[0], "_listeners", None))
            return open_channels[0] == 0 and not listening

        await _close_when_unused(connection, config.unused_connection_timeout, unused, tag)
    await connection.wait_closed()
    pending = [asyncio.ensure_future(s.wait_closed()) for s in sessions]
    if pending:
        await asyncio.wait(pending, timeout=2 * HANGUP_GRACE + 1)
    return 0


async def _close_when_unused(connection: aio.QsmpConnection, timeout: float,
                             unused: Callable[[], bool], tag: str) -> None:
    """UnusedConnectionTimeout: close the connection once it has had no channel (and no
    remote listener) for ``timeout`` seconds, as sshd 9.2+ does; return when it ends."""
    idle_since = asyncio.get_running_loop().time()
    step = min(1.0, timeout / 4)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.wait_closed(), step)
            return
        now = asyncio.get_running_loop().time()
        if not unused():
            idle_since = now
        elif now - idle_since >= timeout:
            log.info("%s: closing the connection: no channel for %gs "
                     "(UnusedConnectionTimeout)", tag, timeout)
            connection.close()
            return


def warm_up() -> None:
    """Import, in the listener, what the user's process loads on first use: once it is the
    user, the interpreter's own files may not be readable (a Python under /root)."""
    import concurrent.futures.thread  # asyncio's default executor  # noqa: F401
    import encodings.ascii
    import encodings.idna  # noqa: F401
