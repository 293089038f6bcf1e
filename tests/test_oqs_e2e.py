"""liboqs end to end: real ``python -m qshd`` and ``python -m qsh`` processes logging in with
Classic McEliece KEMs and SLH-DSA host and user keys, with rekeys, and liboqs-python kept off
our standard output and error.

Needs liboqs (see tests/test_oqs.py: a skip with the reason, or a failure where .ci/run built
it). As root the daemon logs the tests in as a throwaway account (test_qsh_client's helpers).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_oqs import _liboqs_or_skip
from test_qsh_client import PYTHON, ROOT, _client_env, _start_daemon, _stop_daemon, _target_account

from common.accounts.keys import HostKey
from common.accounts.known_hosts import KnownHosts

MiB = 1024 * 1024


@dataclass
class Account:
    user: str
    base: Path
    client_home: Path
    authorized: Path
    options: list[str]


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    _liboqs_or_skip()
    base = Path(tempfile.mkdtemp(prefix="qsh-oqs-e2e-"))
    os.chmod(base, 0o755)
    try:
        with _target_account(base) as (user, home):
            client_home = base / "client"
            (client_home / ".qsh").mkdir(parents=True, mode=0o700)
            options: list[str] = []
            if os.geteuid() == 0:
                qsh_dir = home / ".qsh"
                qsh_dir.mkdir(mode=0o700, exist_ok=True)
                authorized = qsh_dir / "authorized_keys"
                authorized.touch(mode=0o600)
                entry = pwd.getpwnam(user)
                for path in (qsh_dir, authorized):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            else:
                authorized = base / "authorized_keys"
                authorized.touch(mode=0o600)
                options = ["-o", f"AuthorizedKeysFile={authorized}"]
            yield Account(user, base, client_home, authorized, options)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Daemon:
    account: Account
    port: str
    user_key: Path

    def run(self, *args: str, options: tuple[str, ...] = (), input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        argv = [PYTHON, "-m", "qsh", "-p", self.port, "-o", "StrictHostKeyChecking=yes",
                "-i", str(self.user_key), *options, f"{self.account.user}@127.0.0.1", *args]
        return subprocess.run(argv, input=input, stdin=None if input is not None
                              else subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              cwd=ROOT, env=_client_env(self.account.client_home),
                              start_new_session=True)


def _key_file(account: Account, algorithm: str, name: str) -> tuple[Path, HostKey]:
    path = account.base / f"{name}-{algorithm}"
    if path.exists():
        return path, HostKey.load(path)
    key = HostKey.generate(algorithm, now=time.time())
    key.save(path)
    return path, key


def daemon_for(account: Account, host_algorithm: str, user_algorithm: str,
               *options: str) -> Iterator[Daemon]:
    """A qshd with a ``host_algorithm`` host key that accepts our ``user_algorithm`` key."""
    host_path, host = _key_file(account, host_algorithm, "host")
    user_path, user = _key_file(account, user_algorithm, "user")
    account.authorized.write_text(user.public.openssh_line("oqs-e2e") + "\n")
    process, port = _start_daemon(account.base, host_path, *account.options, *options)
    known = account.client_home / ".qsh" / "known_hosts"
    known.unlink(missing_ok=True)
    KnownHosts.load(known).add("127.0.0.1", int(port), host.public)
    try:
        yield Daemon(account, port, user_path)
    finally:
        _stop_daemon(process)


@pytest.fixture(scope="module")
def mldsa_daemon(account: Account) -> Iterator[Daemon]:
    yield from daemon_for(account, "mldsa65", "mldsa65")


# --------------------------------------------------------------------------- quiet liboqs


def test_liboqs_python_writes_nothing_to_our_stdout_or_stderr(mldsa_daemon: Daemon) -> None:
    """liboqs-python logs "liboqs-python faulthandler is disabled" to stdout when imported:
    through qsh that line would land in front of every command's output (and in files
    copied with ``qsh host cat f > copy``). A McEliece login imports it on both sides."""
    result = mldsa_daemon.run("printf 'a\\0b'; printf err >&2",
                              options=("-o", "KEMs=mceliece348864"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"a\0b"
    assert result.stderr == b"err"
