"""qshd's login policy: the configuration keywords, passwords against a passwd file, keys
against authorized_keys (StrictModes), root and non-root rules, and the pre-login limits.

The daemon runs in-process here (:class:`qshd.server.Daemon` on 127.0.0.1 port 0) with the
real :func:`common.aio.connect` as the client: these tests are about decisions, and an
in-process daemon lets them read its log through caplog. Processes and privileges are
tested against a real ``python -m qshd`` in test_qshd_sessions.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from common import aio
from common.accounts.keys import HostKey
from common.accounts.passwd import PasswdFile
from common.protocol.auth import AuthFailed, AuthRequested
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer
from qshd.config import ConfigError, ServerConfig, load, parse
from qshd.login import Account, Authenticator, AuthorizedKeysError, read_authorized_keys
from qshd.server import Daemon

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
HOST_KEY = HostKey.generate("mldsa65", now=time.time())
USER_KEY = HostKey.generate("mldsa65", now=time.time())
OTHER_KEY = HostKey.generate("mldsa65", now=time.time())
#: Distinctive, so a test can prove it never reaches the log.
PASSWORD = b"correct horse 7f3a9e"
ME = pwd.getpwuid(os.geteuid()).pw_name
IS_ROOT = os.geteuid() == 0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# --------------------------------------------------------------------------- configuration


def test_config_keywords_and_defaults(tmp_path: Path) -> None:
    defaults = parse("")
    assert defaults.permit_root_login == "no"
    assert defaults.password_authentication and defaults.pubkey_authentication
    assert defaults.max_auth_tries == 6 and defaults.login_grace_time == 120
    assert defaults.authorized_keys_files == (".qsh/authorized_keys",)
    expected_passwd = (Path("/etc/qsh/passwd") if IS_ROOT
                       else Path.home() / ".qsh" / "passwd")
    assert defaults.passwd_path() == expected_passwd
    cfg = parse(f"PasswdFile {tmp_path}/pw\nAuthorizedKeysFile /keys/%u\n"
                "PermitRootLogin without-password\nPasswordAuthentication no\n"
                "PubkeyAuthentication yes\nMaxAuthTries 3\nLoginGraceTime 2m\n"
                "MaxStartups 5\nPermitRootLogin yes\n")
    assert cfg.passwd_path() == tmp_path / "pw"
    assert cfg.authorized_keys_files == ("/keys/%u",)
    assert cfg.permit_root_login == "prohibit-password"  # first value wins
    assert not cfg.password_authentication and cfg.pubkey_authentication
    assert (cfg.max_auth_tries, cfg.login_grace_time, cfg.max_startups) == (3, 120.0, 5)


@pytest.mark.parametrize("text", [
    "Port=2200\n", "Port = 2200\n", "port 2200 # ssh's is 22\n", "  PORT\t2200\n",
    'Port "2200"\n', "# Port 22\nPort 2200 #\n",
])
def test_config_lines_are_read_as_sshd_config_reads_them(text: str) -> None:
    """``=``, trailing comments, any case, quotes: each used to be refused or misread."""
    assert parse(text).port == 2200


def test_several_authorized_keys_files_and_a_quoted_path() -> None:
    cfg = parse('AuthorizedKeysFile .qsh/authorized_keys "/etc/qsh/keys dir/%u" # both\n')
    assert cfg.authorized_keys_files == (".qsh/authorized_keys", "/etc/qsh/keys dir/%u")


@pytest.mark.parametrize(("text", "message"), [
    ("Port 22 23\n", "qshd_config:1: port takes one value; '23' is one too many"),
    ("PasswdFile /a b\n", "qshd_config:1: passwdfile takes one value; 'b' is one too many"),
    ('AuthorizedKeysFile "/a\n', "qshd_config:1: unbalanced quotes"),
    ("Port=\n", "qshd_config:1: port needs a value"),
])
def test_config_line_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith(message), info.value


def test_line_numbers_stay_right_after_dash_o(tmp_path: Path) -> None:
    """An error in the file names its own line, however many -o options came first; an
    error in an option names the option."""
    config = tmp_path / "qshd_config"
    config.write_text("Port 2200\nMaxAuthTries many\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(config))}:2: "):
        load(config, ("LoginGraceTime=30", "Port=2300"))
    with pytest.raises(ConfigError, match=r"^-o 'MaxAuthTries=x': "):
        load(config, ("MaxAuthTries=x",))
    config.write_text("Port 2200\n")
    assert load(config, ("Port=2300",)).port == 2300  # -o wins


@pytest.mark.parametrize(("line", "message"), [
    ("PermitRootLogin maybe", "expected one of no, prohibit-password, yes"),
    ("PasswordAuthentication 1", "expected yes or no"),
    ("MaxAuthTries 0", "outside 1..100"),
    ("MaxAuthTries 2.5", "whole number"),
    ("LoginGraceTime soon", "expected seconds"),
    ("LoginGraceTime 0", "outside 1..86400 seconds"),
    ("MaxStartups 10:30", "expected start:rate:full"),
    ("AuthorizedKeysFile /keys/%x", "unknown token %x"),
])
def test_config_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f"Port 2222\n{line}\n", "cfg")
    text = str(info.value)
    assert text.startswith("cfg:2: ") and message in text and "\n" not in text


def test_t_checks_new_keywords_and_the_passwd_file(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    good = tmp_path / "good"
    good.write_text(f"PasswdFile {passwd}\nPermitRootLogin prohibit-password\n"
                    "MaxAuthTries 3\nLoginGraceTime 30s\n")
    ok = subprocess.run([PYTHON, "-m", "qshd", "-t", "-f", str(good), "-h",
                         str(tmp_path / "hk")], capture_output=True, text=True, timeout=60,
                        cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert PASSWORD.decode() not in ok.stderr
    bad = tmp_path / "bad"
    bad.write_text("PubkeyAuthentication maybe\n")
    result = subprocess.run([PYTHON, "-m", "qshd", "-t", "-f", str(bad)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"{bad}:1" in result.stderr
    broken = tmp_path / "broken"
    broken.write_text("alice:not-a-hash\n")
    broken.chmod(0o600)
    cfg = tmp_path / "cfg"
    cfg.write_text(f"PasswdFile {broken}\n")
    result = subprocess.run([PYTHON, "-m", "qshd", "-t", "-f", str(cfg), "-h",
                             str(tmp_path / "hk")], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"{broken}:1" in result.stderr


def test_a_broken_passwd_file_or_listen_address_stops_qshd_at_start(tmp_path: Path) -> None:
    """It used to start and then fail every password login in silence; and ``qshd -t``
    passed a ListenAddress that cannot be resolved. An address in use (a real listener on
    127.0.0.1) is found at start; a name that cannot be resolved already by ``-t``."""
    broken = tmp_path / "broken"
    broken.write_text("alice:not-a-hash\n")
    broken.chmod(0o600)
    base = [PYTHON, "-m", "qshd", "-D", "-e", "-h", str(tmp_path / "hk")]
    result = subprocess.run([*base, "-p", "0", "-o", "ListenAddress=127.0.0.1",
                             "-o", f"PasswdFile={broken}"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.endswith(f"qshd: {broken}:1: the hash for 'alice' is not a bcrypt hash\n")
    name = "a" * 300  # refused by the resolver's own checks: no lookup leaves the machine
    result = subprocess.run([*base, "-t", "-o", f"ListenAddress={name}"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr == f"qshd: cannot listen on {name} port 0: not a valid host name\n"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([*base, "-p", str(port), "-o", "ListenAddress=127.0.0.1"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.endswith(
        f"qshd: cannot listen on 127.0.0.1 port {port}: Address already in use\n")


# --------------------------------------------------------------------------- a daemon


def make_config(tmp: Path, **overrides: Any) -> ServerConfig:
    passwd = tmp / "passwd"
    if not passwd.exists():
        PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    keys = tmp / "keys"
    keys.mkdir(mode=0o755, exist_ok=True)
    cfg = ServerConfig(port=0, listen_addresses=["127.0.0.1"], passwd_file=passwd,
                       authorized_keys_files=(f"{keys}/%u",), permit_root_login="yes")
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return cfg


def authorize(tmp: Path, *keys: HostKey, mode: int = 0o600) -> Path:
    path = tmp / "keys" / ME
    path.parent.mkdir(mode=0o755, exist_ok=True)
    path.write_text("# authorized keys for the test\n\nnot a key line\n"
                    + "".join(k.public.openssh_line("test") + "\n" for k in keys))
    path.chmod(mode)
    return path


async def dial(daemon: Daemon, **login: Any) -> aio.QsmpConnection:
    return await aio.connect("127.0.0.1", daemon.port,
                             handshake=ClientHandshake(Offer(), HOST_KEY.public), **login)


async def attempt(cfg: ServerConfig, **login: Any) -> tuple[AuthFailed | None, float]:
    """One pipelined login; the answer and how long it took to arrive."""
    daemon = Daemon(cfg, [HOST_KEY])
    await daemon.start()
    try:
        client = await dial(daemon, **login)
        started = time.monotonic()
        answer = await client.wait_authenticated()
        elapsed = time.monotonic() - started
        client.close()
        await client.wait_closed()
        return answer, elapsed
    finally:
        await daemon.close()


@pytest.fixture()
def qshd_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="qshd")
    return caplog


# --------------------------------------------------------------------------- passwords


def test_password_login_is_accepted_and_logged(tmp_path: Path,
                                               qshd_log: pytest.LogCaptureFixture) -> None:
    answer, _ = run(attempt(make_config(tmp_path), user=ME, password=PASSWORD))
    assert answer is None
    assert f"Accepted password for {ME} from 127.0.0.1 port " in qshd_log.text
    assert PASSWORD.decode() not in qshd_log.text


def test_wrong_password_is_refused_after_the_delay(tmp_path: Path,
                                                   qshd_log: pytest.LogCaptureFixture) -> None:
    answer, elapsed = run(attempt(make_config(tmp_path), user=ME, password=b"wrong 91c2"))
    assert isinstance(answer, AuthFailed)
    assert elapsed >= 0.45  # the core's first failure delay (0.5 s)
    assert f"Failed password for {ME} from 127.0.0.1" in qshd_log.text
    assert "wrong 91c2" not in qshd_log.text


def test_unknown_user_is_refused(tmp_path: Path, qshd_log: pytest.LogCaptureFixture) -> None:
    answer, elapsed = run(attempt(make_config(tmp_path), user="nosuchuserqsh",
                                  password=PASSWORD))
    assert isinstance(answer, AuthFailed) and elapsed >= 0.45
    assert "Failed password for invalid user nosuchuserqsh from 127.0.0.1" in qshd_log.text


def test_password_file_edits_apply_without_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)

    async def main() -> None:
        daemon = Daemon(cfg, [HOST_KEY])
        await daemon.start()
        try:
            first = await dial(daemon, user=ME, password=b"new password")
            assert await first.wait_authenticated() is not None
            PasswdFile(tmp_path / "passwd").set_password(ME, b"new password", cost=4)
            assert await first.login_password(ME, b"new password") is None
            first.close()
        finally:
            await daemon.close()

    run(main())


def test_password_authentication_no(tmp_path: Path, qshd_log: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path, password_authentication=False)
    answer, _ = run(attempt(cfg, user=ME, password=PASSWORD))
    assert isinstance(answer, AuthFailed)
    assert "Failed password for" in qshd_log.text and "method disabled" in qshd_log.text


# --------------------------------------------------------------------------- keys


def test_key_login_is_accepted(tmp_path: Path, qshd_log: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path)
    authorize(tmp_path, OTHER_KEY, USER_KEY)
    answer, _ = run(attempt(cfg, user=ME, identity=USER_KEY))
    assert answer is None
    assert (f"Accepted publickey for {ME} from 127.0.0.1 port" in qshd_log.text
            and USER_KEY.public.fingerprint() in qshd_log.text)
    assert "line 3: malformed key, skipped" in qshd_log.text  # the good lines still count


def test_a_key_in_the_second_authorized_keys_file_logs_in(
        tmp_path: Path, qshd_log: pytest.LogCaptureFixture) -> None:
    """AuthorizedKeysFile with two paths, as sshd's default ``.ssh/authorized_keys
    .ssh/authorized_keys2``: a key in either logs in; the first file missing is no error."""
    second = tmp_path / "keys2"
    second.mkdir(mode=0o755)
    cfg = make_config(tmp_path, authorized_keys_files=(f"{tmp_path}/nothing/%u",
                                                       f"{second}/%u"))
    (second / ME).write_text(USER_KEY.public.openssh_line("test") + "\n")
    (second / ME).chmod(0o600)
    answer, _ = run(attempt(cfg, user=ME, identity=USER_KEY))
    assert answer is None
    answer, _ = run(attempt(cfg, user=ME, identity=OTHER_KEY))
    assert isinstance(answer, AuthFailed)
    assert f"is not in {tmp_path}/nothing/{ME} or {second}/{ME}" in qshd_log.text


def test_key_not_listed_is_refused(tmp_path: Path, qshd_log: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path)
    authorize(tmp_path, OTHER_KEY)
    answer, _ = run(attempt(cfg, user=ME, identity=USER_KEY))
    assert isinstance(answer, AuthFailed)
    assert "is not in" in qshd_log.text


def test_pubkey_authentication_no(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, pubkey_authentication=False)
    authorize(tmp_path, USER_KEY)
    answer, _ = run(attempt(cfg, user=ME, identity=USER_KEY))
    assert isinstance(answer, AuthFailed)


def test_expired_key_is_refused(tmp_path: Path, qshd_log: pytest.LogCaptureFixture) -> None:
    old = HostKey.generate("mldsa65", now=time.time() - 1000, lifetime=10)
    cfg = make_config(tmp_path)
    authorize(tmp_path, old)
    answer, _ = run(attempt(cfg, user=ME, identity=old))
    assert isinstance(answer, AuthFailed) and "has expired" in qshd_log.text


@pytest.mark.parametrize("flaw", ["file group-writable", "directory world-writable",
                                  "file owned by another user", "directory owned by another"])
def test_unsafe_authorized_keys_are_refused(tmp_path: Path, qshd_log: pytest.LogCaptureFixture,
                                            flaw: str) -> None:
    if "owned" in flaw and not IS_ROOT:
        pytest.skip("giving a file to another user needs root")
    cfg = make_config(tmp_path)
    path = authorize(tmp_path, USER_KEY)
    stranger = 54321  # no such account is needed to own a file
    if flaw == "file group-writable":
        path.chmod(0o620)
    elif flaw == "directory world-writable":
        path.parent.chmod(0o777)
    elif flaw == "file owned by another user":
        os.chown(path, stranger, stranger)
    else:
        os.chown(path.parent, stranger, stranger)
    answer, _ = run(attempt(cfg, user=ME, identity=USER_KEY))
    assert isinstance(answer, AuthFailed)
    assert "Authentication refused" in qshd_log.text
    assert "bad ownership or modes" in qshd_log.text
    where = "file" if flaw.startswith("file") else "directory"
    assert f"for {where} " in qshd_log.text


def test_strict_modes_accept_a_root_sticky_directory_above(tmp_path: Path) -> None:
    """/tmp (1777, root) above the file is fine: nobody else can replace our entries in it.
    The same mode on the file's own directory is not."""
    account = Account.lookup(ME)
    assert account is not None
    path = authorize(tmp_path, USER_KEY)
    keys = read_authorized_keys(path, account)
    assert keys is not None and keys[0].matches(USER_KEY.public)
    assert read_authorized_keys(tmp_path / "keys" / "missing", account) is None
    path.parent.chmod(0o1777)
    with pytest.raises(AuthorizedKeysError, match="bad ownership or modes for directory"):
        read_authorized_keys(path, account)


