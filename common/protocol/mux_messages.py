"""The mux's wire vocabulary: its message types, reason codes and limits, and the checks of
names, payloads and sizes against them.

On their own so that the limits can be read (and imported) without the state machine, and
the per-channel state can share them without importing the machine.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from common.errors import InvalidInput, UsageError
from common.wire import MAX_NAME_LENGTH, MAX_RECORD_PAYLOAD

#: Keeps a 1 Gbit/s x 60 ms path full. It is also what a peer can make us hold per channel
#: that our application stops reading, so it is a memory bound as much as a speed knob.
DEFAULT_WINDOW = 8 * 1024 * 1024
#: Big records amortise Python's per-call cost (DESIGN.md section 5).
DEFAULT_MAX_PACKET = 256 * 1024
#: Room in a record for the 8-byte extended-data head and the transport's inner type byte.
MAX_PACKET_CEILING = MAX_RECORD_PAYLOAD - 16
#: Channels each side may have open at once; the peer's excess gets RESOURCE_SHORTAGE.
MAX_CHANNELS = 256
#: Non-data payloads (open, request, reply): control messages, not bulk transfer.
MAX_PAYLOAD = 64 * 1024
#: An open failure's human-readable message.
MAX_FAILURE_TEXT = 1024
#: SSH's one defined extended data type.
EXTENDED_DATA_STDERR = 1

_U32_MAX = 0xFFFFFFFF


class MuxMessage(IntEnum):
    """Inner record types owned by the mux (the transport reserves 0x00-0x1F)."""

    CHANNEL_OPEN = 0x20
    CHANNEL_OPEN_CONFIRM = 0x21
    CHANNEL_OPEN_FAILURE = 0x22
    CHANNEL_WINDOW_ADJUST = 0x23
    CHANNEL_DATA = 0x24
    CHANNEL_EXTENDED_DATA = 0x25
    CHANNEL_EOF = 0x26
    CHANNEL_CLOSE = 0x27
    CHANNEL_REQUEST = 0x28
    CHANNEL_SUCCESS = 0x29
    CHANNEL_FAILURE = 0x2A
    GLOBAL_REQUEST = 0x2B
    REQUEST_SUCCESS = 0x2C
    REQUEST_FAILURE = 0x2D


class OpenFailureReason(IntEnum):
    """RFC 4254 section 5.1 reason codes, kept so SSH users recognise them."""

    ADMINISTRATIVELY_PROHIBITED = 1
    CONNECT_FAILED = 2
    UNKNOWN_CHANNEL_TYPE = 3
    RESOURCE_SHORTAGE = 4


class OutgoingMessage(NamedTuple):
    """One message for the transport; its body is ``head + payload``.

    Split in two so bulk data reaches the transport as a view of the application's buffer:
    the transport copies both pieces straight into its plaintext buffer, the only copy on the
    send path. Control messages have everything in ``head``.
    """

    msg_type: int
    head: bytes
    payload: bytes | memoryview = b""



def _check_name(name: str) -> None:
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NAME_LENGTH or not all(0x21 <= b <= 0x7E for b in raw):
        raise UsageError(f"name {name!r} is not 1-{MAX_NAME_LENGTH} printable ASCII bytes")


def _check_payload(payload: bytes | bytearray | memoryview) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise UsageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return bytes(payload)


def _check_u32(value: int, what: str) -> None:
    if not 0 <= value <= _U32_MAX:
        raise UsageError(f"{what} {value} does not fit in 32 bits")


#: The smallest packet size a peer may ask for. Smaller would let it make us spend a record
#: (37+ bytes on the wire, ~12 us of CPU) per byte we send.
MIN_PEER_MAX_PACKET = 1024


def _peer_max_packet(value: int) -> int:
    if value < MIN_PEER_MAX_PACKET:
        raise InvalidInput(f"maximum packet size {value} is below {MIN_PEER_MAX_PACKET}")
    return value
