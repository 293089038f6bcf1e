"""Fuzz the channel multiplexer: peer messages interleaved with application calls.

Contract under test: ``Mux.handle_message`` with any type and body returns events or raises
a :class:`~common.errors.QsmpError` subclass (after which the connection is torn down, so the
run stops). Application calls may also raise :class:`~common.errors.UsageError` (the harness
sometimes calls them out of order on purpose). After every step the mux's bookkeeping must
still satisfy its documented invariants, every queued message must fit in one record, and
nothing returned but channel data may refer to the caller's buffer (checked by scribbling
over it).

Input: one setup byte (side, window, max_packet, whether the channel opened first is already
confirmed, whether the peer has opened one too), then operations until the input runs out.
An operation byte below 0xC0 is a peer message (type 0x20 + op % 16, or a raw type byte for
op >= 0xB0) followed by a length (u8, or 0xFF then u16) and the body; 0xC0 and above is an
application call.
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
    from common.protocol.mux import (
        DEFAULT_MAX_PACKET,
        DEFAULT_WINDOW,
        MAX_PACKET_CEILING,
        MIN_PEER_MAX_PACKET,
        ChannelClosed,
        ChannelData,
        ChannelOpened,
        ChannelOpenFailed,
        ChannelOpenRequest,
        Mux,
        MuxMessage,
    )
    from common.wire import MAX_RECORD_PAYLOAD, Writer
    from fuzz.support import Cursor

_WINDOWS = (DEFAULT_WINDOW, 1, 100, 65536, 0xFFFFFFFF)
_MAX_PACKETS = (DEFAULT_MAX_PACKET, MIN_PEER_MAX_PACKET, 4096, MAX_PACKET_CEILING)
#: The peer's id for the channel we open during setup, and for the one it opens.
_PEER_ID = 7
_PEER_OPEN_ID = 9
_MAX_OPS = 200
_U32_MAX = 0xFFFFFFFF


class _App:
    """The application side: what it knows about channels, from its own calls and events."""

    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.channels: list[int] = []  # ids we may talk about (open or opening)
        self.pending_opens: list[int] = []  # the peer's opens we have not answered
        self.unacked: dict[int, int] = {}  # received bytes not yet acknowledged
        self.sent_messages = 0

    def note(self, events: list[object]) -> None:
        for event in events:
            if isinstance(event, ChannelOpenRequest):
                self.pending_opens.append(event.channel_id)
            elif isinstance(event, ChannelData):
                self.unacked[event.channel_id] = (
                    self.unacked.get(event.channel_id, 0) + len(event.data))
            elif isinstance(event, ChannelClosed | ChannelOpenFailed):
                self._forget(event.channel_id)
            elif isinstance(event, ChannelOpened) and event.channel_id not in self.channels:
                self.channels.append(event.channel_id)

    def _forget(self, cid: int) -> None:
        if cid in self.channels:
            self.channels.remove(cid)
        if cid in self.pending_opens:
            self.pending_opens.remove(cid)
        self.unacked.pop(cid, None)

    def pick(self, cur: Cursor) -> int:
        """One of our channel ids, or occasionally one that does not exist."""
        choice = cur.u8()
        if not self.channels or choice == 0xFF:
            return choice
        return self.channels[choice % len(self.channels)]

    def act(self, op: int, cur: Cursor) -> None:
        mux = self.mux
        call = op % 12
        if call == 0:
            self.channels.append(mux.open_channel("session", cur.take(cur.u8())))
        elif call == 1 and self.pending_opens:
            cid = self.pending_opens.pop(0)
            mux.accept_channel(cid, b"ok")
            self.channels.append(cid)
        elif call == 2 and self.pending_opens:
            cid = self.pending_opens.pop(0)
            mux.reject_channel(cid, cur.u8(), "no")
        elif call == 3:
            data = bytes(cur.u16() % 70000)
            mux.send_data(self.pick(cur), data, ext=None if op & 0x10 else 1)
        elif call == 4:
            mux.send_eof(self.pick(cur))
        elif call == 5:
            mux.close_channel(self.pick(cur), abort=bool(op & 0x10))
        elif call == 6:
            cid = self.pick(cur)
            n = min(cur.u16(), self.unacked.get(cid, 0)) if op & 0x10 else cur.u16()
            mux.acknowledge(cid, n)
            if cid in self.unacked:
                self.unacked[cid] -= n
        elif call == 7:
            mux.send_request(self.pick(cur), "exec", b"ls", want_reply=bool(op & 0x10))
        elif call == 8:
            mux.reply(self.pick(cur), bool(op & 0x10), b"")
        elif call == 9:
            mux.global_request("keepalive@qsh", b"", want_reply=bool(op & 0x10))
        elif call == 10:
            mux.global_reply(bool(op & 0x10))
        else:
            mux.pending(self.pick(cur))


def _peer_message(op: int, cur: Cursor) -> tuple[int, bytes]:
    msg_type = cur.u8() if op >= 0xB0 else 0x20 + op % 16
    n = cur.u8()
    if n == 0xFF:
        n = cur.u16()
    return msg_type, cur.take(n)


def _check_outgoing(mux: Mux) -> None:
    for msg in mux.take_outgoing():
        if msg.msg_type not in MuxMessage.__members__.values():
            raise AssertionError(f"queued message of unknown type {msg.msg_type:#x}")
        if len(msg.head) + len(msg.payload) > MAX_RECORD_PAYLOAD:
            raise AssertionError("queued message larger than a record")


def _check_invariants(mux: Mux) -> None:
    """Internal bookkeeping, read directly: these invariants are documented in mux.py and
    mux_channel.py; a break in any of them is a flow-control bug even before it shows on
    the wire."""
    channels = mux._channels
    for cid, ch in channels.items():
        if ch.local_id != cid:
            raise AssertionError(f"channel {cid} filed under the wrong id")
        accounted = ch.recv_window + ch.recv_outstanding + ch.recv_unacked
        # Once the peer can send no more (its EOF, or our CLOSE), acknowledged bytes are
        # not granted back, so the sum may only shrink; before that it is exact.
        finished = ch.eof_received or ch.close_sent
        if accounted > mux.window or (accounted != mux.window and not finished):
            raise AssertionError(f"channel {cid}: receive accounting does not add up "
                                 f"({accounted} != {mux.window})")
        if min(ch.recv_window, ch.recv_outstanding, ch.recv_unacked) < 0:
            raise AssertionError(f"channel {cid}: negative receive counter")
        if not 0 <= ch.send_window <= _U32_MAX:
            raise AssertionError(f"channel {cid}: send window {ch.send_window}")
        if ch.pending != sum(len(view) for _, view in ch.send_buf):
            raise AssertionError(f"channel {cid}: pending does not match the buffer")
        if ch.replies_owed < 0 or ch.replies_expected < 0:
            raise AssertionError(f"channel {cid}: negative reply count")
    if mux._opened_by_us + mux._opened_by_peer != len(channels):
        raise AssertionError("channel counts do not match the table")


def _setup(cur: Cursor) -> _App:
    setup = cur.u8()
    mux = Mux(is_client=bool(setup & 1), window=_WINDOWS[(setup >> 1) % len(_WINDOWS)],
              max_packet=_MAX_PACKETS[(setup >> 4) % len(_MAX_PACKETS)])
    app = _App(mux)
    cid = mux.open_channel("session", b"")
    app.channels.append(cid)
    if setup & 0x40:
        confirm = (Writer().u32(cid).u32(_PEER_ID).u32(65536).u32(32768).vbytes(b"")
                   .getvalue())
        app.note(list(mux.handle_message(MuxMessage.CHANNEL_OPEN_CONFIRM,
                                         memoryview(confirm))))
    if setup & 0x80:
        request = (Writer().name("direct-tcpip").u32(_PEER_OPEN_ID).u32(65536).u32(32768)
                   .vbytes(b"").getvalue())
        app.note(list(mux.handle_message(MuxMessage.CHANNEL_OPEN, memoryview(request))))
        app.act(1, cur)  # accept it
    _check_outgoing(mux)
    return app


def TestOneInput(data: bytes) -> None:
    cur = Cursor(data)
    app = _setup(cur)
    mux = app.mux
    for _ in range(_MAX_OPS):
        if not cur.remaining:
            break
        op = cur.u8()
        if op < 0xC0:
            msg_type, body = _peer_message(op, cur)
            buffer = bytearray(body)
            view = memoryview(buffer)
            try:
                events = mux.handle_message(msg_type, view)
            except QsmpError:
                _check_invariants(mux)
                return  # the connection would send an error and tear down here
            view.release()
            # Channel data is a view of the body (a record's plaintext, never reused by the
            # transport); nothing else may refer to it.
            events = [ChannelData(e.channel_id, bytes(e.data), e.ext)
                      if isinstance(e, ChannelData) else e for e in events]
            before = repr(events)
            buffer[:] = b"\xa5" * len(buffer)
            if repr(events) != before:
                raise AssertionError("an event refers to the borrowed message body")
            try:
                buffer.append(0)  # impossible while any view of the body is still alive
            except BufferError:
                raise AssertionError("the mux kept a view of the borrowed body") from None
            app.note(list(events))
        else:
            with contextlib.suppress(UsageError):
                app.act(op, cur)
        _check_invariants(mux)
        _check_outgoing(mux)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
