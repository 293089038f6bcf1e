"""qsh from Python, shaped like AsyncSSH so its users feel at home::

    import qsh

    async with qsh.connect("db1", username="deploy", identity="~/.qsh/id_mldsa65") as conn:
        result = await conn.run("pg_dump app", check=True)
        print(result.exit_status, len(result.stdout))

:func:`connect` works both as ``await qsh.connect(...)`` and as ``async with``. The host
key is checked as the command line does (known_hosts, ``~/.qsh/known_hosts`` by default)
but nobody is asked: ``strict_host_key_checking`` is ``"yes"`` (an unknown key is refused,
the safe default for code), ``"accept-new"`` (record it) or ``"no"``. Failures raise
:class:`HostKeyNotVerifiable`, :class:`PermissionDenied` or :class:`QshError`;
``run(..., check=True)`` raises :class:`ProcessError` for a non-zero exit.

Differences from AsyncSSH, on purpose: ``exit_signal`` is the signal's name (``"KILL"``)
rather than a tuple; ``run`` always closes stdin after ``input`` so a command that reads
it (``cat``) ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import aio
from common.accounts.keys import HostKey, KeyFileError
from common.channels import session as proto
from common.client.config import DEFAULT_PORT, ClientConfig, default_known_hosts
from common.client.connect import (
    DisconnectError,
    HostKeyNotVerifiable,
    PermissionDenied,
    QshError,
    Ui,
    check_alive,
    close_connection,
    describe_end,
    login_ended,
    open_connection,
    printable,
)
from common.errors import QsmpError

__all__ = [
    "Connection",
    "DisconnectError",
    "HostKeyNotVerifiable",
    "PermissionDenied",
    "ProcessError",
    "QshError",
    "RunResult",
    "connect",
]

log = logging.getLogger("qsh.api")
_HOST_KEY_MODES = ("yes", "accept-new", "no")


@dataclass(frozen=True, slots=True)
class RunResult:
    """What :meth:`Connection.run` returns (AsyncSSH's SSHCompletedProcess, slimmed).

    ``exit_status`` is None when the command was killed by a signal (then
    ``exit_signal`` names it) or the server reported neither.
    """

    command: str
    exit_status: int | None
    exit_signal: str | None
    stdout: bytes
    stderr: bytes

    @property
    def returncode(self) -> int | None:
        """As :mod:`subprocess` has it: the status, or minus the signal's number."""
        if self.exit_signal is not None:
            return -proto.SIGNALS.get(self.exit_signal, 0) or None
        return self.exit_status


class ProcessError(Exception):
    """``run(..., check=True)`` and the command did not exit 0. Carries the whole result."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        self.command = result.command
        self.exit_status = result.exit_status
        self.exit_signal = result.exit_signal
        self.stdout = result.stdout
        self.stderr = result.stderr
        how = (f"was killed by signal {result.exit_signal}" if result.exit_signal
               else f"exited with status {result.exit_status}")
        super().__init__(f"command {result.command!r} {how}")


class _ApiUi(Ui):
    """No person to ask and no stderr to write on: notes and warnings go to logging."""

    def _write(self, text: str) -> None:
        log.info("%s", text)


class Connection:
    """A logged-in qsh connection; open as many commands on it as needed, even at once."""

    def __init__(self, connection: aio.QsmpConnection, user: str) -> None:
        self._connection = connection
        self.user = user

    @property
    def host_key_fingerprint(self) -> str | None:
        key = self._connection.host_key
        return key.fingerprint() if key is not None else None

    async def run(self, command: str, *, input: bytes | str | None = None,
                  check: bool = False, env: Mapping[str, str] | None = None,
                  timeout: float | None = None) -> RunResult:
        """Run ``command`` (a shell command line on the server) without a pty; collect its
        output. ``input`` is sent and stdin closed; ``env`` values are passed with "env"
        requests (the server decides which it accepts, as sshd's AcceptEnv).

        Raises :class:`DisconnectError` if the connection ends before the channel's orderly
        close, even after an exit status: the status overtakes output still in flight, so
        the output may be incomplete."""
        async with asyncio.timeout(timeout):
            return await self._run(command, input, check, env)

    async def _run(self, command: str, input: bytes | str | None, check: bool,
                   env: Mapping[str, str] | None) -> RunResult:
        try:
            channel = await self._connection.open_channel(proto.SESSION)
        except aio.ChannelOpenError as exc:
            raise QshError(f"the server refused a session: {exc.message}") from None
        except aio.ConnectionLost as exc:
            raise DisconnectError(f"connection closed: {exc}") from None
        try:
            for name, value in (env or {}).items():
                await channel.request(proto.ENV, proto.encode_env(name, value),
                                      want_reply=False)
            reply = await channel.request(proto.EXEC, proto.encode_exec(command))
            if reply is None or not reply[0]:
                raise QshError(f"the server refused to run {command!r}")
            data = input.encode() if isinstance(input, str) else input
            feeder = asyncio.create_task(_feed(channel, data or b""))
            out_task = asyncio.create_task(channel.stdout.read_to_eof())
            err_task = asyncio.create_task(channel.stderr.read_to_eof())
            status: int | None = None
            signal_name: str | None = None
            while (request := await channel.next_request()) is not None:
                if request.name == proto.EXIT_STATUS:
                    status = proto.decode_exit_status(request.payload)
                elif request.name == proto.EXIT_SIGNAL:
                    signal_name = proto.ExitSignal.decode(request.payload).signal
                elif request.want_reply:
                    channel.reply(False)
            stdout, stderr = await asyncio.gather(out_task, err_task)
            feeder.cancel()
            lost = channel.lost
            if lost is not None:  # after EOF, before CLOSE: the status is not final yet
                raise lost
        except aio.ConnectionLost as exc:
            # Even with an exit status: it overtakes output still waiting for window.
            raise DisconnectError(f"connection closed before the command ended: "
                                  f"{describe_end(exc.terminated)}") from None
        finally:
            channel.close()
        if signal_name is not None:
            status = None
        result = RunResult(command, status, signal_name, stdout, stderr)
        if check and (status != 0 or signal_name is not None):
            raise ProcessError(result)
        return result

    def close(self) -> None:
        self._connection.close()

    async def wait_closed(self) -> None:
        await self._connection.wait_closed()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await close_connection(self._connection)


async def _feed(channel: aio.Channel, data: bytes) -> None:
    """stdin: the input, then EOF. A command that exits without reading it all is fine."""
    try:
        view = memoryview(data)
        step = 1024 * 1024
        for start in range(0, len(view), step):
            channel.write(view[start:start + step])
            await channel.drain()
        channel.write_eof()
    except (aio.ChannelClosedError, aio.ConnectionLost):
        pass


class _Connect:
    """``await connect(...)`` gives the connection; ``async with connect(...)`` also closes
    it (AsyncSSH's pattern, so both spellings from its docs work)."""

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._connection: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._coro.__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> Connection:
        self._connection = await self._coro
        return self._connection

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            await self._connection.__aexit__(*exc_info)


def connect(host: str, port: int = DEFAULT_PORT, *, username: str,
            identity: str | os.PathLike[str] | HostKey | None = None,
            passphrase: bytes | str | None = None, password: bytes | str | None = None,
            known_hosts: str | os.PathLike[str] | None = None,
            strict_host_key_checking: str = "yes",
            connect_timeout: float = 30.0) -> _Connect:
    """Connect to ``host:port`` and log in as ``username`` with ``identity`` (a key file
    or a loaded :class:`~common.keys.HostKey`; ``passphrase`` for an encrypted file), and/or
    ``password`` (tried if there is no key, or the key is refused)."""
    if strict_host_key_checking not in _HOST_KEY_MODES:
        raise ValueError(f"strict_host_key_checking must be one of {', '.join(_HOST_KEY_MODES)}"
                         " (nobody can be asked from the API)")
    if identity is None and password is None:
        raise ValueError("give an identity, a password, or both")
    return _Connect(_connect(host, port, username, identity, passphrase, password,
                             known_hosts, strict_host_key_checking, connect_timeout))


async def _connect(host: str, port: int, username: str,
                   identity: str | os.PathLike[str] | HostKey | None,
                   passphrase: bytes | str | None, password: bytes | str | None,
                   known_hosts: str | os.PathLike[str] | None, mode: str,
                   timeout: float) -> Connection:
    key = _load_identity(identity, passphrase)
    secret = password.encode() if isinstance(password, str) else password
    cfg = ClientConfig(host=host, port=port, user=username, identity_files=[],
                       strict_host_key_checking=mode, connect_timeout=timeout,
                       known_hosts=Path(known_hosts).expanduser() if known_hosts is not None
                       else default_known_hosts())
    ui = _ApiUi()
    connection = await open_connection(cfg, ui, identity=key,
                                       password=secret if key is None else None)
    try:
        failed = await connection.wait_authenticated()
        if failed is not None and key is not None and secret is not None:
            check_alive(connection)
            failed = await connection.login_password(username, secret)
        if failed is not None:
            raise PermissionDenied(f"permission denied for {username}@{host}: "
                                   f"{printable(failed.message)}")
    except QsmpError as exc:  # the connection ended during login (grace time, MaxAuthTries)
        connection.abort()
        raise login_ended(connection, cfg, exc) from None
    except BaseException:
        connection.abort()
        raise
    return Connection(connection, username)


def _load_identity(identity: str | os.PathLike[str] | HostKey | None,
                   passphrase: bytes | str | None) -> HostKey | None:
    if identity is None or isinstance(identity, HostKey):
        return identity
    secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
    try:
        return HostKey.load(Path(identity).expanduser(), secret)
    except KeyFileError as exc:
        raise QshError(str(exc)) from None
    except QsmpError as exc:  # pragma: no cover - malformed files are KeyFileError
        raise QshError(str(exc)) from None
