"""The ``session`` channel on the server: a login shell or a command, with or without a PTY.

Process model. Sessions run in the user's process of their connection
(:mod:`qshd.postauth`, already the user: nothing below changes identity then), or in the
in-process server (:mod:`qshd.server`, root: the child drops to the user). Every session's
program is a child process that the server starts for it and watches, and nothing else runs
on the user's behalf:

* the child is started with ``subprocess.Popen`` in an executor thread (a fork from a big
  process and an exec from a stalled home directory take time that must not stall the event
  loop and with it every other session), in a new session (``setsid``) so that it and
  everything it starts form one process group we can signal as a whole;
* when qshd is root the child drops to the user before it execs anything (Popen's
  ``extra_groups`` / ``group`` / ``user``: setgroups, setregid, setreuid, in that order,
  then the optional PTY step below, then exec): no code of the user's ever runs as root;
* its stdio is either a PTY (``pty-req``: one stream, stderr merged as in ssh, the slave as
  its controlling terminal) or three pipes (stdout as data, stderr as extended data);
* our ends of those descriptors are non-blocking and served by the event loop's reader and
  writer callbacks, with flow control both ways: we stop reading the process's output while
  more than the channel's high-water mark waits for the client's window, and we stop
  reading the channel (so its window closes) while the process does not take its input;
* the child's exit is seen through a pidfd opened right after the spawn (Linux >= 5.3;
  polling elsewhere), not through asyncio's child watcher, whose default in Python 3.11
  keeps one thread per child.

Ending. When the program exits we forward all of its output first (pipes until EOF; a PTY
until EIO, or until it stays quiet when a background job keeps the terminal open), then
send ``exit-status`` or ``exit-signal``, EOF and close. When the client closes the channel
first or the connection dies, the session is hung up: SIGHUP to the process group and to
every process left in the child's session (a shell with job control puts each job in a
group of its own), SIGKILL to whatever is still there after :data:`HANGUP_GRACE` seconds.

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

Isolation. Each session is its own task; anything that goes wrong in one (a bad request, a
failed exec, our own bug) ends that channel, is logged, and touches nothing else. Session
data and commands never reach the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import grp
import logging
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from common import aio
from common.channels.copy import COPY
from common.channels.session import (
    ENV,
    EXEC,
    EXIT_SIGNAL,
    EXIT_STATUS,
    PTY_REQ,
    SESSION,
    SHELL,
    SIGNAL,
    SIGNAL_NAMES,
    SUBSYSTEM,
    WINDOW_CHANGE,
    ExitSignal,
    PtyRequest,
    WindowSize,
    decode_env,
    decode_exec,
    decode_signal,
    decode_subsystem,
    decode_window_change,
    encode_exit_status,
)
from common.channels.tunnel import KINDS as TUNNEL_KINDS
from common.errors import InvalidInput
from common.protocol.mux import ChannelRequest, OpenFailureReason
from common.transfer import serve as copy_serve

from .login import Account
from .policy import SessionPolicy
from .tunnels import Tunnels

log = logging.getLogger("qshd")

#: Seconds between SIGHUP and SIGKILL when a session is hung up.
HANGUP_GRACE = 3.0
#: One read from the program's output; a record's worth, so large outputs cost few calls.
READ_SIZE = 256 * 1024
#: Pipe capacity asked for (Linux): a 64 KiB pipe would cap every read, and so every
#: record, at 64 KiB. Best effort: an unprivileged user's pipe budget may refuse it.
PIPE_SIZE = 1024 * 1024
#: After the program exited, a PTY that gives neither data nor EIO for this long is held
#: open by a background job: stop waiting for it (the hangup then reaches that job).
PTY_QUIET = 0.25
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_WINSIZE = 0xFFFF


def _pack_winsize(size: WindowSize) -> bytes:
    """struct winsize: rows, columns, x pixels, y pixels (unsigned shorts)."""
    return struct.pack("HHHH", min(size.rows, _MAX_WINSIZE), min(size.columns, _MAX_WINSIZE),
                       min(size.width_px, _MAX_WINSIZE), min(size.height_px, _MAX_WINSIZE))


def _acquire_controlling_terminal() -> None:
    """Runs in the child after setsid and the privilege drop, right before exec: make the
    PTY slave (already on fd 0) the session's controlling terminal, so ^C, job control and
    /dev/tty work. A session leader without one may take a terminal nobody else holds."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _signal_name(number: int) -> str:
    name = SIGNAL_NAMES.get(number)
    if name is not None:
        return name
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return f"SIG{number}"


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