# --------------------------------------------------------------------------- root and non-root


def _stub_connection() -> aio.QsmpConnection:
    return cast(aio.QsmpConnection, SimpleNamespace(peername=("127.0.0.1", 4242)))


async def _decide(auth: Authenticator, user: str, *, password: bytes | None = None,
                  key: HostKey | None = None) -> bool:
    if password is not None:
        request = AuthRequested(user, "password", password=password)
    else:
        assert key is not None
        request = AuthRequested(user, "publickey", public_key=key.public)
    return await auth(_stub_connection(), request)


@pytest.mark.parametrize(("permit", "by_password", "by_key"), [
    ("no", False, False), ("prohibit-password", False, True), ("yes", True, True)])
def test_permit_root_login(tmp_path: Path, permit: str, by_password: bool,
                           by_key: bool) -> None:
    """As a root daemon, root's logins follow PermitRootLogin."""
    if not IS_ROOT:
        pytest.skip("root's authorized_keys must be owned by root (StrictModes): needs root")
    root_name = pwd.getpwuid(0).pw_name
    passwd = tmp_path / "passwd"
    PasswdFile(passwd).set_password(root_name, PASSWORD, cost=4)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / root_name).write_text(USER_KEY.public.openssh_line() + "\n")
    (keys / root_name).chmod(0o600)
    cfg = ServerConfig(passwd_file=passwd, authorized_keys_files=(f"{keys}/%u",),
                       permit_root_login=permit)
    auth = Authenticator(cfg, euid=0)
    assert run(_decide(auth, root_name, password=PASSWORD)) is by_password
    assert run(_decide(auth, root_name, key=USER_KEY)) is by_key


