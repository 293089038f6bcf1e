"""The privileged half of one connection: what the unprivileged pre-auth process may ask.

Each connection's process forks an unprivileged child that parses every byte the client
sends before login (:mod:`qshd.preauth`). Three things need more than that child has, and
they are requests to this monitor over a ``SOCK_SEQPACKET`` socketpair (one message per
packet, so a message is never split or merged):

==========  =============================================================  ==============
request     body                                                           answer
==========  =============================================================  ==============
SIGN        key ID, transcript hash (exactly 32 bytes)                     SIGNATURE
PASSWORD    user, password                                                 VERDICT
PUBLICKEY   user, key blob, session ID, signature                          VERDICT
HANDOFF     user, the connection's exported state, key options             (none)
==========  =============================================================  ==============

The user's process has a link of its own to the monitor. On it the monitor passes the
HANDOFF on as soon as it has it, then PREAUTH_GONE (no body) once the pre-auth process has
exited and been reaped: the user's process gets ready meanwhile (becomes the user, rebuilds
the connection) but reads the socket only after PREAUTH_GONE, so the pre-auth process,
which holds the same session keys, can never see a byte of the session. After that the
user's process asks for what only root may write: PTY_OPENED (line, pid) and PTY_CLOSED
(line, pid, status) become utmp, wtmp and lastlog records, for a terminal the monitor
checks is the user's.

The monitor answers in that order only: one SIGN, first (the handshake signs once; rekeys
do not sign), then logins, then one HANDOFF after a login it accepted itself. It composes
what it signs (the handshake's context string and a 32-byte hash, never bytes of the
child's choosing) and verifies a user key's signature again rather than trust the child's
word. Anything else -- an unknown type, a field out of bounds, a request out of order, a
second SIGN, a HANDOFF without a login -- ends the connection: a well-behaved child never
sends it, so it means the child is compromised or broken.

What a compromised child can still do, and what bounds it: it holds that one connection's
session keys, and it can obtain one handshake signature over a hash it chooses (OpenSSH's
monitor has the same exposure: the child owns the key exchange). It cannot read a file,
sign anything else, learn whether a password is right without spending one of
MaxAuthTries, or start a session without a login the monitor accepted.

The codec here is sans-IO (bytes in, messages out); :class:`MonitorLink` is the blocking
socket end, for processes that serve a single connection and may block.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass
from enum import IntEnum

from common.errors import InvalidInput
from common.wire import Reader, Writer

#: The transcript hash: SHA3-256.
HASH_SIZE = 32
#: Largest key ID (a SHA3-256 digest today).
MAX_KEY_ID = 64
#: A password: as the authentication layer bounds it.
MAX_PASSWORD = 1024
#: Key blobs and signatures: ML-DSA-87 keys are 2.6 KB and signatures 4.6 KB, SLH-DSA
#: signatures up to 50 KB; far below this.
MAX_BLOB = 128 * 1024
#: The exported state of a connection: keys, counters and the bytes the child had read but
#: not yet processed (bounded by the pre-auth receive budget).
MAX_STATE = 2 * 1024 * 1024
#: One packet on the link: the largest message plus its fields' length prefixes.
MAX_MESSAGE = MAX_STATE + 4096
MAX_USER = 64
#: A terminal's line (``pts/12``).
MAX_LINE = 32
MAX_TEXT = 1024
#: A key line's options field (common.accounts.key_options.MAX_OPTIONS).
MAX_OPTIONS = 8192


class MonitorError(Exception):
    """The other end broke the monitor protocol (or went away): end the connection."""


class Type(IntEnum):
    SIGN = 0x01
    PASSWORD = 0x02
    PUBLICKEY = 0x03
    HANDOFF = 0x04
    PTY_OPENED = 0x05
    PTY_CLOSED = 0x06
    PREAUTH_GONE = 0x07
    SIGNATURE = 0x81
    VERDICT = 0x82


@dataclass(frozen=True, slots=True)
class Sign:
    key_id: bytes
    transcript_hash: bytes

    def encode(self) -> bytes:
        return (Writer().u8(Type.SIGN).vbytes(self.key_id).vbytes(self.transcript_hash)
                .getvalue())


@dataclass(frozen=True, slots=True)
class Password:
    user: str
    password: bytes = b""

    def __repr__(self) -> str:  # never a password in a log line
        return f"Password(user={self.user!r})"

    def encode(self) -> bytes:
        return Writer().u8(Type.PASSWORD).text(self.user).vbytes(self.password).getvalue()


@dataclass(frozen=True, slots=True)
class PublicKeyLogin:
    user: str
    key_blob: bytes
    session_id: bytes
    signature: bytes

    def encode(self) -> bytes:
        return (Writer().u8(Type.PUBLICKEY).text(self.user).vbytes(self.key_blob)
                .vbytes(self.session_id).vbytes(self.signature).getvalue())


@dataclass(frozen=True, slots=True)
class Handoff:
    user: str
    state: bytes
    #: The accepted key line's options (authorized_keys), as written; "" for none. Filled
    #: in by the monitor on its way to the user's process: what the pre-auth process puts
    #: here is never read.
    key_options: str = ""

    def __repr__(self) -> str:  # the state holds session keys
        return f"Handoff(user={self.user!r}, {len(self.state)} bytes)"

    def encode(self) -> bytes:
        return (Writer().u8(Type.HANDOFF).text(self.user).vbytes(self.state)
                .text(self.key_options).getvalue())


@dataclass(frozen=True, slots=True)
class Signature:
    signature: bytes

    def encode(self) -> bytes:
        return Writer().u8(Type.SIGNATURE).vbytes(self.signature).getvalue()


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    message: str = ""

    def encode(self) -> bytes:
        return Writer().u8(Type.VERDICT).boolean(self.accepted).text(self.message).getvalue()


@dataclass(frozen=True, slots=True)
class PtyOpened:
    """The user's process: a session got a terminal (for utmp, wtmp and lastlog)."""

    line: str
    pid: int

    def encode(self) -> bytes:
        return Writer().u8(Type.PTY_OPENED).text(self.line).u32(self.pid).getvalue()


