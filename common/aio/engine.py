"""The engine of a :class:`~common.aio.connection.QsmpConnection`: the pump that runs after
every input or call (dispatches the core's events, sends its output, re-arms its timer),
the timer itself, and what happens when our own code fails (the connection ends, the
process goes on). The order of work on every received byte is decided here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from common.aio.timer import PRECISE_WITHIN, PreciseTimer, precise_timer
from common.errors import ErrorCode
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

    # -- the engine

    def _pump(self) -> None:
        """After every input or application call: act on events, send what the core
        produced, re-arm the timer. Event handlers never call user code synchronously, but
        some answer the core at once (refusing a channel nobody serves); their own pump
        call is deferred to the running one, which loops until the core is quiet."""
        if self._pumping:
            return
        self._pumping = True
        try:
            core = self._core
            core.note_time(self._now())
            dispatch = self._dispatch
            while True:
                events = core.events_received()
                if not events:
                    break
                for event in events:
                    dispatch[type(event)](event)
            out = core.data_to_send()
            if out and not self._closing:
                self._send(out)
            if core.terminated is not None:
                if self.terminated is None:  # it failed while sealing just now
                    for event in core.events_received():
                        dispatch[type(event)](event)
                self._close_when_flushed()  # after the core's last words, sent above
            when = core.next_timer()
            if when != self._timer_when:
                self._arm_timer(when)
            self._gate()
        finally:
            self._pumping = False

    def _arm_timer(self, when: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = when
        if when is not None and self._transport is not None:
            if when - self._now() < PRECISE_WITHIN and not self._precise_tried:
                # The keystroke clock and its echo replies: call_at may fire up to 1 ms
                # late, by an amount that tells typing from idle (common/aio/timer.py).
                self._precise_tried = True
                self._precise = precise_timer(self.loop, self._fire_timer)
            if self._precise is not None:
                self._timer = self._precise.call_at(when - self._offset)
            else:
                self._timer = self.loop.call_at(when - self._offset, self._fire_timer)

    def _fire_timer(self) -> None:
        when = self._timer_when
        self._timer = None
        self._timer_when = None
        try:
            now = self._now()
            if when is not None and now < when:
                now = when  # the loop may run a timer up to its clock resolution early
            self._core.handle_timer(now)
            self._pump()
        except Exception as exc:
            self._crash(exc)

    def _crash(self, exc: BaseException) -> None:
        """A bug of ours while serving this connection: log it and end this connection
        only (the peer gets an error packet if the core can still make one)."""
        log.error("conn=%d: internal error, closing the connection", self.number,
                  exc_info=exc)
        if self.terminated is None:
            try:
                self._core.close("internal error")
                out = self._core.data_to_send()
                if out and not self._closing:
                    self._send(out)
            except Exception:
                log.debug("conn=%d: could not send the shutdown", self.number, exc_info=True)
            self._on_terminated(ConnectionTerminated(ErrorCode.CONNECTION_FAILURE,
                                                     f"internal error: {exc!r}", False))
        if self._transport is not None:
            self._transport.abort()

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, what))

    def _task_done(self, task: asyncio.Task[Any], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("conn=%d: %s failed", self.number, what, exc_info=task.exception())


def retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
