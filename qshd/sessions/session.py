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
  then the optional PTY step below, then exec): no code of the user's ever runs as root
  (a root login's user's process already has root's ids and groups: nothing to drop,
  see :func:`has_credentials_of`);
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

Isolation. Each session is its own task; anything that goes wrong in one (a bad request, a
failed exec, our own bug) ends that channel, is logged, and touches nothing else. Session
data and commands never reach the log.

The child process itself (started, watched, signalled, reaped) is
:mod:`qshd.sessions.process`'s.
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
import subprocess
import termios
from collections.abc import Callable, Coroutine
from typing import Any

from common import aio
from common.channels.session import (
    ENV,
    EXEC,
    EXIT_SIGNAL,
    EXIT_STATUS,
    PTY_REQ,
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
from common.errors import InvalidInput
from common.protocol.mux import ChannelRequest

from ..login import Account
from ..policy import SessionPolicy
from .process import Child, session_pids, set_pipe_size, start_process
from .terminal import (
    TerminalAccounting,
    acquire_controlling_terminal,
    pack_winsize,
    tell_accounting,
)

log = logging.getLogger("qshd")

#: Seconds between SIGHUP and SIGKILL when a session is hung up.
HANGUP_GRACE = 3.0
#: One read from the program's output; a record's worth, so large outputs cost few calls.
READ_SIZE = 256 * 1024
#: After the program exited, a PTY that gives neither data nor EIO for this long is held
#: open by a background job: stop waiting for it (the hangup then reaches that job).
PTY_QUIET = 0.25
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def has_credentials_of(account: Account) -> bool:
    """Does this process already have exactly ``account``'s ids and groups (the user's
    process of a root login: :func:`qshd.privsep.become_user` made it so)? A child then
    needs no change of identity, and ``subprocess`` starts it with ``vfork``: asking it to
    set ids again, even the same ones, makes it copy the whole process with ``fork``
    instead, several ms of a login's ``qsh host true`` on a busy machine."""
    uid, gid = account.uid, account.gid
    return (os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid)
            and set(os.getgroups()) == set(account.groups))


def _signal_name(number: int) -> str:
    name = SIGNAL_NAMES.get(number)
    if name is not None:
        return name
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return f"SIG{number}"


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
        self.child: Child | None = None
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
                tell_accounting(self.accounting.closed, *self._terminal, status)
                self._terminal = None

    async def _stop_pumps(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _hang_up(self, child: Child) -> None:
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
    def _leftovers(child: Child) -> bool:
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
                                pack_winsize(self.size))
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
            if self.euid == 0 and not has_credentials_of(account):
                kwargs.update(user=account.uid, group=account.gid,
                              extra_groups=list(account.groups))
            tty_name = None
            if self.pty is not None:
                master, slave = os.openpty()
                ours.append(master)
                theirs.append(slave)
                if self.size is not None:
                    fcntl.ioctl(slave, termios.TIOCSWINSZ, pack_winsize(self.size))
                tty_name = os.ttyname(slave)
                if self.euid == 0:
                    self._give_terminal(slave)
                kwargs.update(stdin=slave, stdout=slave, stderr=slave,
                              preexec_fn=acquire_controlling_terminal)
                io: tuple[int | None, int | None, int | None, int | None] = (
                    master, None, None, None)
            else:
                stdin_r, stdin_w = os.pipe()
                stdout_r, stdout_w = os.pipe()
                stderr_r, stderr_w = os.pipe()
                ours += [stdin_w, stdout_r, stderr_r]
                theirs += [stdin_r, stdout_w, stderr_w]
                set_pipe_size(stdin_w)
                set_pipe_size(stdout_r)
                kwargs.update(stdin=stdin_r, stdout=stdout_w, stderr=stderr_w)
                io = (None, stdin_w, stdout_r, stderr_r)
            kwargs["env"] = self.environment(tty_name)
            popen, pidfd = await self.loop.run_in_executor(None, start_process, argv, kwargs)
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
        child = Child(popen, pidfd, *io, exited=self.loop.create_future(), fds=ours)
        self.child = child
        log.info("%s: %s for %s started, pid %d%s", self.tag,
                 "command" if command is not None else "shell", account.name, child.pid,
                 f" on {tty_name}" if tty_name else "")
        if tty_name is not None and self.accounting is not None:
            self._terminal = (tty_name.removeprefix("/dev/"), child.pid)
            tell_accounting(self.accounting.opened, *self._terminal)
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

    async def _watch(self, child: Child) -> None:
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

    async def _supervise(self, child: Child) -> None:
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
