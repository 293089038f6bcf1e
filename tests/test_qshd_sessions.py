"""qshd sessions end to end: a real ``python -m qshd`` process on 127.0.0.1 and real
programs behind it; the client is :func:`common.aio.connect` with a password login.

Covered: exec and exit status, stdout/stderr kept apart, 50 MB through ``cat``, PTY size
following window-change, signals and exit-signal, isolation of sessions from each other,
no process left behind when the client goes away, the environment, and (as root) the
privilege drop to a throwaway system account and a daemon running as a non-root user.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon import stop_process, wait_ready

from common import aio
from common.accounts.keys import PublicKey
from common.accounts.passwd import PasswdFile
from common.channels.session import (
    EXIT_SIGNAL,
    EXIT_STATUS,
    ExitSignal,
    PtyRequest,
    WindowSize,
    decode_exit_status,
    encode_env,
    encode_exec,
    encode_signal,
    encode_window_change,
)
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = b"session test 4d1b"
ME = pwd.getpwuid(os.geteuid()).pw_name
IS_ROOT = os.geteuid() == 0
MiB = 1024 * 1024


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# --------------------------------------------------------------------------- the daemon


@dataclass
class Qshd:
    process: subprocess.Popen[bytes]
    port: int
    host_key: PublicKey
    log: Path
    passwd: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_qshd(directory: Path, config: str, *, prefix: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> Qshd:
    """Start ``python -m qshd`` in the foreground, logging to a file (a pipe nobody reads
    would stall the daemon once full); return once it listens."""
    cfg = directory / "qshd_config"
    cfg.write_text(config + "ListenAddress 127.0.0.1\n")
    ready = directory / "ready"
    log = directory / "qshd.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [*prefix, PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-f", str(cfg),
             "-h", str(directory / "host_key"), "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=ROOT, env=env)
    port = wait_ready(process, ready, log)
    host_key = PublicKey.load(directory / "host_key.pub")[0]
    return Qshd(process, port, host_key, log, directory / "passwd")


def stop_qshd(qshd: Qshd) -> None:
    stop_process(qshd.process)


@pytest.fixture(scope="module")
def qshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Qshd]:
    directory = tmp_path_factory.mktemp("qshd")
    passwd = directory / "passwd"
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    daemon = start_qshd(directory, f"PasswdFile {passwd}\nPermitRootLogin yes\n")
    yield daemon
    stop_qshd(daemon)
    assert PASSWORD.decode() not in daemon.log_text()
    assert "Traceback" not in daemon.log_text(), daemon.log_text()


# --------------------------------------------------------------------------- a client


async def login(qshd: Qshd, user: str = ME, password: bytes = PASSWORD) -> aio.QsmpConnection:
    client = await aio.connect("127.0.0.1", qshd.port,
                               handshake=ClientHandshake(Offer(), qshd.host_key),
                               user=user, password=password)
    answer = await client.wait_authenticated()
    assert answer is None, answer
    return client


@dataclass
class Result:
    stdout: bytes
    stderr: bytes
    status: int | None = None
    signal: ExitSignal | None = None


async def start(client: aio.QsmpConnection, command: str | None, *,
                pty: PtyRequest | None = None,
                env: dict[str, str] | None = None) -> aio.Channel:
    channel = await client.open_channel("session")
    if pty is not None:
        assert await channel.request("pty-req", pty.encode()) == (True, b"")
    for name, value in (env or {}).items():
        await channel.request("env", encode_env(name, value))
    if command is None:
        assert await channel.request("shell") == (True, b"")
    else:
        assert await channel.request("exec", encode_exec(command)) == (True, b"")
    return channel


async def finish(channel: aio.Channel) -> Result:
    """Read both streams to their end, then the exit report (it arrives before EOF)."""
    stdout, stderr = await asyncio.gather(channel.read_to_eof(), channel.stderr.read_to_eof())
    result = Result(stdout, stderr)
    request = await channel.next_request()
    assert request is not None and not request.want_reply
    if request.name == EXIT_STATUS:
        result.status = decode_exit_status(request.payload)
    else:
        assert request.name == EXIT_SIGNAL
        result.signal = ExitSignal.decode(request.payload)
    await asyncio.wait_for(channel.wait_closed(), 10)
    return result


async def execute(client: aio.QsmpConnection, command: str, stdin: bytes = b"",
                  **kwargs: Any) -> Result:
    channel = await start(client, command, **kwargs)
    if stdin:
        channel.write(stdin)
    channel.write_eof()
    return await finish(channel)


async def read_until(channel: aio.Channel, pattern: bytes, timeout: float = 10) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while not re.search(pattern, seen):
            chunk = await channel.read()
            assert chunk, f"EOF before {pattern!r}: {seen!r}"
            seen += chunk
    return seen


def gone(pid: int) -> bool:
    """True once no live process is in group ``pid`` (it led one). Zombies are dead: they
    wait for init, which in a container may reap them slowly."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    line = f.read()
            except OSError:
                continue
            fields = line[line.rfind(b")") + 2 :].split()
            if fields[0] != b"Z" and int(fields[2]) == pid:
                return False
    return True


