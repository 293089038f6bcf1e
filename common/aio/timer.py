"""A timer that fires on time whatever else wakes the event loop (issue 12; PROTOCOL.md 7.8).

asyncio's ``call_at`` waits in epoll, whose timeout is whole milliseconds rounded up
(``selectors.EpollSelector``): a timer fires up to a millisecond late, and how late depends on
when the loop last computed its timeout, that is on what else woke it. For most timers that
does not matter; for the keystroke clock it did: while keys arrived (each one wakes the loop
at a random moment) the ticks were late by a different amount than while idle (where the
last wake-up before a tick is the reply to the previous one), and a two-sample KS test on a
capture's inter-record times told typing from idle. A timerfd armed with an absolute
CLOCK_MONOTONIC deadline (the loop's own clock, nanosecond resolution) makes epoll return
on time, so the lateness of a tick no longer depends on what came before it.

Linux only; elsewhere, or when the loop keeps another clock, :func:`precise_timer` gives
None and the caller keeps ``call_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import time
from collections.abc import Callable

from common.crypto import secret

#: A connection takes a timerfd at its first deadline this close (seconds): the keystroke
#: clock's ticks (20 ms by default) and the echo replies; a bulk or non-interactive
#: connection, whose timers are seconds to hours away, never needs one.
PRECISE_WITHIN = 1.0

_CLOCK_MONOTONIC = 1
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_declared = False


def _libc() -> ctypes.CDLL:
    global _declared
    handle = secret.libc()
    if not _declared:
        handle.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        handle.timerfd_create.restype = ctypes.c_int
        handle.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                           ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        handle.timerfd_settime.restype = ctypes.c_int
        _declared = True
    return handle


class PreciseTimer:
    """One re-armable timer on a timerfd; :meth:`call_at` and ``cancel`` as a TimerHandle's."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int,
                 callback: Callable[[], object]) -> None:
        self._loop = loop
        self._fd = fd
        self._callback = callback
        self._armed = False
        loop.add_reader(fd, self._ready)

    def call_at(self, when: float) -> PreciseTimer:
        """Fire at loop time ``when`` (replacing any earlier arming); returns itself, the
        handle whose ``cancel`` disarms."""
        self._settime(max(when, 1e-9))
        self._armed = True
        return self

    def cancel(self) -> None:
        if self._armed and self._fd >= 0:
            self._settime(0.0)  # a zero deadline disarms; a pending expiry is forgotten
        self._armed = False

    def close(self) -> None:
        if self._fd >= 0:
            self._armed = False
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _settime(self, when: float) -> None:
        seconds = int(when)
        value = _Timespec(seconds, int((when - seconds) * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), value)
        if _libc().timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def _ready(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:  # re-armed or cancelled since it became readable
            return
        if self._armed:
            self._armed = False
            self._callback()


def precise_timer(loop: asyncio.AbstractEventLoop,
                  callback: Callable[[], object]) -> PreciseTimer | None:
    """A :class:`PreciseTimer` calling ``callback``, or None where there is none to have
    (not Linux, no timerfd, a loop whose ``time()`` is not CLOCK_MONOTONIC)."""
    if not hasattr(os, "O_CLOEXEC") or abs(loop.time() - time.monotonic()) > 0.001:
        return None
    try:
        fd = _libc().timerfd_create(_CLOCK_MONOTONIC, _TFD_CLOEXEC | _TFD_NONBLOCK)
    except (AttributeError, OSError):
        return None
    if fd < 0:
        return None
    try:
        return PreciseTimer(loop, fd, callback)
    except Exception:
        os.close(fd)
        return None
