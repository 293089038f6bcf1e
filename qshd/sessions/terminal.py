"""A session's terminal: its window size, becoming the controlling terminal, and who
hears of it (utmp, wtmp, lastlog)."""

from __future__ import annotations

import fcntl
import logging
import struct
import termios
from collections.abc import Callable
from typing import Any, Protocol

from common.channels.session import WindowSize

log = logging.getLogger("qshd")

_MAX_WINSIZE = 0xFFFF


def pack_winsize(size: WindowSize) -> bytes:
    """struct winsize: rows, columns, x pixels, y pixels (unsigned shorts)."""
    return struct.pack("HHHH", min(size.rows, _MAX_WINSIZE), min(size.columns, _MAX_WINSIZE),
                       min(size.width_px, _MAX_WINSIZE), min(size.height_px, _MAX_WINSIZE))


def acquire_controlling_terminal() -> None:
    """Runs in the child after setsid and the privilege drop, right before exec: make the
    PTY slave (already on fd 0) the session's controlling terminal, so ^C, job control and
    /dev/tty work. A session leader without one may take a terminal nobody else holds."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class TerminalAccounting(Protocol):
    """Who hears of a session's terminal (utmp, wtmp, lastlog are root's to write: qshd's
    user process tells its monitor)."""

    def opened(self, line: str, pid: int) -> None: ...
    def closed(self, line: str, pid: int, status: int) -> None: ...


def tell_accounting(hook: Callable[..., None], *args: Any) -> None:
    """Accounting is a record of the session, never a reason to fail it."""
    try:
        hook(*args)
    except Exception:
        log.exception("session accounting failed")
