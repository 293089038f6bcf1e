"""Tunnels without processes: the wire encodings against tests/vectors/tunnel.json, the
bounds on every field from the wire, forward specifications, the server's policy and its
configuration keywords, the SOCKS parser, and the in-process server's refusal to forward
for a user it does not run as."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from common import aio
from common.channels.tunnel import (
    DIRECT_TCPIP,
    FIRST_MAX,
    FORWARD_CHECK,
    FORWARDED_TCPIP,
    MAX_HOST,
    TCPIP_FORWARD,
    Endpoint,
    ForwardCheck,
    ForwardRequest,
    decode_bound_port,
    decode_first_max,
    decode_reason,
    encode_bound_port,
    encode_first_max,
    encode_reason,
    parse_forward,
)
from common.client.config import ConfigError as ClientConfigError
from common.client.config import resolve
from common.errors import InvalidInput
from common.forward import socks
from common.protocol.handshake import ClientHandshake
from common.protocol.mux import Mux
from common.protocol.negotiation import Offer
from common.wire import Writer
from qshd.config import ConfigError, parse
from qshd.tunnels import TunnelPolicy, parse_patterns

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "tunnel.json").read_text())


# --------------------------------------------------------------------------- vectors


def _endpoint_payload(host: bytes, port: int, originator: bytes = b"", oport: int = 0,
                      extra: bytes = b"") -> bytes:
    return (Writer().vbytes(host).u16(port).vbytes(originator).u16(oport).getvalue() + extra)


def _endpoint_payload_first(first: bytes) -> bytes:
    return _endpoint_payload(b"host", 80, extra=Writer().vbytes(first).getvalue())


def _mux_message(make: Any) -> bytes:
    mux = Mux(is_client=True)
    make(mux)
    (message,) = mux.take_outgoing()
    return bytes([message.msg_type]) + message.head + bytes(message.payload)


@pytest.mark.parametrize(("name", "kind"), [("direct_tcpip", DIRECT_TCPIP),
                                            ("forwarded_tcpip", FORWARDED_TCPIP)])
def test_channel_open_vectors(name: str, kind: str) -> None:
    v = VECTORS[name]
    endpoint = Endpoint(v["host"], v["port"], v["originator"], v["originator_port"])
    assert endpoint.encode().hex() == v["payload"]
    assert Endpoint.decode(bytes.fromhex(v["payload"])) == endpoint
    assert _mux_message(lambda m: m.open_channel(kind, endpoint.encode())).hex() == v["message"]


def test_direct_tcpip_with_first_bytes_vector() -> None:
    """The optional first-bytes field (§10B.1): encoded after the originator's port, read
    only by a side that offered it; and the forward-check success that offers it."""
    v = VECTORS["direct_tcpip_first"]
    endpoint = Endpoint(v["host"], v["port"], v["originator"], v["originator_port"],
                        bytes.fromhex(v["first"]))
    payload = bytes.fromhex(v["payload"])
    assert endpoint.encode() == payload
    assert payload.startswith(bytes.fromhex(VECTORS["direct_tcpip"]["payload"]))
    assert Endpoint.decode(payload, first_max=FIRST_MAX) == endpoint
    with pytest.raises(InvalidInput, match="trailing"):  # not offered: not accepted
        Endpoint.decode(payload)
    assert _mux_message(lambda m: m.open_channel(DIRECT_TCPIP, payload)).hex() == v["message"]
    # Without first bytes the payload is the old one, byte for byte, and a server that
    # offers first bytes still reads an open without them (a client that does not send any).
    plain = VECTORS["direct_tcpip"]
    without = Endpoint(plain["host"], plain["port"], plain["originator"],
                       plain["originator_port"], b"")
    assert without.encode().hex() == plain["payload"]
    assert Endpoint.decode(bytes.fromhex(plain["payload"]), first_max=FIRST_MAX) == without
    offer = VECTORS["forward_check_first_max"]
    assert encode_first_max(offer["first_max"]).hex() == offer["payload"]
    assert decode_first_max(bytes.fromhex(offer["payload"])) == offer["first_max"]


@pytest.mark.parametrize(("payload", "first_max", "why"), [
    (_endpoint_payload_first(b"x" * 101), 100, "exceeds"),
    (_endpoint_payload_first(b""), 100, "empty first"),
    (_endpoint_payload_first(b"x") + b"\0", 100, "trailing"),
    (_endpoint_payload_first(b"x")[:-1], 100, "truncated"),
])
def test_first_bytes_are_bounded(payload: bytes, first_max: int, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        Endpoint.decode(payload, first_max=first_max)


def test_first_bytes_offer_decodes_leniently_and_is_capped() -> None:
    """An empty success (a server without the extension) or one that does not decode offers
    nothing; an offer above FIRST_MAX is taken as FIRST_MAX (the client never sends more
    than our own bound); the encoder refuses more than FIRST_MAX."""
    assert decode_first_max(b"") == 0
    assert decode_first_max(b"\0\0\x40") == 0
    assert decode_first_max(b"\0\0\0\x10\0") == 0
    assert decode_first_max(encode_first_max(0xFFFFFFFF)) == FIRST_MAX
    with pytest.raises(InvalidInput, match="exceed"):
        Endpoint("h", 1, first=b"x" * (FIRST_MAX + 1)).encode()


def test_global_request_vectors() -> None:
    v = VECTORS["tcpip_forward"]
    request = ForwardRequest(v["address"], v["port"])
    assert request.encode().hex() == v["payload"]
    assert ForwardRequest.decode(bytes.fromhex(v["payload"])) == request
    assert _mux_message(lambda m: m.global_request(TCPIP_FORWARD, request.encode())).hex() == (
        v["message"])
    v = VECTORS["forward_check"]
    check = ForwardCheck(v["host"], v["port"])
    assert check.encode().hex() == v["payload"]
    assert _mux_message(lambda m: m.global_request(FORWARD_CHECK, check.encode())).hex() == (
        v["message"])
    assert ForwardCheck("", 0).encode().hex() == VECTORS["forward_check_any"]["payload"]
    assert encode_bound_port(VECTORS["bound_port"]).hex() == VECTORS["bound_port_payload"]
    assert decode_bound_port(bytes.fromhex(VECTORS["bound_port_payload"])) == 8022
    assert encode_reason(VECTORS["reason"]).hex() == VECTORS["reason_payload"]
    assert decode_reason(bytes.fromhex(VECTORS["reason_payload"])) == VECTORS["reason"]


# --------------------------------------------------------------------------- bounds




@pytest.mark.parametrize(("payload", "why"), [
    (_endpoint_payload(b"h" * (MAX_HOST + 1), 80), "exceeds"),
    (_endpoint_payload(b"", 80), "empty host"),
    (_endpoint_payload(b"host", 0), "port 0"),
    (_endpoint_payload(b"ho\nst", 80), "control"),
    (_endpoint_payload(b"a/b", 80), "slash"),
    (_endpoint_payload(b"\xff", 80), "UTF-8"),
    (_endpoint_payload(b"host", 80, b"o" * (MAX_HOST + 1)), "exceeds"),
    (_endpoint_payload(b"host", 80, extra=b"\0"), "trailing"),
    (Writer().u32(0xFFFFFFFF).getvalue(), "exceeds"),  # a length far beyond the payload
    (b"\0\0\0\x04ho", "truncated"),
])
def test_endpoint_fields_are_bounded(payload: bytes, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        Endpoint.decode(payload)


def test_host_of_255_bytes_is_the_limit() -> None:
    host = "h" * MAX_HOST
    assert Endpoint.decode(_endpoint_payload(host.encode(), 1)).host == host


def test_forward_check_and_request_bounds() -> None:
    with pytest.raises(InvalidInput):
        ForwardCheck.decode(Writer().text("").u16(80).getvalue())  # a port without a host
    with pytest.raises(InvalidInput):
        ForwardCheck.decode(Writer().text("db").u16(0).getvalue())
    assert ForwardRequest.decode(Writer().text("").u16(0).getvalue()) == ForwardRequest("", 0)
    with pytest.raises(InvalidInput):
        decode_bound_port(b"\0\0")
    assert decode_reason(b"\x00") == ""  # malformed: no reason, not an error


# --------------------------------------------------------------------------- specs


def test_forward_specs_as_ssh_writes_them() -> None:
    spec = parse_forward("local", "8080:localhost:80")
    assert (spec.bind, spec.port, spec.host, spec.host_port) == ("", 8080, "localhost", 80)
    spec = parse_forward("local", "127.0.0.1:8080:[::1]:80")
    assert (spec.bind, spec.port, spec.host, spec.host_port) == ("127.0.0.1", 8080, "::1", 80)
    assert parse_forward("remote", "0:localhost:22").port == 0  # any port, remotely
    assert parse_forward("dynamic", "1080").port == 1080
    assert parse_forward("dynamic", "[::1]:1080").bind == "::1"
    assert parse_forward("local", "8080/host/80").host == "host"
    for kind, text in (("local", "8080"), ("local", "0:h:80"), ("local", "8080:h:99999"),
                       ("local", "x:h:80"), ("dynamic", "a:b:c"), ("local", "[::1:80:h:1"),
                       ("remote", "1:h h:2")):
        with pytest.raises(ValueError):
            parse_forward(kind, text)


def test_client_config_keywords(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host db\n  LocalForward 5432 127.0.0.1:5432\n  DynamicForward 1080\n"
                      "  RemoteForward 127.0.0.1:2222 localhost:22\n"
                      "  ExitOnForwardFailure yes\n")
    cfg = resolve("db", path=config)
    assert [(f.kind, f.port, f.host, f.host_port) for f in cfg.forwards] == [
        ("local", 5432, "127.0.0.1", 5432), ("dynamic", 1080, "", 0),
        ("remote", 2222, "localhost", 22)]
    assert cfg.exit_on_forward_failure is True
    assert resolve("other", path=config).forwards == []
    assert resolve("other", path=config).exit_on_forward_failure is None
    config.write_text("LocalForward 5432\n")
    with pytest.raises(ClientConfigError, match="config:1"):
        resolve("db", path=config)


# --------------------------------------------------------------------------- policy


def test_policy_local() -> None:
    assert TunnelPolicy().local_refusal("anything", 1) is None
    assert "AllowTcpForwarding" in (TunnelPolicy(allow="no").local_refusal("h", 1) or "")
    assert "AllowTcpForwarding" in (TunnelPolicy(allow="remote").local_refusal("h", 1) or "")
    assert TunnelPolicy(allow="local").local_refusal("h", 1) is None
    policy = TunnelPolicy(permit_open=parse_patterns("127.0.0.1:* db.*:5432 [::1]:80",
                                                     host_optional=False))
    assert policy.local_refusal("127.0.0.1", 9) is None
    assert policy.local_refusal("DB.internal", 5432) is None
    assert policy.local_refusal("::1", 80) is None
    assert "PermitOpen" in (policy.local_refusal("db.internal", 5433) or "")
    assert "PermitOpen" in (policy.local_refusal("127.0.0.2", 9) or "")
    assert policy.local_refusal("", 0) is None  # -D: some destination may be allowed
    assert "PermitOpen none" in (TunnelPolicy(permit_open=()).local_refusal("", 0) or "")


def test_policy_remote_and_gateway_ports() -> None:
    assert TunnelPolicy().listen_address("0.0.0.0") == ""  # GatewayPorts no: loopback
    assert TunnelPolicy(gateway_ports="yes").listen_address("") == "*"
    assert TunnelPolicy(gateway_ports="clientspecified").listen_address("127.0.0.2") == (
        "127.0.0.2")
    assert TunnelPolicy().remote_refusal("", 8022) is None
    assert "AllowTcpForwarding" in (TunnelPolicy(allow="local").remote_refusal("", 1) or "")
    policy = TunnelPolicy(permit_listen=parse_patterns("8022 localhost:9000",
                                                       host_optional=True))
    assert policy.remote_refusal("", 8022) is None
    assert policy.remote_refusal("", 9000) is None
    assert "PermitListen" in (policy.remote_refusal("", 8023) or "")
    wide = TunnelPolicy(permit_listen=policy.permit_listen, gateway_ports="yes")
    assert "PermitListen" in (wide.remote_refusal("", 8022) or "")  # "*" is not localhost


def test_server_config_keywords() -> None:
    cfg = parse("AllowTcpForwarding local\nPermitOpen 127.0.0.1:80 [::1]:*\n"
                "PermitListen 8022\nGatewayPorts clientspecified\n")
    assert cfg.tunnel_policy == TunnelPolicy(
        allow="local", permit_open=(("127.0.0.1", "80"), ("::1", "*")),
        permit_listen=(("localhost", "8022"),), gateway_ports="clientspecified")
    assert parse("AllowTcpForwarding all\n").tunnel_policy.allow == "yes"
    assert parse("PermitOpen none\n").tunnel_policy.permit_open == ()
    assert parse("PermitOpen any\n").tunnel_policy.permit_open is None
    for bad in ("AllowTcpForwarding maybe", "PermitOpen host", "PermitOpen host:0",
                "PermitListen [::1", "GatewayPorts sometimes", "PermitOpen :80"):
        with pytest.raises(ConfigError, match="qshd_config:1"):
            parse(bad + "\n")


def test_qshd_t_checks_the_tunnel_keywords(tmp_path: Path) -> None:
    config = tmp_path / "qshd_config"
    config.write_text("HostKey /nonexistent\nPermitOpen db.internal\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "qshd", "-t", "-f", str(config)],
                            capture_output=True, cwd=ROOT, env=env, timeout=60)
    assert result.returncode != 0
    assert b"permitopen: bad pattern 'db.internal'" in result.stderr, result.stderr


# --------------------------------------------------------------------------- SOCKS


async def _parse_socks(data: bytes) -> tuple[socks.Request | None, bytes, str]:
    """Feed ``data`` to the parser through a real socket pair; the request or the error,
    and what the parser answered."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    theirs.sendall(data)
    theirs.shutdown(socket.SHUT_WR)
    request: socks.Request | None = None
    error = ""
    try:
        request = await socks.read_request(reader, writer)
    except (socks.SocksError, asyncio.IncompleteReadError, ValueError) as exc:
        error = str(exc)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    theirs.settimeout(5)
    answer = b""
    while chunk := theirs.recv(100):
        answer += chunk
    theirs.close()
    return request, answer, error


