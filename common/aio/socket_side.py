"""The socket side of a :class:`~common.aio.connection.QsmpConnection`: asyncio's protocol
callbacks, our zero-copy send queue and its flush, the read gate, closing once flushed and
releasing the socket for a hand-off. Every byte in or out of the socket passes here, so
this is where to look for buffering, back-pressure and how a connection's socket ends."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from common.aio.limits import (
    _IOV_BATCH,
    _ZERO_COPY_SEND,
    CLOSE_FLUSH_TIMEOUT,
    LINGER_TIMEOUT,
    PRE_AUTH_SEND_HIGH_WATER,
    PRE_AUTH_SEND_LOW_WATER,
    READ_PAUSE_HIGH_WATER,
    READ_PAUSE_LOW_WATER,
    TRANSPORT_HIGH_WATER,
    TRANSPORT_LOW_WATER,
    WRITE_HIGH_WATER,
    WRITE_LOW_WATER,
)
from common.aio.timer import PreciseTimer
from common.errors import ErrorCode
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
    _lingering: bool
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

    # -- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.peername = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._pre_auth:
            transport.set_write_buffer_limits(PRE_AUTH_SEND_HIGH_WATER, PRE_AUTH_SEND_LOW_WATER)
        else:
            transport.set_write_buffer_limits(TRANSPORT_HIGH_WATER, TRANSPORT_LOW_WATER)
        if sock is not None and _ZERO_COPY_SEND:
            try:
                self._wsock = sock.dup()
            except OSError:
                self._wsock = None
            else:
                self._wsock.setblocking(False)
        log.debug("conn=%d: connected to %s", self.number, self.peer)
        try:
            self._core.start(self._now())
            self._pump()
        except Exception as exc:
            self._crash(exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv_pre_auth if self._pre_auth else self._recv

    def buffer_updated(self, nbytes: int) -> None:
        if self._lingering:
            return  # after our last words: read only to keep the socket from resetting
        try:
            self._core.receive_data(self._recv[:nbytes], self.loop.time() + self._offset)
            self._pump()
        except Exception as exc:
            self._crash(exc)

    def eof_received(self) -> bool | None:
        if self._lingering:
            return None  # the peer closed too: the transport closes now
        try:
            self._core.receive_data(b"", self._now())
            self._pump()
        except Exception as exc:
            self._crash(exc)
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("conn=%d: socket closed%s", self.number, f": {exc}" if exc else "")
        self._release_socket()
        try:
            if not self._core.closed:
                self._core.receive_data(b"", self._now())
            self._pump()
        except Exception as error:
            self._crash(error)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.terminated is None:  # the core never reported it (a crash)
            self._on_terminated(ConnectionTerminated(ErrorCode.CHANNEL_DOWN,
                                                     str(exc or "connection lost"), True))
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._transport_paused = True
        self._write_paused = True

    def resume_writing(self) -> None:
        self._transport_paused = False
        if self._wqueued <= WRITE_LOW_WATER:
            self._resume()
        self._gate()

    def _resume(self) -> None:
        self._write_paused = False
        for channel in list(self._channels.values()):
            channel._wake_drain()

    # -- sending

    def _send(self, out: list[bytes | bytearray | memoryview]) -> None:
        """Write the core's records without copying them.

        Python 3.11's ``transport.writelines`` joins its arguments into one new bytes
        object and copies whatever the kernel does not take at once into a bytearray
        (py-spy: a fifth of the sender's samples). We send with ``sendmsg`` (scatter/
        gather) on a duplicate of the socket, and keep what did not fit as views in a
        queue that a writer callback drains; the transport still reads and closes.
        Measured with :func:`tune_allocator` in effect: 0.35 instead of 0.45 CPU seconds
        per GiB sent. (Without it, keeping records alive until sent makes glibc mmap each
        one afresh and this path is slower, 0.85 s: the two go together.)
        """
        sock = self._wsock
        if sock is None:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.writelines(out)
            return
        queue = self._wqueue
        if queue:
            queue.extend(out)
            self._wqueued += sum(map(len, out))
        else:
            queue.extend(out)
            self._wqueued = sum(map(len, out))
            self._flush_queue()
            if queue and not self._writing:
                self.loop.add_writer(sock.fileno(), self._on_socket_writable)
                self._writing = True
        if self._wqueued > WRITE_HIGH_WATER:
            self._write_paused = True

    def _flush_queue(self) -> None:
        """Send from the queue until it is empty or the kernel is full."""
        sock = self._wsock
        queue = self._wqueue
        assert sock is not None
        while queue:
            batch = list(itertools.islice(queue, _IOV_BATCH)) if len(queue) > 1 else [queue[0]]
            try:
                sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("conn=%d: send failed: %s", self.number, exc)
                queue.clear()
                self._wqueued = 0
                if self._transport is not None:
                    self._transport.abort()
                return
            self._wqueued -= sent
            for buf in batch:
                size = len(buf)
                if sent >= size:
                    queue.popleft()
                    sent -= size
                else:
                    if sent:
                        queue[0] = memoryview(buf)[sent:]
                    return  # the kernel took less than offered: it is full

    def _on_socket_writable(self) -> None:
        try:
            self._flush_queue()
            if not self._wqueue:
                self._stop_writing()
                if self._closing:
                    self._close_transport()
            if self._write_paused and self._wqueued <= WRITE_LOW_WATER \
                    and not self._transport_paused:
                self._resume()
            self._gate()
        except Exception as exc:
            self._crash(exc)

    def _gate(self) -> None:
        """Server: pause reading while more than the high-water mark of our bytes wait for
        the peer, resume at the low mark; the marks are the pre-login budget's until the
        core admits the peer. Called whenever the amount waiting may have crossed one."""
        transport = self._transport
        if not self._gate_reading or transport is None:
            return
        if self._pre_auth and not self._core.pre_auth:
            self._pre_auth = False
            transport.set_write_buffer_limits(TRANSPORT_HIGH_WATER, TRANSPORT_LOW_WATER)
        if self._pre_auth:
            high, low = PRE_AUTH_SEND_HIGH_WATER, PRE_AUTH_SEND_LOW_WATER
        else:
            high, low = READ_PAUSE_HIGH_WATER, READ_PAUSE_LOW_WATER
        waiting = self._wqueued + transport.get_write_buffer_size()
        if self._read_paused:
            if waiting <= low:
                self._read_paused = False
                transport.resume_reading()
        elif waiting > high and not transport.is_closing():
            self._read_paused = True
            transport.pause_reading()

    def _stop_writing(self) -> None:
        if self._writing and self._wsock is not None:
            self.loop.remove_writer(self._wsock.fileno())
        self._writing = False

    def _close_when_flushed(self) -> None:
        """Close the socket once everything queued has been sent (or after a grace
        period, so a peer that stops reading cannot keep a dead connection open)."""
        transport = self._transport
        if transport is None or self._closing:
            return
        self._closing = True
        if not self._wqueue:
            self._close_transport()
        else:
            self._close_timer = self.loop.call_later(CLOSE_FLUSH_TIMEOUT, self.abort)

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._lingering:
            return
        ended = self.terminated
        if ended is not None and not ended.by_peer and ended.code != ErrorCode.NONE \
                and transport.can_write_eof():
            self._linger(transport)
        else:
            transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Half-close after our error record, read and drop what the peer still sends, and
        close when it does (or after :data:`LINGER_TIMEOUT`). A close() now would let the
        kernel answer the peer's next bytes (a window adjust of a stream it is still
        reading) with RST, which drops whatever of ours the peer had not received yet, the
        error record included: the peer would see "connection closed", not why."""
        try:
            transport.write_eof()
        except OSError:  # the peer is gone already (a reset, or it closed first)
            transport.close()
            return
        self._lingering = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self.loop.call_later(LINGER_TIMEOUT, transport.close)
        self._read_paused = False
        transport.resume_reading()

    def _release_socket(self) -> None:
        self._stop_writing()
        self._wqueue.clear()
        self._wqueued = 0
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._precise is not None:
            self._precise.close()
            self._precise = None
        if self._wsock is not None:
            self._wsock.close()
            self._wsock = None
