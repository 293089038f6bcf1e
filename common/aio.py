"""The asyncio adapter: the only code of qsh that touches sockets, timers and tasks.

The sans-IO :class:`~common.connection.Connection` does all the protocol work; this module
moves its bytes, fires its timers and turns its events into awaitable objects:

* :func:`connect` returns a :class:`QsmpConnection` once the handshake is complete;
* :func:`serve` listens and calls ``on_channel(connection, channel)`` for every channel a
  peer opens; each connection is isolated (a failure in one, even a bug of ours, closes
  only that connection and is logged);
* :class:`Channel` is a byte stream with flow control: ``read`` / ``readexactly`` /
  ``read_stderr``, ``write`` + ``drain``, ``write_eof``, ``close``, and channel requests.

Speed (DESIGN.md section 5) decides the shape of the hot path. There are no asyncio
streams: the connection is an :class:`asyncio.BufferedProtocol` that receives straight
into one large preallocated buffer (shared by all connections of a loop, because the core
copies what it keeps before ``buffer_updated`` returns) and hands the core a memoryview of
it; records go out with one ``writelines`` of the core's buffers. Writes are sent at once
(no per-write task switch); reads acknowledge window as the application consumes data, so
a slow reader throttles the sender instead of growing our buffers.

Time: the core is given ``loop.time()`` shifted to the wall clock at connection start
(monotonic, so timers are immune to clock steps, yet close enough to the epoch for key
expiration checks, which compare ``now`` with a Unix time).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from common.accounts.keys import HostKey, PublicKey
from common.crypto.rng import Rng
from common.errors import (
    BY_CODE,
    ConnectionClosed,
    ErrorCode,
    QsmpError,
    RemoteReportedError,
    UsageError,
)
from common.protocol.auth import AuthFailed, AuthRequested, AuthSucceeded
from common.protocol.connection import (
    Connection,
    ConnectionTerminated,
    HandshakeComplete,
    HostKeyUnverified,
)
from common.protocol.handshake import ClientHandshake, Role, ServerHandshake
from common.protocol.mux import (
    EXTENDED_DATA_STDERR,
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
from common.protocol.transport import TransportSettings

__all__ = [
    "CHANNEL_HIGH_WATER",
    "DEFAULT_CONNECT_TIMEOUT",
    "RECEIVE_BUFFER_SIZE",
    "AuthHandler",
    "Channel",
    "ChannelClosedError",
    "ChannelHandler",
    "ChannelOpenError",
    "ConnectionLost",
    "HostKeyCallback",
    "QsmpConnection",
    "Server",
    "adopt",
    "connect",
    "serve",
    "tune_allocator",
]

log = logging.getLogger("qsh.aio")

#: One receive buffer per event loop. Large, so that one ``recv_into`` can carry several
#: 256 KiB records and the per-call cost is paid per megabytes, not per record.
RECEIVE_BUFFER_SIZE = 4 * 1024 * 1024
#: :meth:`Channel.drain` waits while more than this many written bytes are still waiting
#: for the peer's window (they are referenced, not copied, so this bounds memory only).
CHANNEL_HIGH_WATER = 4 * 1024 * 1024
#: The socket transport's own buffer limits (asyncio's 64 KiB default is smaller than
#: one record, which would pause writers after every write).
TRANSPORT_HIGH_WATER = 8 * 1024 * 1024
TRANSPORT_LOW_WATER = 2 * 1024 * 1024
#: Our send queue's limits (sealed records the kernel has not taken yet).
WRITE_HIGH_WATER = 8 * 1024 * 1024
WRITE_LOW_WATER = 2 * 1024 * 1024
#: A server stops reading its socket while more than this many bytes of ours wait for the
#: peer (our queue plus the transport's buffer), and reads again once they are down to the
#: low mark. Every answer the peer can ask for -- keep-alive responses, request replies,
#: window adjusts, rekey offers -- is produced by reading, so a peer that sends and never
#: reads is throttled whatever it asks for, not only on channel data (sshd does the same).
#: Channel data is bounded by the peer's windows, so an honest client, which always reads,
#: only ever sees a short pause. A client does not gate its reading: if both ends did,
#: two bulk transfers in opposite directions could stop each other.
READ_PAUSE_HIGH_WATER = WRITE_HIGH_WATER
READ_PAUSE_LOW_WATER = WRITE_LOW_WATER
#: A server connection that has not been admitted (``Connection.pre_auth``: in the
#: handshake, or established but not logged in) runs on a small fixed budget: it reads at
#: most this much per receive call...
PRE_AUTH_READ_SIZE = 16 * 1024
#: ...and stops reading while more than this many bytes of its replies wait for the peer,
#: until they are down to the low mark. With the core's bound on a record before login
#: (``connection.max_preauth_record_body``, ~128 KiB) that keeps such a connection's
#: buffers to a few hundred KiB however it floods (the server's own handshake packets, up
#: to 1.4 MB with McEliece, still go out: reading merely waits for them).
PRE_AUTH_SEND_HIGH_WATER = 64 * 1024
PRE_AUTH_SEND_LOW_WATER = 16 * 1024
#: How long a closing connection may take to flush its last records to a slow peer.
CLOSE_FLUSH_TIMEOUT = 10.0
#: Buffers per sendmsg call (IOV_MAX is 1024 on Linux).
_IOV_BATCH = 512
#: False falls back to transport.writelines (e.g. to compare).
_ZERO_COPY_SEND = True
#: glibc malloc settings applied by :func:`tune_allocator`.
MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 64 * 1024 * 1024
#: Seconds from TCP connect to a complete handshake (the TOFU prompt included).
DEFAULT_CONNECT_TIMEOUT = 60.0

HostKeyCallback = Callable[[PublicKey], Awaitable[bool]]
#: Server: decide one login attempt (the core has checked syntax and key signatures).
AuthHandler = Callable[["QsmpConnection", AuthRequested], Awaitable[bool]]
ChannelHandler = Callable[["QsmpConnection", "Channel"], Awaitable[None]]
GlobalRequestHandler = Callable[["QsmpConnection", GlobalRequest],
                                Awaitable[tuple[bool, bytes]]]

_ids = itertools.count(1)
_receive_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


def _receive_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The loop's shared receive buffer. Sharing is safe because the selector loop calls
    ``get_buffer``, ``recv_into`` and ``buffer_updated`` back to back, and the core copies
    what it keeps during ``buffer_updated``. Windows' proactor loop receives into buffers
    in the background, so there each connection gets its own."""
    if sys.platform == "win32":
        return memoryview(bytearray(RECEIVE_BUFFER_SIZE))
    buf = _receive_buffers.get(loop)
    if buf is None:
        buf = memoryview(bytearray(RECEIVE_BUFFER_SIZE))
        _receive_buffers[loop] = buf
    return buf


