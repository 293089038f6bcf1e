"""Handing an established, logged-in server connection to another process.

In memory, two real cores back to back (tests/helpers.py): the server logs the client in,
exports its state, and a core rebuilt from that state carries on -- channels, rekeys both
ways, keep-alives, chaff, a record cut in two by the handoff -- while the client never
notices. Then the refusals, the decoder against hostile states, and end to end over real
TCP: a pre-auth process that runs the handshake and login with aio and hands over, and a
second process that adopts the same socket and serves the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CLIENT_SEED, NOW, SERVER_SEED, host_key, pump, rng_for, take, terminations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import aio
from common.accounts.keys import HostKey
from common.crypto.rng import DeterministicRng
from common.errors import ErrorCode, UsageError
from common.protocol import handoff
from common.protocol.auth import AuthRequested, AuthSucceeded
from common.protocol.connection import Connection
from common.protocol.handoff import HandoffError
from common.protocol.handshake import ClientHandshake, ServerHandshake
from common.protocol.mux import ChannelData, ChannelOpened, ChannelOpenRequest
from common.protocol.negotiation import ChaffPolicy, Offer
from common.protocol.transport import TransportSettings
from common.wire import HEADER_SIZE, Writer

#: The process that takes over has its own monotonic clock, unrelated to the first one's.
LATER = 777.0
USER = "alice"
PASSWORD = b"correct horse"
PEER = Path(__file__).with_name("handoff_peer.py")


@functools.cache
def user_key() -> HostKey:
    return HostKey.generate("mldsa65", now=NOW, rng=DeterministicRng(b"qsh handoff user key"))


@functools.cache
def live_host_key() -> HostKey:
    """For tests on the real clock (helpers.host_key is valid around helpers.NOW)."""
    return HostKey.generate("mldsa65", now=time.time())


def logged_in(*, offer: Offer | None = None,
              client_settings: TransportSettings | None = None,
              server_settings: TransportSettings | None = None,
              accept: bool = True) -> tuple[Connection, Connection]:
    """A client and a login-requiring server; the client's password login is accepted
    (with ``accept``) and every byte delivered, as right before a handoff."""
    key = host_key()
    client = Connection(ClientHandshake(offer or Offer(), key.public, rng=rng_for(CLIENT_SEED)),
                        settings=client_settings, rng=rng_for(CLIENT_SEED))
    server = Connection(ServerHandshake((key,), rng=rng_for(SERVER_SEED)),
                        settings=server_settings, rng=rng_for(SERVER_SEED), require_auth=True)
    client.start(NOW)
    server.start(NOW)
    client.authenticate_password(USER, PASSWORD)
    pump(client, server, NOW)
    [request] = [e for e in server.events_received() if isinstance(e, AuthRequested)]
    assert request.user == USER
    if accept:
        server.accept_auth()
        pump(client, server, NOW)
        assert AuthSucceeded(USER) in client.events_received()
    return client, server


def hand_over(server: Connection, *, now: float = NOW, later: float = LATER,
              **kwargs: object) -> Connection:
    state = server.export_handoff(now)
    return Connection.from_handoff(state, now=later, rng=rng_for(b"second process"),
                                   **kwargs)  # type: ignore[arg-type]


def open_channel(client: Connection, server: Connection, now: float = NOW,
                 server_now: float = LATER) -> tuple[int, int]:
    cid = client.mux.open_channel("session")
    pump(client, server, now, server_now=server_now)
    [req] = [e for e in server.events_received() if isinstance(e, ChannelOpenRequest)]
    server.mux.accept_channel(req.channel_id)
    pump(client, server, now, server_now=server_now)
    assert any(isinstance(e, ChannelOpened) for e in client.events_received())
    return cid, req.channel_id


def received(conn: Connection) -> bytes:
    return b"".join(e.data for e in conn.events_received() if isinstance(e, ChannelData))


def assert_alive(*conns: Connection) -> None:
    for conn in conns:
        assert conn.terminated is None, conn.terminated


def round_trip(client: Connection, server: Connection, cid: int, sid: int, size: int,
               server_now: float = LATER) -> None:
    up, down = os.urandom(size), os.urandom(size)
    client.mux.send_data(cid, up)
    server.mux.send_data(sid, down)
    got_up, got_down = bytearray(), bytearray()

    def on_receive(conn: Connection) -> None:
        data = received(conn)
        if conn is server:
            got_up.extend(data)
            server.mux.acknowledge(sid, len(data))
        else:
            got_down.extend(data)
            client.mux.acknowledge(cid, len(data))

    pump(client, server, NOW, server_now=server_now, on_receive=on_receive)
    assert_alive(client, server)
    assert bytes(got_up) == up and bytes(got_down) == down


# --------------------------------------------------------------------------- carrying on


def test_handed_over_connection_serves_channels_both_ways() -> None:
    client, old = logged_in()
    new = hand_over(old)
    assert new.established and not new.pre_auth and new.authenticated_user == USER
    assert new.transport is not None and old.transport is not None
    assert new.transport.session_id == old.transport.session_id
    cid, sid = open_channel(client, new)
    round_trip(client, new, cid, sid, 300_000)
    # The server may open channels too (the mux is symmetric).
    sid2 = new.mux.open_channel("x-test")
    pump(client, new, NOW, server_now=LATER)
    [req] = [e for e in client.events_received() if isinstance(e, ChannelOpenRequest)]
    client.mux.accept_channel(req.channel_id)
    pump(client, new, NOW, server_now=LATER)
    assert any(isinstance(e, ChannelOpened) and e.channel_id == sid2
               for e in new.events_received())
    assert_alive(client, new)


def test_exporting_side_is_spent() -> None:
    """After export the old core never seals again (two processes under one key and
    sequence would reuse AEAD nonces), ends without an event, and has wiped its keys."""
    client, old = logged_in()
    handoff_state = old.export_handoff()
    assert old.closed and old.terminated is not None
    assert old.terminated.code == ErrorCode.NONE and not old.terminated.by_peer
    assert old.events_received() == []
    client.mux.open_channel("session")
    old.receive_data(take(client), NOW)
    old.handle_timer(NOW + 10_000)
    old.request_rekey()
    old.close()
    assert old.data_to_send() == [] and old.events_received() == []
    assert old.transport is not None
    with pytest.raises(UsageError):
        old.transport.sealer.key_material()
    with pytest.raises(UsageError):
        old.export_handoff()
    # And no repr of the state shows a key.
    state = handoff.decode(handoff_state)
    shown = repr(state)
    for secret in (state.transport.tx.key, state.transport.rx.key, state.transport.tx.chain):
        assert secret.hex() not in shown and repr(secret) not in shown


def test_rekeys_both_ways_after_handoff() -> None:
    client, old = logged_in()
    # One rekey each way before the handoff, so the carried chains are not the
    # handshake's: a wrong chain would make the next rekey's keys differ.
    client.request_rekey()
    old.request_rekey()
    pump(client, old, NOW)
    assert old.transport is not None and old.transport.rekeys_received == 1
    old.data_to_send()
    new = hand_over(old)
    assert new.transport is not None
    assert (new.transport.rekeys_sent, new.transport.rekeys_received) == (1, 1)
    cid, sid = open_channel(client, new)
    for _ in range(2):
        client.request_rekey()
        new.request_rekey()
        pump(client, new, NOW, server_now=LATER)
        round_trip(client, new, cid, sid, 50_000)
    assert (new.transport.rekeys_sent, new.transport.rekeys_received) == (3, 3)
    assert client.transport is not None
    assert (client.transport.rekeys_sent, client.transport.rekeys_received) == (3, 3)


def test_byte_budget_carries_over() -> None:
    """The byte-based rekey counts what the first process sent too."""
    budget = 200_000
    client, old = logged_in(server_settings=TransportSettings(rekey_bytes=budget))
    assert old.transport is not None
    old.transport._budget_used = budget - 1000  # as if the first process had sent this
    new = hand_over(old, settings=TransportSettings(rekey_bytes=budget))
    cid, sid = open_channel(client, new)
    assert new.transport is not None and new.transport.rekeys_sent == 0
    round_trip(client, new, cid, sid, 5000)
    assert new.transport.rekeys_sent == 1


def test_timers_are_carried_as_ages_not_clock_readings() -> None:
    interval, keepalive = 100.0, 40.0
    server_settings = TransportSettings(keepalive_interval=keepalive, rekey_interval=interval)
    client, old = logged_in(server_settings=server_settings)
    exported_at = NOW + 30.0  # key 30 s old, next keep-alive in 10 s
    old.handle_timer(exported_at - 1.0)  # nothing due yet
    assert old.data_to_send() == []
    new = hand_over(old, now=exported_at, settings=server_settings)
    assert new.next_timer() == pytest.approx(LATER + 10.0)
    assert new.transport is not None
    assert new.transport.next_timer() == pytest.approx(LATER + 10.0)
    new.handle_timer(LATER + 10.0)  # the keep-alive request
    pump(client, new, NOW + 40.0, server_now=LATER + 10.0)
    assert_alive(client, new)
    new.handle_timer(LATER + 50.0)  # the next keep-alive, a whole interval later
    pump(client, new, NOW + 80.0, server_now=LATER + 50.0)
    # The key was 30 s old at the export: the time-based rekey falls due 70 s after it.
    new.handle_timer(LATER + 69.9)
    assert new.data_to_send() == [] and new.transport.rekeys_sent == 0
    new.handle_timer(LATER + 70.0)
    pump(client, new, NOW + 100.0, server_now=LATER + 70.0)
    assert_alive(client, new)
    assert new.transport.rekeys_sent == 1


def test_outstanding_keepalive_is_answered_in_the_new_process() -> None:
    """A keep-alive request sent by the first process is answered to the second: the
    token travels, else the answer would be refused as a bad keep-alive."""
    server_settings = TransportSettings(keepalive_interval=5.0)
    client, old = logged_in(server_settings=server_settings)
    old.handle_timer(NOW + 5.0)
    request = take(old)
    assert request
    new = hand_over(old, now=NOW + 5.0, settings=server_settings)
    client.receive_data(request, NOW + 5.0)
    new.receive_data(take(client), LATER)
    assert_alive(client, new)
    new.handle_timer(LATER + 5.0)  # answered: the next request, not an expiry
    pump(client, new, NOW + 10.0, server_now=LATER + 5.0)
    assert_alive(client, new)


def test_unanswered_keepalive_still_expires_after_handoff() -> None:
    server_settings = TransportSettings(keepalive_interval=5.0)
    _client, old = logged_in(server_settings=server_settings)
    old.handle_timer(NOW + 5.0)
    take(old)  # the request is lost with the client
    new = hand_over(old, now=NOW + 5.0, settings=server_settings)
    new.handle_timer(LATER + 5.0)
    assert new.terminated is not None
    assert new.terminated.code == ErrorCode.KEEP_ALIVE_EXPIRED


def test_chaff_suite_carries_on() -> None:
    chaff = ChaffPolicy(True, 100, 200, 16, 64)
    client, old = logged_in(offer=Offer(chaff=chaff))
    assert old.transport is not None and old.transport.suite.chaff.enabled
    due = old.next_timer()
    assert due is not None and NOW < due <= NOW + 0.2
    new = hand_over(old)
    assert new.next_timer() == pytest.approx(LATER + (due - NOW))
    cid, sid = open_channel(client, new)
    t_client, t_server = NOW, LATER
    for _ in range(20):  # chaff both ways, interleaved with data
        t_client += 0.2
        t_server += 0.2
        client.handle_timer(t_client)
        new.handle_timer(t_server)
        client.mux.send_data(cid, b"ping")
        pump(client, new, t_client, server_now=t_server)
        assert received(new) == b"ping"
    assert_alive(client, new)
    round_trip(client, new, cid, sid, 10_000, server_now=t_server)


@pytest.mark.parametrize("cut_at", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 7, -1])
def test_record_cut_across_the_handoff(cut_at: int) -> None:
    """The client's next records reach the first process in part: the unread bytes travel
    with the state, the rest arrives at the second, and nothing is lost."""
    client, old = logged_in()
    client.mux.open_channel("session")
    data = take(client)
    cut = cut_at % len(data)
    old.receive_data(data[:cut], NOW)
    assert old.events_received() == []
    new = hand_over(old)
    new.receive_data(data[cut:], LATER)
    assert [type(e) for e in new.events_received()] == [ChannelOpenRequest]
    assert_alive(new)


def test_input_fed_in_pieces_after_a_cut_handoff() -> None:
    client, old = logged_in()
    cid = client.mux.open_channel("session")
    data = take(client)
    old.receive_data(data[:5], NOW)
    new = hand_over(old)
    for i in range(5, len(data)):
        new.receive_data(data[i : i + 1], LATER)
    [req] = [e for e in new.events_received() if isinstance(e, ChannelOpenRequest)]
    new.mux.accept_channel(req.channel_id)
    pump(client, new, NOW, server_now=LATER)
    client.events_received()
    round_trip(client, new, cid, req.channel_id, 1000)


def test_handoff_after_client_keepalive() -> None:
    """A keep-alive the client sent before the handoff (answered by the first
    process) does not disturb the sequence numbers the second one expects."""
    client, old = logged_in(client_settings=TransportSettings(keepalive_interval=1.0))
    client.handle_timer(NOW + 1.0)
    pump(client, old, NOW + 1.0)
    assert_alive(client, old)
    new = hand_over(old, now=NOW + 1.0)
    client.handle_timer(NOW + 2.0)
    pump(client, new, NOW + 2.0, server_now=LATER)
    assert_alive(client, new)
    open_channel(client, new)


def test_approved_user_must_match() -> None:
    _client, old = logged_in()
    state = old.export_handoff()
    with pytest.raises(HandoffError):
        Connection.from_handoff(state, now=LATER, user="root")
    assert Connection.from_handoff(state, now=LATER, user=USER).authenticated_user == USER


def test_login_cannot_repeat_after_handoff() -> None:
    """The rebuilt server is logged in: another login request is a protocol error, as it
    would have been in the first process."""
    client, old = logged_in()
    new = hand_over(old)
    assert client.transport is not None
    client.transport.send(0x40, Writer().name(USER).name("password").vbytes(b"x").getvalue())
    new.receive_data(take(client), LATER)
    [end] = terminations(new.events_received())
    assert end.code == ErrorCode.INVALID_REQUEST


# --------------------------------------------------------------------------- refusals


def refused(conn: Connection, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        conn.export_handoff()


def test_refused_for_a_client() -> None:
    client, _server = logged_in()
    refused(client, "only a server")


def test_refused_without_login() -> None:
    key = host_key()
    client = Connection(ClientHandshake(Offer(), key.public, rng=rng_for(CLIENT_SEED)))
    server = Connection(ServerHandshake((key,), rng=rng_for(SERVER_SEED)))
    client.start(NOW)
    server.start(NOW)
    refused(server, "handshake has not finished")
    pump(client, server, NOW)
    assert server.established
    refused(server, "no login")


def test_refused_before_the_login_is_accepted() -> None:
    _client, server = logged_in(accept=False)
    refused(server, "not authenticated")
    server.check_handoff(accepting=True)  # but could be accepted and handed over


def test_refused_while_output_is_not_taken() -> None:
    _client, server = logged_in(accept=False)
    server.accept_auth()
    refused(server, "output not taken")
    server.data_to_send()
    assert Connection.from_handoff(server.export_handoff(), now=LATER).authenticated_user


def test_refused_after_the_end() -> None:
    _client, server = logged_in()
    server.close()
    refused(server, "over")


def test_refused_during_our_rekey() -> None:
    client, server = logged_in(accept=False)
    server.request_rekey()
    request = take(server)  # the request is out; the offer has not come back
    with pytest.raises(UsageError, match="rekey"):
        server.check_handoff(accepting=True)  # so the login can still be refused
    server.accept_auth()
    success = take(server)
    refused(server, "rekey")
    client.receive_data(request + success, NOW)
    pump(client, server, NOW)
    assert Connection.from_handoff(server.export_handoff(), now=LATER).established


def test_refused_during_the_peers_rekey() -> None:
    client, server = logged_in()
    client.request_rekey()
    server.receive_data(take(client), NOW)  # we answer with an offer and wait for its use
    offer = take(server)
    refused(server, "rekey")
    client.receive_data(offer, NOW)
    pump(client, server, NOW)  # once it completes, the handoff is possible
    assert Connection.from_handoff(server.export_handoff(), now=LATER).established


def test_refused_with_a_channel() -> None:
    client, server = logged_in()
    client.mux.open_channel("session")
    server.receive_data(take(client), NOW)
    refused(server, "channel")


def test_refused_with_mux_output_pending() -> None:
    _client, server = logged_in()
    server.mux.global_request("x-test", b"", want_reply=False)
    refused(server, "channel")


def test_refused_with_a_global_request_unanswered() -> None:
    client, server = logged_in()
    client.mux.global_request("x-test", b"", want_reply=True)
    server.receive_data(take(client), NOW)
    server.events_received()
    refused(server, "channel")


# --------------------------------------------------------------------------- the format


@functools.cache
def sample_state() -> bytes:
    """A real exported state with unread input, so every field is present."""
    chaff = ChaffPolicy(True, 100, 200, 16, 64)
    client, server = logged_in(offer=Offer(chaff=chaff),
                               server_settings=TransportSettings(keepalive_interval=5.0))
    server.handle_timer(NOW + 0.001)
    server.data_to_send()
    server.handle_timer(NOW + 5.0)
    server.data_to_send()
    client.mux.open_channel("session")
    server.receive_data(take(client)[:20], NOW + 5.0)
    return server.export_handoff()


def test_format_layout() -> None:
    """The documented layout (docs/PROTOCOL.md), field by field."""
    data = sample_state()
    state = handoff.decode(data)
    t = state.transport
    assert data[:4] == b"QSHH" and data[4] == 1
    suite_size = 1 + 15 + 8 + 10 + 13 + 2 + 1  # names; the last byte: no obscure policy
    pos = 5 + suite_size
    assert data[pos : pos + 32] == t.session_id
    pos += 32
    assert data[pos : pos + 6] == b"\x05alice"
    pos += 6
    assert data[pos : pos + 32] == t.tx.key
    assert data[pos + 32 : pos + 44] == t.tx.iv
    assert data[pos + 44 : pos + 76] == t.tx.chain
    assert struct.unpack(">QQ", data[pos + 76 : pos + 92]) == (t.tx.sequence, t.tx.byte_count)
    pos += 2 * 92 + 8 * 4
    assert data[pos] == 1 and data[pos + 9] == 1 and data[pos + 18] == 1
    assert data[pos + 10 : pos + 18] == t.keepalive_token
    assert data[-24:-20] == (20).to_bytes(4, "big") and state.pending_input == data[-20:]
    assert len(data) == pos + 27 + 4 + 20
    assert handoff.encode(state) == data


def corrupt(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def test_malformed_states_are_refused() -> None:
    data = sample_state()
    suite_at = 5
    user_at = 5 + 50 + 32  # the suite now ends with the obscure flag
    pending_at = len(data) - 24
    cases = {
        "empty": b"",
        "magic": b"QSHX" + data[4:],
        "version": corrupt(data, 4, b"\x02"),
        "protocol version": corrupt(data, suite_at, b"\x07"),
        "unknown KEM": corrupt(data, suite_at + 1, b"\x0emlkem768x99999"),
        "bad name byte": corrupt(data, suite_at + 2, b" "),
        "chaff off with a chaff timer": corrupt(data, suite_at + 34, b"\x00"),
        "padding": corrupt(data, suite_at + 47, b"\xff\xff"),
        "user name too long": data[:user_at] + b"\x21" + b"a" * 33 + data[user_at + 6 :],
        "empty user": corrupt(data, user_at, b"\x00"),
        "key age": corrupt(data, user_at + 6 + 184, b"\xff" * 8),
        "boolean": corrupt(data, user_at + 6 + 184 + 32, b"\x02"),
        "pending length": corrupt(data, pending_at, b"\xff\xff\xff\xff"),
        "pending holds a whole packet": (
            data[:pending_at] + Writer().vbytes(b"\x04" + bytes(8) + bytes(4)).getvalue()),
        "pending header with a bad flag": (
            data[:pending_at] + Writer().vbytes(b"\xee" + bytes(12) + b"x").getvalue()),
        "trailing byte": data + b"\x00",
    }
    for what, bad in cases.items():
        with pytest.raises(HandoffError):
            handoff.decode(bad)
            pytest.fail(f"accepted: {what}")
        with pytest.raises(HandoffError):
            Connection.from_handoff(bad, now=LATER)


def test_every_truncation_is_refused() -> None:
    data = sample_state()
    for n in range(len(data)):
        with pytest.raises(HandoffError):
            handoff.decode(data[:n])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600),
                 st.binary(max_size=600).map(lambda d: b"QSHH\x01" + d)))
def test_decoding_garbage_raises_only_handoff_error(data: bytes) -> None:
    with contextlib.suppress(HandoffError):
        Connection.from_handoff(data, now=LATER)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255),
                          st.sampled_from(["set", "insert", "delete"])), min_size=1, max_size=4))
def test_mutated_states_raise_only_handoff_error(edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(sample_state())
    for position, value, how in edits:
        at = position % (len(data) + 1)
        if how == "insert":
            data.insert(at, value)
        elif at < len(data):
            if how == "set":
                data[at] = value
            else:
                del data[at]
    try:
        conn = Connection.from_handoff(bytes(data), now=LATER)
    except HandoffError:
        return
    # What decodes is a usable (if wrong-keyed) server: it runs its timers and takes bytes.
    conn.handle_timer(LATER + 10.0)
    conn.receive_data(os.urandom(64), LATER + 10.0)
    conn.data_to_send()


# --------------------------------------------------------------------------- aio, one process


async def _echo(_conn: object, channel: aio.Channel) -> None:
    channel.accept()
    while data := await channel.read():
        channel.write(data)
        await channel.drain()
    channel.write_eof()


def test_aio_refuses_a_login_it_cannot_hand_over_then_hands_over() -> None:
    """On real loopback TCP in one process: ``accept_and_hand_off`` refuses before
    accepting while our rekey is in flight (the login is refused, the connection lives on),
    hands over on the next attempt, and leaves the old connection detached -- reading
    nothing, its socket open -- while :func:`aio.adopt` serves a duplicate of the socket."""
    outcomes: list[str] = []
    adopted: list[aio.QsmpConnection] = []
    old_connections: list[aio.QsmpConnection] = []

    async def on_auth(conn: aio.QsmpConnection, request: AuthRequested) -> bool:
        if request.password != PASSWORD:
            return False
        old_connections.append(conn)
        if not outcomes:
            conn.request_rekey()  # its offer cannot have come back yet
            try:
                await conn.accept_and_hand_off()
            except UsageError as exc:
                outcomes.append(f"refused: {exc}")
                return False
        transport = conn.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        copy = socket.socket(fileno=os.dup(sock.fileno()))
        state = await conn.accept_and_hand_off()
        outcomes.append("handed over")
        adopted.append(await aio.adopt(copy, state, on_channel=_echo, user=USER))
        return True

    async def main() -> None:
        key = live_host_key()
        server = await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake((key,)),
                                 on_channel=None, on_auth=on_auth)
        async with server:
            client = await aio.connect("127.0.0.1", server.port,
                                       handshake=ClientHandshake(Offer(), key.public),
                                       user=USER, password=PASSWORD, timeout=10)
            failed = await client.wait_authenticated()
            assert failed is not None  # refused, not dropped
            assert await client.login_password(USER, PASSWORD) is None
            [old] = set(old_connections)
            await asyncio.wait_for(old.wait_closed(), 5)  # detached counts as closed
            assert old not in server.connections and old.user == USER
            assert old.transport is None and old.terminated is not None
            assert old.terminated.code == ErrorCode.NONE
            channel = await client.open_channel("session")
            payload = os.urandom(300_000)
            channel.write(payload)
            channel.write_eof()
            echoed = await asyncio.wait_for(channel.read_to_eof(), 10)
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            client.request_rekey()
            adopted[0].request_rekey()
            channel2 = await client.open_channel("session")
            channel2.write(b"after the rekeys")
            channel2.write_eof()
            assert await asyncio.wait_for(channel2.read_to_eof(), 10) == b"after the rekeys"
            assert client.core.transport is not None
            assert client.core.transport.rekeys_sent >= 1
            assert client.core.transport.rekeys_received >= 2  # before and after
            client.close()
            await asyncio.wait_for(adopted[0].wait_closed(), 5)
            assert adopted[0].terminated is not None
            assert adopted[0].terminated.code == ErrorCode.NONE
            assert adopted[0].terminated.by_peer

    asyncio.run(asyncio.wait_for(main(), 30))
    assert outcomes == ["refused: a rekey is in progress", "handed over"]


def test_aio_hand_off_without_a_pending_login_changes_nothing() -> None:
    """Called when no login waits for an answer, ``accept_and_hand_off`` refuses before
    touching the socket: the connection still reads, and the next login goes through."""
    errors: list[str] = []
    tasks: list[asyncio.Future[None]] = []

    async def on_auth(conn: aio.QsmpConnection, request: AuthRequested) -> bool:
        if tasks:
            return True

        async def too_late() -> None:
            await asyncio.sleep(0.05)  # the refusal below has been given by then
            try:
                await conn.accept_and_hand_off()
            except UsageError as exc:
                errors.append(str(exc))

        tasks.append(asyncio.ensure_future(too_late()))
        return False

    async def main() -> None:
        key = live_host_key()
        server = await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake((key,)),
                                 on_channel=_echo, on_auth=on_auth)
        async with server:
            client = await aio.connect("127.0.0.1", server.port,
                                       handshake=ClientHandshake(Offer(), key.public),
                                       user=USER, password=PASSWORD, timeout=10)
            assert await client.wait_authenticated() is not None
            assert await asyncio.wait_for(client.login_password(USER, PASSWORD), 5) is None
            channel = await client.open_channel("session")
            channel.write(b"still reading")
            channel.write_eof()
            assert await asyncio.wait_for(channel.read_to_eof(), 5) == b"still reading"
            client.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert errors == ["no authentication request is pending"]


# --------------------------------------------------------------------------- end to end


def _spawn(*args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, str(PEER), *args], env=env,
                            **kwargs)  # type: ignore[call-overload]


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), "the pre-auth process did not start in time"
    return proc.stdout.readline()


def _receive_handoff(channel: socket.socket, timeout: float) -> tuple[bytes, int]:
    """The pre-auth process's message: a length-prefixed state and the socket."""
    channel.settimeout(timeout)
    data, fds, _flags, _addr = socket.recv_fds(channel, 1 << 16, 1)
    assert len(fds) == 1, "no socket came with the state"
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        more = channel.recv(1 << 16)
        assert more, "state cut short"
        data += more
    size = int.from_bytes(data[:4], "big")
    assert len(data) == 4 + size
    return data[4:], fds[0]


