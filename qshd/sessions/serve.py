"""Every channel a logged-in user opens goes here first: a session, a copy or a tunnel to
whatever serves it, anything else refused."""

from __future__ import annotations

import logging

from common import aio
from common.channels.copy import COPY
from common.channels.session import SESSION
from common.channels.tunnel import KINDS as TUNNEL_KINDS
from common.protocol.mux import OpenFailureReason
from common.transfer import serve as copy_serve

from ..login import Account
from ..policy import SessionPolicy
from ..tunnels import Tunnels
from .session import Session
from .terminal import TerminalAccounting

log = logging.getLogger("qshd")


async def serve_channel(channel: aio.Channel, account: Account, *, euid: int,
                        connection_info: str, sessions: set[Session],
                        accounting: TerminalAccounting | None = None,
                        tunnels: Tunnels | None = None,
                        policy: SessionPolicy | None = None) -> None:
    """A channel a logged-in user opened: a ``session`` runs until its end (tracked in
    ``sessions`` meanwhile, so its owner can wait for every hang-up); a tunnel goes to the
    connection's ``tunnels`` (refused without); a copy runs here, its files opened with the
    user's rights (never as another euid); any other kind is refused."""
    if channel.kind in TUNNEL_KINDS and tunnels is not None:
        await tunnels.serve_channel(channel)
        return
    if channel.kind == COPY and policy is not None and not policy.allows_copy:
        log.info("conn=%d: refusing a copy channel for %s: a forced command is in effect",
                 channel.connection.number, account.name)
        channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                       "copying is not allowed: a forced command is in effect")
        return
    if channel.kind == COPY and euid == account.uid:  # qcp: files opened as the user
        await copy_serve(channel)
        return
    if channel.kind != SESSION:
        log.info("conn=%d: refusing a %s channel for %s: not supported",
                 channel.connection.number, channel.kind, account.name)
        channel.reject(OpenFailureReason.UNKNOWN_CHANNEL_TYPE,
                       f"{channel.kind} channels are not supported by this server")
        return
    session = Session(channel, account, euid=euid, connection_info=connection_info,
                      accounting=accounting, policy=policy)
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
