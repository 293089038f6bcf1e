"""QSMP framing: the 13-byte packet header and bounded decoders for message bodies.

Every length read from the wire is checked against a limit *before* anything is allocated
or waited for: a peer that announces a 4 GiB message is refused on the 13th byte, not after
we have buffered it. Decoders raise :class:`~common.errors.InvalidInput`; they never return
partial values and never let a ``struct.error`` or ``IndexError`` escape.

Header layout (QSMP rev 1a section 5.7; the spec's text says "9 bytes" but lists
1 + 8 + 4 = 13; byte order is big-endian)::

    flag u8 | sequence u64 | length u32 | body[length]
"""

from __future__ import annotations

import struct
from enum import IntEnum

from common.errors import InvalidInput
from common.value_record import Record as Record  # (re-exported: where records import it from)

HEADER = struct.Struct(">BQI")
HEADER_SIZE = HEADER.size  # 13

#: Largest application payload carried by one encrypted record.
MAX_RECORD_PAYLOAD = 1 << 20
#: Largest body of an encrypted record: payload, inner header, padding and AEAD tag.
MAX_RECORD_BODY = MAX_RECORD_PAYLOAD + 4096
#: Largest handshake body we accept at all; each handshake state narrows this further.
#: Sized for the largest optional algorithm (Classic McEliece 8192128: 1.36 MB public key).
MAX_HANDSHAKE_BODY = 2 * 1024 * 1024
#: Before a suite is negotiated nothing needs more than this (names, token, offers).
MAX_CONNECT_REQUEST_BODY = 8192
#: Name lists: entries and bytes per entry.
MAX_NAMES = 32
MAX_NAME_LENGTH = 64


class Flag(IntEnum):
    """Packet header flags, QSMP rev 1a table 5.8 (values unchanged)."""

    NONE = 0x00
    CONNECT_REQUEST = 0x01
    CONNECT_RESPONSE = 0x02
    CONNECTION_TERMINATED = 0x03
    ENCRYPTED_MESSAGE = 0x04
    EXSTART_REQUEST = 0x05
    EXSTART_RESPONSE = 0x06
    EXCHANGE_REQUEST = 0x07
    EXCHANGE_RESPONSE = 0x08
    ESTABLISH_REQUEST = 0x09
    ESTABLISH_RESPONSE = 0x0A
    KEEP_ALIVE_REQUEST = 0x0B
    REMOTE_CONNECTED = 0x0C
    REMOTE_TERMINATED = 0x0D
    SESSION_ESTABLISHED = 0x0E
    ESTABLISH_VERIFY = 0x0F
    UNRECOGNIZED_PROTOCOL = 0x10
    ERROR_CONDITION = 0xFF


_FLAG_VALUES = frozenset(int(f) for f in Flag)


class Header(Record):
    __slots__ = ("flag", "sequence", "length")  # noqa: RUF023 (field order)
    flag: int
    sequence: int
    length: int

    def __init__(self, flag: int, sequence: int, length: int) -> None:
        object.__setattr__(self, "flag", flag)
        object.__setattr__(self, "sequence", sequence)
        object.__setattr__(self, "length", length)

    def encode(self) -> bytes:
        return HEADER.pack(self.flag, self.sequence, self.length)


def cut_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8 of at most ``limit`` bytes, cut on a character boundary. Readers
    bound text fields in bytes (:meth:`Reader.text`), so a sender cutting by characters
    would send more than the peer reads, and the peer would end the connection."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def encode_header(flag: int, sequence: int, length: int) -> bytes:
    return HEADER.pack(flag, sequence, length)


def decode_header(data: bytes | bytearray | memoryview, max_body: int) -> Header:
    """Parse 13 header bytes; refuse unknown flags and bodies larger than ``max_body``."""
    if len(data) < HEADER_SIZE:
        raise InvalidInput("truncated packet header")
    flag, sequence, length = HEADER.unpack_from(data)
    if flag not in _FLAG_VALUES:
        raise InvalidInput(f"unknown packet flag 0x{flag:02x}")
    if length > max_body:
        raise InvalidInput(f"packet body of {length} bytes exceeds the limit of {max_body}")
    return Header(flag, sequence, length)