_allocator_tuned = False


def tune_allocator() -> None:
    """Keep glibc's malloc from returning record-sized buffers to the kernel after each use.

    Every record costs the core a few buffers of its size (plaintext, ciphertext, the data
    handed to the application). glibc serves blocks over its adaptive mmap threshold with
    fresh mmaps and trims the heap top eagerly, so at 1-2 GB/s the process spends as much
    time in page faults as in AES-GCM (measured: 300k minor faults per GiB sent, 0.85 s of
    CPU per GiB; 10k faults and 0.4 s once tuned). A fixed 32 MiB mmap threshold and a
    64 MiB trim threshold keep those blocks in the heap for reuse; the cost is that up to
    64 MiB of freed heap may stay resident. Process-wide, idempotent, a no-op off glibc;
    :func:`connect` and :func:`serve` call it. Set ``QSH_NO_MALLOC_TUNING=1`` to skip it.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if os.environ.get("QSH_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl has no mallopt)
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
    mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)


# ---------------------------------------------------------------------------------------------
# Errors


class ConnectionLost(ConnectionClosed):
    """The connection ended before the operation could complete. ``terminated`` tells how
    (None if the socket failed before the core knew); ``code`` is its error code."""

    def __init__(self, terminated: ConnectionTerminated | None, message: str = "") -> None:
        self.terminated = terminated
        self.code = terminated.code if terminated is not None else ErrorCode.CHANNEL_DOWN
        if not message:
            message = terminated.reason if terminated is not None else "connection lost"
        super().__init__(message)


class ChannelOpenError(Exception):
    """The peer refused to open a channel (RFC 4254 reason code and its message)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(f"channel open refused ({reason}): {message}")
        self.reason = reason
        self.message = message


