"""The TCP connect a client starts before it loads its protocol stack (common/client/dial.py):
real sockets on 127.0.0.1, and a real ``qsh`` run for the order of things."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.client import dial
from common.client.config import ClientConfig, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_leftover() -> Iterator[None]:
    yield
    dial.drop()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield server


def config(port: int, *options: str) -> ClientConfig:
    return resolve("127.0.0.1", path="none", port=port, options=list(options))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once the block ends: nothing listens there


def test_the_socket_taken_is_connected_to_the_server(listener: socket.socket) -> None:
    cfg = config(listener.getsockname()[1])
    dial.start(cfg)
    accepted, _ = listener.accept()  # the connect was made by start(), nobody waited on it
    with accepted:
        sock = asyncio.run(dial.take(cfg, 5.0))
        assert sock is not None
        with sock:
            assert sock.getpeername() == listener.getsockname()
            sock.setblocking(True)
            sock.sendall(b"hello")
            assert accepted.recv(5) == b"hello"
    assert asyncio.run(dial.take(cfg, 5.0)) is None  # once only


def test_a_refused_connect_leaves_the_connect_to_the_usual_path() -> None:
    cfg = config(closed_port())
    dial.start(cfg)
    assert asyncio.run(dial.take(cfg, 5.0)) is None


def test_a_socket_for_another_host_is_not_used(listener: socket.socket) -> None:
    dial.start(config(listener.getsockname()[1]))
    assert asyncio.run(dial.take(config(closed_port()), 5.0)) is None
    assert dial._pending is None  # dropped, not kept for later


def test_an_old_socket_is_not_used(listener: socket.socket,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt (a key's passphrase) came between the start and the take: the server may
    be about to give up on a connection that said nothing."""
    cfg = config(listener.getsockname()[1])
    dial.start(cfg)
    monkeypatch.setattr(dial, "MAX_AGE", 0.0)
    assert asyncio.run(dial.take(cfg, 5.0)) is None


def test_a_connect_that_does_not_complete_times_out() -> None:
    """A listener whose backlog is full never completes another connect: ConnectTimeout
    bounds the wait, counted from the start, and ends it as the usual connect would."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the backlog (never accepted)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            cfg = config(port)
            dial.start(cfg)
            if dial._pending is None:
                pytest.skip("the kernel refused at once instead of leaving it pending")
            with pytest.raises(TimeoutError):
                asyncio.run(dial.take(cfg, 0.3))
        finally:
            for filler in fillers:
                filler.close()


def test_no_early_connect_through_a_proxy(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    dial.start(config(port, "ProxyCommand=nc %h %p"))
    assert dial._pending is None
    dial.start(config(port, "ProxyJump=somewhere"))
    assert dial._pending is None


def test_a_name_that_does_not_resolve_is_left_to_the_usual_path() -> None:
    dial.start(config(22, "HostName=no-such-host.invalid"))
    assert dial._pending is None


def test_qsh_connects_before_it_loads_asyncio(listener: socket.socket, tmp_path: Path) -> None:
    """The point of it: the server accepts (and starts its processes) while the client
    imports. The run's first import of asyncio looks whether the connect is under way."""
    probe = (
        "import sys\n"
        "class Look:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'asyncio':\n"
        "            from common.client import dial\n"
        "            sys.stderr.write(f'AT ASYNCIO: {dial._pending is not None}\\n')\n"
        "            sys.meta_path.remove(self)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Look())\n"
        "import atexit\n"
        "idna = lambda: 'encodings.idna' in sys.modules\n"
        "atexit.register(lambda: sys.stderr.write(f'IDNA: {idna()}\\n'))\n"
        "from qsh import entry\n"
        "entry.main(sys.argv[1:])\n")
    port = listener.getsockname()[1]
    listener.settimeout(30)
    client = subprocess.Popen(
        [sys.executable, "-c", probe, "-F", "none", "-p", str(port), "-o", "ConnectTimeout=20",
         "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "127.0.0.1", "true"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        accepted, _ = listener.accept()
        accepted.close()  # not a QSMP server: the client ends with a protocol error
        _, stderr = client.communicate(timeout=60)
    finally:
        client.kill()
        client.wait()
    assert "AT ASYNCIO: True" in stderr.splitlines(), stderr
    # An ASCII name is resolved without loading the IDNA codec (~1.5 ms at every start).
    assert "IDNA: False" in stderr.splitlines(), stderr
    assert client.returncode == 255, stderr