@pytest.mark.parametrize(("data", "host", "port"), [
    (b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50", "127.0.0.1", 80),
    (b"\x05\x02\x02\x00\x05\x01\x00\x03\x09localhost\x1f\x90", "localhost", 8080),
    (b"\x05\x01\x00\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x16", "::1", 22),
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01me\x00", "127.0.0.1", 80),
    (b"\x04\x01\x00\x50\x00\x00\x00\x07me\x00db.internal\x00", "db.internal", 80),
])
def test_socks_requests(data: bytes, host: str, port: int) -> None:
    request, _, error = asyncio.run(_parse_socks(data))
    assert request is not None, error
    assert (request.host, request.port) == (host, port)


@pytest.mark.parametrize(("data", "answer", "why"), [
    (b"\x05\x01\x02", b"\x05\xff", "no method"),  # username/password only
    (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07", "command 2"),
    (b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x00\x05\x08", "address type 9"),
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300, b"", "too long"),
    (b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x00", "bad host name"),
    (b"\x06", b"", "version byte 6"),
])
def test_socks_refusals(data: bytes, answer: bytes, why: str) -> None:
    request, answered, error = asyncio.run(_parse_socks(data))
    assert request is None
    assert why in error
    assert answered[:len(answer)] == answer


def test_socks_parser_byte_by_byte_and_what_follows() -> None:
    """The sans-IO parser -D's forwarder feeds: a request that arrives a byte at a time is
    answered (the SOCKS5 method choice as soon as the methods are in) and complete only at
    its last byte; bytes sent after it without waiting for the reply are kept as ``rest``
    (they go with the open)."""
    data = b"\x05\x01\x00\x05\x01\x00\x03\x09localhost\x1f\x90"
    parser = socks.Parser()
    answers = b""
    for i in range(len(data)):
        out, request = parser.feed(data[i:i + 1])
        answers += out
        if i < len(data) - 1:
            assert request is None
    assert answers == b"\x05\x00"
    assert request is not None and (request.host, request.port) == ("localhost", 8080)
    assert request.reply(socks.SUCCEEDED) == b"\x05\x00\x00\x01" + bytes(6)
    parser = socks.Parser()
    out, request = parser.feed(b"\x04\x01\x00\x50\x00\x00\x00\x07me\x00db\x00GET /")
    assert out == b"" and request is not None
    assert (request.host, request.port, parser.rest) == ("db", 80, b"GET /")
    assert request.reply(socks.NOT_ALLOWED) == b"\x00\x5b" + bytes(6)
    parser = socks.Parser()
    parser.feed(b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 200)  # a user id, so far
    with pytest.raises(socks.SocksError, match="too long"):
        parser.feed(b"u" * 100)  # and no NUL within 255 bytes


# --------------------------------------------------------------------------- in-process


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in as root to the in-process server")
@pytest.mark.parametrize("same_user", [True, False])
def test_in_process_server_forwards_only_as_the_user(tmp_path: Path, same_user: bool) -> None:
    """qshd.server runs channels in its own process: it may forward for a user only when it
    already is that user. Root logging in as root: served; the same daemon believing it
    runs as another uid: refused, both the check and the channel."""
    import time

    from common.accounts.keys import HostKey
    from common.accounts.passwd import PasswdFile
    from qshd.config import ServerConfig
    from qshd.server import Daemon

    me = pwd.getpwuid(0).pw_name
    PasswdFile(tmp_path / "pw").set_password(me, b"pw", cost=4)
    echo_sock = socket.create_server(("127.0.0.1", 0))
    echo_port = echo_sock.getsockname()[1]

    def echo_once() -> None:
        # Refused tunnels never connect: the accept then ends when the test closes the socket.
        with contextlib.suppress(OSError):
            conn, _ = echo_sock.accept()
            with conn:
                conn.sendall(conn.recv(100))

    threading.Thread(target=echo_once, daemon=True).start()

    async def main() -> tuple[tuple[bool, bytes] | None, str]:
        key = HostKey.generate("mldsa65", now=time.time())
        daemon = Daemon(ServerConfig(passwd_file=tmp_path / "pw", permit_root_login="yes",
                                     port=0, listen_addresses=["127.0.0.1"]), [key])
        if not same_user:
            daemon.euid = 4242  # as if it ran as another account
        await daemon.start()
        try:
            client = await aio.connect("127.0.0.1", daemon.port,
                                       handshake=ClientHandshake(Offer(), key.public),
                                       user=me, password=b"pw")
            assert await client.wait_authenticated() is None
            answer = await client.global_request(
                FORWARD_CHECK, ForwardCheck("127.0.0.1", echo_port).encode())
            try:
                channel = await client.open_channel(
                    DIRECT_TCPIP, Endpoint("127.0.0.1", echo_port).encode())
            except aio.ChannelOpenError as exc:
                opened = f"refused: {exc.message}"
            else:
                channel.write(b"ping")
                opened = (await channel.readexactly(4)).decode()
            client.close()
            await client.wait_closed()
            return answer, opened
        finally:
            await daemon.close()

    answer, opened = asyncio.run(asyncio.wait_for(main(), 30))
    echo_sock.close()
    assert answer is not None
    if same_user:
        assert answer == (True, encode_first_max(FIRST_MAX))
        assert opened == "ping"
    else:
        assert answer[0] is False
        assert "does not run as the user" in decode_reason(answer[1])
        assert opened == ("refused: tunnels are not served by this server: it does not run "
                          "as the user")


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in as root to the in-process server")
def test_loopback_direct_tcpip_is_served_without_a_task(tmp_path: Path) -> None:
    """A permitted direct-tcpip to a loopback address is connected and answered where its
    open arrives (the connection's open hook), by callbacks: while it forwards, no channel
    handler task exists for it (one per tunnelled connection was most of a short
    connection's cost). A name still goes the task's way, and both forward."""
    import time

    from common.accounts.keys import HostKey
    from common.accounts.passwd import PasswdFile
    from qshd.config import ServerConfig
    from qshd.server import Daemon

    me = pwd.getpwuid(0).pw_name
    PasswdFile(tmp_path / "pw").set_password(me, b"pw", cost=4)
    echo_sock = socket.create_server(("127.0.0.1", 0))
    echo_port = echo_sock.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(100):
                conn.sendall(data)

    def echo() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = echo_sock.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()

    def handler_tasks() -> int:
        return sum(1 for t in asyncio.all_tasks()
                   if "_run_channel_handler" in repr(t.get_coro()))

    async def main() -> list[tuple[str, int]]:
        key = HostKey.generate("mldsa65", now=time.time())
        daemon = Daemon(ServerConfig(passwd_file=tmp_path / "pw", permit_root_login="yes",
                                     port=0, listen_addresses=["127.0.0.1"]), [key])
        await daemon.start()
        seen = []
        try:
            client = await aio.connect("127.0.0.1", daemon.port,
                                       handshake=ClientHandshake(Offer(), key.public),
                                       user=me, password=b"pw")
            assert await client.wait_authenticated() is None
            # As qsh does: the check first (the in-process server sets up tunnels then).
            assert await client.global_request(
                FORWARD_CHECK, ForwardCheck("127.0.0.1", echo_port).encode())
            for host in ("127.0.0.1", "localhost"):
                channel = await client.open_channel(
                    DIRECT_TCPIP, Endpoint(host, echo_port, first=b"pi").encode())
                channel.write(b"ng")
                seen.append(((await channel.readexactly(4)).decode(), handler_tasks()))
                channel.close()
                await channel.wait_closed()
            client.close()
            await client.wait_closed()
        finally:
            await daemon.close()
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    echo_sock.close()
    assert seen == [("ping", 0), ("ping", 1)]


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in as root to the in-process server")
def test_open_answer_leaves_with_the_first_answer(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With first bytes in the open, the server's acceptance waits for the destination's
    first answer and leaves with it: when open_channel returns, the echo is already there.
    A destination that says nothing still gets its channel answered, after ANSWER_DELAY
    (here lowered to a fifth of a second; the first case raised so that load cannot race
    it)."""

    import time

    from common.accounts.keys import HostKey
    from common.accounts.passwd import PasswdFile
    from common.forward import pump
    from qshd.config import ServerConfig
    from qshd.server import Daemon

    me = pwd.getpwuid(0).pw_name
    PasswdFile(tmp_path / "pw").set_password(me, b"pw", cost=4)
    far = socket.create_server(("127.0.0.1", 0))
    far_port = far.getsockname()[1]
    quiet: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = far.accept()  # the first: an echo, after a while
            with conn:
                data = conn.recv(100)
                time.sleep(0.3)
                conn.sendall(data)
            conn, _ = far.accept()  # the second: says nothing
            quiet.append(conn)

    threading.Thread(target=serve, daemon=True).start()

    async def main() -> tuple[int, float]:
        key = HostKey.generate("mldsa65", now=time.time())
        daemon = Daemon(ServerConfig(passwd_file=tmp_path / "pw", permit_root_login="yes",
                                     port=0, listen_addresses=["127.0.0.1"]), [key])
        await daemon.start()
        try:
            client = await aio.connect("127.0.0.1", daemon.port,
                                       handshake=ClientHandshake(Offer(), key.public),
                                       user=me, password=b"pw")
            assert await client.wait_authenticated() is None
            assert await client.global_request(
                FORWARD_CHECK, ForwardCheck("127.0.0.1", far_port).encode())
            monkeypatch.setattr(pump, "ANSWER_DELAY", 30.0, raising=False)
            channel = await client.open_channel(
                DIRECT_TCPIP, Endpoint("127.0.0.1", far_port, first=b"hello").encode())
            buffered = channel.stdout.buffered
            channel.close()
            monkeypatch.setattr(pump, "ANSWER_DELAY", 0.2, raising=False)
            start = time.monotonic()
            silent = await client.open_channel(
                DIRECT_TCPIP, Endpoint("127.0.0.1", far_port, first=b"hello").encode())
            waited = time.monotonic() - start
            silent.close()
            client.close()
            await client.wait_closed()
        finally:
            await daemon.close()
        return buffered, waited

    buffered, waited = asyncio.run(asyncio.wait_for(main(), 30))
    far.close()
    for conn in quiet:
        conn.close()
    assert buffered == 5
    assert 0.15 < waited < 10


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in as root to the in-process server")
def test_close_callback_runs_where_the_close_is_seen(tmp_path: Path) -> None:
    """A forwarder learns that its channel closed in the event processing that saw the
    peer's CLOSE, not a turn of the loop later (one turn per tunnelled connection): as soon
    as the channel reads as closed, its close callback has run."""
    import time

    from common.accounts.keys import HostKey
    from common.accounts.passwd import PasswdFile
    from qshd.config import ServerConfig
    from qshd.server import Daemon

    me = pwd.getpwuid(0).pw_name
    PasswdFile(tmp_path / "pw").set_password(me, b"pw", cost=4)
    far = socket.create_server(("127.0.0.1", 0))
    far_port = far.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = far.accept()
            with conn:
                while conn.recv(100):
                    pass

    threading.Thread(target=serve, daemon=True).start()

    async def main() -> list[str]:
        key = HostKey.generate("mldsa65", now=time.time())
        daemon = Daemon(ServerConfig(passwd_file=tmp_path / "pw", permit_root_login="yes",
                                     port=0, listen_addresses=["127.0.0.1"]), [key])
        await daemon.start()
        try:
            client = await aio.connect("127.0.0.1", daemon.port,
                                       handshake=ClientHandshake(Offer(), key.public),
                                       user=me, password=b"pw")
            assert await client.wait_authenticated() is None
            channel = await client.open_channel(DIRECT_TCPIP,
                                                Endpoint("127.0.0.1", far_port).encode())
            seen: list[str] = []
            channel.add_close_callback(lambda ch: seen.append("callback"))
            channel.close()
            deadline = time.monotonic() + 10
            while not channel.closed and time.monotonic() < deadline:
                await asyncio.sleep(0)
            seen.append("closed" if channel.closed else "never closed")
            client.close()
            await client.wait_closed()
            return seen
        finally:
            await daemon.close()

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    far.close()
    assert seen == ["callback", "closed"]


@pytest.mark.skipif(os.geteuid() != 0, reason="logs in as root to the in-process server")
@pytest.mark.parametrize("how", ["reset", "eof"])
def test_destination_that_ends_before_answering(tmp_path: Path, how: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """First bytes in the open, and the destination goes away before answering (a reset,
    or a plain close): the open is answered all the same, then the channel ends -- cut
    (reset) or with EOF (close) -- with nothing logged as an error on either side."""
    import logging
    import struct
    import time

    from common.accounts.keys import HostKey
    from common.accounts.passwd import PasswdFile
    from qshd.config import ServerConfig
    from qshd.server import Daemon

    me = pwd.getpwuid(0).pw_name
    PasswdFile(tmp_path / "pw").set_password(me, b"pw", cost=4)
    far = socket.create_server(("127.0.0.1", 0))
    far_port = far.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = far.accept()
            conn.recv(100)
            if how == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()

    async def main() -> str:
        key = HostKey.generate("mldsa65", now=time.time())
        daemon = Daemon(ServerConfig(passwd_file=tmp_path / "pw", permit_root_login="yes",
                                     port=0, listen_addresses=["127.0.0.1"]), [key])
        await daemon.start()
        try:
            client = await aio.connect("127.0.0.1", daemon.port,
                                       handshake=ClientHandshake(Offer(), key.public),
                                       user=me, password=b"pw")
            assert await client.wait_authenticated() is None
            assert await client.global_request(
                FORWARD_CHECK, ForwardCheck("127.0.0.1", far_port).encode())
            channel = await client.open_channel(
                DIRECT_TCPIP, Endpoint("127.0.0.1", far_port, first=b"hello").encode())
            try:
                data = await channel.read_to_eof()
                outcome = f"eof {data!r}"
            except Exception as exc:
                outcome = type(exc).__name__
            channel.close()  # our half: the server closes its side once both have ended
            await asyncio.wait_for(channel.wait_closed(), 10)
            client.close()
            await client.wait_closed()
            return outcome
        finally:
            await daemon.close()

    with caplog.at_level(logging.WARNING):
        outcome = asyncio.run(asyncio.wait_for(main(), 30))
    far.close()
    assert outcome in ("eof b''", "ConnectionLost", "ChannelClosedError")
    if how == "eof":
        assert outcome == "eof b''"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
