"""Administrators' policy, end to end (issue 14): authorized_keys options, ForceCommand,
PermitTTY, AllowUsers/DenyUsers, Match blocks, Include, ChannelTimeout,
UnusedConnectionTimeout, ``qshd -t`` and ``qshd -T -C``.

A real ``python -m qshd`` (root, so the per-connection monitor and the user's process are
real) and a real client (:func:`common.aio.connect`); root logs in with a key listed in an
AuthorizedKeysFile the test writes, and a throwaway account where two users are needed.
Each option is tested allowed and refused.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_qshd_sessions import (
    PASSWORD,
    PYTHON,
    ROOT,
    Qshd,
    ThrowawayUser,
    execute,
    login,
    run,
    start_qshd,
    stop_qshd,
    throwaway_user,  # noqa: F401  (a fixture)
)

from common import aio
from common.accounts.key_options import OptionError, parse_options, split_options
from common.accounts.keys import HostKey
from common.accounts.passwd import PasswdFile
from common.channels.copy import COPY
from common.channels.session import PtyRequest, WindowSize
from common.channels.tunnel import DIRECT_TCPIP, Endpoint
from common.protocol.auth import AuthFailed
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer
from qshd.config import ConfigError, ConnectionSpec, load, parse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the daemon's processes")

USER_KEY = HostKey.generate("mldsa65", now=time.time())
KEY_LINE = USER_KEY.public.openssh_line("policy-test")


# --------------------------------------------------------------------------- helpers


def write_keys(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(0o600)


def daemon(directory: Path, extra: str = "") -> tuple[Qshd, Path]:
    """A root daemon whose root login reads ``.../keys/authorized_keys`` (in a directory of
    its own below ``directory``: a second daemon must not find the first one's ready file)."""
    directory = Path(tempfile.mkdtemp(dir=directory))
    directory.chmod(0o755)
    keys = directory / "keys" / "authorized_keys"
    keys.parent.mkdir(mode=0o755, exist_ok=True)
    write_keys(keys, KEY_LINE)
    config = (f"AuthorizedKeysFile {keys}\nPermitRootLogin yes\nPasswordAuthentication no\n"
              + extra)
    return start_qshd(directory, config), keys


async def key_login(qshd: Qshd, user: str = "root", source: str | None = None,
                    host: str = "127.0.0.1") -> aio.QsmpConnection | AuthFailed:
    client = await aio.connect(host, qshd.port,
                               handshake=ClientHandshake(Offer(), qshd.host_key),
                               user=user, identity=USER_KEY,
                               local_addr=(source, 0) if source else None)
    answer = await asyncio.wait_for(client.wait_authenticated(), 20)
    if answer is not None:
        client.close()
        await client.wait_closed()
        return answer
    return client


async def logged_in(qshd: Qshd, **kwargs: str) -> aio.QsmpConnection:
    client = await key_login(qshd, **kwargs)
    assert not isinstance(client, AuthFailed), client
    return client


async def command_output(qshd: Qshd, command: str, **kwargs: str) -> bytes:
    client = await logged_in(qshd, **kwargs)
    try:
        result = await execute(client, command)
        return result.stdout
    finally:
        client.close()
        await client.wait_closed()


async def pty_granted(qshd: Qshd) -> bool:
    client = await logged_in(qshd)
    try:
        channel = await client.open_channel("session")
        pty = PtyRequest("xterm", WindowSize(24, 80, 0, 0))
        answer = await channel.request("pty-req", pty.encode())
        channel.close()
        return answer is not None and answer[0]
    finally:
        client.close()
        await client.wait_closed()


async def tunnel_opens(qshd: Qshd, port: int) -> bool:
    client = await logged_in(qshd)
    try:
        channel = await client.open_channel(DIRECT_TCPIP,
                                            Endpoint("127.0.0.1", port).encode())
    except aio.ChannelOpenError:
        return False
    else:
        channel.close()
        return True
    finally:
        client.close()
        await client.wait_closed()


@pytest.fixture()
def listeners() -> Iterator[tuple[int, int]]:
    """Two TCP ports on 127.0.0.1 that accept (tunnel destinations)."""
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        socks.append(sock)
    yield socks[0].getsockname()[1], socks[1].getsockname()[1]
    for sock in socks:
        sock.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Qshd, Path]]:
    """One daemon for the key options; each test writes its own authorized_keys line."""
    directory = tmp_path_factory.mktemp("keyed")
    qshd, keys = daemon(directory, "PermitUserEnvironment yes\n")
    yield qshd, keys
    stop_qshd(qshd)
    text = qshd.log_text()
    assert "Traceback" not in text, text
    assert "SECRET-OPTION" not in text


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(("text", "check"), [
    ('command="echo \\"hi, there\\""', lambda o: o.command == 'echo "hi, there"'),
    ("restrict", lambda o: not o.pty and not o.port_forwarding),
    ("restrict,pty", lambda o: o.pty and not o.port_forwarding),
    ("pty,restrict", lambda o: o.pty and not o.port_forwarding),
    ("NO-PTY", lambda o: not o.pty and o.port_forwarding),
    ('from="10.0.0.0/8,!10.0.0.66"', lambda o: o.sources == ("10.0.0.0/8", "!10.0.0.66")),
    ('permitopen="db:5432",permitopen="[::1]:*"',
     lambda o: o.permit_open == ("db:5432", "[::1]:*")),
    ('environment="A=b c"', lambda o: o.environment == (("A", "b c"),)),
    ("expiry-time=\"20300101Z\"", lambda o: o.expires == 1893456000.0),
    ("no-agent-forwarding,no-X11-forwarding,no-user-rc", lambda o: not o.restricted),
])
def test_key_options_parse_as_sshd_reads_them(text: str, check: object) -> None:
    options = parse_options(text)
    assert check(options), options  # type: ignore[operator]