def test_a_non_root_daemon_serves_only_its_own_user(tmp_path: Path,
                                                    qshd_log: pytest.LogCaptureFixture) -> None:
    """Played with the euid of another account; the real thing (a daemon process under
    another uid) is in test_qshd_sessions.py."""
    own = next((p for p in pwd.getpwall() if p.pw_uid not in (0, os.geteuid())
                and Account.lookup(p.pw_name) is not None
                and os.access(p.pw_shell or "/bin/sh", os.X_OK)), None)
    if own is None:
        pytest.skip("no second account with a valid name and shell on this machine")
    passwd = tmp_path / "passwd"
    PasswdFile(passwd).set_password(own.pw_name, PASSWORD, cost=4)
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    auth = Authenticator(ServerConfig(passwd_file=passwd, permit_root_login="yes"),
                         euid=own.pw_uid)
    assert run(_decide(auth, own.pw_name, password=PASSWORD)) is True
    assert run(_decide(auth, ME, password=PASSWORD)) is False
    assert "serves only its own user" in qshd_log.text


# --------------------------------------------------------------------------- pre-login limits


def test_max_startups_drops_connections_beyond_the_cap(tmp_path: Path,
                                                       qshd_log: pytest.LogCaptureFixture
                                                       ) -> None:
    cfg = make_config(tmp_path, max_startups=2, per_source_max_startups=0)  # 0: none

    async def main() -> None:
        daemon = Daemon(cfg, [HOST_KEY])
        await daemon.start()
        loop = asyncio.get_running_loop()
        try:
            idle = []
            for _ in range(2):  # connected, silent: not logged in
                sock = socket.create_connection(("127.0.0.1", daemon.port))
                sock.setblocking(False)
                idle.append(sock)
            await asyncio.sleep(0.2)
            extra = socket.create_connection(("127.0.0.1", daemon.port))
            extra.setblocking(False)
            data = await asyncio.wait_for(loop.sock_recv(extra, 100), 5)
            assert data == b""  # closed at accept, before any handshake byte
            extra.close()
            # A logged-in connection does not count against the cap...
            for sock in idle[1:]:
                sock.close()
            await asyncio.sleep(0.2)
            client = await dial(daemon, user=ME, password=PASSWORD)
            assert await client.wait_authenticated() is None
            third = await dial(daemon, user=ME, password=PASSWORD)  # 1 idle: room
            assert await third.wait_authenticated() is None
            client.close()
            third.close()
            idle[0].close()
        finally:
            await daemon.close()

    run(main())
    assert "past MaxStartups" in qshd_log.text


