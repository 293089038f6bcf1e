"""Jump hosts and stdio forwarding end to end: ``qsh -W``, ``ProxyCommand``, ``-J`` /
``ProxyJump`` (one and two hops) and qcp through a jump host, against three real qshd
processes on 127.0.0.1, each with a host key of its own.

Every hop is its own QSMP connection, end to end: the hops' keys are pinned in
``~/.qsh/known_hosts`` and the final host's key is checked on the connection that runs
through them, so a wrong entry for the final host fails even though every hop is trusted.
The hop daemons log each login ("Accepted publickey ..."), which is how the tests see that a
connection really went through them.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import stop_process
from test_qsh_client import _client_env, _start_daemon, _target_account
from test_tunnel_e2e import TcpServer, echo

from common.accounts.keys import HostKey
from common.accounts.known_hosts import KnownHosts

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LOCAL = "127.0.0.1"

#: A relay for ProxyCommand: connects to argv[1]:argv[2], copies both ways, and writes
#: "host port up down" (bytes each way) to argv[3] when done: proof the bytes went through.
#: With argv[4], it writes its pid there and lingers after the end (a proxy to be killed).
RELAY = r"""
import os, socket, sys, threading
host, port, record = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    with open(sys.argv[4], "w") as f:
        f.write(str(os.getpid()))
s = socket.create_connection((host, port))
counts = [0, 0]
def up():
    while data := os.read(0, 65536):
        s.sendall(data); counts[0] += len(data)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=up, daemon=True); t.start()
while data := s.recv(65536):
    os.write(1, data); counts[1] += len(data)
with open(record, "w") as f:
    f.write(f"{host} {port} {counts[0]} {counts[1]}")
if len(sys.argv) > 4:  # "linger": a proxy that does not end at EOF, to be killed
    import time
    time.sleep(60)
