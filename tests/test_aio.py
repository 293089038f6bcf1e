"""The asyncio adapter on real loopback TCP: an in-process server on 127.0.0.1 port 0.

Each test runs its own event loop through :func:`run` (no pytest-asyncio), with a hard
deadline so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from common import aio
from common.accounts.keys import HostKey, PublicKey
from common.aio import socket_side as aio_connection
from common.aio.channel import ReadStream
from common.errors import (
    ErrorCode,
    QsmpError,
    RemoteReportedError,
    VerifyFailure,
)
from common.protocol.auth import AuthRequested
from common.protocol.handshake import ClientHandshake, ServerHandshake
from common.protocol.mux import GlobalRequest, OpenFailureReason
from common.protocol.negotiation import Offer
from common.protocol.transport import TransportSettings
from common.wire import HEADER_SIZE

ROOT = Path(__file__).resolve().parent.parent
HOST_KEY = HostKey.generate("mldsa65", now=time.time())
OTHER_KEY = HostKey.generate("mldsa65", now=time.time())
MiB = 1024 * 1024


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# --- a small server ---------------------------------------------------------------------------


class Recorder:
    """What the server's channel handlers saw, for assertions."""

    def __init__(self) -> None:
        self.sink_results: list[int | BaseException] = []
        self.sink_progress = 0


async def echo(channel: aio.Channel) -> None:
    """Echo stdout back; at EOF send the SHA-256 of what arrived on stderr."""
    channel.accept(b"echoing")
    digest = hashlib.sha256()
    async for chunk in channel:
        digest.update(chunk)
        channel.write(chunk)
        await channel.drain()
    channel.write_stderr(digest.digest())
    channel.write_eof()


def make_handler(recorder: Recorder) -> aio.ChannelHandler:
    async def on_channel(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        if channel.kind == "echo":
            await echo(channel)
        elif channel.kind == "sink":
            channel.accept()
            total = 0
            try:
                async for chunk in channel:
                    total += len(chunk)
                    recorder.sink_progress = total
            except aio.ConnectionLost as exc:
                recorder.sink_results.append(exc)
                raise
            recorder.sink_results.append(total)
            channel.write(total.to_bytes(8, "big"))
        elif channel.kind == "stall":  # accept, then read nothing until told to
            channel.accept()
            request = await channel.next_request()
            assert request is not None and request.name == "drain"
            channel.reply(True)
            await channel.read_to_eof()
        elif channel.kind == "requests":
            channel.accept()
            while (request := await channel.next_request()) is not None:
                if request.want_reply:
                    channel.reply(request.name == "upper", request.payload.upper())
        elif channel.kind == "boom":
            channel.accept()
            raise RuntimeError("handler bug")
        else:
            channel.reject(OpenFailureReason.UNKNOWN_CHANNEL_TYPE, f"no {channel.kind}")

    return on_channel


async def start_server(recorder: Recorder | None = None, *, step_timeout: float = 30.0,
                       host_key_grace: float = 120.0,
                       make_handshake: Callable[[], ServerHandshake] | None = None,
                       **kwargs: Any) -> aio.Server:
    def handshake() -> ServerHandshake:
        return ServerHandshake([HOST_KEY], step_timeout=step_timeout,
                               host_key_grace=host_key_grace)

    return await aio.serve("127.0.0.1", 0, make_handshake=make_handshake or handshake,
                           on_channel=make_handler(recorder or Recorder()), **kwargs)


async def dial(server: aio.Server, trusted: PublicKey | None = HOST_KEY.public,
               **kwargs: Any) -> aio.QsmpConnection:
    return await aio.connect("127.0.0.1", server.port,
                             handshake=ClientHandshake(Offer(), trusted), **kwargs)


async def server_side(server: aio.Server, client: aio.QsmpConnection) -> aio.QsmpConnection:
    """The server's connection object for ``client`` (matched by session id)."""
    for _ in range(200):
        for connection in server.connections:
            if connection.established and connection.session_id == client.session_id:
                return connection
        await asyncio.sleep(0.01)
    raise AssertionError("server side of the connection not found")


async def echo_roundtrip(connection: aio.QsmpConnection, size: int, seed: int) -> None:
    """Send ``size`` random bytes in random-sized writes; check the echo and the server's
    checksum against ours."""
    rnd = random.Random(seed)
    data = rnd.randbytes(size)
    channel = await connection.open_channel("echo")
    assert channel.reply_payload == b"echoing"

    async def write() -> None:
        view = memoryview(data)
        pos = 0
        while pos < size:
            n = rnd.choice((1, 13, 4096, 65536, 300_000, MiB))
            channel.write(bytes(view[pos : pos + n]))
            pos += n
            await channel.drain()
        channel.write_eof()

    async def read() -> bytes:
        digest = hashlib.sha256()
        total = 0
        async for chunk in channel:
            digest.update(chunk)
            total += len(chunk)
        assert total == size
        return digest.digest()

    _, echoed = await asyncio.gather(write(), read())
    reported = await channel.stderr.read_to_eof()
    expected = hashlib.sha256(data).digest()
    assert echoed == expected, "echo differs from what was sent"
    assert reported == expected, "server received something else"
    await channel.wait_closed()


# --- handshake and host keys -----------------------------------------------------------------


def test_handshake_with_trusted_key() -> None:
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            assert client.established and client.suite is not None
            assert client.suite.aead == "aes256gcm"
            assert client.host_key is not None and client.host_key.matches(HOST_KEY.public)
            peer = await server_side(server, client)
            assert peer.session_id == client.session_id and client.session_id
            await echo_roundtrip(client, 100_000, seed=1)
            client.close()
            await client.wait_closed()
            await peer.wait_closed()
            assert peer.terminated is not None and peer.terminated.code == ErrorCode.NONE
            assert peer.terminated.by_peer

    run(main())


def test_tofu_callback_accepts() -> None:
    seen: list[PublicKey] = []

    async def trust(key: PublicKey) -> bool:
        seen.append(key)
        await asyncio.sleep(0.05)  # a user thinking it over
        return True

    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server, trusted=None, on_host_key=trust)
            assert [k.fingerprint() for k in seen] == [HOST_KEY.public.fingerprint()]
            await echo_roundtrip(client, 10_000, seed=2)
            client.close()

    run(main())


