"""No secret outlives its process or reaches disk (issue 16): every qshd process and the qsh
client dump no core and cannot be traced even by their own uid; the :class:`Secret` buffer
zeroes itself; a zero-log mode.

The process checks run a real ``python -m qshd`` and ``python -m qsh`` started with an
unlimited core limit and the kernel's ``core`` pattern (a file in the working directory),
so a process that did not lower its limit would leave a core file where the test looks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_qshd_processes import (
    LOCAL,
    PYTHON,
    ROOT,
    Accounts,
    Qshd,
    accounts,  # noqa: F401 (a fixture)
    alive,
    config_text,
    descendants,
    limits,
    preauth_of,
    prepare,
    stop_qshd,
    user_process_of,
    wait_for,
    wait_gone,
)

from common.accounts.keys import PublicKey
from common.accounts.known_hosts import format_line
from common.crypto.secret import Secret, wipe_all

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not sys.platform.startswith("linux"),
    reason="other uids' processes and throwaway accounts need root")


# --------------------------------------------------------------------------- Secret


def test_a_secret_is_zero_after_close_read_back_from_its_own_pages() -> None:
    secret = Secret(b"hunter2-" * 100)
    held = secret.view()  # keeps the pages mapped after close, so they can be read back
    assert bytes(held[:8]) == b"hunter2-"
    assert secret.bytes() == b"hunter2-" * 100
    secret.close()
    assert bytes(held) == bytes(800)
    assert secret.closed and "hunter2" not in repr(secret)
    with pytest.raises(ValueError):
        secret.view()
    secret.close()  # twice is fine


def test_wipe_all_zeroes_every_open_secret() -> None:
    """In a child of its own: wipe_all is a process's last act, and in the test process it
    would also close the keys other test modules keep for the whole session."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            first, second = Secret(b"a" * 40), Secret(bytearray(b"b" * 5000))
            views = [first.view(), second.view()]
            wipe_all()
            wiped = [bytes(v) for v in views] == [bytes(40), bytes(5000)]
            code = 0 if wiped and first.closed and second.closed else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_a_secret_is_locked_and_left_out_of_core_dumps() -> None:
    secret = Secret(b"x" * 32)
    try:
        start = f"{secret.address:x}"
        smaps = Path("/proc/self/smaps").read_text()
        block = smaps[smaps.index(start + "-"):].split("\nVmFlags:", 1)[1].split("\n", 1)[0]
        assert "dd" in block.split()  # MADV_DONTDUMP
        if secret.locked:
            assert "lo" in block.split()
        assert secret.locked or os.geteuid() != 0  # root is never over RLIMIT_MEMLOCK
    finally:
        secret.close()


# --------------------------------------------------------------------------- processes

_READER = """
import ctypes, os, sys
uid, pid = int(sys.argv[1]), int(sys.argv[2])
if uid:
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
else:  # root's own processes: root without capabilities is just another uid
    from qshd.privsep import drop_capabilities
    drop_capabilities()
try:
    open(f"/proc/{pid}/mem", "rb").close()
    print("readable")
except OSError as exc:
    print("refused", exc.errno)
"""


def mem_readable_by_owner(pid: int) -> bool:
    """Whether a process of the target's own uid (and no capability) may open
    ``/proc/PID/mem``: yes for a dumpable process, no for one that is not."""
    uid = _uid_of(pid)
    out = subprocess.run([PYTHON, "-c", _READER, str(uid), str(pid)], capture_output=True,
                         timeout=10, cwd=ROOT, check=True, text=True).stdout
    return out.startswith("readable")


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def _uid_or_none(pid: int) -> int | None:
    try:
        return _uid_of(pid)
    except OSError:
        return None


def _unlimited_cores() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def start_daemon(directory: Path, config: str) -> Qshd:
    """As test_qshd_processes.start_qshd, but working in ``directory`` (where a core file
    would land) and with an unlimited core limit to start from."""
    cfg = directory / "qshd_config"
    cfg.write_text(config)
    ready = directory / "ready"
    log = directory / "qshd.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-f", str(cfg),
             "-h", str(directory / "host_key"), "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=directory,
            env=env, preexec_fn=_unlimited_cores)
    wait_for("qshd to listen", lambda: (ready.exists() and ready.read_text().strip())
             or process.poll() is not None, 30)
    assert process.poll() is None, log.read_text()
    host_key = PublicKey.load(directory / "host_key.pub")[0]
    return Qshd(process, int(ready.read_text()), host_key, directory, cfg, log)