def wait_gone(*pids: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- exec


def test_exit_status_and_separate_streams(qshd: Qshd) -> None:
    async def main() -> None:
        client = await login(qshd)
        result = await execute(client, "echo out; echo err >&2; exit 7")
        assert (result.stdout, result.stderr, result.status) == (b"out\n", b"err\n", 7)
        result = await execute(client, "true")
        assert result.status == 0 and result.signal is None
        client.close()

    run(main())
    assert f"Accepted password for {ME}" in qshd.log_text()


def test_50_megabytes_through_cat(qshd: Qshd) -> None:
    data = os.urandom(50 * MiB)

    async def main() -> None:
        client = await login(qshd)
        channel = await start(client, "cat")

        async def write() -> None:
            view = memoryview(data)
            for offset in range(0, len(data), MiB):
                channel.write(view[offset : offset + MiB])
                await channel.drain()
            channel.write_eof()

        digest = hashlib.sha256()
        total = 0

        async def read() -> None:
            nonlocal total
            async for chunk in channel:
                digest.update(chunk)
                total += len(chunk)

        await asyncio.gather(write(), read())
        result = await finish(channel)
        assert total == len(data) and digest.digest() == hashlib.sha256(data).digest()
        assert result.status == 0 and result.stderr == b""
        client.close()

    run(main(), timeout=60)


def test_environment_is_clean_and_allowlisted(qshd: Qshd) -> None:
    async def main() -> None:
        client = await login(qshd)
        channel = await client.open_channel("session")
        assert await channel.request("env", encode_env("LANG", "C.UTF-8")) == (True, b"")
        assert await channel.request("env", encode_env("LC_TIME", "C")) == (True, b"")
        assert await channel.request("env", encode_env("LD_PRELOAD", "/x.so")) == (False, b"")
        assert await channel.request("env", encode_env("PATH", "/evil")) == (False, b"")
        assert await channel.request("exec", encode_exec("env")) == (True, b"")
        channel.write_eof()
        result = await finish(channel)
        env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines()
                   if "=" in line)
        account = pwd.getpwnam(ME)
        assert env["LANG"] == "C.UTF-8" and env["LC_TIME"] == "C"
        assert "LD_PRELOAD" not in env and "TERM" not in env  # TERM only with a PTY
        assert env["USER"] == env["LOGNAME"] == ME
        assert env["HOME"] == account.pw_dir and env["SHELL"] == account.pw_shell
        assert env["PATH"].startswith("/usr/local/")
        client_ip, client_port, server_ip, server_port = env["QSH_CONNECTION"].split()
        assert client_ip == server_ip == "127.0.0.1" and int(server_port) == qshd.port
        assert 0 < int(client_port) < 65536
        assert "PYTEST_CURRENT_TEST" not in env  # nothing of the daemon's environment
        client.close()

    run(main())


# --------------------------------------------------------------------------- terminals


