"""The qsh client: its pure parts (escapes, exit codes, argument handling, raw mode on a real
pty) and end to end against a real ``qshd`` with real processes and real PTYs.

End to end, one daemon serves the whole module. As root it runs as root (as in production)
and the tests log in as a throwaway system account created here, with its own home,
``~/.qsh/authorized_keys`` (0600 in a 0700 directory) and a bcrypt passwd entry; without
root the daemon can only log its own user in, so that user is the target and the
authorized_keys file is a temporary one named with ``AuthorizedKeysFile``. The client
always runs with ``HOME`` pointing to a temporary directory: the tester's own ``~/.qsh``
is never read or written.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import stop_process, wait_ready

from common.accounts.keys import HostKey
from common.accounts.known_hosts import KnownHosts
from common.accounts.passwd import PasswdFile
from common.channels.session import ExitSignal
from common.client import terminal
from common.client.connect import describe_end, printable
from common.client.terminal import RawMode
from common.errors import ErrorCode
from common.protocol.connection import ConnectionTerminated, not_qsmp
from qsh.argv import hoist_options, split_destination, ssh_dash_T
from qsh.cli import remote_command
from qsh.escapes import (
    Command,
    CommandLine,
    Echo,
    Escape,
    EscapeScanner,
    parse_command,
)
from qsh.session import exit_code, wants_pty

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PASSWORD = "correct horse 42"
MiB = 1024 * 1024


# =========================================================================== unit


@pytest.mark.parametrize(("chunks", "expected"), [
    ([b"~."], [Escape.DISCONNECT]),  # at session start
    ([b"ls\r~."], [b"ls\r", Escape.DISCONNECT]),  # what was typed before still goes
    ([b"ls\n~.rest"], [b"ls\n", Escape.DISCONNECT]),  # nothing after ~. is sent
    ([b"a~."], [b"a~."]),  # not at the start of a line
    ([b"\r~~"], [b"\r~"]),  # ~~ sends one ~
    ([b"\r~~~."], [b"\r~~."]),  # ...and is no longer at a line start
    ([b"~x"], [b"~x"]),  # unknown: both bytes go
    ([b"~?"], [Escape.HELP]),
    ([b"~\x1a"], [Escape.SUSPEND]),
    ([b"~?~."], [Escape.HELP, Escape.DISCONNECT]),  # still at line start after ~?
    ([b"ab\r", b"~", b"."], [b"ab\r", Escape.DISCONNECT]),  # split over reads
    ([b"x~", b"."], [b"x~."]),
    ([b"~", b"\r~."], [b"~\r", Escape.DISCONNECT]),
])
def test_escape_scanner(chunks: list[bytes], expected: list[bytes | Escape]) -> None:
    scanner = EscapeScanner()
    out: list[bytes | Escape] = []
    for chunk in chunks:
        out.extend(scanner.feed(chunk))
    merged: list[bytes | Escape] = []
    for item in out:
        if isinstance(item, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += item
        else:
            merged.append(item)
    assert merged == expected


def test_escape_scanner_passes_bulk_data_unchanged() -> None:
    data = os.urandom(MiB).replace(b"~", b"-")
    assert EscapeScanner().feed(data) == [data]


@pytest.mark.parametrize(("chunks", "expected"), [
    # ~C: the prompt, then the line is echoed, not sent, and handed over at Enter.
    ([b"~C-L 1\r"], [Escape.COMMAND, Echo(b"-L 1\r\n"), CommandLine("-L 1")]),
    ([b"ls\r~C?\nx"], [b"ls\r", Escape.COMMAND, Echo(b"?\r\n"), CommandLine("?"), b"x"]),
    # split over reads, with erase (DEL, ^H) and ^U
    ([b"~", b"Cab", b"\x7f\x7fc\x08d\re"],
     [Escape.COMMAND, Echo(b"ab\b \b\b \bc\b \bd\r\n"), CommandLine("d"), b"e"]),
    ([b"~Cxy\x15z\r"], [Escape.COMMAND, Echo(b"xy\b \b\b \bz\r\n"), CommandLine("z")]),
    # ^C or ESC abandon the line; control bytes are not part of it
    ([b"~Cab\x03x"], [Escape.COMMAND, Echo(b"ab\r\n"), CommandLine(""), b"x"]),
    ([b"~Ca\x01\x1b"], [Escape.COMMAND, Echo(b"a\r\n"), CommandLine("")]),
    # after the line, ~ is at a line start again; not at a line start, ~C is plain text
    ([b"~C\r~."], [Escape.COMMAND, Echo(b"\r\n"), CommandLine(""), Escape.DISCONNECT]),
    ([b"a~C\r"], [b"a~C\r"]),
])
def test_escape_scanner_command_line(chunks: list[bytes], expected: list[object]) -> None:
    scanner = EscapeScanner()
    out: list[object] = []
    for chunk in chunks:
        for item in scanner.feed(chunk):
            if isinstance(item, Echo) and out and isinstance(out[-1], Echo):
                out[-1] = Echo(out[-1].data + item.data)
            elif isinstance(item, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += item
            else:
                out.append(item)
    assert out == expected


def test_escape_command_line_is_bounded() -> None:
    scanner = EscapeScanner()
    items = scanner.feed(b"~C" + b"x" * 10_000 + b"\r")
    line = items[-1]
    assert isinstance(line, CommandLine) and len(line.text) == 512


def test_parse_escape_commands() -> None:
    local = parse_command("-L 8080:localhost:80")
    assert local.action == "open" and local.spec is not None
    assert (local.spec.kind, local.spec.port, local.spec.host, local.spec.host_port) == (
        "local", 8080, "localhost", 80)
    assert parse_command("-T127.0.0.1:8080:h:80").spec.bind == "127.0.0.1"  # type: ignore[union-attr]
    remote = parse_command(" -R 0:localhost:22 ").spec
    assert remote is not None and (remote.kind, remote.port) == ("remote", 0)
    dynamic = parse_command("-D 1080").spec
    assert dynamic is not None and (dynamic.kind, dynamic.port) == ("dynamic", 1080)
    assert parse_command("-KL 8080") == Command("cancel", kind="local", port=8080)
    assert parse_command("-KT8080") == Command("cancel", kind="local", port=8080)
    assert parse_command("-KR 127.0.0.1:9000") == Command("cancel", kind="remote",
                                                          bind="127.0.0.1", port=9000)
    assert parse_command("-KD [::1]:1080") == Command("cancel", kind="dynamic", bind="::1",
                                                      port=1080)
    assert parse_command("?") == Command("help")
    assert parse_command("  ") == Command("none")
    for bad in ("ls", "-X 1", "-L", "-L 8080", "-KL a:b:c", "-KR x", "-D 99999"):
        with pytest.raises(ValueError):
            parse_command(bad)


def test_exit_code_mapping() -> None:
    assert exit_code(0, None) == 0
    assert exit_code(7, None) == 7
    assert exit_code(255, None) == 255
    assert exit_code(256, None) == 255  # would read as 0 after the OS truncates it
    assert exit_code(None, None) == 255
    assert exit_code(None, ExitSignal("INT")) == 128 + signal.SIGINT
    assert exit_code(None, ExitSignal("KILL", core_dumped=True)) == 137
    assert exit_code(0, ExitSignal("TERM")) == 143  # a signal report wins


def test_peer_text_is_one_printable_line() -> None:
    """Reasons come from the peer: no escape sequence or newline reaches the terminal."""
    assert printable("going away") == "going away"
    assert printable("a\x1b[2J\nb\x07\u200bc") == "a?[2J?b??c"
    assert printable("é ü 漢") == "é ü 漢"  # printable text is kept
    long = printable("x" * 5000)
    assert len(long) == 300 and long.endswith("...")
    assert len(printable("x" * 5000, None)) == 5000


def test_how_an_ending_is_described() -> None:
    """A failure our side detected in a record is flagged as possible tampering; the same
    code reported by the peer, a cut or a goodbye is not."""
    bad_tag = ConnectionTerminated(ErrorCode.AUTHENTICATION_FAILURE,
                                   "record authentication failed", by_peer=False)
    assert describe_end(bad_tag) == ("record authentication failed: the connection may have "
                                     "been tampered with")
    reported = ConnectionTerminated(ErrorCode.AUTHENTICATION_FAILURE, "login grace time exceeded",
                                    by_peer=True)
    assert describe_end(reported) == "login grace time exceeded"
    cut = ConnectionTerminated(ErrorCode.CHANNEL_DOWN, "connection closed by peer", by_peer=True)
    assert describe_end(cut) == "connection closed by peer"
    goodbye = ConnectionTerminated(ErrorCode.NONE, "bye\n", by_peer=True)
    assert describe_end(goodbye) == "shut down by the remote host (bye?)"
    assert describe_end(None) == "connection lost"


@pytest.mark.parametrize(("request_tty", "command", "tty", "force", "expected"), [
    ("auto", None, True, False, True),
    ("auto", None, False, False, False),  # qsh host < script
    ("auto", "ls", True, False, False),
    ("auto", "ls", False, True, True),  # -t
    ("no", None, True, False, False),
    ("yes", "ls", True, False, True),
    ("yes", "ls", False, False, False),
    ("force", "ls", False, False, True),
])
def test_wants_pty(request_tty: str, command: str | None, tty: bool, force: bool,
                   expected: bool) -> None:
    assert wants_pty(request_tty, command=command, stdin_is_tty=tty, force=force) is expected


def test_command_line_shapes() -> None:
    assert split_destination("alice@db") == ("alice", "db")
    assert split_destination("a@b@db") == ("a@b", "db")
    assert split_destination("db") == (None, "db")
    assert remote_command(()) is None
    assert remote_command(("ls", "-l", "*.txt")) == "ls -l *.txt"
    # Options right after the host are qsh's (as in ssh); the command starts at its word.
    assert hoist_options(["db", "-t", "ls", "-l"]) == ["-t", "--", "db", "ls", "-l"]
    assert hoist_options(["-p", "22", "db", "-vv", "-oA=b", "-i", "k", "top"]) == [
        "-p", "22", "-vv", "-oA=b", "-i", "k", "--", "db", "top"]
    assert hoist_options(["db", "--", "-t"]) == ["--", "db", "-t"]
    assert hoist_options(["db", "-x"]) == ["-x", "--", "db"]  # click then rejects -x
    assert hoist_options(["--help"]) == ["--help"]
    assert hoist_options(["--", "db", "-t"]) == ["--", "db", "-t"]


def test_sshs_dash_T_without_a_tunnel_means_no_pty() -> None:
    """qsh's -T takes a tunnel; ssh's -T (no pseudo-terminal) takes nothing, and scripts
    say ``ssh -T git@host`` or ``ssh -qT host cmd``. A -T whose next word is not a tunnel
    is ssh's: ``-o RequestTTY=no`` (before the fix: "bad forwarding specification")."""
    assert ssh_dash_T(["-T", "git@github.com"]) == ["-o", "RequestTTY=no", "git@github.com"]
    assert ssh_dash_T(["-qT", "db", "ls"]) == ["-q", "-o", "RequestTTY=no", "db", "ls"]
    assert ssh_dash_T(["-Tq", "db"]) == ["-o", "RequestTTY=no", "-q", "db"]
    assert ssh_dash_T(["-T", "::1"]) == ["-o", "RequestTTY=no", "::1"]
    for tunnel in (["-T", "8080:localhost:80", "db"], ["-T8080:web:80", "db"],
                   ["-T", "127.0.0.1:8080:[::1]:80", "db"], ["-vT", "8080:web:80", "db"],
                   ["-T", "[::1]:8080:web:80", "db"]):
        assert ssh_dash_T(tunnel) == tunnel
    # Words of the remote command and values of other options are left alone.
    assert ssh_dash_T(["db", "grep", "-T", "x"]) == ["db", "grep", "-T", "x"]
    assert ssh_dash_T(["-l", "-T", "db"]) == ["-l", "-T", "db"]
    assert ssh_dash_T(["--", "-T", "x"]) == ["--", "-T", "x"]