@dataclass(frozen=True, slots=True)
class PtyClosed:
    line: str
    pid: int
    status: int

    def encode(self) -> bytes:
        return (Writer().u8(Type.PTY_CLOSED).text(self.line).u32(self.pid).u32(self.status)
                .getvalue())


@dataclass(frozen=True, slots=True)
class PreauthGone:
    """To the user's process: the pre-auth process has exited; the socket is yours alone."""

    def encode(self) -> bytes:
        return Writer().u8(Type.PREAUTH_GONE).getvalue()


Request = Sign | Password | PublicKeyLogin | Handoff | PtyOpened | PtyClosed
Answer = Signature | Verdict | PreauthGone
Message = Request | Answer


def decode(data: bytes | bytearray | memoryview) -> Message:
    """One message; raises :class:`MonitorError` for anything malformed or oversized."""
    if len(data) > MAX_MESSAGE:
        raise MonitorError(f"monitor message of {len(data)} bytes")
    try:
        r = Reader(data)
        kind = r.u8()
        message: Message
        if kind == Type.SIGN:
            message = Sign(r.vbytes(MAX_KEY_ID), r.vbytes(HASH_SIZE))
            if len(message.transcript_hash) != HASH_SIZE:
                raise MonitorError("a transcript hash of the wrong size")
        elif kind == Type.PASSWORD:
            message = Password(r.text(MAX_USER), r.vbytes(MAX_PASSWORD))
        elif kind == Type.PUBLICKEY:
            message = PublicKeyLogin(r.text(MAX_USER), r.vbytes(MAX_BLOB),
                                     r.vbytes(HASH_SIZE), r.vbytes(MAX_BLOB))
        elif kind == Type.HANDOFF:
            message = Handoff(r.text(MAX_USER), r.vbytes(MAX_STATE), r.text(MAX_OPTIONS))
        elif kind == Type.PTY_OPENED:
            message = PtyOpened(r.text(MAX_LINE), r.u32())
        elif kind == Type.PTY_CLOSED:
            message = PtyClosed(r.text(MAX_LINE), r.u32(), r.u32())
        elif kind == Type.SIGNATURE:
            message = Signature(r.vbytes(MAX_BLOB))
        elif kind == Type.VERDICT:
            message = Verdict(r.boolean(), r.text(MAX_TEXT))
        elif kind == Type.PREAUTH_GONE:
            message = PreauthGone()
        else:
            raise MonitorError(f"unknown monitor message type 0x{kind:02x}")
        r.end()
    except InvalidInput as exc:
        raise MonitorError(f"malformed monitor message: {exc}") from None
    return message


class Phase(IntEnum):
    HANDSHAKE = 0  # only SIGN
    LOGIN = 1      # PASSWORD / PUBLICKEY, until one is accepted
    LOGGED_IN = 2  # only HANDOFF
    DONE = 3       # nothing more


class Ordering:
    """Which request may come next: the monitor's whole policy on ordering, sans-IO."""

    def __init__(self, max_failures: int) -> None:
        self.phase = Phase.HANDSHAKE
        self.failures = 0
        self.max_failures = max_failures
        self.user: str | None = None

    def check(self, request: Message) -> None:
        allowed: dict[Phase, tuple[type, ...]] = {
            Phase.HANDSHAKE: (Sign,),
            Phase.LOGIN: (Password, PublicKeyLogin),
            Phase.LOGGED_IN: (Handoff,),
            Phase.DONE: (),
        }
        if not isinstance(request, allowed[self.phase]):
            raise MonitorError(f"{type(request).__name__} not allowed in phase "
                               f"{self.phase.name}")
        if isinstance(request, Handoff) and request.user != self.user:
            raise MonitorError("handoff for a user who did not log in")

    def signed(self) -> None:
        self.phase = Phase.LOGIN

    def verdict(self, user: str, accepted: bool) -> None:
        if accepted:
            self.phase = Phase.LOGGED_IN
            self.user = user
            return
        self.failures += 1
        if self.failures >= self.max_failures:
            self.phase = Phase.DONE

    def handed_off(self) -> None:
        self.phase = Phase.DONE


class MonitorLink:
    """One end of the monitor socketpair, blocking, every wait bounded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @staticmethod
    def pair() -> tuple[MonitorLink, MonitorLink]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return MonitorLink(a), MonitorLink(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> None:
        self.sock.sendall(message.encode())

    def receive(self, timeout: float | None) -> Message:
        """The next message; :class:`MonitorError` on EOF, time-out or a bad message."""
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
            if not ready:
                raise MonitorError("monitor link timed out")
        try:
            data, _, flags, _ = self.sock.recvmsg(MAX_MESSAGE + 1)
        except OSError as exc:
            raise MonitorError(f"monitor link: {exc.strerror}") from None
        if not data:
            raise MonitorError("monitor link closed")
        if flags & socket.MSG_TRUNC or len(data) > MAX_MESSAGE:
            raise MonitorError("oversized monitor message")
        return decode(data)

    def call(self, request: Request, answer: type, timeout: float) -> Message:
        self.send(request)
        reply = self.receive(timeout)
        if not isinstance(reply, answer):
            raise MonitorError(f"expected {answer.__name__}, got {type(reply).__name__}")
        return reply

    def close(self) -> None:
        self.sock.close()