def test_login_grace_time_ends_a_connection_that_does_not_log_in(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, login_grace_time=1.0)

    async def main() -> float:
        daemon = Daemon(cfg, [HOST_KEY])
        await daemon.start()
        try:
            client = await dial(daemon)
            started = time.monotonic()
            await asyncio.wait_for(client.wait_closed(), 10)
            assert client.terminated is not None and client.terminated.by_peer
            return time.monotonic() - started
        finally:
            await daemon.close()

    assert run(main()) < 5


def test_max_auth_tries_ends_the_connection(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, max_auth_tries=1)

    async def main() -> None:
        daemon = Daemon(cfg, [HOST_KEY])
        await daemon.start()
        try:
            client = await dial(daemon, user=ME, password=b"nope")
            assert await client.wait_authenticated() is not None
            await asyncio.wait_for(client.wait_closed(), 10)
            assert client.terminated is not None and client.terminated.by_peer
        finally:
            await daemon.close()

    run(main())


def test_channels_before_login_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        daemon = Daemon(make_config(tmp_path), [HOST_KEY])
        await daemon.start()
        try:
            client = await dial(daemon)
            with pytest.raises((aio.ChannelOpenError, aio.ConnectionLost)):
                await client.open_channel("session")
        finally:
            await daemon.close()

    run(main())


