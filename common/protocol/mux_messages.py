"""The mux's wire vocabulary: its message types, reason codes and limits, and the checks of
names, payloads and sizes against them.

On their own so that the limits can be read (and imported) without the state machine, and
the per-channel state can share them without importing the machine.

Message layouts
===============

The transport reserves inner record types 0x00-0x1F; the mux owns 0x20-0x3F. Integers are
big-endian. Field encodings are those of :mod:`common.wire`:

* ``u32``       4 bytes, unsigned.
* ``bool``      1 byte, 0 or 1 (anything else is refused).
* ``name``      u8 length (1..64) then that many printable-ASCII bytes (0x21..0x7E).
* ``vbytes``    u32 length then that many bytes; at most 64 KiB (:data:`MAX_PAYLOAD`).
* ``text``      u32 length then UTF-8; at most 1 KiB here (:data:`MAX_FAILURE_TEXT`).
* ``raw``       everything to the end of the record: the record already carries the length,
                so bulk data needs no prefix of its own.

"recipient" is the id the *receiver* of the message chose for the channel; "sender" is the id
the sender of the message chose. Each side picks its own ids, as in SSH.

::

    0x20 CHANNEL_OPEN            name kind | u32 sender | u32 initial_window | u32 max_packet
                                 | vbytes payload
    0x21 CHANNEL_OPEN_CONFIRM    u32 recipient | u32 sender | u32 initial_window
                                 | u32 max_packet | vbytes payload
    0x22 CHANNEL_OPEN_FAILURE    u32 recipient | u32 reason | text message
    0x23 CHANNEL_WINDOW_ADJUST   u32 recipient | u32 bytes_to_add
    0x24 CHANNEL_DATA            u32 recipient | raw data
    0x25 CHANNEL_EXTENDED_DATA   u32 recipient | u32 data_type | raw data
    0x26 CHANNEL_EOF             u32 recipient
    0x27 CHANNEL_CLOSE           u32 recipient
    0x28 CHANNEL_REQUEST         u32 recipient | name request | bool want_reply | vbytes payload
    0x29 CHANNEL_SUCCESS         u32 recipient | vbytes payload
    0x2A CHANNEL_FAILURE         u32 recipient | vbytes payload
    0x2B GLOBAL_REQUEST          name request | bool want_reply | vbytes payload
    0x2C REQUEST_SUCCESS         vbytes payload
    0x2D REQUEST_FAILURE         vbytes payload

Differences from RFC 4254, and why: lengths are our wire codec's (u8-prefixed names, no
length on bulk data because the record frames it); replies carry a payload so an answer needs
no second message (SSH special-cases this per request); ``max_packet`` counts *data* bytes
only, so both sides agree on it whatever the framing overhead.
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
