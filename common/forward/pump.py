"""One forwarded TCP connection over one channel: :class:`Forwarder`, for every tunnel
(``-T``, ``-R``, and ``-D``, whose socket first carries the SOCKS dialogue: the forwarder's
``preamble`` reads it).

:class:`Forwarder` drives the bare non-blocking socket with the event loop's reader and
writer callbacks and is the channel's consumer (:meth:`~common.aio.Channel.set_consumer`),
so bytes move by callbacks, with no task, no transport and no stream objects: a short
connection costs a handful of callbacks on each side, not three tasks and two stream buffers
(bench/tunnel.py's connections/s; bench/tunnel_profile.py shows where the rest goes).

* socket to channel: what the socket delivers is written into the channel; while the
  channel is :attr:`~common.aio.Channel.write_blocked` (the peer's window full, the
  connection's socket backed up) the socket is not read until the channel's writable
  callback, so the kernel's buffer fills and TCP stops the local sender: no buffering of ours
  beyond the channel's high-water mark.
* channel to socket: each received chunk is written to the socket and its window granted
  back at once, unless more than :data:`SOCKET_HIGH_WATER` waits for the socket: then the
  grants wait until it is down to :data:`SOCKET_LOW_WATER`. A local reader that stops
  reading stops the remote sender within one window.

Half-close travels both ways: EOF on the socket becomes the channel's EOF, the channel's
EOF becomes ``shutdown(SHUT_WR)``; the channel closes once both directions have ended, as in
SSH. When the peer closes the channel, what it sent before still goes to the socket, within
:data:`FLUSH_TIMEOUT`. When either side vanishes -- the socket resets, the channel is aborted
by the peer, the connection dies -- the socket is aborted and the channel closed, so nothing
of the pair is left behind (descriptors, tasks, buffers, timers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable

from common.aio import Channel
from common.aio.errors import ConnectionLost
from common.channels.tunnel import Endpoint
from common.errors import InvalidInput
from common.protocol.mux import OpenFailureReason

log = logging.getLogger("qsh.forward")

#: One socket read: a record's worth (the mux's default max packet), so bulk traffic costs
#: few records and few calls.
READ_SIZE = 256 * 1024
#: After the peer closed the channel, how long what it sent before may take to reach a slow
#: local reader before the socket is dropped.
FLUSH_TIMEOUT = 10.0
#: How long a closed channel waits for the peer's CLOSE before the pump gives up on it.
CLOSE_TIMEOUT = 10.0
#: What a :class:`Forwarder` reads from its socket before the channel is open (it stops
#: reading there): the first bytes go out with no wait once the channel opens.
EARLY_LIMIT = 256 * 1024
#: After writing an open's first bytes, how long the answer to the open may wait for the
#: destination's first answer, so that both leave in one flight (one record pair and one
#: turn of the opener's loop fewer for a short connection); the opener only needs the
#: answer to send more than the first bytes.
ANSWER_DELAY = 0.002
#: A :class:`Forwarder`'s queue for its socket: above the high mark the channel's window
#: grants wait, below the low mark they resume (asyncio's transport defaults).
SOCKET_HIGH_WATER = 64 * 1024
SOCKET_LOW_WATER = 16 * 1024


class Forwarder:
    """One TCP connection joined to one channel (see the module's docstring), on the bare
    non-blocking socket: the event loop's reader and writer callbacks, no transport, no
    task. :meth:`start` hands it the socket (the listener or the connect does);
    ``on_connected`` is then called with the forwarder (an accepted connection starts its
    channel's open there). With ``first_max``, :meth:`start` first reads what the socket
    already holds, up to that many bytes, for ``on_connected`` to send in the open
    (:attr:`first`, docs/PROTOCOL.md §10B.1). Until :meth:`attach` gives it its open
    channel, it reads at most :data:`EARLY_LIMIT` bytes more, sent as soon as the channel
    opens. :meth:`wait` returns once both the socket and the channel are gone; :meth:`abort`
    ends both at once."""

    def __init__(self, tag: str = "",
                 on_connected: Callable[[Forwarder], None] | None = None,
                 first_max: int = 0) -> None:
        self.tag = tag
        self._on_connected = on_connected
        self._first_max = first_max
        #: What the socket held when it was accepted (``first_max``): for the open.
        self.first = b""
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._peer: tuple[str, int] | None = None
        self._fd = -1
        self.channel: Channel | None = None
        #: Both ends gone: then the done callbacks run, and a waiter (made only when
        #: someone waits: the callbacks cost no future, no call_soon) gets the result.
        self._finished = False
        self._done_callbacks: list[Callable[[Forwarder], None]] = []
        self._waiter: asyncio.Future[bool] | None = None
        self._socket_eof = False  # the socket's EOF, passed on to the channel
        self._channel_eof = False  # the channel's EOF, passed on to the socket
        self._socket_gone = False
        self._channel_gone = False
        self._reading = False  # a reader callback is registered
        self._reading_paused = False  # by flow control (or the early limit)
        self._writing = False  # a writer callback is registered
        self._queue: deque[bytes | memoryview] = deque()  # what the kernel did not take
        self._queued = 0
        self._shutdown_pending = False  # shutdown(SHUT_WR) once the queue is sent
        self._close_pending = False  # close once the queue is sent
        self._socket_backed_up = False
        self._held = 0  # bytes written to the socket, their window not yet granted
        self._ending = False
        self._clean = False
        self._timer: asyncio.TimerHandle | None = None
        #: A channel opened by the peer whose answer waits (at most ANSWER_DELAY) for the
        #: socket's first bytes, to go out with them.
        self._unanswered: Channel | None = None
        self._answer_timer: asyncio.TimerHandle | None = None
        #: While set, what the socket delivers goes here (b"" for its EOF) instead of to
        #: the channel: a dialogue before forwarding (``-D``'s SOCKS request).
        self.preamble: Callable[[bytes], None] | None = None
        #: What the socket sent before the channel was open (bounded: reading pauses).
        self._early: list[bytes] = []
        self._early_size = 0

    # -- the owner's side

    def start(self, sock: socket.socket, peer: tuple[str, int] | None = None) -> None:
        """Take ``sock`` (connected; made non-blocking here) and start reading it; ``peer``
        its peer's address if the caller has it (accept returns it: no system call)."""
        sock.setblocking(False)
        _nodelay(sock)
        self._sock = sock
        self._peer = peer
        self._fd = sock.fileno()
        if self._first_max:
            # A client that speaks first has usually sent its request by the time its
            # connection is accepted: it can ride in the open. A reset is seen again by the
            # reader callback (as EOF), so it is not handled here.
            with contextlib.suppress(OSError):
                data = sock.recv(self._first_max)
                if data:
                    self.first = data
                else:
                    self._socket_eof = True
        self._update_reading()
        if self._on_connected is not None:
            self._on_connected(self)

    def attach(self, channel: Channel) -> None:
        """Start forwarding between the socket and ``channel`` (open)."""
        self.channel = channel
        channel.add_close_callback(self._channel_closed)
        if self._ending or self._socket_gone:
            channel.abort()
            return
        channel.set_writable_callback(self._writable)
        with channel.connection.batch():
            channel.set_consumer(self._from_channel, self._eof_from_channel)
            early, self._early = self._early, []
            self._early_size = 0
            for data in early:
                self._received(data)
            if self._socket_eof:
                self._eof_to_channel()
        self._writable()

    def abort(self) -> None:
        self._end(clean=False)

    def send(self, data: bytes) -> None:
        """Write to the socket ahead of anything the channel brings (a SOCKS reply)."""
        if self._sock is None or self._socket_gone or self._close_pending:
            return
        try:
            self._send(data)
        except OSError as exc:
            self._socket_failed(exc)

    def hold(self, data: bytes) -> None:
        """What the socket delivered that goes to the channel once it is open (bytes read
        with the preamble), before anything read later."""
        if data:
            self._received(data)

    def refuse(self, answer: bytes = b"") -> None:
        """No channel for this socket: write ``answer`` (a SOCKS refusal), then close."""
        self.preamble = None
        if answer:
            self.send(answer)
        self._end(clean=True)

    @property
    def peername(self) -> tuple[str, int]:
        if self._peer is not None:
            return self._peer
        try:
            peer = self._sock.getpeername() if self._sock is not None else None
        except OSError:
            peer = None
        return (str(peer[0]), int(peer[1])) if peer else ("", 0)

    def add_done_callback(self, callback: Callable[[Forwarder], None]) -> None:
        """Call ``callback(forwarder)`` once both ends are gone (at once if they are); it
        must not raise."""
        if self._finished:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    async def wait(self) -> bool:
        """Until both ends are gone; True for a clean end (EOF both ways)."""
        if self._finished:
            return self._clean
        if self._waiter is None:
            self._waiter = self._loop.create_future()
        return await self._waiter

    async def serve(self, channel: Channel, first: bytes = b"") -> None:
        """The far end opened ``channel`` for this (connected) socket: accept it and forward
        until both ends are gone; ``first`` (the bytes that came with the open) goes to the
        socket before anything the channel carries. The socket is aborted if the connection
        is already lost or the serving task is cancelled, so nothing is left open."""
        try:
            self.serve_now(channel, first)
            await self.wait()
        except asyncio.CancelledError:
            self.abort()
            raise

    def serve_now(self, channel: Channel, first: bytes = b"") -> None:
        """:meth:`serve` without a task, for a caller in a callback: accept ``channel`` and
        forward by callbacks; :meth:`add_done_callback` tells when both ends are gone. With
        ``first`` bytes (a request, most likely) the acceptance waits for the socket's
        first answer, at most :data:`ANSWER_DELAY`, and leaves with it."""
        if first:
            try:
                self._send(first)
            except OSError as exc:
                self._socket_failed(exc)
            if not self._ending:
                self._unanswered = channel
                self._answer_timer = self._loop.call_later(ANSWER_DELAY, self._answer_late)
                return
        self._accept(channel)

    def _accept(self, channel: Channel) -> None:
        try:
            channel.accept()
        except ConnectionLost:
            self.abort()
            return
        self.attach(channel)

    def _answer(self) -> None:
        """Accept the channel whose answer waited (inside a batch: it leaves with what the
        caller does next)."""
        channel, self._unanswered = self._unanswered, None
        if self._answer_timer is not None:
            self._answer_timer.cancel()
            self._answer_timer = None
        if channel is not None:
            self._accept(channel)

    def _answer_late(self) -> None:
        self._answer_timer = None
        self._answer()

    # -- the socket

    def _update_reading(self) -> None:
        want = not (self._reading_paused or self._socket_eof or self._socket_gone
                    or self._ending)
        if want != self._reading:
            self._reading = want
            if want:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._socket_failed(exc)
            return
        if self._unanswered is not None:  # the answer to the open leaves with this
            with self._unanswered.connection.batch():
                self._answer()
                self._on_read(data)
        else:
            self._on_read(data)

    def _on_read(self, data: bytes) -> None:
        if self.preamble is not None:
            if not data:
                self._socket_eof = True
                self._update_reading()
            self.preamble(data)
            return
        if data:
            self._received(data)
        else:
            self._socket_eof = True
            self._update_reading()
            if self.channel is not None and not self._ending:
                try:
                    with self.channel.connection.batch():  # EOF and CLOSE in one write
                        self._eof_to_channel()
                except Exception as exc:
                    log.debug("%s: forwarding ended: %r", self.tag, exc)
                    self._end(clean=False)

    def _received(self, data: bytes) -> None:
        channel = self.channel
        if self._ending:
            return
        if channel is None:  # kept until the channel is open
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size >= EARLY_LIMIT:
                self._reading_paused = True
                self._update_reading()
            return
        try:
            channel.write(data)
        except Exception as exc:  # the channel or the connection went away meanwhile
            log.debug("%s: forwarding ended: %r", self.tag, exc)
            self._end(clean=False)
            return
        if channel.write_blocked and not self._reading_paused:
            self._reading_paused = True
            self._update_reading()

    def _eof_to_channel(self) -> None:
        assert self.channel is not None
        self.channel.write_eof()
        self._maybe_done_both_ways()

    def _send(self, data: bytes) -> None:
        """Write to the socket: at once as far as the kernel takes it, the rest queued."""
        sock = self._sock
        assert sock is not None
        if not self._queue:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > SOCKET_HIGH_WATER:
            self._socket_backed_up = True

    def _on_writable(self) -> None:
        sock, queue = self._sock, self._queue
        assert sock is not None
        try:
            while queue:
                chunk = queue[0]
                sent = sock.send(chunk)
                self._queued -= sent
                if sent < len(chunk):
                    queue[0] = memoryview(chunk)[sent:]
                    break
                queue.popleft()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._socket_failed(exc)
            return
        if self._socket_backed_up and self._queued <= SOCKET_LOW_WATER:
            self._socket_backed_up = False
            held, self._held = self._held, 0
            channel = self.channel
            if held and channel is not None and channel.is_open:
                channel.grant(held)
        if not queue:
            self._loop.remove_writer(self._fd)
            self._writing = False
            if self._close_pending:
                self._close_socket()
            elif self._shutdown_pending:
                self._shutdown_pending = False
                self._shutdown()

    def _shutdown(self) -> None:
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._socket_failed(exc)

    def _close_socket(self, *, flush: bool = False) -> None:
        """Close (with ``flush``: once the queue is sent)."""
        if self._sock is None or self._socket_gone:
            return
        if flush and self._queue:
            self._close_pending = True
            return
        self._update_reading_off()
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._queue.clear()
        self._queued = 0
        self._socket_gone = True
        self._sock.close()
        self._check_done()

    def _update_reading_off(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _socket_failed(self, exc: OSError) -> None:
        """A reset or a send that failed: the socket is gone."""
        log.debug("%s: the socket went away: %r", self.tag, exc)
        self._close_socket()
        if not self._ending:
            self._end(clean=False)

    # -- the channel (callbacks from the connection's event processing: never raise)

    def _writable(self) -> None:
        channel = self.channel
        if (self._reading_paused and not self._ending and channel is not None
                and not channel.write_blocked):
            self._reading_paused = False
            self._update_reading()

    def _from_channel(self, data: bytes) -> None:
        if self._sock is None or self._socket_gone or self._close_pending:
            return
        try:
            self._send(data)
            assert self.channel is not None
            if self._socket_backed_up:
                self._held += len(data)
            else:
                self.channel.grant(len(data))
        except OSError as exc:
            self._socket_failed(exc)
        except Exception as exc:
            log.debug("%s: forwarding ended: %r", self.tag, exc)
            self._end(clean=False)

    def _eof_from_channel(self) -> None:
        self._channel_eof = True
        if self._sock is not None and not self._socket_gone and not self._close_pending:
            if self._queue:
                self._shutdown_pending = True
            else:
                self._shutdown()
        self._maybe_done_both_ways()

    def _channel_closed(self, channel: Channel) -> None:
        self._channel_gone = True
        if not self._ending:
            # The peer closed (or the connection ended): nothing more goes out. What it
            # sent up to its EOF still goes to the socket, within a bound; without an
            # EOF (an abort, the connection lost) the stream was cut: reset the socket, so
            # the local end does not take it for complete.
            self._ending = True
            self._update_reading_off()
            if channel.lost is not None or not self._channel_eof:
                self._close_socket()
            else:
                self._clean = True
                self._close_socket(flush=True)
                self._arm(FLUSH_TIMEOUT)
        self._check_done()

    # -- the end

    def _maybe_done_both_ways(self) -> None:
        if self._socket_eof and self._channel_eof:
            self._end(clean=True)

    def _end(self, *, clean: bool) -> None:
        if self._unanswered is not None:
            self._answer()  # then ended like any other: a channel is never left unanswered
        if self._ending:
            if not clean:
                self._close_socket()  # an abort overrides a pending flush
            return
        self._ending = True
        self._clean = clean
        channel = self.channel
        self._update_reading_off()
        self._close_socket(flush=clean)
        try:
            if channel is not None:
                if clean:
                    channel.close()
                else:
                    channel.abort()
        except ConnectionLost:
            pass
        self._arm(CLOSE_TIMEOUT)
        self._check_done()

    def _arm(self, seconds: float) -> None:
        if self._timer is None and not self._finished:
            self._timer = self._loop.call_later(seconds, self._give_up)

    def _give_up(self) -> None:
        self._timer = None
        self._close_socket()
        self._channel_gone = True  # no answer to our CLOSE: stop waiting for one
        self._check_done()

    def _check_done(self) -> None:
        if not self._socket_gone and self._sock is not None:
            return
        if not self._channel_gone and self.channel is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._finished:
            self._finished = True
            callbacks, self._done_callbacks = self._done_callbacks, []
            for callback in callbacks:
                callback(self)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(self._clean)


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def requested_endpoint(channel: Channel, kind: str, refusal: str, first_max: int = 0
                       ) -> Endpoint | None:
    """The endpoint a tunnel channel the peer opened names, or None once the channel has
    been refused: another kind than the one this side accepts (``refusal``, a sentence
    naming it with ``{kind}``), or a payload that does not decode (first bytes beyond
    ``first_max``, what this side offered, included). Both ends' first step."""
    if channel.kind != kind:
        channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                       refusal.format(kind=channel.kind))
        return None
    try:
        return Endpoint.decode(channel.payload, first_max=first_max)
    except InvalidInput as exc:
        channel.reject(OpenFailureReason.CONNECT_FAILED, f"malformed request: {exc}")
        return None