"""


@dataclass
class Daemon:
    port: int
    key: HostKey
    process: subprocess.Popen[bytes]
    log: Path

    def logins(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")


@dataclass
class Env:
    user: str
    home: Path
    base: Path
    #: The account's home on the server side (where qcp may write).
    remote_home: Path
    hop1: Daemon
    hop2: Daemon
    final: Daemon

    def run(self, *args: str, input: bytes = b"", timeout: float = 60,
            program: str = "qsh") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PYTHON, "-m", program, *args], input=input,
                              capture_output=True, timeout=timeout, cwd=ROOT,
                              env=_client_env(self.home), start_new_session=True)

    def hop(self, daemon: Daemon) -> str:
        return f"{self.user}@{LOCAL}:{daemon.port}"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="qsh-jump-"))
    os.chmod(base, 0o755)
    try:
        with _target_account(base) as (user, home):
            client_home = base / "client"
            (client_home / ".qsh").mkdir(parents=True, mode=0o700)
            key = HostKey.generate("mldsa65", now=time.time())
            # The default identity: hops get no -i (ssh passes none to them either).
            key.save(client_home / ".qsh" / "id_mldsa65")
            line = key.public.openssh_line("test") + "\n"
            options = ["-o", "PermitOpen=127.0.0.1:*"]
            if os.geteuid() == 0:
                entry = pwd.getpwnam(user)
                qsh_dir = home / ".qsh"
                qsh_dir.mkdir(mode=0o700, exist_ok=True)
                authorized = qsh_dir / "authorized_keys"
                authorized.write_text(line)
                authorized.chmod(0o600)
                for path in (qsh_dir, authorized):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            else:
                authorized = base / "authorized_keys"
                authorized.write_text(line)
                authorized.chmod(0o600)
                options += ["-o", f"AuthorizedKeysFile={authorized}"]
            known = KnownHosts.load(client_home / ".qsh" / "known_hosts")
            daemons: list[Daemon] = []
            try:
                for name in ("hop1", "hop2", "final"):
                    where = base / name
                    where.mkdir()
                    process, port = _start_daemon(where, where / "host_key", *options)
                    host_key = HostKey.load(where / "host_key")
                    daemons.append(Daemon(int(port), host_key, process, where / "qshd.log"))
                    known.add(LOCAL, int(port), host_key.public)
                yield Env(user, client_home, base, home, *daemons)
            finally:
                for daemon in daemons:
                    stop_process(daemon.process)
                for daemon in daemons:
                    text = daemon.log.read_text(errors="replace")
                    assert "Traceback" not in text, text
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[TcpServer]:
    server = TcpServer(echo)
    yield server
    server.close()


def one_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------- -W


def test_stdio_forward_to_echo_server(env: Env, echo_server: TcpServer) -> None:
    payload = os.urandom(300_000)
    result = env.run("-W", f"{LOCAL}:{echo_server.port}", "-p", str(env.hop1.port),
                     "-o", "StrictHostKeyChecking=yes", f"{env.user}@{LOCAL}", input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    assert result.stderr == b""


def banner(conn: socket.socket) -> None:
    conn.sendall(b"hello\n")


def test_stdio_forward_ends_when_the_far_end_does(env: Env) -> None:
    """The destination says its piece and closes while stdin stays open: qsh -W ends (0)
    with the output, as ssh -W does, instead of waiting for an EOF on stdin."""
    server = TcpServer(banner)
    try:
        process = subprocess.Popen(
            [PYTHON, "-m", "qsh", "-W", f"{LOCAL}:{server.port}", "-p", str(env.hop1.port),
             f"{env.user}@{LOCAL}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=ROOT, env=_client_env(env.home), start_new_session=True)
        try:
            status = process.wait(timeout=30)
            assert process.stdout is not None and process.stderr is not None
            assert status == 0, process.stderr.read()
            assert process.stdout.read() == b"hello\n"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
    finally:
        server.close()


def test_stdio_forward_bracketed_destination(env: Env, echo_server: TcpServer) -> None:
    """``[host]:port`` (what a jump host is given), and the config's session settings do
    not apply to -W: no RemoteCommand, no going to the background."""
    config = env.base / "stdio_config"
    config.write_text("Host *\n  RemoteCommand echo not-this\n  ForkAfterAuthentication yes\n")
    result = env.run("-F", str(config), "-W", f"[{LOCAL}]:{echo_server.port}",
                     "-p", str(env.hop1.port), f"{env.user}@{LOCAL}", input=b"ping")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ping"


def test_stdio_forward_refused_by_permit_open(env: Env) -> None:
    result = env.run("-W", "127.0.0.2:9", "-p", str(env.hop1.port), f"{env.user}@{LOCAL}",
                     input=b"never sent")
    assert result.returncode == 255
    assert result.stdout == b""
    line = one_line(result.stderr)
    assert line.startswith("qsh: ") and "127.0.0.2:9" in line and "PermitOpen" in line, line


def test_stdio_forward_takes_no_command(env: Env) -> None:
    result = env.run("-W", f"{LOCAL}:9", f"{env.user}@{LOCAL}", "true")
    assert result.returncode == 255
    assert "-W takes no command" in result.stderr.decode(), result.stderr


# --------------------------------------------------------------------------- ProxyCommand


def test_proxy_command_relays_the_connection(env: Env) -> None:
    record = env.base / "relay-record"
    record.unlink(missing_ok=True)
    relay = env.base / "relay.py"
    relay.write_text(RELAY)
    proxy = f"{shlex.quote(PYTHON)} {shlex.quote(str(relay))} %h %p {shlex.quote(str(record))}"
    # The target's name is what known_hosts is checked against: "final" is no real host,
    # HostName makes it 127.0.0.1 and the relay gets %h = 127.0.0.1 and %p.
    result = env.run("-o", f"ProxyCommand={proxy}", "-o", f"HostName={LOCAL}",
                     "-o", "StrictHostKeyChecking=yes", "-p", str(env.final.port),
                     f"{env.user}@final", "echo through-the-relay")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"through-the-relay\n"
    deadline = time.monotonic() + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the relay writes its record when it ends
    host, port, up, down = record.read_text().split()
    assert (host, int(port)) == (LOCAL, env.final.port)
    assert int(up) > 1000 and int(down) > 1000  # a handshake and a session each way
    # ProxyCommand=none (given first) turns off the config's; here: connects directly.
    config = env.base / "proxy_config"
    config.write_text(f"Host *\n  ProxyCommand {proxy}\n")
    record.unlink()
    result = env.run("-F", str(config), "-o", "ProxyCommand=none", "-p", str(env.final.port),
                     f"{env.user}@{LOCAL}", "echo direct")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"direct\n"
    assert not record.exists()


def test_host_key_alias_names_the_key_through_a_proxy(env: Env) -> None:
    """HostKeyAlias: the known_hosts entry is looked up (and recorded) under the alias,
    without the port, as ssh does; the usual companion of a ProxyCommand."""
    relay = env.base / "relay.py"
    relay.write_text(RELAY)
    proxy = (f"{shlex.quote(PYTHON)} {shlex.quote(str(relay))} %h %p "
             f"{shlex.quote(str(env.base / 'alias-record'))}")
    known = env.base / "alias_known_hosts"
    known.unlink(missing_ok=True)
    KnownHosts.load(known).add("finalbox", 2022, env.final.key.public)
    common = ["-o", f"ProxyCommand={proxy}", "-o", f"UserKnownHostsFile={known}",
              "-o", "StrictHostKeyChecking=yes", "-p", str(env.final.port)]
    result = env.run(*common, "-o", "HostKeyAlias=finalbox", f"{env.user}@{LOCAL}",
                     "echo aliased")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"aliased\n"
    # Without the alias the same file knows nothing of [127.0.0.1]:port.
    result = env.run(*common, f"{env.user}@{LOCAL}", "echo never")
    assert result.returncode == 255
    assert "StrictHostKeyChecking is yes" in result.stderr.decode(), result.stderr
    # An alias whose recorded key is another host's: the changed-key refusal.
    KnownHosts.load(known).add("otherbox", 2022, env.hop1.key.public)
    result = env.run(*common, "-o", "HostKeyAlias=otherbox", f"{env.user}@{LOCAL}", "true")
    assert result.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr.decode(), result.stderr


def test_proxy_that_lingers_is_killed(env: Env) -> None:
    """A proxy that outlives its connection (it ignores EOF) is signalled and reaped when the
    connection ends, within the grace period: no process is left behind."""
    relay = env.base / "relay.py"
    relay.write_text(RELAY)
    record, pid_file = env.base / "linger-record", env.base / "linger-pid"
    proxy = (f"{shlex.quote(PYTHON)} {shlex.quote(str(relay))} %h %p "
             f"{shlex.quote(str(record))} {shlex.quote(str(pid_file))}")
    started = time.monotonic()
    result = env.run("-o", f"ProxyCommand={proxy}", "-p", str(env.final.port),
                     f"{env.user}@{LOCAL}", "echo lingered")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"lingered\n"
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert took < 30, took  # the grace and the kill, not the relay's 60 s


def test_proxy_command_that_exits_is_one_line(env: Env) -> None:
    result = env.run("-o", "ProxyCommand=sh -c 'exit 7'", "-p", str(env.final.port),
                     f"{env.user}@{LOCAL}", "true")
    assert result.returncode == 255
    line = one_line(result.stderr)
    assert line.startswith("qsh: ") and "ProxyCommand" in line and "status 7" in line, line


def test_print_config_shows_proxies(env: Env) -> None:
    jump = env.run("-G", "-J", "alice@bastion:2200,bob@inner", "target")
    assert jump.returncode == 0, jump.stderr
    assert "proxyjump alice@bastion:2200,bob@inner" in jump.stdout.decode().splitlines()
    command = env.run("-G", "-o", "ProxyCommand=nc %h %p", "target")
    assert command.returncode == 0, command.stderr
    assert "proxycommand nc %h %p" in command.stdout.decode().splitlines()
    # The first of ProxyJump and ProxyCommand wins, as in ssh_config.
    both = env.run("-G", "-o", "ProxyCommand=nc %h %p", "-o", "ProxyJump=bastion", "target")
    lines = both.stdout.decode().splitlines()
    assert "proxycommand nc %h %p" in lines and not any(
        line.startswith("proxyjump") for line in lines)


# --------------------------------------------------------------------------- -J


def test_jump_through_one_hop(env: Env) -> None:
    before = env.hop1.logins(), env.hop2.logins(), env.final.logins()
    result = env.run("-J", env.hop(env.hop1), "-o", "StrictHostKeyChecking=yes",
                     "-p", str(env.final.port), f"{env.user}@{LOCAL}", "echo one-hop")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"one-hop\n"
    assert result.stderr == b""  # no word from the hops' qsh -W: each ended cleanly
    after = env.hop1.logins(), env.hop2.logins(), env.final.logins()
    assert after == (before[0] + 1, before[1], before[2] + 1)


def test_jump_through_two_hops(env: Env) -> None:
    before = env.hop1.logins(), env.hop2.logins(), env.final.logins()
    result = env.run("-J", f"{env.hop(env.hop1)},{env.hop(env.hop2)}",
                     "-p", str(env.final.port), f"{env.user}@{LOCAL}", "echo two-hops")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"two-hops\n"
    assert result.stderr == b""  # no word from the hops' qsh -W: each ended cleanly
    after = env.hop1.logins(), env.hop2.logins(), env.final.logins()
    assert after == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_jump_checks_the_final_host_key(env: Env) -> None:
    """The hops are trusted (their keys are in ~/.qsh/known_hosts); the final host's entry,
    in a known_hosts file of its own, names hop1's key: the connection through the hop must
    fail on it, as a changed key."""
    wrong = env.base / "wrong_known_hosts"
    wrong.unlink(missing_ok=True)
    KnownHosts.load(wrong).add(LOCAL, env.final.port, env.hop1.key.public)
    before = env.final.logins()
    result = env.run("-J", env.hop(env.hop1), "-o", f"UserKnownHostsFile={wrong}",
                     "-p", str(env.final.port), f"{env.user}@{LOCAL}", "echo never")
    assert result.returncode == 255
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "qsh: host key verification failed"
    assert env.final.logins() == before


def test_proxy_jump_keyword_and_none(env: Env) -> None:
    config = env.base / "jump_config"
    config.write_text(f"Host final\n  HostName {LOCAL}\n  Port {env.final.port}\n"
                      f"  ProxyJump {env.hop(env.hop2)}\n")
    before = env.hop2.logins()
    result = env.run("-F", str(config), f"{env.user}@final", "echo via-keyword")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"via-keyword\n"
    assert result.stderr == b""  # no word from the hops' qsh -W: each ended cleanly
    assert env.hop2.logins() == before + 1
    # ProxyJump=none on the command line comes first and turns it off.
    result = env.run("-F", str(config), "-o", "ProxyJump=none", f"{env.user}@final",
                     "echo direct")
    assert result.returncode == 0, result.stderr
    assert env.hop2.logins() == before + 1


# --------------------------------------------------------------------------- qcp


def test_qcp_through_a_jump_host(env: Env) -> None:
    source = env.base / "jump-source"
    source.write_bytes(os.urandom(200_000))
    source.chmod(0o644)
    target = env.base / "jump-copied"
    target.unlink(missing_ok=True)
    before = env.hop1.logins()
    uploaded = f"{env.user}@{LOCAL}:{env.remote_home / 'jump-up'}"
    result = env.run("-q", "-o", f"ProxyJump={env.hop(env.hop1)}", "-P", str(env.final.port),
                     str(source), uploaded, program="qcp")
    assert result.returncode == 0, result.stderr
    result = env.run("-q", "-J", env.hop(env.hop1), "-P", str(env.final.port),
                     uploaded, str(target), program="qcp")
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == source.read_bytes()
    assert env.hop1.logins() == before + 2


# --------------------------------------------------------------------------- no daemon


def test_jump_specs_are_parsed_and_checked() -> None:
    from common.client.proxy import Hop, parse_jump

    assert parse_jump("alice@bastion:2200,ssh://inner/,[::1]:22,10.0.0.1") == (
        Hop("alice", "bastion", 2200), Hop(None, "inner", None), Hop(None, "::1", 22),
        Hop(None, "10.0.0.1", None))
    # Nothing that the hop's qsh could read as an option, or a shell as syntax.
    for bad in ("-oProxyCommand=x", "a;b", "u$(x)@h", "h:0", "h:99999", "[::1", "h p", ""):
        with pytest.raises(ValueError):
            parse_jump(bad)


def test_proxy_command_tokens(tmp_path: Path) -> None:
    from common.client.config import resolve
    from common.client.proxy import jump_command, proxy_command

    cfg = resolve("alias", path=Path("none"),
                  options=["HostName=10.1.2.3", "Port=2200", "User=bob",
                           "ProxyCommand=relay %h %p %r %n 100%%"])
    assert proxy_command(cfg, 0) == "relay 10.1.2.3 2200 bob alias 100%"
    shady = resolve("x;reboot", path=Path("none"), options=["ProxyCommand=nc %h %p"])
    with pytest.raises(ValueError, match="shell"):
        proxy_command(shady, 0)
    # ssh's construction: the last hop runs -W, the earlier ones are its -J; -F and -v pass.
    config = tmp_path / "config"
    config.write_text("Host target\n  ProxyJump a@first:1,b@second:2\n")
    command = jump_command(resolve("target", path=config), 2)
    assert command.endswith(f" -l b -p 2 -J a@first:1 -F {config} -vv "
                            "-W '[%h]:%p' second"), command


def test_proxies_do_not_nest_without_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ProxyJump under ``Host *`` matches the jump host too: each hop's qsh would start
    another one. The depth travels in the environment and stops the chain."""
    from common.client.config import resolve
    from common.client.proxy import MAX_NESTING, NESTING_VARIABLE, proxy_command

    cfg = resolve("target", path=Path("none"), options=["ProxyJump=bastion"])
    monkeypatch.setenv(NESTING_VARIABLE, str(MAX_NESTING - 1))
    assert proxy_command(cfg, 0) is not None
    monkeypatch.setenv(NESTING_VARIABLE, str(MAX_NESTING))
    with pytest.raises(ValueError, match="reaches itself"):
        proxy_command(cfg, 0)
