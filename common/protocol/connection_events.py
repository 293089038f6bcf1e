"""The events a :class:`~common.protocol.connection.Connection` reports, and the words for a
server that does not speak QSMP.

On their own because they are the connection's whole output vocabulary beside the mux's: an
adapter or a client program reads this module to learn what it must handle, without the
state machine that produces them.
"""

from __future__ import annotations

from common.accounts.keys import PublicKey
from common.errors import ErrorCode
from common.protocol.negotiation import Suite
from common.wire import Record


class HostKeyUnverified(Record):
    """Client only: the server's key is not in known_hosts. Call accept_host_key() or
    reject_host_key(); nothing proceeds until one is called."""

    __slots__ = ("host_key",)
    host_key: PublicKey

    def __init__(self, host_key: PublicKey) -> None:
        object.__setattr__(self, "host_key", host_key)


class HandshakeComplete(Record):
    __slots__ = ("suite", "session_id", "host_key")  # noqa: RUF023 (field order)
    suite: Suite
    session_id: bytes
    host_key: PublicKey

    def __init__(self, suite: Suite, session_id: bytes, host_key: PublicKey) -> None:
        object.__setattr__(self, "suite", suite)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "host_key", host_key)


def not_qsmp(first: bytes) -> str:
    """Why a server's first bytes are not a QSMP packet, in words for the person who pointed
    qsh at it: most often an sshd (it greets with its version line) or a web server."""
    if first.startswith(b"SSH-"):
        line = first.split(b"\n", 1)[0].rstrip(b"\r")[:100]
        shown = "".join(c if c.isprintable() else "?" for c in line.decode("ascii", "replace"))
        return f"this is an SSH server ({shown}), not qshd"
    if first.startswith((b"HTTP/", b"<!DOCTYPE", b"<html", b"<HTML")):
        return "not a qshd server: it answered in HTTP (a web server?)"
    return "not a qshd server: its answer is not QSMP"


class ConnectionTerminated(Record):
    """The connection is over. ``code`` NONE means a clean shutdown; ``by_peer`` tells who
    ended it."""

    __slots__ = ("code", "reason", "by_peer")  # noqa: RUF023 (field order)
    code: ErrorCode
    reason: str
    by_peer: bool

    def __init__(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "by_peer", by_peer)
