"""Where a channel event goes, on a :class:`~common.aio.connection.QsmpConnection`: data,
EOF, close, requests and window on a channel we have go to its :class:`Channel`; the
peer's answers to our opens and requests go to their waiters. What the peer asks for anew
(a channel open, a global request) goes to the application's handlers, with the connection
itself: that stays in connection.py (``_on_open_request``, ``_on_global``)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from common.aio.channel import _OPEN, Channel
from common.aio.errors import ChannelOpenError
from common.protocol.mux import (
    EXTENDED_DATA_STDERR,
    ChannelClosed,
    ChannelData,
    ChannelEof,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelRequest,
    ChannelRequestReply,
    ChannelWritable,
    GlobalRequestReply,
)

if TYPE_CHECKING:
    from common.aio.connection import OpenAnswer


class ChannelEvents:
    """Mixin of :class:`~common.aio.connection.QsmpConnection`: the ``_on_*`` handlers of
    events on existing channels and of answers to our requests. The annotations below are
    the connection's state they use."""

    _channels: dict[int, Channel]
    _opening: dict[int, asyncio.Future[Channel] | OpenAnswer]
    _global_replies: deque[asyncio.Future[tuple[bool, bytes]]]

    if TYPE_CHECKING:
        def _answer_open(self, answer: OpenAnswer, channel: Channel | None,
                         error: Exception | None) -> None: ...

    def _on_data(self, event: ChannelData) -> None:
        channel = self._channels.get(event.channel_id)
        if channel is None:
            return
        if event.ext is None:
            channel.stdout._feed(event.data)
        elif event.ext == EXTENDED_DATA_STDERR:
            channel.stderr._feed(event.data)
        else:  # a type nobody reads: drop it, but keep the window moving
            channel._consumed(len(event.data))

    def _on_writable(self, event: ChannelWritable) -> None:
        channel = self._channels.get(event.channel_id)
        if channel is not None:
            channel._wake_drain()

    def _on_opened(self, event: ChannelOpened) -> None:
        channel = self._channels[event.channel_id]
        channel._state = _OPEN
        channel.reply_payload = event.payload
        waiter = self._opening.pop(event.channel_id, None)
        if waiter is not None and not isinstance(waiter, asyncio.Future):
            self._answer_open(waiter, channel, None)
        elif waiter is not None and not waiter.done():
            waiter.set_result(channel)
        else:  # the opener gave up waiting
            channel.abort()

    def _on_open_failed(self, event: ChannelOpenFailed) -> None:
        channel = self._channels.pop(event.channel_id, None)
        if channel is not None:
            channel._finish(None)
        waiter = self._opening.pop(event.channel_id, None)
        error = ChannelOpenError(event.reason, event.message)
        if waiter is not None and not isinstance(waiter, asyncio.Future):
            self._answer_open(waiter, None, error)
        elif waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _on_eof(self, event: ChannelEof) -> None:
        channel = self._channels.get(event.channel_id)
        if channel is not None:
            channel.stdout._set_eof()
            channel.stderr._set_eof()

    def _on_closed(self, event: ChannelClosed) -> None:
        channel = self._channels.pop(event.channel_id, None)
        if channel is not None:
            channel._finish(None)

    def _on_request(self, event: ChannelRequest) -> None:
        channel = self._channels.get(event.channel_id)
        if channel is not None:
            channel._requests.append(event)
            channel._wake_requests()

    def _on_request_reply(self, event: ChannelRequestReply) -> None:
        channel = self._channels.get(event.channel_id)
        if channel is not None and channel._replies:
            waiter = channel._replies.popleft()
            if not waiter.done():
                waiter.set_result((event.ok, event.payload))

    def _on_global_reply(self, event: GlobalRequestReply) -> None:
        if self._global_replies:
            waiter = self._global_replies.popleft()
            if not waiter.done():
                waiter.set_result((event.ok, event.payload))