@pytest.mark.parametrize("text", [
    "cert-authority", 'principals="a"', 'tunnel="1"', "agent-forwarding", "command=x",
    'command="a', 'from="1.2.3.4"x', "pty,", 'permitopen="nohost"', 'expiry-time="2030"',
    'environment="1A=b"', 'command="a",command="b"', "SECRET-OPTION",
])
def test_options_qshd_cannot_honour_refuse_the_line(text: str) -> None:
    with pytest.raises(OptionError) as raised:
        parse_options(text)
    assert "SECRET" not in str(raised.value)


def test_the_options_field_ends_at_an_unquoted_space() -> None:
    assert split_options('command="a b" qsh-mldsa65 AAAA c', "qsh-") == (
        'command="a b"', "qsh-mldsa65 AAAA c")
    assert split_options("qsh-mldsa65 AAAA", "qsh-") == ("", "qsh-mldsa65 AAAA")


# --------------------------------------------------------------------------- key options


def test_command_is_forced_and_gets_the_original_command(keyed: tuple[Qshd, Path]) -> None:
    qshd, keys = keyed
    write_keys(keys, f'command="echo forced:$QSH_ORIGINAL_COMMAND" {KEY_LINE}')
    assert run(command_output(qshd, "echo asked")) == b"forced:echo asked\n"
    write_keys(keys, KEY_LINE)
    assert run(command_output(qshd, "echo asked")) == b"asked\n"


def test_a_forced_command_refuses_copy_channels(keyed: tuple[Qshd, Path]) -> None:
    qshd, keys = keyed
    write_keys(keys, f'command="true" {KEY_LINE}')

    async def copy_refused() -> bool:
        client = await logged_in(qshd)
        try:
            await client.open_channel(COPY)
        except aio.ChannelOpenError:
            return True
        finally:
            client.close()
            await client.wait_closed()
        return False

    assert run(copy_refused())


@pytest.mark.parametrize(("sources", "admitted"), [
    ("10.0.0.0/8", False), ("127.0.0.1", True), ("127.0.0.*,!127.0.0.1", False),
    ("127.0.0.0/8", True),
])
def test_from_admits_only_its_sources(keyed: tuple[Qshd, Path], sources: str,
                                      admitted: bool) -> None:
    qshd, keys = keyed
    write_keys(keys, f'from="{sources}" {KEY_LINE}')
    answer = run(key_login(qshd))
    assert isinstance(answer, AuthFailed) != admitted
    if not isinstance(answer, AuthFailed):
        answer.close()


