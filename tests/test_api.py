"""The Python API (qsh.api): connect / run / RunResult / ProcessError.

Most tests run an in-process server on 127.0.0.1 (common.aio.serve with a login decision
and a tiny ``session`` handler that understands a few commands), so they exercise the
client's real network path in milliseconds. One test runs against a real ``qshd`` process.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import qsh
from common import aio
from common.accounts.keys import HostKey
from common.accounts.known_hosts import KnownHosts
from common.channels import session as proto
from common.protocol.auth import AuthRequested
from common.protocol.handshake import ServerHandshake
from qsh.api import (
    Connection,
    HostKeyNotVerifiable,
    PermissionDenied,
    ProcessError,
    RunResult,
    connect,
)

ROOT = Path(__file__).resolve().parents[1]
HOST_KEY = HostKey.generate("mldsa65", now=time.time())
OTHER_HOST_KEY = HostKey.generate("mldsa65", now=time.time())
USER_KEY = HostKey.generate("mldsa65", now=time.time())
PASSWORD = b"s3cret"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


async def _session(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
    """Commands: ``cat``, ``exit N``, ``stderr``, ``kill``, ``env``, ``refuse``."""
    channel.accept()
    env: dict[str, str] = {}
    while (request := await channel.next_request()) is not None:
        if request.name == proto.ENV:
            name, value = proto.decode_env(request.payload)
            env[name] = value
            continue
        if request.name != proto.EXEC:
            if request.want_reply:
                channel.reply(False)
            continue
        command = proto.decode_exec(request.payload)
        if command == "refuse":
            channel.reply(False)
            continue
        channel.reply(True)
        status: int | None = 0
        if command == "cat":
            channel.write(await channel.read_to_eof())
        elif command.startswith("exit "):
            status = int(command.split()[1])
        elif command == "stderr":
            channel.write(b"out")
            channel.write_stderr(b"oops")
            status = 1
        elif command == "env":
            channel.write(repr(sorted(env.items())).encode())
        elif command == "kill":
            status = None
            await channel.request(proto.EXIT_SIGNAL, proto.ExitSignal("KILL").encode(),
                                  want_reply=False)
        if status is not None:
            await channel.request(proto.EXIT_STATUS, proto.encode_exit_status(status),
                                  want_reply=False)
        channel.write_eof()
        channel.close()
        return


async def _decide(connection: aio.QsmpConnection, request: AuthRequested) -> bool:
    if request.user != "alice":
        return False
    if request.method == "publickey":
        return request.public_key == USER_KEY.public
    return request.password == PASSWORD


async def _server(host_key: HostKey = HOST_KEY) -> aio.Server:
    return await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake([host_key]),
                           on_channel=_session, on_auth=_decide)


def _known(tmp: Path, port: int, key: HostKey = HOST_KEY) -> Path:
    path = tmp / "known_hosts"
    KnownHosts.load(path).add("127.0.0.1", port, key.public)
    return path


async def _with_server(tmp: Path, body: Callable[[int, Path], Awaitable[None]],
                       host_key: HostKey = HOST_KEY) -> None:
    async with await _server(host_key) as server:
        await body(server.port, _known(tmp, server.port))


def test_run_collects_status_and_both_streams(tmp_path: Path) -> None:
    async def body(port: int, known: Path) -> None:
        async with connect("127.0.0.1", port, username="alice", identity=USER_KEY,
                           known_hosts=known) as conn:
            assert isinstance(conn, Connection) and conn.user == "alice"
            result = await conn.run("stderr")
            assert result == RunResult("stderr", 1, None, b"out", b"oops")
            assert result.returncode == 1
            assert (await conn.run("exit 0")).exit_status == 0
            # Several commands at once on one connection.
            results = await asyncio.gather(*(conn.run(f"exit {n}") for n in range(5)))
            assert [r.exit_status for r in results] == list(range(5))

    run(_with_server(tmp_path, body))


def test_input_reaches_stdin_and_eof_follows(tmp_path: Path) -> None:
    async def body(port: int, known: Path) -> None:
        async with connect("127.0.0.1", port, username="alice", identity=USER_KEY,
                           known_hosts=known) as conn:
            data = os.urandom(3 * 1024 * 1024 + 5)
            result = await conn.run("cat", input=data)
            assert result.stdout == data and result.exit_status == 0
            assert (await conn.run("cat", input="text")).stdout == b"text"
            assert (await conn.run("cat")).stdout == b""  # no input: EOF at once

    run(_with_server(tmp_path, body))


def test_check_raises_process_error_with_the_result(tmp_path: Path) -> None:
    async def body(port: int, known: Path) -> None:
        async with connect("127.0.0.1", port, username="alice", identity=USER_KEY,
                           known_hosts=known) as conn:
            with pytest.raises(ProcessError) as info:
                await conn.run("stderr", check=True)
            assert info.value.exit_status == 1 and info.value.stderr == b"oops"
            assert info.value.result.stdout == b"out"
            assert "exited with status 1" in str(info.value)
            with pytest.raises(ProcessError) as killed:
                await conn.run("kill", check=True)
            assert killed.value.exit_signal == "KILL" and killed.value.exit_status is None
            assert killed.value.result.returncode == -9
            assert (await conn.run("exit 0", check=True)).exit_status == 0

    run(_with_server(tmp_path, body))


def test_env_and_refused_command(tmp_path: Path) -> None:
    async def body(port: int, known: Path) -> None:
        async with connect("127.0.0.1", port, username="alice", identity=USER_KEY,
                           known_hosts=known) as conn:
            result = await conn.run("env", env={"LANG": "C.UTF-8"})
            assert result.stdout == b"[('LANG', 'C.UTF-8')]"
            with pytest.raises(qsh.api.QshError, match="refused to run"):
                await conn.run("refuse")

    run(_with_server(tmp_path, body))


def test_password_login_and_key_then_password_fallback(tmp_path: Path) -> None:
    async def body(port: int, known: Path) -> None:
        conn = await connect("127.0.0.1", port, username="alice", password="s3cret",
                             known_hosts=known)
        assert (await conn.run("exit 3")).exit_status == 3
        conn.close()
        await conn.wait_closed()
        # A key the server does not know, then the password.
        async with connect("127.0.0.1", port, username="alice", identity=OTHER_HOST_KEY,
                           password=PASSWORD, known_hosts=known) as conn2:
            assert (await conn2.run("exit 0")).exit_status == 0

    run(_with_server(tmp_path, body))


def test_identity_from_a_file_with_a_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "id"
    USER_KEY.save(path, b"phrase")

    async def body(port: int, known: Path) -> None:
        async with connect("127.0.0.1", port, username="alice", identity=path,
                           passphrase="phrase", known_hosts=known) as conn:
            assert (await conn.run("exit 0")).exit_status == 0
        with pytest.raises(qsh.api.QshError, match="passphrase"):
            await connect("127.0.0.1", port, username="alice", identity=path,
                          known_hosts=known)

    run(_with_server(tmp_path, body))


def test_refused_logins_raise_permission_denied(tmp_path: Path) -> None:
    async def body(port: int, known: Path) -> None:
        with pytest.raises(PermissionDenied):
            await connect("127.0.0.1", port, username="alice", password="wrong",
                          known_hosts=known)
        with pytest.raises(PermissionDenied):
            await connect("127.0.0.1", port, username="mallory", identity=USER_KEY,
                          known_hosts=known)

    run(_with_server(tmp_path, body))


def test_host_key_policies(tmp_path: Path) -> None:
    async def body() -> None:
        async with await _server() as server:
            known = tmp_path / "kh"
            # yes (the default): an unknown key is refused and nothing is written.
            with pytest.raises(HostKeyNotVerifiable):
                await connect("127.0.0.1", server.port, username="alice", identity=USER_KEY,
                              known_hosts=known)
            assert not known.exists()
            # accept-new records it; then yes accepts it.
            async with connect("127.0.0.1", server.port, username="alice",
                               identity=USER_KEY, known_hosts=known,
                               strict_host_key_checking="accept-new") as conn:
                assert conn.host_key_fingerprint == HOST_KEY.public.fingerprint()
            assert HOST_KEY.public.openssh_line().split()[1] in known.read_text()
            async with connect("127.0.0.1", server.port, username="alice",
                               identity=USER_KEY, known_hosts=known) as conn:
                assert (await conn.run("exit 0")).exit_status == 0
        async with await _server(OTHER_HOST_KEY) as other:
            # A changed key is refused even with accept-new.
            path = tmp_path / "kh2"
            KnownHosts.load(path).add("127.0.0.1", other.port, HOST_KEY.public)
            with pytest.raises(HostKeyNotVerifiable):
                await connect("127.0.0.1", other.port, username="alice", identity=USER_KEY,
                              known_hosts=path, strict_host_key_checking="accept-new")

    run(body())


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="strict_host_key_checking"):
        connect("h", username="a", password="p", strict_host_key_checking="ask")
    with pytest.raises(ValueError, match="identity, a password"):
        connect("h", username="a")


def test_package_exports_are_lazy() -> None:
    assert qsh.connect is connect and qsh.RunResult is RunResult
    assert qsh.ProcessError is ProcessError
    code = "import sys, qsh; assert 'asyncio' not in sys.modules and 'qsh.api' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# --------------------------------------------------------------------------- real daemon


def test_against_a_real_qshd(tmp_path: Path) -> None:
    """The API against the real daemon: key login, a shell command, stdin, status."""
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(USER_KEY.public.openssh_line("api") + "\n")
    authorized.chmod(0o600)
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "qshd", "-D", "-e", "-p", "0", "-o", "ListenAddress=127.0.0.1",
         "-h", str(tmp_path / "host_key"), "-o", f"AuthorizedKeysFile={authorized}",
         "-o", "PermitRootLogin=prohibit-password", "-o", f"PasswdFile={tmp_path / 'pw'}",
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        port = int(ready.read_text())

        async def main() -> None:
            async with connect("127.0.0.1", port, username=getpass.getuser(),
                               identity=USER_KEY, known_hosts=tmp_path / "kh",
                               strict_host_key_checking="accept-new") as conn:
                result = await conn.run("cat; echo err >&2; exit 5", input=b"hello")
                assert result == RunResult("cat; echo err >&2; exit 5", 5, None, b"hello",
                                           b"err\n")
                killed = await conn.run("kill -TERM $$")
                assert killed.exit_signal == "TERM" and killed.returncode == -15

        run(main())
    finally:
        process.terminate()
        process.wait(timeout=20)
