"""Tunnels end to end: a real ``python -m qshd`` and real ``python -m qsh -N -T/-R/-D``
processes, real TCP servers behind them, everything on loopback (127.0.0.1, ::1).

As root the daemon runs as root and the tests log in as a throwaway system account (see
test_qsh_client.py, whose helpers start the daemon and make the account), so the server
side of every tunnel must run as that account: one test checks the owner of the socket.
The daemon allows forwarding only to 127.0.0.1 and localhost (``PermitOpen``), so that the
refusal of any other destination can be tested without touching one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import stop_process
from test_qsh_client import _client_env, _start_daemon, _target_account

from common import aio
from common.accounts.keys import HostKey
from common.accounts.known_hosts import KnownHosts
from common.channels.tunnel import (
    DIRECT_TCPIP,
    FIRST_MAX,
    FORWARD_CHECK,
    Endpoint,
    ForwardCheck,
    decode_first_max,
)
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer
from common.wire import Writer

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MiB = 1024 * 1024
LOCAL = "127.0.0.1"


# --------------------------------------------------------------------------- servers


class TcpServer:
    """A threaded TCP server on 127.0.0.1: ``serve(conn)`` runs per connection."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server((LOCAL, 0))
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        self.peers: list[tuple[str, int]] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(60)
            self.serve(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(256 * 1024):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def digest_after_eof(conn: socket.socket) -> None:
    """Half-close: read everything to EOF, then answer with its SHA-256 and its length."""
    h = hashlib.sha256()
    n = 0
    while data := conn.recv(256 * 1024):
        h.update(data)
        n += len(data)
    conn.sendall(h.hexdigest().encode() + b" " + str(n).encode())


@pytest.fixture(scope="module")
def echo_server() -> Iterator[TcpServer]:
    server = TcpServer(echo)
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound, never listened: connects are refused)."""
    return free_port()


def wait_port(port: int, timeout: float = 20.0, host: str = LOCAL) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


def exchange(port: int, payload: bytes, host: str = LOCAL) -> bytes:
    """Send, half-close, read to EOF."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def recv_all(s: socket.socket) -> bytes:
    parts = []
    while data := s.recv(256 * 1024):
        parts.append(data)
    return b"".join(parts)


# --------------------------------------------------------------------------- qshd and qsh


@dataclass
class Env:
    port: str
    user: str
    client_home: Path
    key: Path
    daemon: subprocess.Popen[bytes]
    base: Path

    def args(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "qsh", "-p", self.port, "-o", "StrictHostKeyChecking=yes",
                "-i", str(self.key), f"{self.user}@127.0.0.1", *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.args(*args), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, cwd=ROOT, env=_client_env(self.client_home),
                              start_new_session=True)

    @contextlib.contextmanager
    def qsh(self, *args: str, ready: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
        """``qsh -N ARGS`` in the background, its stderr in a file; ready once ``ready``
        (a local port) accepts."""
        log = tempfile.NamedTemporaryFile(prefix="qsh-", suffix=".log", dir=self.base,  # noqa: SIM115
                                          delete=False)
        process = subprocess.Popen(self.args("-N", *args), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, cwd=ROOT,
                                   env=_client_env(self.client_home), start_new_session=True)
        log.close()
        process.log = Path(log.name)  # type: ignore[attr-defined]
        try:
            if ready is not None:
                deadline = time.monotonic() + 30
                while True:
                    if process.poll() is not None:
                        raise AssertionError(f"qsh exited {process.returncode}: "
                                             f"{Path(log.name).read_text()}")
                    try:
                        with socket.create_connection((LOCAL, ready), timeout=1):
                            break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise AssertionError("the tunnel did not come up") from None
                        time.sleep(0.05)
            yield process
        finally:
            if process.poll() is None:
                stop_process(process, timeout=10)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="qsh-tunnel-e2e-"))
    os.chmod(base, 0o755)
    try:
        with _target_account(base) as (user, home):
            entry = pwd.getpwnam(user)
            client_home = base / "client"
            (client_home / ".qsh").mkdir(parents=True, mode=0o700)
            key = HostKey.generate("mldsa65", now=time.time())
            key_path = client_home / "id_test"
            key.save(key_path)
            options: list[str] = ["-o", "PermitOpen=127.0.0.1:* localhost:* [::1]:*"]
            line = key.public.openssh_line("test") + "\n"
            if os.geteuid() == 0:
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
            host_key = base / "host_key"
            process, port = _start_daemon(base, host_key, *options)
            KnownHosts.load(client_home / ".qsh" / "known_hosts").add(
                "127.0.0.1", int(port), HostKey.load(host_key).public)
            try:
                yield Env(port, user, client_home, key_path, process, base)
            finally:
                stop_process(process)
                log = (base / "qshd.log").read_text(errors="replace")
                assert "Traceback" not in log, log
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- /proc


