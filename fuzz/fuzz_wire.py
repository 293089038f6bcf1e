"""Fuzz the wire decoders: headers, the Reader, FrameBuffer, and the message decoders.

Contract under test: a decoder given any bytes returns a value or raises a
:class:`~common.errors.QsmpError` subclass; nothing else escapes. On top of that, whatever
decodes must re-encode to exactly the bytes it came from (the encodings are canonical), and a
FrameBuffer must yield the same packets however the stream is chunked.

Input: byte 0 picks the target, the rest is the target's input.

Run: ``python fuzz/fuzz_wire.py fuzz/corpus/wire -runs=1000000`` (or fuzz/run_all.sh).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.instrument import instrumented

with instrumented(__name__ == "__main__"):
    from common.accounts.keys import HostKey, PublicKey
    from common.errors import InvalidInput, QsmpError
    from common.protocol.handshake import ConnectRequest, ConnectResponse
    from common.protocol.negotiation import ChaffPolicy
    from common.wire import (
        HEADER_SIZE,
        MAX_CONNECT_REQUEST_BODY,
        MAX_HANDSHAKE_BODY,
        MAX_RECORD_BODY,
        FrameBuffer,
        Header,
        Reader,
        Writer,
        decode_header,
        encode_header,
    )
    from fuzz.support import SCENARIOS, Cursor, chunked

_MAX_BODIES = (MAX_CONNECT_REQUEST_BODY, MAX_HANDSHAKE_BODY, MAX_RECORD_BODY, 0, 1, 64)
_LIMITS = (0, 1, 2, 16, 64, 255, 256, 4096, 65536, 1 << 20)


def _mismatch(what: str, got: object, expected: object) -> AssertionError:
    return AssertionError(f"{what}: got {got!r}, expected {expected!r}")


# --------------------------------------------------------------------------- header


def _header(data: bytes) -> None:
    cur = Cursor(data)
    max_body = _MAX_BODIES[cur.u8() % len(_MAX_BODIES)]
    raw = cur.rest()
    try:
        header = decode_header(raw, max_body)
    except QsmpError:
        return
    if header.length > max_body:
        raise _mismatch("length above the limit", header.length, max_body)
    if encode_header(header.flag, header.sequence, header.length) != raw[:HEADER_SIZE]:
        raise _mismatch("header round trip", header, raw[:HEADER_SIZE])


# --------------------------------------------------------------------------- Reader

_ReadOp = Callable[[Reader, int], object]
_WriteOp = Callable[[Writer, Any], object]


def _as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes | memoryview)
    return bytes(value)


# Each op: (read it, write the value back or None when the op has no exact inverse).
_READ_OPS: tuple[tuple[_ReadOp, _WriteOp | None], ...] = (
    (lambda r, a: r.u8(), lambda w, v: w.u8(v)),
    (lambda r, a: r.u16(), lambda w, v: w.u16(v)),
    (lambda r, a: r.u32(), lambda w, v: w.u32(v)),
    (lambda r, a: r.u64(), lambda w, v: w.u64(v)),
    (lambda r, a: r.fixed(a), lambda w, v: w.fixed(_as_bytes(v))),
    (lambda r, a: r.view(a), lambda w, v: w.fixed(_as_bytes(v))),
    (lambda r, a: r.rest(), lambda w, v: w.fixed(_as_bytes(v))),
    (lambda r, a: r.vbytes(_LIMITS[a % len(_LIMITS)]), lambda w, v: w.vbytes(_as_bytes(v))),
    (lambda r, a: r.short_bytes(_LIMITS[a % 6]), lambda w, v: w.short_bytes(_as_bytes(v))),
    (lambda r, a: r.name(), lambda w, v: w.name(v)),
    (lambda r, a: r.text(_LIMITS[a % len(_LIMITS)]), lambda w, v: w.text(v)),
    (lambda r, a: r.names(a), lambda w, v: w.names(v)),
    (lambda r, a: r.boolean(), lambda w, v: w.boolean(v)),
    (lambda r, a: r.end(), None),
)


def _reader(data: bytes) -> None:
    """A program of reads chosen by the input over the rest of the input; every successful
    read must re-encode to exactly the bytes it consumed."""
    cur = Cursor(data)
    program = cur.take(cur.u8() % 24)
    payload = cur.rest()
    r = Reader(payload)
    for op in program:
        read, write = _READ_OPS[op % len(_READ_OPS)]
        start = len(payload) - r.remaining
        try:
            value = read(r, op >> 3)
        except QsmpError:
            continue
        end = len(payload) - r.remaining
        if not 0 <= start <= end <= len(payload):
            raise _mismatch("reader position", (start, end), len(payload))
        if write is not None:
            w = Writer()
            write(w, value)
            if w.getvalue() != payload[start:end]:
                raise _mismatch(f"read op {op % len(_READ_OPS)} round trip",
                                w.getvalue(), payload[start:end])


# --------------------------------------------------------------------------- FrameBuffer


def _reference_packets(stream: bytes, max_body: int
                       ) -> tuple[list[tuple[Header, bytes]], bool, int]:
    """Packets of a whole stream, whether a bad header stopped it, and bytes left over."""
    packets: list[tuple[Header, bytes]] = []
    pos = 0
    while len(stream) - pos >= HEADER_SIZE:
        try:
            header = decode_header(stream[pos : pos + HEADER_SIZE], max_body)
        except InvalidInput:
            return packets, True, len(stream) - pos
        if len(stream) - pos - HEADER_SIZE < header.length:
            break
        packets.append((header, stream[pos + HEADER_SIZE : pos + HEADER_SIZE + header.length]))
        pos += HEADER_SIZE + header.length
    return packets, False, len(stream) - pos


def _next_copy(buffer: FrameBuffer, max_body: int) -> tuple[Header, bytes, bytes] | None:
    """Next packet as copies, so no view outlives this call (the documented rule)."""
    packet = buffer.next_packet(max_body)
    if packet is None:
        return None
    header, header_bytes, body = packet
    return header, bytes(header_bytes), bytes(body)


def _scribble(buffer: bytearray) -> None:
    buffer[:] = b"\xa5" * len(buffer)


def _frames(data: bytes) -> None:
    cur = Cursor(data)
    max_body = _MAX_BODIES[cur.u8() % len(_MAX_BODIES)]
    mode, param, compact_policy = cur.u8(), cur.u8(), cur.u8() % 3
    stream = cur.rest()
    expected, expect_error, expected_left = _reference_packets(stream, max_body)

    buffer = FrameBuffer()
    got: list[tuple[Header, bytes]] = []
    error = False
    previous: bytearray | None = None
    # Each input is a buffer the caller reuses as soon as the FrameBuffer lets it: after
    # compact(), or after the next feed() (which compacts first). Scribbling over it then
    # must not change a single packet.
    for chunk in chunked(stream, mode, param, max_chunks=len(stream) or 1):
        current = bytearray(chunk)
        buffer.feed(current)
        if previous is not None:
            _scribble(previous)
        previous = current
        try:
            while (packet := _next_copy(buffer, max_body)) is not None:
                header, header_bytes, body = packet
                if header_bytes != encode_header(header.flag, header.sequence, header.length):
                    raise _mismatch("header bytes", header_bytes, header)
                got.append((header, body))
                if compact_policy == 1:
                    buffer.compact()
        except InvalidInput:
            error = True
            break
        if compact_policy == 2:
            buffer.compact()
            _scribble(current)
            previous = None
    if got != expected:
        raise _mismatch("packets under this chunking", len(got), len(expected))
    if error != expect_error:
        raise _mismatch("bad header detected", error, expect_error)
    if not error and buffer.buffered != expected_left:
        raise _mismatch("bytes left buffered", buffer.buffered, expected_left)


# --------------------------------------------------------------------------- messages


def _public_key(data: bytes) -> None:
    try:
        key = PublicKey.decode(data)
    except QsmpError:
        return
    if key.encode() != data:
        raise _mismatch("public key round trip", key.encode(), data)
    line = key.openssh_line("fuzz")
    if PublicKey.parse_line(line) != (key, "fuzz"):
        raise _mismatch("public key line round trip", line, key)


def _key_line(data: bytes) -> None:
    try:
        key, comment = PublicKey.parse_line(data.decode("utf-8", "replace"))
    except QsmpError:
        return
    if "\n" in comment or "\r" in comment:
        return  # key files are split into lines first; openssh_line refuses these
    again = PublicKey.parse_line(key.openssh_line(comment))
    if again != (key, comment.strip()):
        raise _mismatch("key line round trip", again, (key, comment))


def _private_key(data: bytes) -> None:
    try:
        key = HostKey.decode_private(data)
    except QsmpError:
        return
    if key.encode_private() != data:
        raise _mismatch("private key round trip", key.encode_private(), data)


def _connect_request(data: bytes) -> None:
    try:
        request = ConnectRequest.decode(data)
    except QsmpError:
        return
    if request.encode() != data:
        raise _mismatch("connect request round trip", request.encode(), data)


def _connect_response(data: bytes) -> None:
    cur = Cursor(data)
    offer = SCENARIOS[cur.u8() % len(SCENARIOS)].offer
    body = cur.rest()
    try:
        response, signed_len = ConnectResponse.decode(body, offer)
    except QsmpError:
        return
    if response.encode() != body:
        raise _mismatch("connect response round trip", response.encode(), body)
    if signed_len != len(response.encode_unsigned()):
        raise _mismatch("signed prefix", signed_len, len(response.encode_unsigned()))


def _chaff(data: bytes) -> None:
    r = Reader(data)
    try:
        policy = ChaffPolicy.decode(r)
    except QsmpError:
        return
    policy.validate()
    w = Writer()
    policy.encode(w)
    consumed = data[: len(data) - r.remaining]
    if w.getvalue() != consumed:
        raise _mismatch("chaff policy round trip", w.getvalue(), consumed)


TARGETS: tuple[Callable[[bytes], None], ...] = (
    _header, _reader, _frames, _public_key, _connect_request, _connect_response, _chaff,
    _private_key, _key_line,
)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