def test_stty_size_follows_window_change(qshd: Qshd) -> None:
    async def main() -> None:
        client = await login(qshd)
        pty = PtyRequest("xterm-256color", WindowSize(80, 24))
        channel = await start(client, 'stty size; echo "TERM=$TERM"; read x; stty size',
                              pty=pty)
        seen = await read_until(channel, rb"TERM=\S+\r\n")
        assert b"24 80\r\n" in seen and b"TERM=xterm-256color" in seen
        await channel.request("window-change", encode_window_change(WindowSize(132, 50)),
                              want_reply=False)
        channel.write(b"\n")
        result = await finish(channel)
        assert b"50 132\r\n" in result.stdout and result.status == 0
        client.close()

    run(main())


def test_login_shell_on_a_pty(qshd: Qshd) -> None:
    shell = os.path.basename(pwd.getpwnam(ME).pw_shell or "/bin/sh")

    async def main() -> None:
        client = await login(qshd)
        channel = await start(client, None, pty=PtyRequest("vt100", WindowSize(80, 24)))
        # The quotes in TT""Y keep the terminal's echo of this line from matching.
        channel.write(b'echo "ARGV0=$0 TT""Y=$(tty)"; exit 3\n')
        result = await finish(channel)
        match = re.search(rb"ARGV0=(\S+) TTY=(\S+)", result.stdout)
        assert match is not None, result.stdout
        assert match.group(1).decode() == "-" + shell  # a login shell
        assert match.group(2).startswith(b"/dev/pts/")
        assert result.status == 3
        client.close()

    run(main())


# --------------------------------------------------------------------------- signals


def test_signal_interrupts_a_command_and_exit_signal_is_reported(qshd: Qshd) -> None:
    async def main() -> None:
        client = await login(qshd)
        channel = await start(client, "echo started; sleep 100")
        await read_until(channel, b"started\n")
        began = time.monotonic()
        assert await channel.request("signal", encode_signal("INT")) == (True, b"")
        result = await finish(channel)
        assert result.signal is not None and result.signal.signal == "INT"
        assert not result.signal.core_dumped and result.status is None
        assert time.monotonic() - began < 5
        client.close()

    run(main())


def test_killing_one_session_leaves_the_others_working(qshd: Qshd) -> None:
    async def main() -> None:
        client = await login(qshd)
        other = await login(qshd)
        survivor = await start(client, "cat")
        victim = await start(client, "echo $$; exec sleep 100")
        pid = int((await read_until(victim, rb"\d+\n")).strip())
        os.kill(pid, 9)  # from outside, as an OOM killer or an admin would
        result = await finish(victim)
        assert result.signal is not None and result.signal.signal == "KILL"
        survivor.write(b"still here")
        assert await survivor.readexactly(10) == b"still here"
        survivor.write_eof()
        assert (await finish(survivor)).status == 0
        assert (await execute(other, "echo fine")).stdout == b"fine\n"
        client.close()
        other.close()

    run(main())


@pytest.mark.parametrize("how", ["channel closed", "connection dropped"])
def test_client_going_away_kills_the_process_group(qshd: Qshd, how: str) -> None:
    async def main() -> int:
        client = await login(qshd)
        channel = await start(client, "sleep 100 & echo $$; wait")
        pid = int((await read_until(channel, rb"\d+\n")).strip())
        assert not gone(pid)
        if how == "channel closed":
            channel.close()
            await channel.wait_closed()
            client.close()
        else:
            client.abort()
        return pid

    pid = run(main())
    assert wait_gone(pid), f"process group {pid} outlived its session"
    assert "hanging up the session" in qshd.log_text()


def test_a_process_ignoring_sighup_is_killed_after_the_grace(qshd: Qshd) -> None:
    async def main() -> int:
        client = await login(qshd)
        channel = await start(client, "trap '' HUP; echo $$; sleep 100; echo late")
        pid = int((await read_until(channel, rb"\d+\n")).strip())
        client.abort()
        return pid

    pid = run(main())
    began = time.monotonic()
    assert wait_gone(pid, timeout=15), f"process group {pid} survived SIGKILL"
    assert time.monotonic() - began >= 2  # SIGHUP alone did not do it
    assert "outlived SIGHUP; killing its session" in qshd.log_text()


