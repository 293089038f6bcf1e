"""The local end of qsh's byte streams: its own fds 0-2 (or a mux client's), read and written
without blocking the event loop, and :class:`LocalEnd`, which says where a session's fds,
terminal and environment are. On its own because the session and ``-W`` (qsh/stdio.py)
both move bytes through these fds, and neither needs the other's channel to do it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat

from common.client import terminal

#: Bytes per read from stdin: one record's worth, so a bulk upload costs few records.
READ_SIZE = 256 * 1024

# --- Local file descriptors ---------------------------------------------------------------


class FdReader:
    """Reads from a local fd without blocking the event loop.

    Pipes, sockets and terminals are polled (``add_reader``) and read once per readiness,
    so their blocking mode is left alone -- fd 0 often shares its file description with the
    user's shell. Regular files and /dev/null cannot be polled (epoll refuses them) and
    never block, so they are read directly.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        try:
            mode = os.fstat(fd).st_mode
        except OSError:  # closed (qsh <&-): an empty input
            self._eof = True
            self._pollable = False
        else:
            self._eof = False
            self._pollable = not stat.S_ISREG(mode)

    async def read(self, n: int = READ_SIZE) -> bytes:
        while not self._eof:
            if self._pollable:
                try:
                    await self._readable()
                except PermissionError:
                    self._pollable = False
            try:
                data = os.read(self.fd, n)
            except BlockingIOError:  # spurious wakeup, or O_NONBLOCK set via a shared fd
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: the terminal hung up, an end like EOF
                    raise
                data = b""
            if not data:
                self._eof = True
            return data
        return b""

    async def _readable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self.fd, terminal.set_ready, ready)
        try:
            await ready
        finally:
            self._loop.remove_reader(self.fd)


class FdWriter:
    """Writes to a local fd without blocking the event loop on a slow reader.

    Pipes and sockets are switched to O_NONBLOCK (as ssh does; the caller restores the
    flag) so that a full pipe waits in the loop instead of stopping keepalives and the
    other stream. Terminals and files stay blocking: a terminal shares its file
    description with the user's shell, and neither blocks for long.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self.broken = False
        try:
            mode = os.fstat(fd).st_mode
        except OSError:  # closed (qsh >&-): output goes nowhere
            self.broken = True
            return
        self._polled = (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and not os.isatty(fd)
        if self._polled:
            os.set_blocking(fd, False)

    async def write(self, data: bytes) -> None:
        """Everything in ``data``; raises BrokenPipeError when the reader has gone."""
        if self.broken:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await self._writable()
                continue
            view = view[n:]

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self.fd, terminal.set_ready, ready)
        try:
            await ready
        finally:
            self._loop.remove_writer(self.fd)


class LocalEnd:
    """Where a session's bytes and terminal are on this side: qsh's own fds 0-2, terminal,
    environment and signals (the defaults), or those of a mux client (qsh/mux.py), which
    passes its fds and says what its terminal and environment are. A mux client keeps its
    terminal raw and its signals to itself and forwards them; no ``~`` escapes then.
    (A plain slotted class, not a dataclass: building one costs ~1 ms at every start.)"""

    __slots__ = ("environment", "own_terminal", "size", "stderr", "stdin", "stdin_is_tty",
                 "stdout", "term")

    def __init__(self, stdin: int = 0, stdout: int = 1, stderr: int = 2,
                 own_terminal: bool = True, stdin_is_tty: bool | None = None,
                 term: str | None = None, size: tuple[int, int, int, int] | None = None,
                 environment: list[tuple[str, str]] | None = None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        #: False for a mux client's session: no raw mode, signal handlers or escapes here.
        self.own_terminal = own_terminal
        self.stdin_is_tty = stdin_is_tty
        self.term = term
        self.size = size
        #: The env requests to send; None: SendEnv/SetEnv of our own config and environment.
        self.environment = environment
