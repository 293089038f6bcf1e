"""The ``session`` channel of a qsh run: pty-req / shell / exec / subsystem, the byte pumps
between the local fds and the channel, raw mode, the ``~`` escapes, signals, and the exit
status they come to. On its own because a session runs the same whether qsh made the
connection itself or a mux master shares it (qsh/mux.py); the run around it (connect, log
in, tunnels, -N, -f, the master) is qsh/session.py.

Exit status follows ssh: the remote status; 128+N for a remote signal; 255 when qsh itself
fails, with one line on stderr (:class:`QshError`). The remote status counts only once the
channel has closed in order (PROTOCOL.md §10.3): the status request overtakes output still
waiting for window, so a connection that ends after the status but before the channel's
CLOSE -- a record that fails its tag, a cut, an error packet -- lost output, and qsh exits
255 whatever status it had.

A signal that tells qsh to stop (SIGINT, SIGTERM, SIGHUP without a pty) is forwarded to the
remote command, which gets ``SignalTimeout`` seconds to end; qsh then exits 128+N whatever
status the command chose (a command that traps TERM and exits 0 must not make a cancelled
job look successful), or 128+N with one line when the command did not end in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from common import aio
from common.channels import session as proto
from common.cli import EXIT_FAILURE
from common.client import terminal
from common.client.config import ClientConfig, environment_to_send
from common.client.connect import DisconnectError, QshError, Ui, describe_end
from common.errors import ErrorCode, QsmpError

from .local_end import READ_SIZE, FdReader, FdWriter, LocalEnd

if TYPE_CHECKING:
    from . import escapes
    from .tunnels import ClientTunnels



# --- The session --------------------------------------------------------------------------


def exit_code(status: int | None, exit_signal: proto.ExitSignal | None) -> int:
    """What qsh exits with: the remote status, 128+N for a remote signal, 255 without
    either. A status above 255 would be truncated by the OS (256 would read as success),
    so it becomes 255."""
    if exit_signal is not None:
        return proto.exit_code_for_signal(exit_signal.signal)
    if status is None:
        return EXIT_FAILURE
    return status if 0 <= status <= 255 else EXIT_FAILURE


class _Outcome:
    """How the session ended, filled in as it does."""

    __slots__ = ("exit_signal", "killed_by", "local_stop", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.exit_signal: proto.ExitSignal | None = None
        #: Why we stopped on our own (~., a second ^C, a signal): exit 255 with this message.
        self.local_stop: str | None = None
        #: A signal we forwarded: the run ends 128+N of it at the latest, never 0.
        self.killed_by: int | None = None


class Session:
    """A ``session`` channel wired to fds 0, 1, 2 (and the terminal, with a pty)."""

    def __init__(self, connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui, *,
                 command: str | None, pty: bool,
                 gate: Awaitable[None] | None = None,
                 tunnels: ClientTunnels | None = None, local: LocalEnd | None = None,
                 make_tunnels: Callable[[], ClientTunnels] | None = None) -> None:
        self.connection = connection
        self.local = local = local if local is not None else LocalEnd()
        #: Where ``~C`` adds and cancels tunnels (None: made by ``make_tunnels`` at the first
        #: ``~C``, or, without it, ``~C`` says it cannot).
        self.tunnels = tunnels
        self.make_tunnels = make_tunnels
        #: Awaited together with the channel's open, before any request: the tunnels'
        #: negotiation, which must succeed before a shell or command starts.
        self.gate = gate
        self.cfg = cfg
        self.ui = ui
        self.command = command
        self.want_pty = pty
        self.pty = False  # granted by the server
        self._clock_taken = False  # this session counts in the connection's PTY sessions
        self.stdin_is_tty = (os.isatty(local.stdin) if local.stdin_is_tty is None
                             else local.stdin_is_tty)
        self.raw: terminal.RawMode | None = None
        self.channel: aio.Channel | None = None
        self._outcome = _Outcome()
        self._stop: asyncio.Future[None] | None = None
        self._signals_seen = 0
        self._last_size: tuple[int, int, int, int] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._broken_pipe = False
        self._grace: asyncio.TimerHandle | None = None

    # -- setup

    async def _start(self) -> aio.Channel:
        try:
            opening = self.connection.open_channel(proto.SESSION)
            if self.gate is not None:  # one round trip for both
                channel, _ = await asyncio.gather(opening, self.gate)
            else:
                channel = await opening
        except aio.ChannelOpenError as exc:
            raise QshError(f"the server refused a session: {exc.message}") from None
        self.channel = channel
        # SendEnv/SetEnv: no reply asked (a refusal is silent, as in ssh); before the start.
        environment = self.local.environment
        if environment is None:
            environment = environment_to_send(self.cfg, os.environ)
        for name, value in environment:
            if len(value.encode("utf-8", "surrogateescape")) > proto.MAX_ENV_VALUE:
                self.ui.note(1, f"not sending {name}: longer than {proto.MAX_ENV_VALUE} bytes")
                continue
            self.ui.note(1, f"sending environment variable {name}")
            await channel.request(proto.ENV, proto.encode_env(name, value), want_reply=False)
        calls: list[Awaitable[tuple[bool, bytes] | None]] = []
        if self.want_pty:
            term = self.local.term or os.environ.get("TERM") or "dumb"
            size = self.local.size or terminal.size_or_default(
                self.local.stdin if self.stdin_is_tty else self.local.stdout)
            self._last_size = size
            request = proto.PtyRequest(term[:proto.MAX_TERM], proto.WindowSize(*size))
            calls.append(channel.request(proto.PTY_REQ, request.encode()))
        if self.cfg.session_type == "subsystem":  # -s: the "command" names a subsystem
            calls.append(channel.request(proto.SUBSYSTEM,
                                         proto.encode_subsystem(self.command or "")))
        elif self.command is not None:
            calls.append(channel.request(proto.EXEC, proto.encode_exec(self.command)))
        else:
            calls.append(channel.request(proto.SHELL))
        # Sent back to back (the tasks start in order); one round trip for all answers.
        replies = await asyncio.gather(*calls)
        if self.want_pty:
            ok = replies[0] is not None and replies[0][0]
            if ok:
                self.pty = True
                self.connection.set_interactive(True)  # the keystroke clock (issue 12)
                self._clock_taken = True
            else:
                self.ui.warn("PTY allocation request failed")
        last = replies[-1]
        if last is None or not last[0]:
            what = ("start the subsystem" if self.cfg.session_type == "subsystem"
                    else "run the command" if self.command is not None else "start a shell")
            raise QshError(f"the server refused to {what}")
        self.ui.note(1, f"session started ({'pty' if self.pty else 'no pty'})")
        return channel

    # -- the run

    async def run(self) -> int:
        """Run to the end of the session; the exit status qsh should return."""
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        try:
            channel = await self._start()
        except BaseException:
            self._release_clock()
            raise
        # Our handlers before raw mode: from here on a signal must never find the
        # terminal raw and nobody to restore it.
        own = self.local.own_terminal
        if own:
            self._install_signals(loop)
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.pty and self.stdin_is_tty and own:
                self.raw = terminal.RawMode(self.local.stdin)
                self.ui.raw = self.raw
                self.raw.enter()
            stdout, stderr = FdWriter(self.local.stdout), FdWriter(self.local.stderr)
            out_task = asyncio.create_task(self._pump_out(channel.stdout, stdout))
            err_task = asyncio.create_task(self._pump_out(channel.stderr, stderr))
            in_task = asyncio.create_task(self._pump_in(channel))
            req_task = asyncio.create_task(self._watch_requests(channel))
            tasks = [out_task, err_task, in_task, req_task]
            await asyncio.wait({req_task, self._stop}, return_when=asyncio.FIRST_COMPLETED)
            if not self._stop.done():
                # The channel is closed: what is buffered is all there is; write it out
                # (unless a signal says to stop waiting for a stuck local reader).
                waiters: set[asyncio.Future[Any]] = {
                    asyncio.gather(out_task, err_task, return_exceptions=True), self._stop}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in (out_task, err_task, req_task):
                if task.done() and not task.cancelled():
                    exc = task.exception()
                    if exc is not None and not isinstance(exc, aio.ConnectionLost):
                        raise exc
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if own:
                self._remove_signals(loop)
            if self._grace is not None:
                self._grace.cancel()
            if self.raw is not None:
                self.raw.restore()
            self._release_clock()
        return self._result()

    def _release_clock(self) -> None:
        """This session's PTY no longer keeps the keystroke clock running: over a shared
        connection the next sessions (Ansible's sftp after its ``-tt`` module run) must
        not wait for its ticks."""
        if self._clock_taken:
            self._clock_taken = False
            self.connection.set_interactive(False)

    def _result(self) -> int:
        outcome = self._outcome
        if outcome.killed_by is not None and outcome.local_stop is not None:
            self.ui.error(outcome.local_stop)
            return 128 + outcome.killed_by
        if outcome.local_stop is not None:
            raise QshError(outcome.local_stop)
        if self._broken_pipe and outcome.status is None and outcome.exit_signal is None:
            return 128 + signal.SIGPIPE
        lost = self.channel.lost if self.channel is not None else None
        if lost is not None and not self._broken_pipe:
            # The status (if any) overtook output that never came: it is not the result.
            raise DisconnectError(f"connection to {self.cfg.host} lost before the session "
                                  f"ended: {describe_end(lost.terminated)}")
        if outcome.status is None and outcome.exit_signal is None:
            terminated = self.connection.terminated
            if terminated is not None and terminated.code != ErrorCode.NONE:
                raise DisconnectError(f"connection to {self.cfg.host} closed: "
                                      f"{describe_end(terminated)}")
            if terminated is not None:
                raise DisconnectError(f"connection to {self.cfg.host} closed by remote host")
            raise DisconnectError("the session ended without an exit status")
        if self.pty:
            self.ui.warn(f"Connection to {self.cfg.host} closed.")
        if outcome.exit_signal is not None:
            signal_info = outcome.exit_signal
            self.ui.note(1, f"remote command killed by signal {signal_info.signal}"
                            + (" (core dumped)" if signal_info.core_dumped else ""))
        elif outcome.killed_by is not None:
            self.ui.note(1, f"remote command exited {outcome.status} after the forwarded "
                            "signal; reporting the signal")
            return 128 + outcome.killed_by
        return exit_code(outcome.status, outcome.exit_signal)

    def stop(self, reason: str) -> None:
        """End the session from our side: qsh exits 255 with ``reason``."""
        if self._outcome.local_stop is None:
            self._outcome.local_stop = reason
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    # -- pumps

    async def _pump_out(self, stream: aio.ReadStream, writer: FdWriter) -> None:
        """Channel to a local fd. Reading is what grants the server more window, so a slow
        local reader slows the remote writer instead of growing our memory."""
        while data := await stream.read():
            try:
                await writer.write(data)
            except OSError as exc:
                if not isinstance(exc, BrokenPipeError):
                    # EIO and friends: the terminal or file went away. Keep reading (the
                    # window must keep moving for the other stream) but write no more.
                    writer.broken = True
                    self.ui.note(1, f"fd {writer.fd}: {exc.strerror}; output dropped")
                    continue
                # `qsh host cmd | head`: nobody reads anymore. Hang the session up and
                # end as a local writer killed by SIGPIPE would, quietly.
                writer.broken = True
                self._broken_pipe = True
                self.ui.note(1, f"fd {writer.fd}: broken pipe; closing the session")
                if self.channel is not None:
                    self.channel.close()

    async def _pump_in(self, channel: aio.Channel) -> None:
        """fd 0 to the channel, with the ``~`` escapes when there is a pty."""
        reader = FdReader(self.local.stdin)
        scanner: escapes.EscapeScanner | None = None
        if self.pty and self.cfg.escape_char != "none" and self.local.own_terminal:
            from . import escapes  # only with a terminal: `host true` never needs it

            scanner = escapes.EscapeScanner()
        try:
            while True:
                try:
                    data = await reader.read(READ_SIZE)
                except OSError as exc:
                    self.ui.note(1, f"stdin: {exc.strerror}")
                    data = b""
                if not data:
                    channel.write_eof()
                    return
                items: list[bytes | escapes.Escape | escapes.Echo | escapes.CommandLine] = (
                    scanner.feed(data) if scanner is not None else [data])
                for item in items:
                    if isinstance(item, bytes):
                        channel.write(item)
                    elif item is escapes.Escape.DISCONNECT:
                        self.stop("disconnected (~.)")
                        return
                    elif item is escapes.Escape.HELP:
                        self.ui.say("~?\n" + escapes.ESCAPE_HELP.replace("\r\n", "\n")
                                       .rstrip("\n"))
                    elif item is escapes.Escape.SUSPEND:
                        self._suspend()
                    elif item is escapes.Escape.COMMAND:
                        _show(b"\r\nqsh> ")
                    elif isinstance(item, escapes.Echo):
                        _show(item.data)
                    elif isinstance(item, escapes.CommandLine):
                        self._background_task(self._run_command(item.text))
                await channel.drain()
        except (aio.ChannelClosedError, aio.ConnectionLost):
            return  # the remote side is done: nothing to send anymore

    async def _run_command(self, text: str) -> None:
        """One ``~C`` line: open or cancel a tunnel, as ssh's command line does."""
        from . import escapes  # (loaded by _pump_in, which read the line)

        try:
            command = escapes.parse_command(text)
        except ValueError as exc:
            self.ui.say(f"qsh: {exc}")
            return
        if command.action == "none":
            return
        if command.action == "help":
            self.ui.say(escapes.COMMAND_HELP)
            return
        if self.tunnels is None and self.make_tunnels is not None:
            self.tunnels = self.make_tunnels()
        if self.tunnels is None:
            self.ui.say("qsh: tunnels cannot be changed on this connection")
            return
        try:
            if command.action == "open":
                assert command.spec is not None
                failures = await self.tunnels.add([command.spec])
                for failure in failures:
                    self.ui.say(f"qsh: tunnel not set up: {failure}")
                if not failures:
                    self.ui.say("Forwarding port.")
            else:
                why = await self.tunnels.cancel(command.kind, command.bind, command.port)
                self.ui.say(f"qsh: {why}" if why else "Canceled forwarding.")
        except (aio.ChannelClosedError, aio.ConnectionLost) as exc:
            self.ui.say(f"qsh: {exc}")

    def _suspend(self) -> None:
        self.ui.say("~^Z [suspend qsh]")
        with terminal.suspended(self.raw):
            os.kill(os.getpid(), signal.SIGTSTP)  # returns once we are continued
        self._window_changed()

    async def _watch_requests(self, channel: aio.Channel) -> None:
        while (request := await channel.next_request()) is not None:
            try:
                if request.name == proto.EXIT_STATUS:
                    self._outcome.status = proto.decode_exit_status(request.payload)
                elif request.name == proto.EXIT_SIGNAL:
                    self._outcome.exit_signal = proto.ExitSignal.decode(request.payload)
                elif request.want_reply:
                    channel.reply(False)
            except QsmpError as exc:  # a malformed request: report it, do not crash
                self.ui.note(1, f"bad {request.name} request from the server: {exc}")
            except (aio.ChannelClosedError, aio.ConnectionLost):
                pass

    # -- signals

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pty:
            loop.add_signal_handler(signal.SIGWINCH, self._window_changed)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGWINCH only: SIGINT/TERM/HUP keep a handler (ours) until qsh is done, so one
        arriving while the connection closes does not become a traceback."""
        loop.remove_signal_handler(signal.SIGWINCH)

    def on_signal(self, signum: int) -> None:
        """A stop signal that reached the mux client of this session (see _on_signal)."""
        self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name.removeprefix("SIG")
        if self.pty or self._signals_seen:
            # With a pty, ^C travels as a byte; a signal to qsh itself means "stop qsh".
            self.stop(f"killed by signal {name}")
            return
        self._signals_seen += 1
        self._outcome.killed_by = signum
        self.ui.note(1, f"forwarding SIG{name} to the remote command")
        self._send_request(proto.SIGNAL, proto.encode_signal(name))
        grace = self.cfg.signal_timeout
        self._grace = asyncio.get_running_loop().call_later(
            grace, self.stop,
            f"killed by signal {name}; the remote command did not end within {grace:g}s")

    def _window_changed(self) -> None:
        self.resize(terminal.size_or_default(0 if self.stdin_is_tty else 1))

    def resize(self, size: tuple[int, int, int, int]) -> None:
        """The local terminal's size changed: tell the server (once per real change)."""
        if size == self._last_size:
            return
        self._last_size = size
        self._send_request(proto.WINDOW_CHANGE,
                           proto.encode_window_change(proto.WindowSize(*size)))

    def _send_request(self, name: str, payload: bytes) -> None:
        channel = self.channel
        if channel is None or not channel.is_open:
            return

        async def send() -> None:
            with contextlib.suppress(aio.ChannelClosedError, aio.ConnectionLost):
                await channel.request(name, payload, want_reply=False)

        self._background_task(send())

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _show(data: bytes) -> None:
    """Terminal output of our own (the ``~C`` prompt and its echo), on fd 2."""
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(2, data):]