def test_connect_timeout_pauses_while_the_host_key_is_decided() -> None:
    """A person reading a fingerprint takes longer than the whole connect timeout; the
    timeout stops for the decision and the connection completes."""
    async def slow_trust(key: PublicKey) -> bool:
        await asyncio.sleep(0.6)
        return True

    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server, trusted=None, on_host_key=slow_trust, timeout=0.4)
            await echo_roundtrip(client, 1000, seed=4)
            client.close()

    run(main())


def test_tofu_callback_rejects_and_server_carries_on() -> None:
    async def distrust(key: PublicKey) -> bool:
        return False

    async def main() -> None:
        async with await start_server() as server:
            with pytest.raises(VerifyFailure):
                await dial(server, trusted=None, on_host_key=distrust)
            with pytest.raises(VerifyFailure):  # no callback: unknown keys are refused
                await dial(server, trusted=None)
            with pytest.raises(RemoteReportedError) as pinned:  # a key the server lacks
                await dial(server, trusted=OTHER_KEY.public)
            assert pinned.value.code == ErrorCode.KEY_UNRECOGNIZED
            client = await dial(server)
            await echo_roundtrip(client, 1000, seed=3)
            client.close()

    run(main())


def test_tcp_nodelay_on_both_ends() -> None:
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            peer = await server_side(server, client)
            for connection in (client, peer):
                assert connection.transport is not None
                sock = connection.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            client.close()

    run(main())


def test_warm_runs_once_the_first_flight_is_on_its_way() -> None:
    """``warm`` (a client's imports for the next steps) runs while the server computes its
    answer: the first flight has already reached the server's socket when it is called."""
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            seen: list[int] = []

            def warm() -> None:
                accepted, _ = listener.accept()
                with accepted:
                    accepted.settimeout(5)
                    seen.append(len(accepted.recv(65536)))  # then closed: the connect fails

            with pytest.raises((QsmpError, OSError)):
                await aio.connect("127.0.0.1", listener.getsockname()[1],
                                  handshake=ClientHandshake(Offer(), None), warm=warm,
                                  timeout=10)
            assert len(seen) == 1 and seen[0] > HEADER_SIZE, seen

    run(main())


# --- channels --------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_channels_echo_100_mb_with_checksums() -> None:
    sizes = (34 * MiB, 33 * MiB, 33 * MiB)  # 100 MiB each way

    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            await asyncio.gather(*(echo_roundtrip(client, size, seed=10 + i)
                                   for i, size in enumerate(sizes)))
            client.close()

    run(main(), timeout=120)