def _pty_pair() -> tuple[int, int]:
    master, slave = os.openpty()
    return master, slave


def test_raw_mode_and_restore_on_a_real_pty() -> None:
    master, slave = _pty_pair()
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ECHO and before[3] & termios.ICANON
        mode = RawMode(slave)
        with mode:
            raw = termios.tcgetattr(slave)
            assert not raw[3] & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
            assert not raw[1] & termios.OPOST  # the remote pty does output processing
            assert not raw[0] & termios.ICRNL
            assert raw[6][termios.VMIN] == 1
        assert termios.tcgetattr(slave) == before
        with pytest.raises(RuntimeError), RawMode(slave):
            raise RuntimeError("an exception on the way out restores too")
        assert termios.tcgetattr(slave) == before
        mode.enter()
        mode.enter()  # idempotent: the saved state stays the cooked one
        terminal.restore_all()
        assert termios.tcgetattr(slave) == before
        mode.restore()  # and twice is harmless
        with terminal.suspended(mode):
            pass
        assert termios.tcgetattr(slave) == before  # not raw before: not raw after
    finally:
        os.close(master)
        os.close(slave)


def test_window_size_of_a_pty() -> None:
    import fcntl
    import struct

    master, slave = _pty_pair()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        assert terminal.window_size(slave) == (101, 33, 0, 0)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        assert terminal.window_size(slave) is None
        assert terminal.size_or_default(slave) == (80, 24, 0, 0)
    finally:
        os.close(master)
        os.close(slave)
    r, w = os.pipe()
    assert terminal.window_size(r) is None
    os.close(r)
    os.close(w)


