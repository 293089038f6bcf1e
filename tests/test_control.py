"""Connection sharing as in ssh: ControlMaster/ControlPath/ControlPersist, -M, -S, -O.

End to end against a real qshd on loopback, with a throwaway account (root is needed to make
it): the client runs as root with ``HOME`` in a temporary directory. qshd's log counts the
logins ("Accepted publickey for ..."), which is how a test knows a command rode on a shared
connection rather than logging in again.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from daemon import Env as DaemonEnv
from daemon import account_daemon
from importtime import imported

from common.client.config import dump, resolve

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Env(DaemonEnv):
    #: A directory for control sockets, the client's own, mode 0711.
    control: Path = Path()

    def qsh(self, *args: str, input: str | None = None, timeout: float = 30,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "qsh", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, env=self.environ(**extra),
                              input=input, stdin=None if input is not None else
                              subprocess.DEVNULL)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with account_daemon(["AcceptEnv=LANG QX_*"]) as daemon:
        control = daemon.client_home.parent / "cm"
        control.mkdir(mode=0o711)  # traversable, so the other-uid test can reach a socket
        yield Env(**{f.name: getattr(daemon, f.name) for f in fields(daemon)},
                  control=control)


@pytest.fixture
def path(env: Env) -> Iterator[Path]:
    """A fresh ControlPath; whatever master is still there at the end is told to exit."""
    control = env.control / uuid.uuid4().hex[:12]
    yield control
    if control.exists() and not control.is_symlink():
        env.qsh("-S", str(control), "-O", "exit", "qtest", timeout=10)


def _persisted(env: Env, path: Path, *args: str, persist: str = "30",
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    return env.qsh("-o", "ControlMaster=auto", "-o", f"ControlPersist={persist}", "-o",
                   f"ControlPath={path}", *args, input=input)


def _master_pid(env: Env, path: Path) -> int:
    check = env.qsh("-S", str(path), "-O", "check", "qtest")
    assert check.returncode == 0, check.stderr
    match = re.search(r"Master running \(pid=(\d+)\)", check.stderr)
    assert match, check.stderr
    return int(match.group(1))


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# --- Configuration ----------------------------------------------------------------------------


def test_control_keywords_are_understood_and_expanded() -> None:
    cfg = resolve("web1", path=Path("none"), options=[
        "HostName=10.0.0.1", "User=bob", "Port=2200", "ControlMaster=autoask",
        "ControlPersist=1m", "ControlPath=/run/q/%r@%h:%p-%n-%i-%%"])
    assert cfg.control_master == "autoask" and cfg.control_persist == 60
    assert cfg.control_path == f"/run/q/bob@10.0.0.1:2200-web1-{os.getuid()}-%"
    hashed = resolve("web1", path=Path("none"), options=["ControlPath=/q/%C"])
    assert re.fullmatch(r"/q/[0-9a-f]{40}", hashed.control_path or "")
    assert resolve("web1", path=Path("none"), options=["ControlPath=none"]).control_path is None
    assert resolve("web1", path=Path("none"), options=["ControlPersist=yes"]).control_persist == 0
    lines = dump(hashed)
    assert "controlmaster no" in lines and "controlpersist no" in lines
    assert not any("ignored" in note for note in hashed.notes)


def test_wire_lengths_are_checked_before_reading() -> None:
    from common.client import mux_wire as wire

    with pytest.raises(wire.MuxError, match="bad frame length"):
        wire.parse_header((wire.MAX_FRAME + 1).to_bytes(4, "big") + bytes([wire.CHECK]))
    with pytest.raises(wire.MuxError, match="unknown message type"):
        wire.parse_header((1).to_bytes(4, "big") + b"\x63")
    request = wire.SessionRequest(flags=wire.WANT_TTY, term="xterm", size=(80, 24, 0, 0),
                                  command="ls", environment=[("LANG", "C")])
    body = request.encode()[wire.HEADER_SIZE:]
    decoded = wire.SessionRequest.decode(body)
    assert (decoded.command, decoded.environment, decoded.term) == ("ls", [("LANG", "C")],
                                                                    "xterm")
    with pytest.raises(wire.MuxError, match=r"truncated|bad string length"):
        wire.SessionRequest.decode(body[:-3])
    huge = body[:-len(wire.string("LANG") + wire.string("C")) - 4] + wire.u32(10**6)
    with pytest.raises(wire.MuxError, match="too many environment"):
        wire.SessionRequest.decode(huge)


# --- Sharing ----------------------------------------------------------------------------------


def test_a_second_command_reuses_the_connection(env: Env, path: Path) -> None:
    before = env.logins()
    first = _persisted(env, path, "qtest", "echo one")
    assert (first.returncode, first.stdout) == (0, "one\n"), first.stderr
    second = env.qsh("-o", f"ControlPath={path}", "qtest", "echo two; echo err >&2; exit 3")
    assert (second.returncode, second.stdout, second.stderr) == (3, "two\n", "err\n")
    third = env.qsh("-S", str(path), "qtest", "cat; echo \"$QX_A\"", input="hello\n",
                    QX_A="sent")
    assert third.stdout == "hello\n\n" and third.returncode == 0, third.stderr
    env_sent = env.qsh("-S", str(path), "-o", "SendEnv=QX_*", "qtest", 'echo "$QX_A"',
                       QX_A="sent")
    assert env_sent.stdout == "sent\n", env_sent.stderr
    killed = env.qsh("-S", str(path), "qtest", "kill -TERM $$")
    assert killed.returncode == 128 + signal.SIGTERM
    assert env.logins() == before + 1  # one key exchange and login for all of them


def test_dash_O_check_and_exit(env: Env, path: Path) -> None:
    none = env.qsh("-S", str(path), "-O", "check", "qtest")
    assert none.returncode == 255
    assert _persisted(env, path, "qtest", "true").returncode == 0
    pid = _master_pid(env, path)
    done = env.qsh("-S", str(path), "-O", "exit", "qtest")
    assert done.returncode == 0 and "Exit request sent." in done.stderr
    assert _wait_gone(pid, 10), "the master did not exit"
    assert not path.exists()
    assert env.qsh("-S", str(path), "-O", "check", "qtest").returncode == 255
    no_tunnel = env.qsh("-S", str(path), "-O", "forward", "qtest")
    assert no_tunnel.returncode == 255 and "needs a tunnel" in no_tunnel.stderr


def test_dash_O_stop_refuses_new_clients(env: Env, path: Path) -> None:
    assert _persisted(env, path, "qtest", "true").returncode == 0
    pid = _master_pid(env, path)
    stop = env.qsh("-S", str(path), "-O", "stop", "qtest")
    assert stop.returncode == 0 and "Stop listening request sent." in stop.stderr
    assert env.qsh("-S", str(path), "-O", "check", "qtest").returncode == 255
    assert _wait_gone(pid, 10), "a master with no clients and no socket stays"


def test_a_stale_socket_is_replaced(env: Env, path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the path stays, nobody listens: connect gives ECONNREFUSED
    before = env.logins()
    first = _persisted(env, path, "qtest", "echo fresh")
    assert first.stdout == "fresh\n", first.stderr
    _master_pid(env, path)
    again = env.qsh("-S", str(path), "qtest", "echo shared")
    assert again.stdout == "shared\n"
    assert env.logins() == before + 1


def test_a_symlink_at_control_path_is_never_followed(env: Env, path: Path,
                                                     tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    path.symlink_to(target)
    result = _persisted(env, path, "qtest", "echo ran")
    assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
    assert "not a socket" in result.stderr
    assert path.is_symlink() and not target.exists()
    # A symlink to a live master is not followed by a client either: it logs in itself.
    real = env.control / f"{path.name}-real"
    try:
        assert _persisted(env, real, "qtest", "true").returncode == 0
        path.unlink()
        path.symlink_to(real)
        before = env.logins()
        through = env.qsh("-S", str(path), "qtest", "echo hi")
        assert through.stdout == "hi\n" and env.logins() == before + 1
    finally:
        env.qsh("-S", str(real), "-O", "exit", "qtest", timeout=10)


def test_another_uid_is_refused(env: Env, path: Path) -> None:
    assert _persisted(env, path, "qtest", "true").returncode == 0
    _master_pid(env, path)
    path.chmod(0o666)  # a socket left open by mistake: the peer check still holds
    probe = ("import socket,sys\n"
             "s=socket.socket(socket.AF_UNIX)\n"
             f"s.connect({str(path)!r})\n"
             "s.settimeout(10)\n"
             "print(len(s.recv(100)))\n")
    other = subprocess.run(["setpriv", f"--reuid={env.user}", f"--regid={env.user}",
                            "--init-groups", PYTHON, "-c", probe], capture_output=True,
                           text=True, timeout=30, cwd="/")
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "0"  # closed without a word (not even the hello)
    _master_pid(env, path)  # and the master serves its own user still


def test_control_persist_ends_the_idle_master(env: Env, path: Path) -> None:
    first = _persisted(env, path, "qtest", "echo one", persist="2")
    assert first.stdout == "one\n", first.stderr
    pid = _master_pid(env, path)
    time.sleep(1.0)
    assert env.qsh("-S", str(path), "qtest", "true").returncode == 0  # restarts the clock
    assert not _wait_gone(pid, 1.0), "the master left before ControlPersist"
    assert _wait_gone(pid, 6), "the master outlived ControlPersist"
    assert not path.exists()


def test_a_tty_session_over_a_shared_connection(env: Env, path: Path) -> None:
    from ptyprocess import PtyProcess

    from tests.ptyio import read_to_eof

    assert _persisted(env, path, "qtest", "true").returncode == 0
    before = env.logins()
    proc = PtyProcess.spawn([PYTHON, "-m", "qsh", "-t", "-S", str(path), "qtest",
                             "test -t 0 && echo IS-TTY; stty size"], cwd=str(ROOT),
                            env=env.environ(TERM="xterm"), dimensions=(31, 101))
    output = read_to_eof(proc, timeout=30)
    assert proc.exitstatus == 0, output
    assert b"IS-TTY" in output and b"31 101" in output, output
    assert env.logins() == before


def test_the_mux_client_imports_no_protocol_stack(env: Env, path: Path) -> None:
    """Nor click, the key code or any crypto: the run over a shared connection is read by
    qsh/entry.py with ssh's grammar alone (it cost ~100 ms of CPU with qsh.cli's click)."""
    assert _persisted(env, path, "qtest", "true").returncode == 0
    result = subprocess.run([PYTHON, "-X", "importtime", "-m", "qsh", "-S", str(path), "qtest",
                             "echo via-master"], capture_output=True, text=True, timeout=30,
                            cwd=ROOT, env=env.environ(), stdin=subprocess.DEVNULL)
    assert result.stdout == "via-master\n", result.stderr
    loaded = imported(result.stderr)
    heavy = sorted(m for m in loaded
                   if m.split(".")[0] in ("asyncio", "cryptography", "click", "Crypto")
                   or m.startswith(("common.protocol", "common.aio", "common.crypto",
                                    "common.accounts.keys", "common.accounts.public_key",
                                    "common.accounts.private_key_file", "common.accounts.files",
                                    "common.channels", "qsh.cli",
                                    "qsh.session", "qsh.local_end", "qsh.mux")))
    assert not heavy, heavy


def test_a_master_without_persist_serves_while_its_own_session_runs(env: Env,
                                                                    path: Path) -> None:
    """-M: the master's own command runs as usual; meanwhile others share its connection;
    it ends with its own command's status and takes its socket with it. ``-O exit`` ends a
    master whatever it is doing (its own session too), as ssh's does."""
    before = env.logins()
    master = subprocess.Popen([PYTHON, "-m", "qsh", "-M", "-S", str(path), "qtest",
                               "sleep 2; exit 7"], cwd=ROOT, env=env.environ(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert master.poll() is None and time.monotonic() < deadline, master.communicate()
            time.sleep(0.05)
        shared = env.qsh("-S", str(path), "qtest", "echo rode")
        assert shared.stdout == "rode\n", shared.stderr
        assert master.wait(timeout=20) == 7
        assert env.logins() == before + 1
        assert not path.exists()
        # Again, told to exit in the middle of its own command.
        second = subprocess.Popen([PYTHON, "-m", "qsh", "-M", "-S", str(path), "qtest",
                                   "sleep 30"], cwd=ROOT, env=env.environ(),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not path.exists():
            assert second.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert env.qsh("-S", str(path), "-O", "exit", "qtest").returncode == 0
        assert second.wait(timeout=10) == 255
    finally:
        for process in (master, locals().get("second")):
            if isinstance(process, subprocess.Popen) and process.poll() is None:
                process.kill()
                process.wait()


def test_signals_and_window_changes_reach_a_shared_session(env: Env, path: Path) -> None:
    from ptyprocess import PtyProcess

    from tests.ptyio import read_to_eof, read_until

    assert _persisted(env, path, "qtest", "true").returncode == 0
    before = env.logins()
    # SIGTERM to the mux client: forwarded to the remote command, which it ends.
    client = subprocess.Popen([PYTHON, "-m", "qsh", "-S", str(path), "qtest",
                               "echo started; sleep 30"], cwd=ROOT, env=env.environ(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        started = time.monotonic()
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    # The terminal's size follows the client's window.
    proc = PtyProcess.spawn([PYTHON, "-m", "qsh", "-t", "-S", str(path), "qtest",
                             "stty size; echo READY; read x; stty size"], cwd=str(ROOT),
                            env=env.environ(TERM="xterm"), dimensions=(24, 80))
    read_until(proc, b"READY", timeout=30)
    proc.setwinsize(40, 120)
    time.sleep(0.5)
    proc.write(b"\r")
    output = read_to_eof(proc, timeout=30)
    assert b"40 120" in output, output
    assert env.logins() == before  # both rode on the master's connection


def test_the_master_survives_bad_clients(env: Env, path: Path) -> None:
    """Oversized frames, unknown types, too many descriptors, a truncated request: each
    ends that client's conversation, never the master."""
    import array
    import struct

    assert _persisted(env, path, "qtest", "true").returncode == 0
    pid = _master_pid(env, path)

    def conversation(send: bytes, fds: list[int] | None = None) -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            received = sock.recv(100)  # the hello
            if fds:
                sock.sendmsg([send], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", fds))])
            else:
                sock.sendall(send)
            while chunk := sock.recv(100):
                received += chunk
            return received

    hello_size = 5 + 8
    assert len(conversation(struct.pack(">IB", 10**9, 2))) == hello_size
    assert len(conversation(struct.pack(">IB", 1, 99))) == hello_size
    with open(os.devnull) as null:
        many = [null.fileno()] * 5
        assert len(conversation(struct.pack(">IB", 1, 3), many)) == hello_size
    truncated = struct.pack(">IB", 9, 2) + b"\0\0\0\0" + b"\0\0\0\xff"
    assert len(conversation(truncated)) == hello_size  # a string that runs off the end
    assert _master_pid(env, path) == pid


def test_dash_O_forward_and_cancel_a_tunnel_on_the_master(env: Env, path: Path) -> None:
    import threading

    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            with conn:
                conn.sendall(conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    spec = f"{local_port}:127.0.0.1:{echo.getsockname()[1]}"
    try:
        assert _persisted(env, path, "qtest", "true").returncode == 0
        before = env.logins()
        added = env.qsh("-S", str(path), "-O", "forward", "-L", spec, "qtest")
        assert added.returncode == 0, added.stderr
        with socket.create_connection(("127.0.0.1", local_port), timeout=10) as conn:
            conn.sendall(b"ping")
            assert conn.recv(100) == b"ping"
        cancelled = env.qsh("-S", str(path), "-O", "cancel", "-L", spec, "qtest")
        assert cancelled.returncode == 0, cancelled.stderr
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", local_port), timeout=10).close()
        again = env.qsh("-S", str(path), "-O", "cancel", "-L", spec, "qtest")
        assert again.returncode == 255 and "refused" in again.stderr
        assert env.logins() == before
    finally:
        echo.close()


def test_control_master_ask_refuses_clients_it_cannot_ask_about(env: Env, path: Path) -> None:
    first = env.qsh("-o", "ControlMaster=ask", "-o", "ControlPersist=30", "-S", str(path),
                    "qtest", "echo own")
    assert first.stdout == "own\n", first.stderr  # the master's own command is no client
    other = env.qsh("-S", str(path), "qtest", "echo other")
    assert other.returncode == 255 and "cannot ask for confirmation" in other.stderr
    assert other.stdout == ""


def test_the_mux_clients_limits_match_the_sessions() -> None:
    from common.channels import session as proto
    from common.client import mux_client

    assert mux_client.MAX_ENV_VALUE == proto.MAX_ENV_VALUE
    request = mux_client.session_request(
        command="true", pty=False, subsystem=False, quiet=False, environ={},
        environment=[("BIG", "x" * (proto.MAX_ENV_VALUE + 1))]
        + [(f"V{n}", "v") for n in range(1000)])
    assert len(request.environment) == 256 and request.environment[0] == ("V0", "v")
    assert len(request.encode()) < 64 * 1024


def test_the_fast_path_takes_only_plain_runs() -> None:
    """qsh/entry.py reads the command line without click: whatever it does not take goes to
    qsh.cli (which reports errors and logs in by itself), so -G, -O, -M, tunnels, -f, -N,
    -W, -J, -E, help and bad values must all be left to it."""
    from qsh.entry import _parse

    plain = _parse(["-S", "/a", "-S", "/b", "-l", "u", "-qT", "host", "ls", "-l"])
    assert plain is not None
    assert (plain.extra, plain.options, plain.user, plain.quiet) == (
        ["ControlPath=/b"], ["RequestTTY=no"], "u", True)
    assert (plain.destination, plain.command) == ("host", ["ls", "-l"])
    hoisted = _parse(["host", "-t", "top"])
    assert hoisted is not None and hoisted.force_tty and hoisted.command == ["top"]
    subsystem = _parse(["-oForwardX11=no", "-x", "-s", "--", "host", "sftp"])
    assert subsystem is not None and subsystem.extra == ["SessionType=subsystem"]
    for argv in (["-G", "h"], ["-O", "check", "h"], ["-M", "h"], ["-N", "h"], ["-f", "h"],
                 ["-L", "1:h:2", "h"], ["-T", "8080:web:80", "h"], ["-D", "1080", "h"],
                 ["-W", "h:1", "h"], ["-J", "j", "h"], ["-E", "log", "h"], ["-p", "x", "h"],
                 ["--help"], ["-V"], ["-Z", "h"], ["-l"], []):
        assert _parse(argv) is None, argv


def test_a_tty_session_leaves_no_keystroke_clock_behind(env: Env, path: Path) -> None:
    """Issue 15: Ansible runs each module with ``-tt`` and then the next task's commands and
    sftp over the same master. The keystroke clock (which holds small writes for its ticks)
    must stop when the last PTY session ends, or every later session pays a tick per round
    trip: 20 ms at the default, 200 ms here so that it shows above any machine's noise."""
    import select

    master = _persisted(env, path, "-o", "ObscureKeystrokeTiming=interval:200", "qtest", "true")
    assert master.returncode == 0, master.stderr
    tty = env.qsh("-tt", "-S", str(path), "qtest", "true")
    assert tty.returncode == 0, tty.stderr
    proc = subprocess.Popen([PYTHON, "-m", "qsh", "-S", str(path), "qtest", "cat"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env.environ())
    assert proc.stdin is not None and proc.stdout is not None
    try:
        took = []
        for n in range(6):
            started = time.monotonic()
            os.write(proc.stdin.fileno(), b"ping %d\n" % n)
            got = b""
            while not got.endswith(b"\n"):
                ready, _, _ = select.select([proc.stdout], [], [], 10)
                assert ready, f"no echo of round trip {n}"
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, "cat ended early"
                got += chunk
            assert got == b"ping %d\n" % n
            took.append(time.monotonic() - started)
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    # Held for a tick, each round trip after the first would wait up to 200 ms.
    assert sorted(took)[len(took) // 2] < 0.1, [round(t * 1000) for t in took]
