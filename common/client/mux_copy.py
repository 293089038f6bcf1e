"""qcp over a shared connection: its copy channels opened by a ControlMaster (qsh.1
CONNECTION SHARING), so a copy costs no key exchange and no login.

The master cannot hand over a channel of its connection, so it relays one: qcp makes a
socketpair, passes one end with the copy's open payload (NEW_COPY, common/client/mux_wire.py),
and the master opens the ``copy`` channel on its connection and moves raw bytes between it
and that end (:class:`common.forward.pump.Forwarder`, as for a tunnel: the socket's buffer
and the channel's window are the flow control, EOF travels both ways). qcp runs its copy
engine, unchanged, over :class:`SocketChannel`, the part of a channel the engine uses on its
own end. The copy protocol (docs/PROTOCOL.md §10A) ends with its own messages (DONE,
FINISHED), so a relay cut short is seen by the engine as a copy cut short.

Why a relay of bytes and not a second session of messages: the engine's bulk path is
unframed file data, so relaying bytes costs the master one read and one write per chunk and
keeps every check (digests, temporary files, scp's rules) where it is.

A master that cannot carry copies (an older qsh, which drops the conversation at the
unknown message type; one that refuses, as ControlMaster ask does; a master whose own
connection is going) raises :class:`Unshared` on the first open, before anything was
copied: qcp then logs in by itself, as qsh does when no master answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import cast

from common import aio
from common.aio.chunks import ChunkQueue
from common.client import mux_client
from common.client import mux_wire as wire

#: Seconds for the master's answer to NEW_COPY: a round trip to the server and back.
OPEN_TIMEOUT = 30.0
#: After the socketpair's EOF, how long the master has to say that it ended the relay
#: itself (else it is taken for dead).
END_TIMEOUT = 2.0
#: Received bytes held before reading from the socket pauses (the master's side then
#: fills, and its channel window closes: the server stops sending).
READ_LIMIT = 1024 * 1024
#: The socketpair's kernel buffers (each way; the kernel caps them at net.core.*mem_max).
SOCKET_BUFFER = 1024 * 1024
#: Written bytes queued before the engine's drain waits (a channel's high-water mark).
HIGH_WATER = 1024 * 1024


class Unshared(Exception):
    """The master cannot carry this copy; qcp logs in by itself."""


class SocketChannel(asyncio.Protocol):
    """One end of the socketpair, as much of :class:`common.aio.Channel` as the copy
    engine's :class:`common.transfer.base.Peer` uses: chunked and exact reads, writes with
    a drain, the high-water mark, close. Every buffer is bounded (:data:`READ_LIMIT`,
    :data:`HIGH_WATER`)."""

    def __init__(self, control: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._control = control
        self.stdout = self  # Peer reads ``channel.stdout.buffered``
        self.high_water = HIGH_WATER
        self._transport: asyncio.Transport | None = None
        self._queue: ChunkQueue[bytes] = ChunkQueue()  # every read returns bytes
        self._eof = False
        self._lost: aio.ConnectionLost | None = None
        #: Whether the master ended the relay or died (:meth:`_ask_master`).
        self._verdict: asyncio.Future[None] | None = None
        self._closing = False  # we closed: the end is ours
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        queue = self._queue
        queue.append(data)
        if queue.size > READ_LIMIT and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._judge()
        self._wake()
        return True  # what we still write is the engine's business (it will fail)

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._judge()
        self._wake()
        self._wake_drain()
        if not self._gone.done():
            self._gone.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading

    @property
    def buffered(self) -> int:
        return self._queue.size

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        await self._waiter

    def _judge(self) -> None:
        """The relay ended without us: start asking the control socket why (once)."""
        if self._verdict is None and not self._closing:
            self._verdict = asyncio.ensure_future(self._ask_master())

    async def _ask_master(self) -> None:
        """A master that ended the relay says OK on the control socket; one that says
        nothing died (killed, crashed) and the copy is cut, with that reason."""
        try:
            async with asyncio.timeout(END_TIMEOUT):
                kind, _ = await read_frame(self._control)
        except (wire.MuxError, OSError, EOFError, TimeoutError):
            kind = 0
        if kind != wire.OK:
            self._lost = aio.ConnectionLost(None, "the control master went away")

    async def _check_master(self) -> None:
        """At the relay's end: :attr:`_lost` if the master died, else a clean end."""
        if self._verdict is not None:
            await asyncio.shield(self._verdict)
        if self._lost is not None:
            raise self._lost

    def _resume(self) -> None:
        """After a take while reading is paused: it goes on once half the limit is taken."""
        if self._queue.size <= READ_LIMIT // 2 and self._transport:
            self._reading_paused = False
            self._transport.resume_reading()

    async def read(self, n: int = -1) -> bytes:
        """The next chunk as it arrived (at most ``n`` bytes); b"" at the end."""
        while not self._queue.size:
            if self._eof:
                await self._check_master()
                return b""
            await self._wait()
        data = self._queue.take_first(n)
        if self._reading_paused:
            self._resume()
        return data

    async def read_view(self) -> memoryview:
        """The next chunk, for the engine's bulk reads (:meth:`common.aio.ReadStream.read_view`:
        the chunk is the caller's to keep)."""
        return memoryview(await self.read())

    async def readexactly(self, n: int) -> bytes:
        queue = self._queue
        while queue.size < n:
            if self._eof:
                await self._check_master()
                raise asyncio.IncompleteReadError(queue.take(-1), n)
            await self._wait()
        data = queue.take(n)  # b"" for 0
        if self._reading_paused:
            self._resume()
        return data

    # -- writing

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    @property
    def pending(self) -> int:
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost is not None:
            raise self._lost
        if self._transport is None or self._closing:
            raise aio.ChannelClosedError("the copy's relay is closed")
        if self._transport.is_closing():
            if self._verdict is None or self._verdict.done():
                raise aio.ChannelClosedError("the copy's relay is closed")
            return  # the copy is over either way; drain says how
        self._transport.write(bytes(data) if type(data) is not bytes else data)

    async def drain(self) -> None:
        while self._write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter
        if self.closed:
            await self._check_master()
            raise aio.ChannelClosedError("the copy's relay is closed")

    def close(self) -> None:
        """What was written still goes out (:meth:`wait_closed`), then the socket closes:
        the master closes the channel."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._gone), timeout)
        if self._transport is not None:
            self._transport.abort()
        if self._verdict is not None and not self._verdict.done():
            self._verdict.cancel()
        self._control.close()


async def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One message from the (non-blocking) control socket, its length checked first."""
    loop = asyncio.get_running_loop()

    async def exactly(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = await loop.sock_recv(sock, n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return bytes(data)

    kind, length = wire.parse_header(await exactly(wire.HEADER_SIZE))
    return kind, await exactly(length)


class SharedConnection:
    """What the copy engine needs of a connection (:meth:`open_channel`), served by the
    master at ``path``: every copy channel is a NEW_COPY conversation of its own."""

    def __init__(self, path: str, host: str,
                 note: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.host = host
        self.master_pid = 0
        self._note = note  # -v's line once the first copy rides on the master
        self._channels: list[SocketChannel] = []

    async def open_channel(self, kind: str, payload: bytes = b"") -> aio.Channel:
        """A relayed copy channel. :class:`Unshared` when the master cannot carry it and
        nothing was copied over it yet; :class:`common.aio.ChannelOpenError` when the
        server refused the channel; :class:`common.aio.ConnectionLost` when the master
        went away after a first copy."""
        assert kind == "copy"
        first = not self._channels
        try:
            return cast("aio.Channel", await self._open(payload))
        except Unshared as exc:
            if first:
                raise
            raise aio.ConnectionLost(None, f"the control master: {exc}") from None

    async def _open(self, payload: bytes) -> SocketChannel:
        try:
            opened = mux_client.open_master(self.path)
        except (mux_client.MuxUnusable, wire.MuxError, OSError, EOFError) as exc:
            raise Unshared(mux_client.describe_failure(exc)) from None
        if opened is None:
            raise Unshared("no master is listening")
        raw, self.master_pid = opened
        control = socket.socket(fileno=raw.detach())  # the asyncio-friendly kind
        control.settimeout(mux_client.REPLY_TIMEOUT)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (ours, theirs):  # a record or two in flight each way, not ~200 KiB
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        try:
            try:
                mux_client.send_with_fds(control, wire.frame(wire.NEW_COPY, payload),
                                          (theirs.fileno(),))
            finally:
                theirs.close()
            control.setblocking(False)
            try:
                async with asyncio.timeout(OPEN_TIMEOUT):
                    kind, body = await read_frame(control)
            except EOFError:
                raise Unshared("the master cannot carry copies (an older qsh?)") from None
            except (wire.MuxError, OSError, TimeoutError) as exc:
                raise Unshared(mux_client.describe_failure(exc)) from None
            if kind == wire.ERROR:
                raise Unshared(f"the master refused: {wire.decode_string(body)}")
            if kind == wire.OPEN_FAILED:
                raise aio.ChannelOpenError(*wire.decode_open_failed(body))
            if kind != wire.OK:
                raise Unshared(f"unexpected answer type {kind}")
            channel = SocketChannel(control)
            loop = asyncio.get_running_loop()
            ours.setblocking(False)
            await loop.create_unix_connection(lambda: channel, sock=ours)
        except BaseException:
            ours.close()
            control.close()
            raise
        if not self._channels and self._note is not None:
            self._note(f"using the shared connection of master {self.master_pid} "
                       f"({self.path})")
        self._channels.append(channel)
        return channel

    async def close(self, timeout: float = 10.0) -> None:
        """Until every relay has taken what was written to it (``timeout`` at most)."""
        for channel in self._channels:
            channel.close()
            await channel.wait_closed(timeout)


def usable(control_path: str | None, control_master: str) -> bool:
    """Whether qcp may copy over a master, as qsh decides for a session: a ControlPath,
    and a ControlMaster that does not make this run a master of its own."""
    return control_path is not None and control_master not in ("yes", "ask")