_RAW_CHILD = r"""
import os, signal, sys
from common.client.terminal import RawMode
how = sys.argv[1]
mode = RawMode(0)
mode.enter()
if how != "sigterm":
    print("raw", flush=True)
    os.read(0, 1)  # the test looks at the terminal meanwhile
if how == "exception":
    raise SystemExit("boom")
if how == "sigterm":
    import asyncio
    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("raw", flush=True)
        await stop.wait()
    try:
        asyncio.run(main())
    finally:
        mode.restore()
    sys.exit(255)
"""


@pytest.mark.parametrize("how", ["exception", "sigterm", "atexit"])
def test_raw_mode_restored_when_a_process_ends(how: str) -> None:
    """Every exit path of a process that entered raw mode leaves the terminal cooked:
    an exception, a signal handled in the loop, and a plain exit (the atexit hook)."""
    ptyprocess = pytest.importorskip("ptyprocess")
    child = ptyprocess.PtyProcess.spawn([PYTHON, "-c", _RAW_CHILD, how], cwd=str(ROOT),
                                        env=_client_env(None))
    with _slave_of(child) as slave:
        before = termios.tcgetattr(slave)
        _expect(child, b"raw")
        assert not termios.tcgetattr(slave)[3] & termios.ECHO
        if how == "sigterm":
            child.kill(signal.SIGTERM)
        else:
            child.write(b"x")
        _drain(child)
        assert termios.tcgetattr(slave) == before


# =========================================================================== helpers