# --------------------------------------------------------------------------- what the log may hold


def test_a_malformed_line_is_logged_by_number_only(tmp_path: Path,
                                                   qshd_log: pytest.LogCaptureFixture) -> None:
    """A line that is not a key may be anything the file's owner (or whoever it links to)
    wrote: its number is logged, never its content."""
    account = Account.lookup(ME)
    assert account is not None
    path = tmp_path / "keys" / ME
    path.parent.mkdir(mode=0o755)
    path.write_text(f"{USER_KEY.public.openssh_line()}\nSECRET-7d2e91 hunter2\nqsh-mldsa65 @@@\n")
    path.chmod(0o600)
    keys = read_authorized_keys(path, account)
    assert keys is not None and len(keys) == 1
    assert "SECRET-7d2e91" not in qshd_log.text and "hunter2" not in qshd_log.text
    assert "@@@" not in qshd_log.text
    assert "line 2: malformed key" in qshd_log.text and "line 3: malformed key" in qshd_log.text


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_non_regular_file_is_refused_before_it_is_opened(tmp_path: Path, kind: str) -> None:
    """A FIFO wakes a writer blocked in open() as soon as a reader opens it: the writer
    must still be blocked after the refusal. A device is refused through a link too."""
    account = Account.lookup(ME)
    assert account is not None
    path = tmp_path / "keys" / ME
    path.parent.mkdir(mode=0o755)
    writer = None
    if kind == "fifo":
        os.mkfifo(path, 0o600)
        writer = subprocess.Popen([PYTHON, "-c", f"import os; os.open({str(path)!r}, "
                                   "os.O_WRONLY); print('opened', flush=True)"],
                                  stdout=subprocess.PIPE)
        time.sleep(0.3)
    else:
        path.symlink_to("/dev/null")
    try:
        with pytest.raises(AuthorizedKeysError, match="not a regular file"):
            read_authorized_keys(path, account)
        if writer is not None:
            time.sleep(0.3)
            assert writer.poll() is None, "the FIFO was opened"
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()


