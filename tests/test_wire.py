"""Framing and bounded decoders (common/wire.py).

The properties that matter on a hostile wire: a header is refused on its 13th byte when its
flag is unknown or its length is over the limit (nothing is buffered or waited for); a decoder
on short or malformed input raises InvalidInput and nothing else; and how the stream happens
to be chunked never changes which packets come out.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.wire import (
    HEADER_SIZE,
    MAX_CONNECT_REQUEST_BODY,
    MAX_NAME_LENGTH,
    MAX_NAMES,
    MAX_RECORD_BODY,
    Flag,
    FrameBuffer,
    Header,
    Reader,
    Writer,
    decode_header,
    encode_header,
    encode_packet,
)

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
FLAG_VALUES = sorted(int(f) for f in Flag)
UNKNOWN_FLAGS = [v for v in range(256) if v not in FLAG_VALUES]

flags = st.sampled_from(FLAG_VALUES)
sequences = st.integers(0, U64)
printable_names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    min_size=1, max_size=MAX_NAME_LENGTH,
)


# --------------------------------------------------------------------------- header


def test_header_is_13_bytes_big_endian() -> None:
    raw = encode_header(Flag.ENCRYPTED_MESSAGE, 0x0102030405060708, 0x0A0B0C0D)
    assert HEADER_SIZE == 13
    assert raw == bytes([0x04, 1, 2, 3, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0C, 0x0D])
    assert Header(4, 0x0102030405060708, 0x0A0B0C0D).encode() == raw


@given(flag=flags, sequence=sequences, length=st.integers(0, U32))
def test_header_round_trip(flag: int, sequence: int, length: int) -> None:
    raw = encode_header(flag, sequence, length)
    assert len(raw) == HEADER_SIZE
    assert decode_header(raw, max_body=U32) == Header(flag, sequence, length)
    # Trailing bytes (the body) are not the header's business.
    assert decode_header(raw + b"body", max_body=U32) == Header(flag, sequence, length)


@pytest.mark.parametrize("flag", UNKNOWN_FLAGS)
def test_unknown_flag_rejected(flag: int) -> None:
    with pytest.raises(InvalidInput, match="flag"):
        decode_header(struct.pack(">BQI", flag, 0, 0), max_body=100)


@pytest.mark.parametrize("flag", UNKNOWN_FLAGS[:8] + UNKNOWN_FLAGS[-8:])
def test_frame_buffer_rejects_unknown_flag_on_13th_byte(flag: int) -> None:
    fb = FrameBuffer()
    fb.feed(struct.pack(">BQI", flag, 0, 1)[:12])
    assert fb.next_packet(100) is None
    fb.feed(b"\x00")
    with pytest.raises(InvalidInput):
        fb.next_packet(100)


def test_length_bound_inclusive() -> None:
    assert decode_header(encode_header(1, 0, 100), max_body=100).length == 100
    with pytest.raises(InvalidInput, match="exceeds"):
        decode_header(encode_header(1, 0, 101), max_body=100)


@pytest.mark.parametrize("short", range(HEADER_SIZE))
def test_truncated_header_rejected(short: int) -> None:
    with pytest.raises(InvalidInput):
        decode_header(encode_header(1, 0, 0)[:short], max_body=100)


@pytest.mark.parametrize("announced", [MAX_RECORD_BODY + 1, 1 << 31, U32])
def test_frame_buffer_refuses_huge_length_from_header_alone(announced: int) -> None:
    """A peer announcing gigabytes is refused as soon as the 13 header bytes are in: no
    body byte has arrived, nothing waits for one."""
    fb = FrameBuffer()
    fb.feed(encode_header(Flag.ENCRYPTED_MESSAGE, 0, announced))
    assert fb.buffered == HEADER_SIZE
    with pytest.raises(InvalidInput, match="exceeds"):
        fb.next_packet(MAX_RECORD_BODY)


def test_frame_buffer_limit_is_per_call() -> None:
    """The caller tightens the limit with the protocol state: the same header can be fine
    for one state and refused in another."""
    fb = FrameBuffer()
    fb.feed(encode_header(Flag.CONNECT_RESPONSE, 0, MAX_CONNECT_REQUEST_BODY + 1))
    assert fb.next_packet(MAX_RECORD_BODY) is None  # within this limit: waits for the body
    with pytest.raises(InvalidInput):
        fb.next_packet(MAX_CONNECT_REQUEST_BODY)


def test_frame_buffer_waits_for_body_at_exact_limit() -> None:
    fb = FrameBuffer()
    fb.feed(encode_header(Flag.CONNECT_REQUEST, 0, 50) + bytes(49))
    assert fb.next_packet(50) is None
    fb.feed(b"\x01")
    got = fb.next_packet(50)
    assert got is not None
    header, header_bytes, body = got
    assert header == Header(Flag.CONNECT_REQUEST, 0, 50)
    assert bytes(header_bytes) == encode_header(Flag.CONNECT_REQUEST, 0, 50)
    assert bytes(body) == bytes(49) + b"\x01"
    del got, header_bytes, body


# --------------------------------------------------------------------------- Reader bounds


def _readers() -> list[tuple[str, Callable[[Reader], object]]]:
    return [
        ("u8", lambda r: r.u8()),
        ("u16", lambda r: r.u16()),
        ("u32", lambda r: r.u32()),
        ("u64", lambda r: r.u64()),
        ("fixed", lambda r: r.fixed(16)),
        ("view", lambda r: r.view(16)),
        ("vbytes", lambda r: r.vbytes(1 << 20)),
        ("short_bytes", lambda r: r.short_bytes()),
        ("name", lambda r: r.name()),
        ("text", lambda r: r.text(1 << 20)),
        ("names", lambda r: r.names()),
        ("boolean", lambda r: r.boolean()),
    ]


READERS = _readers()


def _valid_encoding(method: str) -> bytes:
    w = Writer()
    encoders: dict[str, Callable[[], object]] = {
        "u8": lambda: w.u8(200),
        "u16": lambda: w.u16(0xBEEF),
        "u32": lambda: w.u32(0xDEADBEEF),
        "u64": lambda: w.u64(U64),
        "fixed": lambda: w.fixed(bytes(range(16))),
        "view": lambda: w.fixed(bytes(range(16))),
        "vbytes": lambda: w.vbytes(b"payload bytes"),
        "short_bytes": lambda: w.short_bytes(b"short"),
        "name": lambda: w.name("aes256gcm"),
        "text": lambda: w.text("h\u00e9llo \u2603"),
        "names": lambda: w.names(["mlkem768", "mldsa65", "x"]),
        "boolean": lambda: w.boolean(True),
    }
    encoders[method]()
    return w.getvalue()


@pytest.mark.parametrize(("method", "read"), READERS, ids=[m for m, _ in READERS])
def test_every_reader_on_every_truncation_raises_invalid_input(
    method: str, read: Callable[[Reader], object]
) -> None:
    full = _valid_encoding(method)
    r = Reader(full)
    read(r)
    r.end()
    for cut in range(len(full)):
        with pytest.raises(InvalidInput):
            read(Reader(full[:cut]))


@pytest.mark.parametrize(("method", "read"), READERS, ids=[m for m, _ in READERS])
@settings(max_examples=60)
@given(data=st.binary(max_size=40))
def test_readers_on_garbage_raise_only_invalid_input(
    method: str, read: Callable[[Reader], object], data: bytes
) -> None:
    """Whatever the bytes, a reader returns a value or raises InvalidInput: never
    IndexError, struct.error, UnicodeDecodeError or ValueError."""
    r = Reader(data)
    try:
        read(r)
    except InvalidInput:
        return
    assert 0 <= r.remaining <= len(data)


def test_reader_limits() -> None:
    with pytest.raises(InvalidInput, match="exceeds"):
        Reader(Writer().vbytes(bytes(11)).getvalue()).vbytes(10)
    # The length is checked before the bytes are wanted: a 4 GiB claim is refused at once.
    with pytest.raises(InvalidInput, match="exceeds"):
        Reader(b"\xff\xff\xff\xff").vbytes(1 << 20)
    with pytest.raises(InvalidInput, match="exceeds"):
        Reader(Writer().short_bytes(bytes(11)).getvalue()).short_bytes(10)
    with pytest.raises(InvalidInput):
        Reader(b"\x00").name()  # empty
    with pytest.raises(InvalidInput):
        Reader(b"\x02a b").name()  # space is not printable-ASCII-without-space
    with pytest.raises(InvalidInput):
        Reader(b"\x01\x7f").name()
    with pytest.raises(InvalidInput):
        Reader(Writer().u8(MAX_NAMES + 1).getvalue()).names()
    with pytest.raises(InvalidInput):
        Reader(b"\x02").boolean()
    with pytest.raises(InvalidInput):
        Reader(b"\x00\x00\x00\x02\xc3\x28").text(10)  # invalid UTF-8
    with pytest.raises(InvalidInput):
        Reader(b"abc").fixed(-1)
    with pytest.raises(InvalidInput, match="trailing"):
        Reader(b"x").end()
    r = Reader(b"abc")
    assert bytes(r.rest()) == b"abc"
    r.end()


def test_writer_refuses_what_reader_would_refuse() -> None:
    with pytest.raises(ValueError):
        Writer().short_bytes(bytes(256))
    with pytest.raises(ValueError):
        Writer().names(["a"] * (MAX_NAMES + 1))


# --------------------------------------------------------------------------- round trips

field_values = st.one_of(
    st.tuples(st.just("u8"), st.integers(0, 0xFF)),
    st.tuples(st.just("u16"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("u32"), st.integers(0, U32)),
    st.tuples(st.just("u64"), st.integers(0, U64)),
    st.tuples(st.just("fixed"), st.binary(max_size=40)),
    st.tuples(st.just("vbytes"), st.binary(max_size=300)),
    st.tuples(st.just("short_bytes"), st.binary(max_size=255)),
    st.tuples(st.just("name"), printable_names),
    st.tuples(st.just("text"), st.text(max_size=50)),
    st.tuples(st.just("names"), st.lists(printable_names, max_size=5).map(tuple)),
    st.tuples(st.just("boolean"), st.booleans()),
)


def _write(w: Writer, kind: str, value: object) -> None:
    getattr(w, kind)(value)


def _read(r: Reader, kind: str, value: object) -> object:
    if kind == "fixed":
        assert isinstance(value, bytes)
        return r.fixed(len(value))
    if kind == "vbytes":
        return r.vbytes(1 << 20)
    if kind == "text":
        return r.text(1 << 20)
    return getattr(r, kind)()


@given(fields=st.lists(field_values, max_size=12))
def test_writer_reader_round_trip(fields: list[tuple[str, object]]) -> None:
    w = Writer()
    for kind, value in fields:
        _write(w, kind, value)
    encoded = w.getvalue()
    r = Reader(encoded)
    for kind, value in fields:
        assert _read(r, kind, value) == value
    r.end()
    # Any truncation of a message that needs its last byte fails cleanly.
    if encoded:
        r = Reader(encoded[:-1])
        with pytest.raises(InvalidInput):
            for kind, value in fields:
                _read(r, kind, value)
            r.end()
            raise AssertionError("unreachable: r.end() cannot pass with a byte missing")


def test_writer_chains_and_reader_view_does_not_copy() -> None:
    data = Writer().u8(1).u16(2).u32(3).u64(4).getvalue()
    assert data == b"\x01\x00\x02\x00\x00\x00\x03" + (4).to_bytes(8, "big")
    buf = bytearray(b"abcdef")
    view = Reader(buf).view(3)
    buf[0] = ord("X")
    assert bytes(view) == b"Xbc"
    view.release()


# --------------------------------------------------------------------------- FrameBuffer

packets_strategy = st.lists(
    st.tuples(flags, sequences, st.binary(max_size=200)), min_size=1, max_size=8
)


def _drain(fb: FrameBuffer, max_body: int = 1 << 20) -> list[tuple[Header, bytes, bytes]]:
    """Every complete packet, copied out, with the views released before the next feed."""
    out = []
    while True:
        got = fb.next_packet(max_body)
        if got is None:
            break
        header, header_bytes, body = got
        out.append((header, bytes(header_bytes), bytes(body)))
        header_bytes.release()
        body.release()
        del got
    fb.compact()
    return out


def _feed_chunks(chunks: list[bytes]) -> list[tuple[Header, bytes, bytes]]:
    fb = FrameBuffer()
    out = []
    for chunk in chunks:
        fb.feed(chunk)
        out.extend(_drain(fb))
    assert fb.buffered == 0
    return out


def _expected(packets: list[tuple[int, int, bytes]]) -> list[tuple[Header, bytes, bytes]]:
    return [(Header(f, s, len(b)), encode_header(f, s, len(b)), b) for f, s, b in packets]


def _stream(packets: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(encode_packet(f, s, b) for f, s, b in packets)


@given(packets=packets_strategy)
def test_frame_buffer_whole_and_byte_at_a_time(packets: list[tuple[int, int, bytes]]) -> None:
    stream = _stream(packets)
    expected = _expected(packets)
    assert _feed_chunks([stream]) == expected
    assert _feed_chunks([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_frame_buffer_split_at_every_byte() -> None:
    packets = [(Flag.CONNECT_REQUEST, 0, b"hello"), (Flag.ENCRYPTED_MESSAGE, 7, b""),
               (Flag.ERROR_CONDITION, U64, bytes(range(40)))]
    stream = _stream(packets)
    expected = _expected(packets)
    for cut in range(len(stream) + 1):
        assert _feed_chunks([stream[:cut], stream[cut:]]) == expected, cut


@given(packets=packets_strategy, data=st.data())
def test_frame_buffer_random_chunking(packets: list[tuple[int, int, bytes]],
                                      data: st.DataObject) -> None:
    stream = _stream(packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    assert _feed_chunks(chunks) == _expected(packets)


def test_frame_buffer_partial_packet_stays_buffered() -> None:
    fb = FrameBuffer()
    stream = encode_packet(Flag.CONNECT_REQUEST, 0, b"abc") + encode_packet(1, 1, b"defg")[:-1]
    fb.feed(stream)
    got = _drain(fb)
    assert [b for _, _, b in got] == [b"abc"]
    assert fb.buffered == HEADER_SIZE + 3
    fb.feed(b"g")
    assert [b for _, _, b in _drain(fb)] == [b"defg"]
    assert fb.buffered == 0


def test_frame_buffer_peek_does_not_consume() -> None:
    fb = FrameBuffer()
    fb.feed(encode_packet(Flag.CONNECT_REQUEST, 3, b"xy"))
    assert fb.peek_header(10) == Header(Flag.CONNECT_REQUEST, 3, 2)
    assert fb.peek_header(10) == Header(Flag.CONNECT_REQUEST, 3, 2)
    assert [h for h, _, _ in _drain(fb)] == [Header(Flag.CONNECT_REQUEST, 3, 2)]