def _client_env(home: Path | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if home is not None:
        env["HOME"] = str(home)
    env.setdefault("TERM", "xterm")
    env.pop("PYTHONUNBUFFERED", None)
    env.update(extra)
    return env


def _read_some(child: object, timeout: float) -> bytes:
    fd = child.fd  # type: ignore[attr-defined]
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child is gone and the pty drained
        raise EOFError from None


def _expect(child: object, pattern: bytes | re.Pattern[bytes], timeout: float = 20.0,
            seen: bytearray | None = None) -> bytes:
    """Read the pty until ``pattern`` appears; return everything read."""
    buf = seen if seen is not None else bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = (pattern.search(buf) if isinstance(pattern, re.Pattern)
                 else pattern in buf)
        if found:
            return bytes(buf)
        try:
            buf += _read_some(child, 0.2)
        except EOFError:
            break
    raise AssertionError(f"did not see {pattern!r} in {bytes(buf)!r}")


def _drain(child: object, timeout: float = 20.0) -> tuple[bytes, int | None]:
    """Everything until the child exits; its exit status."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = _read_some(child, 0.1)
        except EOFError:
            break
        buf += data
        # A test holding the slave open keeps EIO away: the child's exit ends it then.
        if not data and not child.isalive():  # type: ignore[attr-defined]
            break
    child.wait()  # type: ignore[attr-defined]
    return bytes(buf), child.exitstatus  # type: ignore[attr-defined]


@contextlib.contextmanager
def _slave_of(child: object) -> Iterator[int]:
    """Our own handle on the child's terminal (its fd 0), to read its settings at any
    time, even after the child exited."""
    pid = child.pid  # type: ignore[attr-defined]
    path = os.readlink(f"/proc/{pid}/fd/0")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass
class Server:
    port: str
    user: str
    base: Path
    client_home: Path
    known_hosts: Path
    key: Path
    host_key: Path
    process: subprocess.Popen[bytes]

    def qsh_args(self, *args: str, key: bool = True, user: str | None = None) -> list[str]:
        opts = ["-p", self.port, "-o", "StrictHostKeyChecking=yes"]
        if key:
            opts += ["-i", str(self.key)]
        return [PYTHON, "-m", "qsh", *opts, f"{user or self.user}@127.0.0.1", *args]

    def run(self, *args: str, key: bool = True, user: str | None = None,
            input: bytes | None = None, stdin: object = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        if input is None and stdin is None:
            stdin = subprocess.DEVNULL
        return subprocess.run(
            self.qsh_args(*args, key=key, user=user), input=input, stdin=stdin,  # type: ignore[arg-type]
            capture_output=True, timeout=timeout, cwd=ROOT, env=_client_env(self.client_home),
            start_new_session=True,  # no controlling terminal: nobody to ask
        )

    def spawn(self, *args: str, key: bool = True, user: str | None = None,
              dimensions: tuple[int, int] = (24, 80)) -> object:
        ptyprocess = pytest.importorskip("ptyprocess")
        return ptyprocess.PtyProcess.spawn(self.qsh_args(*args, key=key, user=user),
                                           cwd=str(ROOT), env=_client_env(self.client_home),
                                           dimensions=dimensions)


def _start_daemon(base: Path, host_key: Path, *options: str) -> tuple[subprocess.Popen[bytes],
                                                                      str]:
    ready = base / f"ready-{uuid.uuid4().hex}"
    log = open(base / "qshd.log", "ab")  # noqa: SIM115 - the daemon writes it until the end
    process = subprocess.Popen(
        [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-o", "ListenAddress=127.0.0.1",
         "-h", str(host_key), "--ready-file", str(ready), *options],
        stdout=log, stderr=log, cwd=ROOT, env=_client_env(None),
    )
    log.close()
    return process, str(wait_ready(process, ready, base / "qshd.log"))


@contextlib.contextmanager
def _target_account(base: Path) -> Iterator[tuple[str, Path]]:
    """(user name, home). As root: a fresh system account, deleted afterwards. Otherwise
    ourselves (the only user a non-root daemon can serve)."""
    if os.geteuid() != 0:
        yield getpass.getuser(), base
        return
    if shutil.which("useradd") is None:
        pytest.skip("running as root without useradd: cannot create a throwaway account")
    name = f"qshc{uuid.uuid4().hex[:8]}"
    home = base / "home" / name
    home.parent.mkdir(mode=0o755)
    shell = "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh"
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", shell, "-K", "UMASK=077", name],
                   check=True, capture_output=True)
    try:
        yield name, home
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    base = Path(tempfile.mkdtemp(prefix="qsh-client-e2e-"))
    os.chmod(base, 0o755)  # the target account must reach its home below
    try:
        with _target_account(base) as (user, home):
            options: list[str] = []
            entry = pwd.getpwnam(user)
            # The user's key: authorized in ~/.qsh/authorized_keys (0600, dir 0700).
            client_home = base / "client"
            (client_home / ".qsh").mkdir(parents=True, mode=0o700)
            key = HostKey.generate("mldsa65", now=time.time())
            key_path = client_home / "id_test"
            key.save(key_path)
            if os.geteuid() == 0:
                qsh_dir = home / ".qsh"
                qsh_dir.mkdir(mode=0o700, exist_ok=True)
                authorized = qsh_dir / "authorized_keys"
                authorized.write_text(key.public.openssh_line("test") + "\n")
                authorized.chmod(0o600)
                for path in (qsh_dir, authorized):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            else:
                authorized = base / "authorized_keys"
                authorized.write_text(key.public.openssh_line("test") + "\n")
                authorized.chmod(0o600)
                options = ["-o", f"AuthorizedKeysFile={authorized}"]
            passwd = base / "passwd"
            PasswdFile(passwd).set_password(user, PASSWORD.encode(), cost=4)
            host_key = base / "host_key"
            process, port = _start_daemon(base, host_key, "-o", f"PasswdFile={passwd}",
                                          *options)
            known = client_home / ".qsh" / "known_hosts"
            public = HostKey.load(host_key).public
            KnownHosts.load(known).add("127.0.0.1", int(port), public)
            try:
                yield Server(port, user, base, client_home, known, key_path, host_key,
                             process)
            finally:
                stop_process(process)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# =========================================================================== end to end


def test_exit_status_is_the_remote_one(server: Server) -> None:
    result = server.run("exit 7")
    assert result.returncode == 7, result.stderr
    assert result.stderr == b""


def test_remote_signal_is_128_plus_n(server: Server) -> None:
    result = server.run("kill -KILL $$")
    assert result.returncode == 128 + signal.SIGKILL, result.stderr


def test_stdout_and_stderr_are_kept_apart(server: Server) -> None:
    result = server.run("echo out; echo err >&2; echo out2")
    assert result.returncode == 0
    assert result.stdout == b"out\nout2\n"
    assert result.stderr == b"err\n"


def test_command_words_are_joined_as_ssh_does(server: Server) -> None:
    result = server.run("printf", "'%s|'", "a", "b c")
    assert result.stdout == b"a|b|c|"


def test_stdin_pipe_and_eof(server: Server) -> None:
    """``echo x | qsh host cat``: stdin goes through and its EOF ends the remote cat."""
    result = server.run("cat", input=b"x\n")
    assert (result.returncode, result.stdout) == (0, b"x\n"), result.stderr


def test_50_mb_round_trip_through_cat(server: Server, tmp_path: Path) -> None:
    data = os.urandom(50 * 1000 * 1000)
    source = tmp_path / "data"
    source.write_bytes(data)
    # stdin from a pipe (the polled path) both ways at once: backpressure in each direction.
    process = subprocess.Popen(server.qsh_args("cat"), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                               env=_client_env(server.client_home), start_new_session=True)
    out, err = process.communicate(data, timeout=120)
    assert process.returncode == 0, err
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    # stdin from a regular file (not pollable: read directly).
    with source.open("rb") as f:
        result = server.run("sha256sum", stdin=f)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_shell_without_a_pty_reads_a_script(server: Server, tmp_path: Path) -> None:
    """``qsh host < script``: no command and no terminal is a shell without a pty."""
    script = tmp_path / "script"
    script.write_bytes(b"echo from-script; test -t 0 || echo no-tty; exit 4\n")
    with script.open("rb") as f:
        result = server.run(stdin=f)
    assert result.returncode == 4, result.stderr
    assert result.stdout == b"from-script\nno-tty\n"


def test_sigint_without_a_pty_is_forwarded(server: Server) -> None:
    process = subprocess.Popen(server.qsh_args("echo ready; exec sleep 100"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT,
                               env=_client_env(server.client_home), start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 128 + signal.SIGINT


def test_password_login_through_a_pty(server: Server) -> None:
    child = server.spawn(key=False)
    _expect(child, f"{server.user}@127.0.0.1's password: ".encode())
    child.write(PASSWORD.encode() + b"\n")  # type: ignore[attr-defined]
    child.write(b"echo MARK$((6*7)); tty\n")  # type: ignore[attr-defined]
    seen = _expect(child, re.compile(rb"MARK42\r\n/dev/pts/\d+"))
    assert PASSWORD.encode() not in seen  # no echo
    child.write(b"exit 3\n")  # type: ignore[attr-defined]
    out, status = _drain(child)
    assert status == 3, out


def test_wrong_password_fails_after_the_delay(server: Server) -> None:
    child = server.spawn("true", key=False)
    started = time.monotonic()
    seen, total = bytearray(), bytearray()
    for attempt in range(3):
        _expect(child, b"password: ", seen=seen)
        total += seen
        seen.clear()
        child.write(f"wrong{attempt}\n".encode())  # type: ignore[attr-defined]
    out, status = _drain(child)
    elapsed = time.monotonic() - started
    assert status == 255
    assert out.endswith(b"qsh: permission denied (publickey,password)\r\n"), out
    assert total.count(b"Permission denied, please try again.") == 2
    assert elapsed >= 3.0  # 0.5 + 1 + 2 seconds of the server's growing delay


def test_unknown_user_is_refused(server: Server) -> None:
    result = server.run("true", user="nosuchuser7")
    assert result.returncode == 255
    assert result.stderr.startswith(b"qsh: permission denied"), result.stderr
    assert result.stderr.count(b"\n") == 1


def test_no_key_and_no_terminal_is_a_clear_failure(server: Server) -> None:
    result = server.run("true", key=False)
    assert result.returncode == 255
    assert result.stderr == (b"qsh: permission denied (no usable key and no terminal to ask "
                             b"for a password)\n")


def test_encrypted_key_asks_its_passphrase_on_the_terminal(server: Server,
                                                           tmp_path: Path) -> None:
    key = HostKey.load(server.key)
    locked = tmp_path / "id_locked"
    key.save(locked, b"open sesame")
    # No terminal: the key is skipped (said with -v), then nothing else can be tried.
    result = subprocess.run(
        [PYTHON, "-m", "qsh", "-v", "-p", server.port, "-i", str(locked),
         f"{server.user}@127.0.0.1", "true"], capture_output=True, timeout=60, cwd=ROOT,
        env=_client_env(server.client_home), stdin=subprocess.DEVNULL, start_new_session=True)
    assert result.returncode == 255
    assert b"no terminal to ask for its passphrase" in result.stderr
    # With a terminal: asked without echo, a wrong one is asked again.
    ptyprocess = pytest.importorskip("ptyprocess")
    child = ptyprocess.PtyProcess.spawn(
        [PYTHON, "-m", "qsh", "-p", server.port, "-i", str(locked), f"{server.user}@127.0.0.1",
         "echo", "unlocked"], cwd=str(ROOT), env=_client_env(server.client_home))
    _expect(child, b"Enter passphrase for key")
    child.write(b"wrong\n")
    _expect(child, b"Bad passphrase, try again")
    child.write(b"open sesame\n")
    out, status = _drain(child)
    assert status == 0 and b"unlocked" in out and b"open sesame" not in out


def test_remote_stty_size_follows_a_resize(server: Server) -> None:
    child = server.spawn(dimensions=(30, 100))
    child.write(b"stty size\n")  # type: ignore[attr-defined]
    _expect(child, b"30 100")
    child.setwinsize(40, 120)  # type: ignore[attr-defined]  # SIGWINCH to qsh
    seen = bytearray()
    deadline = time.monotonic() + 20
    while b"40 120" not in seen and time.monotonic() < deadline:
        child.write(b"stty size\n")  # type: ignore[attr-defined]
        with contextlib.suppress(AssertionError):
            _expect(child, b"40 120", timeout=1.0, seen=seen)
    assert b"40 120" in seen
    child.write(b"exit\n")  # type: ignore[attr-defined]
    assert _drain(child)[1] == 0


def test_ctrl_c_stops_a_remote_sleep_under_t(server: Server) -> None:
    child = server.spawn("-t", "echo ready; sleep 100")
    with _slave_of(child) as slave:
        before = termios.tcgetattr(slave)
        _expect(child, b"ready")
        started = time.monotonic()
        child.write(b"\x03")  # type: ignore[attr-defined]  # raw mode: a byte, not our SIGINT
        out, status = _drain(child)
        assert status == 128 + signal.SIGINT, out
        assert time.monotonic() - started < 10
        assert termios.tcgetattr(slave) == before


@pytest.mark.parametrize("ending", ["remote-exit", "escape", "sigterm", "sighup"])
def test_terminal_is_restored_on_every_exit_path(server: Server, ending: str) -> None:
    child = server.spawn("-t", "echo ready; exec sleep 100" if ending != "remote-exit"
                         else "echo ready; read line; exit 9")
    with _slave_of(child) as slave:
        before = termios.tcgetattr(slave)
        _expect(child, b"ready")
        during = termios.tcgetattr(slave)
        assert not during[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
        if ending == "remote-exit":
            child.write(b"go\r")  # type: ignore[attr-defined]
            expected = 9
        elif ending == "escape":
            child.write(b"\r~.")  # type: ignore[attr-defined]
            expected = 255
        else:
            child.kill(getattr(signal, ending.upper()))  # type: ignore[attr-defined]
            expected = 255
        out, status = _drain(child)
        assert status == expected, out
        assert termios.tcgetattr(slave) == before
        if ending == "escape":
            assert b"disconnected" in out


def test_password_prompt_restores_echo_when_interrupted(server: Server) -> None:
    child = server.spawn("true", key=False)
    with _slave_of(child) as slave:
        before = termios.tcgetattr(slave)
        _expect(child, b"password: ")
        time.sleep(0.1)
        assert not termios.tcgetattr(slave)[3] & termios.ECHO
        child.write(b"\x03")  # type: ignore[attr-defined]  # cooked mode: SIGINT to qsh
        out, status = _drain(child)
        assert status == 255, out
        assert termios.tcgetattr(slave) == before


def test_escape_help_and_literal_tilde(server: Server) -> None:
    child = server.spawn("-t", "echo ready; read line; echo \"got:$line\"")
    _expect(child, b"ready")  # the session runs: qsh's terminal is raw
    child.write(b"~?")  # type: ignore[attr-defined]
    _expect(child, b"~.   - terminate connection")
    child.write(b"~~x\r")  # type: ignore[attr-defined]
    out, status = _drain(child)
    assert status == 0 and b"got:~x" in out, out


def test_escape_command_line_adds_a_tunnel_and_cancels_it(server: Server) -> None:
    """``~C`` then ``-L port:host:port``: a -T tunnel on a running session, fetched through;
    ``~C -KL port`` closes it again. The command line never reaches the remote shell."""
    page = os.urandom(100_000)
    listener = socket.create_server(("127.0.0.1", 0))
    target = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(page)

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        lport = probe.getsockname()[1]
    child = server.spawn("-t", "echo ready; read line; echo \"got:$line\"")
    seen = bytearray()

    def expect(pattern: bytes) -> None:
        part = bytearray()  # only what came after the previous step
        try:
            _expect(child, pattern, seen=part)
        finally:
            seen.extend(part)

    try:
        expect(b"ready")
        child.write(b"~C")  # type: ignore[attr-defined]
        expect(b"qsh> ")
        child.write(f"-L {lport}:127.0.0.1:{target}\r".encode())  # type: ignore[attr-defined]
        expect(b"Forwarding port.")
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", lport), timeout=20) as s:
                got = bytearray()
                while data := s.recv(65536):
                    got += data
            assert bytes(got) == page
        child.write(b"~C")  # type: ignore[attr-defined]
        expect(b"qsh> ")
        child.write(f"-KL {lport}\r".encode())  # type: ignore[attr-defined]
        expect(b"Canceled forwarding.")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", lport), timeout=20).close()
        child.write(b"x\r")  # type: ignore[attr-defined]
        out, status = _drain(child)
    finally:
        listener.close()
    assert status == 0, bytes(seen) + out
    assert b"got:x" in out and b"got:-L" not in bytes(seen) + out, bytes(seen) + out


def test_escape_command_line_remote_tunnel_and_cancel_tcpip_forward(server: Server) -> None:
    """``~C -R``: the server listens, connections come back to a local server; ``~C -KR``
    sends cancel-tcpip-forward and the server's listener is gone."""
    listener = socket.create_server(("127.0.0.1", 0))
    target = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"reverse ok")

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        rport = probe.getsockname()[1]
    child = server.spawn("-t", "echo ready; read line; echo \"got:$line\"")
    seen = bytearray()

    def expect(pattern: bytes) -> None:
        part = bytearray()
        try:
            _expect(child, pattern, seen=part)
        finally:
            seen.extend(part)

    try:
        expect(b"ready")
        child.write(f"~C-R {rport}:127.0.0.1:{target}\r".encode())  # type: ignore[attr-defined]
        expect(b"Forwarding port.")
        with socket.create_connection(("127.0.0.1", rport), timeout=20) as s:
            assert s.recv(100) == b"reverse ok"
        child.write(f"~C-KR {rport}\r".encode())  # type: ignore[attr-defined]
        expect(b"Canceled forwarding.")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", rport), timeout=20).close()
        child.write(f"~C-KR {rport}\r".encode())  # type: ignore[attr-defined]
        expect(b"no remote forward on port")
        child.write(b"x\r")  # type: ignore[attr-defined]
        out, status = _drain(child)
    finally:
        listener.close()
    assert status == 0, bytes(seen) + out
    assert b"got:x" in out


