"""What every client program does around its work, apart from reaching a host: one line
per failure (:class:`QshError`, :func:`run_program`), ``-v`` notes and questions
(:class:`Ui`), and signals that end the work with its ``finally`` run (:class:`StopSignals`).

Apart from :mod:`common.client.connect` so that a run that logs in nowhere -- qcp over a
ControlMaster (:mod:`common.client.mux_copy`) -- loads none of the handshake, the transport,
the key code or the crypto registry; connect.py re-exports every name, so callers need not
know which module holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from common.client import terminal
from common.crypto.secret import Secret
from common.errors import ErrorCode, QsmpError, RemoteReportedError

if TYPE_CHECKING:
    from common.protocol.connection import ConnectionTerminated

T = TypeVar("T")


class QshError(Exception):
    """A failure of qsh itself: one line for the user, exit status 255."""


class DisconnectError(QshError):
    """The connection ended before the session did."""


TAMPERED = "the connection may have been tampered with"
#: Failures our side detected that a changed, dropped or injected byte explains (a record
#: that fails its tag, one out of sequence, a confirmation that does not match).
_TAMPER_CODES = frozenset({ErrorCode.AUTHENTICATION_FAILURE, ErrorCode.PACKET_UNSEQUENCED,
                           ErrorCode.HASH_INVALID, ErrorCode.ESTABLISH_FAILURE,
                           ErrorCode.VERIFY_FAILURE})
#: Characters of the peer's text (error and shutdown reasons) shown at most.
MAX_SHOWN = 300


def printable(text: str, limit: int | None = MAX_SHOWN) -> str:
    """Text fit for one line on a terminal: control characters (newlines, escape sequences
    a hostile peer could put in a reason) become ``?``; cut to ``limit`` characters."""
    shown = "".join(c if c.isprintable() else "?" for c in text)
    if limit is not None and len(shown) > limit:
        shown = shown[:limit - 3] + "..."
    return shown


def describe_end(terminated: ConnectionTerminated | None) -> str:
    """Why a connection ended, for one line."""
    if terminated is None:
        return "connection lost"
    if terminated.code == ErrorCode.NONE and terminated.by_peer:  # an authenticated goodbye
        return f"shut down by the remote host ({printable(terminated.reason)})"
    return describe_error(terminated.code, terminated.reason, by_peer=terminated.by_peer)


def describe_error(code: ErrorCode, reason: str, *, by_peer: bool) -> str:
    """A failure's reason, plus a warning when our side found a record or handshake message
    that failed its check (nothing but tampering or a broken path does that)."""
    shown = printable(reason)
    if not by_peer and code in _TAMPER_CODES:
        return f"{shown}: {TAMPERED}"
    return shown


# --- Reporting ----------------------------------------------------------------------------


class Prompter(Protocol):
    async def ask(self, prompt: str, *, echo: bool = True) -> str | None: ...


class Ui:
    """What qsh says to the person: ``-v`` notes, warnings, and questions.

    Writes go straight to fd 2 with CR LF while the terminal is raw, where a bare LF would
    leave the cursor in the middle of the next line. ``prompter`` is None when nobody can be
    asked (the API, or a run without a terminal).
    """

    def __init__(self, verbosity: int = 0, *, quiet: bool = False,
                 prompter: Prompter | None = None, program: str = "qsh") -> None:
        self.verbosity = verbosity
        self.program = program  # the prefix of error lines: "qsh: ...", "qcp: ..."
        self.quiet = quiet
        self.prompter = prompter
        self.raw: terminal.RawMode | None = None
        #: Where the messages go: stderr, or the file of ssh's ``-E`` (opened O_APPEND).
        self.log_fd = 2

    def _write(self, text: str) -> None:
        newline = "\r\n" if self.raw is not None and self.raw.active else "\n"
        data = (text.replace("\n", newline) + newline).encode(errors="replace")
        with contextlib.suppress(OSError):
            while data:
                try:
                    data = data[os.write(self.log_fd, data):]
                except BlockingIOError:  # our own O_NONBLOCK on a full pipe: wait a bit
                    import select

                    select.select([], [self.log_fd], [], 1.0)

    def say(self, message: str) -> None:
        """A line for the person, shown even when quiet (escape help, suspend)."""
        self._write(message)

    def note(self, level: int, message: str) -> None:
        if self.verbosity >= level:
            self._write(f"debug{level}: {message}")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self._write(message)

    def error(self, message: str) -> None:
        """The one line of a failure (never more: it may quote the peer)."""
        self._write(f"{self.program}: {printable(message, None)}")

    async def ask(self, prompt: str, *, echo: bool = True) -> str | None:
        if self.prompter is None:
            return None
        return await self.prompter.ask(prompt, echo=echo)

    async def ask_secret(self, prompt: str) -> Secret | None:
        """A password or passphrase, unechoed, straight into a :class:`Secret` where the
        prompter can (:meth:`terminal.TtyPrompter.ask_secret`); the caller closes it."""
        if self.prompter is None:
            return None
        direct = getattr(self.prompter, "ask_secret", None)
        if direct is not None:
            secret: Secret | None = await direct(prompt)
            return secret
        answer = await self.prompter.ask(prompt, echo=False)
        return None if answer is None else Secret(answer.encode("utf-8", "surrogateescape"))


def setup_logging(verbosity: int, log_fd: int = 2) -> None:
    """``-vvv`` shows the adapter's own debug log (connection events, never secrets), on
    stderr or in the ``-E`` file."""
    if verbosity >= 3:
        stream = sys.stderr if log_fd == 2 else open(log_fd, "a", closefd=False)  # noqa: SIM115
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("debug3: %(name)s: %(message)s"))
        logger = logging.getLogger("qsh")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)


# --- Running a client program -------------------------------------------------------------


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP cancel the task that entered this (connecting, logging
    in, copying), so that every ``finally`` runs: a password prompt's echo comes back, a
    copy's temporary file goes, the connection says goodbye. Leaving by that cancellation
    raises :class:`QshError` naming the signal (what the program ends with); ``killed``
    tells code within which one arrived, if any. The handlers are removed on the way out,
    and a session may replace them with its own meanwhile."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.killed: str | None = None

    def __enter__(self) -> StopSignals:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if self.killed is None:
                self.killed = signal.Signals(signum).name.removeprefix("SIG")
            task.cancel()

        for signum in self.SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: object) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            loop.remove_signal_handler(signum)
        if kind is not None and issubclass(kind, asyncio.CancelledError) and self.killed:
            raise QshError(f"killed by signal {self.killed}") from None

    def check(self) -> None:
        """Raise as on the way out if a signal arrived (work that absorbed the
        cancellation must not end as if it had finished)."""
        if self.killed:
            raise QshError(f"killed by signal {self.killed}")


def run_program(main: Coroutine[Any, Any, T], ui: Ui, verbosity: int) -> T | None:
    """``asyncio.run(main)`` as every client program fails: its :class:`QshError` as the
    one line it is, a protocol failure no step put in words as one line, and a bug of ours
    as one line too (its traceback only with ``-v``). None after such a line."""
    try:
        return asyncio.run(main)
    except QshError as exc:
        ui.error(str(exc))
    except QsmpError as exc:
        reason = describe_error(exc.code, exc.message,
                                by_peer=isinstance(exc, RemoteReportedError))
        ui.error(f"connection failed: {reason}")
    except Exception as exc:
        if verbosity:
            import traceback

            traceback.print_exc()
        ui.error(f"internal error: {exc!r}")
    finally:
        terminal.restore_all()
    return None
