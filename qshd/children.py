"""Our own child processes: waiting for their exit and ending them.

Two rules shared by every process of qshd that forks (the monitor and its pre-auth and user
processes, the authorized_keys reader): wait on a pidfd rather than poll (a login paid
~7 ms to a 10 ms polling sleep), and signal a pid only while it is our unreaped child, so
the number cannot have passed to another process.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time


def wait_exit(pid: int, timeout: float | None) -> int | None:
    """Reap our child ``pid`` once it exits within ``timeout`` seconds (None: however
    long) and return its wait status; None if it is still running then. Raises
    :class:`ChildProcessError` if it is not (or no longer) our unreaped child."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:
        pidfd = None  # Linux < 5.3, or it is gone: waitpid below tells which
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], remaining)
            else:
                time.sleep(0.01 if remaining is None else min(remaining, 0.01))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def end(*pids: int, grace: float) -> None:
    """Stop children that are left when their connection is over: SIGTERM, up to
    ``grace`` seconds, then SIGKILL; every one of them reaped on return."""
    running = []
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            if pid > 0 and wait_exit(pid, 0) is None:
                running.append(pid)
    for pid in running:
        os.kill(pid, signal.SIGTERM)  # ours and unreaped: the number is still ours
    deadline = time.monotonic() + grace
    for pid in running:
        with contextlib.suppress(ChildProcessError):
            if wait_exit(pid, max(0.0, deadline - time.monotonic())) is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