async def _client_session(port: int, login: str, size: int) -> dict[str, object]:
    kwargs: dict[str, object] = {"user": USER}
    if login == "publickey":
        kwargs["identity"] = user_key()
    else:
        kwargs["password"] = PASSWORD

    async def trust(_key: object) -> bool:
        return True

    conn = await aio.connect("127.0.0.1", port, handshake=ClientHandshake(Offer()),
                             on_host_key=trust, timeout=10,
                             settings=TransportSettings(rekey_bytes=1 << 20),
                             **kwargs)  # type: ignore[arg-type]
    async with asyncio.timeout(20):
        assert await conn.wait_authenticated() is None
        # At once, as qsh does: the open waits in the kernel until the second process
        # has the socket.
        channel = await conn.open_channel("session")
        payload = os.urandom(size)
        echoed = hashlib.sha256()

        async def reader() -> int:
            n = 0
            while n < size:
                chunk = await channel.read()
                assert chunk, "echo ended early"
                echoed.update(chunk)
                n += len(chunk)
            return n

        task = asyncio.ensure_future(reader())
        step = 64 * 1024
        for i in range(0, size, step):
            channel.write(payload[i : i + step])
            await channel.drain()
            if i == size // 2:
                conn.request_rekey()
        assert await task == size
        channel.write_eof()
        await channel.wait_closed()
        assert echoed.digest() == hashlib.sha256(payload).digest()
        core_transport = conn.core.transport
        assert core_transport is not None
        stats = {"rekeys_sent": core_transport.rekeys_sent,
                 "rekeys_received": core_transport.rekeys_received}
        assert conn.terminated is None
        conn.close()
        await conn.wait_closed()
    return stats


