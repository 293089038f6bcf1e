"""The channel multiplexer, driven as two real Mux instances wired back to back.

The pump below only moves messages: it is the transport's job in miniature (join head and
payload into one body, hand it over, then scribble over the buffer so anything that kept a
view into it would be caught).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput, InvalidRequest, PeerError, QsmpError, UsageError
from common.protocol.mux import (
    MAX_CHANNELS,
    MAX_PAYLOAD,
    MIN_PEER_MAX_PACKET,
    ChannelClosed,
    ChannelData,
    ChannelEof,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelOpenRequest,
    ChannelRequest,
    ChannelRequestReply,
    ChannelWritable,
    Event,
    GlobalRequest,
    GlobalRequestReply,
    Mux,
    MuxMessage,
    OpenFailureReason,
    OutgoingMessage,
)
from common.wire import Writer

KiB = 1024
MiB = 1024 * 1024


def deliver(dst: Mux, msg: OutgoingMessage) -> list[Event]:
    # As the transport does: a buffer of its own per message, never reused (channel data
    # is handed up as a view of it).
    return dst.handle_message(msg.msg_type, memoryview(bytes(msg.head) + bytes(msg.payload)))


def step(src: Mux, dst: Mux) -> list[Event]:
    events: list[Event] = []
    for msg in src.take_outgoing():
        events += deliver(dst, msg)
    return events


def pump(a: Mux, b: Mux, *, ack_a: bool = False, ack_b: bool = False) -> tuple[
        list[Event], list[Event]]:
    """Move messages both ways until quiet; return (events at a, events at b).

    With ``ack_x`` that side consumes every byte as soon as it arrives (a fast reader).
    """
    at_a: list[Event] = []
    at_b: list[Event] = []
    while a.has_outgoing or b.has_outgoing:
        for src, dst, seen, ack in ((a, b, at_b, ack_b), (b, a, at_a, ack_a)):
            new = step(src, dst)
            seen += new
            if ack:
                for ev in new:
                    if isinstance(ev, ChannelData):
                        dst.acknowledge(ev.channel_id, len(ev.data))
    return at_a, at_b


def of(kind: type, events: Iterable[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


def received(events: Iterable[Event], channel_id: int, ext: int | None = None) -> bytes:
    return b"".join(e.data for e in events
                    if isinstance(e, ChannelData) and e.channel_id == channel_id
                    and e.ext == ext)


def open_request(events: list[Event]) -> ChannelOpenRequest:
    [req] = events
    assert isinstance(req, ChannelOpenRequest)
    return req


def connected(**kwargs: int) -> tuple[Mux, Mux, int, int]:
    """A client and a server with one open 'session' channel: (client, server, cid, sid)."""
    client = Mux(is_client=True, **kwargs)
    server = Mux(is_client=False, **kwargs)
    cid = client.open_channel("session", b"hello")
    req = open_request(step(client, server))
    server.accept_channel(req.channel_id, b"welcome")
    [opened] = step(server, client)
    assert opened == ChannelOpened(cid, b"welcome")
    return client, server, cid, req.channel_id


def body(*parts: bytes) -> memoryview:
    return memoryview(b"".join(parts))


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


# --- opening ---------------------------------------------------------------------------------


def test_open_accept_carries_payloads() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    cid = client.open_channel("tunnel", b"example.org:22")
    at_client, at_server = pump(client, server)
    assert at_client == []
    req = open_request(at_server)
    assert req == ChannelOpenRequest(req.channel_id, "tunnel", b"example.org:22")
    server.accept_channel(req.channel_id, b"ok")
    at_client, at_server = pump(client, server)
    assert at_client == [ChannelOpened(cid, b"ok")]
    assert client.is_open(cid) and server.is_open(req.channel_id)


def test_reject_frees_the_id() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    cid = client.open_channel("x11")
    req = open_request(pump(client, server)[1])
    server.reject_channel(req.channel_id, OpenFailureReason.UNKNOWN_CHANNEL_TYPE, "no x11")
    at_client, _ = pump(client, server)
    assert at_client == [ChannelOpenFailed(cid, 3, "no x11")]
    with pytest.raises(UsageError):
        client.pending(cid)
    with pytest.raises(UsageError):
        server.pending(req.channel_id)


def test_channel_limit_answers_resource_shortage() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    # Bypass the client's own limit: a peer sends a 257th open regardless.
    for i in range(MAX_CHANNELS + 1):
        body_ = Writer().name("session").u32(i).u32(1000).u32(1024).vbytes(b"").getvalue()
        events = server.handle_message(MuxMessage.CHANNEL_OPEN, memoryview(body_))
        assert len(events) == (1 if i < MAX_CHANNELS else 0)
    out = server.take_outgoing()
    assert len(out) == 1 and out[0].msg_type == MuxMessage.CHANNEL_OPEN_FAILURE
    # Addressed to the peer's id 256, reason 4.
    assert bytes(out[0].head[:8]) == u32(MAX_CHANNELS) + u32(OpenFailureReason.RESOURCE_SHORTAGE)
    # Our own side has the same cap, as a usage error.
    for _ in range(MAX_CHANNELS):
        client.open_channel("session")
    with pytest.raises(UsageError):
        client.open_channel("session")


def test_ids_are_small_and_reused_after_close() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    seen = set()
    for _ in range(3 * MAX_CHANNELS):
        cid = client.open_channel("session")
        req = open_request(pump(client, server)[1])
        server.accept_channel(req.channel_id)
        pump(client, server)
        client.close_channel(cid)
        at_client, at_server = pump(client, server)
        assert at_client == [ChannelClosed(cid)]
        assert at_server == [ChannelClosed(req.channel_id)]
        seen.add(cid)
    assert max(seen) < 2 * MAX_CHANNELS
    assert len(seen) < 3 * MAX_CHANNELS  # reused


def test_data_queued_before_confirmation_waits_for_it() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    cid = client.open_channel("session")
    client.send_data(cid, b"early")
    client.send_eof(cid)
    assert client.pending(cid) == 5
    req = open_request(pump(client, server)[1])
    server.accept_channel(req.channel_id)
    at_client, at_server = pump(client, server)
    assert at_client == [ChannelOpened(cid, b""), ChannelWritable(cid)]
    assert at_server == [ChannelData(req.channel_id, b"early", None), ChannelEof(req.channel_id)]


def test_close_while_opening_closes_after_confirmation() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    cid = client.open_channel("session")
    client.close_channel(cid)
    req = open_request(pump(client, server)[1])
    server.accept_channel(req.channel_id)
    at_client, at_server = pump(client, server)
    assert at_client == [ChannelOpened(cid, b""), ChannelClosed(cid)]
    assert at_server == [ChannelClosed(req.channel_id)]


# --- data and windows ------------------------------------------------------------------------


def test_bulk_both_ways_through_small_windows() -> None:
    client, server, cid, sid = connected(window=64 * KiB, max_packet=16 * KiB)
    rng = random.Random(1)
    up = rng.randbytes(5 * MiB)
    down = rng.randbytes(5 * MiB + 123)
    client.send_data(cid, up)
    server.send_data(sid, down)
    assert client.pending(cid) == len(up) - 64 * KiB
    at_client: list[Event] = []
    at_server: list[Event] = []
    sizes = set()
    while client.has_outgoing or server.has_outgoing:
        for src, dst, seen in ((client, server, at_server), (server, client, at_client)):
            for msg in src.take_outgoing():
                if msg.msg_type == MuxMessage.CHANNEL_DATA:
                    sizes.add(len(msg.payload))
                    assert isinstance(msg.payload, memoryview)  # a view, not a copy
                new = deliver(dst, msg)
                seen += new
                for ev in new:
                    if isinstance(ev, ChannelData):
                        dst.acknowledge(ev.channel_id, len(ev.data))
    assert max(sizes) == 16 * KiB
    got_up = received(at_server, sid)
    got_down = received(at_client, cid)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert client.pending(cid) == 0 and server.pending(sid) == 0
    assert ChannelWritable(cid) in at_client and ChannelWritable(sid) in at_server


def test_peer_max_packet_bounds_our_chunks() -> None:
    client = Mux(is_client=True, max_packet=1_024)
    server = Mux(is_client=False)  # 256 KiB of its own
    client.open_channel("session")
    req = open_request(pump(client, server)[1])
    server.accept_channel(req.channel_id)
    pump(client, server)
    server.send_data(req.channel_id, bytes(10_240))
    sizes = [len(m.payload) for m in server.take_outgoing()]
    assert sizes == [1024] * 10


def test_slow_reader_throttles_sender() -> None:
    client, server, cid, sid = connected(window=64 * KiB, max_packet=8 * KiB)
    data = random.Random(2).randbytes(1 * MiB)
    client.send_data(cid, data)
    _, at_server = pump(client, server)  # the server does not acknowledge
    assert len(received(at_server, sid)) == 64 * KiB
    assert client.pending(cid) == len(data) - 64 * KiB
    client.send_data(cid, b"more")
    assert client.pending(cid) == len(data) - 64 * KiB + 4

    # Acknowledging less than half the window grants nothing yet.
    server.acknowledge(sid, 32 * KiB - 1)
    assert not server.has_outgoing
    server.acknowledge(sid, 1)
    at_client, more = pump(client, server)
    assert at_client == []
    assert len(received(more, sid)) == 32 * KiB

    got = received(at_server, sid) + received(more, sid)
    unacked = 32 * KiB + 32 * KiB  # the second half of the first window, plus the new bytes
    writable = []
    while client.pending(cid):
        server.acknowledge(sid, unacked)
        at_client, more = pump(client, server)
        chunk = received(more, sid)
        got += chunk
        unacked = len(chunk)
        writable += of(ChannelWritable, at_client)
    assert writable == [ChannelWritable(cid)]
    assert got == data + b"more"


def test_extended_data_kept_apart() -> None:
    client, server, cid, sid = connected(window=10_000, max_packet=1_024)
    for i in range(30):
        server.send_data(sid, b"out%d;" % i)
        server.send_data(sid, b"err%d;" % i, ext=1)
    server.send_data(sid, b"seven", ext=7)
    at_client, _ = pump(client, server, ack_a=True)
    assert received(at_client, cid) == b"".join(b"out%d;" % i for i in range(30))
    assert received(at_client, cid, 1) == b"".join(b"err%d;" % i for i in range(30))
    assert received(at_client, cid, 7) == b"seven"


def test_extended_data_shares_the_window() -> None:
    client, server, cid, sid = connected(window=100, max_packet=1_024)
    server.send_data(sid, bytes(60))
    server.send_data(sid, bytes(60), ext=1)
    at_client, _ = pump(client, server)
    assert len(received(at_client, cid)) == 60
    assert len(received(at_client, cid, 1)) == 40
    assert server.pending(sid) == 20


def test_send_data_accepts_any_buffer_without_copying() -> None:
    client, server, cid, sid = connected()
    words = memoryview(bytearray(range(16))).cast("I")  # 4-byte items
    client.send_data(cid, words)
    client.send_data(cid, bytearray(b"xyz"))
    client.send_data(cid, b"")
    _, at_server = pump(client, server)
    assert received(at_server, sid) == bytes(range(16)) + b"xyz"


# --- eof and close ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["client", "server"])
def test_eof_then_close_in_either_order(first: str) -> None:
    client, server, cid, sid = connected()
    closer, other = (client, server) if first == "client" else (server, client)
    closer_id, other_id = (cid, sid) if first == "client" else (sid, cid)
    closer.send_data(closer_id, b"last words")
    closer.send_eof(closer_id)
    with pytest.raises(UsageError):
        closer.send_data(closer_id, b"too late")
    at_c, at_o = pump(closer, other, ack_b=True)
    assert at_o == [ChannelData(other_id, b"last words", None), ChannelEof(other_id)]
    # Half-closed: the other side can still talk.
    other.send_data(other_id, b"reply")
    other.send_request(other_id, "exit-status", b"\0", want_reply=False)
    at_c, at_o = pump(closer, other)
    assert at_c == [ChannelData(closer_id, b"reply", None),
                    ChannelRequest(closer_id, "exit-status", b"\0", False)]
    closer.close_channel(closer_id)
    at_c, at_o = pump(closer, other)
    assert at_c == [ChannelClosed(closer_id)]
    assert at_o == [ChannelClosed(other_id)]
    for mux, i in ((client, cid), (server, sid)):
        with pytest.raises(UsageError):
            mux.send_data(i, b"x")
        assert not mux.is_open(i)


def test_simultaneous_close() -> None:
    client, server, cid, sid = connected()
    client.close_channel(cid)
    server.close_channel(sid)
    server.close_channel(sid)  # idempotent
    at_client, at_server = pump(client, server)
    assert at_client == [ChannelClosed(cid)]
    assert at_server == [ChannelClosed(sid)]
    assert [m.msg_type for m in client.take_outgoing()] == []


def test_data_in_flight_after_our_close_is_ignored() -> None:
    client, server, cid, sid = connected()
    server.send_data(sid, b"in flight")
    server.send_data(sid, b"err", ext=1)
    server.send_request(sid, "keepalive")
    server.send_eof(sid)
    client.close_channel(cid)
    to_client = server.take_outgoing()
    at_server = step(client, server)
    assert at_server == [ChannelClosed(sid)]
    events = []
    for msg in to_client:
        events += deliver(client, msg)
    events += step(server, client)
    assert events == [ChannelClosed(cid)]


def test_graceful_close_waits_for_window_abort_does_not() -> None:
    client, server, cid, sid = connected(window=1000, max_packet=1_024)
    client.send_data(cid, bytes(3000))
    client.close_channel(cid)
    with pytest.raises(UsageError):
        client.send_data(cid, b"x")
    _, at_server = pump(client, server)
    assert not of(ChannelClosed, at_server)
    assert client.pending(cid) == 2000
    client.close_channel(cid, abort=True)
    at_client, at_server = pump(client, server)
    assert at_server == [ChannelClosed(sid)] and at_client == [ChannelClosed(cid)]


def test_peer_close_drops_our_buffer_and_answers() -> None:
    client, server, cid, sid = connected(window=1000, max_packet=1_024)
    client.send_data(cid, bytes(5000))
    server.close_channel(sid)
    at_client, at_server = pump(client, server)
    # The first window's worth was in flight when the server's CLOSE went out: dropped, as
    # SSH drops data after its own CLOSE. The rest never left the client.
    assert at_client == [ChannelClosed(cid)] and at_server == [ChannelClosed(sid)]
    with pytest.raises(UsageError):
        client.pending(cid)


# --- requests --------------------------------------------------------------------------------


def test_channel_requests_replied_in_order() -> None:
    client, server, cid, sid = connected()
    client.send_request(cid, "pty-req", b"xterm")
    client.send_request(cid, "env", b"LANG=C", want_reply=False)
    client.send_request(cid, "shell")
    client.send_request(cid, "signal", b"INT")
    _, at_server = pump(client, server)
    assert at_server == [
        ChannelRequest(sid, "pty-req", b"xterm", True),
        ChannelRequest(sid, "env", b"LANG=C", False),
        ChannelRequest(sid, "shell", b"", True),
        ChannelRequest(sid, "signal", b"INT", True),
    ]
    server.reply(sid, True, b"pty ok")
    server.reply(sid, False)
    server.reply(sid, True)
    with pytest.raises(UsageError):
        server.reply(sid, True)
    at_client, _ = pump(client, server)
    assert at_client == [
        ChannelRequestReply(cid, True, b"pty ok"),
        ChannelRequestReply(cid, False, b""),
        ChannelRequestReply(cid, True, b""),
    ]


def test_global_requests() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    client.global_request("tcpip-forward", b"0.0.0.0:8080")
    client.global_request("keepalive@qsh", want_reply=False)
    client.global_request("cancel-tcpip-forward", b"x")
    _, at_server = pump(client, server)
    assert at_server == [
        GlobalRequest("tcpip-forward", b"0.0.0.0:8080", True),
        GlobalRequest("keepalive@qsh", b"", False),
        GlobalRequest("cancel-tcpip-forward", b"x", True),
    ]
    server.global_reply(True, b"8080")
    server.global_reply(False)
    with pytest.raises(UsageError):
        server.global_reply(True)
    at_client, _ = pump(client, server)
    assert at_client == [GlobalRequestReply(True, b"8080"), GlobalRequestReply(False, b"")]


# --- peer violations -------------------------------------------------------------------------


def test_window_exceeded() -> None:
    _, server, _, sid = connected(window=1000, max_packet=1_024)
    server.handle_message(MuxMessage.CHANNEL_DATA, body(u32(sid), bytes(600)))
    with pytest.raises(InvalidInput, match="window exceeded"):
        server.handle_message(MuxMessage.CHANNEL_DATA, body(u32(sid), bytes(401)))
    _, server, _, sid = connected(window=1000, max_packet=1_024)
    server.handle_message(MuxMessage.CHANNEL_DATA, body(u32(sid), bytes(600)))
    with pytest.raises(InvalidInput, match="window exceeded"):
        server.handle_message(MuxMessage.CHANNEL_EXTENDED_DATA,
                              body(u32(sid), u32(1), bytes(401)))


def test_data_larger_than_max_packet() -> None:
    _, server, _, sid = connected(window=10_000, max_packet=1_024)
    with pytest.raises(InvalidInput, match="maximum packet"):
        server.handle_message(MuxMessage.CHANNEL_DATA, body(u32(sid), bytes(1025)))


def test_unknown_recipient() -> None:
    _, server, _, sid = connected()
    for t in (MuxMessage.CHANNEL_DATA, MuxMessage.CHANNEL_EOF, MuxMessage.CHANNEL_CLOSE):
        with pytest.raises(InvalidInput, match="unknown channel"):
            server.handle_message(t, body(u32(sid + 1)))


def test_data_after_eof() -> None:
    client, server, cid, sid = connected()
    client.send_eof(cid)
    pump(client, server)
    with pytest.raises(InvalidRequest, match="after EOF"):
        server.handle_message(MuxMessage.CHANNEL_DATA, body(u32(sid), b"x"))
    with pytest.raises(InvalidRequest, match="EOF"):
        server.handle_message(MuxMessage.CHANNEL_EOF, body(u32(sid)))


def test_messages_for_a_closed_channel() -> None:
    client, server, cid, sid = connected()
    client.close_channel(cid)
    pump(client, server)
    for t, rest in ((MuxMessage.CHANNEL_DATA, b"x"), (MuxMessage.CHANNEL_CLOSE, b""),
                    (MuxMessage.CHANNEL_WINDOW_ADJUST, u32(1))):
        with pytest.raises(InvalidInput, match="unknown channel"):
            server.handle_message(t, body(u32(sid), rest))


def test_message_before_open_is_refused() -> None:
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    cid = client.open_channel("session")
    req = open_request(pump(client, server)[1])
    # The server has not accepted yet; the client has no confirmation yet.
    with pytest.raises(InvalidRequest):
        server.handle_message(MuxMessage.CHANNEL_DATA, body(u32(req.channel_id), b"x"))
    with pytest.raises(InvalidRequest):
        client.handle_message(MuxMessage.CHANNEL_EOF, body(u32(cid)))


def test_duplicate_confirmation() -> None:
    client, _, cid, _ = connected()
    confirm = Writer().u32(cid).u32(0).u32(100).u32(100).vbytes(b"").getvalue()
    with pytest.raises(InvalidRequest):
        client.handle_message(MuxMessage.CHANNEL_OPEN_CONFIRM, memoryview(confirm))


@pytest.mark.parametrize("max_packet", [0, 1, MIN_PEER_MAX_PACKET - 1])
def test_tiny_max_packet_refused(max_packet: int) -> None:
    """A peer asking for tiny packets would make us spend a record per byte or so."""
    server = Mux(is_client=False)
    open_ = Writer().name("session").u32(0).u32(100).u32(max_packet).vbytes(b"").getvalue()
    with pytest.raises(InvalidInput):
        server.handle_message(MuxMessage.CHANNEL_OPEN, memoryview(open_))
    ok = Writer().name("session").u32(1).u32(100).u32(MIN_PEER_MAX_PACKET).vbytes(b"")
    assert server.handle_message(MuxMessage.CHANNEL_OPEN, memoryview(ok.getvalue()))


def test_window_adjust_overflow() -> None:
    _, server, _, sid = connected(window=1000)
    server.handle_message(MuxMessage.CHANNEL_WINDOW_ADJUST, body(u32(sid), u32(2**32 - 1001)))
    with pytest.raises(InvalidInput, match="overflow"):
        server.handle_message(MuxMessage.CHANNEL_WINDOW_ADJUST, body(u32(sid), u32(1)))


def test_unexpected_replies() -> None:
    _, server, _, sid = connected()
    for t in (MuxMessage.CHANNEL_SUCCESS, MuxMessage.CHANNEL_FAILURE):
        with pytest.raises(InvalidRequest, match="no request"):
            server.handle_message(t, body(u32(sid), u32(0)))
    for t in (MuxMessage.REQUEST_SUCCESS, MuxMessage.REQUEST_FAILURE):
        with pytest.raises(InvalidRequest, match="no request"):
            server.handle_message(t, body(u32(0)))


@pytest.mark.parametrize("msg_type", [0x00, 0x1F, 0x2E, 0x3F, 0xFF])
def test_unknown_message_type(msg_type: int) -> None:
    with pytest.raises(InvalidRequest, match="unknown"):
        Mux(is_client=True).handle_message(msg_type, memoryview(b""))


def test_trailing_bytes_and_oversize_fields() -> None:
    _, server, _, sid = connected()
    with pytest.raises(InvalidInput, match="trailing"):
        server.handle_message(MuxMessage.CHANNEL_EOF, body(u32(sid), b"\0"))
    with pytest.raises(InvalidInput, match="trailing"):
        server.handle_message(MuxMessage.GLOBAL_REQUEST,
                              body(Writer().name("x").boolean(False).vbytes(b"").getvalue(),
                                   b"!"))
    big = Writer().u32(sid).name("x").boolean(False).vbytes(bytes(MAX_PAYLOAD + 1)).getvalue()
    with pytest.raises(InvalidInput, match="exceeds"):
        server.handle_message(MuxMessage.CHANNEL_REQUEST, memoryview(big))
    long_name = b"\x41" + b"r" * 64
    with pytest.raises(InvalidInput):
        server.handle_message(MuxMessage.GLOBAL_REQUEST,
                              body(bytes([len(long_name)]), long_name, b"\0", u32(0)))


def test_every_violation_is_a_peer_error() -> None:
    assert issubclass(InvalidInput, PeerError) and issubclass(InvalidRequest, PeerError)


# --- our own misuse --------------------------------------------------------------------------


def test_usage_errors() -> None:
    client, server, cid, sid = connected(window=1000)
    with pytest.raises(UsageError):
        Mux(is_client=True, window=0)
    with pytest.raises(UsageError):
        Mux(is_client=True, max_packet=2 * MiB)
    with pytest.raises(UsageError):
        client.send_data(999, b"x")
    with pytest.raises(UsageError):
        client.open_channel("bad name")
    with pytest.raises(UsageError):
        client.open_channel("sessión")
    with pytest.raises(UsageError):
        client.open_channel("n" * 65)
    with pytest.raises(UsageError):
        client.send_request(cid, "x", bytes(MAX_PAYLOAD + 1))
    with pytest.raises(UsageError):
        client.send_data(cid, b"x", ext=2**32)
    with pytest.raises(UsageError):
        client.reply(cid, True)
    with pytest.raises(UsageError):
        client.accept_channel(cid)
    server.send_data(sid, b"abc")
    pump(client, server)
    with pytest.raises(UsageError):
        client.acknowledge(cid, 4)
    client.acknowledge(cid, 3)
    with pytest.raises(UsageError):
        client.acknowledge(cid, 1)
    closing = client.open_channel("session")
    client.close_channel(closing)
    with pytest.raises(UsageError):
        client.send_request(closing, "shell")


def test_requests_on_an_opening_channel_go_out_on_confirmation_before_data() -> None:
    """open + exec + stdin in one flight: the request waits for the confirmation (it needs
    the peer's channel id), then precedes the queued data, and its reply comes back."""
    client = Mux(is_client=True)
    server = Mux(is_client=False)
    cid = client.open_channel("session")
    client.send_request(cid, "exec", b"cat", want_reply=True)
    client.send_data(cid, b"stdin bytes")
    [opening] = client.take_outgoing()  # only the open goes out before confirmation
    assert opening.msg_type == MuxMessage.CHANNEL_OPEN
    req = open_request(deliver(server, opening))
    server.accept_channel(req.channel_id)
    step(server, client)
    kinds = [m.msg_type for m in client.take_outgoing()]
    assert kinds == [MuxMessage.CHANNEL_REQUEST, MuxMessage.CHANNEL_DATA]
    # Again, end to end, with the reply.
    client2, server2 = Mux(is_client=True), Mux(is_client=False)
    cid2 = client2.open_channel("session")
    client2.send_request(cid2, "exec", b"cat")
    client2.send_data(cid2, b"in")
    sid2 = open_request(step(client2, server2)).channel_id
    server2.accept_channel(sid2)
    at_client, at_server = pump(client2, server2)
    [request] = of(ChannelRequest, at_server)
    assert (request.name, request.payload, request.want_reply) == ("exec", b"cat", True)
    assert received(at_server, sid2) == b"in"
    server2.reply(sid2, True)
    at_client, _ = pump(client2, server2)
    assert of(ChannelRequestReply, at_client) == [ChannelRequestReply(cid2, True, b"")]


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 200_000),
    window=st.integers(1, 40_000),
    max_packet=st.integers(MIN_PEER_MAX_PACKET, 20_000),
    writes=st.lists(st.integers(1, 50_000), min_size=1, max_size=20),
    acks=st.lists(st.floats(0, 1), min_size=1, max_size=30),
    stderr_every=st.integers(0, 5),
)
def test_any_chunking_and_acknowledgement_delivers_in_order(
        seed: int, size: int, window: int, max_packet: int, writes: list[int],
        acks: list[float], stderr_every: int) -> None:
    # Keep the record count bounded (a 1-byte window moves 1 byte per round trip).
    size = min(size, 2000 * min(window, max_packet))
    rng = random.Random(seed)
    data = rng.randbytes(size)
    client, server, cid, sid = connected(window=window, max_packet=max_packet)
    pieces = []
    pos = 0
    i = 0
    while pos < size:
        n = writes[i % len(writes)]
        pieces.append((data[pos:pos + n], 1 if stderr_every and i % stderr_every == 0 else None))
        pos += n
        i += 1
    for piece, ext in pieces:
        client.send_data(cid, piece, ext=ext)
    client.send_eof(cid)
    got: dict[int | None, list[bytes]] = {None: [], 1: []}
    unacked = 0
    eof = False
    rounds = 0
    while not eof:
        rounds += 1
        assert rounds < 1_000_000
        for msg in client.take_outgoing():
            assert len(msg.payload) <= max_packet
            for ev in deliver(server, msg):
                if isinstance(ev, ChannelData):
                    got[ev.ext].append(ev.data)
                    unacked += len(ev.data)
                elif isinstance(ev, ChannelEof):
                    eof = True
        # The reader acknowledges some fraction of what it holds; at least one byte when it
        # holds anything, so the transfer always progresses.
        fraction = acks[rounds % len(acks)]
        n = max(1, int(unacked * fraction)) if unacked else 0
        server.acknowledge(sid, n)
        unacked -= n
        step(server, client)
    assert b"".join(got[None]) == b"".join(p for p, e in pieces if e is None)
    assert b"".join(got[1]) == b"".join(p for p, e in pieces if e == 1)
    assert client.pending(cid) == 0