@pytest.fixture()
def hardened_daemon(tmp_path: Path, accounts: Accounts) -> Iterator[Qshd]:  # noqa: F811
    for directory in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        directory.chmod(0o755)  # the user's process reads authorized_keys as the user
    prepare(tmp_path, accounts)
    qshd = start_daemon(tmp_path, config_text(tmp_path, f"PrivsepUser {accounts.privsep.name}",
                                               "PerSourcePenalties no"))
    yield qshd
    stop_qshd(qshd)


def qsh_client(qshd: Qshd, user: str, *command: str) -> subprocess.Popen[bytes]:
    known = qshd.directory / "known_hosts"
    known.write_text(format_line(f"[127.0.0.1]:{qshd.port}", qshd.host_key) + "\n")
    return subprocess.Popen(
        [PYTHON, "-m", "qsh", "-p", str(qshd.port), "-i", str(qshd.directory / "id_test"),
         "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
         f"{user}@{LOCAL}", *command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=qshd.directory, env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=_unlimited_cores, start_new_session=True)


def client_address(process: subprocess.Popen[bytes], port: int) -> tuple[str, int]:
    """The local end of the client's TCP connection to ``port`` (from /proc/net/tcp)."""
    def found() -> tuple[str, int] | None:
        inodes = set()
        with contextlib.suppress(OSError):
            for name in os.listdir(f"/proc/{process.pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{process.pid}/fd/{name}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if fields[9] in inodes and remote_port == port:
                local_port = int(fields[1].split(":")[1], 16)
                return LOCAL, local_port
        assert process.poll() is None, process.communicate()
        return None

    address: tuple[str, int] = wait_for("the client's connection", found, 20)
    return address


def assert_hardened(pid: int, what: str) -> None:
    assert limits(pid)["Max core file size"][0] == "0", f"{what}: {limits(pid)}"
    assert not mem_readable_by_owner(pid), f"{what}: /proc/{pid}/mem opens for its own uid"


def crash_leaves_no_core(pid: int, sig: int, what: str, then: int | None = None) -> None:
    """Deliver ``sig`` (then ``then``, e.g. SIGCONT to a stopped process) and check that no
    core file appeared in the process's working directory."""
    cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    before = {p.name for p in cwd.iterdir()} if cwd.is_dir() else set()
    os.kill(pid, sig)
    if then is not None:
        os.kill(pid, then)
    wait_gone([pid])
    time.sleep(0.2)  # a core is written before the parent is told; be generous anyway
    after = {p.name for p in cwd.iterdir()} if cwd.is_dir() else set()
    assert not [n for n in after - before if n.startswith("core")], f"{what} left a core"


@needs_root
def test_every_process_dumps_no_core_and_is_closed_to_its_own_uid(
        hardened_daemon: Qshd, accounts: Accounts) -> None:  # noqa: F811
    qshd = hardened_daemon
    assert_hardened(qshd.pid, "the listener")
    # The pre-auth process: a connection that says nothing yet.
    with socket.create_connection((LOCAL, qshd.port), timeout=10) as raw:
        name = raw.getsockname()
        procs = preauth_of(qshd, (str(name[0]), int(name[1])), accounts.privsep.uid)
        preauth = procs.with_uid(accounts.privsep.uid)
        assert_hardened(preauth, "the pre-auth process")
        assert_hardened(procs.monitor, "the monitor")
        crash_leaves_no_core(preauth, signal.SIGSEGV, "the pre-auth process")
    # A logged-in user's process and the qsh client, during a session.
    client = qsh_client(qshd, accounts.user.name, "sleep 30")
    try:
        address = client_address(client, qshd.port)
        try:
            procs = user_process_of(qshd, address, accounts.user.uid, timeout=20)
        except AssertionError as exc:  # say what the client and the daemon saw
            ended = client.poll() is not None
            said = client.communicate(timeout=5)[1] if ended else b"(still running)"
            raise AssertionError(f"{exc}; qsh {said!r}; qshd's log: "
                                 f"{qshd.log.read_text()[-2000:]!r}") from None
        user = procs.with_uid(accounts.user.uid)
        assert_hardened(user, "the user's process")
        assert_hardened(client.pid, "the qsh client")
        os.kill(client.pid, signal.SIGSTOP)  # so it is still there after the server dies
        crash_leaves_no_core(user, signal.SIGABRT, "the user's process")
        crash_leaves_no_core(client.pid, signal.SIGSEGV, "the qsh client", signal.SIGCONT)
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(10)
        # The session's command, orphaned by the crash: the throwaway account's, so ours.
        orphans = [int(p) for p in os.listdir("/proc") if p.isdigit()
                   and _uid_or_none(int(p)) == accounts.user.uid]
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(orphans)
    left = [p for p in descendants(qshd.pid) if alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(left)
    crash_leaves_no_core(qshd.pid, signal.SIGSEGV, "the listener")
    assert not [p for p in qshd.directory.iterdir() if p.name.startswith("core")]


# --------------------------------------------------------------------------- where secrets live


def test_a_host_keys_signing_key_is_a_secret_zeroed_by_close() -> None:
    from helpers import host_key

    # A key of its own: helpers.host_key() is shared by every test of the session.
    key = host_key.__wrapped__(seed=b"a key this test closes")
    signing = key.signing_key
    held = key.secret.view()
    assert bytes(held) == signing and key.secret.locked
    assert key.sign(b"m") and "Secret" not in repr(key)
    key.close()
    assert bytes(held) == bytes(len(signing))
    with pytest.raises(ValueError):
        key.sign(b"m")


_PROMPT = """
import asyncio
import common.client.terminal as terminal
buffers = []
read = terminal._read_line_into
async def spy(fd, buffer):
    buffers.append(buffer)
    return await read(fd, buffer)
terminal._read_line_into = spy
secret = asyncio.run(terminal.TtyPrompter().ask_secret("pw: "))
print(secret.bytes().decode(), "zeroed" if not any(buffers[0]) else "left")
"""


def _controlling_terminal(slave: int) -> None:
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)


def test_a_typed_password_goes_into_a_secret_and_the_read_buffer_is_zeroed() -> None:
    master, slave = os.openpty()
    try:
        child = subprocess.Popen(
            [PYTHON, "-c", _PROMPT], stdin=slave, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            preexec_fn=lambda: _controlling_terminal(slave))
        os.close(slave)
        slave = -1
        prompt = b""
        deadline = time.monotonic() + 10
        while b"pw: " not in prompt and time.monotonic() < deadline:
            prompt += os.read(master, 100)
        os.write(master, b"s3cret typed\n")
        out, err = child.communicate(timeout=10)
        assert out.decode().split() == ["s3cret", "typed", "zeroed"], err
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


# --------------------------------------------------------------------------- zero-log mode

SOURCE = "127.0.0.2"  # the client's address: the daemon's own is 127.0.0.1


async def _sessions(qshd: Qshd, user: str, command: str) -> None:
    """A refused password, then a key login that runs ``command``, from :data:`SOURCE`."""
    from test_qshd_processes import execute

    from common import aio
    from common.protocol.handshake import ClientHandshake
    from common.protocol.negotiation import Offer

    refused = await aio.connect(LOCAL, qshd.port, local_addr=(SOURCE, 0),
                                handshake=ClientHandshake(Offer(), qshd.host_key),
                                user=user, password=b"not the password")
    assert await refused.wait_authenticated() is not None
    refused.abort()
    client = await aio.connect(LOCAL, qshd.port, local_addr=(SOURCE, 0),
                               handshake=ClientHandshake(Offer(), qshd.host_key),
                               user=user, identity=qshd.user_key)
    assert await client.wait_authenticated() is None
    out, _err, status = await execute(client, command)
    assert status == 0 and out == b"zero-log-marker\n"
    client.close()


def _logged_session(tmp_path: Path, level: str) -> str:
    import asyncio

    from test_qshd_processes import ME, start_qshd

    prepare(tmp_path)
    qshd = start_qshd(tmp_path, config_text(tmp_path, f"LogLevel {level}",
                                            "PerSourcePenalties no"))
    try:
        asyncio.run(asyncio.wait_for(_sessions(qshd, ME, "echo zero-log-marker"), 30))
        fingerprint = qshd.user_key.public.fingerprint()
        time.sleep(0.3)  # the monitor's last lines
    finally:
        text = stop_qshd(qshd)
    return text + "\n" + fingerprint


@needs_root
def test_loglevel_quiet_names_no_user_address_key_or_command(tmp_path: Path) -> None:
    from test_qshd_processes import ME

    text, fingerprint = _logged_session(tmp_path, "QUIET").rsplit("\n", 1)
    assert "listening on" in text and "listener stopped" in text  # start and stop only
    for needle in (ME, SOURCE, "zero-log-marker", "echo", fingerprint):
        assert needle not in text, (needle, text)


@needs_root
def test_loglevel_verbose_shows_the_fingerprint_of_the_key_that_logged_in(
        tmp_path: Path) -> None:
    text, fingerprint = _logged_session(tmp_path, "VERBOSE").rsplit("\n", 1)
    assert f"Accepted key mldsa65 {fingerprint} found at " in text, text
    assert SOURCE in text  # INFO's lines are there too


# --------------------------------------------------------------------------- nothing left behind


def _qsh_on_a_terminal(qshd: Qshd, user: str, *command: str) -> tuple[subprocess.Popen[bytes],
                                                                       int]:
    """``python -m qsh`` with a pseudo-terminal as its controlling terminal (so it asks
    for a password there); returns the process and the terminal's master end."""
    known = qshd.directory / "known_hosts"
    known.write_text(format_line(f"[127.0.0.1]:{qshd.port}", qshd.host_key) + "\n")
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(
            [PYTHON, "-m", "qsh", "-p", str(qshd.port), "-o", f"UserKnownHostsFile={known}",
             "-o", "StrictHostKeyChecking=yes", f"{user}@{LOCAL}", *command],
            stdin=slave, stdout=slave, stderr=slave, cwd=qshd.directory,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            preexec_fn=lambda: (_unlimited_cores(), _controlling_terminal(slave)))
    finally:
        os.close(slave)
    return process, master


def _read_until(fd: int, marker: bytes, timeout: float = 20) -> bytes:
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {seen!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, f"terminal closed before {marker!r}: {seen!r}"
            seen += chunk
    return seen


@needs_root
@pytest.mark.slow
class _KeyedSession:
    """A password login from this process (in a thread of its own), so that the test knows
    the session's keys: the client's sending key is the server's receiving key and the
    other way round. It stays logged in until the daemon's processes are gone."""

    def __init__(self, qshd: Qshd, user: str, password: bytes) -> None:
        self.keys: list[bytes] = []
        self.address: tuple[str, int] | None = None
        self.failure: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(qshd, user,
                                                                             password),),
                                        daemon=True)
        self._thread.start()
        assert self._ready.wait(60) and self.failure is None, self.failure

    async def _main(self, qshd: Qshd, user: str, password: bytes) -> None:
        from test_qshd_processes import execute, login
        try:
            client = await login(qshd, user=user, password=password)
            # A command first: the user's process has then done all it does for a session.
            assert await execute(client, "echo ready") == (b"ready\n", b"", 0)
            transport = client.core.transport
            assert transport is not None and client.transport is not None
            self.keys = [bytes(transport.sealer.key_material()[0]),
                         bytes(transport.opener.key_material()[0])]
            self.address = client.transport.get_extra_info("sockname")[:2]
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            self._ready.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(60):
                await client.wait_closed()
        client.abort()

    def join(self) -> None:
        self._thread.join(70)


def test_killed_processes_leave_no_password_host_key_or_session_key_in_a_core_or_log(
        tmp_path: Path, accounts: Accounts) -> None:  # noqa: F811
    """A password login and a running session, logged at DEBUG3, and a second login whose
    session keys the test knows; then every process gets SIGABRT (a signal that dumps core
    where a core is allowed: SIGKILL never does) and what is left gets SIGKILL. Neither the
    core directories nor the log hold the password, a slice of the host key's private half
    or a session key."""
    from test_qshd_processes import ME, PASSWORD

    from common.accounts.keys import HostKey

    for directory in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        directory.chmod(0o755)
    prepare(tmp_path, accounts)
    qshd = start_daemon(tmp_path, config_text(tmp_path, f"PrivsepUser {accounts.privsep.name}",
                                              "PerSourcePenalties no", "LogLevel DEBUG3"))
    signing_key = HostKey.load(tmp_path / "host_key").signing_key
    needles = [PASSWORD, signing_key[:32], signing_key[len(signing_key) // 2:][:32]]
    client, master = _qsh_on_a_terminal(qshd, ME, "echo logged-in; sleep 30")
    cwds: set[Path] = set()
    try:
        _read_until(master, b"password: ")
        os.write(master, PASSWORD + b"\n")
        _read_until(master, b"logged-in")
        user = user_process_of(qshd, client_address(client, qshd.port), 0, timeout=20)
        keyed = _KeyedSession(qshd, ME, PASSWORD)
        assert keyed.address is not None and all(len(key) >= 16 for key in keyed.keys)
        needles += [form for key in keyed.keys  # raw, and as a log line would print it
                    for form in (key, key.hex().encode(), base64.b64encode(key))]
        second = user_process_of(qshd, keyed.address, 0, timeout=20)
        processes = [client.pid, *user.holders, user.monitor, *second.holders,
                     second.monitor, qshd.pid]
        for pid in processes:
            cwds.add(Path(os.readlink(f"/proc/{pid}/cwd")))
        before = {cwd: {p.name for p in cwd.iterdir()} for cwd in cwds}
        os.kill(client.pid, signal.SIGSTOP)
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
        os.kill(client.pid, signal.SIGCONT)
        wait_gone(processes)
    finally:
        for pid in [client.pid, *descendants(qshd.pid), qshd.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        client.wait(10)
        qshd.process.wait(10)
        os.close(master)
        if "keyed" in locals():
            keyed.join()
    time.sleep(0.3)
    cores = [cwd / name for cwd in cwds for name in
             {p.name for p in cwd.iterdir()} - before.get(cwd, set()) if name.startswith("core")]
    assert not cores, f"core files: {cores}"
    for path in [*tmp_path.rglob("*"), *cores]:
        if path.is_file() and path.name not in ("host_key", "id_test", "passwd"):
            data = path.read_bytes()
            assert not [n for n in needles if n in data], f"a secret in {path}"
    text = qshd.log_text()
    assert "DEBUG" in text or "debug" in text or "Accepted password" in text
    assert PASSWORD.decode() not in text


def test_a_forked_child_closing_a_secret_leaves_the_parents_intact() -> None:
    """memfd_secret pages are shared across fork: a child's exit path (wipe_all) must not
    zero what the parent still uses."""
    secret = Secret(b"parent's key")
    try:
        pid = os.fork()
        if pid == 0:
            wipe_all()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert secret.bytes() == b"parent's key"
    finally:
        secret.close()


@pytest.mark.parametrize("program", ["qsh", "qcp"])
def test_the_clients_are_hardened_while_they_wait_for_a_server(tmp_path: Path,
                                                               program: str) -> None:
    """qsh and qcp, held at the handshake by a server that accepts and says nothing: their
    core limit is 0 and their memory is closed to their own uid."""
    server = socket.create_server((LOCAL, 0))
    port = server.getsockname()[1]
    target = [f"{LOCAL}", "true"] if program == "qsh" else [str(tmp_path / "f"),
                                                             f"{LOCAL}:/tmp/x"]
    (tmp_path / "f").write_text("x")
    flag = "-p" if program == "qsh" else "-P"
    client = subprocess.Popen(
        [PYTHON, "-m", program, flag, str(port), "-o", "ConnectTimeout=20", *target],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=_unlimited_cores, start_new_session=True)
    try:
        server.settimeout(20)
        held, _ = server.accept()
        with held:
            assert client.poll() is None
            assert limits(client.pid)["Max core file size"][0] == "0"
            if os.geteuid() == 0:
                assert not mem_readable_by_owner(client.pid)
            else:  # the same uid as the test: a plain open is the check
                with pytest.raises(PermissionError):
                    open(f"/proc/{client.pid}/mem", "rb").close()
    finally:
        client.kill()
        client.wait(10)
        server.close()


@needs_root
def test_the_monitor_holds_no_host_key_once_the_login_is_decided(tmp_path: Path) -> None:
    """The monitor lives as long as the session (it keeps the accounting); the host keys it
    signed with are zeroed, and the backend's cache of expanded keys dropped, once the
    login is decided: root reading its memory finds no slice of the private half."""
    import asyncio

    from test_qshd_processes import local_address, login, memory_contains, start_qshd

    from common.accounts.keys import HostKey

    prepare(tmp_path)
    qshd = start_qshd(tmp_path, config_text(tmp_path, "PerSourcePenalties no"))
    try:
        signing_key = HostKey.load(tmp_path / "host_key").signing_key
        needles = [signing_key[:32], signing_key[len(signing_key) // 2:][:32]]

        async def check() -> None:
            client = await login(qshd)
            try:
                processes = user_process_of(qshd, local_address(client), os.geteuid())
                assert not memory_contains(processes.monitor, needles)
            finally:
                client.abort()

        asyncio.run(asyncio.wait_for(check(), 30))
    finally:
        stop_qshd(qshd)


@needs_root
def test_the_qsh_client_holds_no_copy_of_the_typed_password_during_the_session(
        tmp_path: Path) -> None:
    """A password typed at qsh's prompt is read into one buffer, moved into a Secret and
    zeroed once the server has answered: root reading the client's memory mid-session
    finds it nowhere (before, the prompt's str and bytes copies were still there)."""
    from test_qshd_processes import ME, PASSWORD, memory_contains, start_qshd

    prepare(tmp_path)
    qshd = start_qshd(tmp_path, config_text(tmp_path, "PerSourcePenalties no"))
    client, master = _qsh_on_a_terminal(qshd, ME, "echo logged-in; sleep 30")
    try:
        _read_until(master, b"password: ")
        os.write(master, PASSWORD + b"\n")
        _read_until(master, b"logged-in")
        assert not memory_contains(client.pid, [PASSWORD])
    finally:
        client.kill()
        client.wait(10)
        os.close(master)
        stop_qshd(qshd)


def test_scrub_zeroes_a_copy_a_library_needed_as_bytes() -> None:
    from common.crypto.secret import scrub

    copy = bytes(range(1, 65))  # a fresh object, as Secret.bytes() makes
    scrub(copy)
    assert copy == bytes(64)
    text = "".join(["QUJD", "REVG"] * 8)  # a key file's base64 text
    scrub(text)
    assert set(text) == {"0"}
    scrub(b"x")  # the shared one-byte objects are left alone
    assert bytes([120]) == b"x"


_WIPE_ON_SIGNAL = """
import os, sys, time
from common.crypto import secret as module
close = module.Secret.close
def traced(self):
    if not self.closed:  # os.write: the signal may land inside print("ready")'s flush
        os.write(1, b"wiped %d\\n" % len(self))
    close(self)
module.Secret.close = traced
key = module.Secret(b"k" * 48)
module.wipe_on_signals()
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_wipes_every_secret_then_ends_the_process_as_it_would(sig: int) -> None:
    child = subprocess.Popen([PYTHON, "-c", _WIPE_ON_SIGNAL], stdout=subprocess.PIPE,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(sig)
        out, _ = child.communicate(timeout=10)
        assert out == b"wiped 48\n"
        assert child.returncode == -sig  # the parent sees the same death
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# --------------------------------------------------------------------------- session keys

_SESSION = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from common.crypto import algorithms
from helpers import established_pair, pump

out = int(sys.argv[2])

def leak(tag, data):  # straight to the pipe: no copy of ours stays behind (writev: a
    # concatenation would be a bytes object holding the key, freed but not cleared, which
    # the search below then finds: the test's own copy, not the code's)
    os.writev(out, [tag, len(data).to_bytes(2, "big"), data])

# Observe (not change) every KEM shared secret, both ends: the handshake's and each rekey's.
encapsulate, decapsulate = algorithms.XWing.encapsulate, algorithms._XWingPrivateKey.decapsulate
def spy_encapsulate(self, public, rng):
    ciphertext, secret = encapsulate(self, public, rng)
    leak(b"S", secret)
    return ciphertext, secret
def spy_decapsulate(self, ciphertext):
    secret = decapsulate(self, ciphertext)
    leak(b"S", secret)
    return secret
algorithms.XWing.encapsulate = spy_encapsulate
algorithms._XWingPrivateKey.decapsulate = spy_decapsulate

client, server = established_pair(client_seed=None, server_seed=None)
cid = client.mux.open_channel("session")
pump(client, server)
for _ in range(3):
    for conn in (client, server):
        t = conn.transport
        leak(b"K", t.sealer.key_material()[0])
        leak(b"K", t.opener.key_material()[0])
        leak(b"C", t._tx_chain)
        leak(b"C", t._rx_chain)
    for n in range(200):  # traffic under each key, to churn the heap as a session does
        client.mux.send_data(cid, bytes([n]) * 3000)
        pump(client, server)
        server.events_received()
    client.request_rekey()
    server.request_rekey()
    pump(client, server)
assert client.transport.rekeys_sent == 3 and server.transport.rekeys_sent == 3
os.write(out, b".")
time.sleep(60)
"""


def _frames_complete(data: bytes) -> bool:
    """Whether ``data`` holds whole ``tag, u16 size, bytes`` frames up to the closing "."."""
    pos = 0
    while pos < len(data):
        if data[pos:pos + 1] == b".":
            return True
        if pos + 3 > len(data):
            return False
        pos += 3 + int.from_bytes(data[pos + 1:pos + 3], "big")
    return False


def test_the_frames_end_at_their_closing_dot_not_at_a_dot_inside_a_key() -> None:
    """The session test above once stopped reading at a key whose last byte, at the end of
    a read, was a "." (~1 run in 60), then failed parsing what it had (KeyError b'')."""
    key_ending_in_a_dot = b"K" + (2).to_bytes(2, "big") + b"a."
    assert key_ending_in_a_dot.endswith(b".")  # what the old check took for the end
    assert not _frames_complete(key_ending_in_a_dot)
    assert _frames_complete(key_ending_in_a_dot + b".")
    assert not _frames_complete(b"K\x00")  # a frame cut in its header


def _found_in_memory(pid: int, needles: list[bytes]) -> list[bytes]:
    """Which of ``needles`` are anywhere in the process's private writable memory."""
    found: set[bytes] = set()
    longest = max(len(n) for n in needles)
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split()
            if not fields[1].startswith("rw") or (len(fields) >= 6 and fields[5].startswith("/")
                                                  and not fields[5].startswith("[")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            for offset in range(start, end, 8 << 20):
                try:
                    mem.seek(offset)
                    data = mem.read(min((8 << 20) + longest, end - offset))
                except OSError:
                    break
                found.update(n for n in needles if n in data)
    return [n for n in needles if n in found]


@needs_root
def test_old_session_keys_and_kem_secrets_are_not_in_memory_after_rekeys() -> None:
    """A real process runs a session (both ends, in memory), with three rekeys of each
    direction and traffic under every key; root then reads its memory: no KEM shared secret
    (the handshake's or a rekey's: each is wiped once its keys are derived) and no key or
    chain value of a replaced key is anywhere. Only the current keys and chains may be
    (they are in use)."""
    read, write = os.pipe()
    child = subprocess.Popen([PYTHON, "-c", _SESSION, str(ROOT / "tests"), str(write)],
                             pass_fds=(write,), cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(write)
    try:
        data = b""
        deadline = time.monotonic() + 60
        # Until the "." that ends the frames: a key's last byte may be a "." too, at the end
        # of a read, so the end is found by walking the frames, not by the last byte.
        while not _frames_complete(data) and time.monotonic() < deadline:
            chunk = os.read(read, 65536)
            if not chunk:
                break
            data += chunk
        assert _frames_complete(data), (child.poll(), data[-50:])
        needles: dict[bytes, list[bytes]] = {b"S": [], b"K": [], b"C": []}
        pos = 0
        while data[pos:pos + 1] != b".":
            tag, size = data[pos:pos + 1], int.from_bytes(data[pos + 1:pos + 3], "big")
            needles[tag].append(data[pos + 3:pos + 3 + size])
            pos += 3 + size
        # 1 + 3 rekeys per direction: 4 secrets a direction, each seen at both ends.
        assert len(needles[b"S"]) == 16 and len(needles[b"K"]) == len(needles[b"C"]) == 12
        # Keys and chains are recorded before each rekey: all of them have been replaced.
        gone = needles[b"S"] + needles[b"K"] + needles[b"C"]
        found = _found_in_memory(child.pid, gone)
        kinds = {tag.decode(): [i for i, n in enumerate(ns) if n in found]
                 for tag, ns in needles.items()}
        assert not found, f"found in memory (S=KEM secret, K=key, C=chain): {kinds}"
    finally:
        child.kill()
        child.wait(10)
        os.close(read)