# --------------------------------------------------------------------------- user enumeration


def test_unknown_users_take_the_authorized_keys_step_too(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A publickey request for a name that has no account reads (a stand-in's)
    authorized_keys as one for a real account does, so its answer is not quicker."""
    import qshd.login as login_module

    calls: list[tuple[Path, Account]] = []
    real = login_module.read_authorized_keys

    def recording(path: Path, account: Account) -> Any:
        calls.append((path, account))
        return real(path, account)

    monkeypatch.setattr(login_module, "read_authorized_keys", recording)
    authorize(tmp_path, OTHER_KEY)
    auth = Authenticator(make_config(tmp_path))
    assert run(_decide(auth, ME, key=USER_KEY)) is False
    assert len(calls) == 1
    assert run(_decide(auth, "nosuchuserqsh", key=USER_KEY)) is False
    assert len(calls) == 2, "no authorized_keys step for an unknown user"
    stand_in = calls[1][1]
    assert stand_in.name != "nosuchuserqsh" and stand_in.uid != 0


def test_publickey_timing_does_not_tell_unknown_users(tmp_path: Path) -> None:
    """Coarse, so that a loaded machine cannot fail it: over interleaved samples the
    median refusal of an unknown user takes at least 3/4 of a real user's, whose file is
    read, parsed and searched (about 0.95 measured; 0.5 before both took the same steps).
    """
    authorize(tmp_path, OTHER_KEY)
    auth = Authenticator(make_config(tmp_path))

    async def timed(user: str) -> float:
        started = time.perf_counter()
        assert await _decide(auth, user, key=USER_KEY) is False
        return time.perf_counter() - started

    async def main() -> tuple[list[float], list[float]]:
        known: list[float] = []
        unknown: list[float] = []
        for i in range(43):
            k, u = await timed(ME), await timed("nosuchuserqsh")
            if i >= 3:  # warm-up
                known.append(k)
                unknown.append(u)
        return known, unknown

    known, unknown = run(main())
    ratio = statistics.median(unknown) / statistics.median(known)
    assert ratio >= 0.75, (f"unknown users answered in {ratio:.2f} of the time "
                          f"(median {statistics.median(unknown) * 1e3:.2f} ms vs "
                          f"{statistics.median(known) * 1e3:.2f} ms)")


@pytest.mark.parametrize(("value", "agreed"), [
    ("yes", 20), ("interval:50", 50), ("interval:5", 20), ("no", None)])
def test_obscure_keystroke_timing_bounds_what_clients_get(value: str,
                                                          agreed: int | None) -> None:
    """The server's keyword reaches the negotiation: a client asking for the default 20 ms
    clock gets it, a slower one where the server says so, none where it says no."""
    from common.protocol.negotiation import ObscurePolicy, agree_obscure

    result = agree_obscure(ObscurePolicy(), parse(f"ObscureKeystrokeTiming {value}\n").policy())
    assert (result.interval_ms if result is not None else None) == agreed


@pytest.mark.parametrize("value", ["maybe", "interval:1", "interval:x", "interval:2000"])
def test_obscure_keystroke_timing_bad_values(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^qshd_config:1: "):
        parse(f"ObscureKeystrokeTiming {value}\n")
