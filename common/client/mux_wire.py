"""The control socket's messages: what a mux client and the master say to each other.

Connection sharing (qsh.1 CONNECTION SHARING): the qsh that logged in (the master) listens
on a Unix socket at ControlPath; a later qsh for the same host (a mux client) asks it for a
session over the connection it already has. Both sides import this module, and the mux
client imports little else: a command over a shared connection must cost no more than
talking to the socket, so this is the standard library only (no asyncio, no crypto, nothing
of the protocol stack; tests/test_control.py checks).

Framing: ``u32 length | u8 type | body`` (length counts type and body). Every length is
checked before anything is allocated: a frame over :data:`MAX_FRAME`, a string over its
limit or a count over its limit ends the conversation. Strings are ``u32 length | UTF-8``
(surrogateescape: environment values are bytes on Linux). The socket is the user's only
(mode 0600, peer uid checked both ways), so the limits guard against bugs and runaway
clients rather than strangers.

A conversation::

    master -> client   HELLO       u32 version | u32 master pid
    client -> master   one of:
      NEW_SESSION  u32 flags | str term | 4 x u32 size | str command | u32 n | n x (str, str)
                   (with stdin, stdout, stderr as SCM_RIGHTS on its first byte)
      CHECK | EXIT | STOP        (empty)
      FORWARD | CANCEL           str kind | str spec      (a tunnel, as -L/-R/-D write it)
      NEW_COPY     the copy channel's open payload, raw (docs/PROTOCOL.md §10A.1)
                   (with one end of a socketpair as SCM_RIGHTS on its first byte)
    master -> client   OK [str message] | ERROR str message
    then, in a session:
      client -> master  WINDOW_CHANGE 4 x u32 | SIGNAL str name     (any number)
      master -> client  EXIT_STATUS u32 code   (qsh's exit code: status, 128+N, or 255)
    and for a copy (qcp, common/client/mux_copy.py):
      master -> client  OPEN_FAILED u32 reason | str message   (the server refused the
                        channel) instead of OK; after OK the socketpair carries the
                        channel's bytes both ways, and the master says OK once more when
                        the relay has ended (nothing on the control socket means it died)

A master that predates a message type ends the conversation at its header (an unknown
type): the client takes that as "this master cannot do it" and goes its own way. ERROR is
the master's own refusal; the client then does the same.
"""

from __future__ import annotations

import struct

VERSION = 1
#: A whole frame: the command (64 KiB) and the environment fit with room to spare.
MAX_FRAME = 256 * 1024
MAX_STRING = 128 * 1024
MAX_ENV = 256
MAX_DIMENSION = 100_000

HELLO = 1
NEW_SESSION = 2
CHECK = 3
EXIT = 4
STOP = 5
OK = 6
ERROR = 7
WINDOW_CHANGE = 8
SIGNAL = 9
EXIT_STATUS = 10
FORWARD = 11
CANCEL = 12
NEW_COPY = 13
OPEN_FAILED = 14
TYPES = frozenset(range(1, 15))

#: NEW_SESSION flags.
WANT_TTY = 1
HAS_COMMAND = 2
SUBSYSTEM = 4
STDIN_IS_TTY = 8
#: -q: the master says nothing of its own on the client's stderr.
QUIET = 16

_HEADER = struct.Struct(">IB")
HEADER_SIZE = _HEADER.size


class MuxError(Exception):
    """A frame that breaks the rules above: the conversation ends."""


def frame(kind: int, body: bytes = b"") -> bytes:
    if len(body) + 1 > MAX_FRAME:
        raise MuxError(f"message too long ({len(body)} bytes)")
    return _HEADER.pack(len(body) + 1, kind) + body


