#!/usr/bin/env python3
"""The floor under a Python tunnel: the least a tunnel written with asyncio can cost per
connection, to put ``qsh -T``'s connections/s next to (issue 10).

    python bench/tunnel_floor.py remote RPORT [--seal] [--raw]     # the far relay
    python bench/tunnel_floor.py local LPORT RPORT HOST:PORT [--seal] [--raw]  # near relay
    python bench/tunnel_floor.py direct LPORT HOST:PORT             # one hop, no relay
    python bench/tunnel.py --only connections --floor --openssh /opt/openssh-10.5 --rounds 5

Why: qsh -T runs about half the connections/s of ``ssh -L``; the question is how much of
that is qsh and how much is any CPython asyncio program that relays a connection. So this
is a tunnel with qsh's shape and nothing else: ONE persistent TCP connection between a
local relay (listens on 127.0.0.1:LPORT) and a remote relay (listens on 127.0.0.1:RPORT for
that one connection, exits when it ends). For each accepted connection the local relay
sends an open frame naming HOST:PORT, with the connection's first bytes, if already there,
right behind it in the same write; the remote relay connects and answers ok, held up to
2 ms for the destination's first bytes so both leave in one write (what qsh and qshd do
too); then data frames both ways and one eof frame each way (a connection both sides have
ended is gone on both without a close frame; close only when one ends abruptly). A frame
is ``length (4) | stream id (4) | type (1) | payload``; no login, no key exchange, no
encryption, no flow control beyond the kernel's (the relay's writes pause the connections'
reads and the other way round, as TCP would). asyncio Protocols and callbacks only, no
streams and no task or coroutine per connection: the listener is a plain non-blocking
socket under ``loop.add_reader`` (``create_server`` runs a task per accepted connection),
and the remote's connect a non-blocking ``connect`` (done when it returns, on loopback)
handed to asyncio's own socket transport (``create_connection`` is a coroutine); the frames
one callback makes leave in one write.

``--seal`` (both relays, same key from ``QSH_FLOOR_KEY``, 64 hex digits; bench/tunnel.py
makes a new one per run) seals every frame with AES-256-GCM (``cryptography``): the length
stays clear and authenticated, the rest is ciphertext + 16-byte tag, the nonce a per
direction counter. That is what any secure tunnel must add at least (qsh and ssh both use
AES-256-GCM in the bench), without the handshake, rekeying or windows.

``--raw`` (both relays): the tunnelled connections without asyncio's transports and
Protocols: each socket under ``loop.add_reader`` and read and written directly (what qsh's
pump does), and the relays' own connection likewise (:class:`RawTransport`): what
asyncio's transport layer itself costs.

``direct``: one process that accepts and connects straight to HOST:PORT and pipes the two:
no second hop, no frames: the floor of floors.

What it found (this 2-CPU machine, shared, load average 1.5-2.7; ``bench/tunnel.py
--only connections --floor --openssh /opt/openssh-10.5 --rounds 5``, five runs, each the
median of 5 interleaved rounds of 1,000 connections; CPU per connection is client side +
server side; ranges over the runs):

=========================  ===========  ============  ===========  ==================
tunnel                     conn/s       / ssh 9.2     / ssh 10.5   CPU ms/connection
=========================  ===========  ============  ===========  ==================
ssh -L (OpenSSH 9.2)       1859-2046    1             -            0.37-0.42
ssh -L (OpenSSH 10.5)      1869-2376    -             1            0.32-0.39
qsh -T                     964-1029     0.49-0.54     0.43-0.52    1.00-1.07
floor: relays, plain       1695-1844    0.87-0.97     0.76-0.91    0.49-0.52
floor: relays, AES-GCM     1481-1683    0.78-0.91     0.70-0.90    0.54-0.59
floor: relays, raw         1855-2050    0.93-1.06     0.86-1.01    0.41-0.45
floor: raw, AES-GCM        1622-1689    0.84-0.91     0.68-0.90    0.50-0.52
floor: direct (one hop)    2808-3165    1.37-1.63     1.33-1.51    0.23-0.25
=========================  ===========  ============  ===========  ==================

So a CPython asyncio tunnel of this shape reaches ssh -L's rate only in its barest form
(no encryption, no asyncio transports: 0.86-1.06x, at ~1.1x ssh's CPU); sealed with the
AES-GCM any secure tunnel needs it is 0.7-0.9x, and that is before a handshake, windows,
rekeying, a real protocol's parser or a login. qsh -T spends twice this floor's CPU per
connection. One process with no second hop beats ssh -L by 1.3-1.6x: the relay hop (two
more sockets, frames, a second process woken) is what the floor pays, and ssh pays it in
C.

bench/tunnel.py ``--floor`` runs all three as extra "tunnels" in the same interleaved rounds
as qsh -T and ssh -L, and prints each one's CPU per connection. Benchmarks are never unit
tests: nothing here asserts a speed. Not a tunnel to use: loopback only, no
authentication, the key in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
HEADER = struct.Struct(">IIB")  # payload length, stream id, type
LENGTH = struct.Struct(">I")  # sealed: ciphertext length (clear, authenticated)
STREAM = struct.Struct(">IB")  # sealed: stream id, type (inside the ciphertext)
#: A connection's read is at most 256 KiB (asyncio's transport), so is a data frame.
MAX_PAYLOAD = 256 * 1024
TAG = 16
OPEN, OK, DATA, EOF, CLOSE = 1, 2, 3, 4, 5
#: How long the remote holds its ok for the destination's first answer (qshd: 2 ms).
OK_HOLD = 0.002


class Sealer:
    """AES-256-GCM per frame; nonce: 4-byte direction, 8-byte counter (never repeats
    within a run: 2**64 frames)."""

    def __init__(self, key: bytes, direction: int) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self._prefix = direction.to_bytes(4, "big")
        self._counter = 0

    def seal(self, body: bytes) -> bytes:
        self._counter += 1
        length = LENGTH.pack(len(body) + TAG)
        return length + self._aead.encrypt(self._prefix + self._counter.to_bytes(8, "big"),
                                           body, length)

    def open(self, length: bytes, sealed: bytes) -> bytes:
        self._counter += 1
        return self._aead.decrypt(self._prefix + self._counter.to_bytes(8, "big"), sealed,
                                  length)


class Stream(asyncio.Protocol):
    """One tunnelled connection, either end; ``transport`` None until the remote's
    connect is done (its first bytes wait in ``pending``)."""

    def __init__(self, relay: Relay, sid: int) -> None:
        self.relay = relay
        self.sid = sid
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.eof_in = False  # this side's socket ended (eof frame sent)
        self.eof_out = False  # the peer's eof frame arrived (write_eof done)
        self.ok_timer: asyncio.TimerHandle | None = None  # remote: ok held for the answer

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if self.relay.paused:
            transport.pause_reading()
        for data in self.pending:
            transport.write(data)
        self.pending.clear()
        if self.eof_out:
            self._end_output()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # attached when made (see :func:`wrap`)

    def data_received(self, data: bytes) -> None:
        if self.ok_timer is not None:
            self.send_ok()
        self.relay.send(self.sid, DATA, data)
        self.relay.flush()

    def eof_received(self) -> bool:
        if self.ok_timer is not None:
            self.send_ok()
        self.eof_in = True
        self.relay.send(self.sid, EOF, b"")
        self.relay.flush()
        if self.eof_out:
            self._finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ok_timer is not None:
            self.ok_timer.cancel()
            self.ok_timer = None
        if self.relay.streams.pop(self.sid, None) is not None:
            self.relay.send(self.sid, CLOSE, b"")
            self.relay.flush()

    def send_ok(self, flush: bool = False) -> None:
        """The remote's answer to the open: held (up to :data:`OK_HOLD`) for the
        destination's first bytes or eof, so both leave in one write, as qshd does."""
        if self.ok_timer is not None:
            self.ok_timer.cancel()
            self.ok_timer = None
            self.relay.send(self.sid, OK, b"")
            if flush:
                self.relay.flush()

    def pause_writing(self) -> None:
        self.relay.stream_blocked(+1)

    def resume_writing(self) -> None:
        self.relay.stream_blocked(-1)

    # From the peer:
    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def peer_eof(self) -> None:
        self.eof_out = True
        if self.transport is not None:
            self._end_output()

    def _end_output(self) -> None:
        if self.eof_in:
            self._finish()
        else:
            assert self.transport is not None
            self.transport.write_eof()

    def _finish(self) -> None:
        """Both sides ended: gone here and (the peer saw both eofs too) there."""
        self.relay.streams.pop(self.sid, None)
        if self.transport is not None:
            self.transport.close()

    def peer_close(self) -> None:
        self.relay.streams.pop(self.sid, None)
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class RawStream:
    """``--raw``: a tunnelled connection without asyncio's transport: its socket under
    ``add_reader`` (and ``add_writer`` while a write waits), read and written directly, as
    qsh's pump does. Same duties as :class:`Stream`."""

    def __init__(self, relay: Relay, sid: int, sock: socket.socket) -> None:
        self.relay = relay
        self.sid = sid
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's, qsh's
        self.fd = sock.fileno()
        self.loop = relay.loop
        self.wbuf = bytearray()
        self.reading = False
        self.eof_in = False
        self.eof_out = False
        self.gone = False
        self.ok_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if not self.relay.paused:
            self.reading = True
            self.loop.add_reader(self.fd, self.readable)

    def readable(self) -> None:
        try:
            data = self.sock.recv(MAX_PAYLOAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        if self.ok_timer is not None:
            self.send_ok()
        if data:
            self.relay.send(self.sid, DATA, data)
            self.relay.flush()
            return
        self.eof_in = True
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)
        self.relay.send(self.sid, EOF, b"")
        self.relay.flush()
        if self.eof_out and not self.wbuf:
            self._finish()

    def send_ok(self, flush: bool = False) -> None:
        if self.ok_timer is not None:
            self.ok_timer.cancel()
            self.ok_timer = None
            self.relay.send(self.sid, OK, b"")
            if flush:
                self.relay.flush()

    def write(self, data: bytes) -> None:
        if self.wbuf:
            self.wbuf += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._lost()
            return
        if sent < len(data):
            self.wbuf += data[sent:]
            self.loop.add_writer(self.fd, self.writable)
            self.relay.stream_blocked(+1)

    def writable(self) -> None:
        try:
            sent = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        del self.wbuf[:sent]
        if not self.wbuf:
            self.loop.remove_writer(self.fd)
            self.relay.stream_blocked(-1)
            if self.eof_out:
                self._end_output()

    def peer_eof(self) -> None:
        self.eof_out = True
        if not self.wbuf:
            self._end_output()

    def _end_output(self) -> None:
        if self.eof_in:
            self._finish()
        else:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._lost()

    def _finish(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.relay.streams.pop(self.sid, None)
        if self.ok_timer is not None:
            self.ok_timer.cancel()
            self.ok_timer = None
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self.wbuf:
            self.loop.remove_writer(self.fd)
            self.relay.stream_blocked(-1)
        self.sock.close()

    def _lost(self) -> None:
        if self.gone:
            return
        mine = self.sid in self.relay.streams
        self._finish()
        if mine:
            self.relay.send(self.sid, CLOSE, b"")
            self.relay.flush()

    def peer_close(self) -> None:
        self._finish()

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def resume(self) -> None:
        if not self.reading and not self.eof_in and not self.gone:
            self.reading = True
            self.loop.add_reader(self.fd, self.readable)


class RawTransport(asyncio.Transport):
    """``--raw``: the relays' own connection on its raw socket too (read under
    ``add_reader``, written directly), with just what :class:`Relay` asks of a transport."""

    HIGH = 1024 * 1024  # buffered beyond this: the relay pauses its connections

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: Relay) -> None:
        super().__init__()
        self.loop = loop
        self.sock = sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = sock.fileno()
        self.protocol = protocol
        self.wbuf = bytearray()
        self.closed = False
        self.paused_writing = False
        self.reading = True
        protocol.connection_made(self)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(MAX_PAYLOAD + 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.protocol.data_received(data)
        else:
            self.abort()

    def write(self, data: Any) -> None:
        if self.closed:
            return
        if not self.wbuf:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort()
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self.loop.add_writer(self.fd, self._writable)
        self.wbuf += data
        if len(self.wbuf) > self.HIGH and not self.paused_writing:
            self.paused_writing = True
            self.protocol.pause_writing()

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        del self.wbuf[:sent]
        if not self.wbuf:
            self.loop.remove_writer(self.fd)
        if self.paused_writing and len(self.wbuf) <= self.HIGH // 4:
            self.paused_writing = False
            self.protocol.resume_writing()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        if self.reading and not self.closed:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.loop.add_reader(self.fd, self._readable)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self.wbuf:
            self.loop.remove_writer(self.fd)
        self.sock.close()
        self.protocol.connection_lost(None)

    def close(self) -> None:
        self.abort()


class Relay(asyncio.Protocol):
    """The one connection between the relays, either end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sealer: Sealer | None,
                 opener: Sealer | None, target: tuple[str, int] | None,
                 raw: bool = False) -> None:
        self.loop = loop
        self.raw = raw
        self.sealer = sealer
        self.opener = opener
        self.target = target  # local: what the open frames name
        self.open_payload = f"{target[0]}:{target[1]}".encode() if target else b""
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream | RawStream] = {}
        self.next_sid = 0
        self.out: list[bytes] = []
        self.buf = b""
        self.paused = False
        self.blocked = 0
        self.done = loop.create_future()

    # Outgoing: the frames one callback makes leave in one write at its end (flush).
    def send(self, sid: int, kind: int, payload: bytes) -> None:
        if self.sealer is None:
            self.out.append(HEADER.pack(len(payload), sid, kind) + payload)
        else:
            self.out.append(self.sealer.seal(STREAM.pack(sid, kind) + payload))

    def flush(self) -> None:
        if not self.out:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.out[0] if len(self.out) == 1 else b"".join(self.out))
        self.out.clear()

    # The local end: a connection accepted on LPORT; its first bytes, if already there,
    # go right behind the open, in the same write.
    def accept(self, sock: socket.socket) -> None:
        self.next_sid += 1
        if self.raw:
            raw = RawStream(self, self.next_sid, sock)
            self.streams[raw.sid] = raw
            self.send(raw.sid, OPEN, self.open_payload)
            raw.readable()  # the first bytes if there, and the flush
            self.flush()
            if not raw.gone and not raw.eof_in:
                raw.start()
            return
        stream = Stream(self, self.next_sid)
        self.streams[stream.sid] = stream
        self.send(stream.sid, OPEN, self.open_payload)
        try:
            first = sock.recv(MAX_PAYLOAD)
        except (BlockingIOError, InterruptedError):
            first = b""  # (b"" from recv: the eof, which the transport reads again)
        except OSError:
            sock.close()
            self.streams.pop(stream.sid, None)
            self.send(stream.sid, CLOSE, b"")
            self.flush()
            return
        if first:
            self.send(stream.sid, DATA, first)
        self.flush()
        stream.attach(wrap(self.loop, sock, stream))

    # Incoming.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in list(self.streams.values()):
            stream.peer_close()
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._frames(data)
        self.flush()

    def _frames(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        pos, end = 0, len(data)
        try:
            if self.opener is None:
                while end - pos >= HEADER.size:
                    length, sid, kind = HEADER.unpack_from(data, pos)
                    if length > MAX_PAYLOAD:
                        raise ValueError(f"frame of {length} bytes")
                    stop = pos + HEADER.size + length
                    if stop > end:
                        break
                    self._frame(sid, kind, data[pos + HEADER.size:stop])
                    pos = stop
            else:
                while end - pos >= LENGTH.size:
                    (length,) = LENGTH.unpack_from(data, pos)
                    if not STREAM.size + TAG <= length <= MAX_PAYLOAD + STREAM.size + TAG:
                        raise ValueError(f"sealed frame of {length} bytes")
                    stop = pos + LENGTH.size + length
                    if stop > end:
                        break
                    body = self.opener.open(data[pos:pos + LENGTH.size],
                                            data[pos + LENGTH.size:stop])
                    sid, kind = STREAM.unpack_from(body)
                    self._frame(sid, kind, body[STREAM.size:])
                    pos = stop
        except Exception as e:  # a broken peer: end the tunnel, no traceback
            print(f"tunnel_floor: {e.__class__.__name__}: {e}", file=sys.stderr)
            assert self.transport is not None
            self.transport.abort()
            return
        self.buf = data[pos:]

    def _frame(self, sid: int, kind: int, payload: bytes) -> None:
        if kind == DATA:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.write(payload)
        elif kind == EOF:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.peer_eof()
        elif kind == CLOSE:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.peer_close()
        elif kind == OPEN:
            self._open(sid, payload)
        elif kind != OK:
            raise ValueError(f"frame type {kind}")

    def _open(self, sid: int, payload: bytes) -> None:
        """The remote end: connect where the open says, without a task."""
        if sid in self.streams:
            raise ValueError(f"stream {sid} opened twice")
        host, _, port = payload.decode().rpartition(":")
        try:
            sock = connect_now((host, int(port)))
        except OSError:
            self.send(sid, CLOSE, b"")
            return
        if self.raw:
            raw = RawStream(self, sid, sock)
            self.streams[sid] = raw
            raw.ok_timer = self.loop.call_later(OK_HOLD, raw.send_ok, True)
            raw.start()
            return
        stream = Stream(self, sid)
        self.streams[sid] = stream
        stream.ok_timer = self.loop.call_later(OK_HOLD, stream.send_ok, True)
        stream.attach(wrap(self.loop, sock, stream))

    # Back-pressure, as the kernel would: a full relay pauses every connection's reads, a
    # connection that cannot take more pauses the relay's.
    def pause_writing(self) -> None:
        self.paused = True
        for stream in self.streams.values():
            stream.pause()

    def resume_writing(self) -> None:
        self.paused = False
        for stream in self.streams.values():
            stream.resume()

    def stream_blocked(self, delta: int) -> None:
        was = self.blocked
        self.blocked += delta
        if self.transport is not None:
            if was == 0 and self.blocked > 0:
                self.transport.pause_reading()
            elif was > 0 and self.blocked == 0:
                self.transport.resume_reading()


def connect_now(address: tuple[str, int]) -> socket.socket:
    """A connected non-blocking socket; on loopback the connect is done when the call
    returns (else wait for it, a few ms at most: this is a loopback benchmark)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    error = sock.connect_ex(address)
    if error in (errno.EINPROGRESS, errno.EAGAIN):
        sock.settimeout(5)  # rare on loopback: block this one time
        try:
            sock.connect(address)
        except OSError as e:
            if e.errno != errno.EISCONN:
                sock.close()
                raise
        sock.setblocking(False)
    elif error:
        sock.close()
        raise OSError(error, os.strerror(error))
    return sock


def wrap(loop: asyncio.AbstractEventLoop, sock: socket.socket,
         protocol: asyncio.Protocol) -> asyncio.Transport:
    """asyncio's own socket transport around a connected socket, made the way
    ``create_connection`` makes it, without its coroutine (a task per connection)."""
    make: Any = getattr(loop, "_make_socket_transport")  # noqa: B009 (private, on purpose)
    transport: asyncio.Transport = make(sock, protocol)
    return transport


def listen(loop: asyncio.AbstractEventLoop, port: int,
           accept: Callable[[socket.socket], None]) -> socket.socket:
    """A listening socket whose connections go to ``accept`` as non-blocking sockets
    (``loop.create_server`` runs a task for each)."""
    listener = socket.create_server((HOST, port), backlog=512)
    listener.setblocking(False)

    def ready() -> None:
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors: say so, try again later
                print(f"tunnel_floor: accept: {e}", file=sys.stderr)
                return
            sock.setblocking(False)
            accept(sock)

    loop.add_reader(listener.fileno(), ready)
    return listener


class Direct(asyncio.Protocol):
    """``direct``: one accepted connection piped to its own connection to the target."""

    def __init__(self) -> None:
        self.peer: Direct | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False

    @staticmethod
    def accept(loop: asyncio.AbstractEventLoop, target: tuple[str, int],
               sock: socket.socket) -> None:
        try:
            out = connect_now(target)
        except OSError:
            sock.close()
            return
        near, far = Direct(), Direct()
        near.peer, far.peer = far, near
        far.transport = wrap(loop, out, far)
        try:
            first = sock.recv(MAX_PAYLOAD)
        except (BlockingIOError, InterruptedError):
            first = b""
        except OSError:
            sock.close()
            far.transport.close()
            return
        if first:
            far.transport.write(first)
        near.transport = wrap(loop, sock, near)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # attached when made

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        assert self.peer is not None and self.peer.transport is not None
        if self.peer.eof:
            self.peer.transport.close()
            assert self.transport is not None
            self.transport.close()
        else:
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def sealers(seal: bool, local: bool) -> tuple[Sealer | None, Sealer | None]:
    """(outgoing, incoming) for this end."""
    if not seal:
        return None, None
    key = bytes.fromhex(os.environ["QSH_FLOOR_KEY"])
    if len(key) != 32:
        raise SystemExit("tunnel_floor: QSH_FLOOR_KEY must be 64 hex digits")
    return Sealer(key, 1 if local else 2), Sealer(key, 2 if local else 1)


async def remote(port: int, seal: bool, raw: bool) -> None:
    loop = asyncio.get_running_loop()
    out, into = sealers(seal, local=False)
    relay = Relay(loop, out, into, None, raw)
    accepted = loop.create_future()

    def factory() -> Relay:
        if accepted.done():
            raise ConnectionRefusedError("one relay connection only")
        accepted.set_result(None)
        return relay

    if raw:
        listener = socket.create_server((HOST, port))
        listener.setblocking(False)
        sock, _ = await loop.sock_accept(listener)
        listener.close()
        RawTransport(loop, sock, relay)
        await relay.done
        return
    server = await loop.create_server(factory, HOST, port)
    await accepted
    server.close()
    await relay.done


async def local(lport: int, rport: int, target: tuple[str, int], seal: bool, raw: bool
                ) -> None:
    loop = asyncio.get_running_loop()
    out, into = sealers(seal, local=True)
    relay = Relay(loop, out, into, target, raw)
    deadline = time.monotonic() + 30
    while True:  # the remote relay starts at the same time
        try:
            sock = socket.create_connection((HOST, rport), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)
    if raw:
        RawTransport(loop, sock, relay)
    else:
        await loop.create_connection(lambda: relay, sock=sock)
    listener = listen(loop, lport, relay.accept)
    await relay.done
    loop.remove_reader(listener.fileno())
    listener.close()


async def direct(lport: int, target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    listen(loop, lport, lambda sock: Direct.accept(loop, target, sock))
    await loop.create_future()  # until killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("remote", help="the far relay")
    p.add_argument("rport", type=int)
    p.add_argument("--seal", action="store_true")
    p.add_argument("--raw", action="store_true")
    p = sub.add_parser("local", help="the near relay")
    p.add_argument("lport", type=int)
    p.add_argument("rport", type=int)
    p.add_argument("target", type=parse_target, metavar="HOST:PORT")
    p.add_argument("--seal", action="store_true")
    p.add_argument("--raw", action="store_true")
    p = sub.add_parser("direct", help="one process, no relay")
    p.add_argument("lport", type=int)
    p.add_argument("target", type=parse_target, metavar="HOST:PORT")
    args = parser.parse_args()
    if args.role == "remote":
        asyncio.run(remote(args.rport, args.seal, args.raw))
    elif args.role == "local":
        asyncio.run(local(args.lport, args.rport, args.target, args.seal, args.raw))
    else:
        asyncio.run(direct(args.lport, args.target))


if __name__ == "__main__":
    main()