@pytest.mark.parametrize(("when", "admitted"), [("20000101", False), ("29991231Z", True)])
def test_expiry_time(keyed: tuple[Qshd, Path], when: str, admitted: bool) -> None:
    qshd, keys = keyed
    write_keys(keys, f'expiry-time="{when}" {KEY_LINE}')
    answer = run(key_login(qshd))
    assert isinstance(answer, AuthFailed) != admitted
    if not isinstance(answer, AuthFailed):
        answer.close()


def test_a_later_line_may_admit_what_an_earlier_one_refuses(keyed: tuple[Qshd, Path]) -> None:
    """As sshd: the same key on two lines, the first from= elsewhere: the second counts."""
    qshd, keys = keyed
    write_keys(keys, f'from="10.0.0.0/8" {KEY_LINE}', f'command="echo second" {KEY_LINE}')
    assert run(command_output(qshd, "echo asked")) == b"second\n"


def test_no_pty_refuses_a_terminal_and_restrict_pty_allows_one(
        keyed: tuple[Qshd, Path], listeners: tuple[int, int]) -> None:
    qshd, keys = keyed
    write_keys(keys, f"no-pty {KEY_LINE}")
    assert run(pty_granted(qshd)) is False
    assert run(tunnel_opens(qshd, listeners[0])) is True  # no-pty narrows the terminal only
    write_keys(keys, f"restrict,pty {KEY_LINE}")
    assert run(pty_granted(qshd)) is True
    assert run(tunnel_opens(qshd, listeners[0])) is False  # and nothing else
    write_keys(keys, f"restrict {KEY_LINE}")
    assert run(pty_granted(qshd)) is False


def test_port_forwarding_options(keyed: tuple[Qshd, Path],
                                 listeners: tuple[int, int]) -> None:
    qshd, keys = keyed
    allowed, other = listeners
    write_keys(keys, f'permitopen="127.0.0.1:{allowed}" {KEY_LINE}')
    assert run(tunnel_opens(qshd, allowed)) is True
    assert run(tunnel_opens(qshd, other)) is False
    write_keys(keys, f"no-port-forwarding {KEY_LINE}")
    assert run(tunnel_opens(qshd, allowed)) is False
    write_keys(keys, f"restrict,port-forwarding {KEY_LINE}")
    assert run(tunnel_opens(qshd, other)) is True


def test_environment_option_under_permit_user_environment(keyed: tuple[Qshd, Path]) -> None:
    qshd, keys = keyed
    write_keys(keys, f'environment="BACKUP_SET=nightly" {KEY_LINE}')
    assert run(command_output(qshd, "echo ${BACKUP_SET:-unset}")) == b"nightly\n"


def test_an_unknown_option_refuses_the_line_and_the_log_names_only_where(
        keyed: tuple[Qshd, Path]) -> None:
    qshd, keys = keyed
    write_keys(keys, f"SECRET-OPTION {KEY_LINE}")
    assert isinstance(run(key_login(qshd)), AuthFailed)
    deadline = time.monotonic() + 5
    while f"{keys}:1" not in qshd.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"{keys}: line 1: unsupported or malformed key option" in qshd.log_text()
    assert "SECRET-OPTION" not in qshd.log_text()


def test_environment_needs_permit_user_environment(tmp_path: Path) -> None:
    qshd, keys = daemon(tmp_path)
    try:
        write_keys(keys, f'environment="BACKUP_SET=nightly" {KEY_LINE}')
        assert run(command_output(qshd, "echo ${BACKUP_SET:-unset}")) == b"unset\n"
    finally:
        stop_qshd(qshd)


# --------------------------------------------------------------------------- qshd_config


