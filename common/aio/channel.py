"""A channel as an application sees it: a byte stream with flow control, its stderr
stream and its requests (:class:`Channel`)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from common.aio.chunks import ChunkQueue
from common.aio.errors import ChannelClosedError, ConnectionLost
from common.aio.limits import CHANNEL_HIGH_WATER
from common.errors import UsageError
from common.protocol.mux import (
    EXTENDED_DATA_STDERR,
    ChannelRequest,
    OpenFailureReason,
)

if TYPE_CHECKING:
    from common.aio.connection import QsmpConnection

log = logging.getLogger("qsh.aio")


class ReadStream:
    """Received data of one channel stream (normal or stderr), as the core's chunks.

    The chunks (a :class:`~common.aio.chunks.ChunkQueue`) are views of the records'
    plaintexts (``mux.ChannelData``), not copies.
    :meth:`read_view` hands them on as they are (the copy engine writes them to the file
    from there); every other read returns ``bytes``, copying a view at that point, which
    is where the mux used to copy every chunk."""

    __slots__ = ("_channel", "_eof", "_on_data", "_on_eof", "_queue", "_waiter")

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._queue: ChunkQueue[bytes | memoryview] = ChunkQueue()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        #: Push delivery (:meth:`Channel.set_consumer`) instead of the buffer.
        self._on_data: Callable[[bytes], None] | None = None
        self._on_eof: Callable[[], None] | None = None

    # -- fed by the connection
    def _feed(self, data: bytes | memoryview) -> None:
        on_data = self._on_data
        if on_data is not None:
            on_data(data if type(data) is bytes else bytes(data))
            return
        self._queue.append(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _set_eof(self) -> None:
        self._eof = True
        on_eof = self._on_eof
        if on_eof is not None and self._channel._lost is None:
            self._on_eof = None  # once
            on_eof()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def buffered(self) -> int:
        return self._queue.size

    def at_eof(self) -> bool:
        return self._eof and not self._queue.size

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("another task is already reading this channel stream")
        waiter = self._channel.connection.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _take(self, n: int, *, grant: bool = True) -> bytes:
        """Up to ``n`` (all if n < 0) buffered bytes; no copy when a whole chunk of bytes
        fits. ``grant``: reopen the peer's window by as much (else the caller grants)."""
        data = self._queue.take(n)
        if grant:
            self._channel._consumed(len(data))
        return data if type(data) is bytes else bytes(data)

    async def read(self, n: int = -1) -> bytes:
        """What has arrived, waiting only if nothing has: at most ``n`` bytes, or with
        ``n < 0`` the next chunk as the peer's record carried it (no copy); ``b""`` at the
        end of the stream. Like ``socket.recv``, it may return less than is buffered."""
        if n == 0:
            return b""
        queue = self._queue
        while not queue.size:
            if self._eof:
                self._channel._raise_if_lost()
                return b""
            await self._wait()
        data = queue.take(n) if n >= 0 else queue.take_first()
        self._channel._consumed(len(data))
        return data if type(data) is bytes else bytes(data)

    async def read_view(self) -> memoryview:
        """:meth:`read` of the next chunk as the peer's record carried it, as a view of
        the record and never a copy (empty at the end of the stream). The view is the
        caller's to keep: nothing reuses the memory behind it."""
        queue = self._queue
        while not queue.size:
            if self._eof:
                self._channel._raise_if_lost()
                return memoryview(b"")
            await self._wait()
        data = queue.take_first()
        self._channel._consumed(len(data))
        return memoryview(data)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` if the stream ends first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        queue = self._queue
        while queue.size < n:
            if self._eof:
                self._channel._raise_if_lost()
                partial = self._take(-1) if queue.size else b""
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait()
        if not n:
            return b""
        data = queue.take(n)
        self._channel._consumed(n)
        return data if type(data) is bytes else bytes(data)

    async def read_to_eof(self) -> bytes:
        parts = []
        while data := await self.read():
            parts.append(data)
        return b"".join(parts)

    def __aiter__(self) -> ReadStream:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data


# Channel states
_ACCEPTING = "accepting"  # the peer asked; we have not answered
_OPENING = "opening"  # we asked; no answer yet
_OPEN = "open"
_CLOSED = "closed"  # both CLOSEs exchanged, refused, or the connection is gone


class Channel:
    """One multiplexed byte stream (plus its stderr stream and requests).

    Reading: :meth:`read`, :meth:`readexactly`, :meth:`read_to_eof`, ``async for chunk in
    channel``; :attr:`stderr` (or :meth:`read_stderr`) is the extended-data stream, kept
    apart. Every read grants the consumed bytes back to the peer's window.

    Writing: :meth:`write` queues and sends at once as far as the peer's window allows;
    ``await`` :meth:`drain` to wait while too much is queued. ``bytes`` are sent without a
    copy; other buffers are copied first, because the caller may reuse them.

    Without a task: :meth:`set_consumer` pushes received data to a callback (the window
    reopens only by :meth:`grant`), :attr:`write_blocked` and :meth:`set_writable_callback`
    replace :meth:`drain`, :meth:`add_close_callback` replaces :meth:`wait_closed`.
    """

    def __init__(self, connection: QsmpConnection, channel_id: int, kind: str, payload: bytes,
                 state: str) -> None:
        self.connection = connection
        self.id = channel_id
        self.kind = kind
        #: The payload of the open request (ours or the peer's).
        self.payload = payload
        #: The payload of the peer's open confirmation (for channels we opened).
        self.reply_payload = b""
        self.stdout = ReadStream(self)
        self.stderr = ReadStream(self)
        self._state = state
        self._write_closed = False  # EOF or CLOSE sent (or queued) by us
        self._lost: ConnectionLost | None = None  # reads fail: lost before EOF
        self._conn_lost: ConnectionLost | None = None  # writes and requests fail
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed = connection.loop.create_future()
        self._requests: deque[ChannelRequest] = deque()
        self._request_waiter: asyncio.Future[None] | None = None
        self._replies: deque[asyncio.Future[tuple[bool, bytes]]] = deque()
        self._on_writable: Callable[[], None] | None = None
        self._close_callbacks: list[Callable[[Channel], None]] = []
        self.high_water = CHANNEL_HIGH_WATER

    def __repr__(self) -> str:
        return (f"<Channel {self.id} {self.kind} {self._state} "
                f"conn={self.connection.number}>")

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    @property
    def lost(self) -> ConnectionLost | None:
        """How the connection ended, if it ended while this channel was still open (before
        both CLOSEs were exchanged); None otherwise. An exit status that arrived on such a
        channel is not final: output may have been cut behind it."""
        return self._conn_lost

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    # -- answering an open (channels the peer opened)

    def accept(self, payload: bytes = b"") -> None:
        if self._conn_lost is not None:
            raise self._conn_lost  # the peer went away before we answered
        if self._state != _ACCEPTING:
            raise UsageError(f"channel {self.id} is not awaiting an answer")
        self.connection._core.mux.accept_channel(self.id, payload)
        self._state = _OPEN
        self.connection._pump()

    def reject(self, reason: int = OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
               message: str = "") -> None:
        if self._state == _CLOSED:
            return  # the connection went away first: nobody to answer
        if self._state != _ACCEPTING:
            raise UsageError(f"channel {self.id} is not awaiting an answer")
        conn = self.connection
        conn._core.mux.reject_channel(self.id, reason, message)
        conn._channels.pop(self.id, None)
        self._finish(None)
        conn._pump()

    @property
    def answered(self) -> bool:
        return self._state != _ACCEPTING

    # -- reading

    async def read(self, n: int = -1) -> bytes:
        return await self.stdout.read(n)

    async def read_view(self) -> memoryview:
        """The next chunk without a copy (:meth:`ReadStream.read_view`)."""
        return await self.stdout.read_view()

    async def readexactly(self, n: int) -> bytes:
        return await self.stdout.readexactly(n)

    async def read_to_eof(self) -> bytes:
        return await self.stdout.read_to_eof()

    async def read_stderr(self, n: int = -1) -> bytes:
        return await self.stderr.read(n)

    def at_eof(self) -> bool:
        return self.stdout.at_eof()

    def __aiter__(self) -> ReadStream:
        return self.stdout

    # -- push delivery (callbacks instead of reads and drains, for byte pumps that run
    # without a task: common.forward.pump)

    def set_consumer(self, on_data: Callable[[bytes], None],
                     on_eof: Callable[[], None]) -> None:
        """Deliver received data by calling ``on_data(chunk)`` as each record arrives
        (what was already buffered first, at once), and ``on_eof()`` once at the peer's
        EOF -- not when the connection is lost before it: :meth:`add_close_callback` says
        that. Reads no longer see this stream. Flow control is the consumer's: the peer's
        window reopens only by :meth:`grant`, so grant what has been passed on (to a
        socket that took it), and hold back while the destination is backed up. The
        callbacks run inside the connection's event processing: they must not raise
        and must not wait."""
        stream = self.stdout
        if stream._waiter is not None:
            raise RuntimeError("a task is already reading this channel")
        while stream._queue.size:
            on_data(stream._take(-1, grant=False))
        stream._on_data = on_data
        if stream._eof:
            if self._lost is None:
                on_eof()
        else:
            stream._on_eof = on_eof

    def grant(self, n: int) -> None:
        """Reopen the peer's window by ``n`` bytes delivered through :meth:`set_consumer`
        and taken by their destination."""
        try:
            self._consumed(n)
        except UsageError:
            # Delivered in the same batch of events as the peer's CLOSE, which the core
            # has already acted on: no window left to reopen.
            return

    @property
    def write_blocked(self) -> bool:
        """What :meth:`drain` would wait for: more than :attr:`high_water` written bytes
        waiting for window, or the connection's socket backed up. :meth:`set_writable_callback`
        says when it may have cleared."""
        conn = self.connection
        return conn._write_paused or (
            self._state == _OPEN and conn._core.mux.pending(self.id) > self.high_water)

    def set_writable_callback(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` whenever :attr:`write_blocked` may have become false (the
        peer opened its window, the socket drained); it runs inside the connection's event
        processing and must not raise."""
        self._on_writable = callback

    def add_close_callback(self, callback: Callable[[Channel], None]) -> None:
        """Call ``callback(channel)`` once the channel is closed: both CLOSEs exchanged,
        refused, or the connection gone (then :attr:`lost` says how). It runs inside the
        connection's event processing that saw the end (no extra turn of the loop for
        each closed channel; at once if it is closed already) and must not raise."""
        if self._state == _CLOSED:
            callback(self)
        else:
            self._close_callbacks.append(callback)

    def _consumed(self, n: int) -> None:
        if self._state != _OPEN:
            return  # closed: nothing left to grant
        conn = self.connection
        mux = conn._core.mux
        mux.acknowledge(self.id, n)
        if mux.has_outgoing:
            conn._pump()

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise self._lost

    # -- writing

    def _check_writable(self) -> None:
        if self._conn_lost is not None:
            raise self._conn_lost
        if self._state != _OPEN or self._write_closed:
            raise ChannelClosedError(f"channel {self.id} is {self._state}"
                                     + (" for writing" if self._write_closed else ""))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        if type(data) is not bytes:
            data = bytes(data)
        if data:
            conn = self.connection
            mux = conn._core.mux
            mux.send_data(self.id, data)
            if mux.has_outgoing:
                conn._pump()

    def write_stderr(self, data: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        if type(data) is not bytes:
            data = bytes(data)
        if data:
            self.connection._core.mux.send_data(self.id, data, EXTENDED_DATA_STDERR)
            self.connection._pump()

    @property
    def pending(self) -> int:
        """Written bytes still waiting for the peer's window."""
        if self._state != _OPEN:
            return 0
        return self.connection._core.mux.pending(self.id)

    async def drain(self) -> None:
        """Wait until at most :attr:`high_water` written bytes wait for window and the
        socket is not backed up. Raises if the channel or connection went away."""
        conn = self.connection
        while True:
            if self._conn_lost is not None:
                raise self._conn_lost
            if self._state == _CLOSED:
                raise ChannelClosedError(f"channel {self.id} closed")
            if not conn._write_paused and (
                    self._state != _OPEN or conn._core.mux.pending(self.id) <= self.high_water):
                return
            if self._drain_waiter is not None:
                raise RuntimeError("another task is already draining this channel")
            waiter = conn.loop.create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                if self._drain_waiter is waiter:
                    self._drain_waiter = None

    def _wake_drain(self) -> None:
        if self._on_writable is not None:
            self._on_writable()
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def write_eof(self) -> None:
        """Half-close: the peer reads EOF after everything written so far."""
        if self._state != _OPEN or self._write_closed:
            return
        self._write_closed = True
        self.connection._core.mux.send_eof(self.id)
        self.connection._pump()

    def close(self) -> None:
        """Close after everything written has gone out; :meth:`wait_closed` waits for the
        peer's answer. Idempotent."""
        self._close(abort=False)

    def abort(self) -> None:
        """Close at once, dropping data still waiting for window."""
        self._close(abort=True)

    def _close(self, *, abort: bool) -> None:
        if self._state == _ACCEPTING:
            self.reject()
            return
        if self._state == _CLOSED or self.connection._core.closed:
            return
        self._write_closed = True
        try:
            self.connection._core.mux.close_channel(self.id, abort=abort)
        except UsageError:
            return  # already freed by the peer's CLOSE
        self.connection._pump()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    # -- requests

    async def request(self, name: str, payload: bytes = b"", *, want_reply: bool = True
                      ) -> tuple[bool, bytes] | None:
        """Send a channel request; with ``want_reply``, wait for ``(ok, payload)``."""
        self._check_open()
        conn = self.connection
        conn._core.mux.send_request(self.id, name, payload, want_reply)
        waiter: asyncio.Future[tuple[bool, bytes]] | None = None
        if want_reply:
            waiter = conn.loop.create_future()
            self._replies.append(waiter)
        conn._pump()
        if waiter is None:
            return None
        return await waiter

    def _check_open(self) -> None:
        if self._conn_lost is not None:
            raise self._conn_lost
        if self._state != _OPEN:
            raise ChannelClosedError(f"channel {self.id} is {self._state}")

    async def next_request(self) -> ChannelRequest | None:
        """The next request from the peer, or None once the channel is closed. Answer those
        with ``want_reply`` through :meth:`reply`, in order."""
        while not self._requests:
            if self._state == _CLOSED:
                return None
            waiter = self.connection.loop.create_future()
            self._request_waiter = waiter
            try:
                await waiter
            finally:
                if self._request_waiter is waiter:
                    self._request_waiter = None
        return self._requests.popleft()

    def reply(self, ok: bool, payload: bytes = b"") -> None:
        """Answer the oldest unanswered request from the peer."""
        self._check_open()
        self.connection._core.mux.reply(self.id, ok, payload)
        self.connection._pump()

    def _wake_requests(self) -> None:
        waiter = self._request_waiter
        if waiter is not None:
            self._request_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- teardown (called by the connection)

    def _finish(self, lost: ConnectionLost | None) -> None:
        if self._state == _CLOSED:
            return
        clean = lost is None or self.stdout._eof
        self._state = _CLOSED
        self._conn_lost = lost
        if not clean:
            self._lost = lost
        self.stdout._set_eof()
        self.stderr._set_eof()
        self._wake_drain()
        self._wake_requests()
        error = lost or ChannelClosedError(f"channel {self.id} closed")
        while self._replies:
            waiter = self._replies.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("chan=%d: close callback failed", self.id)
        if not self._closed.done():
            self._closed.set_result(None)
