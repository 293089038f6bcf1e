"""The engine of a :class:`~common.aio.connection.QsmpConnection`: the pump that runs after
every input or call (dispatches the core's events, sends its output, re-arms its timer),
the timer itself, and what happens when our own code fails (the connection ends, the
process goes on). The order of work on every received byte is decided here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common.aio.timer import PreciseTimer
from common.protocol.connection import Connection, ConnectionTerminated

log = logging.getLogger("qsh.aio")


class Engine:
    """Mixin of :class:`~common.aio.connection.QsmpConnection`: the pump, the timer, the
    failure path and the connection's tasks. The annotations below are the connection's
    state the engine uses."""

    number: int
    loop: asyncio.AbstractEventLoop
    terminated: ConnectionTerminated | None
    _core: Connection
    _transport: asyncio.Transport | None
    _offset: float
    _dispatch: dict[type, Callable[[Any], None]]
    _pumping: bool
    _closing: bool
    _timer: asyncio.TimerHandle | PreciseTimer | None
    _timer_when: float | None
    _precise: PreciseTimer | None
    _precise_tried: bool
    _tasks: set[asyncio.Task[Any]]

    if TYPE_CHECKING:
        def _now(self) -> float: ...
        def _send(self, out: list[bytes | bytearray | memoryview]) -> None: ...
        def _gate(self) -> None: ...
        def _close_when_flushed(self) -> None: ...
        def _on_terminated(self, event: ConnectionTerminated) -> None: ...
