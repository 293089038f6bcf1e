"""One qsh run: reach the host, trust it, log in, run a shell or a command, return its status.

The pieces are shared with the Python API (:mod:`qsh.api`), which differs only in having no
person to ask and no terminal to drive:

* :func:`open_connection` -- the TCP connection and handshake, with the host key checked
  against known_hosts (TOFU per ``StrictHostKeyChecking``); the first login attempt rides
  behind the handshake when there is a key to try.
* :class:`KeyRing` and :func:`authenticate` -- identity files in config order (encrypted ones
  unlocked on the terminal), then passwords on the terminal, as ssh does.
* :class:`Session` -- the ``session`` channel: pty-req / shell / exec, the byte pumps between
  the local fds and the channel with flow control both ways, the terminal in raw mode, the
  ``~`` escapes, SIGWINCH, signals, and the remote exit status.

Exit status follows ssh: the remote status; 128+N for a remote signal; 255 when qsh itself
fails, with one line on stderr (:class:`QshError`). The remote status counts only once the
channel has closed in order (PROTOCOL.md §10.3): the status request overtakes output still
waiting for window, so a connection that ends after the status but before the channel's
CLOSE -- a record that fails its tag, a cut, an error packet -- lost output, and qsh exits
255 whatever status it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from common import aio
from common.accounts.keys import HostKey, KeyFileError, PassphraseRequired, PublicKey
from common.accounts.known_hosts import KnownHosts, host_pattern
from common.channels import session as proto
from common.crypto import registry
from common.errors import ErrorCode, QsmpError, RemoteReportedError, UsageError
from common.protocol.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthFailed
from common.protocol.connection import ConnectionTerminated
from common.protocol.handshake import ClientHandshake, State
from common.protocol.negotiation import ChaffPolicy, Offer
from common.protocol.transport import TransportSettings

from . import terminal
from .config import DEFAULT_PORT, ClientConfig, default_identity_files

EXIT_FAILURE = 255
#: Password prompts per connection, as ssh's NumberOfPasswordPrompts.
PASSWORD_TRIES = 3
PASSPHRASE_TRIES = 3
#: Bytes per read from stdin: one record's worth, so a bulk upload costs few records.
READ_SIZE = 256 * 1024
#: How long the final close may wait for the server's goodbye.
CLOSE_TIMEOUT = 5.0

CHANGED_KEY_WARNING = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
The host key of {host} is not the one in {path}.
The {algorithm} key it presents has the fingerprint {fingerprint}.
Someone could be eavesdropping on you right now (man-in-the-middle attack),
or the host key has just been changed. If you know it was changed, remove the old key
with an editor and connect again."""


class QshError(Exception):
    """A failure of qsh itself: one line for the user, exit status 255."""


class HostKeyNotVerifiable(QshError):
    """The server's host key is unknown and may not be trusted, or has changed."""


class PermissionDenied(QshError):
    """Every way to log in that qsh could try was refused."""


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
                 prompter: Prompter | None = None) -> None:
        self.verbosity = verbosity
        self.quiet = quiet
        self.prompter = prompter
        self.raw: terminal.RawMode | None = None

    def _write(self, text: str) -> None:
        newline = "\r\n" if self.raw is not None and self.raw.active else "\n"
        data = (text.replace("\n", newline) + newline).encode(errors="replace")
        with contextlib.suppress(OSError):
            while data:
                try:
                    data = data[os.write(2, data):]
                except BlockingIOError:  # our own O_NONBLOCK on a full pipe: wait a bit
                    import select

                    select.select([], [2], [], 1.0)

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
        self._write(f"qsh: {printable(message, None)}")

    async def ask(self, prompt: str, *, echo: bool = True) -> str | None:
        if self.prompter is None:
            return None
        return await self.prompter.ask(prompt, echo=echo)


# --- Connecting ---------------------------------------------------------------------------