def _sample_messages() -> tuple[Mux, list[tuple[int, bytes]]]:
    """A server in a state where every message type is acceptable, and one valid body each."""
    _, server, _, sid = connected(window=2_048, max_packet=1_024)
    server.send_request(sid, "probe")
    server.global_request("probe")
    opening = server.open_channel("tunnel")
    server.take_outgoing()
    msgs: list[tuple[int, bytes]] = [
        (MuxMessage.CHANNEL_OPEN,
         Writer().name("session").u32(7).u32(1000).u32(1024).vbytes(b"payload").getvalue()),
        (MuxMessage.CHANNEL_OPEN_CONFIRM,
         Writer().u32(opening).u32(9).u32(1000).u32(1024).vbytes(b"p").getvalue()),
        (MuxMessage.CHANNEL_OPEN_FAILURE,
         Writer().u32(opening).u32(2).text("refused").getvalue()),
        (MuxMessage.CHANNEL_WINDOW_ADJUST, u32(sid) + u32(1000)),
        (MuxMessage.CHANNEL_DATA, u32(sid) + b"some data"),
        (MuxMessage.CHANNEL_EXTENDED_DATA, u32(sid) + u32(1) + b"stderr"),
        (MuxMessage.CHANNEL_EOF, u32(sid)),
        (MuxMessage.CHANNEL_CLOSE, u32(sid)),
        (MuxMessage.CHANNEL_REQUEST,
         Writer().u32(sid).name("exit-status").boolean(True).vbytes(b"\0\0\0\0").getvalue()),
        (MuxMessage.CHANNEL_SUCCESS, Writer().u32(sid).vbytes(b"ok").getvalue()),
        (MuxMessage.CHANNEL_FAILURE, Writer().u32(sid).vbytes(b"").getvalue()),
        (MuxMessage.GLOBAL_REQUEST,
         Writer().name("tcpip-forward").boolean(True).vbytes(b"x").getvalue()),
        (MuxMessage.REQUEST_SUCCESS, Writer().vbytes(b"ok").getvalue()),
        (MuxMessage.REQUEST_FAILURE, Writer().vbytes(b"").getvalue()),
    ]
    return server, msgs


