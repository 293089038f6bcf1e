"""Fuzz an established connection: record framing, decryption, inner messages, rekey.

Each input gets a fresh established session rebuilt from a recorded deterministic handshake
(:func:`fuzz.support.established`): a real :class:`~common.connection.Connection` (the target,
server or client) and a bare :class:`~common.transport.Transport` standing in for its peer,
holding the recorded traffic keys. Rebuilding costs a few microseconds where a handshake
costs a millisecond, which is what makes a million inputs affordable.

The input is a script of operations. Besides raw bytes, the peer can seal any plaintext
under the real key (so malformed inner headers and every transport and mux message body
reach the parsers behind the AEAD), send well-formed messages of any inner type, start a
rekey, and read what the target sends back, so keep-alives and a full rekey round trip
happen with the real code on both ends.

Contract under test: ``receive_data``, ``handle_timer``, ``data_to_send``,
``events_received``, ``request_rekey`` and ``close`` never raise; failures become one
:class:`~common.connection.ConnectionTerminated`, the last event. The peer may fail (the
script can drive it into states a real peer would never be in), but only with a
:class:`~common.errors.QsmpError` or :class:`~common.transport.Shutdown`.

Input: setup byte (scenario, target role, timer settings), chunking mode and parameter, then
operations, each one byte followed by its arguments (see :func:`_step`).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.instrument import instrumented

with instrumented(__name__ == "__main__"):
    from common.errors import QsmpError, UsageError
    from common.protocol.handshake import Role
    from common.protocol.mux import ChannelOpened, ChannelOpenRequest, MuxMessage
    from common.protocol.transport import Shutdown, TransportSettings
    from common.wire import HEADER_SIZE, MAX_RECORD_BODY, Flag, decode_header
    from fuzz.support import (
        NOW,
        SCENARIOS,
        Cursor,
        check_connection,
        chunked,
        drain,
        established,
        receive,
    )

_SETTINGS = (
    TransportSettings(),
    TransportSettings(keepalive_interval=15.0),
    TransportSettings(rekey_bytes=2048),
    TransportSettings(keepalive_interval=15.0, rekey_interval=60.0),
)
_MAX_OPS = 64
#: Application bytes the target may send per input. A peer may set max_packet to 1, so
#: every byte can cost a record: without a bound one input could seal 500,000 of them.
_SEND_BUDGET = 3000


class _Session:
    def __init__(self, cur: Cursor) -> None:
        setup = cur.u8()
        scenario = SCENARIOS[setup % len(SCENARIOS)]
        role = Role.CLIENT if setup & 0x04 else Role.SERVER
        settings = _SETTINGS[(setup >> 3) % len(_SETTINGS)]
        self.conn, self.peer = established(scenario, role, settings)
        self.chunk_mode, self.chunk_param = cur.u8(), cur.u8()
        self.now = NOW
        self.events: list[object] = []
        self.to_peer: list[bytes] = []  # the target's output, not yet read by the peer
        self.peer_buffer = bytearray()
        self.peer_alive = True
        self.channels: list[int] = []
        self.pending_opens: list[int] = []
        self.send_budget = _SEND_BUDGET

    # -- the target
    def feed(self, data: bytes) -> None:
        for chunk in chunked(data, self.chunk_mode, self.chunk_param):
            receive(self.conn, chunk, self.now)
        self.collect()

    def collect(self) -> None:
        self.to_peer.extend(drain(self.conn, self.events))
        for event in self.events:
            if isinstance(event, ChannelOpenRequest) and event.channel_id not in (
                    self.pending_opens + self.channels):
                self.pending_opens.append(event.channel_id)
            elif isinstance(event, ChannelOpened) and event.channel_id not in self.channels:
                self.channels.append(event.channel_id)

    # -- the peer
    def peer_flush(self) -> None:
        """Send what the peer has queued (its answers and its own messages)."""
        out, self.peer.outgoing = self.peer.outgoing, []
        self.feed(b"".join(out))

    def peer_read(self) -> None:
        """The peer reads everything the target sent, answering as a Transport does."""
        self.peer_buffer += b"".join(self.to_peer)
        self.to_peer.clear()
        while self.peer_alive and len(self.peer_buffer) >= HEADER_SIZE:
            header_bytes = bytes(self.peer_buffer[:HEADER_SIZE])
            try:
                header = decode_header(header_bytes, MAX_RECORD_BODY)
            except QsmpError:
                self.peer_alive = False
                break
            end = HEADER_SIZE + header.length
            if len(self.peer_buffer) < end:
                break
            body = bytes(self.peer_buffer[HEADER_SIZE:end])
            del self.peer_buffer[:end]
            try:
                self.peer.open(header, memoryview(header_bytes), memoryview(body))
            except (QsmpError, Shutdown):
                self.peer_alive = False

    def peer_send(self, inner_type: int, body: bytes) -> None:
        if self.peer_alive:
            self.peer.send(inner_type, body)
            self.peer_flush()

    # -- the application on the target's side (may be called out of order: UsageError)
    def app(self, op: int, cur: Cursor) -> None:
        mux = self.conn.mux
        action = op % 5
        with contextlib.suppress(UsageError):
            if action == 0:
                self.channels.append(mux.open_channel("session", b""))
            elif action == 1 and self.pending_opens:
                cid = self.pending_opens.pop(0)
                mux.accept_channel(cid)
                self.channels.append(cid)
            elif action == 2 and self.channels:
                cid = self.channels[cur.u8() % len(self.channels)]
                n = min(cur.u16(), self.send_budget)
                self.send_budget -= n
                mux.send_data(cid, bytes(n))
            elif action == 3 and self.channels:
                mux.close_channel(self.channels[cur.u8() % len(self.channels)])
            elif action == 4 and self.channels:
                cid = self.channels[cur.u8() % len(self.channels)]
                mux.acknowledge(cid, cur.u16())
        self.collect()


def _length(cur: Cursor) -> int:
    n = cur.u8()
    return cur.u16() if n == 0xFF else n


def _step(s: _Session, cur: Cursor) -> None:
    op = cur.u8()
    kind = op % 12
    if kind == 0:  # raw bytes, as if from the network
        s.feed(cur.take(_length(cur)))
    elif kind == 1:  # any plaintext, sealed under the peer's current key
        flag = cur.u8()
        flag = Flag.ENCRYPTED_MESSAGE if flag < 0xF0 else flag & 0x1F
        plaintext = cur.take(_length(cur))
        if s.peer_alive:
            s.feed(bytes(s.peer.sealer.seal(flag, plaintext)))
    elif kind == 2:  # a well-formed record of any inner type
        inner = cur.u8()
        s.peer_send(inner, cur.take(_length(cur)))
    elif kind == 3:  # a mux message
        inner = MuxMessage.CHANNEL_OPEN + cur.u8() % 14
        s.peer_send(inner, cur.take(_length(cur)))
    elif kind == 4:
        s.peer_read()
    elif kind == 5:
        if s.peer_alive:
            s.peer_flush()
    elif kind == 6:
        s.now += cur.u16() / 8.0
        s.conn.handle_timer(s.now)
        s.collect()
    elif kind == 7:
        if s.peer_alive:
            s.peer.request_rekey()
    elif kind == 8:
        s.conn.request_rekey()
        s.collect()
    elif kind == 9:
        s.app(cur.u8(), cur)
    elif kind == 10:
        receive(s.conn, b"", s.now)
        s.collect()
    else:
        s.conn.close("fuzz")
        s.collect()


def TestOneInput(data: bytes) -> None:
    cur = Cursor(data)
    s = _Session(cur)
    for _ in range(_MAX_OPS):
        if not cur.remaining:
            break
        _step(s, cur)
    check_connection(s.conn, s.events)
    if s.conn.closed:
        s.conn.receive_data(b"\x04" + bytes(12), s.now)
        if s.conn.data_to_send() or s.conn.events_received():
            raise AssertionError("a terminated connection still produced something")


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
