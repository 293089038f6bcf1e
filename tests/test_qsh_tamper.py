"""qsh against a hostile network: a tampering TCP proxy between a real ``qsh`` process and a
real ``qshd`` process on 127.0.0.1, plus listeners that never answer.

The proxy (:class:`Proxy`) relays whole QSMP packets (13-byte header: flag, sequence,
length) in both directions and lets each test change, hold, inject or cut at a chosen
packet. What it must never be able to do is make qsh report a result it did not get:

* the exit status counts only at the channel's orderly close, so output cut short after the
  status arrived is a failure (exit 255, one line), never the remote status;
* "REMOTE HOST IDENTIFICATION HAS CHANGED" only when the host presents a key that differs
  from the pinned one, not for a forged error packet or a corrupted signature;
* time-outs and endings during login say what happened, in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon import stop_process
from test_qsh_client import PYTHON, ROOT, _client_env, _start_daemon

from common import aio
from common.accounts.keys import HostKey, PublicKey
from common.accounts.known_hosts import KnownHosts
from common.channels import session as proto
from common.errors import ErrorCode
from common.protocol.auth import AuthRequested
from common.protocol.handshake import ServerHandshake
from common.wire import Flag, encode_packet
from qsh.api import DisconnectError, connect

HEADER = struct.Struct(">BQI")  # flag, sequence, body length (PROTOCOL.md §2.1)
#: Larger than any packet qshd sends: a proxy that sees more has lost the framing.
MAX_BODY = 4 * 1024 * 1024
#: Output of the remote command in the truncation tests, and where the test's reader pauses.
OUTPUT = 12_000_000
PAUSE_AT = 2_000_000
#: A record this small after bulk data is not data: it is the exit status, which
#: overtakes the output still waiting for window (PROTOCOL.md §10.3).
SMALL_RECORD = 1024
TIMEOUT = 30.0
TAMPERED = "the connection may have been tampered with"


# =========================================================================== the proxy


class Link:
    """One relayed connection: the hooks inject into either side or cut both."""

    def __init__(self, number: int, client: asyncio.StreamWriter,
                 server: asyncio.StreamWriter) -> None:
        self.number = number
        self.client = client
        self.server = server
        self.cut_done = False

    def cut(self) -> None:
        """End the TCP connection both ways at once (what is already written still goes)."""
        self.cut_done = True
        for writer in (self.client, self.server):
            with contextlib.suppress(OSError):
                writer.close()


#: (link, index of the packet in its direction, packet) -> the bytes to pass on, or None
#: to pass nothing (the hook may have cut or injected).
Hook = Callable[[Link, int, bytes], Awaitable[bytes | None]]


async def _pass(link: Link, index: int, packet: bytes) -> bytes | None:
    return packet


@dataclass
class Proxy:
    """A packet-aware TCP relay on 127.0.0.1 to ``target`` (qshd's port)."""

    target: int
    c2s: Hook = _pass
    s2c: Hook = _pass
    links: list[Link] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for link in self.links:
            link.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            c_writer.close()
            return
        link = Link(len(self.links), c_writer, s_writer)
        self.links.append(link)
        for reader, writer, hook in ((c_reader, s_writer, self.c2s),
                                     (s_reader, c_writer, self.s2c)):
            task = asyncio.ensure_future(self._relay(link, reader, writer, hook))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _relay(link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     hook: Hook) -> None:
        index = 0
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                _flag, _sequence, length = HEADER.unpack(header)
                assert length <= MAX_BODY, "lost the packet framing"
                packet = header + await reader.readexactly(length)
                out = await hook(link, index, packet)
                index += 1
                if link.cut_done:
                    return
                if out:
                    writer.write(out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            link.cut()


def flip_body_bit(packet: bytes, offset_from_end: int = 1, mask: int = 0x01) -> bytes:
    """``packet`` with one bit of its body flipped (counted from the end of the packet)."""
    out = bytearray(packet)
    assert len(out) - offset_from_end >= HEADER.size
    out[-offset_from_end] ^= mask
    return bytes(out)


def body_size(packet: bytes) -> int:
    return len(packet) - HEADER.size


# =========================================================================== the daemon


@dataclass
class Daemon:
    port: int
    base: Path
    user_key: Path
    host_key: PublicKey
    process: subprocess.Popen[bytes]

    def known_hosts(self, port: int, key: PublicKey | None = None) -> Path:
        """A known_hosts that pins ``key`` (default: the daemon's) for 127.0.0.1:port."""
        path = self.base / f"known_hosts-{port}"
        if not path.exists():
            KnownHosts.load(path).add("127.0.0.1", port, key or self.host_key)
        return path

    def qsh_args(self, port: int, *args: str, known: Path | None = None,
                 options: tuple[str, ...] = (), keys: tuple[Path, ...] | None = None
                 ) -> list[str]:
        known = known or self.known_hosts(port)
        identities = [a for k in (keys or (self.user_key,)) for a in ("-i", str(k))]
        return [PYTHON, "-m", "qsh", "-p", str(port), *identities,
                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                *(o for opt in options for o in ("-o", opt)), "127.0.0.1", *args]

    def env(self) -> dict[str, str]:
        return _client_env(self.base)


def _launch(base: Path, *options: str) -> Daemon:
    """A qshd that lets the current user in with ``base/id_test`` (an AuthorizedKeysFile in
    ``base``; as root PermitRootLogin allows keys only), logging to ``base/qshd.log``."""
    base.mkdir(parents=True, exist_ok=True)
    user_key = base / "id_test"
    if not user_key.exists():
        HostKey.generate("mldsa65", now=time.time()).save(user_key)
    authorized = base / "authorized_keys"
    authorized.write_text(HostKey.load(user_key).public.openssh_line("test") + "\n")
    authorized.chmod(0o600)
    host_key = base / "host_key"
    process, port = _start_daemon(
        base, host_key, "-o", f"AuthorizedKeysFile={authorized}",
        "-o", "PermitRootLogin=prohibit-password", "-o", f"PasswdFile={base / 'passwd'}",
        *options)
    return Daemon(int(port), base, user_key, HostKey.load(host_key).public, process)


@contextlib.contextmanager
def _daemon(*options: str) -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="qsh-tamper-"))
    try:
        daemon = _launch(base, *options)
        try:
            yield daemon
        finally:
            stop_process(daemon.process)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with _daemon() as d:
        yield d


