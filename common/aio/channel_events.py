"""Where a channel event goes, on a :class:`~common.aio.connection.QsmpConnection`: data,
EOF, close, requests and window on a channel we have go to its :class:`Channel`; the
peer's answers to our opens and requests go to their waiters. What the peer asks for anew
(a channel open, a global request) goes to the application's handlers, with the connection
itself: that stays in connection.py (``_on_open_request``, ``_on_global``)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from common.aio.channel import Channel

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
