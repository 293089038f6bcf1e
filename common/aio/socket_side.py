"""The socket side of a :class:`~common.aio.connection.QsmpConnection`: asyncio's protocol
callbacks, our zero-copy send queue and its flush, the read gate, closing once flushed and
releasing the socket for a hand-off. Every byte in or out of the socket passes here, so
this is where to look for buffering, back-pressure and how a connection's socket ends."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from common.aio.timer import PreciseTimer
from common.protocol.connection import Connection, ConnectionTerminated

if TYPE_CHECKING:
    from common.aio.channel import Channel

log = logging.getLogger("qsh.aio")


class SocketSide:
    """Mixin of :class:`~common.aio.connection.QsmpConnection`: the asyncio protocol methods
    and the send path. The annotations below are the connection's state this side uses."""

    number: int
    loop: asyncio.AbstractEventLoop
    peername: Any
    terminated: ConnectionTerminated | None
    _core: Connection
    _transport: asyncio.Transport | None
    _offset: float
    _recv: memoryview
    _recv_pre_auth: memoryview
    _pre_auth: bool
    _gate_reading: bool
    _read_paused: bool
    _timer: asyncio.TimerHandle | PreciseTimer | None
    _precise: PreciseTimer | None
    _wsock: socket.socket | None
    _wqueue: deque[bytes | bytearray | memoryview]
    _wqueued: int
    _writing: bool
    _closing: bool
    _close_timer: asyncio.TimerHandle | None
    _write_paused: bool
    _transport_paused: bool
    _channels: dict[int, Channel]
    _closed: asyncio.Future[None]

    if TYPE_CHECKING:
        @property
        def peer(self) -> str: ...
        def _now(self) -> float: ...
        def _pump(self) -> None: ...
        def _crash(self, exc: BaseException) -> None: ...
        def _on_terminated(self, event: ConnectionTerminated) -> None: ...
        def abort(self) -> None: ...
