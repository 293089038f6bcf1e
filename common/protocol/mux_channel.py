"""One channel's book-keeping in the mux: its state, windows, buffers and owed replies.

On its own so that the machine in :mod:`common.protocol.mux` reads as the transitions, and
the fields and invariants they keep are in one short place.
"""

from __future__ import annotations

from collections import deque

from common.protocol.mux_messages import MAX_PACKET_CEILING

_ACCEPTING = 0  # the peer opened it; we have not answered yet
_OPENING = 1  # we opened it; the peer has not answered yet
_OPEN = 2


class _Channel:
    """Book-keeping for one channel. Receive accounting keeps an invariant that makes
    overflow impossible: recv_window + recv_outstanding + recv_unacked == our initial window."""

    __slots__ = (
        "close_pending", "close_sent", "data_head", "early_requests", "eof_pending",
        "eof_received", "eof_sent", "local_id", "pending", "recv_outstanding", "recv_unacked",
        "recv_window", "remote_id",
        "replies_expected", "replies_owed", "send_buf", "send_chunk", "send_window", "state",
        "we_opened",
    )

    def __init__(self, local_id: int, state: int, recv_window: int) -> None:
        self.local_id = local_id
        self.state = state
        self.we_opened = state == _OPENING
        self.remote_id = 0
        self.data_head = b""
        # Sending
        self.send_window = 0
        self.send_chunk = 0
        self.send_buf: deque[tuple[int | None, memoryview]] = deque()
        self.pending = 0
        self.eof_pending = False
        self.eof_sent = False
        self.close_pending = False
        self.close_sent = False
        self.replies_expected = 0
        #: Requests made while the channel is still opening: sent on confirmation, before
        #: any queued data, so "open, exec, stdin" costs no extra round trip.
        self.early_requests: list[bytes] = []
        # Receiving
        self.recv_window = recv_window
        self.recv_outstanding = 0
        self.recv_unacked = 0
        self.eof_received = False
        self.replies_owed = 0

    def set_peer(self, remote_id: int, window: int, max_packet: int) -> None:
        self.remote_id = remote_id
        self.data_head = remote_id.to_bytes(4, "big")
        self.send_window = window
        self.send_chunk = min(max_packet, MAX_PACKET_CEILING)
