"""What the adapter raises to its callers when a connection or a channel ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.errors import (
    BY_CODE,
    ConnectionClosed,
    ErrorCode,
    QsmpError,
    RemoteReportedError,
)

if TYPE_CHECKING:  # only a type here: the errors load without the protocol stack
    from common.protocol.connection import ConnectionTerminated


class ConnectionLost(ConnectionClosed):
    """The connection ended before the operation could complete. ``terminated`` tells how
    (None if the socket failed before the core knew); ``code`` is its error code."""

    def __init__(self, terminated: ConnectionTerminated | None, message: str = "") -> None:
        self.terminated = terminated
        self.code = terminated.code if terminated is not None else ErrorCode.CHANNEL_DOWN
        if not message:
            message = terminated.reason if terminated is not None else "connection lost"
        super().__init__(message)


class ChannelOpenError(Exception):
    """The peer refused to open a channel (RFC 4254 reason code and its message)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(f"channel open refused ({reason}): {message}")
        self.reason = reason
        self.message = message


class ChannelClosedError(ConnectionError):
    """Writing to (or requesting on) a channel that is closed or half-closed by us."""


def termination_error(t: ConnectionTerminated) -> QsmpError:
    """The exception that best describes a termination, for callers of :func:`connect`:
    the peer's reported error, our own failure by its code, or :class:`ConnectionLost`."""
    if t.code in (ErrorCode.NONE, ErrorCode.CHANNEL_DOWN):
        return ConnectionLost(t)
    if t.by_peer:
        return RemoteReportedError(t.code, t.reason)
    cls = BY_CODE.get(t.code)
    return cls(t.reason) if cls is not None else ConnectionLost(t)