def test_hangup_reaches_jobs_of_an_interactive_shell(qshd: Qshd) -> None:
    """With job control each job has a process group of its own: the hangup must reach
    every process of the terminal's session, not only the shell's group."""
    async def main() -> tuple[int, int]:
        client = await login(qshd)
        channel = await start(client, None, pty=PtyRequest("vt100", WindowSize(80, 24)))
        channel.write(b"sleep 101 & echo BG=$! SH=$$\n")
        seen = await read_until(channel, rb"BG=\d+ SH=\d+")
        match = re.search(rb"BG=(\d+) SH=(\d+)", seen)
        assert match is not None
        client.abort()
        return int(match.group(1)), int(match.group(2))

    job, shell = run(main())
    assert wait_gone(shell) and wait_gone(job), "a job of the shell survived the hangup"


def test_bad_requests_end_nothing_but_their_answer(qshd: Qshd) -> None:
    async def main() -> None:
        client = await login(qshd)
        channel = await client.open_channel("session")
        assert await channel.request("pty-req", b"\x00garbage") == (False, b"")
        assert await channel.request("signal", encode_signal("TERM")) == (False, b"")
        assert await channel.request("subsystem", b"sftp") == (False, b"")
        assert await channel.request("exec", b"\x00\x00\x00\x01\x00") == (False, b"")  # NUL
        assert await channel.request("exec", encode_exec("cat")) == (True, b"")  # waits
        assert await channel.request("exec", encode_exec("echo twice")) == (False, b"")
        channel.write(b"ok\n")
        channel.write_eof()
        result = await finish(channel)
        assert result.stdout == b"ok\n" and result.status == 0
        with pytest.raises(aio.ChannelOpenError):
            await client.open_channel("tunnel")
        client.close()

    run(main())


# --------------------------------------------------------------------------- as root

needs_root = pytest.mark.skipif(not IS_ROOT, reason="creating a system account needs root")


@dataclass
class ThrowawayUser:
    name: str
    uid: int
    gid: int
    home: Path
    groups: list[int]


@pytest.fixture(scope="module")
def throwaway_user() -> Iterator[ThrowawayUser]:
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    name = "qshtest" + secrets.token_hex(3)
    extra = ["-G", "users"] if _group_exists("users") else []
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", *extra, name], check=True,
                   capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield ThrowawayUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir),
                            sorted(os.getgrouplist(name, entry.pw_gid)))
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            pytest.fail(f"could not remove the test account {name}")


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@needs_root
def test_root_daemon_runs_the_session_as_the_user(qshd: Qshd,
                                                  throwaway_user: ThrowawayUser) -> None:
    user = throwaway_user
    PasswdFile(qshd.passwd).set_password(user.name, PASSWORD, cost=4)

    async def main() -> None:
        client = await login(qshd, user.name)
        result = await execute(client, 'id -u; id -g; id -G; echo "$HOME $USER $SHELL"; pwd')
        lines = result.stdout.decode().splitlines()
        assert result.status == 0, result.stderr
        assert int(lines[0]) == user.uid and int(lines[1]) == user.gid
        assert sorted(int(g) for g in lines[2].split()) == user.groups
        assert lines[3] == f"{user.home} {user.name} /bin/sh"
        assert lines[4] == str(user.home)
        # With a PTY too, and the terminal is the user's.
        result = await execute(client, 'id -u; stat -c %u "$(tty)"',
                               pty=PtyRequest("vt100", WindowSize(80, 24)))
        assert result.stdout.split() == [str(user.uid).encode()] * 2
        client.close()

    run(main())


@needs_root
@pytest.mark.skipif(not (os.path.exists("/var/log/wtmp") and shutil.which("last")),
                    reason="no wtmp (or no last) on this machine")