def test_small_window_and_packets_still_deliver_everything() -> None:
    async def main() -> None:
        async with await start_server(window=64 * 1024, max_packet=4096) as server:
            client = await dial(server, window=32 * 1024, max_packet=1024)
            await asyncio.gather(echo_roundtrip(client, 3 * MiB, seed=20),
                                 echo_roundtrip(client, 1 * MiB, seed=21))
            client.close()

    run(main())


def test_slow_reader_throttles_the_writer() -> None:
    async def main() -> None:
        async with await start_server(window=256 * 1024) as server:
            client = await dial(server)
            channel = await client.open_channel("stall")
            channel.high_water = 0
            block = os.urandom(64 * 1024)
            for _ in range(16):  # 1 MiB against a 256 KiB window
                channel.write(block)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(channel.drain(), 0.3)
            assert channel.pending >= 1 * MiB - 256 * 1024
            assert await channel.request("drain") == (True, b"")
            await asyncio.wait_for(channel.drain(), 10)
            assert channel.pending == 0
            channel.write_eof()
            await channel.wait_closed()
            client.close()

    run(main())


def test_requests_replies_and_refusals() -> None:
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            channel = await client.open_channel("requests")
            assert await channel.request("upper", b"abc") == (True, b"ABC")
            assert await channel.request("lower", b"abc") == (False, b"ABC")
            assert await channel.request("noreply", want_reply=False) is None
            assert await channel.request("upper", b"x") == (True, b"X")
            channel.close()
            await channel.wait_closed()
            with pytest.raises(aio.ChannelOpenError) as refused:
                await client.open_channel("teleport")
            assert refused.value.reason == OpenFailureReason.UNKNOWN_CHANNEL_TYPE
            assert await client.global_request("anything") == (False, b"")
            client.close()

    run(main())


def test_a_global_request_handler_answers_at_once() -> None:
    """The handler's reply goes out when the handler returns, not with the connection's next
    input or timer: here nothing else is sent, so a reply left in the core would wait for a
    keep-alive (the connection's pump after the reply is what sends it)."""
    async def answer(_conn: aio.QsmpConnection, event: GlobalRequest) -> tuple[bool, bytes]:
        await asyncio.sleep(0.05)  # answers after the pump that delivered the request
        return True, bytes(event.payload).upper()

    async def main() -> None:
        async with await start_server(on_global_request=answer) as server:
            client = await dial(server)
            for word in (b"ping", b"again"):
                reply = await asyncio.wait_for(client.global_request("echo", word), 5)
                assert reply == (True, word.upper())
            client.close()

    run(main())