@dataclass
class Outcome:
    status: int
    out_bytes: int
    stderr: str


async def _run_qsh(args: list[str], env: dict[str, str], *,
                   pause: asyncio.Event | None = None, pause_at: int = 0) -> Outcome:
    """Run qsh, count its stdout without keeping it; with ``pause``, stop reading once
    ``pause_at`` bytes came until the event is set (the remote side then waits for
    window: its exit status overtakes the output still queued)."""
    process = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=ROOT, env=env, start_new_session=True)
    assert process.stdout is not None and process.stderr is not None

    async def count() -> int:
        assert process.stdout is not None
        total = 0
        while chunk := await process.stdout.read(1 << 20):
            total += len(chunk)
            if pause is not None and total >= pause_at and not pause.is_set():
                await asyncio.wait_for(pause.wait(), TIMEOUT)
        return total

    try:
        total, err = await asyncio.wait_for(
            asyncio.gather(count(), process.stderr.read()), TIMEOUT)
        status = await asyncio.wait_for(process.wait(), TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return Outcome(status, total, err.decode(errors="replace"))


def _one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert stderr.startswith("qsh: "), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    return stderr


# =========================================================================== item 1: truncation


@pytest.mark.parametrize("attack", ["flip", "cut", "error-packet"])
def test_output_cut_short_after_the_exit_status_is_a_failure(daemon: Daemon,
                                                             attack: str) -> None:
    """`qsh host "produce 12 MB; exit 0"`: the exit status overtakes the output still
    waiting for window. An end of the connection after it (a flipped bit qsh detects, a
    TCP cut, an error packet) must exit 255 with one line, never 0 with part of the output."""
    status_seen = asyncio.Event()
    acted: list[str] = []
    passed = 0

    async def s2c(link: Link, index: int, packet: bytes) -> bytes | None:
        nonlocal passed
        if link.number != 0:
            return packet
        if not status_seen.is_set():
            passed += len(packet)
            if (passed >= PAUSE_AT and body_size(packet) < SMALL_RECORD
                    and packet[0] == Flag.ENCRYPTED_MESSAGE):
                # The small record in the stall: the exit status. Let it through, then attack.
                link.client.write(packet)
                await link.client.drain()
                if attack == "cut":
                    acted.append("cut")
                    link.cut()
                elif attack == "error-packet":
                    acted.append("error packet")
                    link.client.write(encode_packet(Flag.ERROR_CONDITION, 1 << 40,
                                                    bytes([ErrorCode.INVALID_INPUT])))
                    await link.client.drain()
                    link.cut()
                status_seen.set()
                return None
            return packet
        if attack == "flip" and not acted and body_size(packet) >= SMALL_RECORD:
            acted.append("flip")
            return flip_body_bit(packet, offset_from_end=body_size(packet) // 2)
        return packet

    async def scenario() -> Outcome:
        proxy = Proxy(daemon.port, s2c=s2c)
        await proxy.start()
        try:
            return await _run_qsh(
                daemon.qsh_args(proxy.port, f"head -c {OUTPUT} /dev/zero; exit 0",
                                known=daemon.known_hosts(proxy.port)),
                daemon.env(), pause=status_seen, pause_at=PAUSE_AT)
        finally:
            await proxy.stop()

    outcome = asyncio.run(scenario())
    assert acted, "the proxy never saw the exit status overtake the output"
    assert outcome.out_bytes < OUTPUT, outcome
    assert outcome.out_bytes >= PAUSE_AT, outcome
    assert outcome.status == 255, outcome
    line = _one_line(outcome.stderr)
    assert "before the session ended" in line, line
    if attack == "flip":
        assert "tampered" in line, line


def test_untouched_output_still_exits_with_the_remote_status(daemon: Daemon) -> None:
    """The same run through a proxy that changes nothing: all of it, the remote status."""
    async def scenario() -> Outcome:
        proxy = Proxy(daemon.port)
        await proxy.start()
        try:
            return await _run_qsh(
                daemon.qsh_args(proxy.port, f"head -c {OUTPUT} /dev/zero; exit 3",
                                known=daemon.known_hosts(proxy.port)), daemon.env())
        finally:
            await proxy.stop()

    outcome = asyncio.run(scenario())
    assert (outcome.status, outcome.out_bytes, outcome.stderr) == (3, OUTPUT, ""), outcome


# =========================================================================== item 8: host key


def _forge_first_flight(code: ErrorCode, every: bool) -> Hook:
    """Answer the client's first flight with a forged 0xFF error packet (anyone on the path
    can send one: it carries no authentication), on the first connection or on all."""
    async def c2s(link: Link, index: int, packet: bytes) -> bytes | None:
        if index == 0 and (every or link.number == 0):
            link.client.write(encode_packet(Flag.ERROR_CONDITION, 0, bytes([code])))
            with contextlib.suppress(ConnectionError):
                await link.client.drain()
            link.cut()
            return None
        return packet
    return c2s


def _corrupt_signature(every: bool) -> Hook:
    """Flip one bit of the host key signature, the last field of the server's P2."""
    async def s2c(link: Link, index: int, packet: bytes) -> bytes | None:
        if index == 0 and packet[0] == Flag.CONNECT_RESPONSE and (every or link.number == 0):
            return flip_body_bit(packet)
        return packet
    return s2c


async def _through(daemon: Daemon, *, c2s: Hook = _pass, s2c: Hook = _pass,
                   options: tuple[str, ...] = ()) -> tuple[Outcome, int]:
    proxy = Proxy(daemon.port, c2s=c2s, s2c=s2c)
    await proxy.start()
    try:
        outcome = await _run_qsh(daemon.qsh_args(proxy.port, "echo logged-in",
                                                 known=daemon.known_hosts(proxy.port),
                                                 options=options), daemon.env())
        return outcome, len(proxy.links)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("every", [True, False], ids=["every-connection", "first-only"])
@pytest.mark.parametrize("code", [ErrorCode.KEY_UNRECOGNIZED, ErrorCode.VERIFY_FAILURE],
                         ids=["key-unrecognized", "verify-failure"])
def test_forged_error_packet_is_no_changed_host_key(daemon: Daemon, code: ErrorCode,
                                                    every: bool) -> None:
    """A plaintext "key unrecognized" / "verification failure" in answer to our first
    message proves nothing about the host key. qsh asks the host for its key on a second
    connection: the known key (forged once) or none (forged every time), never the banner."""
    outcome, connections = asyncio.run(_through(daemon, c2s=_forge_first_flight(code, every)))
    assert outcome.status == 255 and outcome.out_bytes == 0, outcome
    line = _one_line(outcome.stderr)
    assert "CHANGED" not in line and line.endswith(f"{TAMPERED}\n"), line
    assert f'an unauthenticated error packet said "{code.description}"' in line, line
    assert ("presented no key" if every else "presents the known key") in line, line
    assert connections == 2  # the probe


@pytest.mark.parametrize("every", [True, False], ids=["every-connection", "first-only"])
def test_corrupted_host_key_signature_is_no_changed_host_key(daemon: Daemon,
                                                             every: bool) -> None:
    outcome, _ = asyncio.run(_through(daemon, s2c=_corrupt_signature(every)))
    assert outcome.status == 255, outcome
    line = _one_line(outcome.stderr)
    assert "CHANGED" not in line, line
    assert line == f"qsh: signature check failed: {TAMPERED}\n"
    assert outcome.out_bytes == 0


def test_changed_host_key_still_shows_the_banner(daemon: Daemon) -> None:
    """A pinned key the host does not have: asked, it presents another one: the banner,
    with the fingerprint of what it presents."""
    other = HostKey.generate("mldsa65", now=time.time()).public
    known = daemon.base / "known_hosts-changed"
    known.unlink(missing_ok=True)
    KnownHosts.load(known).add("127.0.0.1", daemon.port, other)
    outcome = asyncio.run(_run_qsh(daemon.qsh_args(daemon.port, "true", known=known),
                                   daemon.env()))
    assert outcome.status == 255, outcome
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in outcome.stderr, outcome.stderr
    assert daemon.host_key.fingerprint() in outcome.stderr  # the key it presented
    assert outcome.stderr.endswith("qsh: host key verification failed\n"), outcome.stderr
    assert known.read_text().count("qsh-") == 1  # nothing recorded


def test_another_known_key_of_the_host_is_tried_not_a_changed_key(daemon: Daemon) -> None:
    """known_hosts has an old key and the current one for the host (a rotation): the
    server does not know the first one's ID, which is no changed key -- the second one is
    tried and the login goes through."""
    old = HostKey.generate("mldsa65", now=time.time()).public
    known = daemon.base / "known_hosts-rotated"
    known.unlink(missing_ok=True)
    KnownHosts.load(known).add("127.0.0.1", daemon.port, old)
    KnownHosts.load(known).add("127.0.0.1", daemon.port, daemon.host_key)
    outcome = asyncio.run(_run_qsh(daemon.qsh_args(daemon.port, "echo logged-in",
                                                   known=known), daemon.env()))
    assert (outcome.status, outcome.stderr) == (0, ""), outcome
    assert outcome.out_bytes == len("logged-in\n")


# =========================================================================== item 10a: time-outs


def test_connect_timeout_names_the_reason(daemon: Daemon) -> None:
    """A listener whose accept queue is full: the kernel drops our SYNs, the connect
    times out. The message says so (it was "connect to host ... port N: " and nothing)."""
    overflow = Path("/proc/sys/net/ipv4/tcp_abort_on_overflow")
    if overflow.exists() and overflow.read_text().strip() != "0":
        pytest.skip("this kernel resets connections to a full listener instead of dropping")
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        started = time.monotonic()
        result = subprocess.run(
            daemon.qsh_args(port, "true", options=("ConnectTimeout=1",)),
            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=daemon.env(),
            stdin=subprocess.DEVNULL, start_new_session=True)
        elapsed = time.monotonic() - started
    finally:
        for s in (listener, *fillers):
            s.close()
    assert result.returncode == 255
    assert result.stderr == (f"qsh: connect to host 127.0.0.1 port {port}: "
                             "Connection timed out\n"), result.stderr
    assert elapsed < 10


def test_silent_server_is_a_handshake_timeout(daemon: Daemon) -> None:
    """A listener the kernel accepts for, that never says a word: the TCP connection is
    up, the handshake times out, and the message says which."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        result = subprocess.run(
            daemon.qsh_args(port, "true", options=("ConnectTimeout=1",)),
            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=daemon.env(),
            stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        listener.close()
    assert result.returncode == 255
    assert result.stderr == (f"qsh: connection to host 127.0.0.1 port {port}: "
                             "the handshake timed out after 1 second\n"), result.stderr


# =========================================================================== item 10b: login


def test_too_many_authentication_failures_is_one_line() -> None:
    """MaxAuthTries 1 and two keys the server does not know: the server ends the
    connection after the first refusal. qsh must say so (it hung, or printed
    "internal error: RemoteReportedError(...)")."""
    with _daemon("-o", "MaxAuthTries=1") as d:
        strangers = []
        for name in ("stranger1", "stranger2"):
            path = d.base / name
            HostKey.generate("mldsa65", now=time.time()).save(path)
            strangers.append(path)
        result = subprocess.run(
            d.qsh_args(d.port, "true", keys=tuple(strangers)), capture_output=True,
            text=True, timeout=TIMEOUT, cwd=ROOT, env=d.env(), stdin=subprocess.DEVNULL,
            start_new_session=True)
    assert result.returncode == 255
    line = _one_line(result.stderr)
    assert line.startswith("qsh: permission denied"), line
    assert "too many authentication failures" in line, line


def test_login_grace_time_exceeded_is_one_line() -> None:
    """The server's LoginGraceTime runs out while our login request is held on the path:
    it ends the connection with an error record. One clear line, not an internal error."""
    async def c2s(link: Link, index: int, packet: bytes) -> bytes | None:
        if packet[0] == Flag.ENCRYPTED_MESSAGE and index >= 4:  # the records after P7
            await asyncio.sleep(2.5)
        return packet

    with _daemon("-o", "LoginGraceTime=1") as d:
        outcome, _ = asyncio.run(_through(d, c2s=c2s))
    assert outcome.status == 255, outcome
    line = _one_line(outcome.stderr)
    assert "login grace time exceeded" in line, line


# =========================================================================== ended before CLOSE


USER_KEY = HostKey.generate("mldsa65", now=time.time())
SERVER_KEY = HostKey.generate("mldsa65", now=time.time())
PAYLOAD = b"x" * 100_000


async def _ends_before_close(how: str) -> aio.Server:
    """An in-process server speaking the real protocol that runs no command: it sends
    PAYLOAD, exit status 0 and EOF on the channel, then ends the connection without
    closing the channel -- with an authenticated SHUTDOWN, or by ending TCP."""
    async def session(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        channel.accept()
        request = await channel.next_request()
        assert request is not None and request.name == proto.EXEC
        channel.reply(True)
        channel.write(PAYLOAD)
        await channel.request(proto.EXIT_STATUS, proto.encode_exit_status(0),
                              want_reply=False)
        channel.write_eof()
        await channel.drain()
        if how == "shutdown":
            # A peer's text reaches the user's terminal: control characters must not.
            connection.close("going away\x1b]0;pwned\x07\nqsh: a forged second line")
            return
        deadline = time.monotonic() + TIMEOUT
        while connection.write_buffer_size and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # shutdown, not close: the adapter sends through a duplicate of the socket, which
        # would keep the connection (and the channel's CLOSE) going.
        transport = connection.transport
        assert transport is not None
        transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)

    async def decide(connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        return request.public_key == USER_KEY.public

    return await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake([SERVER_KEY]),
                           on_channel=session, on_auth=decide)


@pytest.mark.parametrize("how", ["shutdown", "tcp-close"])
def test_connection_ending_after_eof_but_before_close_is_a_failure(tmp_path: Path,
                                                                  how: str) -> None:
    """Even with all of the output and an exit status, a session is over only at the
    channel's CLOSE (PROTOCOL.md §10.3): qsh exits 255 and says why."""
    key_path = tmp_path / "id_test"
    USER_KEY.save(key_path)

    async def scenario() -> Outcome:
        server = await _ends_before_close(how)
        async with server:
            known = tmp_path / "known_hosts"
            KnownHosts.load(known).add("127.0.0.1", server.port, SERVER_KEY.public)
            return await _run_qsh(
                [PYTHON, "-m", "qsh", "-p", str(server.port), "-i", str(key_path),
                 "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                 "127.0.0.1", "anything"], _client_env(tmp_path))

    outcome = asyncio.run(scenario())
    assert outcome.out_bytes == len(PAYLOAD), outcome
    assert outcome.status == 255, outcome
    line = _one_line(outcome.stderr)
    assert "before the session ended" in line, line
    assert "\x1b" not in line and "\x07" not in line, line
    if how == "shutdown":
        assert "going away?]0;pwned??qsh: a forged second line" in line, line


@pytest.mark.parametrize("how", ["shutdown", "tcp-close"])
def test_api_run_raises_when_the_connection_ends_before_close(tmp_path: Path,
                                                               how: str) -> None:
    """qsh.api's run has the same rule: a DisconnectError, not a RunResult."""
    async def scenario() -> None:
        server = await _ends_before_close(how)
        async with server:
            known = tmp_path / "known_hosts"
            KnownHosts.load(known).add("127.0.0.1", server.port, SERVER_KEY.public)
            async with connect("127.0.0.1", server.port, username="alice",
                                   identity=USER_KEY, known_hosts=known) as conn:
                with pytest.raises(DisconnectError, match="before the command ended"):
                    await conn.run("anything", timeout=TIMEOUT)

    asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))
