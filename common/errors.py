"""One error hierarchy whose leaves map 1:1 to the QSMP error codes (spec table 5.9).

The split that matters to a caller is *who* did wrong:

* :class:`PeerError` -- the remote host sent something invalid. We answer with an error
  packet carrying ``code`` and tear the session down.
* :class:`LocalError` -- something on our side failed (randomness, the network, a channel
  we were told to use). We still tell the peer, with the matching code, so it is not left
  waiting.
* :class:`RemoteReportedError` -- the peer told *us* it failed, with an error packet. We
  never answer an error packet with another one.
* :class:`UsageError` -- the application called the sans-IO core in a state where that call
  makes no sense. That is a bug in our code, not a protocol event, so it carries no code.

Messages are for logs and the user; they never contain key material or plaintext.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """QSMP rev 1a, table 5.9 (values unchanged)."""

    NONE = 0x00
    AUTHENTICATION_FAILURE = 0x01
    BAD_KEEP_ALIVE = 0x02
    CHANNEL_DOWN = 0x03
    CONNECTION_FAILURE = 0x04
    CONNECT_FAILURE = 0x05
    DECAPSULATION_FAILURE = 0x06
    ESTABLISH_FAILURE = 0x07
    EXSTART_FAILURE = 0x08
    EXCHANGE_FAILURE = 0x09
    HASH_INVALID = 0x0A
    INVALID_INPUT = 0x0B
    INVALID_REQUEST = 0x0C
    KEEP_ALIVE_EXPIRED = 0x0D
    KEY_EXPIRED = 0x0E
    KEY_UNRECOGNIZED = 0x0F
    PACKET_UNSEQUENCED = 0x10
    RANDOM_FAILURE = 0x11
    RECEIVE_FAILURE = 0x12
    TRANSMIT_FAILURE = 0x13
    VERIFY_FAILURE = 0x14
    UNKNOWN_PROTOCOL = 0x15

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """Map a received byte to a code; unknown values must not crash the receiver."""
        try:
            return cls(value)
        except ValueError:
            return cls.INVALID_INPUT

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.NONE: "no error",
    ErrorCode.AUTHENTICATION_FAILURE: "authentication failure",
    ErrorCode.BAD_KEEP_ALIVE: "bad keep-alive",
    ErrorCode.CHANNEL_DOWN: "channel down",
    ErrorCode.CONNECTION_FAILURE: "connection failure",
    ErrorCode.CONNECT_FAILURE: "key exchange failed at the connect phase",
    ErrorCode.DECAPSULATION_FAILURE: "KEM decapsulation failure",
    ErrorCode.ESTABLISH_FAILURE: "key exchange failed at the establish phase",
    ErrorCode.EXSTART_FAILURE: "key exchange failed at the exstart phase",
    ErrorCode.EXCHANGE_FAILURE: "key exchange failed at the exchange phase",
    ErrorCode.HASH_INVALID: "hash invalid",
    ErrorCode.INVALID_INPUT: "invalid input",
    ErrorCode.INVALID_REQUEST: "unexpected packet",
    ErrorCode.KEEP_ALIVE_EXPIRED: "keep-alive expired",
    ErrorCode.KEY_EXPIRED: "key expired",
    ErrorCode.KEY_UNRECOGNIZED: "key unrecognized",
    ErrorCode.PACKET_UNSEQUENCED: "packet out of sequence",
    ErrorCode.RANDOM_FAILURE: "random generator failure",
    ErrorCode.RECEIVE_FAILURE: "receive failure",
    ErrorCode.TRANSMIT_FAILURE: "transmit failure",
    ErrorCode.VERIFY_FAILURE: "verification failure",
    ErrorCode.UNKNOWN_PROTOCOL: "no common protocol configuration",
}


class QsmpError(Exception):
    """Base of every protocol-level failure. ``code`` is what goes on the wire."""

    code: ErrorCode = ErrorCode.INVALID_INPUT

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.description)
        self.message = message or self.code.description

    def __str__(self) -> str:
        return self.message


class PeerError(QsmpError):
    """The remote host violated the protocol or failed a cryptographic check."""


class LocalError(QsmpError):
    """A failure on our side; reported to the peer with the matching code. Without a more
    specific leaf, "channel down": the peer did nothing wrong, our end of the channel failed."""

    code = ErrorCode.CHANNEL_DOWN


class UsageError(Exception):
    """Our own code called the core out of order. Never sent on the wire."""


class RemoteReportedError(QsmpError):
    """The peer sent an error packet. ``code`` is the code it reported."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"peer reported: {code.description}")


