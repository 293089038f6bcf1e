"""The record layer's two entry points for gathered and buffered data agree with the plain
ones (common/protocol/record.py), for every AEAD we register, with the cryptography release
installed; what the layers above keep must survive the reuse of the receive buffer a record
was opened from.
"""

from __future__ import annotations

import os

import pytest
from helpers import NOW, established_pair, take

from common.crypto.registry import aead as aead_named
from common.crypto.suites import DEFAULT_AEADS
from common.errors import AuthenticationFailure, PacketUnsequenced
from common.protocol.mux import ChannelData, ChannelOpenRequest, GlobalRequest
from common.protocol.record import RecordOpener, RecordSealer
from common.protocol.schedule import DirectionKeys
from common.wire import HEADER_SIZE, Flag, decode_header

KEYS = DirectionKeys(bytes(range(32)), bytes(range(100, 112)), bytes(32))

SPLITS = [
    [b""],
    [b"\x05\x00\x00", b"hdr12", b"x" * 1000, bytes(7)],
    [b"\x05\x00\x00", b"", memoryview(os.urandom(256 * 1024)), b""],
    [bytearray(b"\x05\x00\x01"), memoryview(os.urandom(1 << 20))[5:], bytes(1)],
    [os.urandom(n) for n in (1, 2, 3, 4096, 65537)],
]


@pytest.mark.parametrize("name", DEFAULT_AEADS)
@pytest.mark.parametrize("parts", SPLITS, ids=[f"split{i}" for i in range(len(SPLITS))])
def test_seal_parts_is_seal_of_the_concatenation(name: str, parts: list[bytes]) -> None:
    aead = aead_named(name)
    gathered, joined = RecordSealer(aead, KEYS, 41), RecordSealer(aead, KEYS, 41)
    plaintext = b"".join(bytes(p) for p in parts)
    for _ in range(2):  # and the sequence moves on the same way
        record = gathered.seal_parts(Flag.ENCRYPTED_MESSAGE, parts)
        assert record == joined.seal(Flag.ENCRYPTED_MESSAGE, plaintext)
        assert gathered.sequence == joined.sequence
        assert gathered.bytes_sealed == joined.bytes_sealed
    opener = RecordOpener(aead, KEYS, 42)
    header = decode_header(record[:HEADER_SIZE], 1 << 21)
    view = memoryview(record)
    assert opener.open(header, view[:HEADER_SIZE], view[HEADER_SIZE:]) == plaintext


@pytest.mark.parametrize("name", DEFAULT_AEADS)
def test_seal_parts_leaves_its_inputs_alone(name: str) -> None:
    source = bytearray(os.urandom(300_000))
    before = bytes(source)
    RecordSealer(aead_named(name), KEYS).seal_parts(Flag.ENCRYPTED_MESSAGE,
                                                    [b"\x05\x00\x00", memoryview(source)])
    assert source == before


def _record(name: str, plaintext: bytes, sequence: int = 0) -> bytearray:
    return RecordSealer(aead_named(name), KEYS, sequence).seal(Flag.ENCRYPTED_MESSAGE,
                                                               plaintext)


@pytest.mark.parametrize("name", DEFAULT_AEADS)
@pytest.mark.parametrize("size", [0, 1, 300, 256 * 1024])
def test_open_in_place_opens_a_record_inside_a_receive_buffer(name: str, size: int) -> None:
    plaintext = os.urandom(size)
    record = _record(name, plaintext, 7)
    header = decode_header(record[:HEADER_SIZE], 1 << 21)
    buffer = bytearray(b"junk") + record + bytearray(b"more")  # as in a receive buffer
    view = memoryview(buffer)[4 : 4 + len(record)]
    opener = RecordOpener(aead_named(name), KEYS, 7)
    opened = opener.open_in_place(header, view[:HEADER_SIZE], view[HEADER_SIZE:])
    assert opened == plaintext
    buffer[:] = b"\xa5" * len(buffer)  # the caller reuses its buffer: the result stays
    assert opened == plaintext
    assert (opener.sequence, opener.bytes_opened) == (8, header.length)
    # A read-only body (our own reassembly buffer) opens the same way, and is not written.
    ro = memoryview(bytes(record))
    again = RecordOpener(aead_named(name), KEYS, 7).open_in_place(header, ro[:HEADER_SIZE],
                                                                   ro[HEADER_SIZE:])
    assert again == plaintext and ro == record