def build_offer(cfg: ClientConfig) -> Offer:
    """The algorithms to propose. Config lists are checked for syntax when read; whether
    this machine has each one (liboqs is optional) is known only here."""
    base = Offer()
    kems = cfg.kems or tuple(k for k in base.kems if k in registry.available_kems())
    signatures = cfg.signatures or tuple(
        s for s in base.signatures if s in registry.available_signatures())
    aeads = cfg.ciphers or base.aeads
    for kind, names, available in (("KEM", kems, registry.available_kems()),
                                   ("signature", signatures, registry.available_signatures()),
                                   ("cipher", aeads, registry.available_aeads())):
        for name in names:
            if name not in available:
                raise QshError(f"unknown {kind} {name!r}; available: {', '.join(available)}")
    chaff = ChaffPolicy(enabled=True) if cfg.chaff else base.chaff
    return Offer(kems=kems, signatures=signatures, aeads=aeads, chaff=chaff)


async def open_connection(cfg: ClientConfig, ui: Ui, *,
                          identity: HostKey | None = None,
                          password: bytes | None = None) -> aio.QsmpConnection:
    """Connect, run the handshake and decide on the host key.

    The known_hosts entry for ``cfg.hostname`` (ssh checks the name it connects to, after
    HostName) is handed to the handshake as the trusted key; an unknown key goes to the
    ``StrictHostKeyChecking`` policy. A handshake that fails over the trusted key (the
    server does not know its key ID, or the signature does not verify) is not yet a changed
    key: :func:`_known_key_failed` finds out which it was. With ``identity`` (or
    ``password``) the first login attempt is pipelined behind the handshake.
    """
    try:
        known = KnownHosts.load(cfg.known_hosts)
    except KeyFileError as exc:
        raise QshError(str(exc)) from None
    mode = cfg.strict_host_key_checking
    pattern = host_pattern(cfg.hostname, cfg.port, DEFAULT_PORT)
    found = known.lookup(cfg.hostname, cfg.port, default_port=DEFAULT_PORT)
    pinned = tuple(entry.key for entry in found.matching)
    # "no" lets even a changed key through (with the warning), so nothing is pre-trusted.
    trusted = pinned[0] if pinned and mode != "no" else None
    refusal: list[QshError] = []

    async def on_host_key(key: PublicKey) -> bool:
        """Trust on first use. Never raises: the adapter treats False as a rejection."""
        if mode == "no":
            if pinned and not any(k.matches(key) for k in pinned):
                ui.warn(changed_key_warning(cfg, pattern, key))
                ui.warn("StrictHostKeyChecking is no: connecting anyway.")
                return True
            if pinned:
                return True
        elif mode == "yes":
            refusal.append(HostKeyNotVerifiable(
                f"no {key.algorithm} host key is known for {pattern} and "
                "StrictHostKeyChecking is yes"))
            return False
        elif mode == "ask":
            answer = await ui.ask(
                f"The authenticity of host '{pattern}' can't be established.\n"
                f"{key.algorithm} key fingerprint is {key.fingerprint()}.\n"
                "Are you sure you want to continue connecting (yes/no)? ")
            if (answer or "").strip().lower() != "yes":
                refusal.append(HostKeyNotVerifiable("host key verification failed"))
                return False
        try:
            known.add(cfg.hostname, cfg.port, key, default_port=DEFAULT_PORT)
        except (KeyFileError, OSError) as exc:
            ui.warn(f"Warning: could not record the host key in {cfg.known_hosts}: {exc}")
            return True
        ui.warn(f"Warning: permanently added '{pattern}' ({key.algorithm}) to the list of "
                "known hosts.")
        return True

    offer = build_offer(cfg)
    interval = cfg.server_alive_interval
    settings = TransportSettings(keepalive_interval=interval if interval > 0 else None)
    if identity is not None:
        password = None  # one pipelined attempt: the key
    tried: list[PublicKey] = []
    while True:
        handshake = ClientHandshake(offer, trusted, step_timeout=cfg.connect_timeout)
        ui.note(1, f"connecting to {cfg.hostname} port {cfg.port}")
        try:
            connection = await aio.connect(
                cfg.hostname, cfg.port, handshake=handshake, settings=settings,
                on_host_key=on_host_key, timeout=cfg.connect_timeout,
                user=cfg.user if identity is not None or password is not None else None,
                identity=identity, password=password)
        except socket.gaierror as exc:
            raise QshError(f"could not resolve hostname {cfg.hostname}: "
                           f"{exc.strerror}") from None
        except TimeoutError:  # an OSError without errno: first
            raise QshError(timeout_message(cfg, handshake)) from None
        except OSError as exc:
            # asyncio words it "Connect call failed (...)": say what ssh says instead.
            reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
            raise QshError(f"connect to host {cfg.hostname} port {cfg.port}: "
                           f"{reason}") from None
        except UsageError as exc:
            raise QshError(str(exc)) from None
        except QsmpError as exc:
            if refusal:
                raise refusal[0] from None
            if trusted is not None and exc.code in (ErrorCode.KEY_UNRECOGNIZED,
                                                    ErrorCode.VERIFY_FAILURE):
                tried.append(trusted)
                trusted = await _known_key_failed(cfg, ui, exc, pattern, pinned, tried)
                continue  # another key known for this host: try the handshake with it
            if exc.code == ErrorCode.KEY_EXPIRED:
                raise HostKeyNotVerifiable(f"the host key of {pattern} has expired") from None
            if isinstance(exc, RemoteReportedError):
                raise QshError(f"server: {printable(exc.message)}") from None
            reason = describe_error(exc.code, exc.message, by_peer=False)
            raise QshError(f"handshake failed: {reason}") from None
        break
    suite, host_key = connection.suite, connection.host_key
    assert suite is not None and host_key is not None  # set once established
    ui.note(1, f"connected to {pattern}: {suite.kem}, {suite.signature}, {suite.aead}; "
               f"host key {host_key.fingerprint()}")
    return connection


