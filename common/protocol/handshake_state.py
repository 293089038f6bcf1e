"""What the two handshake machines share, apart from the messages: the roles and the states
they pass through, the error each state fails with, the result handed to the transport
(Established), and the base class's mechanics (sequencing, deadlines, each state's body
bound, whose reasoning is in common.protocol.handshake's docstring). The client and server
machines differ only in their packet handlers; with this part apart each reads alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum, auto

from common.accounts.keys import PublicKey
from common.crypto.rng import Rng
from common.errors import (
    ConnectFailure,
    EstablishFailure,
    ExchangeFailure,
    ExstartFailure,
    InvalidRequest,
    PacketUnsequenced,
    QsmpError,
)
from common.protocol.negotiation import Suite
from common.protocol.record import RecordOpener, RecordSealer
from common.protocol.schedule import Transcript
from common.wire import MAX_HANDSHAKE_BODY, Flag, Header, Record, encode_packet

#: A packet handler: header, header bytes (hashed and authenticated), body, now.
_Handler = Callable[[Header, bytes, memoryview, float], None]

#: An error packet's body (one code byte); CONNECTION_TERMINATED has none. Both are honoured
#: in every state, so no state bounds a packet below this.
ENDING_BODY = 1


class Role(Enum):
    CLIENT = auto()
    SERVER = auto()


class State(Enum):
    START = auto()
    AWAIT_CONNECT_REQUEST = auto()
    AWAIT_CONNECT_RESPONSE = auto()
    AWAIT_HOST_KEY_DECISION = auto()
    AWAIT_EXSTART_REQUEST = auto()
    AWAIT_EXSTART_RESPONSE = auto()
    AWAIT_EXCHANGE_REQUEST = auto()
    AWAIT_EXCHANGE_RESPONSE = auto()
    AWAIT_ESTABLISH_REQUEST = auto()
    AWAIT_ESTABLISH_RESPONSE = auto()
    ESTABLISHED = auto()
    FAILED = auto()


#: Which error code a failure in each state is reported with, when no more specific one fits.
PHASE_ERROR: dict[State, type[QsmpError]] = {
    State.AWAIT_CONNECT_REQUEST: ConnectFailure,
    State.AWAIT_CONNECT_RESPONSE: ConnectFailure,
    State.AWAIT_HOST_KEY_DECISION: ConnectFailure,
    State.AWAIT_EXSTART_REQUEST: ExstartFailure,
    State.AWAIT_EXSTART_RESPONSE: ExstartFailure,
    State.AWAIT_EXCHANGE_REQUEST: ExchangeFailure,
    State.AWAIT_EXCHANGE_RESPONSE: ExchangeFailure,
    State.AWAIT_ESTABLISH_REQUEST: EstablishFailure,
    State.AWAIT_ESTABLISH_RESPONSE: EstablishFailure,
}


def _bounded(limit: int) -> int:
    """A state's bound: never below an error packet, never above the absolute ceiling."""
    return min(max(limit, ENDING_BODY), MAX_HANDSHAKE_BODY)


class Established(Record):
    """What a finished handshake hands to the transport."""

    __slots__ = (  # noqa: RUF023 (field order)
        "suite", "sealer", "opener", "session_id", "host_key", "tx_chain", "rx_chain")
    suite: Suite
    sealer: RecordSealer
    opener: RecordOpener
    session_id: bytes
    host_key: PublicKey
    tx_chain: bytearray
    rx_chain: bytearray

    def __init__(self, suite: Suite, sealer: RecordSealer, opener: RecordOpener, session_id: bytes,
                 host_key: PublicKey, tx_chain: bytearray, rx_chain: bytearray) -> None:
        object.__setattr__(self, "suite", suite)
        object.__setattr__(self, "sealer", sealer)
        object.__setattr__(self, "opener", opener)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "host_key", host_key)
        object.__setattr__(self, "tx_chain", tx_chain)
        object.__setattr__(self, "rx_chain", rx_chain)