def parse_header(header: bytes) -> tuple[int, int]:
    """(type, body length) of a frame header; checked before the body is read."""
    length, kind = _HEADER.unpack(header)
    if not 1 <= length <= MAX_FRAME:
        raise MuxError(f"bad frame length {length}")
    if kind not in TYPES:
        raise MuxError(f"unknown message type {kind}")
    return kind, length - 1


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def string(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    if len(data) > MAX_STRING:
        raise MuxError("string too long")
    return u32(len(data)) + data


class Body:
    """Reads a frame's body field by field; running off its end is a :class:`MuxError`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def u32(self) -> int:
        if self._at + 4 > len(self._data):
            raise MuxError("truncated message")
        (value,) = struct.unpack_from(">I", self._data, self._at)
        self._at += 4
        return int(value)

    def string(self) -> str:
        length = self.u32()
        if length > MAX_STRING or self._at + length > len(self._data):
            raise MuxError("bad string length")
        data = self._data[self._at:self._at + length]
        self._at += length
        try:
            return data.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:
            raise MuxError("string not UTF-8") from None

    def end(self) -> None:
        if self._at != len(self._data):
            raise MuxError("trailing bytes in message")


def hello(pid: int) -> bytes:
    return frame(HELLO, u32(VERSION) + u32(pid))


def decode_hello(body: bytes) -> int:
    """The master's pid; a master of another version is an error."""
    reader = Body(body)
    version, pid = reader.u32(), reader.u32()
    reader.end()
    if version != VERSION:
        raise MuxError(f"the master speaks control protocol {version}, not {VERSION}")
    return pid


Size = tuple[int, int, int, int]


class SessionRequest:
    """What a mux client asks for: the pieces of a session the master cannot know."""

    def __init__(self, *, flags: int, term: str, size: Size, command: str | None,
                 environment: list[tuple[str, str]]) -> None:
        self.flags = flags
        self.term = term
        self.size = size
        self.command = command
        self.environment = environment

    def encode(self) -> bytes:
        flags = self.flags | (HAS_COMMAND if self.command is not None else 0)
        body = [u32(flags), string(self.term), *(u32(min(n, MAX_DIMENSION)) for n in self.size),
                string(self.command or ""), u32(len(self.environment))]
        for name, value in self.environment:
            body += [string(name), string(value)]
        return frame(NEW_SESSION, b"".join(body))

    @classmethod
    def decode(cls, body: bytes) -> SessionRequest:
        reader = Body(body)
        flags, term = reader.u32(), reader.string()
        size = (reader.u32(), reader.u32(), reader.u32(), reader.u32())
        if max(size) > MAX_DIMENSION:
            raise MuxError("bad window size")
        command: str | None = reader.string()
        count = reader.u32()
        if count > MAX_ENV:
            raise MuxError(f"too many environment variables ({count})")
        environment = [(reader.string(), reader.string()) for _ in range(count)]
        reader.end()
        if not flags & HAS_COMMAND:
            command = None
        return cls(flags=flags, term=term, size=size, command=command,
                   environment=environment)


def encode_size(size: Size) -> bytes:
    return frame(WINDOW_CHANGE, b"".join(u32(min(n, MAX_DIMENSION)) for n in size))


def decode_size(body: bytes) -> Size:
    reader = Body(body)
    size = (reader.u32(), reader.u32(), reader.u32(), reader.u32())
    reader.end()
    if max(size) > MAX_DIMENSION:
        raise MuxError("bad window size")
    return size


def decode_u32(body: bytes) -> int:
    reader = Body(body)
    value = reader.u32()
    reader.end()
    return value


def decode_pair(body: bytes) -> tuple[str, str]:
    reader = Body(body)
    pair = reader.string(), reader.string()
    reader.end()
    return pair


def open_failed(reason: int, message: str) -> bytes:
    return frame(OPEN_FAILED, u32(reason) + string(message[:1024]))


def decode_open_failed(body: bytes) -> tuple[int, str]:
    reader = Body(body)
    reason, message = reader.u32(), reader.string()
    reader.end()
    return reason, message


def decode_string(body: bytes) -> str:
    reader = Body(body)
    value = reader.string()
    reader.end()
    return value
