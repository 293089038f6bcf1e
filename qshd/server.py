"""The daemon's process model on top of :mod:`common.aio`.

Each connection is its own task inside the adapter, so a failure in one never reaches the
listener or another session. Until login exists (issue 3), every channel request is refused
with a clear reason: an unauthenticated peer must never get a shell.
"""

from __future__ import annotations

import logging

from common import aio
from common.handshake import ServerHandshake
from common.keys import HostKey
from common.mux import OpenFailureReason
from common.transport import TransportSettings

from .config import ServerConfig

log = logging.getLogger("qshd")


class Daemon:
    def __init__(self, config: ServerConfig, host_keys: list[HostKey]) -> None:
        self.config = config
        self.host_keys = host_keys
        self._servers: list[aio.Server] = []
        self.port = config.port

    def _handshake(self) -> ServerHandshake:
        return ServerHandshake(self.host_keys, self.config.policy(),
                               step_timeout=self.config.step_timeout)

    def _settings(self) -> TransportSettings:
        return TransportSettings(keepalive_interval=self.config.keepalive_interval,
                                 rekey_bytes=self.config.rekey_bytes,
                                 rekey_interval=self.config.rekey_interval)

    async def _on_channel(self, connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        log.info("refusing %s channel from %s: login is not available yet",
                 channel.kind, connection.peer)
        channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                       "login is not available on this server yet")

    async def start(self) -> None:
        port = self.config.port
        for address in self.config.listen_addresses:
            server = await aio.serve(address, port, make_handshake=self._handshake,
                                     on_channel=self._on_channel, settings=self._settings())
            port = server.port  # with -p 0, later addresses share the first's port
            self._servers.append(server)
            log.info("listening on %s port %d", address, server.port)
        self.port = port

    async def close(self) -> None:
        for server in self._servers:
            server.close(connections=True)
        for server in self._servers:
            await server.wait_closed()
