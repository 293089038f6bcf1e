"""What both ends of a copy share: the public result types, the channel as a message
stream, and the small helpers for paths and errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno as _errno
import os
from typing import Protocol, TypeVar

from common import aio
from common.channels.copy import (
    HEADER_SIZE,
    Error,
    Message,
    decode_body,
    decode_header,
)
from common.errors import InvalidInput
from common.wire import Record

T = TypeVar("T")

#: One read from a small source file, or from any when paced (-l; larger files are read 4
#: of these at a time, ``send.READ_SIZE``), and so (split by the channel's record size) the
#: unit the sender hands to the channel: large, so per-call costs are paid per megabyte.
CHUNK = 1024 * 1024
#: No progress from the peer for this long ends the copy (the connection's keep-alive
#: only proves the peer is alive, not that it still serves this copy).
IDLE_TIMEOUT = 300.0
#: Small messages are gathered up to this size before they are written (one record).
FLUSH_SIZE = 64 * 1024
#: Entries the sender may have in flight without their status.
MAX_OUTSTANDING = 65536
#: Status errno of an entry inside a directory that could not be created: not written,
#: and not reported again (its directory's failure was).
SKIPPED = 0xFFFFFFFF


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: Whether a big file is read (sending) or written (receiving) by a thread of its own while
#: the event loop encrypts or decrypts. The overlap pays only where a core is free for that
#: thread; with two, the hand-offs (a thread woken, the GIL passed back and forth) cost more
#: than it gives: 1 GiB down 1.39 -> 1.10 s with both ends inline (interleaved runs), 1.03-1.31x
#: as fast either way in bench/copies.py's rounds, on this project's 2-CPU benchmark machine
#: (bench/README.md). From four CPUs on the threads stay (not measured here). Read at each
#: file, so a test can choose.
FILE_THREADS = _usable_cpus() >= 4


class CopyError(Exception):
    """The copy as a whole failed (connection lost, the peer broke the protocol, the
    server refused the channel). One line."""


class CopyOptions(Record):
    __slots__ = ("recursive", "preserve", "resume", "limit")  # noqa: RUF023 (field order)

    recursive: bool  # -r
    preserve: bool  # -p: modes, atime and mtime
    resume: bool  # --resume
    limit: int | None  # -l, in bytes per second; None = no limit

    def __init__(self, recursive: bool = False, preserve: bool = False, resume: bool = False,
                 limit: int | None = None) -> None:
        object.__setattr__(self, "recursive", recursive)
        object.__setattr__(self, "preserve", preserve)
        object.__setattr__(self, "resume", resume)
        object.__setattr__(self, "limit", limit)


class Progress(Protocol):
    """Called by the engine on the side that runs qcp (never on the server)."""

    def start(self, name: str, size: int, offset: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def end(self, name: str, ok: bool) -> None: ...


class Failure(Record):
    __slots__ = ("path", "reason", "remote")

    path: str  # printable (control characters replaced)
    reason: str  # one line
    remote: bool  # True when the server's side saw it

    def __init__(self, path: str, reason: str, remote: bool) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "remote", remote)


class Report:
    """What a copy did, filled in as it goes. (A plain class, not a dataclass: every qcp
    run loads this module, and a dataclass costs about a millisecond to build: issue 18.)"""

    def __init__(self, files: int = 0, bytes: int = 0, sent: int = 0,
                 failures: list[Failure] | None = None) -> None:
        self.files = files  # files that arrived and verified
        self.bytes = bytes  # their total size
        self.sent = sent  # file bytes that crossed the connection (resume sends less)
        self.failures: list[Failure] = [] if failures is None else failures

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return NotImplemented
        return (self.files, self.bytes, self.sent, self.failures) == (
            other.files, other.bytes, other.sent, other.failures)

    def __repr__(self) -> str:
        return (f"Report(files={self.files!r}, bytes={self.bytes!r}, sent={self.sent!r}, "
                f"failures={self.failures!r})")

    @property
    def ok(self) -> bool:
        return not self.failures


def printable(path: bytes) -> str:
    """A path for a terminal line: undecodable bytes as \\xNN, control characters as ?."""
    text = path.decode("utf-8", "backslashreplace")
    if text.isascii() and text.isprintable():  # the usual case, without a loop
        return text
    return "".join("?" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in text)


async def finished(future: concurrent.futures.Future[T]) -> T:
    """A thread's result. One that is done already is taken as it is: wrapping it for
    asyncio would still wake the event loop through its self-pipe, a write and a read per
    job (the largest single cost of a big file's event loop after the crypto)."""
    if not future.done():
        return await asyncio.wrap_future(future)
    return future.result()


def reason_of(exc: OSError) -> tuple[int, str]:
    """(errno, one-line reason) of an OS error, as strerror words it."""
    number = exc.errno or _errno.EIO
    return number, exc.strerror or os.strerror(number)


def join(parent: bytes, name: bytes) -> bytes:
    if not parent:
        return name
    return parent + name if parent.endswith(b"/") else parent + b"/" + name


class Peer:
    """The copy channel as messages and raw file bytes, every wait bounded.

    File data is taken from the channel a record's chunk at a time, without joining
    chunks; the part of a chunk beyond the file's end (the next message's first bytes)
    is kept here and read first.

    Small messages are gathered and written together (one record for a small file's
    metadata, data and digest, or for many statuses) once :data:`FLUSH_SIZE` is reached,
    and always before this side waits for the peer (:meth:`flush`): whoever waits on
    something the peer must answer calls it first."""

    def __init__(self, channel: aio.Channel, allowed: frozenset[int]) -> None:
        self.channel = channel
        self.allowed = allowed
        self._rest: memoryview | None = None
        self._out: list[bytes] = []
        self._out_size = 0

    def _buffered(self) -> int:
        return (len(self._rest) if self._rest is not None else 0) + \
            self.channel.stdout.buffered

    async def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        if self._buffered() < n:
            self.flush()
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    return await self._read_exactly(n)
            except TimeoutError:
                raise CopyError(f"no word from the peer for {IDLE_TIMEOUT:.0f} s") from None
        return await self._read_exactly(n)

    async def _read_exactly(self, n: int) -> bytes:
        rest = self._rest
        if rest is None:
            return await self.channel.readexactly(n)
        if len(rest) >= n:
            data = bytes(rest[:n])
            self._rest = rest[n:] if len(rest) > n else None
            return data
        self._rest = None
        return bytes(rest) + await self.channel.readexactly(n - len(rest))

    async def message(self) -> Message:
        try:
            header = await self._read(HEADER_SIZE)
            kind, length = decode_header(header, self.allowed)
            body = await self._read(length) if length else b""
        except asyncio.IncompleteReadError:
            raise CopyError("the peer closed the copy channel mid-copy") from None
        except aio.ConnectionLost as exc:
            raise CopyError(f"connection lost: {exc}") from None
        message = decode_body(kind, body)
        if isinstance(message, Error):
            raise CopyError(f"the peer ended the copy: {message.reason}")
        return message

    async def raw(self, limit: int) -> memoryview:
        """Up to ``limit`` bytes of a file's data, as they arrived (no copy)."""
        rest = self._rest
        if rest is not None:
            data = rest
        else:
            try:
                if not self.channel.stdout.buffered:
                    self.flush()
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        chunk = await self.channel.read_view()
                else:
                    chunk = await self.channel.read_view()
            except TimeoutError:
                raise CopyError(f"no word from the peer for {IDLE_TIMEOUT:.0f} s") from None
            except aio.ConnectionLost as exc:
                raise CopyError(f"connection lost: {exc}") from None
            if not chunk:
                raise CopyError("the peer closed the copy channel mid-file")
            data = memoryview(chunk)
        if len(data) > limit:
            self._rest = data[limit:]
            return data[:limit]
        self._rest = None
        return data

    def send(self, data: bytes) -> None:
        """Queue a message or file data; large pieces go out at once, without a copy."""
        if len(data) >= FLUSH_SIZE:
            self.flush()
            self._write(data)
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_size = 0
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self.channel.write(data)
        except (aio.ConnectionLost, aio.ChannelClosedError) as exc:
            raise CopyError(f"connection lost: {exc}") from None

    async def drain(self) -> None:
        """Wait while the channel is backed up (what is queued here is not sent)."""
        channel = self.channel
        if channel.pending <= channel.high_water and not channel.closed:
            return
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                await channel.drain()
        except TimeoutError:
            raise CopyError(f"the peer took nothing for {IDLE_TIMEOUT:.0f} s") from None
        except (aio.ConnectionLost, aio.ChannelClosedError) as exc:
            raise CopyError(f"connection lost: {exc}") from None

    def fail(self, exc: InvalidInput | CopyError) -> None:
        """Tell the peer why we stop (best effort), then close."""
        self._out.clear()
        with contextlib.suppress(aio.ConnectionLost, aio.ChannelClosedError):
            self.channel.write(Error(str(exc)).encode())
        self.channel.close()
