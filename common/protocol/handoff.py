"""The state of an established, logged-in server connection, for handing it to another process.

qshd runs the handshake and the login in an unprivileged pre-auth process that can never
become the user; once a login is accepted, the connection moves to a process that has
become the user and serves the sessions over the same TCP socket (OpenSSH's privsep does
the same with ``mm_send_keystate``). What moves is this state: the negotiated suite, the
session ID, the authenticated user, each direction's record key, IV, sequence number, byte
count and rekey chain, the transport's counters and timers, and the bytes the old process
had read from the socket but not yet processed. The peer sees nothing: no byte of this
format ever goes on the wire, and the next record is sealed with the next sequence number
under the same key.

The encoding is our own wire codec (big-endian, bounded readers), versioned by a magic and
a version byte. Decoding treats the bytes as hostile -- they come from the pre-auth
process, which parsed the network before login -- so every length and value is bounded
and checked before use, and anything malformed raises :class:`HandoffError` and nothing
else. Times are carried as ages and delays relative to the export, never as clock
readings: the two processes' monotonic clocks have nothing in common.

The state holds live keys: it must travel only over a private channel between our own
processes (a pipe or socketpair), and be dropped once used. It is never logged (the
dataclasses' ``repr`` leaves the keys out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.crypto import registry
from common.errors import InvalidInput
from common.protocol.auth import MAX_USER_NAME
from common.protocol.negotiation import (
    MAX_PADDING,
    SUPPORTED_VERSIONS,
    ChaffPolicy,
    ObscurePolicy,
    Suite,
)
from common.protocol.schedule import CHAIN_SIZE, HASH_SIZE, IV_SIZE
from common.wire import HEADER_SIZE, MAX_RECORD_BODY, Reader, Writer, decode_header

#: "qsh handoff"; then a version byte, so a newer format is refused rather than misread.
MAGIC = b"QSHH"
VERSION = 1
#: The longest age or delay carried (ten years, in microseconds): a connection's keys and
#: timers are far younger, and the bound keeps the arithmetic on the other side sane.
MAX_AGE_US = 10 * 365 * 86_400 * 1_000_000
#: The unprocessed input is less than one whole packet: the core processes every complete
#: one as it arrives, so only a record cut off by the socket can be left over.
MAX_PENDING_INPUT = HEADER_SIZE + MAX_RECORD_BODY - 1
KEEPALIVE_TOKEN_SIZE = 8


class HandoffError(Exception):
    """A handoff state that cannot be used: truncated, malformed, of another version, out
    of bounds, or naming an algorithm this machine lacks. The connection cannot be taken
    over; the caller drops it (there is nobody on the wire to tell)."""


@dataclass(frozen=True, slots=True)
class DirectionState:
    """One direction's record protection: where its sealer or opener stands."""

    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    chain: bytes = field(repr=False)
    #: The sequence number of the next record in this direction.
    sequence: int
    #: Record bytes sealed (or opened) under this key so far.
    byte_count: int


@dataclass(frozen=True, slots=True)
class TransportState:
    """What :class:`common.transport.Transport` needs to carry on."""

    suite: Suite
    session_id: bytes = field(repr=False)
    tx: DirectionState
    rx: DirectionState
    #: Seconds since the current transmit key was installed (drives the time-based rekey).
    tx_key_age: float
    #: Application bytes sent under the current transmit key (the byte-based rekey).
    budget_used: int
    rekeys_sent: int
    rekeys_received: int
    #: Seconds until our next keep-alive request is due; None if we send none.
    keepalive_due_in: float | None
    #: The token of our keep-alive request still waiting for its answer.
    keepalive_token: bytes | None = field(repr=False)
    #: Seconds until the next chaff record; None exactly when the suite has no chaff.
    chaff_due_in: float | None


@dataclass(frozen=True, slots=True)
class HandoffState:
    transport: TransportState
    #: The user the login accepted.
    user: str
    #: Bytes read from the socket and not processed: the start of a cut-off packet.
    pending_input: bytes = field(repr=False)


# --------------------------------------------------------------------------- encoding


def _age_us(seconds: float) -> int:
    """Seconds as whole microseconds within [0, MAX_AGE_US] (negative: overdue, so now)."""
    return min(max(round(seconds * 1_000_000), 0), MAX_AGE_US)


def encode(state: HandoffState) -> bytes:
    t = state.transport
    w = Writer().fixed(MAGIC).u8(VERSION)
    suite = t.suite
    w.u8(suite.version).name(suite.kem).name(suite.signature).name(suite.aead)
    suite.chaff.encode(w)
    w.u16(suite.padding_max)
    w.boolean(suite.obscure is not None)
    if suite.obscure is not None:
        suite.obscure.encode(w)
    w.fixed(t.session_id)
    w.name(state.user)
    for d in (t.tx, t.rx):
        w.fixed(d.key).fixed(d.iv).fixed(d.chain).u64(d.sequence).u64(d.byte_count)
    w.u64(_age_us(t.tx_key_age)).u64(t.budget_used).u64(t.rekeys_sent)
    w.u64(t.rekeys_received)
    w.boolean(t.keepalive_due_in is not None)
    if t.keepalive_due_in is not None:
        w.u64(_age_us(t.keepalive_due_in))
    w.boolean(t.keepalive_token is not None)
    if t.keepalive_token is not None:
        w.fixed(t.keepalive_token)
    w.boolean(t.chaff_due_in is not None)
    if t.chaff_due_in is not None:
        w.u64(_age_us(t.chaff_due_in))
    w.vbytes(state.pending_input)
    data = w.getvalue()
    # What we write must be what we accept: a state the other side would refuse is a bug
    # here, and better found in the exporting process than after it has let go.
    decode(data)
    return data


