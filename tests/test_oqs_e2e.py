"""liboqs end to end: real ``python -m qshd`` and ``python -m qsh`` processes logging in with
Classic McEliece KEMs and SLH-DSA host and user keys, with rekeys, and liboqs-python kept off
our standard output and error.

Needs liboqs (see tests/test_oqs.py: a skip with the reason, or a failure where .ci/run built
it). As root the daemon logs the tests in as a throwaway account (test_qsh_client's helpers).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import stop_process
from test_oqs import _liboqs_or_skip
from test_qsh_client import PYTHON, ROOT, _client_env, _start_daemon, _target_account

from common.accounts.keys import HostKey, PublicKey
from common.accounts.known_hosts import KnownHosts
from common.crypto import registry

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
    host_public: PublicKey

    def run(self, *args: str, options: tuple[str, ...] = (), input: bytes | None = None,
            timeout: float = 60, port: str | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = [PYTHON, "-m", "qsh", "-p", port or self.port, "-o", "StrictHostKeyChecking=yes",
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


@contextlib.contextmanager
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
        yield Daemon(account, port, user_path, host.public)
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def mldsa_daemon(account: Account) -> Iterator[Daemon]:
    with daemon_for(account, "mldsa65", "mldsa65", "-o", "RekeyBytes=1048576") as daemon:
        yield daemon


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


# --------------------------------------------------------------------------- Classic McEliece

REKEYED = 3 * MiB  # with RekeyBytes 1M, three budgets' worth of the server's direction


def _through_relay(daemon: Daemon, command: str, options: tuple[str, ...],
                   timeout: float = 60) -> tuple[subprocess.CompletedProcess[bytes], int]:
    relay = Relay(daemon.port)
    KnownHosts.load(daemon.account.client_home / ".qsh" / "known_hosts").add(
        "127.0.0.1", int(relay.port), daemon.host_public)
    result = daemon.run(command, options=options, timeout=timeout, port=relay.port)
    up, _ = relay.close()
    return result, up


def _login_command_and_rekeys(daemon: Daemon, kem: str, signature: str) -> None:
    """A login with exactly this KEM and host signature, a command, and output large enough
    for rekeys: each of the server's rekeys asks the client for a fresh key of the
    connection's KEM (McEliece: 261 KB to 1.36 MB, sent in fragments) and switches to the
    new key mid-stream. The relay's byte count shows the client sent those keys."""
    options = ("-o", f"KEMs={kem}", "-o", f"Signatures={signature}")
    result, baseline = _through_relay(daemon, "id -un; exit 3", ("-v", *options))
    assert (result.returncode, result.stdout) == (3, f"{daemon.account.user}\n".encode())
    assert f": {kem}, {signature}, ".encode() in result.stderr, result.stderr
    result, up = _through_relay(
        daemon, f"head -c {REKEYED} /dev/urandom | tee /dev/stderr | sha256sum", options,
        timeout=120)
    assert result.returncode == 0, result.stderr[-500:]
    assert len(result.stderr) == REKEYED
    assert result.stdout.split()[0].decode() == hashlib.sha256(result.stderr).hexdigest()
    # At least one: the server goes on sending under the old key until the client's fresh
    # key has arrived, so how many budgets' worth pass before it depends on timing.
    assert up - baseline >= registry.kem(kem).public_key_size, (up, baseline)


@pytest.mark.parametrize("kem", ["mceliece348864", "mceliece460896"])
def test_mceliece_login_command_and_rekey(mldsa_daemon: Daemon, kem: str) -> None:
    _login_command_and_rekeys(mldsa_daemon, kem, "mldsa65")


@pytest.mark.slow
def test_mceliece_largest_set_login_and_rekey(mldsa_daemon: Daemon) -> None:
    """8192128: a 1 357 824-byte public key in P2, P5 and every rekey offer, the largest
    thing any bound has to admit."""
    _login_command_and_rekeys(mldsa_daemon, "mceliece8192128", "mldsa65")


# --------------------------------------------------------------------------- SLH-DSA


@pytest.mark.parametrize(("host", "user"), [("slhdsa-sha2-128f", "slhdsa-shake-128f"),
                                            ("slhdsa-shake-128s", "slhdsa-sha2-128s")])
def test_slhdsa_host_and_user_keys(account: Account, host: str, user: str) -> None:
    """SLH-DSA, SHA2 and SHAKE, as the host key (signing the handshake) and as the user key
    (signing the login), with a McEliece rekey on top for the 'f' pair."""
    with daemon_for(account, host, user, "-o", "RekeyBytes=1048576") as daemon:
        _login_command_and_rekeys(daemon, "mceliece348864", host)


# --------------------------------------------------------------------------- a counting relay


class Relay:
    """A TCP relay on 127.0.0.1 in front of the daemon that counts the bytes each way: the
    only outside view of a rekey (each one makes the client send a fresh public key)."""

    def __init__(self, port: str) -> None:
        self.target = int(port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = str(self.sock.getsockname()[1])
        self.up = 0  # client to server
        self.down = 0
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(60)
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", self.target), timeout=60)
        for source, sink, up in ((client, server, True), (server, client, False)):
            thread = threading.Thread(target=self._pump, args=(source, sink, up), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        source.settimeout(120)
        try:
            while data := source.recv(1 << 16):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> tuple[int, int]:
        for thread in self._threads:
            thread.join(timeout=30)
        self.sock.close()
        return self.up, self.down


# --------------------------------------------------------------------------- refusals


def test_mceliece_asked_of_a_server_without_liboqs_is_refused_cleanly(
        account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without liboqs does not offer McEliece: a client that insists gets one line
    saying nothing is shared, exit 255, no traceback on either side."""
    monkeypatch.setenv("OQS_INSTALL_PATH", "/nonexistent")
    with daemon_for(account, "mldsa65", "mldsa65") as daemon:
        monkeypatch.undo()
        result = daemon.run("true", options=("-o", "KEMs=mceliece348864"))
    assert result.returncode == 255
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsh: ") and "no common" in lines[0], lines
    assert b"Traceback" not in (account.base / "qshd.log").read_bytes()


def test_slhdsa_host_key_for_a_client_that_offers_only_mldsa(account: Account) -> None:
    """The default client offer (ML-DSA) meets an SLH-DSA host key: refused with a line."""
    with daemon_for(account, "slhdsa-sha2-128f", "mldsa65") as daemon:
        result = daemon.run("true")
    assert result.returncode == 255
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsh: "), lines