def test_channel_handler_bug_aborts_only_that_channel(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            boom = await client.open_channel("boom")
            assert await boom.read() == b""
            await boom.wait_closed()
            await echo_roundtrip(client, 50_000, seed=4)  # same connection, still fine
            client.close()

    with caplog.at_level(logging.ERROR, logger="qsh.aio"):
        run(main())
    assert any("channel handler failed" in r.getMessage() for r in caplog.records)


def test_read_sizes_readexactly_and_incomplete_read() -> None:
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            channel = await client.open_channel("echo")
            for piece in (b"abc", b"defgh", b"ij"):
                channel.write(piece)
            channel.write_eof()
            assert await channel.readexactly(4) == b"abcd"  # across records
            assert await channel.read(2) == b"ef"
            assert await channel.readexactly(3) == b"ghi"
            with pytest.raises(asyncio.IncompleteReadError) as short:
                await channel.readexactly(5)
            assert short.value.partial == b"j"
            assert await channel.read() == b"" and channel.at_eof()
            assert len(await channel.read_stderr()) == 32  # the digest, kept apart
            with pytest.raises(aio.ChannelClosedError):
                channel.write(b"after eof")
            await channel.wait_closed()
            client.close()

    run(main())


def test_server_opens_a_channel_to_the_client() -> None:
    async def client_side(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        assert channel.kind == "echo" and channel.payload == b"reverse"
        await echo(channel)

    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server, on_channel=client_side)
            peer = await server_side(server, client)
            await echo_roundtrip_from(peer, b"reverse")
            client.close()

    async def echo_roundtrip_from(connection: aio.QsmpConnection, payload: bytes) -> None:
        channel = await connection.open_channel("echo", payload)
        channel.write(b"ping")
        channel.write_eof()
        assert await channel.read_to_eof() == b"ping"
        assert await channel.stderr.read_to_eof() == hashlib.sha256(b"ping").digest()

    run(main())


def test_keepalive_timers_fire_on_an_idle_connection() -> None:
    async def main() -> None:
        settings = TransportSettings(keepalive_interval=0.05)
        async with await start_server(settings=settings) as server:
            client = await dial(server, settings=settings)
            peer = await server_side(server, client)
            transports = [c.core.transport for c in (client, peer)]
            before = [t.opener.sequence for t in transports if t is not None]
            await asyncio.sleep(0.5)
            after = [t.opener.sequence for t in transports if t is not None]
            # Each side received about ten requests and ten answers.
            assert all(b - a >= 8 for a, b in zip(before, after, strict=True)), (before, after)
            assert client.established and not client.is_closing and not peer.is_closing
            await echo_roundtrip(client, 1000, seed=15)
            client.close()

    run(main())


def test_server_stops_reading_a_peer_that_asks_for_replies_and_never_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of reply counts, not only channel data: a logged-in peer (this server
    needs no login) that floods global requests with want_reply and never reads makes the
    server pause reading once the high-water mark of replies waits, and only that. The
    marks are lowered so the flood reaches them in a fraction of a second; tests/flooder.py
    is its own process with its own socket."""
    high, low = 256 * 1024, 64 * 1024
    monkeypatch.setattr(aio_connection, "READ_PAUSE_HIGH_WATER", high, raising=False)
    monkeypatch.setattr(aio_connection, "READ_PAUSE_LOW_WATER", low, raising=False)
    key_file = tmp_path / "host_key.pub"
    HOST_KEY.save_public(key_file)

    async def main() -> None:
        async with await start_server() as server:
            flooder = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "tests" / "flooder.py"), str(server.port),
                str(key_file), "4", "global", stdout=asyncio.subprocess.PIPE, cwd=ROOT)
            assert flooder.stdout is not None
            try:
                assert (await flooder.stdout.readline()).strip() == b"established"
                [peer] = server.connections
                # Small kernel buffers at both ends (the flooder's receive buffer is fixed
                # too): on a loaded machine the server answers slowly, and with autotuned
                # buffers of several MiB every reply could fit in the kernel's, never
                # reaching the gate; this is about the gate, not about the kernel's buffers.
                sock = peer.transport.get_extra_info("socket") if peer.transport else None
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                most, paused_at = 0, None
                # Until the pause, with time to spare on a loaded machine (the flood is a
                # process of its own that must be scheduled), then a moment longer to see
                # that the waiting replies stay bounded.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if paused_at is not None:
                        deadline = min(deadline, time.monotonic() + 0.5)
                    most = max(most, peer.write_buffer_size)
                    if peer.transport is None:  # closed (by the flooder's end): seen enough
                        break
                    if not peer.transport.is_reading() and paused_at is None:
                        paused_at = peer.write_buffer_size
                    await asyncio.sleep(0.01)
            finally:
                flooder.kill()
                await flooder.wait()
            assert paused_at is not None and paused_at > high, (
                f"never stopped reading; {most} bytes of replies were waiting")
            # One receive buffer's worth of requests is answered before the pause applies.
            assert most < high + aio.RECEIVE_BUFFER_SIZE, most
            # Meanwhile another client is served as usual.
            client = await dial(server)
            await echo_roundtrip(client, 100_000, seed=16)
            client.close()

    run(main())


# --- rekey -----------------------------------------------------------------------------------


def test_rekey_in_the_middle_of_traffic_both_ways() -> None:
    async def main() -> None:
        settings = TransportSettings(rekey_bytes=8 * MiB)
        async with await start_server(settings=settings) as server:
            client = await dial(server, settings=settings)
            peer = await server_side(server, client)

            async def rekey_midway() -> None:
                await asyncio.sleep(0.05)
                client.request_rekey()
                peer.request_rekey()

            await asyncio.gather(echo_roundtrip(client, 24 * MiB, seed=5),
                                 echo_roundtrip(client, 8 * MiB, seed=6), rekey_midway())
            for connection in (client, peer):
                transport = connection.core.transport
                assert transport is not None
                assert transport.rekeys_sent >= 2, transport.rekeys_sent
                assert transport.rekeys_received >= 2, transport.rekeys_received
            client.close()

    run(main())


# --------------------------------------------------------------------------- login

USER_KEY = HostKey.generate("mldsa65", now=time.time())


async def start_login_server(decide: Callable[[aio.QsmpConnection, AuthRequested],
                                              Awaitable[bool]],
                             **kwargs: Any) -> aio.Server:
    return await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake([HOST_KEY]),
                           on_channel=make_handler(Recorder()), on_auth=decide, **kwargs)


def test_login_with_a_key_pipelined_then_channels_work() -> None:
    seen: list[AuthRequested] = []

    async def decide(connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        seen.append(request)
        return request.public_key == USER_KEY.public

    async def main() -> None:
        async with await start_login_server(decide) as server:
            client = await dial(server, user="alice", identity=USER_KEY)
            assert await client.wait_authenticated() is None
            assert client.user == "alice"
            await echo_roundtrip(client, 100_000, seed=20)
            [request] = seen
            assert request.user == "alice" and request.method == "publickey"
            server_conn = await server_side(server, client)
            assert server_conn.user == "alice"
            client.close()

    run(main())


def test_failed_password_then_success_over_tcp() -> None:
    async def decide(connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        await asyncio.sleep(0.01)  # a bcrypt check runs off the loop; decisions may wait
        return request.password == b"right"

    async def main() -> None:
        async with await start_login_server(decide) as server:
            client = await dial(server, user="alice", password=b"wrong")
            failed = await client.wait_authenticated()
            assert failed is not None and "password" in failed.methods
            assert client.user is None
            assert await client.login_password("alice", b"right") is None
            await echo_roundtrip(client, 1000, seed=21)
            client.close()

    run(main())


def test_too_many_failures_end_the_connection_server_carries_on() -> None:
    async def decide(connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        return request.password == b"right"

    async def main() -> None:
        async with await start_login_server(decide, max_auth_attempts=2) as server:
            client = await dial(server, user="alice", password=b"x")
            assert await client.wait_authenticated() is not None
            # The last allowed failure is answered, then the server ends the connection.
            assert await client.login_password("alice", b"y") is not None
            await asyncio.wait_for(client.wait_closed(), 10)
            assert client.terminated is not None
            assert client.terminated.code == ErrorCode.AUTHENTICATION_FAILURE
            assert client.terminated.by_peer
            other = await dial(server, user="alice", password=b"right")
            assert await other.wait_authenticated() is None
            other.close()

    run(main())


def test_a_login_on_an_ended_connection_fails_at_once() -> None:
    """No answer can come once the connection is over: the attempt must say so rather
    than wait for ever (qsh hung here when the server had closed during login)."""
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            peer = await server_side(server, client)
            peer.close("going away")
            await client.wait_closed()
            with pytest.raises(aio.ConnectionLost):
                await asyncio.wait_for(client.login_password("alice", b"pw"), 5)

    run(main())


# --- push delivery (set_consumer) and the channel handler installed after connecting ---------


def test_handler_installed_after_connecting_serves_server_opened_channels() -> None:
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            peer = await server_side(server, client)
            # No handler yet: refused, as before.
            with pytest.raises(aio.ChannelOpenError):
                await peer.open_channel("echo", b"early")

            async def on_channel(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
                assert connection is client
                await echo(channel)

            client.set_channel_handler(on_channel)
            channel = await peer.open_channel("echo", b"late")
            channel.write(b"ping")
            channel.write_eof()
            assert await channel.read_to_eof() == b"ping"
            client.set_channel_handler(None)
            with pytest.raises(aio.ChannelOpenError):
                await peer.open_channel("echo", b"again")
            client.close()

    run(main())


def test_consumer_gets_buffered_then_pushed_data_and_the_window_waits_for_grants() -> None:
    window = 256 * 1024
    chunks: list[bytes] = []
    eofs: list[bool] = []
    granting: list[aio.Channel] = []  # once set: grant as delivered

    def consume(data: bytes) -> None:
        chunks.append(data)
        for channel in granting:
            channel.grant(len(data))
    ready: asyncio.Queue[aio.Channel] = asyncio.Queue(1)

    async def on_channel(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        channel.accept()
        ready.put_nowait(channel)
        await channel.wait_closed()

    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server, window=window, on_channel=on_channel)
            peer = await server_side(server, client)
            sender = await peer.open_channel("push")
            sender.high_water = 0
            sender.write(b"first")
            mine = await asyncio.wait_for(ready.get(), 10)
            while mine.stdout.buffered < 5:
                await asyncio.sleep(0.01)
            # What was buffered comes at once; nothing is granted by delivery alone.
            mine.set_consumer(consume, lambda: eofs.append(True))
            assert b"".join(chunks) == b"first" and mine.stdout.buffered == 0
            block = os.urandom(64 * 1024)
            for _ in range(8):  # 512 KiB against a 256 KiB window
                sender.write(block)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sender.drain(), 0.3)
            assert sum(map(len, chunks)) == window  # exactly the window, then it stops
            mine.grant(window)
            granting.append(mine)
            await asyncio.wait_for(sender.drain(), 10)
            sender.write_eof()
            for _ in range(500):
                if eofs:
                    break
                await asyncio.sleep(0.01)
            assert eofs == [True]
            assert b"".join(chunks) == b"first" + block * 8
            assert mine.stdout.buffered == 0  # reads no longer see the stream
            client.close()

    run(main())


def test_open_channel_nowait_answers_by_callback() -> None:
    answers: list[tuple[aio.Channel | None, Exception | None]] = []

    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            client.open_channel_nowait("echo", b"", lambda c, e: answers.append((c, e)))
            client.open_channel_nowait("nosuch", b"", lambda c, e: answers.append((c, e)))
            for _ in range(500):
                if len(answers) == 2:
                    break
                await asyncio.sleep(0.01)
            (channel, error), (refused, why) = answers
            assert channel is not None and error is None and channel.is_open
            assert refused is None and isinstance(why, aio.ChannelOpenError)
            channel.write(b"ping")
            channel.write_eof()
            assert await channel.read_to_eof() == b"ping"
            # Unanswered when the connection ends: told so, with the reason.
            client.open_channel_nowait("echo", b"", lambda c, e: answers.append((c, e)))
            client.abort()
            await client.wait_closed()
            assert answers[2][0] is None and isinstance(answers[2][1], aio.ConnectionLost)

    run(main())


class _Grants:
    """What ReadStream needs of its channel when data is only read: the grant count."""

    def __init__(self) -> None:
        self.granted = 0

    def _consumed(self, n: int) -> None:
        self.granted += n


def test_a_read_across_chunks_after_a_partial_one_loses_nothing() -> None:
    """read(n) that finished the first chunk (read partly before) and took whole chunks
    after it kept the first chunk's old offset, so the next chunk was read from the wrong
    place: bytes lost, and the byte count then disagreed with the chunks (IndexError in a
    real qshd test, tests/test_transport.py, reading 1 MiB at a time)."""
    grants = _Grants()
    stream = ReadStream(grants)  # type: ignore[arg-type]
    for chunk in (b"0123456789", b"abcde", b"VWXYZ"):
        stream._feed(chunk)

    async def main() -> list[bytes]:
        return [await stream.read(3), await stream.read(12), await stream.read(-1)]

    assert run(main()) == [b"012", b"3456789abcde", b"VWXYZ"]
    assert grants.granted == 20 and stream.buffered == 0


def test_read_view_hands_on_the_records_without_a_copy_and_read_still_gives_bytes() -> None:
    """The copy engine takes file data with read_view: each chunk as the record carried
    it, a view of the record's own plaintext (never reused, so the caller may keep it);
    read() and readexactly() still return bytes, as every other reader expects."""
    async def main() -> None:
        async with await start_server() as server:
            client = await dial(server)
            channel = await client.open_channel("echo")
            data = os.urandom(600_000)
            channel.write(data)
            channel.write_eof()
            views: list[memoryview] = []
            while sum(map(len, views)) < 500_000:
                view = await channel.read_view()
                assert isinstance(view, memoryview) and isinstance(view.obj, bytes)
                views.append(view)
            head = await channel.readexactly(1000)
            rest = await channel.read()
            assert type(head) is bytes and type(rest) is bytes
            tail = await channel.read_to_eof()
            assert b"".join(views) + head + rest + tail == data
            assert len(await channel.read_stderr()) == 32
            assert len(await channel.read_view()) == 0 and channel.at_eof()
            await channel.wait_closed()
            client.close()

    run(main())