def test_sample_messages_are_valid() -> None:
    _, msgs = _sample_messages()
    for msg_type, raw in msgs:
        server, _ = _sample_messages()
        assert server.handle_message(msg_type, memoryview(raw)) is not None


def test_every_truncation_decodes_or_raises_a_protocol_error() -> None:
    _, msgs = _sample_messages()
    for msg_type, raw in msgs:
        for cut in range(len(raw)):
            server, _ = _sample_messages()
            with contextlib.suppress(QsmpError):
                server.handle_message(msg_type, memoryview(raw[:cut]))


def test_every_single_byte_mutation_decodes_or_raises_a_protocol_error() -> None:
    _, msgs = _sample_messages()
    for msg_type, raw in msgs:
        for position in range(len(raw)):
            for value in {0x00, 0x01, 0x7F, 0x80, 0xFF, raw[position] ^ 0x01}:
                server, _ = _sample_messages()
                mutated = bytearray(raw)
                mutated[position] = value
                with contextlib.suppress(QsmpError):
                    server.handle_message(msg_type, memoryview(mutated))


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, 13), position=st.integers(0, 10_000), value=st.integers(0, 255),
       retype=st.booleans())
def test_any_single_byte_mutation_decodes_or_raises_a_protocol_error(
        which: int, position: int, value: int, retype: bool) -> None:
    server, msgs = _sample_messages()
    msg_type, raw = msgs[which]
    mutated = bytearray(raw)
    mutated[position % len(raw)] = value
    if retype:
        msg_type = value
    try:
        events = server.handle_message(msg_type, memoryview(mutated))
    except QsmpError:
        return
    # Whatever decoded is still usable: a pump afterwards must not crash either.
    assert isinstance(events, list)
    server.take_outgoing()


def test_a_small_payload_in_a_big_record_is_copied_not_pinned() -> None:
    """Channel data is handed up as a view of its record's plaintext, which keeps the whole
    record alive while the data waits to be read; the window counts only the data. A peer
    that pads each byte of data to a big record (padding is legal, §7) would otherwise make
    a window's worth of one-byte messages hold a window's worth of big records: data that
    is less than half of its record is copied out instead."""
    _, server, _, sid = connected(window=1 << 20, max_packet=1 << 16)
    message = bytes(body(u32(sid), b"x"))
    record = bytes(3) + message + bytes(64 * 1024)  # inner header, the message, padding
    [small] = server.handle_message(MuxMessage.CHANNEL_DATA,
                                    memoryview(record)[3:3 + len(message)])
    assert isinstance(small, ChannelData) and small.data == b"x"
    assert not isinstance(small.data, memoryview)  # no view pinning 64 KiB for one byte
    bulk = bytes(body(u32(sid), bytes(range(256)) * 64))
    [big] = server.handle_message(MuxMessage.CHANNEL_DATA,
                                  memoryview(bytes(3) + bulk + bytes(16))[3:3 + len(bulk)])
    assert isinstance(big, ChannelData) and isinstance(big.data, memoryview)  # the bulk path