def changed_key_warning(cfg: ClientConfig, pattern: str, presented: PublicKey) -> str:
    return CHANGED_KEY_WARNING.format(host=pattern, path=cfg.known_hosts,
                                      algorithm=presented.algorithm,
                                      fingerprint=presented.fingerprint())


def timeout_message(cfg: ClientConfig, handshake: ClientHandshake) -> str:
    """ConnectTimeout ran out: in TCP's connect (the handshake never started: nothing
    answered our SYN), or in the handshake (something accepted, and did not finish it)."""
    where = f"host {cfg.hostname} port {cfg.port}"
    if handshake.state is State.START:
        return f"connect to {where}: {os.strerror(errno.ETIMEDOUT)}"
    seconds = f"{cfg.connect_timeout:g} second{'' if cfg.connect_timeout == 1 else 's'}"
    return f"connection to {where}: the handshake timed out after {seconds}"


async def _known_key_failed(cfg: ClientConfig, ui: Ui, exc: QsmpError, pattern: str,
                            pinned: tuple[PublicKey, ...], tried: list[PublicKey]
                            ) -> PublicKey:
    """The handshake failed over a pinned key: decide what to tell the user.

    The error alone cannot say whether the host key changed. A KEY_UNRECOGNIZED or
    VERIFY_FAILURE error packet is plaintext that anyone on the path can send, and a
    signature that does not verify may be a corrupted one from the right key. So ask the
    host which key it has (:func:`probe_host_key`): the changed-key banner only if it
    presents a key that is not pinned; another key pinned for this host is returned, to be
    tried; otherwise the failure is what it was, said as such (exit 255 all the same).
    """
    ui.note(1, f"handshake over the known host key failed ({printable(exc.message)}); "
               f"asking {pattern} which key it has")
    presented = await probe_host_key(cfg, tried[-1])
    if presented is not None:
        if not any(key.matches(presented) for key in pinned):
            ui.warn(changed_key_warning(cfg, pattern, presented))
            raise HostKeyNotVerifiable("host key verification failed") from None
        if not any(key.matches(presented) for key in tried):
            ui.note(1, f"{pattern} has another known key: {presented.fingerprint()}")
            return presented
    if not isinstance(exc, RemoteReportedError):
        raise QshError(f"signature check failed: {TAMPERED}") from None
    said = f'host key check failed: an unauthenticated error packet said "{exc.code.description}"'
    if presented is not None:
        raise QshError(f"{said}, but the host presents the known key: {TAMPERED}") from None
    raise QshError(f"{said} and the host presented no key: {TAMPERED}") from None


