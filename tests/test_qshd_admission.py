"""Admission control against a real ``python -m qshd``: held sockets, silent sockets and
parallel password guessers from one source (127.0.0.2) must not keep the users of another
source (127.0.0.1) out, and a penalised source must get back in once its penalty expires.

Clients are real: ``python -m qsh`` for the logins the issue counted, and the core client
(:class:`common.aio.QsmpConnection` over a socket bound to 127.0.0.2, the only way to choose
a source address) for the guessers and the timed key logins. The daemon logs to a file that
the tests read, as a log watcher (fail2ban) would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon import stop_process, wait_ready

from common import aio
from common.accounts.keys import HostKey, PublicKey
from common.accounts.passwd import PasswdFile
from common.errors import QsmpError
from common.protocol.connection import Connection
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
ATTACKER = "127.0.0.2"
#: Never the password; the daemon's passwd file holds a real bcrypt hash (cost 12, the
#: qpasswd default), so each guess costs what it costs in production.
PASSWORD = b"admission test 5e0c"
ME = os.environ.get("USER") or __import__("pwd").getpwuid(os.geteuid()).pw_name


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
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
    directory: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _user_key(directory: Path) -> HostKey:
    path = directory / "id_test"
    if not path.exists():
        HostKey.generate("mldsa65", now=time.time()).save(path)
    return HostKey.load(path)


def start_qshd(directory: Path, *options: str, cost: int = 4) -> Qshd:
    """A daemon on 127.0.0.1 that lets this user in with :func:`_user_key` (as root:
    keys only) and checks passwords against a passwd file of bcrypt ``cost``."""
    authorized = directory / "authorized_keys"
    authorized.write_text(_user_key(directory).public.openssh_line("test") + "\n")
    authorized.chmod(0o600)
    passwd = directory / "passwd"
    if not passwd.exists():
        PasswdFile(passwd).set_password(ME, PASSWORD, cost=cost)
    ready = directory / "ready"
    ready.unlink(missing_ok=True)
    log = directory / "qshd.log"
    config = ["ListenAddress=127.0.0.1", f"AuthorizedKeysFile={authorized}",
              "PermitRootLogin=prohibit-password", f"PasswdFile={passwd}", *options]
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-h", str(directory / "host_key"),
             "--ready-file", str(ready), *(a for o in config for a in ("-o", o))],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=ROOT)
    port = wait_ready(process, ready, log)
    host_key = PublicKey.load(directory / "host_key.pub")[0]
    return Qshd(process, port, host_key, log, directory)


def stop_qshd(qshd: Qshd) -> None:
    stop_process(qshd.process)
    text = qshd.log_text()
    assert "Traceback" not in text, text
    assert PASSWORD.decode() not in text


@pytest.fixture()
def daemon_dir(tmp_path: Path) -> Path:
    return tmp_path


# --------------------------------------------------------------------------- clients


def qsh_true(qshd: Qshd, *extra: str) -> subprocess.CompletedProcess[str]:
    """``qsh 127.0.0.1 true`` as a user runs it (HOME is the test directory)."""
    directory = qshd.directory
    return subprocess.run(
        [PYTHON, "-m", "qsh", "-p", str(qshd.port), "-i", str(directory / "id_test"),
         "-o", f"UserKnownHostsFile={directory / 'known_hosts'}",
         "-o", "StrictHostKeyChecking=accept-new", *extra, "127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "HOME": str(directory)})


async def dial_from(source: str, qshd: Qshd, timeout: float = 20.0) -> aio.QsmpConnection:
    """The core client over a TCP connection from ``source``; returns once established.
    Raises OSError, TimeoutError or a QsmpError (e.g. ConnectionLost when the daemon
    closed the socket at accept)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((source, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, ("127.0.0.1", qshd.port))
    except BaseException:
        sock.close()
        raise
    core = Connection(ClientHandshake(Offer(), qshd.host_key))
    connection = aio.QsmpConnection(core, loop=loop)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: connection, sock=sock)
            await connection.wait_established()
    except BaseException:
        connection.abort()
        sock.close()
        raise
    return connection