def decode(data: bytes | bytearray | memoryview) -> HandoffState:
    """Parse and check a state; raises :class:`HandoffError` and nothing else."""
    try:
        return _decode(Reader(data))
    except HandoffError:
        raise
    except (InvalidInput, ValueError) as exc:  # the codec's bounds, ChaffPolicy.validate
        raise HandoffError(f"malformed handoff state: {exc}") from None


def _decode(r: Reader) -> HandoffState:
    if r.remaining < len(MAGIC) + 1 or r.fixed(len(MAGIC)) != MAGIC:
        raise HandoffError("not a qsh handoff state")
    version = r.u8()
    if version != VERSION:
        raise HandoffError(f"handoff state version {version}, this qsh reads {VERSION}")
    suite = _suite(r)
    aead = registry.aead(suite.aead)
    session_id = r.fixed(HASH_SIZE)
    user = r.name(MAX_USER_NAME)
    tx = _direction(r, aead.key_size)
    rx = _direction(r, aead.key_size)
    tx_key_age = _seconds(r.u64(), "key age")
    budget_used = r.u64()
    rekeys_sent = r.u64()
    rekeys_received = r.u64()
    keepalive_due_in = _seconds(r.u64(), "keep-alive delay") if r.boolean() else None
    keepalive_token = r.fixed(KEEPALIVE_TOKEN_SIZE) if r.boolean() else None
    chaff_due_in = _seconds(r.u64(), "chaff delay") if r.boolean() else None
    # With keystroke obfuscation the server's chaff is its fake echoes: no chaff timer.
    if (chaff_due_in is not None) != (suite.chaff.enabled and suite.obscure is None):
        raise HandoffError("chaff timer does not match the suite's chaff policy")
    if chaff_due_in is not None and chaff_due_in > suite.chaff.interval_max_ms / 1000:
        raise HandoffError("chaff delay exceeds the suite's interval")
    pending = r.vbytes(MAX_PENDING_INPUT)
    r.end()
    _check_pending(pending)
    transport = TransportState(
        suite=suite, session_id=session_id, tx=tx, rx=rx, tx_key_age=tx_key_age,
        budget_used=budget_used, rekeys_sent=rekeys_sent, rekeys_received=rekeys_received,
        keepalive_due_in=keepalive_due_in, keepalive_token=keepalive_token,
        chaff_due_in=chaff_due_in)
    return HandoffState(transport=transport, user=user, pending_input=pending)


def _suite(r: Reader) -> Suite:
    version = r.u8()
    if version not in SUPPORTED_VERSIONS:
        raise HandoffError(f"protocol version {version} is not supported")
    kem, signature, aead = r.name(), r.name(), r.name()
    for what, name, table in (("KEM", kem, registry.available_kems()),
                              ("signature", signature, registry.available_signatures()),
                              ("AEAD", aead, registry.available_aeads())):
        if name not in table:
            raise HandoffError(f"{what} {name!r} is not available here")
    chaff = ChaffPolicy.decode(r)
    padding_max = r.u16()
    if padding_max > MAX_PADDING:
        raise HandoffError(f"padding of {padding_max} bytes exceeds {MAX_PADDING}")
    obscure = ObscurePolicy.decode(r) if r.boolean() else None
    return Suite(version, kem, signature, aead, chaff, padding_max, obscure)


def _direction(r: Reader, key_size: int) -> DirectionState:
    return DirectionState(key=r.fixed(key_size), iv=r.fixed(IV_SIZE), chain=r.fixed(CHAIN_SIZE),
                          sequence=r.u64(), byte_count=r.u64())


def _seconds(microseconds: int, what: str) -> float:
    if microseconds > MAX_AGE_US:
        raise HandoffError(f"{what} out of range")
    return microseconds / 1_000_000


def _check_pending(pending: bytes) -> None:
    """Only the start of one packet may be left over; a whole one would have been
    processed (and a state that smuggles one in is not what any core exports)."""
    if len(pending) < HEADER_SIZE:
        return
    header = decode_header(pending[:HEADER_SIZE], MAX_RECORD_BODY)
    if HEADER_SIZE + header.length <= len(pending):
        raise HandoffError("unprocessed input holds a whole packet")


__all__ = [
    "MAGIC",
    "VERSION",
    "DirectionState",
    "HandoffError",
    "HandoffState",
    "TransportState",
    "decode",
    "encode",
]
