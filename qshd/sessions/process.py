"""A session's program as a process: started, watched, signalled and reaped.

Signalling only what is ours. qshd runs as root, so a signal sent to a pid number that has
meanwhile been handed to another process would reach anything on the system. The child's
exit status is therefore read without reaping it (``waitid`` with ``WNOWAIT``): the child
stays a zombie until the session is over, and while it does its pid, which is also the
number of its process group and of its session, cannot be given to any other process.
Group and session are signalled only while that holds, and never once the child was
reaped. Other members of the session (jobs in groups of their own) are found in /proc and
each is pinned by a pidfd and checked again before it is signalled, so a member that died
meanwhile, its pid reused, is not hit either. A ``setsid`` grandchild left its own session
on purpose: it is not ours to signal (it only loses its output when the session ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Pipe capacity asked for (Linux): a 64 KiB pipe would cap every read, and so every
#: record, at 64 KiB. Best effort: an unprivileged user's pipe budget may refuse it.
PIPE_SIZE = 1024 * 1024


def _proc_ids(pid: int | str) -> tuple[int, int] | None:
    """Process group and session of ``pid`` from /proc; None when it is gone or a zombie
    (dead: whoever inherited it, init in a container perhaps slowly, will reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    # The command name (in parentheses) may contain spaces: parse after the last ')'.
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    # state ppid pgrp session ...
    if len(fields) < 4 or fields[0] == b"Z":
        return None
    try:
        return int(fields[2]), int(fields[3])
    except ValueError:
        return None


def _scan(belongs: Callable[[int, int], bool]) -> list[int] | None:
    """Live processes whose (process group, session) ``belongs``; None without /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    pids: list[int] = []
    for entry in entries:
        if entry.isdigit() and (ids := _proc_ids(entry)) is not None and belongs(*ids):
            pids.append(int(entry))
    return pids


def session_pids(sid: int) -> list[int] | None:
    """Live processes in session ``sid`` or in process group ``sid`` (Linux /proc; None
    where there is no /proc). Jobs of a shell with job control live in process groups of
    their own but never leave the session unless they call setsid themselves, which is a
    deliberate daemonisation."""
    return _scan(lambda pgrp, session: sid in (pgrp, session))


def _signal_member(pid: int, sig: int, belongs: Callable[[int, int], bool]) -> bool:
    """Signal ``pid``, found by a /proc scan, if it still ``belongs``: pinned by a pidfd
    first and checked again, so a process that died after the scan and whose pid went to
    someone else is left alone. Without pidfds (Linux < 5.3) the check right before the
    kill is all there is."""
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        pidfd = None
    try:
        ids = _proc_ids(pid)
        if ids is None or not belongs(*ids):
            return False
        if pidfd is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(pidfd, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _raw_status(result: os.waitid_result) -> int:
    """The wait status ``waitpid`` would give, from a ``waitid`` result."""
    if result.si_code == os.CLD_EXITED:
        return (result.si_status & 0xFF) << 8
    if result.si_code == os.CLD_DUMPED:
        return result.si_status | 0x80
    return result.si_status  # CLD_KILLED


def set_pipe_size(fd: int) -> None:
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setter is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setter, PIPE_SIZE)


#: ``waitid`` can read an exit status and leave the child unreaped (not on every system).
_CAN_PEEK = all(hasattr(os, name) for name in ("waitid", "WNOWAIT", "P_PID"))


@dataclass
class Child:
    """A started program and our ends of its descriptors.

    The child is reaped only by :meth:`release`, once the session is over (see "Signalling
    only what is ours" above): until then ``pid`` names it and nothing else."""

    popen: subprocess.Popen[bytes]
    pidfd: int | None  # opened right after the spawn; None without pidfds
    master: int | None  # the PTY master (read and written), or None for pipes
    stdin: int | None
    stdout: int | None
    stderr: int | None
    exited: asyncio.Future[int]  # the raw wait status, once it exited
    fds: list[int] = field(default_factory=list)
    #: Waited for: from here on its pid may belong to anyone, so nothing is signalled.
    reaped: bool = False
    #: The session is over: reap it as soon as it exited.
    released: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def check_exit(self) -> int | None:
        """The raw wait status once the child exited, else None. The child stays unreaped
        where ``waitid`` allows (a zombie, holding its pid); elsewhere it is reaped here."""
        if _CAN_PEEK:
            result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            return None if result is None else _raw_status(result)
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if not pid:
            return None
        self._reaped()
        return status

    def release(self) -> None:
        """Nothing of the session will be signalled any more: reap the child now if it
        exited, or as soon as it does (the exit watcher calls :meth:`reap`)."""
        self.released = True
        if self.exited.done():
            self.reap()

    def reap(self) -> None:
        if self.reaped:
            return
        try:
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not ours to wait for any more: treat it as gone
            pid = self.pid
        if pid:
            self._reaped()

    def _reaped(self) -> None:
        self.reaped = True
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def close_fd(self, fd: int | None) -> None:
        if fd is not None and fd in self.fds:
            self.fds.remove(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self.fds):
            self.close_fd(fd)

    def signal_group(self, sig: int) -> bool:
        """Signal the process group (``pid``: the child leads it) and every process left in
        its session; False when none is left, and always once the child was reaped."""
        if self.reaped:
            return False
        delivered = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
            delivered = True
        sid = self.pid

        def member(pgrp: int, session: int) -> bool:
            return sid in (pgrp, session)

        for pid in _scan(member) or ():
            delivered = _signal_member(pid, sig, member) or delivered
        return delivered

    def signal_job(self, pgrp: int, sig: int) -> bool:
        """Signal process group ``pgrp`` of the child's session (a terminal's foreground
        job). Its number comes from the terminal, which may still name a group that has
        ended and whose number went to another process: the group's members are signalled
        one by one, each checked to be in our session."""
        if self.reaped:
            return False
        if pgrp == self.pid:
            try:
                os.killpg(pgrp, sig)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        sid = self.pid

        def member(group: int, session: int) -> bool:
            return group == pgrp and session == sid

        members = _scan(member)
        if members is None:  # no /proc: no way to check, the group is all we can name
            try:
                os.killpg(pgrp, sig)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        delivered = False
        for pid in members:
            delivered = _signal_member(pid, sig, member) or delivered
        return delivered


def start_process(argv: list[str], kwargs: dict[str, Any]
           ) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start the program and hold it by a pidfd at once (nothing reaps it before us)."""
    popen: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
    try:
        pidfd: int | None = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        pidfd = None
    return popen, pidfd