def test_pty_logins_show_in_last_and_lastlog(qshd: Qshd, throwaway_user: ThrowawayUser) -> None:
    """A terminal session is recorded as login(1) and sshd record one: ``last`` lists it
    while it runs and with its end after, ``lastlog`` has it. The user's process cannot
    write those files; its monitor does, for a terminal it checked is the user's."""
    user = throwaway_user
    PasswdFile(qshd.passwd).set_password(user.name, PASSWORD, cost=4)

    def last() -> str:
        return subprocess.run(["last", "-w", "-f", "/var/log/wtmp", user.name],
                              capture_output=True, text=True, check=False).stdout

    async def main() -> str:
        client = await login(qshd, user.name)
        channel = await start(client, None, pty=PtyRequest("vt100", WindowSize(80, 24)))
        channel.write(b"tty\n")
        line = (await read_until(channel, rb"/dev/pts/\d+")).decode()
        tty = re.search(r"/dev/(pts/\d+)", line)
        assert tty is not None
        for _ in range(100):
            if tty.group(1) in last():
                break
            await asyncio.sleep(0.05)
        during = last()
        assert f"{user.name} " in during and tty.group(1) in during, during
        assert "still logged in" in during, during
        channel.write(b"exit\n")
        await channel.wait_closed()
        client.close()
        await client.wait_closed()
        return tty.group(1)

    line = run(main())
    for _ in range(100):
        if "still logged in" not in last():
            break
        time.sleep(0.05)
    after = last()
    assert line in after and "still logged in" not in after, after
    if os.path.exists("/var/log/lastlog") and shutil.which("lastlog"):
        shown = subprocess.run(["lastlog", "-u", user.name], capture_output=True, text=True,
                               check=False).stdout
        assert line in shown and "127.0.0.1" in shown, shown