@pytest.mark.parametrize("name", DEFAULT_AEADS)
def test_open_in_place_gives_every_record_a_buffer_of_its_own(name: str) -> None:
    """The layers above keep views of what this returns (channel data is not copied): a
    result must never be written again, not by the next record, not through the receive
    buffer (which cryptography 51 would refuse as an overlapping output anyway)."""
    opener = RecordOpener(aead_named(name), KEYS, 0)
    sealer = RecordSealer(aead_named(name), KEYS, 0)
    buffer = bytearray(300_000)
    kept = []
    for size in (1000, 300, 256 * 1024, 5, 256 * 1024):
        plaintext = os.urandom(size)
        record = sealer.seal(Flag.ENCRYPTED_MESSAGE, plaintext)
        buffer[: len(record)] = record
        view = memoryview(buffer)[: len(record)]
        header = decode_header(view[:HEADER_SIZE], 1 << 21)
        opened = opener.open_in_place(header, view[:HEADER_SIZE], view[HEADER_SIZE:])
        assert bytes(view) == record  # read, not written
        view.release()
        kept.append((plaintext, opened))
    buffer[:] = b"\xa5" * len(buffer)
    assert all(opened == plaintext for plaintext, opened in kept)
    assert len({id(opened) for _, opened in kept}) == len(kept)


@pytest.mark.parametrize("name", DEFAULT_AEADS)
def test_open_in_place_failure_moves_nothing(name: str) -> None:
    """A record that does not verify leaves the sequence where it was: the connection
    ends with a protocol error, and nothing half-decrypted is handed up."""
    record = bytearray(_record(name, os.urandom(4096), 0))
    record[-1] ^= 1
    header = decode_header(record[:HEADER_SIZE], 1 << 21)
    opener = RecordOpener(aead_named(name), KEYS, 0)
    view = memoryview(record)
    with pytest.raises(AuthenticationFailure):
        opener.open_in_place(header, view[:HEADER_SIZE], view[HEADER_SIZE:])
    assert (opener.sequence, opener.bytes_opened) == (0, 0)


@pytest.mark.parametrize("name", DEFAULT_AEADS)
def test_open_in_place_refuses_what_open_refuses(name: str) -> None:
    record = _record(name, b"some plaintext", 3)
    header = decode_header(record[:HEADER_SIZE], 1 << 21)
    tampered = bytearray(record)
    tampered[-1] ^= 1
    view = memoryview(tampered)
    with pytest.raises(AuthenticationFailure):
        RecordOpener(aead_named(name), KEYS, 3).open_in_place(header, view[:HEADER_SIZE],
                                                              view[HEADER_SIZE:])
    view = memoryview(bytearray(record))
    with pytest.raises(PacketUnsequenced):
        RecordOpener(aead_named(name), KEYS, 4).open_in_place(header, view[:HEADER_SIZE],
                                                              view[HEADER_SIZE:])


def test_what_arrives_outlives_the_receive_buffer() -> None:
    """The adapter reuses its receive buffer as soon as ``receive_data`` returns, and
    records are now decrypted inside it: channel data, a channel's open payload and a
    global request's payload must all be the peer's bytes after that buffer is
    overwritten (channel data is copied out by the mux, the rest by the transport)."""
    client, server = established_pair()
    cid = client.mux.open_channel("copy", b"open payload " * 10)
    client.mux.global_request("bench@example", b"request payload " * 10)
    chunks = [os.urandom(n) for n in (1, 5000, 256 * 1024)]
    events: list[object] = []

    def deliver() -> None:
        data = take(client)
        buffer = bytearray(data)
        view = memoryview(buffer)
        server.receive_data(view, NOW)
        view.release()
        buffer[:] = b"\xa5" * len(buffer)  # the next read lands here
        events.extend(server.events_received())

    deliver()
    [request] = [e for e in events if isinstance(e, ChannelOpenRequest)]
    server.mux.accept_channel(request.channel_id)
    client.receive_data(take(server), NOW)
    client.events_received()
    for chunk in chunks:
        client.mux.send_data(cid, chunk)
    deliver()
    assert request.payload == b"open payload " * 10
    [global_request] = [e for e in events if isinstance(e, GlobalRequest)]
    assert global_request.payload == b"request payload " * 10
    got = b"".join(bytes(e.data) for e in events if isinstance(e, ChannelData))
    assert got == b"".join(chunks)