async def key_login_latency(qshd: Qshd, key: HostKey, timeout: float = 20.0) -> float:
    """Seconds from TCP connect to AUTH_SUCCESS for one key login from 127.0.0.1
    (``timeout`` if it did not get in by then)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            client = await aio.connect("127.0.0.1", qshd.port,
                                       handshake=ClientHandshake(Offer(), qshd.host_key),
                                       user=ME, identity=key, timeout=timeout)
            try:
                answer = await client.wait_authenticated()
            finally:
                client.close()
    except (TimeoutError, OSError, QsmpError):
        return timeout
    return time.monotonic() - started if answer is None else timeout


def hold_silent_sockets(source: str, port: int, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        held.append(sock)
    return held


def closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """True if the daemon closed (or reset) ``sock`` within ``wait`` seconds (whatever
    it said before closing)."""
    deadline = time.monotonic() + wait
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def first_message(qshd: Qshd) -> bytes:
    """A real client's first handshake message (CONNECT_REQUEST), to trickle."""
    core = Connection(ClientHandshake(Offer(), qshd.host_key))
    core.start(time.time())
    return b"".join(bytes(chunk) for chunk in core.data_to_send())


# --------------------------------------------------------------------------- item 3


def test_held_sockets_from_one_source_do_not_lock_out_other_logins(daemon_dir: Path) -> None:
    """The issue: 64 sockets that send nothing made 0 of 8 real logins succeed. Now one
    source holds at most PerSourceMaxStartups of the unauthenticated slots, the rest are
    dropped at accept (and logged in sshd's words), and everyone else gets in."""
    qshd = start_qshd(daemon_dir)
    held: list[socket.socket] = []
    try:
        first = qsh_true(qshd)  # records the host key; proves the set-up works
        assert first.returncode == 0, first.stderr
        held = hold_silent_sockets(ATTACKER, qshd.port, 64)
        time.sleep(0.5)  # let the daemon accept (or drop) every one of them
        results: list[subprocess.CompletedProcess[str]] = []
        for _ in range(4):  # two at a time: 8 logins in about 4 qsh start-ups
            pair = [subprocess.Popen(
                [PYTHON, "-m", "qsh", "-p", str(qshd.port), "-i", str(daemon_dir / "id_test"),
                 "-o", f"UserKnownHostsFile={daemon_dir / 'known_hosts'}",
                 "-o", "StrictHostKeyChecking=yes", "127.0.0.1", "true"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                stdin=subprocess.DEVNULL, cwd=ROOT,
                env={**os.environ, "HOME": str(daemon_dir)}) for _ in range(2)]
            for process in pair:
                out, err = process.communicate(timeout=60)
                results.append(subprocess.CompletedProcess(process.args, process.returncode,
                                                           out, err))
        succeeded = sum(1 for r in results if r.returncode == 0)
        print(f"logins that got in past 64 held sockets: {succeeded} of {len(results)}")
        assert succeeded == 8, [r.stderr for r in results if r.returncode != 0]
        dropped = re.findall(r"drop connection #\d+ from \[127\.0\.0\.2\]:\d+ on "
                             r"\[127\.0\.0\.1\]:\d+ past PerSourceMaxStartups",
                             qshd.log_text())
        assert dropped, qshd.log_text()
    finally:
        for sock in held:
            sock.close()
        stop_qshd(qshd)


def test_a_silent_socket_is_closed_long_before_the_login_grace(daemon_dir: Path) -> None:
    """Before: a socket that sends nothing stayed open for the handshake step timeout
    (30 s), one that trickles bytes for as long as LoginGraceTime. Now the whole first
    message must arrive within FirstMessageTimeout, and the close is logged."""
    qshd = start_qshd(daemon_dir, "FirstMessageTimeout=1", "LoginGraceTime=60")
    try:
        message = first_message(qshd)
        silent, trickler = hold_silent_sockets(ATTACKER, qshd.port, 2)
        started = time.monotonic()
        closed = False
        for byte in message[:-1]:  # a byte every 0.2 s: minutes for the whole message
            if time.monotonic() - started > 6:
                break
            try:
                trickler.send(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_by_peer(trickler, 0.2):
                closed = True
                break
        trickled = time.monotonic() - started
        assert closed and trickled < 4, trickled
        assert closed_by_peer(silent, 4 - (time.monotonic() - started))
        elapsed = time.monotonic() - started
        print(f"silent socket closed after {elapsed:.1f} s, trickling one after {trickled:.1f} s")
        assert elapsed < 4
        assert re.search(r"Did not receive identification string from 127\.0\.0\.2 port \d+",
                         qshd.log_text())
        # A real client is not hurried by it.
        assert qsh_true(qshd).returncode == 0
    finally:
        stop_qshd(qshd)


# --------------------------------------------------------------------------- item 4


@dataclass
class Siege:
    """What the guessers achieved."""

    guesses: int = 0
    connections: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)


async def guesser(qshd: Qshd, siege: Siege, stop: asyncio.Event, per_connection: int) -> None:
    """One attacker's worker: connect from 127.0.0.2, guess ``per_connection`` passwords
    (each answered failure counts), hang up, again; a refused connection retries soon."""
    number = 0
    while not stop.is_set():
        try:
            connection = await dial_from(ATTACKER, qshd, timeout=10)
        except (OSError, TimeoutError, QsmpError):
            siege.refused += 1
            await asyncio.sleep(0.1)
            continue
        siege.connections += 1
        try:
            for _ in range(per_connection):
                if stop.is_set():
                    break
                number += 1
                answer = await asyncio.wait_for(
                    connection.login_password(ME, f"guess {number}".encode()), 20)
                assert answer is not None, "a guess got in"
                if not stop.is_set():
                    siege.guesses += 1
        except (TimeoutError, OSError, QsmpError):
            pass
        finally:
            connection.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.wait_closed(), 5)