def test_force_command_and_permit_tty_in_and_outside_match(tmp_path: Path) -> None:
    """ForceCommand outside Match forces every login, and wins over a key's command=; a
    Match block that selects the connection overrides it, one that does not leaves it."""
    qshd, keys = daemon(tmp_path, 'ForceCommand echo global:"$QSH_ORIGINAL_COMMAND"\n'
                                  "PermitTTY no\n")
    try:
        assert run(command_output(qshd, "echo asked")) == b"global:echo asked\n"
        write_keys(keys, f'command="echo key" {KEY_LINE}')
        assert run(command_output(qshd, "echo asked")) == b"global:echo asked\n"
        assert run(pty_granted(qshd)) is False
    finally:
        stop_qshd(qshd)
    write_keys(keys, KEY_LINE)
    blocks = tmp_path / "match.conf"
    for n, (criteria, expected, tty) in enumerate((
            ("LocalPort 1", b"global:echo asked\n", False),
            ("Address 127.0.0.0/8", b"matched\n", True))):
        blocks.write_text(f"Match {criteria}\n    ForceCommand echo matched\n"
                          "    PermitTTY yes\n")
        (tmp_path / str(n)).mkdir()
        qshd = start_qshd(tmp_path / str(n), f"AuthorizedKeysFile {keys}\nPermitRootLogin yes\n"
                                    'ForceCommand echo global:"$QSH_ORIGINAL_COMMAND"\n'
                                    f"PermitTTY no\nInclude {blocks}\n")
        try:
            assert run(command_output(qshd, "echo asked")) == expected, criteria
            assert run(pty_granted(qshd)) is tty, criteria
        finally:
            stop_qshd(qshd)


def test_match_user_and_address_select_different_policy(
        tmp_path: Path, throwaway_user: ThrowawayUser) -> None:  # noqa: F811
    user = throwaway_user
    home_keys = user.home / ".qsh"
    home_keys.mkdir(mode=0o700, exist_ok=True)
    write_keys(home_keys / "authorized_keys", KEY_LINE)
    os.chown(home_keys, user.uid, user.gid)
    os.chown(home_keys / "authorized_keys", user.uid, user.gid)
    keys = tmp_path / "keys" / "authorized_keys"
    keys.parent.mkdir(mode=0o755)
    write_keys(keys, KEY_LINE)
    blocks = tmp_path / "match.conf"
    blocks.write_text(f"Match User {user.name}\n    ForceCommand echo user-block\n"
                      "Match Address ::1\n    ForceCommand echo from-ipv6\n"
                      "Match Address 127.0.0.2\n    ForceCommand echo second-source\n")
    # Listening on ::1 as well (same port): the 127.0.0.1 against ::1.
    config = (f"ListenAddress ::1\nAuthorizedKeysFile {keys} .qsh/authorized_keys\n"
              f"PermitRootLogin yes\nInclude {blocks}\n")
    qshd = start_qshd(tmp_path, config)
    try:
        assert run(command_output(qshd, "echo plain")) == b"plain\n"
        assert run(command_output(qshd, "echo plain", user=user.name)) == b"user-block\n"
        assert run(command_output(qshd, "echo plain", source="127.0.0.2")) == \
            b"second-source\n"
        assert run(command_output(qshd, "echo plain", host="::1")) == b"from-ipv6\n"
    finally:
        stop_qshd(qshd)
        subprocess.run(["rm", "-rf", str(home_keys)], check=True)


def test_deny_users_and_allow_users(tmp_path: Path) -> None:
    qshd, _ = daemon(tmp_path, "DenyUsers nobody root@10.*\n")
    try:
        client = run(logged_in(qshd))
        client.close()
    finally:
        stop_qshd(qshd)
    qshd, _ = daemon(tmp_path, "DenyUsers root\n")
    try:
        assert isinstance(run(key_login(qshd)), AuthFailed)
        assert "user is listed in DenyUsers" in qshd.log_text()
    finally:
        stop_qshd(qshd)
    qshd, _ = daemon(tmp_path, "AllowUsers root@127.0.0.2\n")
    try:
        assert isinstance(run(key_login(qshd)), AuthFailed)
        client = run(logged_in(qshd, source="127.0.0.2"))
        client.close()
    finally:
        stop_qshd(qshd)


def test_channel_timeout_closes_an_idle_session(tmp_path: Path) -> None:
    qshd, _ = daemon(tmp_path, "ChannelTimeout session=2s\n")

    async def idle_session() -> tuple[float, object]:
        client = await logged_in(qshd)
        try:
            channel = await client.open_channel("session")
            from common.channels.session import encode_exec
            assert await channel.request("exec", encode_exec("sleep 30")) == (True, b"")
            started = time.monotonic()
            await asyncio.wait_for(channel.wait_closed(), 15)
            return time.monotonic() - started, None
        finally:
            client.close()
            await client.wait_closed()

    try:
        elapsed, _ = run(idle_session(), timeout=30)
        assert 1.5 <= elapsed < 6, elapsed
        assert "idle for 2s (ChannelTimeout)" in qshd.log_text()
    finally:
        stop_qshd(qshd)