class _Common:
    """What both handshake roles keep. (A plain slotted class, not a dataclass: building
    one costs ~1 ms at every client start, issue 18.)"""

    __slots__ = ("deadline", "outgoing", "rng", "rx_seq", "state", "step_timeout",
                 "transcript", "tx_seq")

    def __init__(self, rng: Rng, step_timeout: float) -> None:
        self.rng = rng
        self.step_timeout = step_timeout
        self.state = State.START
        self.deadline: float | None = None
        self.tx_seq = 0
        self.rx_seq = 0
        self.outgoing: list[bytes | bytearray] = []
        self.transcript = Transcript()


class _Handshake:
    """Shared mechanics: sequencing, deadlines, the failure mapping."""

    role: Role

    def __init__(self, rng: Rng, step_timeout: float) -> None:
        self._c = _Common(rng=rng, step_timeout=step_timeout)
        self.result: Established | None = None
        #: The transcript hash through the establish request: known to the client as soon
        #: as it sends that request, so pipelined authentication can sign it.
        self.session_id = b""

    # -- state as seen by the connection
    @property
    def state(self) -> State:
        return self._c.state

    @property
    def deadline(self) -> float | None:
        return self._c.deadline

    @property
    def tx_seq(self) -> int:
        return self._c.tx_seq

    def take_outgoing(self) -> list[bytes | bytearray]:
        out, self._c.outgoing = self._c.outgoing, []
        return out

    def phase_error(self) -> type[QsmpError]:
        return PHASE_ERROR.get(self._c.state, ConnectFailure)

    def check_deadline(self, now: float) -> None:
        if self._c.deadline is not None and now >= self._c.deadline:
            raise self.phase_error()(f"timed out in {self._c.state.name.lower()}")

    def fail(self) -> None:
        self._c.state = State.FAILED
        self._c.deadline = None

    # -- helpers
    def _send_plain(self, flag: Flag, body: bytes) -> bytes:
        packet = encode_packet(flag, self._c.tx_seq, body)
        self._c.tx_seq += 1
        self._c.outgoing.append(packet)
        return packet

    def _send_sealed(self, sealer: RecordSealer, flag: Flag, plaintext: bytes) -> bytearray:
        sealer.sequence = self._c.tx_seq
        packet = sealer.seal(flag, plaintext)
        self._c.tx_seq += 1
        self._c.outgoing.append(packet)
        return packet

    def _expect(self, header: Header, flag: Flag) -> None:
        if header.sequence != self._c.rx_seq:
            raise PacketUnsequenced(
                f"packet sequence {header.sequence}, expected {self._c.rx_seq}"
            )
        if header.flag != flag:
            raise InvalidRequest(
                f"expected {flag.name.lower()}, got flag 0x{header.flag:02x}"
            )
        self._c.rx_seq += 1

    def _arm(self, state: State, now: float | None) -> None:
        self._c.state = state
        self._c.deadline = None if now is None else now + self._c.step_timeout

    def max_body(self) -> int:
        """The largest body the packet this state waits for can have (see the module
        docstring); in a state that waits for nothing, room for an error packet only."""
        entry = self._handlers.get(self._c.state)
        if entry is None:
            return ENDING_BODY
        return _bounded(self._limit(entry[0]))

    def _limit(self, flag: Flag) -> int:
        raise NotImplementedError

    def _table(self) -> dict[State, tuple[Flag, _Handler]]:
        """Each waiting state: the one packet flag it accepts and what handles it."""
        raise NotImplementedError

    @functools.cached_property
    def _handlers(self) -> dict[State, tuple[Flag, _Handler]]:
        return self._table()

    def receive(self, header: Header, header_bytes: memoryview, body: memoryview,
                now: float) -> None:
        entry = self._handlers.get(self._c.state)
        if entry is None:
            raise InvalidRequest(f"unexpected packet in state {self._c.state.name.lower()}")
        flag, handler = entry
        self._expect(header, flag)
        handler(header, bytes(header_bytes), body, now)
