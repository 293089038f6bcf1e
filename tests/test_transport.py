"""The established channel: encrypted records, strict sequencing, rekey, keep-alive, chaff,
padding and shutdown, with two Connections wired back to back (tests/helpers.py).

Seeded pairs make the same records on every run, so one honest record can be captured once
and then tampered with in many fresh sessions that are in exactly the same state.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from pathlib import Path

import pytest
from helpers import (
    NOW,
    S2C,
    established_pair,
    flip,
    make_pair,
    pump,
    split_packets,
    take,
    terminations,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ErrorCode, KeyExpired, UsageError
from common.protocol.connection import Connection, ConnectionTerminated
from common.protocol.mux import DEFAULT_WINDOW, ChannelData, ChannelOpenRequest, MuxMessage
from common.protocol.negotiation import CHAFF_OFF, ChaffPolicy, Offer, ServerPolicy
from common.protocol.transport import (
    INNER_HEADER_SIZE,
    REKEY_GRACE_BYTES,
    REKEY_GRACE_TIME,
    InnerType,
    TransportSettings,
)
from common.wire import HEADER_SIZE, MAX_RECORD_PAYLOAD, Flag, Writer

E = ErrorCode
TAG = 16  # both registered AEADs


def open_channel(client: Connection, server: Connection,
                 now: float = NOW) -> tuple[int, int]:
    """Open a session channel from the client; return (client id, server id)."""
    cid = client.mux.open_channel("session")
    pump(client, server, now)
    (req,) = server.events_received()
    assert isinstance(req, ChannelOpenRequest)
    server.mux.accept_channel(req.channel_id)
    pump(client, server, now)
    client.events_received()
    return cid, req.channel_id


def session(**kwargs: object) -> tuple[Connection, Connection, int, int]:
    client, server = established_pair(**kwargs)
    cid, sid = open_channel(client, server)
    return client, server, cid, sid


def received(conn: Connection) -> bytes:
    return b"".join(e.data for e in conn.events_received() if isinstance(e, ChannelData))


def records_of(conn: Connection) -> list[bytes]:
    return split_packets(take(conn))


def assert_failed(victim: Connection, peer: Connection, code: ErrorCode, *,
                  held: bytes = b"") -> None:
    """``victim`` detected ``code``: it ends, tells the peer in an encrypted record, and the
    peer ends by_peer with the same code without answering. ``held`` is what the victim
    sent earlier that the (stalled) peer has not read yet: it is delivered first, and then
    the peer may have answered it before reading the error."""
    term = victim.terminated
    assert term is not None and (term.code, term.by_peer) == (code, False), term
    report = take(victim)
    assert report and all(p[0] == Flag.ENCRYPTED_MESSAGE for p in split_packets(report))
    peer.receive_data(held + report, NOW)
    peer_term = peer.terminated
    assert peer_term is not None and (peer_term.code, peer_term.by_peer) == (code, True)
    if not held:
        assert take(peer) == b""
    assert victim.next_timer() is None and peer.next_timer() is None
    assert terminations(victim.events_received() + peer.events_received()) in (
        [term, peer_term], [term], [peer_term], [])


# --------------------------------------------------------------------------- sequencing


def _three_records() -> tuple[Connection, Connection, list[bytes]]:
    client, server, cid, _ = session()
    records = []
    for data in (b"one", b"two", b"three"):
        client.mux.send_data(cid, data)
        (record,) = records_of(client)
        records.append(record)
    return client, server, records


def test_records_in_order_are_accepted() -> None:
    _client, server, records = _three_records()
    for record in records:
        server.receive_data(record, NOW)
    assert received(server) == b"onetwothree"
    assert not server.closed


def test_replayed_record_is_unsequenced() -> None:
    client, server, (r1, _, _) = _three_records()
    server.receive_data(r1, NOW)
    assert received(server) == b"one"
    server.receive_data(r1, NOW)
    assert_failed(server, client, E.PACKET_UNSEQUENCED)


def test_reordered_records_are_unsequenced() -> None:
    client, server, (r1, r2, _) = _three_records()
    server.receive_data(r2 + r1, NOW)
    assert received(server) == b""
    assert_failed(server, client, E.PACKET_UNSEQUENCED)


def test_dropped_record_is_unsequenced() -> None:
    client, server, (_, r2, r3) = _three_records()
    server.receive_data(r2, NOW)
    assert_failed(server, client, E.PACKET_UNSEQUENCED)
    server.receive_data(r3, NOW)  # a dead connection ignores everything
    assert server.events_received() == [] and take(server) == b""


@functools.cache
def honest_record(size: int) -> bytes:
    client, _server, cid, _ = session()
    client.mux.send_data(cid, bytes(range(256)) * (size // 256) + b"z" * (size % 256))
    (record,) = records_of(client)
    return record


def tampered_outcome(record_size: int, position: int, mask: int | None = None) -> ErrorCode:
    """Deliver the seeded session's next record with one byte changed; return the code the
    server failed with (after completing a grown body with zeros, as an attacker could)."""
    record = honest_record(record_size)
    client, server, _, _ = session()  # the same state honest_record's session was in
    bad = flip(record, position, mask)
    server.receive_data(bad, NOW)
    if bad[0] in (Flag.CONNECTION_TERMINATED, Flag.ERROR_CONDITION):
        # Turned into a plaintext close or error packet: honoured in every state (it can
        # be forged no more easily than a TCP reset), so the server ends by_peer, silently.
        term = server.terminated
        assert term is not None and term.by_peer and take(server) == b""
        return term.code
    if not server.closed:
        announced = int.from_bytes(bad[9:13], "big")
        assert 9 <= position < HEADER_SIZE and announced > len(record) - HEADER_SIZE
        server.receive_data(bytes(announced - (len(record) - HEADER_SIZE)), NOW)
    assert server.closed and received(server) == b""
    code = server.terminated.code if server.terminated else E.NONE
    assert_failed(server, client, code)
    return code


def _allowed(position: int) -> set[ErrorCode]:
    if position == 0:
        # unknown flag / a handshake flag / a forged plaintext error (body is no code) / a
        # forged plaintext close (0x04 ^ 7 = CONNECTION_TERMINATED): honoured, by_peer
        return {E.INVALID_INPUT, E.INVALID_REQUEST, E.CHANNEL_DOWN}
    if position < 9:
        return {E.PACKET_UNSEQUENCED}
    if position < HEADER_SIZE:
        return {E.AUTHENTICATION_FAILURE, E.INVALID_INPUT}  # tag / over the length bound
    return {E.AUTHENTICATION_FAILURE}


def test_every_byte_of_a_record_tampered() -> None:
    """One fresh session per byte of a small record: the header is the AEAD's associated
    data and the nonce comes from the sequence, so any change is fatal and clean."""
    record = honest_record(20)
    problems = []
    for position in range(len(record)):
        code = tampered_outcome(20, position)
        if code not in _allowed(position):
            problems.append(f"byte {position}: {code.name}")
    assert not problems, problems


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mask=st.integers(1, 255))
def test_random_tampering_of_a_large_record(data: st.DataObject, mask: int) -> None:
    record = honest_record(3000)
    position = data.draw(st.integers(0, len(record) - 1))
    assert tampered_outcome(3000, position, mask) in _allowed(position)


def test_garbage_after_handshake_fails_cleanly() -> None:
    client, server = established_pair()
    server.receive_data(bytes([Flag.ENCRYPTED_MESSAGE]) + bytes(8) + b"\xff" * 4, NOW)
    assert_failed(server, client, E.INVALID_INPUT)  # 4 GiB announced: refused from the header


def test_forged_plaintext_close_is_not_a_clean_close() -> None:
    client, server, cid, _ = session()
    client.mux.send_data(cid, b"the first half of a file")
    server.receive_data(take(client), NOW)
    assert received(server) == b"the first half of a file"
    # An attacker (no keys) injects a plaintext close with the next sequence number.
    server.receive_data(bytes([Flag.CONNECTION_TERMINATED]) + (6).to_bytes(8, "big")
                        + bytes(4), NOW)
    term = server.terminated
    assert term is not None
    assert term.code != E.NONE, "a forged plaintext close passed for a clean shutdown"


def test_eof_after_handshake_is_channel_down() -> None:
    _client, server = established_pair()
    server.receive_data(b"", NOW)
    (term,) = terminations(server.events_received())
    assert (term.code, term.by_peer) == (E.CHANNEL_DOWN, True)
    assert take(server) == b""


# --------------------------------------------------------------------------- rekey


def test_rekey_both_ways_in_the_middle_of_traffic() -> None:
    client, server, cid, sid = session()
    sent_c, sent_s = bytearray(), bytearray()
    for n in range(4):
        for i in range(3):
            chunk_c, chunk_s = bytes([n, i]) * 50, bytes([i, n]) * 70
            client.mux.send_data(cid, chunk_c)
            server.mux.send_data(sid, chunk_s)
            sent_c += chunk_c
            sent_s += chunk_s
            if i == 1:
                client.request_rekey()
                server.request_rekey()
        pump(client, server)
    assert received(server) == sent_c and received(client) == sent_s
    assert client.transport is not None and server.transport is not None
    assert client.transport.rekeys_sent == server.transport.rekeys_received == 4
    assert server.transport.rekeys_sent == client.transport.rekeys_received == 4
    assert not client.closed and not server.closed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(st.sampled_from(
    ["c_data", "s_data", "c_rekey", "s_rekey", "c_to_s", "s_to_c"]), max_size=40),
    budget=st.sampled_from([1 << 30, 300]))
def test_rekey_under_any_interleaving(actions: list[str], budget: int) -> None:
    """Data, rekey requests and deliveries in any order (a delivery moves everything one
    side has sent so far), with explicit rekeys and, in half the runs, a byte budget small
    enough to trigger more on both sides: nothing is lost, nothing fails, counts agree."""
    small = TransportSettings(rekey_bytes=budget)
    client, server, cid, sid = session(client_settings=small, server_settings=small)
    sent = {"c": bytearray(), "s": bytearray()}
    for n, action in enumerate(actions):
        if action == "c_data":
            client.mux.send_data(cid, b"c%d" % n)
            sent["c"] += b"c%d" % n
        elif action == "s_data":
            server.mux.send_data(sid, b"s%d" % n)
            sent["s"] += b"s%d" % n
        elif action == "c_rekey":
            client.request_rekey()
        elif action == "s_rekey":
            server.request_rekey()
        elif action == "c_to_s":
            data = take(client)
            if data:  # b"" would be EOF
                server.receive_data(data, NOW)
        else:
            data = take(server)
            if data:
                client.receive_data(data, NOW)
    pump(client, server)
    assert not client.closed and not server.closed, (client.terminated, server.terminated)
    assert received(server) == sent["c"] and received(client) == sent["s"]
    ct, st_ = client.transport, server.transport
    assert ct is not None and st_ is not None
    assert ct.rekeys_sent == st_.rekeys_received and st_.rekeys_sent == ct.rekeys_received
    if budget > 1 << 20:
        assert ct.rekeys_sent <= actions.count("c_rekey")


def test_byte_budget_rekey() -> None:
    client, server, cid, _ = session(client_settings=TransportSettings(rekey_bytes=2000))
    data = bytes(range(256)) * 40
    for i in range(0, len(data), 1000):
        client.mux.send_data(cid, data[i : i + 1000])
        pump(client, server)
    assert received(server) == data
    assert client.transport is not None and server.transport is not None
    assert client.transport.rekeys_sent >= 4
    assert client.transport.rekeys_sent == server.transport.rekeys_received
    assert server.transport.rekeys_sent == 0  # the server's budget is the default 1 GiB


def test_time_budget_rekey() -> None:
    client, server = established_pair(client_settings=TransportSettings(rekey_interval=60.0))
    assert client.next_timer() == NOW + 60
    client.handle_timer(NOW + 59.9)
    assert take(client) == b""
    client.handle_timer(NOW + 60)
    wire = pump(client, server, NOW + 60)
    assert len(wire.flights[0].packets) == 1  # the rekey request
    assert client.transport is not None and client.transport.rekeys_sent == 1
    assert client.next_timer() == NOW + 120
    client.handle_timer(NOW + 120)
    pump(client, server, NOW + 120)
    assert client.transport.rekeys_sent == 2
    assert server.transport is not None and server.transport.rekeys_received == 2
    assert server.transport.rekeys_sent == 0


def test_rekey_time_is_stamped_when_it_happens() -> None:
    client, server = established_pair()
    client.request_rekey()
    pump(client, server, NOW + 3000)
    assert client.transport is not None and client.transport.rekeys_sent == 1
    timer = client.next_timer()
    assert timer is not None and timer >= NOW + 3000 + 3600


@pytest.mark.parametrize("key", ["old", "current"])
def test_record_under_the_old_key_is_rejected_after_rekey(key: str) -> None:
    """A record sealed under the pre-rekey key, with exactly the sequence number the
    receiver expects next, fails authentication; the same plaintext under the current key
    (the control) is accepted."""
    client, server, _, sid = session()
    assert client.transport is not None and server.transport is not None
    old_sealer = client.transport.sealer
    old_copy = copy.copy(old_sealer)  # keeps the old key usable, like a recorded key would
    client.request_rekey()
    pump(client, server)
    assert client.transport.rekeys_sent == 1 and client.transport.sealer is not old_sealer
    with pytest.raises(UsageError):  # the live object no longer holds the old key
        old_sealer.seal(Flag.ENCRYPTED_MESSAGE, b"x")
    sealer = old_copy if key == "old" else copy.copy(client.transport.sealer)
    sealer.sequence = server.transport.opener.sequence
    plaintext = bytes([MuxMessage.CHANNEL_DATA, 0, 0]) + Writer().u32(sid).getvalue() + b"hi"
    server.receive_data(sealer.seal(Flag.ENCRYPTED_MESSAGE, plaintext), NOW)
    if key == "old":
        assert_failed(server, client, E.AUTHENTICATION_FAILURE)
    else:
        assert received(server) == b"hi" and not server.closed


def test_rekey_messages_out_of_turn_are_refused() -> None:
    client, server = established_pair()
    assert server.transport is not None
    # An offer nobody asked for.
    server.transport.send(InnerType.REKEY_OFFER, Writer().vbytes(bytes(1216)).getvalue())
    client.receive_data(b"".join(server.transport.outgoing), NOW)
    server.transport.outgoing.clear()
    assert_failed(client, server, E.INVALID_REQUEST)


def test_unknown_transport_type_and_bad_keepalive_are_refused() -> None:
    for inner, body, code in ((0x10, b"", E.INVALID_REQUEST),
                              (InnerType.KEEPALIVE_RESPONSE, bytes(8), E.BAD_KEEP_ALIVE),
                              (InnerType.KEEPALIVE_REQUEST, bytes(7), E.INVALID_INPUT)):
        client, server = established_pair()
        assert server.transport is not None
        server.transport.send(inner, body)
        client.receive_data(b"".join(server.transport.outgoing), NOW)
        server.transport.outgoing.clear()
        assert_failed(client, server, code)


# --------------------------------------------------------------------------- keep-alive


def test_keepalive_answered_then_expired() -> None:
    client, server = established_pair(client_settings=TransportSettings(keepalive_interval=10))
    assert client.next_timer() == NOW + 10
    assert server.next_timer() == NOW + 3600  # the server only answers
    client.handle_timer(NOW + 9)
    assert take(client) == b""
    client.handle_timer(NOW + 10)
    wire = pump(client, server, NOW + 10)
    assert [f.direction for f in wire.flights] == ["c2s", "s2c"]  # request, answer
    assert server.events_received() == [] and client.events_received() == []
    assert client.next_timer() == NOW + 20
    client.handle_timer(NOW + 20)  # answered: a new request, no failure
    held = take(client)  # ... which the (stalled) server does not read in time
    assert len(split_packets(held)) == 1 and not client.closed
    client.handle_timer(NOW + 30)
    assert_failed(client, server, E.KEEP_ALIVE_EXPIRED, held=held)


def test_keepalive_count_max_tolerates_that_many_unanswered_intervals() -> None:
    """ssh's ServerAliveCountMax: with interval 10 and a count of 3 a silent peer is given
    up after the third interval without an answer (t=40), not the first (t=20); an answer
    that comes late but before then starts the count again."""
    settings = TransportSettings(keepalive_interval=10, keepalive_count_max=3)
    client, server = established_pair(client_settings=settings)
    client.handle_timer(NOW + 10)  # the request; the (stalled) server does not answer
    held = take(client)
    for t in (20, 30):
        client.handle_timer(NOW + t)
        assert not client.closed, t
        assert take(client) == b""  # still the one request outstanding
    server.receive_data(held, NOW + 31)  # the answer comes, late
    client.receive_data(take(server), NOW + 31)
    for t in (40, 50, 60):  # counted from zero again: three misses before giving up
        client.handle_timer(NOW + t)
        assert not client.closed, t
    held = take(client)
    client.handle_timer(NOW + 70)
    assert_failed(client, server, E.KEEP_ALIVE_EXPIRED, held=held)


def test_server_side_keepalive() -> None:
    client, server = established_pair(server_settings=TransportSettings(keepalive_interval=5))
    for t in (5, 10, 15):
        server.handle_timer(NOW + t)
        pump(client, server, NOW + t)
    assert not server.closed and not client.closed
    server.handle_timer(NOW + 20)
    held = take(server)
    server.handle_timer(NOW + 25)
    assert_failed(server, client, E.KEEP_ALIVE_EXPIRED, held=held)


# --------------------------------------------------------------------------- chaff


CHAFFY = Offer(chaff=ChaffPolicy(True, 100, 200, 16, 64))


def test_chaff_sent_on_timer_and_silently_discarded() -> None:
    client, server = established_pair(offer=CHAFFY)
    assert client.transport is not None
    assert client.transport.suite.chaff == CHAFFY.chaff
    now = NOW
    sizes = []
    for _ in range(20):
        timer = client.next_timer()
        assert timer is not None and now + 0.1 <= timer <= now + 0.2 + 1e-9
        now = timer
        client.handle_timer(now)
        (record,) = records_of(client)
        sizes.append(len(record))
        server.receive_data(record, now)
        assert server.events_received() == [] and take(server) == b""
        assert not server.closed
    overhead = HEADER_SIZE + INNER_HEADER_SIZE + TAG
    assert all(overhead + 16 <= n <= overhead + 64 + CHAFFY.padding_max for n in sizes)
    assert len(set(sizes)) > 1
    # The server chaffs too, on its own timer.
    server_timer = server.next_timer()
    assert server_timer is not None and server_timer <= NOW + 0.2
    server.handle_timer(server_timer)
    client.receive_data(take(server), server_timer)
    assert client.events_received() == [] and not client.closed


def test_chaff_off_by_default() -> None:
    client, server = established_pair()
    assert client.transport is not None and client.transport.suite.chaff == CHAFF_OFF
    for t in range(1, 100):
        client.handle_timer(NOW + t)
        server.handle_timer(NOW + t)
    assert take(client) == b"" and take(server) == b""
    assert client.next_timer() == NOW + 3600


def test_server_policy_clamps_chaff() -> None:
    offer = Offer(chaff=ChaffPolicy(True, 100, 200, 16, 1000), padding_max=0)
    policy = ServerPolicy(chaff_min_interval_ms=500, chaff_max_size=100)
    client, server = established_pair(offer=offer, policy=policy)
    assert client.transport is not None and server.transport is not None
    assert client.transport.suite.chaff == ChaffPolicy(True, 500, 500, 16, 100)
    assert server.transport.suite == client.transport.suite
    now = NOW
    for _ in range(10):
        timer = client.next_timer()
        assert timer is not None and timer == pytest.approx(now + 0.5)
        now = timer
        client.handle_timer(now)
        (record,) = records_of(client)
        assert len(record) >= HEADER_SIZE + INNER_HEADER_SIZE + TAG + 16
        assert len(record) <= HEADER_SIZE + INNER_HEADER_SIZE + TAG + 100
        server.receive_data(record, now)
    assert not server.closed and server.events_received() == []
    refused = established_pair(offer=offer, policy=ServerPolicy(allow_chaff=False))[0]
    assert refused.transport is not None and refused.transport.suite.chaff == CHAFF_OFF


# --------------------------------------------------------------------------- padding


def _record_sizes(padding_max: int) -> set[int]:
    client, _server, cid, _ = session(offer=Offer(padding_max=padding_max))
    sizes = set()
    for _ in range(30):
        client.mux.send_data(cid, b"same message")
        (record,) = records_of(client)
        sizes.add(len(record))
    return sizes


def test_padding_varies_record_size() -> None:
    sizes = _record_sizes(64)
    assert len(sizes) > 5
    base = HEADER_SIZE + INNER_HEADER_SIZE + 4 + len(b"same message") + TAG
    assert min(sizes) >= base and max(sizes) <= base + 64


def test_no_padding_constant_record_size() -> None:
    assert _record_sizes(0) == {HEADER_SIZE + INNER_HEADER_SIZE + 4 + len(b"same message") + TAG}


# --------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("closer", ["client", "server"])
def test_clean_close(closer: str) -> None:
    client, server, cid, sid = session()
    me, peer = (client, server) if closer == "client" else (server, client)
    client.mux.send_data(cid, b"last words")
    me.close("bye")
    (mine,) = terminations(me.events_received())
    assert mine == ConnectionTerminated(E.NONE, "bye", False)
    wire = pump(client, server)
    assert [f.direction for f in wire.flights] == (["c2s"] if closer == "client" else
                                                   ["c2s", "s2c"])
    events = peer.events_received()
    (theirs,) = terminations(events)
    assert theirs == ConnectionTerminated(E.NONE, "bye", True)
    if closer == "client":
        assert ChannelData(sid, b"last words", None) in events  # flushed before the close
    assert take(peer) == b"" and take(me) == b""
    me.close()
    me.handle_timer(NOW + 10_000)
    assert me.events_received() == [] and take(me) == b""


# --------------------------------------------------------------------------- the outer flag


def test_every_record_after_the_handshake_is_flag_0x04() -> None:
    """Data, keep-alives, chaff, rekeys and shutdown look alike from outside."""
    client, server, cid, sid = session(
        offer=CHAFFY, client_settings=TransportSettings(keepalive_interval=1.0))
    packets = []
    now = NOW
    for i in range(10):
        now += 0.25
        client.mux.send_data(cid, b"x" * i)
        server.mux.send_data(sid, b"y" * i)
        if i % 3 == 0:
            client.request_rekey()
            server.request_rekey()
        client.handle_timer(now)
        server.handle_timer(now)
        packets += pump(client, server, now).packets()
    client.close()
    packets += pump(client, server, now).packets()
    assert len(packets) > 40
    assert {p[0] for p in packets} == {Flag.ENCRYPTED_MESSAGE}
    assert client.transport is not None and client.transport.rekeys_sent >= 3
    assert terminations(server.events_received())[0].code == E.NONE


def test_handshake_records_are_sealed_too() -> None:
    """Application data sent before the handshake finished (the pipelined channel open)
    never appears in clear on the wire."""
    client, server = make_pair()
    client.mux.open_channel("session", b"secret-command")
    client.start(NOW)
    server.start(NOW)
    wire = pump(client, server)
    assert all(b"secret-command" not in p for p in wire.packets())
    assert [p[0] for p in wire.packets(S2C)][-1] == Flag.ESTABLISH_RESPONSE


# --------------------------------------------------------------------------- rekey limit


def _deaf_to_rekey(conn: Connection) -> None:
    """Make ``conn`` a peer that reads REKEY_REQUEST and never answers it (a modified
    peer: everything else it does is ours, unchanged)."""
    transport = conn.transport
    assert transport is not None
    honest = transport._control

    def control(inner_type: int, body: memoryview) -> None:
        if inner_type != InnerType.REKEY_REQUEST:
            honest(inner_type, body)

    transport._control = control  # type: ignore[method-assign]


def test_unanswered_rekey_ends_at_the_default_byte_limit() -> None:
    """The security finding: a peer that never answers REKEY_REQUEST had us seal under one
    key for ever. Now the old key carries at most max(rekey_bytes, 256 MiB) application
    bytes after the request, and the next message past that ends the connection (its
    records are what a peer that read nothing would have got; the data is never sealed)."""
    client, _server = established_pair(
        client_settings=TransportSettings(rekey_bytes=1 << 20))
    transport = client.transport
    assert transport is not None
    chunk = bytes(MAX_RECORD_PAYLOAD - 64)
    sent = 0
    while sent < 1 << 20:  # spend the budget: the request goes out
        transport.send(0x24, b"", chunk)
        sent += len(chunk)
        transport.outgoing.clear()
    assert transport.rekey_in_progress
    after, limit = 0, REKEY_GRACE_BYTES  # counted from the message after the request
    while after + len(chunk) <= limit:
        transport.send(0x24, b"", chunk)
        after += len(chunk)
        transport.outgoing.clear()
    rest = limit - after
    transport.send(0x24, b"", bytes(rest))  # exactly at the limit: still allowed
    assert len(transport.outgoing) == 1
    transport.outgoing.clear()
    with pytest.raises(KeyExpired):
        transport.send(0x24, b"", b"x")
    assert transport.outgoing == []


def test_unanswered_rekey_ends_the_connection_with_key_expired() -> None:
    settings = TransportSettings(rekey_bytes=4000, rekey_grace_bytes=10_000)
    client, server, cid, _ = session(client_settings=settings)
    _deaf_to_rekey(server)
    data = bytes(range(250)) * 4  # 1000 bytes; a CHANNEL_DATA message is 4 + 1000
    for _ in range(4):  # 4016 bytes: the request goes out with the fourth
        client.mux.send_data(cid, data)
        pump(client, server)
    assert client.transport is not None and client.transport.rekey_in_progress
    for _ in range(10_000 // 1004):  # 9 more, 9036 bytes: still under the old key
        client.mux.send_data(cid, data)
        pump(client, server)
        assert client.terminated is None
    assert received(server) == data * 13
    client.mux.send_data(cid, data)  # 10040 > 10000: never sealed
    client.events_received()
    assert_failed(client, server, E.KEY_EXPIRED)


def test_a_peer_that_answers_is_never_cut() -> None:
    """Full windows in flight when the request goes out, with a byte budget of one window:
    a peer that answers within its round trip never meets the limit, however often."""
    client, server, cid, sid = session(
        client_settings=TransportSettings(rekey_bytes=1 << 20, rekey_grace_bytes=DEFAULT_WINDOW))
    window = DEFAULT_WINDOW
    for n in range(4):
        client.mux.send_data(cid, bytes([n]) * window)
        pump(client, server)
        assert len(received(server)) == window
        server.mux.acknowledge(sid, window)
        pump(client, server)
    assert client.terminated is None and server.terminated is None
    assert client.transport is not None and client.transport.rekeys_sent >= 4


def test_application_data_waits_once_the_request_is_overdue() -> None:
    """Past the grace time, application messages wait for the new key instead of being
    sealed under the old one (a peer suspended with Ctrl-Z is kept, as OpenSSH keeps a
    rekeying connection: nothing is cut for time), and go in order once it is there."""
    settings = TransportSettings(rekey_interval=60.0)
    client, server, cid, _ = session(client_settings=settings)
    client.handle_timer(NOW + 60)
    request = take(client)  # the peer is suspended: it reads nothing yet
    assert request
    later = NOW + 60 + REKEY_GRACE_TIME
    client.note_time(later - 1)
    client.mux.send_data(cid, b"early")  # within the grace time: sealed under the old key
    early = take(client)
    assert early
    client.note_time(later)
    client.mux.send_data(cid, b"late")
    assert take(client) == b""  # waits: nothing more under the old key
    client.handle_timer(later + 3600)
    assert client.terminated is None
    server.receive_data(request + early, later + 3600)  # the peer resumes
    pump(client, server, later + 3600)
    assert received(server) == b"earlylate"
    assert client.transport is not None and client.transport.rekeys_sent == 1
    client.mux.send_data(cid, b"after")
    pump(client, server, later + 3600)
    assert received(server) == b"after"


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not sys.platform.startswith("linux"),
                    reason="a real qshd with a login needs root")
def test_a_real_qshd_ends_a_client_that_never_answers_its_rekey(tmp_path: Path) -> None:
    """A real qshd (RekeyBytes 1 MiB) streams 300 MB to a client whose core reads its
    REKEY_REQUEST and never answers (everything else, window adjusts included, is our
    client's): the daemon stops between 256 MiB and one record past it, with KEY_EXPIRED,
    and logs one line without a traceback. Before the fix all 300 MB arrived."""
    import asyncio

    from test_qshd_processes import config_text, login, prepare, start_qshd, stop_qshd

    from common.aio import ConnectionLost
    from common.channels.session import encode_exec

    total = 300_000_000
    prepare(tmp_path)
    qshd = start_qshd(tmp_path, config_text(tmp_path, "PerSourcePenalties no",
                                            "RekeyBytes 1048576"))

    async def run() -> tuple[int, object]:
        client = await login(qshd)
        _deaf_to_rekey(client.core)
        channel = await client.open_channel("session")
        assert await channel.request("exec", encode_exec(f"head -c {total} /dev/zero")) == (
            True, b"")
        channel.write_eof()
        received = 0
        try:
            while data := await channel.read(1 << 20):
                received += len(data)
        except ConnectionLost:
            pass
        try:  # before the fix the stream ended and the connection stayed up
            await asyncio.wait_for(client.wait_closed(), 5)
        except TimeoutError:
            client.abort()
            return received, None
        return received, client.terminated

    try:
        received, term = asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        stop_qshd(qshd)
    assert term is not None and term.code == E.KEY_EXPIRED and term.by_peer, term
    assert REKEY_GRACE_BYTES <= received <= REKEY_GRACE_BYTES + (3 << 20), received
    log = qshd.log.read_text()
    assert "Traceback" not in log
    assert sum("rekey" in line for line in log.splitlines()) == 1, log
