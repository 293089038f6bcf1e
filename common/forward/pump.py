"""One forwarded TCP connection over one channel (:func:`pump`).

Two loops, one per direction, each a plain read-write-drain cycle:

* socket to channel: read at most a record's worth, ``channel.write`` it, ``await
  channel.drain()``. While the peer's window is full the drain waits and the socket is not
  read, so the kernel's buffer fills and TCP stops the local sender: no buffering of ours
  beyond the channel's high-water mark.
* channel to socket: ``channel.read()`` (which grants window back as it consumes), write,
  ``await writer.drain()``. A local reader that stops reading stops the remote sender
  within one window.

Half-close travels both ways: EOF on the socket becomes the channel's EOF, the channel's
EOF becomes ``shutdown(SHUT_WR)``; the channel closes once both directions have ended, as in
SSH. When either side vanishes -- the socket resets, the channel is closed or aborted by the
peer, the connection dies -- both loops are cancelled, the socket is aborted and the channel
closed, so nothing of the pair is left behind (descriptors, tasks, buffers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from common.aio import Channel

log = logging.getLogger("qsh.forward")

#: One socket read: a record's worth (the mux's default max packet), so bulk traffic costs
#: few records and few calls.
READ_SIZE = 256 * 1024
#: The asyncio stream buffer limit for forwarded sockets; reading pauses at twice this.
STREAM_LIMIT = 1024 * 1024
#: After the peer closed the channel, how long what it sent before may take to reach a slow
#: local reader before the socket is dropped.
FLUSH_TIMEOUT = 10.0
#: How long a closed channel waits for the peer's CLOSE before the pump gives up on it.
CLOSE_TIMEOUT = 10.0


async def _to_channel(reader: asyncio.StreamReader, channel: Channel) -> None:
    while data := await reader.read(READ_SIZE):
        channel.write(data)
        await channel.drain()
    channel.write_eof()


async def _to_socket(channel: Channel, writer: asyncio.StreamWriter) -> None:
    while data := await channel.read():
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def pump(channel: Channel, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, tag: str = "") -> bool:
    """Forward until both directions ended or either side vanished; always closes both the
    channel and the socket before returning. True for a clean end (EOF both ways)."""
    up = asyncio.ensure_future(_to_channel(reader, channel))
    down = asyncio.ensure_future(_to_socket(channel, writer))
    closed = asyncio.ensure_future(channel.wait_closed())
    clean = False
    try:
        while True:
            waiting = {t for t in (up, down) if not t.done()}
            if not waiting:
                clean = True
                break
            await asyncio.wait(waiting | {closed}, return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in (up, down)
                      if t.done() and not t.cancelled() and t.exception() is not None]
            if failed:
                log.debug("%s: forwarding ended: %r", tag, failed[0].exception())
                break
            if closed.done():
                # The peer closed: nothing more will go out. What it sent first still goes
                # to the socket, within a bound.
                up.cancel()
                if not down.done():
                    await asyncio.wait({down}, timeout=FLUSH_TIMEOUT)
                clean = down.done() and not down.cancelled() and down.exception() is None
                break
    finally:
        for task in (up, down, closed):
            task.cancel()
        await asyncio.gather(up, down, closed, return_exceptions=True)
        if clean:
            writer.close()
            channel.close()
        else:
            writer.transport.abort()
            channel.abort()
        # asyncio.timeout, not wait_for: no task per wait (this runs once per connection).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await channel.wait_closed()
                await writer.wait_closed()
    return clean


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Interactive traffic (a forwarded ssh, a database protocol) must not wait for Nagle:
    the records already batch bulk data."""
    import socket

    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
