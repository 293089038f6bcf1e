"""Copies through qshd as a real, unprivileged account: the daemon never writes as root.

A real ``python -m qshd`` (root, a process per connection) and a throwaway system account:
its copies run in its own user process, so a directory only root may write is "Permission
denied", and what it writes belongs to it. The in-process server (:mod:`qshd.server`), which
runs channels in the daemon's own (root) process, refuses copies for that account.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon import stop_process, wait_ready

from common import aio, transfer
from common.accounts.keys import HostKey, PublicKey
from common.accounts.passwd import PasswdFile
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer
from common.transfer import CopyError, CopyOptions
from qshd.config import ServerConfig
from qshd.server import Daemon

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = b"copy daemon test 5e0a"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating a system account needs root")


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed")
    name = "qcptest" + secrets.token_hex(3)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)


@dataclass
class Qshd:
    process: subprocess.Popen[bytes]
    port: int
    host_key: PublicKey
    log: Path


@pytest.fixture(scope="module")
def qshd(tmp_path_factory: pytest.TempPathFactory, user: User) -> Iterator[Qshd]:
    directory = tmp_path_factory.mktemp("qshd")
    passwd = directory / "passwd"
    PasswdFile(passwd).set_password(user.name, PASSWORD, cost=4)
    cfg = directory / "qshd_config"
    cfg.write_text(f"PasswdFile {passwd}\nListenAddress 127.0.0.1\n")
    ready, log = directory / "ready", directory / "qshd.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "qshd", "-D", "-e", "-p", "0", "-f", str(cfg),
             "-h", str(directory / "host_key"), "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=ROOT)
    try:
        port = wait_ready(process, ready, log)
        yield Qshd(process, port, PublicKey.load(directory / "host_key.pub")[0], log)
    finally:
        stop_process(process)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text


async def login(port: int, host_key: PublicKey, user: str) -> aio.QsmpConnection:
    client = await aio.connect("127.0.0.1", port, handshake=ClientHandshake(Offer(), host_key),
                               user=user, password=PASSWORD)
    assert await client.wait_authenticated() is None
    return client


@pytest.fixture()
def reachable() -> Iterator[Path]:
    """A directory the account can reach (pytest's own are under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="qcp-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_copies_run_with_the_users_rights(qshd: Qshd, user: User, reachable: Path) -> None:
    tmp_path = reachable
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o755)
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's")
    secret.chmod(0o600)
    source = tmp_path / "mine"
    source.write_bytes(b"the user's file")

    async def main() -> None:
        client = await login(qshd.port, qshd.host_key, user.name)
        try:
            report = await transfer.upload(client, [os.fsencode(source)],
                                           os.fsencode(root_only), CopyOptions())
            assert [(f.path, f.reason, f.remote) for f in report.failures] == [
                (str(root_only / "mine"), "Permission denied", True)]
            report = await transfer.upload(client, [os.fsencode(source)], b"into-home",
                                           CopyOptions())
            assert report.ok, report.failures
            report = await transfer.download(client, [os.fsencode(secret)],
                                             os.fsencode(tmp_path / "stolen"), CopyOptions())
            assert [(f.path, f.reason, f.remote) for f in report.failures] == [
                (str(secret), "Permission denied", True)]
        finally:
            client.close()
            await client.wait_closed()

    run(main())
    assert os.listdir(root_only) == []
    assert not (tmp_path / "stolen").exists()
    written = user.home / "into-home"
    assert written.read_bytes() == b"the user's file"
    assert (written.stat().st_uid, written.stat().st_gid) == (user.uid, user.gid)
    log = qshd.log.read_text(errors="replace")
    assert "copy upload: 0 files, 0 bytes, 1 failures" in log
    assert "copy upload: 1 files, 15 bytes, 0 failures" in log
    assert "the user's file" not in log


def test_the_in_process_server_refuses_copies_for_another_user(user: User,
                                                                reachable: Path) -> None:
    tmp_path = reachable
    passwd = tmp_path / "passwd"
    PasswdFile(passwd).set_password(user.name, PASSWORD, cost=4)
    key = HostKey.generate("mldsa65", now=time.time())
    config = ServerConfig(port=0, listen_addresses=["127.0.0.1"], passwd_file=passwd)
    source = tmp_path / "f"
    source.write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the account could write here: only the server's refusal stops it

    async def main() -> None:
        daemon = Daemon(config, [key])
        await daemon.start()
        try:
            client = await login(daemon.port, key.public, user.name)
            with pytest.raises(CopyError, match="the server refused the copy"):
                await transfer.upload(client, [os.fsencode(source)], os.fsencode(out),
                                      CopyOptions())
            client.close()
            await client.wait_closed()
        finally:
            await daemon.close()

    run(main())
    assert os.listdir(out) == []


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
    return pids


def test_a_killed_server_leaves_no_partial_file(qshd: Qshd, user: User, reachable: Path) -> None:
    """The user's process (the one writing) is SIGKILLed mid-file: it cannot clean up, so
    nothing it writes may have a name before the file is complete and verified."""
    source = reachable / "big"
    source.write_bytes(os.urandom(60_000_000))
    dest = user.home / "incoming"
    dest.mkdir()
    os.chown(dest, user.uid, user.gid)
    killed: list[int] = []

    class KillAt:
        moved = 0

        def start(self, name: str, size: int, offset: int) -> None: ...
        def end(self, name: str, ok: bool) -> None: ...

        def advance(self, nbytes: int) -> None:
            self.moved += nbytes
            if self.moved >= 20_000_000 and not killed:
                # the account is ours (made for this test): its processes are the
                # connection's user process, started by our qshd
                for pid in _processes_of(user.uid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)

    async def main() -> None:
        client = await login(qshd.port, qshd.host_key, user.name)
        with pytest.raises(CopyError):
            await transfer.upload(client, [os.fsencode(source)], b"incoming", CopyOptions(),
                                  KillAt())
        client.abort()

    run(main())
    assert killed
    assert os.listdir(dest) == []
