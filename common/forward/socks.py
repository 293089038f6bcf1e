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

    def answer(self, writer: asyncio.StreamWriter, code: int) -> None:
        if self.version == 5:
            writer.write(bytes((5, code, 0, 1)) + b"\0" * 6)
        else:
            writer.write(bytes((0, 0x5A if code == SUCCEEDED else 0x5B)) + b"\0" * 6)


def reply_code(reason: int) -> int:
    """The SOCKS5 reply for a refused channel open."""
    if reason == OpenFailureReason.ADMINISTRATIVELY_PROHIBITED:
        return NOT_ALLOWED
    if reason == OpenFailureReason.CONNECT_FAILED:
        return CONNECTION_REFUSED
    return GENERAL_FAILURE


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    async with asyncio.timeout(REQUEST_TIMEOUT):
        version = (await reader.readexactly(1))[0]
        if version == 5:
            return await _socks5(reader, writer)
        if version == 4:
            return await _socks4(reader)
    raise SocksError(f"not a SOCKS request (version byte {version})")


async def _socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    count = (await reader.readexactly(1))[0]
    methods = await reader.readexactly(count)
    if 0 not in methods:
        writer.write(b"\x05\xff")
        raise SocksError("SOCKS5 client offers no method without authentication")
    writer.write(b"\x05\x00")
    version, command, _reserved, kind = await reader.readexactly(4)
    if version != 5:
        raise SocksError(f"SOCKS5 request with version {version}")
    if kind == 1:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif kind == 4:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    elif kind == 3:
        length = (await reader.readexactly(1))[0]
        host = _name(await reader.readexactly(length))
    else:
        Request(5, "", 0).answer(writer, ADDRESS_NOT_SUPPORTED)
        raise SocksError(f"SOCKS5 address type {kind}")
    port = int.from_bytes(await reader.readexactly(2), "big")
    request = Request(5, host, port)
    if command != 1:
        request.answer(writer, COMMAND_NOT_SUPPORTED)
        raise SocksError(f"SOCKS5 command {command} (only CONNECT is supported)")
    if not host or not port:
        request.answer(writer, ADDRESS_NOT_SUPPORTED)
        raise SocksError("SOCKS5 request without a host or a port")
    return request


async def _readz(reader: asyncio.StreamReader, limit: int) -> bytes:
    """Bytes up to a NUL, at most ``limit`` of them."""
    out = bytearray()
    while True:
        byte = await reader.readexactly(1)
        if byte == b"\0":
            return bytes(out)
        if len(out) >= limit:
            raise SocksError("SOCKS4 field too long")
        out += byte


async def _socks4(reader: asyncio.StreamReader) -> Request:
    command = (await reader.readexactly(1))[0]
    port = int.from_bytes(await reader.readexactly(2), "big")
    address = await reader.readexactly(4)
    await _readz(reader, MAX_USERID)
    if address[:3] == b"\0\0\0" and address[3]:
        host = _name(await _readz(reader, 255))  # SOCKS4a
    else:
        host = str(ipaddress.IPv4Address(address))
    request = Request(4, host, port)
    if command != 1 or not port or not host:
        raise SocksError(f"SOCKS4 command {command} to {host!r} port {port}")
    return request


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SocksError("host name is not ASCII") from None
    if not name or not name.isprintable() or " " in name:
        raise SocksError("bad host name")
    return name