async def probe_host_key(cfg: ClientConfig, pinned: PublicKey) -> PublicKey | None:
    """The key the host presents when not asked for a particular one (a fresh connection
    whose first message names no key ID), its signature over that connection's transcript
    checked by the handshake before we see it; None if none could be had. The pinned key's
    algorithm is offered first, so that a host with several keys picks one of that kind.
    The handshake stops there: nothing is sent under keys from it."""
    offer = build_offer(cfg)
    signatures = sorted(offer.signatures, key=lambda name: name != pinned.algorithm)
    offer = dataclasses.replace(offer, signatures=tuple(signatures))
    presented: list[PublicKey] = []

    async def record(key: PublicKey) -> bool:
        presented.append(key)
        return False

    handshake = ClientHandshake(offer, None, step_timeout=cfg.connect_timeout)
    try:
        connection = await aio.connect(cfg.hostname, cfg.port, handshake=handshake,
                                       on_host_key=record, timeout=cfg.connect_timeout)
    except (OSError, QsmpError):  # TimeoutError is an OSError
        pass
    else:  # not reached: record() refuses every key
        connection.abort()
    return presented[0] if presented else None


async def close_connection(connection: aio.QsmpConnection) -> None:
    connection.close()
    with contextlib.suppress(TimeoutError, QsmpError, OSError):
        await asyncio.wait_for(connection.wait_closed(), CLOSE_TIMEOUT)


# --- Logging in ---------------------------------------------------------------------------


class KeyRing:
    """The identity files, in order, each loaded only when its turn comes.

    Lazy because an encrypted key costs the person a passphrase: there is no point asking
    for the second key's if the first one logs in. Files that do not exist are skipped in
    silence when they are defaults and with a warning when the user named them.
    """

    def __init__(self, paths: list[Path], ui: Ui) -> None:
        self._paths = list(paths)
        self._ui = ui
        self._defaults = set(default_identity_files())
        self.tried: list[Path] = []

    async def next(self) -> tuple[Path, HostKey] | None:
        while self._paths:
            path = self._paths.pop(0)
            key = await self._load(path)
            if key is not None:
                self.tried.append(path)
                return path, key
        return None

    async def _load(self, path: Path) -> HostKey | None:
        if not path.exists():
            if path not in self._defaults:
                self._ui.warn(f"Warning: identity file {path} not accessible: "
                              "no such file or directory.")
            return None
        try:
            return HostKey.load(path)
        except PassphraseRequired:
            return await self._unlock(path)
        except (KeyFileError, OSError) as exc:
            self._ui.warn(f"Warning: {exc}; not using it.")
            return None

    async def _unlock(self, path: Path) -> HostKey | None:
        if self._ui.prompter is None or not terminal.has_tty():
            self._ui.note(1, f"{path} is encrypted and there is no terminal to ask for "
                             "its passphrase; skipping it")
            return None
        prompt = f"Enter passphrase for key '{path}': "
        for _ in range(PASSPHRASE_TRIES):
            answer = await self._ui.ask(prompt, echo=False)
            if not answer:  # empty (or no terminal after all): skip the key, as ssh does
                return None
            secret = answer.encode("utf-8", "surrogateescape")
            try:
                # scrypt takes a noticeable moment; keep the loop (keepalives) running.
                return await asyncio.to_thread(HostKey.load, path, secret)
            except KeyFileError as exc:
                if "passphrase" not in str(exc):
                    self._ui.warn(f"Warning: {exc}; not using it.")
                    return None
            prompt = f"Bad passphrase, try again for {path}: "
        return None


async def authenticate(connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui,
                       keys: KeyRing, *, pipelined: Path | None) -> None:
    """Log in: the pipelined key's answer, the other keys, then up to three passwords on
    the terminal. Raises :class:`PermissionDenied` when nothing is left to try."""
    try:
        await _authenticate(connection, cfg, ui, keys, pipelined)
    except QsmpError as exc:
        # The connection ended during login. The server gives up after too many failures
        # or its login grace time (it says so in an error record: RemoteReportedError);
        # anything else (a cut, a record that fails its check) is no refusal.
        raise login_ended(connection, cfg, exc) from None


def login_ended(connection: aio.QsmpConnection, cfg: ClientConfig, exc: QsmpError
                ) -> QshError:
    """The one-line failure for a connection that ended while logging in."""
    terminated = connection.terminated
    if terminated is not None and terminated.by_peer and terminated.code in (
            ErrorCode.AUTHENTICATION_FAILURE, ErrorCode.NONE):
        return PermissionDenied(f"permission denied: the server closed the connection "
                                f"({printable(terminated.reason)})")
    reason = (describe_end(terminated) if terminated is not None
              else describe_error(exc.code, exc.message, by_peer=False))
    return DisconnectError(f"connection to {cfg.host} lost during login: {reason}")