class ChannelClosedError(ConnectionError):
    """Writing to (or requesting on) a channel that is closed or half-closed by us."""


def _termination_error(t: ConnectionTerminated) -> QsmpError:
    """The exception that best describes a termination, for callers of :func:`connect`:
    the peer's reported error, our own failure by its code, or :class:`ConnectionLost`."""
    if t.code in (ErrorCode.NONE, ErrorCode.CHANNEL_DOWN):
        return ConnectionLost(t)
    if t.by_peer:
        return RemoteReportedError(t.code, t.reason)
    cls = BY_CODE.get(t.code)
    return cls(t.reason) if cls is not None else ConnectionLost(t)


# ---------------------------------------------------------------------------------------------
# Streams and channels


class _ReadStream:
    """Received data of one channel stream (normal or stderr), as the core's chunks."""

    __slots__ = ("_channel", "_chunks", "_eof", "_offset", "_size", "_waiter")

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # into _chunks[0]
        self._size = 0
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    # -- fed by the connection
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _set_eof(self) -> None:
        self._eof = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def buffered(self) -> int:
        return self._size

    def at_eof(self) -> bool:
        return self._eof and not self._size

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

    def _take(self, n: int) -> bytes:
        """Up to ``n`` (all if n < 0) buffered bytes; no copy when a whole chunk fits."""
        chunks = self._chunks
        first = chunks[0]
        offset = self._offset
        available = len(first) - offset
        if n < 0 or n > self._size:
            n = self._size
        if n == available:
            chunks.popleft()
            self._offset = 0
            data = first if not offset else first[offset:]
        elif n < available:
            data = first[offset : offset + n]
            self._offset = offset + n
        else:
            parts = [memoryview(first)[offset:]]
            chunks.popleft()
            need = n - available
            while need:
                chunk = chunks[0]
                if len(chunk) <= need:
                    parts.append(memoryview(chunk))
                    chunks.popleft()
                    need -= len(chunk)
                else:
                    parts.append(memoryview(chunk)[:need])
                    self._offset = need
                    need = 0
            if not chunks or self._offset == 0:
                self._offset = 0
            data = b"".join(parts)
        self._size -= n
        self._channel._consumed(n)
        return data

    async def read(self, n: int = -1) -> bytes:
        """What has arrived, waiting only if nothing has: at most ``n`` bytes, or with
        ``n < 0`` the next chunk as the peer's record carried it (no copy); ``b""`` at the
        end of the stream. Like ``socket.recv``, it may return less than is buffered."""
        if n == 0:
            return b""
        while not self._size:
            if self._eof:
                self._channel._raise_if_lost()
                return b""
            await self._wait()
        if n < 0:
            n = len(self._chunks[0]) - self._offset
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` if the stream ends first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while self._size < n:
            if self._eof:
                self._channel._raise_if_lost()
                partial = self._take(-1) if self._size else b""
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait()
        return self._take(n) if n else b""

    async def read_to_eof(self) -> bytes:
        parts = []
        while data := await self.read():
            parts.append(data)
        return b"".join(parts)

    def __aiter__(self) -> _ReadStream:
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
        self.stdout = _ReadStream(self)
        self.stderr = _ReadStream(self)
        self._state = state
        self._write_closed = False  # EOF or CLOSE sent (or queued) by us
        self._lost: ConnectionLost | None = None  # reads fail: lost before EOF
        self._conn_lost: ConnectionLost | None = None  # writes and requests fail
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed = connection.loop.create_future()
        self._requests: deque[ChannelRequest] = deque()
        self._request_waiter: asyncio.Future[None] | None = None
        self._replies: deque[asyncio.Future[tuple[bool, bytes]]] = deque()
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

    async def readexactly(self, n: int) -> bytes:
        return await self.stdout.readexactly(n)

    async def read_to_eof(self) -> bytes:
        return await self.stdout.read_to_eof()

    async def read_stderr(self, n: int = -1) -> bytes:
        return await self.stderr.read(n)

    def at_eof(self) -> bool:
        return self.stdout.at_eof()

    def __aiter__(self) -> _ReadStream:
        return self.stdout

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
        if not self._closed.done():
            self._closed.set_result(None)


# ---------------------------------------------------------------------------------------------
# The connection


class QsmpConnection(asyncio.BufferedProtocol):
    """One QSMP connection over TCP. Created by :func:`connect` and :func:`serve`.

    The protocol methods (``connection_made``, ``get_buffer`` ...) are asyncio's; the rest
    is the application's API.
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
        self._on_host_key = on_host_key
        #: connect()'s overall timeout; paused while a person decides on a host key.
        self._connect_deadline: asyncio.Timeout | None = None
        self._on_global_request = on_global_request
        self._transport: asyncio.Transport | None = None
        self._recv = _receive_buffer(loop)
        self._offset = time.time() - loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        # Sending: our own zero-copy queue on a duplicate of the socket (see _send).
        self._wsock: socket.socket | None = None
        self._wqueue: deque[bytes | bytearray | memoryview] = deque()
        self._wqueued = 0
        self._writing = False  # a writer callback is registered
        self._closing = False  # close the transport once the queue is flushed
        self._close_timer: asyncio.TimerHandle | None = None
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
        self._opening: dict[int, asyncio.Future[Channel]] = {}
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
        self._established.add_done_callback(_retrieve)
        self._closed.add_done_callback(_retrieve)

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
        if self._lost is not None:
            raise self._lost
        if self._core.closed:
            raise ConnectionLost(self.terminated)
        channel_id = self._core.mux.open_channel(kind, payload)
        channel = Channel(self, channel_id, kind, bytes(payload), _OPENING)
        self._channels[channel_id] = channel
        waiter: asyncio.Future[Channel] = self.loop.create_future()
        self._opening[channel_id] = waiter
        self._pump()
        return await waiter

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
        try:
            self._core.receive_data(self._recv[:nbytes], self.loop.time() + self._offset)
            self._pump()
        except Exception as exc:
            self._crash(exc)

    def eof_received(self) -> bool | None:
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
        if transport is not None and not transport.is_closing():
            transport.close()

    def _release_socket(self) -> None:
        self._stop_writing()
        self._wqueue.clear()
        self._wqueued = 0
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._wsock is not None:
            self._wsock.close()
            self._wsock = None

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

    # -- events

    def _on_handshake_complete(self, event: HandshakeComplete) -> None:
        self.suite = event.suite
        self.session_id = event.session_id
        self.host_key = event.host_key
        log.debug("conn=%d: established (%s, %s, %s)", self.number, event.suite.kem,
                  event.suite.signature, event.suite.aead)
        if not self._established.done():
            self._established.set_result(None)

    # -- authentication

    @property
    def user(self) -> str | None:
        """The authenticated user (either side), once login succeeded."""
        return self._core.authenticated_user

    def _start_login(self, start: Callable[[], None]) -> asyncio.Future[AuthFailed | None]:
        if self._auth_answer is not None and not self._auth_answer.done():
            raise UsageError("a login attempt is already waiting for its answer")
        self._auth_answer = self.loop.create_future()
        self._auth_answer.add_done_callback(_retrieve)
        terminated = self._core.terminated
        if terminated is not None:  # no answer can come: say why now, not never
            self._auth_answer.set_exception(_termination_error(terminated))
            return self._auth_answer
        start()
        if self._transport is not None:
            self._pump()
        return self._auth_answer

    async def login_password(self, user: str, password: bytes) -> AuthFailed | None:
        """Client: one password attempt. None on success; the server's refusal otherwise
        (it arrives after the server's growing delay)."""
        return await self._start_login(lambda: self._core.authenticate_password(user, password))

    async def login_publickey(self, user: str, key: HostKey) -> AuthFailed | None:
        """Client: one user-key attempt (the key signs this session's ID)."""
        return await self._start_login(lambda: self._core.authenticate_publickey(user, key))

    async def wait_authenticated(self) -> AuthFailed | None:
        """Client: the answer to the attempt :func:`connect` pipelined."""
        if self._auth_answer is None:
            raise UsageError("no login attempt was made")
        return await asyncio.shield(self._auth_answer)

    def _on_auth_answer(self, event: AuthSucceeded | AuthFailed) -> None:
        waiter = self._auth_answer
        if waiter is not None and not waiter.done():
            waiter.set_result(None if isinstance(event, AuthSucceeded) else event)

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
        return await _accept_and_hand_off(
            self, HANDOFF_FLUSH_TIMEOUT if timeout is None else timeout)

    def _on_host_key_unverified(self, event: HostKeyUnverified) -> None:
        self._spawn(self._decide_host_key(event.host_key), "host key decision")

    async def _decide_host_key(self, key: PublicKey) -> None:
        accept = False
        if self._on_host_key is not None:
            # Reading a fingerprint is a person's time, not the network's: the connect
            # timeout stops while the callback runs and resumes with what was left.
            deadline = self._connect_deadline
            when = deadline.when() if deadline is not None else None
            remaining = None if when is None else when - self.loop.time()
            if deadline is not None and remaining is not None:
                deadline.reschedule(None)
            try:
                accept = bool(await self._on_host_key(key))
            except Exception:
                log.exception("conn=%d: host key callback failed; rejecting", self.number)
            finally:
                # connect() may have ended meanwhile (the peer closed, or gave up on us):
                # its timeout is then finished and must not be restarted.
                if deadline is not None and remaining is not None and not self._core.closed:
                    with contextlib.suppress(RuntimeError):
                        deadline.reschedule(self.loop.time() + max(remaining, 0.0))
        if self._core.closed:
            return
        try:
            if accept:
                self._core.accept_host_key()
            else:
                self._core.reject_host_key()
            self._pump()
        except Exception as exc:
            self._crash(exc)

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
            self._established.set_exception(_termination_error(event))
        if self._auth_answer is not None and not self._auth_answer.done():
            self._auth_answer.set_exception(_termination_error(event))
        for waiter in self._opening.values():
            if not waiter.done():
                waiter.set_exception(lost)
        self._opening.clear()
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

    def _on_open_request(self, event: ChannelOpenRequest) -> None:
        channel = Channel(self, event.channel_id, event.kind, event.payload, _ACCEPTING)
        self._channels[event.channel_id] = channel
        if self._on_channel is None:
            channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                           "channels are not accepted here")
            return
        self._spawn(self._run_channel_handler(self._on_channel, channel), "channel handler")

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

    def _on_opened(self, event: ChannelOpened) -> None:
        channel = self._channels[event.channel_id]
        channel._state = _OPEN
        channel.reply_payload = event.payload
        waiter = self._opening.pop(event.channel_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(channel)
        else:  # the opener gave up waiting
            channel.abort()

    def _on_open_failed(self, event: ChannelOpenFailed) -> None:
        channel = self._channels.pop(event.channel_id, None)
        if channel is not None:
            channel._finish(None)
        waiter = self._opening.pop(event.channel_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(ChannelOpenError(event.reason, event.message))

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

    def _on_global_reply(self, event: GlobalRequestReply) -> None:
        if self._global_replies:
            waiter = self._global_replies.popleft()
            if not waiter.done():
                waiter.set_result((event.ok, event.payload))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# ---------------------------------------------------------------------------------------------
# Entry points


def _core_args(settings: TransportSettings | None, window: int | None,
               max_packet: int | None, rng: Rng | None, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"settings": settings, "window": window, "max_packet": max_packet}
    if rng is not None:
        args["rng"] = rng
    args.update(extra)
    return args


async def connect(host: str, port: int, *, handshake: ClientHandshake,
                  settings: TransportSettings | None = None,
                  on_host_key: HostKeyCallback | None = None,
                  on_channel: ChannelHandler | None = None,
                  on_global_request: GlobalRequestHandler | None = None,
                  window: int | None = None, max_packet: int | None = None,
                  rng: Rng | None = None,
                  timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                  user: str | None = None, identity: HostKey | None = None,
                  password: bytes | None = None) -> QsmpConnection:
    """Connect over TCP and run the handshake; return the established connection.

    ``on_host_key`` decides on a server key that ``handshake`` does not already trust
    (TOFU); None rejects it. ``on_channel`` serves channels the *server* opens (None
    refuses them). Raises :class:`OSError` for TCP failures, :class:`TimeoutError` after
    ``timeout`` seconds, and a :class:`~common.errors.QsmpError` for a failed handshake:
    :class:`~common.errors.RemoteReportedError` if the server reported it, the local
    error's class (e.g. ``VerifyFailure``) otherwise, :class:`ConnectionLost` if the
    socket simply closed.

    With ``user`` and an ``identity`` (a user key) or a ``password``, the first login
    attempt rides behind the handshake's last message; :meth:`QsmpConnection.wait_authenticated`
    gives its answer.
    """
    tune_allocator()
    loop = asyncio.get_running_loop()
    core = Connection(handshake, **_core_args(settings, window, max_packet, rng))
    connection = QsmpConnection(core, loop=loop, on_channel=on_channel,
                                on_host_key=on_host_key, on_global_request=on_global_request)
    if user is not None and identity is not None:
        connection._start_login(lambda: core.authenticate_publickey(user, identity))
    elif user is not None and password is not None:
        connection._start_login(lambda: core.authenticate_password(user, password))
    try:
        async with asyncio.timeout(timeout) as deadline:
            connection._connect_deadline = deadline
            await loop.create_connection(lambda: connection, host, port)
            await connection.wait_established()
    except BaseException:
        connection.abort()
        raise
    return connection


# ---------------------------------------------------------------------------------------------
# Handing a logged-in connection to another process (privilege separation)

#: How long :meth:`QsmpConnection.accept_and_hand_off` waits for the kernel to take the
#: login's answer (a client that stops reading right after logging in cannot hold the
#: pre-auth process longer than this).
HANDOFF_FLUSH_TIMEOUT = 10.0


async def _accept_and_hand_off(connection: QsmpConnection, timeout: float) -> bytes:
    """See :meth:`QsmpConnection.accept_and_hand_off`."""
    core, transport, loop = connection._core, connection._transport, connection.loop
    if transport is None or connection._closing or core.closed:
        raise ConnectionLost(connection.terminated)
    # Before anything changes (a refusal here can still refuse the login): the checks, and
    # accepting, which raises if no login is waiting and otherwise only queues a record.
    core.check_handoff(accepting=True)
    core.accept_auth()
    # Not one more byte from the socket: what the client sends from now on is the next
    # process's to read. Nothing from here awaits until the core is spent, so nothing else
    # can read, seal or fire a timer in between.
    connection._gate_reading = False
    transport.pause_reading()
    connection._read_paused = True
    connection._pump()  # the AUTH_SUCCESS record goes to the socket
    if core.closed:
        raise ConnectionLost(connection.terminated)
    state = core.export_handoff(connection._now())
    connection._arm_timer(None)
    # Everything sealed so far must reach the kernel before the next process seals the
    # next record, or the peer would see a gap in the sequence.
    deadline = loop.time() + timeout
    delay = 0.001
    while connection._wqueue or transport.get_write_buffer_size():
        if connection._transport is None or transport.is_closing():
            raise ConnectionLost(connection.terminated, "connection lost while handing over")
        if loop.time() >= deadline:
            connection.abort()
            raise TimeoutError("the peer did not take the login's answer in time")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    if connection._transport is None:
        raise ConnectionLost(connection.terminated, "connection lost while handing over")
    # Detach: forget the socket without closing or shutting it down (the next process
    # serves it; this one is about to exit). The transport stays referenced, so that
    # garbage collection does not close our descriptor early either.
    connection._release_socket()
    connection._handed_off_transport = transport
    connection._transport = None
    assert core.terminated is not None
    connection._on_terminated(core.terminated)
    if not connection._closed.done():
        connection._closed.set_result(None)
    log.debug("conn=%d: handed over to another process", connection.number)
    return state


async def adopt(sock: socket.socket, state: bytes | bytearray | memoryview, *,
                on_channel: ChannelHandler | None,
                settings: TransportSettings | None = None,
                on_global_request: GlobalRequestHandler | None = None,
                window: int | None = None, max_packet: int | None = None,
                rng: Rng | None = None, user: str | None = None) -> QsmpConnection:
    """Carry on a connection another process handed over (its
    :meth:`QsmpConnection.accept_and_hand_off` state) over ``sock``, the same TCP socket,
    already connected. Returns the logged-in server connection, which serves channels as
    :func:`serve`'s do; the peer notices nothing.

    ``user`` is the user the privileged side approved; the state must name the same one
    (:class:`~common.protocol.handoff.HandoffError` otherwise, or if the state is malformed: then
    the socket is left alone and the caller closes it). ``settings``, ``window`` and
    ``max_packet`` are this process's; the suite, keys and sequence numbers come from the
    state.
    """
    tune_allocator()
    loop = asyncio.get_running_loop()
    offset = time.time() - loop.time()
    core = Connection.from_handoff(state, now=loop.time() + offset, user=user,
                                   **_core_args(settings, window, max_packet, rng))
    connection = QsmpConnection(core, loop=loop, on_channel=on_channel,
                                on_global_request=on_global_request)
    connection._offset = offset  # the clock the core's times were given on
    connection._pre_auth = False  # logged in: the full read and write budgets
    transport = core.transport
    assert transport is not None
    connection.suite = transport.suite
    connection.session_id = transport.session_id
    connection._established.set_result(None)
    await loop.connect_accepted_socket(lambda: connection, sock=sock)
    return connection


class Server:
    """A listening qsh endpoint: the asyncio server plus the connections it accepted."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        self.connections: set[QsmpConnection] = set()

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.sockets[0].getsockname()[1])

    def close(self, *, connections: bool = False) -> None:
        """Stop listening; with ``connections``, also close every accepted connection."""
        self._server.close()
        if connections:
            for connection in list(self.connections):
                connection.close("server shutting down")

    async def wait_closed(self) -> None:
        await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close(connections=True)
        for connection in list(self.connections):
            await connection.wait_closed()
        await self.wait_closed()


class AdmissionTicket(Protocol):
    """An admitted connection as admission control sees it (see :func:`serve`)."""

    def started(self, connection: QsmpConnection) -> None:
        """The connection exists (its handshake has not read a byte yet)."""

    def closed(self, connection: QsmpConnection | None) -> None:
        """Its socket is closed (None: it could not even be set up). Called once."""


#: Server: ``admit(peername, sockname)`` right after accept; None closes the socket at once.
AdmitHandler = Callable[[Any, Any], AdmissionTicket | None]


async def serve(host: str | None, port: int, *,
                make_handshake: Callable[[], ServerHandshake],
                on_channel: ChannelHandler | None,
                settings: TransportSettings | None = None,
                on_global_request: GlobalRequestHandler | None = None,
                window: int | None = None, max_packet: int | None = None,
                rng: Rng | None = None, backlog: int = 100,
                on_auth: AuthHandler | None = None, max_auth_attempts: int | None = None,
                login_grace: float | None = None, auth_methods: tuple[str, ...] | None = None,
                max_unauthenticated: int | None = None,
                admit: AdmitHandler | None = None) -> Server:
    """Listen on ``host:port`` (port 0: any free port, see :attr:`Server.port`).

    Each accepted socket gets a fresh ``make_handshake()`` and runs isolated: anything that
    goes wrong in it, a peer's garbage, a stalled handshake or our own bug, ends only that
    connection. ``on_channel(connection, channel)`` runs as its own task for each channel
    a client opens; it must :meth:`Channel.accept` or :meth:`Channel.reject` it, and the
    channel is closed when the handler returns.

    With ``on_auth``, clients must log in first: ``on_auth(connection, request)`` decides
    each attempt, and channels are refused until one succeeds.

    ``max_unauthenticated`` (a plain cap) limits the connections that have not logged
    in yet (all of them without ``on_auth``): one more is closed as it is accepted, before
    any handshake work, so a flood of half-open logins cannot eat the CPU or the memory that
    logged-in users need. Logged-in connections do not count.

    ``admit`` is the general form (qshd's MaxStartups and per-source penalties): it sees
    the peer's and our address before any protocol object exists, and refuses by returning
    None (the socket is closed, nothing is read). Its ticket hears when the connection
    starts and when its socket closes; one listener can share an ``admit`` among several
    :func:`serve` calls. A ticket whose hook fails is logged and the connection goes on.
    """
    auth_args: dict[str, Any] = {}
    if on_auth is not None:
        auth_args["require_auth"] = True
        if max_auth_attempts is not None:
            auth_args["max_auth_attempts"] = max_auth_attempts
        if login_grace is not None:
            auth_args["login_grace"] = login_grace
        if auth_methods is not None:
            auth_args["auth_methods"] = auth_methods
    tune_allocator()
    loop = asyncio.get_running_loop()
    server_ref: list[Server] = []

    def make_connection(ticket: AdmissionTicket | None) -> QsmpConnection | None:
        server = server_ref[0]
        try:
            core = Connection(make_handshake(),
                              **_core_args(settings, window, max_packet, rng, **auth_args))
        except Exception:
            log.exception("could not set up a connection; dropping it")
            return None
        connection = QsmpConnection(core, loop=loop, on_channel=on_channel,
                                    on_global_request=on_global_request, on_auth=on_auth)
        server.connections.add(connection)

        def gone(_: object) -> None:
            server.connections.discard(connection)
            if ticket is not None:
                _tell(ticket.closed, connection)

        connection._closed.add_done_callback(gone)
        if ticket is not None:
            _tell(ticket.started, connection)
        return connection

    def factory() -> asyncio.BaseProtocol:
        server = server_ref[0]
        if max_unauthenticated is not None:
            waiting = sum(1 for c in server.connections
                          if c.terminated is None and c.user is None)
            if waiting >= max_unauthenticated:
                log.warning("dropping a connection: %d are not logged in yet (the limit)",
                            waiting)
                return _Refuse()
        if admit is not None:
            return _Gate(admit, make_connection)
        return make_connection(None) or _Refuse()

    aserver = await loop.create_server(factory, host, port, backlog=backlog)
    server = Server(aserver)
    server_ref.append(server)
    return server


def _tell(hook: Callable[[Any], None], argument: Any) -> None:
    """Call an admission hook; its failure is a bug of ours, logged, never the peer's."""
    try:
        hook(argument)
    except Exception:
        log.exception("admission hook %s failed", getattr(hook, "__qualname__", hook))


class _Refuse(asyncio.Protocol):
    """Stands in when a connection could not even be set up: closes the socket."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Gate(asyncio.Protocol):
    """Stands in for an accepted socket until admission control has seen its addresses:
    then closes it, or hands the transport to a new :class:`QsmpConnection` before the
    first read (asyncio only starts reading after ``connection_made`` returns)."""

    def __init__(self, admit: AdmitHandler,
                 make: Callable[[AdmissionTicket | None], QsmpConnection | None]) -> None:
        self._admit = admit
        self._make = make

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        try:
            ticket = self._admit(transport.get_extra_info("peername"),
                                 transport.get_extra_info("sockname"))
        except Exception:  # admission is a security check: a bug in it refuses
            log.exception("admission control failed; dropping the connection")
            ticket = None
        if ticket is None:
            transport.close()
            return
        connection = self._make(ticket)
        if connection is None:
            _tell(ticket.closed, None)
            transport.close()
            return
        transport.set_protocol(connection)
        connection.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Never reached (the socket is handed over or closed first); ignore."""
