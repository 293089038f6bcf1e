"""One QSMP connection on asyncio: moves the sans-IO core's bytes, fires its timers and turns
its events into awaitable objects (:class:`QsmpConnection`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from common.accounts.keys import PublicKey
from common.aio.channel import _ACCEPTING, _OPENING, Channel
from common.aio.channel_events import ChannelEvents
from common.aio.engine import Engine, retrieve
from common.aio.errors import (
    ChannelClosedError,
    ConnectionLost,
    termination_error,
)
from common.aio.handoff import HANDOFF_FLUSH_TIMEOUT, accept_then_hand_off
from common.aio.limits import (
    PRE_AUTH_READ_SIZE,
)
from common.aio.login import Login
from common.aio.memory import receive_buffer
from common.aio.socket_side import SocketSide
from common.aio.timer import PreciseTimer
from common.errors import (
    ErrorCode,
)
from common.protocol.auth import AuthFailed, AuthRequested, AuthSucceeded
from common.protocol.connection import (
    Connection,
    ConnectionTerminated,
    HandshakeComplete,
    HostKeyUnverified,
)
from common.protocol.handshake import Role
from common.protocol.mux import (
    ChannelClosed,
    ChannelData,
    ChannelEof,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelOpenRequest,
    ChannelRequest,
    ChannelRequestReply,
    ChannelWritable,
    GlobalRequest,
    GlobalRequestReply,
    OpenFailureReason,
)
from common.protocol.negotiation import Suite

log = logging.getLogger("qsh.aio")


HostKeyCallback = Callable[[PublicKey], Awaitable[bool]]
#: Server: decide one login attempt (the core has checked syntax and key signatures).
AuthHandler = Callable[["QsmpConnection", AuthRequested], Awaitable[bool]]
ChannelHandler = Callable[["QsmpConnection", "Channel"], Awaitable[None]]
#: The answer to :meth:`QsmpConnection.open_channel_nowait`: (channel, None) or (None, error).
OpenAnswer = Callable[["Channel | None", "Exception | None"], None]
GlobalRequestHandler = Callable[["QsmpConnection", GlobalRequest],
                                Awaitable[tuple[bool, bytes]]]


_ids = itertools.count(1)


# ---------------------------------------------------------------------------------------------
# The connection


class QsmpConnection(SocketSide, Engine, Login, ChannelEvents, asyncio.BufferedProtocol):
    """One QSMP connection over TCP. Created by :func:`connect` and :func:`serve`.

    The protocol methods (``connection_made``, ``get_buffer`` ...) are asyncio's; the rest
    is the application's API.

    One class in parts, one concern each: :class:`SocketSide` (socket_side.py, every byte
    in or out of the socket), :class:`Engine` (engine.py, the pump, timer and failures),
    :class:`Login` (login.py, the client's login and host keys) and :class:`ChannelEvents`
    (channel_events.py, events on channels we have). Here: the state, the API, and what
    hands the connection itself to others (to a :class:`Channel`, to the application's
    handlers, to the hand-off), since only this class is a QsmpConnection to mypy.
    """

    def __init__(self, core: Connection, *, loop: asyncio.AbstractEventLoop,
                 on_channel: ChannelHandler | None = None,
                 on_host_key: HostKeyCallback | None = None,
                 on_global_request: GlobalRequestHandler | None = None,
                 on_auth: AuthHandler | None = None) -> None:
        self.number = next(_ids)
        self._on_auth = on_auth
        self._auth_answer: asyncio.Future[AuthFailed | None] | None = None
        self.loop = loop
        self._core = core
        self._on_channel = on_channel
        self._open_hook: Callable[[Channel], bool] | None = None
        self._on_host_key = on_host_key
        #: connect()'s overall timeout; paused while a person decides on a host key.
        self._connect_deadline: asyncio.Timeout | None = None
        self._on_global_request = on_global_request
        self._transport: asyncio.Transport | None = None
        self._recv = receive_buffer(loop)
        self._offset = time.time() - loop.time()
        self._timer: asyncio.TimerHandle | PreciseTimer | None = None
        self._timer_when: float | None = None
        #: A timerfd for the keystroke clock's short deadlines (made at the first one).
        self._precise: PreciseTimer | None = None
        self._precise_tried = False
        #: PTY sessions open on this connection (a master serves several in turn).
        self._pty_sessions = 0
        # Sending: our own zero-copy queue on a duplicate of the socket (see _send).
        self._wsock: socket.socket | None = None
        self._wqueue: deque[bytes | bytearray | memoryview] = deque()
        self._wqueued = 0
        self._writing = False  # a writer callback is registered
        self._closing = False  # close the transport once the queue is flushed
        self._close_timer: asyncio.TimerHandle | None = None
        self._lingering = False  # half-closed after our error record: see SocketSide._linger
        self._write_paused = False  # our queue is above its high-water mark
        self._pumping = False
        self._transport_paused = False  # the asyncio transport's buffer is
        # Receiving (server only): paused while the peer does not take what we send, and
        # on the pre-login budget until the core admits the peer (see READ_PAUSE_*).
        self._gate_reading = core.role is Role.SERVER
        self._pre_auth = self._gate_reading
        self._read_paused = False
        self._recv_pre_auth = self._recv[:PRE_AUTH_READ_SIZE]
        self._channels: dict[int, Channel] = {}
        self._opening: dict[int, asyncio.Future[Channel] | OpenAnswer] = {}
        self._global_replies: deque[asyncio.Future[tuple[bool, bytes]]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._established: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._lost: ConnectionLost | None = None
        #: After a handoff: the detached transport, kept so that it is not closed early.
        self._handed_off_transport: asyncio.Transport | None = None
        self.terminated: ConnectionTerminated | None = None
        self.suite: Suite | None = None
        self.session_id: bytes | None = None
        self.host_key: PublicKey | None = None
        self.peername: Any = None
        self._dispatch: dict[type, Callable[[Any], None]] = {
            ChannelData: self._on_data,
            ChannelWritable: self._on_writable,
            ChannelOpenRequest: self._on_open_request,
            ChannelOpened: self._on_opened,
            ChannelOpenFailed: self._on_open_failed,
            ChannelEof: self._on_eof,
            ChannelClosed: self._on_closed,
            ChannelRequest: self._on_request,
            ChannelRequestReply: self._on_request_reply,
            GlobalRequest: self._on_global,
            GlobalRequestReply: self._on_global_reply,
            HandshakeComplete: self._on_handshake_complete,
            HostKeyUnverified: self._on_host_key_unverified,
            ConnectionTerminated: self._on_terminated,
            AuthRequested: self._on_auth_requested,
            AuthSucceeded: self._on_auth_answer,
            AuthFailed: self._on_auth_answer,
        }
        # Nobody may ever await these (a server connection's handshake, say): mark their
        # exceptions retrieved so asyncio does not log them as lost.
        self._established.add_done_callback(retrieve)
        self._closed.add_done_callback(retrieve)

    def __repr__(self) -> str:
        return f"<QsmpConnection {self.number} {self.peer}>"

    # -- public state

    @property
    def peer(self) -> str:
        p = self.peername
        if isinstance(p, tuple) and len(p) >= 2:
            return f"{p[0]}:{p[1]}"
        return str(p)

    @property
    def core(self) -> Connection:
        """The sans-IO connection (for tests and diagnostics)."""
        return self._core

    @property
    def established(self) -> bool:
        return self._established.done() and self._established.exception() is None

    @property
    def is_closing(self) -> bool:
        return self._core.closed or self._transport is None or self._closing

    @property
    def write_buffer_size(self) -> int:
        """Bytes sealed and waiting for the socket."""
        size = self._wqueued
        if self._transport is not None:
            size += self._transport.get_write_buffer_size()
        return size

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    def _now(self) -> float:
        return self.loop.time() + self._offset

    # -- application API

    async def wait_established(self) -> None:
        await asyncio.shield(self._established)

    async def open_channel(self, kind: str, payload: bytes = b"") -> Channel:
        """Open a channel; returns once the peer accepted it, raises
        :class:`ChannelOpenError` if it refused, :class:`ConnectionLost` if the connection
        ended first."""
        waiter: asyncio.Future[Channel] = self.loop.create_future()
        self._send_open(kind, payload, waiter)
        return await waiter

    def _send_open(self, kind: str, payload: bytes,
                   waiter: asyncio.Future[Channel] | OpenAnswer) -> None:
        if self._lost is not None:
            raise self._lost
        if self._core.closed:
            raise ConnectionLost(self.terminated)
        channel_id = self._core.mux.open_channel(kind, payload)
        channel = Channel(self, channel_id, kind, bytes(payload), _OPENING)
        self._channels[channel_id] = channel
        self._opening[channel_id] = waiter
        self._pump()

    def open_channel_nowait(self, kind: str, payload: bytes, answer: OpenAnswer) -> None:
        """:meth:`open_channel` without a coroutine or a future, for a caller that runs in
        a callback (a forwarded socket just accepted): the open is sent now, and
        ``answer(channel, None)`` or ``answer(None, error)`` (:class:`ChannelOpenError`,
        :class:`ConnectionLost`) is called from the event processing that receives the
        peer's answer, with no turn of the event loop in between. ``answer`` must not
        wait; an exception from it aborts the channel and is logged. Raises as
        :meth:`open_channel` does when the open cannot even be sent."""
        self._send_open(kind, payload, answer)

    def _answer_open(self, answer: OpenAnswer, channel: Channel | None,
                     error: Exception | None) -> None:
        try:
            answer(channel, error)
        except Exception:
            log.exception("conn=%d: channel open callback failed", self.number)
            if channel is not None:
                channel.abort()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Whatever the calls inside produce (an EOF and a CLOSE, say) goes out together
        at the end, in one write, rather than one write each."""
        if self._pumping:
            yield  # inside event processing already: the running pump sends it all
            return
        self._pumping = True
        try:
            yield
        finally:
            self._pumping = False
            self._pump()

    def set_channel_handler(self, handler: ChannelHandler | None) -> None:
        """Serve the channels the peer opens from now on with ``handler`` (what
        ``on_channel`` of :func:`connect`, :func:`serve` and :func:`adopt` sets): it gets
        each one unanswered, to :meth:`Channel.accept` or :meth:`Channel.reject`. None
        refuses them (administratively prohibited), the default. For a program that knows
        only once connected which channels it expects (qsh's ``-R`` tunnels)."""
        self._on_channel = handler

    def set_open_hook(self, hook: Callable[[Channel], bool] | None) -> None:
        """``hook(channel)`` sees each channel the peer opens first, in the event processing
        that received the open (no task, no turn of the loop); True means it took the
        channel (answered it, or will), and the channel handler is not run for it. It must
        not wait; an exception from it refuses the channel and is logged. For a channel
        kind served by callbacks (a tunnel's ``direct-tcpip``, :mod:`qshd.tunnels`)."""
        self._open_hook = hook

    async def global_request(self, name: str, payload: bytes = b"", *,
                             want_reply: bool = True) -> tuple[bool, bytes] | None:
        if self._lost is not None:
            raise self._lost
        self._core.mux.global_request(name, payload, want_reply)
        waiter: asyncio.Future[tuple[bool, bytes]] | None = None
        if want_reply:
            waiter = self.loop.create_future()
            self._global_replies.append(waiter)
        self._pump()
        return None if waiter is None else await waiter

    def set_interactive(self, on: bool = True) -> None:
        """A PTY session starts (``on``) or ends: while any is open, small channel writes
        go out on the keystroke clock when the server agreed to keystroke obfuscation.
        Counted, as ssh asks whether any channel still has a tty: a ControlMaster's
        connection outlives its sessions, and a clock left running by one ``-tt`` run
        would hold every later session's small writes for a tick (issue 15)."""
        self._pty_sessions = max(self._pty_sessions + (1 if on else -1), 0)
        self._core.set_interactive(self._pty_sessions > 0)
        self._pump()

    def request_rekey(self) -> None:
        """Rekey our transmit direction now (the peer rekeys its own when it wants)."""
        self._core.request_rekey()
        self._pump()

    def close(self, reason: str = "") -> None:
        """Clean shutdown: tell the peer, flush, close the socket. Idempotent."""
        if self._transport is None:
            return
        try:
            self._core.close(reason)
            self._pump()
        except Exception as exc:  # never let a bug keep the socket open
            self._crash(exc)
        self._close_when_flushed()

    def abort(self) -> None:
        """Drop the connection at once, without telling the peer."""
        self._wqueue.clear()
        self._wqueued = 0
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> QsmpConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # -- asyncio protocol, sending: common/aio/socket_side.py (SocketSide)

    # -- the engine (pump, timer, crash, tasks): common/aio/engine.py (Engine)

    # -- events

    def _on_handshake_complete(self, event: HandshakeComplete) -> None:
        self.suite = event.suite
        self.session_id = event.session_id
        self.host_key = event.host_key
        log.debug("conn=%d: established (%s, %s, %s)", self.number, event.suite.kem,
                  event.suite.signature, event.suite.aead)
        if not self._established.done():
            self._established.set_result(None)

    # -- login: the server's decision here; the client's and host keys: common/aio/login.py

    def _on_auth_requested(self, event: AuthRequested) -> None:
        self._spawn(self._decide_auth(event), "login decision")

    async def _decide_auth(self, event: AuthRequested) -> None:
        accept = False
        if self._on_auth is not None:
            try:
                accept = bool(await self._on_auth(self, event))
            except Exception:
                log.exception("conn=%d: login handler failed; refusing", self.number)
        if self._core.closed:
            return
        try:
            if accept:
                self._core.accept_auth()
            else:
                self._core.reject_auth(self._now())
            self._pump()
        except Exception as exc:
            self._crash(exc)

    async def accept_and_hand_off(self, timeout: float | None = None) -> bytes:
        """Server, inside ``on_auth``: accept the pending login, stop reading the socket
        at once (whatever the client sends next stays in the kernel for the next
        process), wait until everything sealed is written (at most ``timeout`` seconds,
        :data:`HANDOFF_FLUSH_TIMEOUT` by default), then return the state for
        :func:`adopt` in the process that serves the user. This connection is detached
        afterwards: it neither reads nor writes, and its socket is neither closed nor
        shut down (the process exits, or closes its copy of the descriptor, when done).
        What ``on_auth`` returns after this no longer matters.

        Raises :class:`~common.errors.UsageError` *before* accepting anything if the
        connection cannot be handed over now (a rekey in progress, say): refuse the login
        then. :class:`ConnectionLost` or :class:`TimeoutError` after accepting: the
        connection is gone."""
        return await accept_then_hand_off(
            self, HANDOFF_FLUSH_TIMEOUT if timeout is None else timeout)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if self.terminated is not None:
            return
        self.terminated = event
        level = logging.DEBUG if event.code == ErrorCode.NONE else logging.INFO
        log.log(level, "conn=%d: terminated (code 0x%02x%s): %s", self.number, event.code,
                ", by peer" if event.by_peer else "", event.reason)
        lost = ConnectionLost(event)
        self._lost = lost
        if not self._established.done():
            self._established.set_exception(termination_error(event))
        if self._auth_answer is not None and not self._auth_answer.done():
            self._auth_answer.set_exception(termination_error(event))
        opening = list(self._opening.values())
        self._opening.clear()
        for waiter in opening:
            if not isinstance(waiter, asyncio.Future):
                self._answer_open(waiter, None, lost)
            elif not waiter.done():
                waiter.set_exception(lost)
        for channel in list(self._channels.values()):
            channel._finish(lost)
        self._channels.clear()
        while self._global_replies:
            waiter2 = self._global_replies.popleft()
            if not waiter2.done():
                waiter2.set_exception(lost)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = None
        # The _pump that delivered this event writes the core's last words, then closes.

    # -- events on channels we have, answers to ours: common/aio/channel_events.py

    def _on_open_request(self, event: ChannelOpenRequest) -> None:
        channel = Channel(self, event.channel_id, event.kind, event.payload, _ACCEPTING)
        self._channels[event.channel_id] = channel
        if self._open_hook is not None and self._hook_took(self._open_hook, channel):
            return
        if self._on_channel is None:
            channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                           "channels are not accepted here")
            return
        self._spawn(self._run_channel_handler(self._on_channel, channel), "channel handler")

    def _hook_took(self, hook: Callable[[Channel], bool], channel: Channel) -> bool:
        try:
            return hook(channel)
        except Exception:
            log.exception("conn=%d chan=%d: channel open hook failed", self.number, channel.id)
            with contextlib.suppress(Exception):
                if not channel.answered:
                    channel.reject(OpenFailureReason.CONNECT_FAILED, "internal error")
                else:
                    channel.abort()
            return True

    async def _run_channel_handler(self, handler: ChannelHandler, channel: Channel) -> None:
        try:
            await handler(self, channel)
        except (ConnectionLost, ChannelClosedError) as exc:
            log.debug("conn=%d chan=%d: handler ended: %s", self.number, channel.id, exc)
        except Exception:
            log.exception("conn=%d chan=%d: channel handler failed", self.number, channel.id)
            try:
                if not channel.answered:
                    channel.reject(OpenFailureReason.CONNECT_FAILED, "internal error")
                else:
                    channel.abort()
            except Exception:
                log.debug("conn=%d chan=%d: could not close", self.number, channel.id,
                          exc_info=True)
            return
        # A handler that returns is done with its channel.
        try:
            if not channel.answered:
                channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED, "refused")
            else:
                channel.close()
        except Exception as exc:
            self._crash(exc)

    def _on_global(self, event: GlobalRequest) -> None:
        handler = self._on_global_request
        if handler is None:
            if event.want_reply:
                self._core.mux.global_reply(False)
            return
        self._spawn(self._run_global_handler(handler, event), "global request handler")

    async def _run_global_handler(self, handler: GlobalRequestHandler,
                                  event: GlobalRequest) -> None:
        ok, payload = False, b""
        try:
            ok, payload = await handler(self, event)
        finally:
            if event.want_reply and not self._core.closed:
                self._core.mux.global_reply(ok, payload)
                self._pump()


# Handing a logged-in connection to another process: common/aio/handoff.py