async def siege(qshd: Qshd, seconds: float, workers: int = 60,
                per_connection: int = 3) -> Siege:
    """``workers`` parallel guessers from 127.0.0.2 for ``seconds``, while a key login from
    127.0.0.1 is timed every second."""
    result = Siege()
    stop = asyncio.Event()
    key = _user_key(qshd.directory)
    tasks = [asyncio.ensure_future(guesser(qshd, result, stop, per_connection))
             for _ in range(workers)]
    started = time.monotonic()
    await asyncio.sleep(1.0)  # let the guessers fill the daemon's queue first
    while time.monotonic() - started < seconds:
        result.latencies.append(await key_login_latency(qshd, key, timeout=15))
        await asyncio.sleep(max(0.0, 1.0 - result.latencies[-1]))
    stop.set()
    await asyncio.wait(tasks, timeout=3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


@pytest.mark.slow
def test_parallel_guessers_are_penalised_and_key_logins_stay_fast(daemon_dir: Path) -> None:
    """The issue: 60 parallel connections made 300 guesses in 30 s from one address, and
    key logins took 4-10 s behind bcrypt. Now the source is refused at accept once its
    failures add up (PerSourcePenalties authfail, sshd's defaults), and bcrypt has its own
    pool, so key logins from elsewhere never wait behind it."""
    qshd = start_qshd(daemon_dir, cost=12)
    seconds = 14.0
    try:
        result = run(siege(qshd, seconds))
        rate = result.guesses / seconds
        latencies = sorted(result.latencies)
        print(f"guesses from {ATTACKER}: {result.guesses} in {seconds:.0f} s "
              f"({rate:.2f}/s) over {result.connections} connections, "
              f"{result.refused} refused; key-login latency from 127.0.0.1: "
              f"median {latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s "
              f"({len(latencies)} logins)")
        text = qshd.log_text()
        assert re.search(r"drop connection #\d+ from \[127\.0\.0\.2\]:\d+ on "
                         r"\[127\.0\.0\.1\]:\d+ penalty: failed authentication", text), text
        assert re.search(r"127\.0\.0\.2/32.* penalty of [\d.]+ seconds for penalty: failed "
                         r"authentication", text)
        assert rate < 3.0
        assert latencies[-1] < 3.0, latencies
    finally:
        stop_qshd(qshd)


@pytest.mark.slow
def test_key_logins_do_not_wait_behind_bcrypt(daemon_dir: Path) -> None:
    """With the guessers' source exempt from penalties and per-source limits (a botnet,
    in effect) and room for all of them below MaxStartups' start, bcrypt is saturated:
    key logins must still not queue behind it, and the password queue stays bounded (the
    excess is refused at once, and logged)."""
    qshd = start_qshd(daemon_dir, "PerSourcePenaltyExemptList=127.0.0.2",
                      "PerSourceMaxStartups=none", "MaxStartups=100:30:200", cost=12)
    seconds = 10.0
    try:
        result = run(siege(qshd, seconds))
        latencies = sorted(result.latencies)
        print(f"unpenalised guessers: {result.guesses / seconds:.2f} guesses/s; key-login "
              f"latency median {latencies[len(latencies) // 2]:.2f} s, max "
              f"{latencies[-1]:.2f} s ({len(latencies)} logins)")
        assert result.guesses > 0
        assert latencies[-1] < 3.0, latencies
        text = qshd.log_text()
        assert "penalty" not in text
        assert re.search(r"password check for \S+ from 127\.0\.0\.2 port \d+ refused: \d+ "
                         r"checks are already running or waiting", text)
    finally:
        stop_qshd(qshd)


def test_a_penalty_expires(daemon_dir: Path) -> None:
    """A source refused at accept for failed logins gets back in once the penalty ran
    out; meanwhile another source is not affected."""
    qshd = start_qshd(daemon_dir, "PerSourcePenalties=authfail:1s min:1.5s max:3s")
    key = _user_key(daemon_dir)

    async def main() -> None:
        refused_at = None
        for attempt in range(10):
            try:
                connection = await dial_from(ATTACKER, qshd, timeout=10)
            except (OSError, QsmpError):
                refused_at = time.monotonic()
                break
            answer = await connection.login_password(ME, f"wrong {attempt}".encode())
            assert answer is not None
            connection.close()
            await connection.wait_closed()
            await asyncio.sleep(0.1)  # the daemon sees the close
        assert refused_at is not None, "never penalised"
        assert await key_login_latency(qshd, key, timeout=10) < 10  # 127.0.0.1 gets in
        # Still refused right after, then back in once at most max (3 s) has passed.
        with pytest.raises((OSError, QsmpError)):
            await dial_from(ATTACKER, qshd, timeout=5)
        await asyncio.sleep(max(0.0, refused_at + 3.2 - time.monotonic()))
        connection = await dial_from(ATTACKER, qshd, timeout=10)
        connection.close()

    try:
        run(main())
        text = qshd.log_text()
        assert "penalty: failed authentication" in text
        assert re.search(r"activating ipv4 penalty|new 127\.0\.0\.2/32 active", text)
    finally:
        stop_qshd(qshd)


def test_exceeding_the_login_grace_is_penalised(daemon_dir: Path) -> None:
    """A connection that completes the handshake but never logs in is cut at
    LoginGraceTime, logged in sshd's words, and its source penalised (grace-exceeded)."""
    qshd = start_qshd(daemon_dir, "LoginGraceTime=1",
                      "PerSourcePenalties=grace-exceeded:20s")

    async def main() -> None:
        idle = await dial_from(ATTACKER, qshd)
        await asyncio.wait_for(idle.wait_closed(), 10)
        await asyncio.sleep(0.2)
        with pytest.raises((OSError, QsmpError)):
            await dial_from(ATTACKER, qshd, timeout=5)

    try:
        run(main())
        text = qshd.log_text()
        assert re.search(r"Timeout before authentication for 127\.0\.0\.2 port \d+", text)
        assert re.search(r"new 127\.0\.0\.2/32 active penalty of 20\.000 seconds for "
                         r"penalty: exceeded LoginGraceTime", text)
        assert re.search(r"drop connection #0 from \[127\.0\.0\.2\]:\d+ on \[127\.0\.0\.1\]:\d+ "
                         r"penalty: exceeded LoginGraceTime", text)
    finally:
        stop_qshd(qshd)


# --------------------------------------------------------------------------- the aio hook


class Recorder:
    """An ``admit`` hook for common.aio.serve that records what it is told."""

    def __init__(self, allow: bool = True, fail_in: str = "") -> None:
        self.allow = allow
        self.fail_in = fail_in
        self.seen: list[tuple[Any, Any]] = []
        self.events: list[str] = []

    def __call__(self, peer: Any, local: Any) -> Recorder | None:
        self.seen.append((peer, local))
        if self.fail_in == "admit":
            raise RuntimeError("admission bug")
        return self if self.allow else None

    def started(self, connection: aio.QsmpConnection) -> None:
        self.events.append("started")
        if self.fail_in == "started":
            raise RuntimeError("hook bug")

    def closed(self, connection: aio.QsmpConnection | None) -> None:
        self.events.append("closed")


@pytest.mark.parametrize(("allow", "fail_in"), [(True, ""), (False, ""), (True, "admit"),
                                                 (True, "started")])
def test_the_admit_hook_sees_addresses_before_any_protocol_byte(
        allow: bool, fail_in: str, caplog: pytest.LogCaptureFixture) -> None:
    from common.protocol.handshake import ServerHandshake

    host_key = HostKey.generate("mldsa65", now=time.time())
    hook = Recorder(allow, fail_in)

    async def main() -> None:
        server = await aio.serve("127.0.0.1", 0,
                                 make_handshake=lambda: ServerHandshake([host_key]),
                                 on_channel=None, admit=hook)
        loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((ATTACKER, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            source = sock.getsockname()
            if allow and fail_in != "admit":
                client = aio.QsmpConnection(
                    Connection(ClientHandshake(Offer(), host_key.public)), loop=loop)
                await loop.create_connection(lambda: client, sock=sock)
                await asyncio.wait_for(client.wait_established(), 10)
                client.close()
                await client.wait_closed()
            else:  # closed at accept, before any handshake byte
                assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b""
                sock.close()
            await asyncio.sleep(0.1)
            assert hook.seen == [(source, ("127.0.0.1", server.port))]
        finally:
            server.close(connections=True)
            await server.wait_closed()

    run(main())
    expected = ["started", "closed"] if allow and fail_in != "admit" else []
    assert hook.events == expected
    if fail_in:
        assert "failed" in caplog.text