class ConnectionClosed(QsmpError):
    """The transport closed: by a shutdown message, a peer's EOF, or our own close()."""

    code = ErrorCode.NONE


# Leaves: one per code. Peer-caused first, then local.


class AuthenticationFailure(PeerError):
    """An AEAD tag or MAC did not verify."""

    code = ErrorCode.AUTHENTICATION_FAILURE


class BadKeepAlive(PeerError):
    """A keep-alive answer did not match the request."""

    code = ErrorCode.BAD_KEEP_ALIVE


class ConnectFailure(PeerError):
    """The connect step failed (malformed request or response, or its deadline passed)."""

    code = ErrorCode.CONNECT_FAILURE


class DecapsulationFailure(PeerError):
    """A KEM ciphertext could not be decapsulated (wrong size or invalid encoding)."""

    code = ErrorCode.DECAPSULATION_FAILURE


class EstablishFailure(PeerError):
    """Key confirmation failed, or the establish step timed out."""

    code = ErrorCode.ESTABLISH_FAILURE


class ExstartFailure(PeerError):
    """The exstart step failed."""

    code = ErrorCode.EXSTART_FAILURE


class ExchangeFailure(PeerError):
    """The exchange step failed."""

    code = ErrorCode.EXCHANGE_FAILURE


class HashInvalid(PeerError):
    """A hash or MAC over handshake data did not match."""

    code = ErrorCode.HASH_INVALID


class InvalidInput(PeerError):
    """A message was malformed: bad length, trailing bytes, out-of-range field."""

    code = ErrorCode.INVALID_INPUT


class InvalidRequest(PeerError):
    """A packet flag or message type was not valid in the current state."""

    code = ErrorCode.INVALID_REQUEST


class KeepAliveExpired(PeerError):
    """The peer did not answer a keep-alive in time."""

    code = ErrorCode.KEEP_ALIVE_EXPIRED


class KeyExpired(PeerError):
    """The host key's expiration time has passed."""

    code = ErrorCode.KEY_EXPIRED


class KeyUnrecognized(PeerError):
    """The key identity is not one we hold or expect."""

    code = ErrorCode.KEY_UNRECOGNIZED


class PacketUnsequenced(PeerError):
    """A record's sequence number was not the next one expected (replay, loss, reorder)."""

    code = ErrorCode.PACKET_UNSEQUENCED


class VerifyFailure(PeerError):
    """A signature did not verify, or a host key did not match the one we trust."""

    code = ErrorCode.VERIFY_FAILURE


class UnknownProtocol(PeerError):
    """No protocol version or algorithm suite in common."""

    code = ErrorCode.UNKNOWN_PROTOCOL


class ChannelDown(LocalError):
    """The communications channel failed underneath us."""

    code = ErrorCode.CHANNEL_DOWN


class ConnectionFailure(LocalError):
    """We could not reach the remote host."""

    code = ErrorCode.CONNECTION_FAILURE


class RandomFailure(LocalError):
    """The random generator failed or returned too little."""

    code = ErrorCode.RANDOM_FAILURE


class ReceiveFailure(LocalError):
    """Reading from the network failed."""

    code = ErrorCode.RECEIVE_FAILURE


class TransmitFailure(LocalError):
    """Writing to the network failed."""

    code = ErrorCode.TRANSMIT_FAILURE


#: Exactly one class per non-zero code, for tests and for raising by code.
BY_CODE: dict[ErrorCode, type[QsmpError]] = {
    cls.code: cls
    for cls in (
        AuthenticationFailure, BadKeepAlive, ConnectFailure, DecapsulationFailure,
        EstablishFailure, ExstartFailure, ExchangeFailure, HashInvalid, InvalidInput,
        InvalidRequest, KeepAliveExpired, KeyExpired, KeyUnrecognized, PacketUnsequenced,
        VerifyFailure, UnknownProtocol, ChannelDown, ConnectionFailure, RandomFailure,
        ReceiveFailure, TransmitFailure,
    )
}
