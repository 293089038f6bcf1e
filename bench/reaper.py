#!/usr/bin/env python3
"""``python bench/reaper.py CMD ARGS...``: run a daemon below a child subreaper, so that no
CPU time of its process tree escapes the benchmark.

A server's CPU is counted as the listener's ``utime + stime + cutime + cstime``: every
process below it is reaped by its parent and its time added to that parent's ``cutime``.
That fails for a process whose parent exits first: it is re-parented, normally to PID 1,
and its time is lost. OpenSSH 9.2 does that for every non-root login (the privileged
monitor exits before the user's ``sshd: user@notty`` child, which then carries the whole
session: a 1 GiB transfer counted 0.02 s of server CPU). This wrapper marks itself a child
subreaper (``PR_SET_CHILD_SUBREAPER``), so such orphans are re-parented to it instead;
it starts CMD, reaps every child it gets, and its own ``cutime + cstime`` holds the orphans'
time. Server CPU is then :func:`server_cpu` of both. SIGTERM, SIGINT and SIGHUP are passed
on to CMD; the wrapper exits with CMD's status once CMD has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
HERE = Path(__file__).resolve()


def command(argv: list[str]) -> list[str]:
    """``argv`` run below this wrapper."""
    return [sys.executable, str(HERE), *argv]


def _fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The children of ``pid``, zombies not yet reaped included (a scan of /proc: this
    kernel has no ``/proc/PID/task/TID/children``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def server_cpu(reaper: int, listener: int) -> float:
    """Seconds: the listener's own and reaped time, plus the orphans the reaper reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    mine = _fields(listener)
    orphans = _fields(reaper)
    total = sum(int(mine[i]) for i in (11, 12, 13, 14)) if mine else 0
    total += sum(int(orphans[i]) for i in (13, 14)) if orphans else 0
    return total / ticks


def settled(reaper: int, listener: int) -> bool:
    """True once every process of past connections has ended and been reaped: the
    listener has no child (zombies included) and the reaper none but the listener."""
    return not children(listener) and children(reaper) == [listener]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"reaper: prctl: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if done == pid:
            return os.waitstatus_to_exitcode(status) & 0xFF


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