def check_alive(connection: aio.QsmpConnection) -> None:
    """Raise if the connection has ended: a login attempt started on an ended connection
    would wait for an answer forever (the adapter answers only attempts made before)."""
    if connection.terminated is not None:
        raise aio.ConnectionLost(connection.terminated)


async def _authenticate(connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui,
                        keys: KeyRing, pipelined: Path | None) -> None:
    user = cfg.user
    methods: tuple[str, ...] | None = None  # unknown until the server refuses something
    failed: AuthFailed | None
    if pipelined is not None:
        failed = await connection.wait_authenticated()
        if failed is None:
            ui.note(1, f"authenticated as {user} with {pipelined}")
            return
        ui.note(1, f"key {pipelined} refused: {failed.message}")
        methods = failed.methods
    while methods is None or METHOD_PUBLICKEY in methods:
        entry = await keys.next()
        if entry is None:
            break
        path, key = entry
        check_alive(connection)  # e.g. the server's MaxAuthTries: it said so and left
        failed = await connection.login_publickey(user, key)
        if failed is None:
            ui.note(1, f"authenticated as {user} with {path}")
            return
        ui.note(1, f"key {path} refused: {failed.message}")
        methods = failed.methods
    if methods is not None and METHOD_PASSWORD not in methods:
        raise PermissionDenied(f"permission denied ({','.join(methods)})")
    if ui.prompter is None or not terminal.has_tty():
        if not keys.tried:
            raise PermissionDenied(
                "permission denied (no usable key and no terminal to ask for a password)")
        raise PermissionDenied(f"permission denied ({','.join(methods or ())}; "
                               "no terminal to ask for a password)")
    prompt = f"{user}@{cfg.hostname}'s password: "
    for attempt in range(PASSWORD_TRIES):
        answer = await ui.ask(prompt, echo=False)
        if answer is None:
            break
        check_alive(connection)
        failed = await connection.login_password(
            user, answer.encode("utf-8", "surrogateescape"))
        del answer
        if failed is None:
            ui.note(1, f"authenticated as {user} with a password")
            return
        methods = failed.methods
        if METHOD_PASSWORD not in methods:
            break
        if attempt + 1 < PASSWORD_TRIES:
            ui.warn("Permission denied, please try again.")
    raise PermissionDenied(f"permission denied ({','.join(methods or (METHOD_PASSWORD,))})")


# --- Local file descriptors ---------------------------------------------------------------


class FdReader:
    """Reads from a local fd without blocking the event loop.

    Pipes, sockets and terminals are polled (``add_reader``) and read once per readiness,
    so their blocking mode is left alone -- fd 0 often shares its file description with the
    user's shell. Regular files and /dev/null cannot be polled (epoll refuses them) and
    never block, so they are read directly.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        try:
            mode = os.fstat(fd).st_mode
        except OSError:  # closed (qsh <&-): an empty input
            self._eof = True
            self._pollable = False
        else:
            self._eof = False
            self._pollable = not stat.S_ISREG(mode)

    async def read(self, n: int = READ_SIZE) -> bytes:
        while not self._eof:
            if self._pollable:
                try:
                    await self._readable()
                except PermissionError:
                    self._pollable = False
            try:
                data = os.read(self.fd, n)
            except BlockingIOError:  # spurious wakeup, or O_NONBLOCK set via a shared fd
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: the terminal hung up, an end like EOF
                    raise
                data = b""
            if not data:
                self._eof = True
            return data
        return b""

    async def _readable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self.fd, terminal.set_ready, ready)
        try:
            await ready
        finally:
            self._loop.remove_reader(self.fd)


class FdWriter:
    """Writes to a local fd without blocking the event loop on a slow reader.

    Pipes and sockets are switched to O_NONBLOCK (as ssh does; the caller restores the
    flag) so that a full pipe waits in the loop instead of stopping keepalives and the
    other stream. Terminals and files stay blocking: a terminal shares its file
    description with the user's shell, and neither blocks for long.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self.broken = False
        try:
            mode = os.fstat(fd).st_mode
        except OSError:  # closed (qsh >&-): output goes nowhere
            self.broken = True
            return
        self._polled = (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and not os.isatty(fd)
        if self._polled:
            os.set_blocking(fd, False)

    async def write(self, data: bytes) -> None:
        """Everything in ``data``; raises BrokenPipeError when the reader has gone."""
        if self.broken:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await self._writable()
                continue
            view = view[n:]

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self.fd, terminal.set_ready, ready)
        try:
            await ready
        finally:
            self._loop.remove_writer(self.fd)


