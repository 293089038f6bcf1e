"""authorized_keys as a root qshd reads it: with the user's rights, never through a link
into files the user may not read, never opening a FIFO or a device, and never copying a
line of it into the log.

A real ``python -m qshd`` runs as root and a throwaway system account (``useradd``,
removed afterwards) logs in with a key; the account owns its ~/.qsh and plays the
attacker who points ~/.qsh/authorized_keys somewhere else.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_qshd_sessions import (
    ROOT,
    Qshd,
    ThrowawayUser,
    run,
    start_qshd,
    stop_qshd,
    throwaway_user,  # noqa: F401  (a fixture)
)

from common import aio
from common.accounts.keys import HostKey
from common.protocol.auth import AuthFailed
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a throwaway account")

USER_KEY = HostKey.generate("mldsa65", now=time.time())


@pytest.fixture(scope="module")
def qshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Qshd]:
    directory = tmp_path_factory.mktemp("qshd")
    daemon = start_qshd(directory, "PasswordAuthentication no\n")
    yield daemon
    stop_qshd(daemon)
    assert "Traceback" not in daemon.log_text(), daemon.log_text()


@pytest.fixture()
def qsh_dir(throwaway_user: ThrowawayUser) -> Iterator[Path]:  # noqa: F811
    """The user's own, empty ~/.qsh (mode 0700), removed again after the test."""
    user = throwaway_user
    directory = user.home / ".qsh"
    directory.mkdir(mode=0o700)
    os.chown(directory, user.uid, user.gid)
    try:
        yield directory
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=True)


async def key_login(qshd: Qshd, user: str) -> tuple[AuthFailed | None, float]:
    client = await aio.connect("127.0.0.1", qshd.port,
                               handshake=ClientHandshake(Offer(), qshd.host_key),
                               user=user, identity=USER_KEY)
    started = time.monotonic()
    answer = await asyncio.wait_for(client.wait_authenticated(), 20)
    elapsed = time.monotonic() - started
    client.close()
    await client.wait_closed()
    return answer, elapsed


def test_the_users_own_file_lets_the_key_in(qshd: Qshd, throwaway_user: ThrowawayUser,  # noqa: F811
                                             qsh_dir: Path) -> None:
    user = throwaway_user
    keys = qsh_dir / "authorized_keys"
    keys.write_text("# mine\n" + USER_KEY.public.openssh_line("test") + "\n")
    keys.chmod(0o600)
    os.chown(keys, user.uid, user.gid)
    answer, _ = run(key_login(qshd, user.name))
    assert answer is None
    assert f"Accepted publickey for {user.name}" in qshd.log_text()


def test_a_link_to_a_root_only_file_is_not_read(qshd: Qshd, throwaway_user: ThrowawayUser,  # noqa: F811
                                                qsh_dir: Path, tmp_path: Path) -> None:
    """The link's target is a root-owned 0600 file: root could read it, the user cannot.
    Read with the user's rights it is refused, and not one byte of it reaches the log."""
    marker = "TOPSECRET-" + secrets.token_hex(8)
    secret_dir = tmp_path / "root-only"
    secret_dir.mkdir(mode=0o755)
    secret = secret_dir / "secret"
    secret.write_text(f"{marker} hunter2\nsecond line\n")
    secret.chmod(0o600)
    (qsh_dir / "authorized_keys").symlink_to(secret)
    before = len(qshd.log_text())
    answer, _ = run(key_login(qshd, throwaway_user.name))
    assert isinstance(answer, AuthFailed)
    log = qshd.log_text()[before:]
    assert marker not in log and "hunter2" not in log, log
    assert "Permission denied" in log, log


def test_a_link_to_etc_shadow_is_refused(qshd: Qshd, throwaway_user: ThrowawayUser,  # noqa: F811
                                         qsh_dir: Path) -> None:
    shadow = Path("/etc/shadow")
    if not shadow.is_file():
        pytest.skip("no /etc/shadow")
    (qsh_dir / "authorized_keys").symlink_to(shadow)
    before = len(qshd.log_text())
    answer, _ = run(key_login(qshd, throwaway_user.name))
    assert isinstance(answer, AuthFailed)
    log = qshd.log_text()[before:]
    assert "Permission denied" in log, log
    for line in shadow.read_text().splitlines()[:5]:
        name = line.split(":", 1)[0]
        assert f"{name}:" not in log, log


def test_a_fifo_is_never_opened(qshd: Qshd, throwaway_user: ThrowawayUser,  # noqa: F811
                                qsh_dir: Path) -> None:
    """A writer blocked opening the FIFO gets through the moment anyone opens it for
    reading: it must still be blocked after the login, which was refused at once."""
    user = throwaway_user
    fifo = qsh_dir / "authorized_keys"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, user.uid, user.gid)
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.open({str(fifo)!r}, os.O_WRONLY); "
                               "print('opened', flush=True)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        time.sleep(0.3)  # the writer is in open()
        before = len(qshd.log_text())
        answer, elapsed = run(key_login(qshd, user.name))
        assert isinstance(answer, AuthFailed) and elapsed < 5
        time.sleep(0.3)
        assert writer.poll() is None, "qshd opened the FIFO"
        assert "not a regular file" in qshd.log_text()[before:]
    finally:
        writer.kill()
        writer.wait()


def test_a_link_to_a_device_is_refused(qshd: Qshd, throwaway_user: ThrowawayUser,  # noqa: F811
                                       qsh_dir: Path) -> None:
    (qsh_dir / "authorized_keys").symlink_to("/dev/zero")
    before = len(qshd.log_text())
    answer, elapsed = run(key_login(qshd, throwaway_user.name))
    assert isinstance(answer, AuthFailed) and elapsed < 5
    assert "not a regular file" in qshd.log_text()[before:]