def test_what_arrives_outlives_the_scratch_buffer() -> None:
    """Every record of one read is decrypted into the same scratch buffer before anyone
    looks at the events: each kept payload (channel data of two channels, extended data,
    a global request's) must still be the peer's bytes afterwards, whatever the sizes
    (the scratch grows mid-read)."""
    client, server = established_pair()
    a = client.mux.open_channel("copy", b"a")
    b = client.mux.open_channel("copy", b"b")
    server.receive_data(take(client), NOW)
    for request in server.events_received():
        if isinstance(request, ChannelOpenRequest):
            server.mux.accept_channel(request.channel_id)
    client.receive_data(take(server), NOW)
    client.events_received()
    sent: dict[tuple[int, int | None], list[bytes]] = {}
    for i, size in enumerate((10, 70_000, 3, 256 * 1024, 1, 200_000, 9000)):
        cid, chunk = (a, b)[i % 2], os.urandom(size)
        ext = 1 if i == 5 else None
        if ext is None:
            client.mux.send_data(cid, chunk)
        else:
            client.mux.send_data(cid, chunk, ext)
        sent.setdefault((cid, ext), []).append(chunk)
        if i == 2:
            client.mux.global_request("bench@example", b"request payload " * 10)
    buffer = bytearray(take(client))
    server.receive_data(memoryview(buffer), NOW)
    buffer[:] = b"\xa5" * len(buffer)
    events = server.events_received()
    [request] = [e for e in events if isinstance(e, GlobalRequest)]
    assert request.payload == b"request payload " * 10
    got: dict[tuple[int, int | None], list[bytes]] = {}
    for e in events:
        if isinstance(e, ChannelData):
            got.setdefault((e.channel_id, e.ext), []).append(bytes(e.data))
    # (channel ids differ between the two sides: compare the streams as a set)
    assert sorted(b"".join(v) for v in got.values()) == sorted(b"".join(v) for v in sent.values())


def test_channel_data_is_a_view_of_the_record_not_a_copy() -> None:
    """The bulk receive path copies a payload once, out of the socket buffer by the
    decryption: ChannelData is a read-only view of the record's own plaintext (the mux
    used to copy every payload again: 0.15 s per GiB of the receiving loop's ~1 s), and
    it stays the peer's bytes while later records arrive and the receive buffer is reused."""
    client, server = established_pair()
    cid = client.mux.open_channel("copy", b"")
    server.receive_data(take(client), NOW)
    [request] = [e for e in server.events_received() if isinstance(e, ChannelOpenRequest)]
    server.mux.accept_channel(request.channel_id)
    client.receive_data(take(server), NOW)
    client.events_received()
    chunks = [os.urandom(n) for n in (256 * 1024, 100, 256 * 1024)]
    got: list[ChannelData] = []
    for chunk in chunks:
        client.mux.send_data(cid, chunk)
        buffer = bytearray(take(client))
        server.receive_data(memoryview(buffer), NOW)
        buffer[:] = b"\xa5" * len(buffer)
        got.extend(e for e in server.events_received() if isinstance(e, ChannelData))
    assert [len(e.data) for e in got] == [len(c) for c in chunks]
    for event, chunk in zip(got, chunks, strict=True):
        assert isinstance(event.data, memoryview) and event.data.readonly
        assert isinstance(event.data.obj, bytes)  # the record's plaintext, not a copy of it
        assert event.data == chunk
