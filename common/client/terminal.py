"""The local terminal: raw mode, its size, prompts on /dev/tty, and the ``~`` escapes.

Everything here is about the user's own terminal, never the network. The rule that shapes
it: **a terminal left in raw mode is a broken terminal** (no echo, no line editing, ^C
does nothing), so :class:`RawMode` restores on every path it can see -- ``with`` exit,
an explicit :meth:`RawMode.restore` from signal handlers, and ``atexit`` as a last resort.
Only SIGKILL can get past all three, as with ssh.

Prompts (passwords, passphrases, the host key question) go to ``/dev/tty`` rather than
stdin/stderr, as ssh does, so ``qsh host cmd < input > output`` still asks the person and
not the pipe. They are read from the event loop (``add_reader``), not from a thread: a
blocked thread cannot be cancelled, and a cancelled prompt must restore echo at once.

:class:`EscapeScanner` is pure (bytes in, bytes and commands out): the rules for when
``~`` is special are subtle enough to deserve tests that need no terminal at all.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import termios
import tty
from collections.abc import Iterator

from common.crypto.secret import Secret

DEFAULT_COLUMNS = 80
DEFAULT_ROWS = 24



# --- Size ---------------------------------------------------------------------------------


def window_size(fd: int) -> tuple[int, int, int, int] | None:
    """(columns, rows, width_px, height_px) of the terminal on ``fd``, None if it is not
    one. A zero size (some emulators before their first draw) counts as unknown. (The
    code is the mux client's, which must not import this module's asyncio.)"""
    from common.client.mux_client import window_size as read

    return read(fd)


def size_or_default(fd: int) -> tuple[int, int, int, int]:
    """What to tell the server when it needs a size: the terminal's, else 80x24 (ssh)."""
    return window_size(fd) or (DEFAULT_COLUMNS, DEFAULT_ROWS, 0, 0)


# --- Raw mode -----------------------------------------------------------------------------

_active: set[RawMode] = set()


def restore_all() -> None:
    """Put every terminal we changed back as it was. Safe to call from anywhere, any time
    (signal handlers, atexit, finally blocks), and more than once."""
    for mode in list(_active):
        mode.restore()


atexit.register(restore_all)


class RawMode:
    """The terminal on ``fd`` in raw mode (as ssh's ``enter_raw_mode``: no echo, no line
    discipline, no signals from ^C/^Z, no output processing), and back.

    ^C must reach the remote pty as the byte 0x03, not become our SIGINT; output post-
    processing is the remote pty's job, doing it twice would turn ``\\r\\n`` into
    ``\\r\\r\\n``. Restoring uses TCSADRAIN so the last output is not cut off.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[int | list[bytes | int]] | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def enter(self) -> None:
        if self._saved is not None:
            return
        saved = termios.tcgetattr(self.fd)
        self._saved = saved
        _active.add(self)
        try:
            tty.setraw(self.fd, termios.TCSADRAIN)
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        _active.discard(self)
        if saved is None:
            return
        # The terminal may be gone (hangup): nothing left to restore then.
        with contextlib.suppress(OSError, termios.error):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def __enter__(self) -> RawMode:
        self.enter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


@contextlib.contextmanager
def suspended(mode: RawMode | None) -> Iterator[None]:
    """Cooked mode for a moment (a help text, a suspend), raw again afterwards."""
    was_raw = mode is not None and mode.active
    if was_raw:
        assert mode is not None
        mode.restore()
    try:
        yield
    finally:
        if was_raw:
            assert mode is not None
            mode.enter()


# --- Prompts ------------------------------------------------------------------------------


def has_tty() -> bool:
    """Whether a person can be asked: a controlling terminal exists and opens."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