def socket_owner(local_port: int) -> int | None:
    """The pid holding the TCP socket whose local port is ``local_port`` (IPv4 or v6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(fields[9])
    wanted = {f"socket:[{inode}]" for inode in inodes if inode != "0"}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                        return int(pid)
    return None


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


def live_owner(peers: list[tuple[str, int]]) -> int | None:
    """The process holding the far end of the one live connection among ``peers`` (the
    readiness probe's connection may be among them, closed)."""
    owners = {socket_owner(port) for _, port in peers} - {None}
    assert len(owners) <= 1, owners
    return owners.pop() if owners else None


def quiet(server: TcpServer, timeout: float = 10.0) -> None:
    """Wait until no connection to ``server`` is open any more (readiness probes)."""
    deadline = time.monotonic() + timeout
    while any(socket_owner(port) for _, port in server.peers):
        assert time.monotonic() < deadline, "connections to the server stay open"
        time.sleep(0.05)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle(count: Callable[[], int], limit: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    value = count()
    while value > limit and time.monotonic() < deadline:
        time.sleep(0.1)
        value = count()
    return value


def lines(path: Path) -> str:
    return path.read_text(errors="replace")


# =========================================================================== tests


def test_http_server_behind_T_fetched_with_urllib(env: Env, tmp_path: Path) -> None:
    page = os.urandom(300_000)
    (tmp_path / "page.bin").write_bytes(page)
    http_port = free_port()
    http = subprocess.Popen([PYTHON, "-m", "http.server", "--bind", LOCAL, str(http_port)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(http_port)
        lport = free_port()
        with env.qsh("-T", f"{lport}:127.0.0.1:{http_port}", ready=lport):
            for _ in range(3):
                url = f"http://127.0.0.1:{lport}/page.bin"
                with urllib.request.urlopen(url, timeout=30) as response:
                    assert response.status == 200
                    assert response.read() == page
    finally:
        http.terminate()
        http.wait(10)


def test_20_concurrent_connections_with_checksums(env: Env, echo_server: TcpServer) -> None:
    lport = free_port()
    results: dict[int, bool] = {}

    def one(i: int) -> None:
        payload = os.urandom(MiB + i * 1000)
        results[i] = hashlib.sha256(exchange(lport, payload)).digest() == (
            hashlib.sha256(payload).digest())

    with env.qsh("-L", f"{lport}:127.0.0.1:{echo_server.port}", ready=lport):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == {i: True for i in range(20)}


def _both_ways(port: int, total: int) -> None:
    """Send ``total`` bytes while reading the echo; compare checksums."""
    block = os.urandom(MiB)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    count = [0]
    with socket.create_connection((LOCAL, port), timeout=60) as s:
        def reader() -> None:
            while data := s.recv(MiB):
                received.update(data)
                count[0] += len(data)

        thread = threading.Thread(target=reader)
        thread.start()
        for i in range(total // MiB):
            chunk = i.to_bytes(8, "big") + block[8:]
            sent.update(chunk)
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        thread.join(120)
    assert count[0] == total
    assert received.digest() == sent.digest()


@pytest.mark.slow
def test_200_mb_both_ways_with_checksum(env: Env, echo_server: TcpServer) -> None:
    lport = free_port()
    with env.qsh("-T", f"{lport}:127.0.0.1:{echo_server.port}", ready=lport):
        start = time.monotonic()
        _both_ways(lport, 200 * MiB)
        assert time.monotonic() - start < 60


def test_half_close_send_shutdown_still_receive(env: Env) -> None:
    server = TcpServer(digest_after_eof)
    lport = free_port()
    try:
        with env.qsh("-T", f"{lport}:127.0.0.1:{server.port}", ready=lport):
            payload = os.urandom(3 * MiB + 17)
            reply = exchange(lport, payload)
            assert reply == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}".encode()
    finally:
        server.close()


def test_a_local_reader_that_stops_reading_stops_the_far_sender(env: Env) -> None:
    """Flow control end to end: while the client through -T reads nothing, the far end can
    send only what the channel's window, the high-water marks and the kernels' buffers
    hold -- not all of it into qsh's or qshd's memory; reading again takes the rest."""
    total = 256 * MiB
    sent = [0]  # by the latest connection (env.qsh's readiness probe makes one first)

    def source(conn: socket.socket) -> None:
        block = bytes(MiB)
        done = sent[0] = 0
        while done < total:
            conn.sendall(block)
            done += len(block)
            sent[0] = done

    server = TcpServer(source)
    lport = free_port()
    try:
        with env.qsh("-T", f"{lport}:127.0.0.1:{server.port}", ready=lport), \
                socket.create_connection((LOCAL, lport), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            previous = -1
            deadline = time.monotonic() + 20
            while sent[0] != previous and time.monotonic() < deadline:  # until it stalls
                previous = sent[0]
                time.sleep(1.0)
            stalled = sent[0]
            assert stalled < 96 * MiB, f"the far end sent {stalled} bytes to a reader " \
                "that read nothing"
            received = 0
            buf = bytearray(MiB)
            while n := s.recv_into(buf):
                received += n
            assert received == total
    finally:
        server.close()


def test_R_reaches_a_local_echo_server(env: Env, echo_server: TcpServer) -> None:
    rport = free_port()
    with env.qsh("-R", f"{rport}:127.0.0.1:{echo_server.port}", ready=rport):
        payload = os.urandom(2 * MiB)
        assert exchange(rport, payload) == payload
        # The listener is the server's (the user's process), not qsh's.
        with socket.create_connection((LOCAL, rport)) as held:
            held.sendall(b"x")
            assert held.recv(1) == b"x"


def socks5(port: int, host: str | bytes, dest_port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection((LOCAL, port), timeout=30)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    if isinstance(host, bytes):  # an IPv4 address, packed
        s.sendall(b"\x05\x01\x00\x01" + host + dest_port.to_bytes(2, "big"))
    else:
        name = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name
                  + dest_port.to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(10 - len(reply))
        assert chunk, reply
        reply += chunk
    return s, reply


def test_D_socks5_domain_name_and_ipv4(env: Env, echo_server: TcpServer) -> None:
    lport = free_port()
    with env.qsh("-D", str(lport), ready=lport) as qsh:
        for host in ("localhost", socket.inet_aton(LOCAL)):
            s, reply = socks5(lport, host, echo_server.port)
            with s:
                assert reply[:2] == b"\x05\x00", reply
                payload = os.urandom(500_000)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == payload
        # SOCKS4a, with the name after the user id.
        with socket.create_connection((LOCAL, lport), timeout=30) as s:
            s.sendall(b"\x04\x01" + echo_server.port.to_bytes(2, "big") + b"\0\0\0\x01"
                      + b"me\0localhost\0")
            assert s.recv(8)[:2] == b"\x00\x5a"
            s.sendall(b"four-a")
            assert s.recv(6) == b"four-a"
        # A destination the server's policy refuses: SOCKS5 "not allowed", one line.
        s, reply = socks5(lport, socket.inet_aton("127.0.0.2"), 80)
        with s:
            assert reply[:2] == b"\x05\x02", reply
        qsh.terminate()
        qsh.wait(10)
        assert "127.0.0.2:80 is not permitted (PermitOpen)" in lines(qsh.log)  # type: ignore[attr-defined]


def test_refused_destination_closes_the_socket_and_says_so(env: Env,
                                                           echo_server: TcpServer) -> None:
    lport = free_port()
    dead = closed_port()
    with env.qsh("-T", f"{lport}:127.0.0.1:{dead}", ready=lport) as qsh:
        with socket.create_connection((LOCAL, lport), timeout=30) as s:
            s.settimeout(20)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""
        assert qsh.poll() is None  # one refused connection does not end the tunnel
        qsh.terminate()
        qsh.wait(10)
    log = lines(qsh.log)  # type: ignore[attr-defined]
    assert f"connect to 127.0.0.1:{dead} failed: Connection refused" in log, log
    # One line per refused connection: the readiness probe's and ours.
    assert len([line for line in log.splitlines() if "refused" in line]) == 2, log


def test_policy_refusal_exits_255_at_connect_with_the_reason(env: Env) -> None:
    lport = free_port()
    result = env.run("-T", f"{lport}:127.0.0.2:80", "echo RAN")
    assert result.returncode == 255, result
    assert b"RAN" not in result.stdout
    assert result.stderr.decode().strip().splitlines() == [
        f"qsh: tunnel refused: -T {lport}:127.0.0.2:80: 127.0.0.2:80 is not permitted "
        "(PermitOpen)"]
    # Nothing listens locally once qsh has gone.
    with pytest.raises(OSError), socket.create_connection((LOCAL, lport), timeout=2):
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="a user's process can bind nothing below 1024 "
                    "only when it is not root")
def test_R_below_1024_is_refused_with_the_users_rights(env: Env) -> None:
    result = env.run("-R", "80:127.0.0.1:9", "echo RAN")
    assert result.returncode == 255, result
    assert b"RAN" not in result.stdout
    assert result.stderr.decode().strip() == (
        "qsh: tunnel refused: -R 80:127.0.0.1:9: cannot listen: Permission denied")


def test_tunnels_do_not_delay_a_command(env: Env, echo_server: TcpServer) -> None:
    """With a tunnel that the server accepts, the command runs as without."""
    lport = free_port()
    result = env.run("-T", f"{lport}:127.0.0.1:{echo_server.port}", "echo ran")
    assert result.returncode == 0, result
    assert result.stdout == b"ran\n"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_N_f_background_tunnel_ends_when_the_server_goes(env: Env,
                                                        echo_server: TcpServer) -> None:
    lport = free_port()
    log = env.base / "background.log"
    with open(log, "wb") as out:
        result = subprocess.run(env.args("-f", "-N", "-T", f"{lport}:127.0.0.1:"
                                         f"{echo_server.port}"),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT,
                                env=_client_env(env.client_home), timeout=60)
    assert result.returncode == 0, log.read_text()
    # Back at the prompt, and the tunnel works.
    try:
        wait_port(lport, 5)
    except AssertionError:
        raise AssertionError(log.read_text()) from None
    assert exchange(lport, b"background") == b"background"
    background = socket_owner(lport)
    assert background is not None
    if os.geteuid() != 0:
        pytest.skip("without root the user's process cannot be told from the daemon's")
    # The server goes: the process serving this connection (the user's) is killed.
    user_uid = pwd.getpwnam(env.user).pw_uid
    victims = [pid for pid in _descendants(env.daemon.pid) if uid_of(pid) == user_uid]
    assert victims
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and os.path.exists(f"/proc/{background}"):
        status = Path(f"/proc/{background}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if status == "Z":
            break
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{background}") or Path(
        f"/proc/{background}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    with pytest.raises(OSError), socket.create_connection((LOCAL, lport), timeout=2):
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to log in as another user")
def test_server_side_socket_belongs_to_the_users_process(env: Env,
                                                         echo_server: TcpServer) -> None:
    lport = free_port()
    rport = free_port()
    user_uid = pwd.getpwnam(env.user).pw_uid
    with env.qsh("-T", f"{lport}:127.0.0.1:{echo_server.port}",
                 "-R", f"{rport}:127.0.0.1:{echo_server.port}", ready=lport):
        wait_port(rport)
        quiet(echo_server)
        before = len(echo_server.peers)
        with socket.create_connection((LOCAL, lport), timeout=10) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            owner = live_owner(echo_server.peers[before:])  # the server side's socket
            assert owner is not None
            assert uid_of(owner) == user_uid != 0
            assert owner in _descendants(env.daemon.pid)
        listener = socket_owner(rport)  # -R's listening socket
        assert listener is not None
        assert uid_of(listener) == user_uid


def test_qshd_takes_first_bytes_in_the_direct_tcpip_open(env: Env,
                                                          echo_server: TcpServer) -> None:
    """The real qshd offers first bytes in its forward-check answer and writes those that
    come with a direct-tcpip open to the destination before the channel's data; more than
    it offered is refused (malformed), and an open without any still works."""
    import asyncio

    host_key = HostKey.load(env.base / "host_key").public
    identity = HostKey.load(env.key)

    async def main() -> tuple[int, bytes, bytes, str]:
        connection = await aio.connect(LOCAL, int(env.port),
                                       handshake=ClientHandshake(Offer(), host_key),
                                       user=env.user, identity=identity, timeout=30)
        try:
            assert await connection.wait_authenticated() is None
            reply = await connection.global_request(
                FORWARD_CHECK, ForwardCheck(LOCAL, echo_server.port).encode())
            assert reply is not None and reply[0]
            offered = decode_first_max(reply[1])
            channel = await connection.open_channel(
                DIRECT_TCPIP, Endpoint(LOCAL, echo_server.port, first=b"first, ").encode())
            channel.write(b"then data")
            with_first = await channel.readexactly(16)
            channel.close()
            plain = await connection.open_channel(
                DIRECT_TCPIP, Endpoint(LOCAL, echo_server.port).encode())
            plain.write(b"plain")
            without = await plain.readexactly(5)
            plain.close()
            too_many = (Writer().text(LOCAL).u16(echo_server.port).text("").u16(0)
                        .vbytes(b"x" * (FIRST_MAX + 1)).getvalue())
            try:
                await connection.open_channel(DIRECT_TCPIP, too_many)
                refusal = "opened"
            except aio.ChannelOpenError as exc:
                refusal = exc.message
            return offered, with_first, without, refusal
        finally:
            connection.close()
            await connection.wait_closed()

    offered, with_first, without, refusal = asyncio.run(asyncio.wait_for(main(), 60))
    assert offered == FIRST_MAX
    assert with_first == b"first, then data"
    assert without == b"plain"
    assert "malformed request" in refusal and "exceeds" in refusal


def test_qsh_sends_the_first_bytes_with_the_open(env: Env, echo_server: TcpServer) -> None:
    """A request already sent when qsh accepts the connection rides in the open: qsh is
    stopped while the local client connects and sends, so the bytes are there when it
    accepts; the echo comes back whole and qsh -vv says they went with the open."""
    lport = free_port()
    with env.qsh("-vv", "-T", f"{lport}:127.0.0.1:{echo_server.port}", ready=lport) as qsh:
        time.sleep(0.2)  # the readiness probe's connection is done with
        os.kill(qsh.pid, signal.SIGSTOP)
        try:
            s = socket.create_connection((LOCAL, lport), timeout=10)
            s.sendall(b"GET / 1234567")
        finally:
            os.kill(qsh.pid, signal.SIGCONT)
        with s:
            got = b""
            while len(got) < 13:
                chunk = s.recv(100)
                assert chunk
                got += chunk
        assert got == b"GET / 1234567"
        deadline = time.monotonic() + 10
        while "13 first bytes sent with the open" not in lines(qsh.log):  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, lines(qsh.log)  # type: ignore[attr-defined]
            time.sleep(0.05)


def test_D_sends_what_follows_the_socks_request_with_the_open(env: Env,
                                                             echo_server: TcpServer) -> None:
    """A SOCKS client that does not wait for the reply (greeting, request and data in one
    write) gets the reply, then the echo of its data; the data rode in the open."""
    lport = free_port()
    with env.qsh("-vv", "-D", str(lport), ready=lport) as qsh:
        time.sleep(0.2)
        os.kill(qsh.pid, signal.SIGSTOP)
        try:
            s = socket.create_connection((LOCAL, lport), timeout=10)
            s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton(LOCAL)
                      + echo_server.port.to_bytes(2, "big") + b"pipelined")
        finally:
            os.kill(qsh.pid, signal.SIGCONT)
        with s:
            want = b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6) + b"pipelined"
            got = b""
            while len(got) < len(want):
                chunk = s.recv(100)
                assert chunk, got
                got += chunk
        assert got == want
        assert "9 first bytes sent with the open" in lines(qsh.log)  # type: ignore[attr-defined]


def test_1000_short_connections_leave_no_fds_behind(env: Env, echo_server: TcpServer) -> None:
    lport = free_port()
    with env.qsh("-T", f"{lport}:127.0.0.1:{echo_server.port}", ready=lport) as qsh:
        # Warm up, and find the server side's process by its outgoing socket.
        before_peers = len(echo_server.peers)
        with socket.create_connection((LOCAL, lport), timeout=10) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            server_pid = live_owner(echo_server.peers[before_peers:])
        assert server_pid is not None
        time.sleep(0.3)
        client_fds = fd_count(qsh.pid)
        server_fds = fd_count(server_pid)
        payload = os.urandom(1024)
        start = time.monotonic()
        for _ in range(1000):
            with socket.create_connection((LOCAL, lport), timeout=10) as s:
                s.sendall(payload)
                got = b""
                while len(got) < 1024:
                    chunk = s.recv(1024 - len(got))
                    assert chunk
                    got += chunk
                assert got == payload
        elapsed = time.monotonic() - start
        assert settle(lambda: fd_count(qsh.pid), client_fds) <= client_fds
        assert settle(lambda: fd_count(server_pid), server_fds) <= server_fds
        print(f"1000 connections in {elapsed:.2f} s")