def test_suspend_escape_stops_qsh_and_fg_resumes_it(server: Server) -> None:
    """``~^Z`` stops qsh like ^Z stops a local program (a shell with job control is needed:
    stop signals to an orphaned process group are discarded), and ``fg`` resumes it."""
    ptyprocess = pytest.importorskip("ptyprocess")
    qsh = " ".join(f"'{a}'" for a in server.qsh_args(
        "-t", "echo ready; read line; echo got:$line"))
    child = ptyprocess.PtyProcess.spawn(
        ["bash", "--norc", "-c", f"set -m; {qsh}; echo stopped=$?; fg; echo rc=$?"],
        cwd=str(ROOT), env=_client_env(server.client_home))
    seen = bytearray()
    _expect(child, b"ready", seen=seen)
    child.write(b"~\x1a")
    _expect(child, b"stopped=148", seen=seen)  # 128 + SIGTSTP: bash saw qsh stop
    time.sleep(0.3)  # fg continues qsh, which puts the terminal back in raw mode
    child.write(b"x\r")
    _expect(child, b"rc=0", seen=seen)
    assert b"[suspend qsh]" in seen and b"got:x" in seen


def test_expired_host_key_is_refused(tmp_path: Path) -> None:
    expired = tmp_path / "expired_key"
    HostKey.generate("mldsa65", now=time.time() - 7200, lifetime=3600).save(expired)
    process, port = _start_daemon(tmp_path, expired)
    try:
        result = subprocess.run(
            [PYTHON, "-m", "qsh", "-p", port, "-o", "StrictHostKeyChecking=accept-new",
             "127.0.0.1", "true"], capture_output=True, timeout=60, cwd=ROOT,
            env=_client_env(tmp_path), stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        stop_process(process)
    assert result.returncode == 255
    assert b"expired" in result.stderr and result.stderr.count(b"\n") == 1, result.stderr


def test_config_errors_are_one_line_255(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host *\n  Prot 22\n")
    result = subprocess.run([PYTHON, "-m", "qsh", "-F", str(config), "h", "true"],
                            capture_output=True, timeout=60, cwd=ROOT,
                            env=_client_env(tmp_path))
    assert result.returncode == 255
    assert result.stderr == f"qsh: {config}:2: unknown keyword Prot\n".encode()
    # An unknown option: test_an_unknown_option_gets_the_usage_line_and_255.


def _qsh(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PYTHON, "-m", "qsh", *args], capture_output=True, timeout=60,
                          cwd=ROOT, env=_client_env(tmp_path), stdin=subprocess.DEVNULL,
                          start_new_session=True)


def test_a_config_that_is_a_directory_is_one_line_255(tmp_path: Path) -> None:
    """It used to end in a Python traceback (IsADirectoryError) and exit 1."""
    result = _qsh(tmp_path, "-F", str(tmp_path), "h", "true")
    assert result.returncode == 255
    assert result.stderr == f"qsh: {tmp_path}: is a directory\n".encode()


def test_a_host_name_too_long_to_resolve_is_one_line_255(tmp_path: Path) -> None:
    """It used to print ``internal error: UnicodeError(...)`` (the resolver's IDNA step)."""
    name = "a" * 400  # shown cut to 300 characters
    result = _qsh(tmp_path, name, "true")
    assert result.returncode == 255
    assert result.stderr == (f"qsh: could not resolve hostname {name[:297]}...: "
                             "not a valid host name\n").encode()


def test_an_ssh_server_is_named_as_such(tmp_path: Path) -> None:
    """A server that greets with an SSH version line, as every sshd does first thing: qsh
    used to say ``handshake failed: unknown packet flag 0x53``."""
    listener = socket.create_server(("127.0.0.1", 0))
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n"

    def greet() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(banner)
                conn.settimeout(10)
                conn.recv(4096)

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    try:
        result = _qsh(tmp_path, "-p", str(listener.getsockname()[1]), "127.0.0.1", "true")
    finally:
        listener.close()
        thread.join(10)
    assert result.returncode == 255
    assert result.stderr == (b"qsh: handshake failed: this is an SSH server "
                             b"(SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10), not qshd\n")


@pytest.mark.parametrize(("first", "said"), [
    (b"SSH-2.0-OpenSSH_10.5\r\n", "this is an SSH server (SSH-2.0-OpenSSH_10.5), not qshd"),
    (b"SSH-2.0-evil\x1b[2J\r\n", "this is an SSH server (SSH-2.0-evil?[2J), not qshd"),
    (b"HTTP/1.1 400 Bad Request\r\n", "not a qshd server: it answered in HTTP (a web server?)"),
    (b"<!DOCTYPE HTML>\n<html>", "not a qshd server: it answered in HTTP (a web server?)"),
    (b"\xff" * 13, "not a qshd server: its answer is not QSMP"),
])
def test_what_a_foreign_server_is_called(first: bytes, said: str) -> None:
    """A web server answers only once our first packet happens to contain a newline (it
    waits for the end of a request line), so that case is checked here, not end to end."""
    assert not_qsmp(first) == said


# --- ssh's habits on the command line (issue 11) -----------------------------------------


def test_dash_V_and_dash_h(tmp_path: Path) -> None:
    version = _qsh(tmp_path, "-V")
    assert version.returncode == 0 and version.stdout == b""
    assert re.fullmatch(rb"qsh \d+\.\d+\.\d+ \(qsh; QSMP 1; Python 3\.\d+\.\d+\)\n",
                        version.stderr), version.stderr
    helped = _qsh(tmp_path, "-h")
    assert helped.returncode == 0 and b"Usage: qsh [OPTIONS] DESTINATION" in helped.stdout


def test_an_unknown_option_gets_the_usage_line_and_255(tmp_path: Path) -> None:
    result = _qsh(tmp_path, "-Z", "h")  # no such flag in ssh either
    assert result.returncode == 255
    lines = result.stderr.decode().splitlines()
    assert lines[0] == "qsh: No such option '-Z'." and lines[1].startswith("usage: qsh [")
    assert len(lines) == 2


def test_dash_E_sends_qshs_messages_to_the_file(tmp_path: Path) -> None:
    log = tmp_path / "qsh.log"
    log.write_text("earlier\n")
    result = _qsh(tmp_path, "-E", str(log), "-p", "1", "127.0.0.1", "true")
    assert result.returncode == 255 and result.stderr == b""
    assert log.read_text() == ("earlier\n"  # appended to, as ssh -E does
                               "qsh: connect to host 127.0.0.1 port 1: Connection refused\n")


@pytest.mark.parametrize(("flag", "address"), [("-4", "::1"), ("-6", "127.0.0.1")])
def test_dash_4_and_dash_6_keep_to_one_family(tmp_path: Path, flag: str, address: str) -> None:
    """An address of the other family is not tried at all (nothing listens on port 1:
    without the flag the failure would be "Connection refused")."""
    result = _qsh(tmp_path, flag, "-p", "1", address, "true")
    assert result.returncode == 255
    assert result.stderr.startswith(f"qsh: could not resolve hostname {address}: ".encode())


def test_dash_q_silences_warnings(tmp_path: Path) -> None:
    key = tmp_path / "host_key"
    HostKey.generate("mldsa65", now=time.time()).save(key)
    user_key = tmp_path / "id"
    HostKey.generate("mldsa65", now=time.time()).save(user_key)
    process, port = _start_daemon(tmp_path, key)
    try:
        loud = _qsh(tmp_path, "-p", port, "-o", "StrictHostKeyChecking=accept-new",
                    "-o", f"UserKnownHostsFile={tmp_path}/kh1", "-i", str(user_key),
                    "nobody-here@127.0.0.1", "true")
        quiet = _qsh(tmp_path, "-q", "-p", port, "-o", "StrictHostKeyChecking=accept-new",
                     "-o", f"UserKnownHostsFile={tmp_path}/kh2", "-i", str(user_key),
                     "nobody-here@127.0.0.1", "true")
    finally:
        stop_process(process)
    assert b"Warning: permanently added" in loud.stderr
    assert b"Warning" not in quiet.stderr and quiet.returncode == loud.returncode == 255
    assert quiet.stderr.startswith(b"qsh: permission denied"), quiet.stderr


def test_a_null_device_as_known_hosts_stays_a_device(tmp_path: Path) -> None:
    """``-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no`` is copied from ssh
    habits; recording the key renamed a regular file over the device (as root: /dev/null).
    A null device of the test's own stands in for /dev/null."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    key = tmp_path / "host_key"
    HostKey.generate("mldsa65", now=time.time()).save(key)
    process, port = _start_daemon(tmp_path, key)
    try:
        result = _qsh(tmp_path, "-p", port, "-o", "StrictHostKeyChecking=no",
                      "-o", f"UserKnownHostsFile={null}", "nobody-here@127.0.0.1", "true")
    finally:
        stop_process(process)
    assert stat.S_ISCHR(null.lstat().st_mode)
    assert b"could not record the host key" in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(b"qsh: permission denied"), result.stderr


# --- issue 14: several known_hosts lines for one host; signals never end in success


@pytest.mark.parametrize("real_first", [True, False])
def test_any_matching_known_hosts_line_may_hold_the_key(server: Server, tmp_path: Path,
                                                        real_first: bool) -> None:
    """Two lines match the host (a rotation, a wildcard beside a specific entry): the
    handshake succeeds whichever of them holds the key, as ssh accepts when any line does."""
    from common.accounts.known_hosts import format_line
    real = HostKey.load(server.host_key).public
    other = HostKey.generate("mldsa65", now=time.time()).public
    pattern = f"[127.0.0.1]:{server.port}"
    lines = [format_line(pattern, real), format_line("[127.0.0.*]:" + server.port, other)]
    if not real_first:
        lines.reverse()
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(lines) + "\n")
    result = server.run("-o", f"UserKnownHostsFile={known}", "echo in")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"in\n"
    assert b"CHANGED" not in result.stderr


def test_a_really_changed_key_is_refused_with_the_banner(server: Server,
                                                         tmp_path: Path) -> None:
    from common.accounts.known_hosts import format_line
    pattern = f"[127.0.0.1]:{server.port}"
    known = tmp_path / "known_hosts"
    known.write_text("".join(
        format_line(pattern, HostKey.generate("mldsa65", now=time.time()).public) + "\n"
        for _ in range(2)))
    result = server.run("-o", f"UserKnownHostsFile={known}", "echo in")
    assert result.returncode == 255
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert result.stdout == b""


def _spawn_ready(server: Server, *args: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(server.qsh_args(*args), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                               env=_client_env(server.client_home), start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    return process


def test_sigterm_is_never_success_even_if_the_remote_exits_0(server: Server) -> None:
    """The remote command traps TERM and exits 0: qsh, told to stop, still reports it was
    killed (128+15), so a supervisor or ``timeout`` never sees success."""
    process = _spawn_ready(server, "trap 'exit 0' TERM; echo ready; sleep 44 & wait")
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=10)
    assert status == 128 + signal.SIGTERM, process.stderr.read()  # type: ignore[union-attr]


def test_sigterm_ends_qsh_within_the_bound_when_the_remote_ignores_it(server: Server) -> None:
    process = _spawn_ready(server, "-o", "SignalTimeout=1",
                           "trap '' TERM; echo ready; sleep 20")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=15)
    elapsed = time.monotonic() - started
    assert status == 128 + signal.SIGTERM, process.stderr.read()  # type: ignore[union-attr]
    assert 0.9 <= elapsed < 4, elapsed
    assert b"did not end" in process.stderr.read()  # type: ignore[union-attr]


def test_hash_known_hosts_records_a_hashed_name_that_later_runs_trust(
        server: Server, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    args = ["-p", server.port, "-i", str(server.key), "-o", f"UserKnownHostsFile={known}",
            "-o", "HashKnownHosts=yes"]
    first = subprocess.run(
        [PYTHON, "-m", "qsh", *args, "-o", "StrictHostKeyChecking=accept-new",
         f"{server.user}@127.0.0.1", "echo first"], capture_output=True, timeout=60,
        cwd=ROOT, env=_client_env(server.client_home), stdin=subprocess.DEVNULL,
        start_new_session=True)
    assert first.returncode == 0, first.stderr
    text = known.read_text()
    assert text.startswith("|1|") and "127.0.0.1" not in text
    second = server.run("-o", f"UserKnownHostsFile={known}", "echo second")
    assert second.returncode == 0 and second.stdout == b"second\n", second.stderr