def _run_end_to_end(login: str, size: int) -> None:
    monitor, preauth_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    user_blob = user_key().public.encode().hex()
    preauth = _spawn("preauth", str(preauth_end.fileno()), USER, PASSWORD.decode(), user_blob,
                     stdout=subprocess.PIPE, pass_fds=[preauth_end.fileno()])
    preauth_end.close()
    adopter: subprocess.Popen[bytes] | None = None
    try:
        port = int(_readline(preauth, 20))

        async def run() -> dict[str, object]:
            nonlocal adopter
            client = asyncio.ensure_future(_client_session(port, login, size))
            # The "monitor": takes the state and the socket from the pre-auth process,
            # starts the process that serves the user, and keeps no copy of the socket.
            state, fd = await asyncio.to_thread(_receive_handoff, monitor, 20)
            state_r, state_w = os.pipe()
            try:
                adopter = await asyncio.to_thread(
                    _spawn, "adopt", str(fd), str(state_r), USER, stdout=subprocess.PIPE,
                    pass_fds=[fd, state_r])
            finally:
                os.close(fd)
                os.close(state_r)
            with open(state_w, "wb") as pipe:
                pipe.write(state)
            return await client

        stats = asyncio.run(run())
        assert preauth.wait(timeout=10) == 0, "the pre-auth process failed"
        assert adopter is not None
        out, _ = adopter.communicate(timeout=20)
        assert adopter.returncode == 0, out
        server_stats = json.loads(out.splitlines()[-1])
        # Rekeys in both directions after the handoff, and a clean end on both sides.
        assert stats["rekeys_sent"] >= 1 and stats["rekeys_received"] >= 1  # type: ignore[operator]
        assert server_stats["rekeys_sent"] == stats["rekeys_received"]
        assert server_stats["rekeys_received"] == stats["rekeys_sent"]
        assert server_stats["user"] == USER
        assert server_stats["end"] == [0, True]  # closed cleanly, by the client
    finally:
        monitor.close()
        for proc in (preauth, adopter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


@pytest.mark.parametrize("login", ["password", "publickey"])
def test_end_to_end_over_tcp_between_processes(login: str) -> None:
    """A real client logs in to a pre-auth process, which hands the connection over; a
    second process adopts the socket and echoes 3 MiB while both sides rekey."""
    start = time.monotonic()
    _run_end_to_end(login, 3 * 1024 * 1024)
    assert time.monotonic() - start < 30
