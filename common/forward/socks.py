"""The SOCKS side of ``qsh -D``: read one CONNECT request (SOCKS5, or SOCKS4/4a), answer it.

Only what a proxy client needs: SOCKS5 without authentication (method 0), CONNECT, with an
IPv4, IPv6 or domain-name destination; SOCKS4 and 4a (a domain name after the user id).
Every read is bounded in size (a name is at most 255 bytes, as the u8 length field already
says; a SOCKS4 user id at most :data:`MAX_USERID`) and the whole request in time
(:data:`REQUEST_TIMEOUT`), so a client that connects and says nothing costs nothing for long.
"""

from __future__ import annotations

import asyncio
import ipaddress

from common.protocol.mux import OpenFailureReason

REQUEST_TIMEOUT = 10.0
MAX_USERID = 255
#: The most a request can take (SOCKS4a: 8 bytes, a user id and a name, each NUL-ended).
MAX_REQUEST = 8 + MAX_USERID + 1 + 255 + 1

# SOCKS5 reply codes (RFC 1928 §6)
SUCCEEDED = 0
GENERAL_FAILURE = 1
NOT_ALLOWED = 2
HOST_UNREACHABLE = 4
CONNECTION_REFUSED = 5
COMMAND_NOT_SUPPORTED = 7
ADDRESS_NOT_SUPPORTED = 8


class SocksError(Exception):
    """A request we cannot serve; the client has been answered already when possible."""


class Request:
    """A parsed CONNECT request; :meth:`answer` sends the reply in the request's dialect."""

    def __init__(self, version: int, host: str, port: int) -> None:
        self.version = version
        self.host = host
        self.port = port

    def reply(self, code: int) -> bytes:
        """The answer to this request in its dialect."""
        if self.version == 5:
            return _socks5_reply(code)
        return bytes((0, 0x5A if code == SUCCEEDED else 0x5B)) + b"\0" * 6

    def answer(self, writer: asyncio.StreamWriter, code: int) -> None:
        writer.write(self.reply(code))


def reply_code(reason: int) -> int:
    """The SOCKS5 reply for a refused channel open."""
    if reason == OpenFailureReason.ADMINISTRATIVELY_PROHIBITED:
        return NOT_ALLOWED
    if reason == OpenFailureReason.CONNECT_FAILED:
        return CONNECTION_REFUSED
    return GENERAL_FAILURE


class Parser:
    """The request, sans I/O: :meth:`feed` what the client sent, as it comes; it returns
    what to send back now (SOCKS5's method choice, or a refusal) and, once complete, the
    :class:`Request`; what the client sent after it is :attr:`rest` (a client that did not
    wait for the reply: the start of its stream). A refusal raises :class:`SocksError`
    after its answer was returned by an earlier call or is in :attr:`answer`. At most
    :data:`MAX_REQUEST` bytes are held."""

    def __init__(self) -> None:
        self._buf = b""
        self._greeted = False  # SOCKS5: the method choice has been answered
        self.rest = b""
        #: What to send before closing when :meth:`feed` raised.
        self.answer = b""

    def feed(self, data: bytes) -> tuple[bytes, Request | None]:
        self._buf += data
        out = b""
        buf = self._buf
        if not buf:
            return out, None
        version = buf[0]
        if version == 5:
            if not self._greeted:
                if len(buf) < 2 or len(buf) < 2 + buf[1]:
                    return self._hold(out)
                methods = buf[2:2 + buf[1]]
                if 0 not in methods:
                    self.answer = b"\x05\xff"
                    raise SocksError("SOCKS5 client offers no method without authentication")
                self._greeted = True
                out = b"\x05\x00"
                buf = self._buf = buf[2 + buf[1]:]
            try:
                request, used = self._socks5(buf)
            except SocksError:
                self.answer = out + self.answer  # the method choice went first
                raise
        elif version == 4:
            request, used = self._socks4(buf)
        else:
            raise SocksError(f"not a SOCKS request (version byte {version})")
        if request is None:
            return self._hold(out)
        self.rest = buf[used:]
        self._buf = b""
        return out, request

    def _hold(self, out: bytes) -> tuple[bytes, None]:
        if len(self._buf) > MAX_REQUEST:
            raise SocksError("SOCKS request too long")
        return out, None

    def _socks5(self, buf: bytes) -> tuple[Request | None, int]:
        if len(buf) < 4:
            return None, 0
        version, command, _reserved, kind = buf[:4]
        if version != 5:
            raise SocksError(f"SOCKS5 request with version {version}")
        if kind == 1:
            size = 4
        elif kind == 4:
            size = 16
        elif kind == 3:
            if len(buf) < 5:
                return None, 0
            size = 1 + buf[4]
        else:
            self.answer = _socks5_reply(ADDRESS_NOT_SUPPORTED)
            raise SocksError(f"SOCKS5 address type {kind}")
        end = 4 + size + 2
        if len(buf) < end:
            return None, 0
        raw = buf[4:4 + size]
        if kind == 1:
            host = str(ipaddress.IPv4Address(raw))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(raw))
        else:
            host = _name(raw[1:])
        port = int.from_bytes(buf[4 + size:end], "big")
        if command != 1:
            self.answer = _socks5_reply(COMMAND_NOT_SUPPORTED)
            raise SocksError(f"SOCKS5 command {command} (only CONNECT is supported)")
        if not host or not port:
            self.answer = _socks5_reply(ADDRESS_NOT_SUPPORTED)
            raise SocksError("SOCKS5 request without a host or a port")
        return Request(5, host, port), end

    def _socks4(self, buf: bytes) -> tuple[Request | None, int]:
        if len(buf) < 8:
            return None, 0
        command = buf[1]
        port = int.from_bytes(buf[2:4], "big")
        address = buf[4:8]
        end = _nul(buf, 8, MAX_USERID)
        if end is None:
            return None, 0
        if address[:3] == b"\0\0\0" and address[3]:  # SOCKS4a: a name follows
            name_end = _nul(buf, end, 255)
            if name_end is None:
                return None, 0
            host = _name(buf[end:name_end - 1])
            end = name_end
        else:
            host = str(ipaddress.IPv4Address(address))
        if command != 1 or not port or not host:
            raise SocksError(f"SOCKS4 command {command} to {host!r} port {port}")
        return Request(4, host, port), end


def _nul(buf: bytes, start: int, limit: int) -> int | None:
    """The index after the NUL that ends the field at ``start`` (at most ``limit`` bytes),
    None while it is incomplete."""
    at = buf.find(b"\0", start, start + limit + 1)
    if at >= 0:
        return at + 1
    if len(buf) - start > limit:
        raise SocksError("SOCKS4 field too long")
    return None


def _socks5_reply(code: int) -> bytes:
    return bytes((5, code, 0, 1)) + b"\0" * 6


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    """:class:`Parser` over a stream, within :data:`REQUEST_TIMEOUT`; what the client sent
    after the request is in the parser's ``rest``, lost here (for a client that waits for
    the reply, as SOCKS clients do)."""
    parser = Parser()
    async with asyncio.timeout(REQUEST_TIMEOUT):
        while True:
            data = await reader.read(MAX_REQUEST)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            try:
                out, request = parser.feed(data)
            except SocksError:
                if parser.answer:
                    writer.write(parser.answer)
                raise
            if out:
                writer.write(out)
            if request is not None:
                return request


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SocksError("host name is not ASCII") from None
    if not name or not name.isprintable() or " " in name:
        raise SocksError("bad host name")
    return name