def encode_packet(flag: int, sequence: int, body: bytes) -> bytes:
    return HEADER.pack(flag, sequence, len(body)) + body


class Reader:
    """A cursor over one message body. Every read is bounds-checked."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining:
            raise InvalidInput("message truncated")
        view = self._data[self._pos : self._pos + n]
        self._pos += n
        return view

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def fixed(self, n: int) -> bytes:
        return bytes(self._take(n))

    def view(self, n: int) -> memoryview:
        """``n`` bytes without copying, for bulk data."""
        return self._take(n)

    def rest(self) -> memoryview:
        return self._take(self.remaining)

    def vbytes(self, max_length: int) -> bytes:
        """u32 length then bytes; the length is bounded before anything is copied."""
        n = self.u32()
        if n > max_length:
            raise InvalidInput(f"field of {n} bytes exceeds the limit of {max_length}")
        return bytes(self._take(n))

    def short_bytes(self, max_length: int = 255) -> bytes:
        """u8 length then bytes."""
        n = self.u8()
        if n > max_length:
            raise InvalidInput(f"field of {n} bytes exceeds the limit of {max_length}")
        return bytes(self._take(n))

    def name(self, max_length: int = MAX_NAME_LENGTH) -> str:
        """A short printable-ASCII identifier (algorithm or request name)."""
        raw = self.short_bytes(max_length)
        if not raw or not all(0x21 <= b <= 0x7E for b in raw):
            raise InvalidInput("name is empty or not printable ASCII")
        return raw.decode("ascii")

    def text(self, max_length: int) -> str:
        """u32 length then UTF-8 text (messages, paths, commands)."""
        raw = self.vbytes(max_length)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput("text is not valid UTF-8") from exc

    def names(self, max_count: int = MAX_NAMES) -> tuple[str, ...]:
        count = self.u8()
        if count > max_count:
            raise InvalidInput(f"list of {count} names exceeds the limit of {max_count}")
        return tuple(self.name() for _ in range(count))

    def boolean(self) -> bool:
        value = self.u8()
        if value > 1:
            raise InvalidInput("boolean field is neither 0 nor 1")
        return value == 1

    def end(self) -> None:
        if self.remaining:
            raise InvalidInput(f"{self.remaining} unexpected trailing bytes")


class Writer:
    """Builds a message body; the mirror of :class:`Reader`."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(1, "big"))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(2, "big"))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(4, "big"))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(8, "big"))
        return self

    def fixed(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def vbytes(self, data: bytes) -> Writer:
        self.u32(len(data))
        self._parts.append(bytes(data))
        return self

    def short_bytes(self, data: bytes) -> Writer:
        if len(data) > 255:
            raise ValueError("short field longer than 255 bytes")
        self.u8(len(data))
        self._parts.append(bytes(data))
        return self

    def name(self, value: str) -> Writer:
        """Refuses what :meth:`Reader.name` would refuse, so we never send an invalid name."""
        raw = value.encode("ascii")
        if not raw or len(raw) > MAX_NAME_LENGTH or not all(0x21 <= b <= 0x7E for b in raw):
            raise ValueError(f"invalid protocol name {value!r}")
        return self.short_bytes(raw)

    def text(self, value: str) -> Writer:
        return self.vbytes(value.encode("utf-8"))

    def names(self, values: tuple[str, ...] | list[str]) -> Writer:
        if len(values) > MAX_NAMES:
            raise ValueError("too many names")
        self.u8(len(values))
        for v in values:
            self.name(v)
        return self

    def boolean(self, value: bool) -> Writer:
        return self.u8(1 if value else 0)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class FrameBuffer:
    """Splits a byte stream into packets, copying as little as possible.

    Whole packets are parsed straight out of the caller's buffer (``feed`` borrows it); only
    a packet cut off at the end of one input is copied, and only the bytes it still lacks are
    taken from the next. On the bulk path that leaves one copy per received byte: the
    decryption out of the caller's buffer.

    ``max_body`` is consulted for each header, so the caller can tighten the limit as the
    protocol state changes (small before negotiation, record-sized once established).

    Views returned by :meth:`next_packet` point into the caller's buffer or into a buffer of
    ours that is never resized while exported; use them before the caller's buffer is
    reused. :meth:`compact` (or the next :meth:`feed`) copies whatever is still unread.
    """

    __slots__ = ("_bpos", "_buf", "_pos", "_view")

    def __init__(self) -> None:
        self._buf = bytearray()  # owned bytes: the unread tail of earlier inputs
        self._bpos = 0
        self._view = _EMPTY  # the borrowed current input
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._bpos + len(self._view) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.compact()
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if self._bpos < len(self._buf):
            view = self._top_up(view)
        self._view, self._pos = view, 0

    def compact(self) -> None:
        """Take ownership of what is left of the borrowed input (it is about to become
        invalid), dropping consumed bytes. A fresh buffer each time, so views handed out
        earlier stay valid."""
        rest = self._view[self._pos :]
        if rest or self._bpos:
            self._buf = self._buf[self._bpos :] + rest
            self._bpos = 0
        self._view, self._pos = _EMPTY, 0

    def unread(self) -> bytes:
        """A copy of what was fed and not yet returned as packets."""
        return bytes(self._buf[self._bpos :]) + bytes(self._view[self._pos :])

    def _top_up(self, view: memoryview) -> memoryview:
        """Complete the packet our own buffer ends with, from the front of ``view``."""
        buf, pos = self._buf, 0
        while True:
            have = len(buf) - pos
            if have < HEADER_SIZE:
                take = min(HEADER_SIZE - have, len(view))
                buf += view[:take]
                view = view[take:]
                if len(buf) - pos < HEADER_SIZE:
                    return view
                have = HEADER_SIZE
            total = HEADER_SIZE + int.from_bytes(buf[pos + 9 : pos + 13], "big")
            if have >= total:
                pos += total
                if pos == len(buf):
                    return view
                continue
            # Bounded by the input's size; an oversized header is refused by next_packet.
            take = min(total - have, len(view))
            buf += view[:take]
            return view[take:]

    def peek_header(self, max_body: int) -> Header | None:
        """The next packet's header, checked, without consuming anything."""
        if self._bpos < len(self._buf):
            view, pos = memoryview(self._buf), self._bpos
        else:
            view, pos = self._view, self._pos
        if len(view) - pos < HEADER_SIZE:
            return None
        return decode_header(view[pos : pos + HEADER_SIZE], max_body)

    def next_packet(self, max_body: int) -> tuple[Header, memoryview, memoryview] | None:
        """Return ``(header, header_bytes, body)`` for the next complete packet, or None."""
        if self._bpos < len(self._buf):
            # Our own bytes come first; if they hold only part of a packet, _top_up has
            # already taken everything the borrowed input could give it.
            got = _split_packet(memoryview(self._buf), self._bpos, max_body)
            if got is not None:
                self._bpos = got[3]
                return got[0], got[1], got[2]
            return None
        got = _split_packet(self._view, self._pos, max_body)
        if got is None:
            return None
        self._pos = got[3]
        return got[0], got[1], got[2]


_EMPTY = memoryview(b"")


def _split_packet(view: memoryview, pos: int, max_body: int
                  ) -> tuple[Header, memoryview, memoryview, int] | None:
    if len(view) - pos < HEADER_SIZE:
        return None
    header = decode_header(view[pos : pos + HEADER_SIZE], max_body)
    body_start = pos + HEADER_SIZE
    end = body_start + header.length
    if end > len(view):
        return None
    return header, view[pos:body_start], view[body_start:end], end