@contextlib.contextmanager
def saved_blocking_modes(fds: tuple[int, ...] = (0, 1, 2)) -> Iterator[None]:
    """Put O_NONBLOCK back as it was on exit: the fds outlive qsh in the user's shell."""
    saved: dict[int, bool] = {}
    for fd in fds:
        with contextlib.suppress(OSError):
            saved[fd] = os.get_blocking(fd)
    try:
        yield
    finally:
        for fd, blocking in saved.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, blocking)


# --- The session --------------------------------------------------------------------------


def wants_pty(request_tty: str, *, command: str | None, stdin_is_tty: bool,
              force: bool) -> bool:
    """ssh's rule: a pty for an interactive login on a terminal; ``-t`` (and RequestTTY
    force) always; RequestTTY yes when stdin is a terminal; no never."""
    if force or request_tty == "force":
        return True
    if request_tty == "no":
        return False
    if request_tty == "yes":
        return stdin_is_tty
    return command is None and stdin_is_tty


def exit_code(status: int | None, exit_signal: proto.ExitSignal | None) -> int:
    """What qsh exits with: the remote status, 128+N for a remote signal, 255 without
    either. A status above 255 would be truncated by the OS (256 would read as success),
    so it becomes 255."""
    if exit_signal is not None:
        return proto.exit_code_for_signal(exit_signal.signal)
    if status is None:
        return EXIT_FAILURE
    return status if 0 <= status <= 255 else EXIT_FAILURE


@dataclass
class _Outcome:
    status: int | None = None
    exit_signal: proto.ExitSignal | None = None
    #: Why we stopped on our own (~., a second ^C, a signal): exit 255 with this message.
    local_stop: str | None = None