def test_unused_connection_timeout_closes_a_connection_without_channels(
        tmp_path: Path) -> None:
    qshd, _ = daemon(tmp_path, "UnusedConnectionTimeout 2\n")

    async def unused() -> float:
        client = await logged_in(qshd)
        started = time.monotonic()
        await asyncio.wait_for(client.wait_closed(), 15)
        return time.monotonic() - started

    try:
        assert 1.5 <= run(unused(), timeout=30) < 6
        assert "UnusedConnectionTimeout" in qshd.log_text()
    finally:
        stop_qshd(qshd)


def test_the_connection_processes_are_not_dumpable(
        throwaway_user: ThrowawayUser) -> None:  # noqa: F811
    """The monitor and the user's process of a connection cannot be read or ptraced by
    another process of the same uid and capabilities (the kernel's test for a process that
    is not dumpable; it also means no core file), while a plain process of theirs can.

    The daemon runs as the throwaway account (as test_qshd_sessions' non-root daemon), so
    that the monitor's uid is not root's: a root process cannot be told apart this way."""
    user = throwaway_user
    prefix = ("setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    directory = user.home / "qshd-dumpable"
    directory.mkdir()
    passwd = directory / "passwd"
    PasswdFile(passwd).set_password(user.name, PASSWORD, cost=4)
    for path in (directory, passwd, directory / "passwd.lock"):
        os.chown(path, user.uid, user.gid)
    env = {"HOME": str(user.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    qshd = start_qshd(directory, f"PasswdFile {passwd}\n", prefix=prefix, env=env)
    control = subprocess.Popen([*prefix, "sleep", "30"])
    try:
        time.sleep(0.2)
        assert _readable(prefix, control.pid)  # the check can say yes
        client = run(login(qshd, user.name))
        try:
            monitors = _children(qshd.process.pid)
            assert monitors
            for monitor in monitors:
                assert not _readable(prefix, monitor), "monitor"
                users = _children(monitor)
                assert users
                for pid in users:
                    assert not _readable(prefix, pid), "user's process"
        finally:
            client.close()
    finally:
        control.kill()
        control.wait()
        stop_qshd(qshd)
        subprocess.run(["rm", "-rf", str(directory)], check=True)


def _readable(prefix: tuple[str, ...], pid: int) -> bool:
    """Whether /proc/pid/environ opens for a process with ``prefix``'s uid and caps."""
    result = subprocess.run([*prefix, "cat", f"/proc/{pid}/environ"], capture_output=True)
    return result.returncode == 0


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


# --------------------------------------------------------------------------- -t, -T, Include


def qshd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "qshd", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


@pytest.mark.parametrize(("line", "message"), [
    ("PermitTTY maybe", "expected yes or no, got 'maybe'"),
    ("ChannelTimeout session", "ChannelTimeout: expected type=interval, got 'session'"),
    ("ChannelTimeout x11=5", "ChannelTimeout: unsupported channel type 'x11' (session)"),
    ("ChannelTimeout session=soon", "expected seconds (e.g. 120, 90s, 2m), got 'soon'"),
    ("UnusedConnectionTimeout -1", "-1 is outside 0..2.592e+06 seconds"),
    ("AllowUsers @host", "expected user or user@address, got '@host'"),
    ("DenyGroups a@b", "expected a group name pattern, got 'a@b'"),
    ("Match Host x", "Match: unsupported criterion 'Host' (use All, User, Group, Address, "
                     "LocalAddress, LocalPort)"),
    ("Match User", "Match User needs a pattern list"),
    ("Match LocalPort http", "Match LocalPort: 'http' is not a port"),
    ("Match All\nPort 22", "port is not allowed in a Match block"),
    ("Match All\nPermitTTY sometimes", "expected yes or no, got 'sometimes'"),
    ("Include missing.conf", "Include missing.conf: no such file"),
])
def test_dash_t_names_the_file_and_line_of_a_bad_value(tmp_path: Path, line: str,
                                                       message: str) -> None:
    config = tmp_path / "qshd_config"
    config.write_text("# first\n" + line + "\n")
    result = qshd_cli("-t", "-f", str(config), "-h", str(tmp_path / "host_key"))
    lines = line.count("\n")
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"qshd: {config}:{2 + lines}: {message}\n"


def test_include_of_a_file_and_a_glob_and_an_error_inside(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "20-b.conf").write_text("PermitTTY no\n")
    (tmp_path / "conf.d" / "10-a.conf").write_text("# a\nForceCommand /bin/a\n")
    (tmp_path / "extra").write_text("DenyUsers mallory\n")
    main = tmp_path / "qshd_config"
    main.write_text("Include extra conf.d/*.conf\nForceCommand /bin/main\n")
    config = load(main)
    assert config.deny_users == ("mallory",)
    assert config.force_command == "/bin/a"  # first value wins; 10-a before 20-b
    assert config.permit_tty is False
    (tmp_path / "conf.d" / "30-bad.conf").write_text("\n\nPermitTTY perhaps\n")
    with pytest.raises(ConfigError) as raised:
        load(main)
    assert str(raised.value).startswith(f"{tmp_path / 'conf.d' / '30-bad.conf'}:3: ")
    result = qshd_cli("-t", "-f", str(main), "-h", str(tmp_path / "host_key"))
    assert result.stderr == (f"qshd: {tmp_path / 'conf.d' / '30-bad.conf'}:3: expected yes "
                             "or no, got 'perhaps'\n")


def test_dash_T_prints_the_effective_configuration_of_a_match(tmp_path: Path) -> None:
    config = tmp_path / "qshd_config"
    config.write_text("PermitTTY yes\nMatch User backup Address 10.0.0.0/8\n"
                      '    ForceCommand /usr/local/bin/backup "--to=/srv"\n'
                      "    PermitTTY no\n    AllowTcpForwarding no\n")
    base = ["-T", "-f", str(config), "-h", str(tmp_path / "host_key")]
    plain = qshd_cli(*base)
    assert plain.returncode == 0, plain.stderr
    assert "permittty yes\n" in plain.stdout and "forcecommand none\n" in plain.stdout
    matched = qshd_cli(*base, "-C", "user=backup,addr=10.1.2.3,lport=2022")
    assert matched.returncode == 0, matched.stderr
    assert "permittty no\n" in matched.stdout
    assert 'forcecommand /usr/local/bin/backup "--to=/srv"\n' in matched.stdout
    assert "allowtcpforwarding no\n" in matched.stdout
    other = qshd_cli(*base, "-C", "user=backup,addr=192.168.1.1,lport=2022")
    assert "permittty yes\n" in other.stdout
    bad = qshd_cli(*base, "-C", "user=backup,colour=blue")
    assert bad.returncode == 1 and "-C: unknown field 'colour'" in bad.stderr


def test_for_connection_applies_match_blocks_in_order() -> None:
    config = parse("PermitTTY yes\nMatch Group wheel\n  PermitTTY no\n"
                   "Match All\n  PermitTTY yes\n  ForceCommand x\n")
    assert config.for_connection(ConnectionSpec("u", ("wheel",))).permit_tty is False
    assert config.for_connection(ConnectionSpec("u", ("wheel",))).force_command == "x"
    assert config.for_connection(ConnectionSpec("u", ("users",))).permit_tty is True
    assert config.permit_tty is True and config.force_command is None


def test_sshds_client_alive_keywords_set_the_keep_alive() -> None:
    """An administrator's sshd_config habit: ClientAliveInterval (0: off) and
    ClientAliveCountMax reach the transport's keep-alive; -T shows both."""
    from qshd.config import dump
    config = parse("ClientAliveInterval 15\nClientAliveCountMax 4\n")
    settings = config.transport_settings()
    assert (settings.keepalive_interval, settings.keepalive_count_max) == (15, 4)
    assert {"keepaliveinterval 15", "clientalivecountmax 4"} <= set(dump(config))
    off = parse("ClientAliveInterval 0\n")
    assert off.transport_settings().keepalive_interval is None
    assert "keepaliveinterval 0" in dump(off)
    assert parse("KeepAliveInterval 20\n").transport_settings().keepalive_interval == 20
    with pytest.raises(ConfigError, match="outside"):
        parse("ClientAliveCountMax 0\n")