def _set_pipe_size(fd: int) -> None:
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setter is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setter, PIPE_SIZE)


#: ``waitid`` can read an exit status and leave the child unreaped (not on every system).
_CAN_PEEK = all(hasattr(os, name) for name in ("waitid", "WNOWAIT", "P_PID"))


@dataclass
class _Child:
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


class TerminalAccounting(Protocol):
    """Who hears of a session's terminal (utmp, wtmp, lastlog are root's to write: qshd's
    user process tells its monitor)."""

    def opened(self, line: str, pid: int) -> None: ...
    def closed(self, line: str, pid: int, status: int) -> None: ...


class Session:
    """One ``session`` channel of a logged-in user, from its open to its close."""

    def __init__(self, channel: aio.Channel, account: Account, *, euid: int,
                 connection_info: str,
                 accounting: TerminalAccounting | None = None,
                 policy: SessionPolicy | None = None) -> None:
        self.policy = policy or SessionPolicy()
        #: What the client asked to run, when a forced command replaced it.
        self.original_command: str | None = None
        self.channel = channel
        self.account = account
        self.euid = euid
        self.connection_info = connection_info
        self.accounting = accounting
        self._terminal: tuple[str, int] | None = None  # (line, pid) told to accounting
        self.loop = asyncio.get_running_loop()
        self.tag = f"conn={channel.connection.number} chan={channel.id}"
        self.pty: PtyRequest | None = None
        self.size: WindowSize | None = None
        self.env: dict[str, str] = {}
        self.child: _Child | None = None
        #: The exit status went out: the session ended normally, nothing to hang up.
        self.completed = False
        self._done = asyncio.Event()
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._pumps: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._last_output = self._last_input = self.loop.time()
        self._watcher: asyncio.Task[None] | None = None

    # -- lifetime

    async def run(self) -> None:
        """The channel handler: accept, serve requests until the program ends (or the
        channel does), then make sure nothing of the session is left behind."""
        try:
            self.channel.accept()
            self._start_task(self._serve_requests, "requests")
            if self.policy.idle_timeout > 0:
                self._start_task(self._close_when_idle, "ChannelTimeout")
            await self._done.wait()
        finally:
            try:
                await self._teardown()
            finally:
                if not self._closed.done():
                    self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _start_task(self, work: Callable[[], Coroutine[Any, Any, None]], what: str, *,
                    ends_session: bool = True) -> asyncio.Task[None]:
        """Run a part of the session; its end (or its failure) ends the session.

        ``work`` makes the coroutine only once the task runs: a task cancelled before its
        first step (the session ended at once) must not leave a coroutine that was made
        and never awaited, which Python reports on stderr."""
        async def guarded() -> None:
            failed = True
            try:
                await work()
                failed = False
            except (aio.ConnectionLost, aio.ChannelClosedError) as exc:
                log.debug("%s: %s ended: %s", self.tag, what, exc)
            except asyncio.CancelledError:
                failed = False
                raise
            except Exception:
                log.exception("%s: session %s failed; ending the session", self.tag, what)
            finally:
                if ends_session or failed:
                    self._done.set()

        task = asyncio.ensure_future(guarded())
        if ends_session:
            self._tasks.append(task)
        return task

    async def _teardown(self) -> None:
        for task in self._tasks:
            task.cancel()
        child = self.child
        try:
            if child is not None and not self.completed:
                await self._hang_up(child)
            await self._stop_pumps()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            if child is not None:
                child.close_all()
                child.release()  # signalling is over: its pid may go
            if self._terminal is not None and self.accounting is not None:
                exited = child.exited if child is not None else None
                status = exited.result() if exited is not None and exited.done() else 0
                _tell(self.accounting.closed, *self._terminal, status)
                self._terminal = None

    async def _stop_pumps(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _hang_up(self, child: _Child) -> None:
        """The client went away first: SIGHUP, then SIGKILL after the grace period, until
        neither the child nor anything in its session is left."""
        await self._stop_pumps()
        if child.master is not None:
            child.close_fd(child.master)  # a terminal hangup, as when a modem line drops
        log.info("%s: hanging up the session of %s (pid %d)", self.tag, self.account.name,
                 child.pid)
        child.signal_group(signal.SIGHUP)
        child.signal_group(signal.SIGCONT)  # a stopped job would never see its SIGHUP
        cleared = False
        try:
            deadline = self.loop.time() + HANGUP_GRACE
            while self.loop.time() < deadline:
                # /proc scans take a while with thousands of processes: not on the loop.
                if not child.running and not await self.loop.run_in_executor(
                        None, self._leftovers, child):
                    cleared = True
                    return
                await asyncio.sleep(0.05)
            log.info("%s: pid %d outlived SIGHUP; killing its session", self.tag, child.pid)
        finally:
            if not cleared:  # also on cancellation (the daemon is stopping): no orphans
                child.signal_group(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(child.exited), HANGUP_GRACE)

    @staticmethod
    def _leftovers(child: _Child) -> bool:
        """Is anything of the child's group or session still alive? (Unknowable, and
        nothing we may signal, once the child was reaped.)"""
        if child.reaped:
            return False
        pid = child.pid
        members = session_pids(pid)
        if members is not None:
            return bool(members)
        try:  # no /proc: the group is all we can see (zombies included)
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    # -- requests

    async def _serve_requests(self) -> None:
        channel = self.channel
        while (request := await channel.next_request()) is not None:
            try:
                ok = await self._handle(request)
            except InvalidInput as exc:
                log.info("%s: malformed %r request: %s", self.tag, request.name, exc)
                ok = False
            if request.want_reply:
                channel.reply(ok)

    async def _handle(self, request: ChannelRequest) -> bool:
        name, payload = request.name, request.payload
        if name == WINDOW_CHANGE:
            self.size = decode_window_change(payload)
            if self.child is not None and self.child.master is not None:
                with contextlib.suppress(OSError):  # the terminal may be gone already
                    fcntl.ioctl(self.child.master, termios.TIOCSWINSZ,
                                _pack_winsize(self.size))
            return self.pty is not None
        if name == SIGNAL:
            return self._signal(decode_signal(payload))
        if name == SUBSYSTEM:  # Subsystem NAME COMMAND: that command, run like exec
            wanted = decode_subsystem(payload)
            command = dict(self.policy.subsystems).get(wanted)
            if command is None or self.child is not None:
                log.info("%s: refusing subsystem %r", self.tag, wanted)
                return False
            if self.policy.force_command is not None:
                self.original_command = command
                command = self.policy.force_command
            started = await self._start(command)
            if not started and not request.want_reply:
                self._done.set()
            return started
        if name in (SHELL, EXEC):
            command = decode_exec(payload) if name == EXEC else None
            if self.child is not None:
                return False
            if self.policy.force_command is not None:
                self.original_command = command
                command = self.policy.force_command
            started = await self._start(command)
            if not started and not request.want_reply:
                self._done.set()  # nobody would ever learn of the failure otherwise
            return started
        if self.child is not None:
            return False  # settings after the start would not apply
        if name == PTY_REQ:
            if self.pty is not None:
                return False
            if not self.policy.permit_tty:
                log.info("%s: refusing a terminal for %s (PermitTTY or the key's no-pty)",
                         self.tag, self.account.name)
                return False
            self.pty = PtyRequest.decode(payload)
            self.size = self.pty.size
            return True
        if name == ENV:
            var, value = decode_env(payload)
            if not self.policy.accepts_env(var) or "\x00" in value:
                log.debug("%s: refusing environment variable %s", self.tag, var)
                return False
            self.env[var] = value
            return True
        return False

    async def _close_when_idle(self) -> None:
        """ChannelTimeout session=N: no data either way for N seconds closes the session
        (its program is hung up as when the client closes it)."""
        timeout = self.policy.idle_timeout
        while True:
            idle = self.loop.time() - max(self._last_output, self._last_input)
            if idle >= timeout:
                log.info("%s: closing the session of %s: idle for %gs (ChannelTimeout)",
                         self.tag, self.account.name, timeout)
                return  # ends the session: the teardown hangs up and closes
            await asyncio.sleep(timeout - idle)

    def _signal(self, number: int) -> bool:
        child = self.child
        if child is None or not child.running:
            return False
        target = child.pid
        if child.master is not None:
            # With a terminal, a signal goes where ^C would: the foreground job.
            with contextlib.suppress(OSError):
                target = os.tcgetpgrp(child.master)
        return child.signal_job(target, number)

    # -- starting the program

    def environment(self, tty_name: str | None) -> dict[str, str]:
        """A clean environment, like login(1): nothing of the daemon's leaks into it."""
        account = self.account
        env = dict(self.env)
        env.update({
            "USER": account.name,
            "LOGNAME": account.name,
            "HOME": account.home,
            "SHELL": account.shell,
            "PATH": ROOT_PATH if account.uid == 0 else USER_PATH,
            "MAIL": f"/var/mail/{account.name}",
            "QSH_CONNECTION": self.connection_info,
        })
        client_ip, client_port, _, server_port = (self.connection_info.split() + [""] * 4)[:4]
        env["QSH_CLIENT"] = f"{client_ip} {client_port} {server_port}"
        for name, value in self.policy.environment:  # the key's environment=, if permitted
            if not name.startswith("QSH_"):
                env[name] = value
        if self.original_command is not None:
            env["QSH_ORIGINAL_COMMAND"] = self.original_command
        if self.pty is not None:
            env["TERM"] = self.pty.term
            if tty_name is not None:
                env["QSH_TTY"] = tty_name
        return env

    async def _start(self, command: str | None) -> bool:
        account = self.account
        shell = account.shell
        base = os.path.basename(shell)
        argv = [base, "-c", command] if command is not None else ["-" + base]
        cwd = account.home if os.path.isdir(account.home) else "/"
        ours: list[int] = []  # our ends, kept
        theirs: list[int] = []  # the child's ends, closed once it has them
        try:
            kwargs: dict[str, Any] = {
                "executable": shell, "cwd": cwd, "start_new_session": True,
                "close_fds": True, "umask": 0o022,
            }
            if self.euid == 0:
                kwargs.update(user=account.uid, group=account.gid,
                              extra_groups=list(account.groups))
            tty_name = None
            if self.pty is not None:
                master, slave = os.openpty()
                ours.append(master)
                theirs.append(slave)
                if self.size is not None:
                    fcntl.ioctl(slave, termios.TIOCSWINSZ, _pack_winsize(self.size))
                tty_name = os.ttyname(slave)
                if self.euid == 0:
                    self._give_terminal(slave)
                kwargs.update(stdin=slave, stdout=slave, stderr=slave,
                              preexec_fn=_acquire_controlling_terminal)
                io: tuple[int | None, int | None, int | None, int | None] = (
                    master, None, None, None)
            else:
                stdin_r, stdin_w = os.pipe()
                stdout_r, stdout_w = os.pipe()
                stderr_r, stderr_w = os.pipe()
                ours += [stdin_w, stdout_r, stderr_r]
                theirs += [stdin_r, stdout_w, stderr_w]
                _set_pipe_size(stdin_w)
                _set_pipe_size(stdout_r)
                kwargs.update(stdin=stdin_r, stdout=stdout_w, stderr=stderr_w)
                io = (None, stdin_w, stdout_r, stderr_r)
            kwargs["env"] = self.environment(tty_name)
            popen, pidfd = await self.loop.run_in_executor(None, _popen, argv, kwargs)
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in ours:
                os.close(fd)
            log.warning("%s: cannot start %s for %s: %s", self.tag,
                        "a command" if command is not None else "a shell", account.name, exc)
            return False
        finally:
            for fd in theirs:
                os.close(fd)
        for fd in ours:
            os.set_blocking(fd, False)
        child = _Child(popen, pidfd, *io, exited=self.loop.create_future(), fds=ours)
        self.child = child
        log.info("%s: %s for %s started, pid %d%s", self.tag,
                 "command" if command is not None else "shell", account.name, child.pid,
                 f" on {tty_name}" if tty_name else "")
        if tty_name is not None and self.accounting is not None:
            self._terminal = (tty_name.removeprefix("/dev/"), child.pid)
            _tell(self.accounting.opened, *self._terminal)
        # Not cancelled by the teardown: it must go on to reap the child after a hangup.
        self._watcher = self._start_task(functools.partial(self._watch, child),
                                         "exit watcher", ends_session=False)
        self._start_task(functools.partial(self._supervise, child), "supervisor")
        return True

    def _give_terminal(self, slave: int) -> None:
        """The user owns their terminal, group tty, as login(1) leaves it: programs that
        open it by name (a password prompt, write(1)) need that."""
        try:
            tty_gid = grp.getgrnam("tty").gr_gid
        except KeyError:
            tty_gid = self.account.gid
        os.fchown(slave, self.account.uid, tty_gid)
        os.fchmod(slave, 0o620)

    # -- running

    async def _watch(self, child: _Child) -> None:
        """Learn the child's exit as soon as it happens; the status goes to
        ``child.exited``. It is reaped only once the session let go of it."""
        delay = 0.01
        while (status := child.check_exit()) is None:
            if child.pidfd is not None:
                await self._wait_fd(child.pidfd, writable=False)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        # Popen must never wait for it (nor warn that it was never waited for).
        child.popen.returncode = os.waitstatus_to_exitcode(status)
        child.exited.set_result(status)
        if child.released:
            child.reap()

    async def _supervise(self, child: _Child) -> None:
        """Move data while the program runs; once it exited and its output is out,
        report how it ended and close the channel."""
        channel = self.channel
        if child.master is not None:
            out = self._pump(functools.partial(self._forward, child.master, channel.write))
            self._pump(functools.partial(self._feed, child.master, close_at_eof=False))
            outputs = [out]
        else:
            assert child.stdout is not None and child.stderr is not None
            assert child.stdin is not None
            outputs = [
                self._pump(functools.partial(self._forward, child.stdout, channel.write)),
                self._pump(functools.partial(self._forward, child.stderr,
                                             channel.write_stderr))]
            self._pump(functools.partial(self._feed, child.stdin, close_at_eof=True))
        status = await asyncio.shield(child.exited)
        if child.master is None:
            await asyncio.gather(*outputs)
        else:
            await self._drain_terminal(outputs[0])
        for task in outputs:
            if task.done() and not task.cancelled() and (error := task.exception()):
                raise error
        await self._report_exit(status)
        self.completed = True
        channel.write_eof()
        channel.close()

    async def _drain_terminal(self, reader: asyncio.Task[None]) -> None:
        """Wait for the terminal's output until EIO (every holder of the slave closed it),
        or until it stays quiet while a background job keeps it open."""
        while not reader.done():
            await asyncio.wait([reader], timeout=PTY_QUIET)
            if not reader.done() and self.loop.time() - self._last_output >= PTY_QUIET:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _report_exit(self, status: int) -> None:
        channel = self.channel
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            report = ExitSignal(_signal_name(number), os.WCOREDUMP(status))
            log.info("%s: pid %d of %s killed by signal %s", self.tag, self.child.pid
                     if self.child else 0, self.account.name, report.signal)
            await channel.request(EXIT_SIGNAL, report.encode(), want_reply=False)
            return
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255
        log.info("%s: pid %d of %s exited with status %d", self.tag,
                 self.child.pid if self.child else 0, self.account.name, code)
        await channel.request(EXIT_STATUS, encode_exit_status(code), want_reply=False)

    def _pump(self, work: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """A data pump; ``work`` makes its coroutine once it runs (see :meth:`_start_task`)."""
        async def guarded() -> None:
            # The channel going away ends a pump quietly; the teardown follows.
            with contextlib.suppress(aio.ConnectionLost, aio.ChannelClosedError):
                await work()

        task = asyncio.ensure_future(guarded())
        self._pumps.append(task)
        return task

    async def _forward(self, fd: int, write: Callable[[bytes], None]) -> None:
        """The program's output to the channel, until EOF (pipe) or EIO (PTY).

        What is readable is gathered up to :data:`READ_SIZE` before it goes out: a PTY
        hands out about 4 KiB per read, and one record per read would cost the bulk
        output of a terminal (``cat`` of a big file) nine tenths of its speed. Only data
        already there is gathered, so nothing waits for more."""
        channel = self.channel
        loop = self.loop
        while True:
            chunks: list[bytes] = []
            size = 0
            end = False
            while size < READ_SIZE:
                try:
                    data = os.read(fd, READ_SIZE - size)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""  # PTY: no process holds the terminal any more
                if not data:
                    end = True
                    break
                chunks.append(data)
                size += len(data)
            if chunks:
                self._last_output = loop.time()
                write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                await channel.drain()
            if end:
                return
            if not chunks:
                await self._wait_fd(fd, writable=False)

    async def _feed(self, fd: int, *, close_at_eof: bool) -> None:
        """Channel data to the program. Input it will no longer take (it closed stdin or
        exited) is read and dropped, so the client is never stalled by a full window."""
        assert self.child is not None
        child = self.child
        broken = False
        async for chunk in self.channel:
            self._last_input = self.loop.time()
            if broken:
                continue
            view = memoryview(chunk)
            while view:
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await self._wait_fd(fd, writable=True)
                    continue
                except OSError as exc:  # EPIPE, or EIO from a hung-up terminal
                    log.debug("%s: input dropped: %s", self.tag, exc)
                    broken = True
                    break
                view = view[written:]
        if close_at_eof:
            child.close_fd(fd)  # the program reads EOF

    async def _wait_fd(self, fd: int, *, writable: bool) -> None:
        loop = self.loop
        waiter: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        if writable:
            loop.add_writer(fd, ready)
        else:
            loop.add_reader(fd, ready)
        try:
            await waiter
        finally:
            if writable:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)


def _popen(argv: list[str], kwargs: dict[str, Any]
           ) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start the program and hold it by a pidfd at once (nothing reaps it before us)."""
    popen: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
    try:
        pidfd: int | None = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        pidfd = None
    return popen, pidfd


def _tell(hook: Callable[..., None], *args: Any) -> None:
    """Accounting is a record of the session, never a reason to fail it."""
    try:
        hook(*args)
    except Exception:
        log.exception("session accounting failed")


async def serve_channel(channel: aio.Channel, account: Account, *, euid: int,
                        connection_info: str, sessions: set[Session],
                        accounting: TerminalAccounting | None = None,
                        tunnels: Tunnels | None = None,
                        policy: SessionPolicy | None = None) -> None:
    """A channel a logged-in user opened: a ``session`` runs until its end (tracked in
    ``sessions`` meanwhile, so its owner can wait for every hang-up); a tunnel goes to the
    connection's ``tunnels`` (refused without); a copy runs here, its files opened with the
    user's rights (never as another euid); any other kind is refused."""
    if channel.kind in TUNNEL_KINDS and tunnels is not None:
        await tunnels.serve_channel(channel)
        return
    if channel.kind == COPY and policy is not None and not policy.allows_copy:
        log.info("conn=%d: refusing a copy channel for %s: a forced command is in effect",
                 channel.connection.number, account.name)
        channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                       "copying is not allowed: a forced command is in effect")
        return
    if channel.kind == COPY and euid == account.uid:  # qcp: files opened as the user
        await copy_serve(channel)
        return
    if channel.kind != SESSION:
        log.info("conn=%d: refusing a %s channel for %s: not supported",
                 channel.connection.number, channel.kind, account.name)
        channel.reject(OpenFailureReason.UNKNOWN_CHANNEL_TYPE,
                       f"{channel.kind} channels are not supported by this server")
        return
    session = Session(channel, account, euid=euid, connection_info=connection_info,
                      accounting=accounting, policy=policy)
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