class Session:
    """A ``session`` channel wired to fds 0, 1, 2 (and the terminal, with a pty)."""

    def __init__(self, connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui, *,
                 command: str | None, pty: bool) -> None:
        self.connection = connection
        self.cfg = cfg
        self.ui = ui
        self.command = command
        self.want_pty = pty
        self.pty = False  # granted by the server
        self.stdin_is_tty = os.isatty(0)
        self.raw: terminal.RawMode | None = None
        self.channel: aio.Channel | None = None
        self._outcome = _Outcome()
        self._stop: asyncio.Future[None] | None = None
        self._signals_seen = 0
        self._last_size: tuple[int, int, int, int] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._broken_pipe = False

    # -- setup

    async def _start(self) -> aio.Channel:
        try:
            channel = await self.connection.open_channel(proto.SESSION)
        except aio.ChannelOpenError as exc:
            raise QshError(f"the server refused a session: {exc.message}") from None
        self.channel = channel
        calls: list[Awaitable[tuple[bool, bytes] | None]] = []
        if self.want_pty:
            term = os.environ.get("TERM") or "dumb"
            size = terminal.size_or_default(0 if self.stdin_is_tty else 1)
            self._last_size = size
            request = proto.PtyRequest(term[:proto.MAX_TERM], proto.WindowSize(*size))
            calls.append(channel.request(proto.PTY_REQ, request.encode()))
        if self.command is not None:
            calls.append(channel.request(proto.EXEC, proto.encode_exec(self.command)))
        else:
            calls.append(channel.request(proto.SHELL))
        # Sent back to back (the tasks start in order); one round trip for all answers.
        replies = await asyncio.gather(*calls)
        if self.want_pty:
            ok = replies[0] is not None and replies[0][0]
            if ok:
                self.pty = True
            else:
                self.ui.warn("PTY allocation request failed")
        last = replies[-1]
        if last is None or not last[0]:
            what = "run the command" if self.command is not None else "start a shell"
            raise QshError(f"the server refused to {what}")
        self.ui.note(1, f"session started ({'pty' if self.pty else 'no pty'})")
        return channel

    # -- the run

    async def run(self) -> int:
        """Run to the end of the session; the exit status qsh should return."""
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        channel = await self._start()
        # Our handlers before raw mode: from here on a signal must never find the
        # terminal raw and nobody to restore it.
        self._install_signals(loop)
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.pty and self.stdin_is_tty:
                self.raw = terminal.RawMode(0)
                self.ui.raw = self.raw
                self.raw.enter()
            stdout, stderr = FdWriter(1), FdWriter(2)
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
            self._remove_signals(loop)
            if self.raw is not None:
                self.raw.restore()
        return self._result()

    def _result(self) -> int:
        outcome = self._outcome
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
        reader = FdReader(0)
        scanner = terminal.EscapeScanner() if self.pty else None
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
                items: list[bytes | terminal.Escape] = (
                    scanner.feed(data) if scanner is not None else [data])
                for item in items:
                    if isinstance(item, bytes):
                        channel.write(item)
                    elif item is terminal.Escape.DISCONNECT:
                        self.stop("disconnected (~.)")
                        return
                    elif item is terminal.Escape.HELP:
                        self.ui.say("~?\n" + terminal.ESCAPE_HELP.replace("\r\n", "\n")
                                       .rstrip("\n"))
                    elif item is terminal.Escape.SUSPEND:
                        self._suspend()
                await channel.drain()
        except (aio.ChannelClosedError, aio.ConnectionLost):
            return  # the remote side is done: nothing to send anymore

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

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name.removeprefix("SIG")
        if self.pty or self._signals_seen:
            # With a pty, ^C travels as a byte; a signal to qsh itself means "stop qsh".
            self.stop(f"killed by signal {name}")
            return
        self._signals_seen += 1
        self.ui.note(1, f"forwarding SIG{name} to the remote command")
        self._send_request(proto.SIGNAL, proto.encode_signal(name))

    def _window_changed(self) -> None:
        size = terminal.size_or_default(0 if self.stdin_is_tty else 1)
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

        task = asyncio.ensure_future(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# --- Whole runs ---------------------------------------------------------------------------


async def _login(cfg: ClientConfig, ui: Ui) -> aio.QsmpConnection:
    keys = KeyRing(list(cfg.identity_files), ui)
    first = await keys.next()
    connection = await open_connection(cfg, ui, identity=first[1] if first else None)
    try:
        await authenticate(connection, cfg, ui, keys, pipelined=first[0] if first else None)
    except BaseException:
        connection.abort()
        raise
    return connection


async def run_client(cfg: ClientConfig, ui: Ui, *, command: str | None, force_tty: bool) -> int:
    """The whole of ``qsh``: the exit status, or :class:`QshError`.

    SIGTERM/SIGHUP/SIGINT during connecting and logging in cancel this task, so every
    ``finally`` runs (a password prompt's echo comes back); the session replaces those
    handlers with its own once its channel is open. All are removed on the way out.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    killed: list[str] = []

    def on_signal(signum: int) -> None:
        killed.append(signal.Signals(signum).name.removeprefix("SIG"))
        task.cancel()

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    connection: aio.QsmpConnection | None = None
    with saved_blocking_modes():
        try:
            connection = await _login(cfg, ui)
            pty = wants_pty(cfg.request_tty, command=command, stdin_is_tty=os.isatty(0),
                            force=force_tty)
            session = Session(connection, cfg, ui, command=command, pty=pty)
            try:
                return await session.run()
            except aio.ConnectionLost as exc:
                raise DisconnectError(f"connection to {cfg.host} closed: "
                                      f"{describe_end(exc.terminated)}") from None
        except asyncio.CancelledError:
            if killed:
                raise QshError(f"killed by signal {killed[0]}") from None
            raise
        finally:
            terminal.restore_all()
            if connection is not None:
                await close_connection(connection)
            for signum in handled:
                loop.remove_signal_handler(signum)


def setup_logging(verbosity: int) -> None:
    """``-vvv`` shows the adapter's own debug log (connection events, never secrets)."""
    if verbosity >= 3:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("debug3: %(name)s: %(message)s"))
        logger = logging.getLogger("qsh")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)