@needs_root
def test_non_root_daemon_serves_only_its_own_user(throwaway_user: ThrowawayUser) -> None:
    """``python -m qshd`` running as the throwaway account (setpriv; the interpreter may
    sit under /root, so the daemon keeps CAP_DAC_READ_SEARCH to read it, nothing more):
    that account logs in and runs as itself; root, with a valid password, is refused."""
    user = throwaway_user
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    prefix = (setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    directory = user.home / "qshd-test"
    directory.mkdir()
    passwd = directory / "passwd"
    PasswdFile(passwd).set_password(user.name, PASSWORD, cost=4)
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    for path in (directory, passwd, directory / "passwd.lock"):
        os.chown(path, user.uid, user.gid)
    env = {"HOME": str(user.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    daemon = start_qshd(directory, f"PasswdFile {passwd}\nPermitRootLogin yes\n",
                        prefix=prefix, env=env)
    try:
        async def main() -> None:
            client = await login(daemon, user.name)
            result = await execute(client, "id -u")
            assert result.stdout.strip() == str(user.uid).encode()
            client.close()
            refused = await aio.connect("127.0.0.1", daemon.port,
                                        handshake=ClientHandshake(Offer(), daemon.host_key),
                                        user=ME, password=PASSWORD)
            assert await refused.wait_authenticated() is not None
            refused.close()

        run(main())
    finally:
        stop_qshd(daemon)
    log = daemon.log_text()
    assert f"Accepted password for {user.name}" in log
    assert f"Failed password for {ME}" in log and "serves only its own user" in log


def test_stopping_the_listener_leaves_sessions_running(tmp_path: Path) -> None:
    """Each connection has processes of its own: stopping the listening daemon (an upgrade,
    ``systemctl restart``) leaves an open session working to its end, as sshd does; the
    session's programs go when its connection goes."""
    passwd = tmp_path / "passwd"
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    daemon = start_qshd(tmp_path, f"PasswdFile {passwd}\nPermitRootLogin yes\n")
    try:
        async def main() -> int:
            client = await login(daemon)
            channel = await start(client, "echo $$; exec cat")
            pid = int((await read_until(channel, rb"\d+\n")).strip())
            daemon.process.terminate()
            assert await asyncio.to_thread(daemon.process.wait, 15) == 0
            channel.write(b"still here\n")
            assert b"still here" in await read_until(channel, rb"still here\n")
            client.close()
            await asyncio.wait_for(client.wait_closed(), 15)
            return pid

        pid = run(main())
    finally:
        stop_qshd(daemon)
    assert wait_gone(pid), f"process group {pid} outlived its connection"
    assert "listener stopped; 1 connection(s) carry on" in daemon.log_text()


# --------------------------------------------------------------------------- pid reuse

needs_pid_namespace = pytest.mark.skipif(
    not IS_ROOT or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="a private pid namespace (unshare, nsenter) needs root and util-linux")


def _namespace_init(launcher: subprocess.Popen[bytes]) -> int:
    """The host pid of the process ``unshare --fork`` started: pid 1 of the namespace."""
    path = f"/proc/{launcher.pid}/task/{launcher.pid}/children"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(path).read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.02)
    raise AssertionError("unshare started nothing")


def _in_namespace(init: int, script: str, *args: str) -> str:
    """Run a shell script inside the daemon's pid (and /proc mount) namespace, as root."""
    result = subprocess.run(["nsenter", f"--target={init}", "--pid", "--mount", "--",
                             "sh", "-c", script, "sh", *args],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


#: Claims pid $1 for an unrelated process that leads a session and process group of its
#: own, as a root daemon does: sets the namespace's last pid to $1 - 1 and forks. Prints
#: "victim <pid> <start time>" on success, "held" when $1 stayed taken for 3 seconds.
_CLAIM_PID = """
target=$1
end=$(( $(date +%s) + 3 ))
while :; do
    echo $((target - 1)) > /proc/sys/kernel/ns_last_pid
    setsid sleep 60 </dev/null >/dev/null 2>&1 &
    if [ "$!" -eq "$target" ]; then
        read -r stat < /proc/$!/stat
        echo "victim $! $(echo "$stat" | sed 's/.*) //' | cut -d' ' -f20)"
        exit 0
    fi
    kill $!; wait $! 2>/dev/null
    [ "$(date +%s)" -lt "$end" ] || { echo held; exit 0; }
    sleep 0.05
done
"""

#: Prints "<state> <start time>" of pid $1, or "none".
_PROC_STATE = """
read -r stat < /proc/$1/stat 2>/dev/null || { echo none; exit 0; }
echo "$stat" | sed 's/.*) //' | cut -d' ' -f1,20
"""


@dataclass
class NamespacedQshd:
    daemon: Qshd
    init: int  # the daemon's pid on the host; pid 1 inside

    def run(self, script: str, *args: str) -> str:
        return _in_namespace(self.init, script, *args)

    def claim(self, pid: int) -> str:
        return self.run(_CLAIM_PID, str(pid))

    def alive(self, claim: str) -> bool:
        """Is the victim of a successful :meth:`claim` still alive (not even a zombie)?"""
        _, victim, started = claim.split()
        state = self.run(_PROC_STATE, victim).split()
        return state[0] not in ("none", "Z") and state[1] == started


@pytest.fixture()
def namespaced_qshd(tmp_path: Path) -> Iterator[NamespacedQshd]:
    """A qshd that is pid 1 of a private pid namespace (with its own /proc), so a test can
    hand a pid out on purpose and nothing on the host is at risk."""
    passwd = tmp_path / "passwd"
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    daemon = start_qshd(tmp_path, f"PasswdFile {passwd}\nPermitRootLogin yes\n",
                        prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    init = _namespace_init(daemon.process)
    try:
        yield NamespacedQshd(daemon, init)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGTERM)  # unshare ignores SIGTERM; the namespace goes too
        try:
            daemon.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
    assert "Traceback" not in daemon.log_text(), daemon.log_text()


@needs_pid_namespace
def test_hangup_never_signals_a_reused_pid(namespaced_qshd: NamespacedQshd) -> None:
    """The session's shell leaves a ``setsid`` grandchild holding its output pipe and exits;
    the session stays open. A root process that now gets the shell's pid (and leads a
    group and session of that number) must survive the session's hangup."""
    ns = namespaced_qshd
    daemon = ns.daemon

    async def main() -> tuple[int, str]:
        client = await login(daemon)
        channel = await start(client, "setsid sleep 30 & echo $$")
        pid = int((await read_until(channel, rb"\d+\n")).strip())
        claim = await asyncio.get_running_loop().run_in_executor(None, ns.claim, pid)
        channel.close()  # the hangup
        await asyncio.wait_for(channel.wait_closed(), 10)
        client.close()
        return pid, claim

    pid, claim = run(main())
    deadline = time.monotonic() + 10
    while "hanging up the session" not in daemon.log_text():
        assert time.monotonic() < deadline, daemon.log_text()
        time.sleep(0.05)
    time.sleep(1)  # SIGHUP goes out at once; SIGKILL would follow only for leftovers
    if claim.startswith("victim"):
        assert ns.alive(claim), f"the hangup killed pid {pid}, reused by an unrelated process"
    else:  # the daemon held on to the pid: nothing could take it
        assert claim.strip() == "held", claim
    # Once the session is over the daemon lets the pid go (no zombie left behind).
    deadline = time.monotonic() + 10
    while (state := ns.run(_PROC_STATE, str(pid)).split()) != ["none"]:
        if claim.startswith("victim") and state[0] != "Z":
            break  # it is the victim, alive
        assert time.monotonic() < deadline, f"pid {pid} never reaped: {state}"
        time.sleep(0.1)


#: Makes a job of its own the terminal's foreground group, lets it end (the terminal goes
#: on naming the dead group) and prints that group's number.
_STALE_FOREGROUND = """
import os, signal, time
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
job = os.fork()
if job == 0:
    os.setpgid(0, 0)
    time.sleep(0.3)
    os._exit(0)
os.setpgid(job, job)
os.tcsetpgrp(0, job)
os.waitpid(job, 0)
print("FG", job, flush=True)
time.sleep(100)
"""


@needs_pid_namespace
def test_signal_never_reaches_a_reused_foreground_group(
        namespaced_qshd: NamespacedQshd) -> None:
    """With a PTY a client's signal goes to the terminal's foreground group, whose number
    the terminal keeps after the group ended. A root process that got that number must
    not receive the client's SIGKILL."""
    ns = namespaced_qshd
    daemon = ns.daemon

    async def main() -> None:
        client = await login(daemon)
        channel = await start(client, f"exec {PYTHON} -c '{_STALE_FOREGROUND}'",
                              pty=PtyRequest("vt100", WindowSize(80, 24)))
        group = int(re.findall(rb"FG (\d+)", await read_until(channel, rb"FG \d+"))[0])
        claim = await asyncio.get_running_loop().run_in_executor(None, ns.claim, group)
        assert claim.startswith("victim"), claim  # a dead group holds no pid
        answer = await channel.request("signal", encode_signal("KILL"))
        await asyncio.sleep(0.5)
        alive = await asyncio.get_running_loop().run_in_executor(None, ns.alive, claim)
        assert alive, f"the client's signal killed pid {group}, reused by an unrelated process"
        assert answer == (False, b"")  # nothing of the session was in that group
        client.close()

    run(main())


# --------------------------------------------------------------------------- a clean log


def test_sessions_ended_at_once_leave_no_unawaited_coroutine(tmp_path: Path) -> None:
    """Sessions closed (or whose connection is dropped) right after their exec request,
    before their data pumps ever ran: nothing of them may be left un-run, which Python
    reports on stderr as "coroutine ... was never awaited"."""
    passwd = tmp_path / "passwd"
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    daemon = start_qshd(tmp_path, f"PasswdFile {passwd}\nPermitRootLogin yes\n")
    try:
        async def burst(abort: bool) -> None:
            client = await login(daemon)
            for _ in range(10):
                channel = await client.open_channel("session")
                await channel.request("exec", encode_exec("sleep 5"), want_reply=False)
                if not abort:
                    channel.close()
            if abort:
                client.abort()
            else:
                await asyncio.sleep(0.5)
                client.close()

        run(burst(abort=False))
        run(burst(abort=True))
        deadline = time.monotonic() + 15
        while daemon.log_text().count("hanging up the session") < 20:
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.1)
    finally:
        stop_qshd(daemon)
    log = daemon.log_text()
    assert "never awaited" not in log and "RuntimeWarning" not in log, log
    assert "Traceback" not in log, log