class TtyPrompter:
    """Questions to the person at the controlling terminal."""

    async def ask(self, prompt: str, *, echo: bool = True) -> str | None:
        """The answer (without its newline), or None when there is no terminal. With
        ``echo=False`` the answer is not shown, and echo comes back however this ends
        (answer, ^C, cancellation)."""
        with _terminal(prompt, echo) as fd:
            if fd is None:
                return None
            line = await _read_line(fd)
            return line.decode(errors="replace")

    async def ask_secret(self, prompt: str) -> Secret | None:
        """``ask(echo=False)`` for a password or passphrase: read (``readv``) into one buffer
        allocated up front, so the answer is copied nowhere but into the :class:`Secret`
        returned, and that buffer is zeroed. The caller closes the secret."""
        buffer = bytearray(MAX_SECRET_LINE)
        try:
            with _terminal(prompt, False) as fd:
                if fd is None:
                    return None
                length = await _read_line_into(fd, buffer)
                return Secret(memoryview(buffer)[:length])
        finally:
            buffer[:] = bytes(len(buffer))


#: The longest password or passphrase read; a terminal's line in canonical mode is shorter.
MAX_SECRET_LINE = 4096


@contextlib.contextmanager
def _terminal(prompt: str, echo: bool) -> Iterator[int | None]:
    """/dev/tty with ``prompt`` written to it (None without one); without ``echo`` the
    answer is not shown, and echo comes back however this ends."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        yield None
        return
    saved: list[int | list[bytes | int]] | None = None
    try:
        if not echo:
            with contextlib.suppress(termios.error):
                saved = termios.tcgetattr(fd)
                quiet = termios.tcgetattr(fd)
                quiet[3] &= ~termios.ECHO  # lflag
                quiet[3] |= termios.ECHONL | termios.ICANON
                termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        os.write(fd, prompt.encode())
        yield fd
    finally:
        if saved is not None:
            # TCSADRAIN, not TCSAFLUSH: what was typed ahead (the first command after
            # the password) is kept for the session.
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        os.close(fd)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until ``fd`` can be read, without a thread, and cancellable."""
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, set_ready, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _read_line(fd: int) -> bytes:
    """One line from a terminal in canonical mode, read when the loop says it is ready, so
    waiting costs no thread and can be cancelled."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while True:
        await _readable(loop, fd)
        try:
            chunk = os.read(fd, 1024)
        except BlockingIOError:
            continue
        except OSError:  # EIO: the terminal hung up
            chunk = b""
        if not chunk:
            return bytes(data)
        data += chunk
        if data.endswith((b"\n", b"\r")):
            return bytes(data.rstrip(b"\r\n"))


async def _read_line_into(fd: int, buffer: bytearray) -> int:
    """As :func:`_read_line`, into ``buffer`` (no other copy); returns the line's length
    without its end. A longer line is cut at the buffer's size."""
    loop = asyncio.get_running_loop()
    view = memoryview(buffer)
    length = 0
    while length < len(buffer):
        await _readable(loop, fd)
        try:
            count = os.readv(fd, [view[length:]])
        except BlockingIOError:
            continue
        except OSError:  # EIO: the terminal hung up
            count = 0
        if not count:
            break
        length += count
        if buffer[length - 1] in b"\r\n":
            break
    while length and buffer[length - 1] in b"\r\n":
        length -= 1
    return length


def set_ready(future: asyncio.Future[None]) -> None:
    """An add_reader/add_writer callback: readiness may be reported again before the
    waiter runs, and a second set_result would raise inside the loop."""
    if not future.done():
        future.set_result(None)


@contextlib.contextmanager
def saved_blocking_modes(fds: tuple[int, ...] = (0, 1, 2)) -> Iterator[None]:
    """Put O_NONBLOCK back as it was on exit: the fds outlive qsh in the user's shell."""
    saved: dict[int, bool] = {}
    for fd in fds:
        with contextlib.suppress(OSError):
            saved[fd] = os.get_blocking(fd)
    try:
        yield
    finally:
        for fd, blocking in saved.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, blocking)
