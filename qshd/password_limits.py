"""How many password checks (bcrypt runs) may run and wait at once.

Its own module because the bound is a resource policy, not a login decision, and each
process role keeps it its own way: the in-process server (qshd.server) in a thread pool of
its own (:class:`PasswordChecks`); the daemon, whose listener makes the lock files at start
(:class:`PasswordSlots`), in every connection's monitor, which holds one while it checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: bcrypt threads: half the CPUs, one at least, eight at most. Guessers can then never
#: take every core from the handshakes, key logins and sessions of everybody else.
PASSWORD_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))
#: Password checks that may wait for a bcrypt thread; one more is refused at once.
PASSWORD_QUEUE = 32


class PasswordChecks:
    """bcrypt's own pool: ``threads`` workers and at most ``queue`` checks waiting.

    A full queue refuses the attempt at once (the caller logs it as failed) instead of
    growing: under a guessing flood a real user's password waits at most ``queue`` checks,
    not the whole flood. A check whose connection is gone by the time a thread takes it is
    skipped: a guesser that hangs up without waiting costs no bcrypt run.
    """

    def __init__(self, threads: int = PASSWORD_THREADS, queue: int = PASSWORD_QUEUE) -> None:
        self.threads = threads
        self.limit = threads + queue
        self._executor = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="qshd-bcrypt")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Checks running or waiting."""
        return self._pending

    def _done(self, _: concurrent.futures.Future[bool]) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, check: Callable[[], bool],
                  still_wanted: Callable[[], bool] = lambda: True) -> bool | None:
        """``check()`` on a bcrypt thread; None if the queue is full."""
        with self._lock:
            if self._pending >= self.limit:
                return None
            self._pending += 1
        try:
            future = self._executor.submit(lambda: still_wanted() and check())
        except RuntimeError:  # shut down: the daemon is stopping
            self._done(concurrent.futures.Future())
            return None
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class PasswordSlots:
    """bcrypt's share of the machine across every connection's process.

    Each connection's monitor checks its own passwords, so a pool inside one process no
    longer bounds them: 60 guessers would be 60 bcrypt runs at once, and a key login would
    wait for a core. These are ``running`` lock files a check must hold one of (at most that
    many bcrypt runs at a time, machine-wide) and ``waiting`` more that bound the queue: a
    check that finds the queue full is refused at once, as the in-process pool does.
    ``flock`` locks go with their process, so a monitor that dies holding one frees it.
    """

    def __init__(self, directory: Path, running: int = PASSWORD_THREADS,
                 waiting: int = PASSWORD_QUEUE) -> None:
        self.directory = directory
        self.running = [directory / f"run-{i}" for i in range(running)]
        self.waiting = [directory / f"wait-{i}" for i in range(running + waiting)]

    @classmethod
    def create(cls, directory: Path | None = None, **limits: int) -> PasswordSlots:
        """Make (or check) the directory and its lock files; in the listener, at start."""
        if directory is None:
            base = (Path("/run/qshd") if os.geteuid() == 0
                    else Path(tempfile.gettempdir()) / f"qshd-{os.geteuid()}")
            directory = base / "bcrypt"
        for path in (directory.parent, directory):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
            st = os.lstat(path)
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                    or (path == directory and st.st_mode & 0o077)):
                raise OSError(f"{path}: not a private directory of ours")
        slots = cls(directory, **limits)
        for path in (*slots.running, *slots.waiting):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600))
        return slots

    def run(self, check: Callable[[], bool], timeout: float) -> bool | None:
        """``check()`` once a slot is free; None if the queue is full or ``timeout``
        passed first."""
        waiting = self._take(self.waiting)
        if waiting is None:
            return None
        try:
            deadline = time.monotonic() + timeout
            while (running := self._take(self.running)) is None:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)
            try:
                return check()
            finally:
                os.close(running)
        finally:
            os.close(waiting)

    @staticmethod
    def _take(paths: list[Path]) -> int | None:
        for path in paths:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

