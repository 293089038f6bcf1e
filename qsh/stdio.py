"""``qsh -W host:port``: stdin and stdout joined to one ``direct-tcpip`` channel, as ssh's
stdio forwarding, the building block of jump hosts (:mod:`common.client.proxy` runs it as
the ProxyCommand of the next hop).

No session channel and no pty: after login one channel is opened to host:port from the
server (its AllowTcpForwarding/PermitOpen policy decides, as for ``-L``); stdin goes into
the channel and the channel to stdout, EOF from stdin becomes the channel's EOF, and the
channel's EOF closes stdout (a socket is shut down for writing, anything else closed) and
stops reading stdin, as ssh does. qsh exits 0 once the channel has closed (the far end is
done), 255 with one line when the server refuses the channel or the
connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat

from common import aio
from common.channels.tunnel import DIRECT_TCPIP, Endpoint
from common.client import terminal
from common.client.config import ClientConfig
from common.client.connect import (
    DisconnectError,
    QshError,
    StopSignals,
    Ui,
    close_connection,
    describe_end,
    login,
    printable,
)
from common.errors import InvalidInput

from .local_end import READ_SIZE, FdReader, FdWriter

#: The originator named in the channel's open (ssh names it the same way).
ORIGINATOR = "stdio-forward"


async def forward_stdio(cfg: ClientConfig, ui: Ui, host: str, port: int) -> int:
    connection: aio.QsmpConnection | None = None
    with StopSignals(), terminal.saved_blocking_modes():
        try:
            connection = await login(cfg, ui)
            try:
                endpoint = Endpoint(host, port, ORIGINATOR, 0).encode()
                channel = await connection.open_channel(DIRECT_TCPIP, endpoint)
            except aio.ChannelOpenError as exc:
                raise QshError(f"stdio forwarding to {printable(host)}:{port} failed: "
                               f"{printable(exc.message)}") from None
            except InvalidInput as exc:
                raise QshError(f"-W {printable(host)}:{port}: {exc}") from None
            ui.note(1, f"stdio forwarding to {host}:{port} over channel {channel.id}")
            await _forward(channel, ui)
            return 0
        except aio.ConnectionLost as exc:
            raise DisconnectError(f"connection to {cfg.host} closed: "
                                  f"{describe_end(exc.terminated)}") from None
        finally:
            if connection is not None:
                await close_connection(connection)


async def _forward(channel: aio.Channel, ui: Ui) -> None:
    """Until the channel has closed. The far end's EOF ends stdin's side too (ssh's
    "force drain" of its stdio forward): nothing more is read from stdin, our EOF goes out
    and the channel closes, so ``qsh -W`` ends when the far end does even if its stdin
    stays open (a jump's parent holds it open until it sees the end)."""
    up = asyncio.ensure_future(_stdin_to_channel(channel, ui))
    try:
        await _channel_to_stdout(channel, ui)
        if not up.done():
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            with contextlib.suppress(aio.ChannelClosedError, aio.ConnectionLost):
                channel.write_eof()
        await channel.wait_closed()
        if channel.lost is not None:
            raise channel.lost
    finally:
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)


async def _stdin_to_channel(channel: aio.Channel, ui: Ui) -> None:
    reader = FdReader(0)
    try:
        while True:
            try:
                data = await reader.read(READ_SIZE)
            except OSError as exc:
                ui.note(1, f"stdin: {exc.strerror}")
                data = b""
            if not data:
                channel.write_eof()
                return
            channel.write(data)
            await channel.drain()
    except (aio.ChannelClosedError, aio.ConnectionLost):
        return  # the far end is done: nothing to send anymore


async def _channel_to_stdout(channel: aio.Channel, ui: Ui) -> None:
    """Channel to fd 1; a reader that has gone only drops the output (the window keeps
    moving until the far end closes)."""
    writer = FdWriter(1)
    while data := await channel.read():
        if writer.broken:
            continue
        try:
            await writer.write(data)
        except OSError as exc:
            writer.broken = True
            ui.note(1, f"stdout: {exc.strerror}; output dropped")
    _end_stdout()


def _end_stdout() -> None:
    """EOF for whoever reads fd 1: a socket (a ProxyCommand's socketpair, whose other
    direction is our stdin) is shut down for writing; a pipe or file is closed (fd 1 then
    points at /dev/null)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.fstat(1).st_mode):
            sock = socket.socket(fileno=os.dup(1))
            try:
                sock.shutdown(socket.SHUT_WR)
            finally:
                sock.close()
            return
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
