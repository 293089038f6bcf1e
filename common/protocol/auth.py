"""User authentication inside the established channel (inner record types 0x40-0x4F).

The host is already authenticated by the handshake; this layer proves the *user*. Messages::

    0x40 AUTH_REQUEST   name user | name method | method data
         "password":    vbytes password (bytes as typed; no UTF-8 check)
         "publickey":   vbytes public key blob | vbytes signature
    0x41 AUTH_SUCCESS   (empty)
    0x42 AUTH_FAILURE   names methods that may still succeed | text message

A user-key signature covers ``context || session_id || user || key blob``: the session ID is
the handshake transcript hash through the establish request, so a signature made for one
session is worthless in any other (and the client knows the session ID when it pipelines its
request right behind the establish request).

The core decides what it can decide alone -- message syntax, the signature -- and asks the
application about the rest (is this key authorized for this user? does this password match
the passwd file?) with an :class:`AuthRequested` event. Failures are answered after a delay
that doubles with each failure, and the connection ends after ``max_attempts`` of them:
the delay is a timer of the core, not a sleep, so nothing here blocks.
"""

from __future__ import annotations

from enum import IntEnum

from common.accounts.keys import MAX_PUBLIC_BLOB, HostKey, PublicKey
from common.crypto.rng import Rng
from common.errors import AuthenticationFailure, InvalidInput, InvalidRequest, UsageError
from common.wire import MAX_NAME_LENGTH, Reader, Record, Writer, cut_utf8

MAX_USER_NAME = 32
MAX_PASSWORD = 1024
MAX_MESSAGE = 1024
MAX_SIGNATURE = 65536
DEFAULT_MAX_ATTEMPTS = 6
#: The first failure is answered after this many seconds, each further one after twice as
#: long, up to MAX_FAILURE_DELAY.
FIRST_FAILURE_DELAY = 0.5
MAX_FAILURE_DELAY = 8.0

METHOD_PASSWORD = "password"  # noqa: S105 -- the wire name of a method, not a secret
METHOD_PUBLICKEY = "publickey"
METHODS = (METHOD_PUBLICKEY, METHOD_PASSWORD)

_SIGNATURE_CONTEXT = b"qsh user authentication v1\x00"


class AuthMessage(IntEnum):
    AUTH_REQUEST = 0x40
    AUTH_SUCCESS = 0x41
    AUTH_FAILURE = 0x42


FIRST_AUTH_TYPE = 0x40
LAST_AUTH_TYPE = 0x4F


def signed_data(session_id: bytes, user: str, key_blob: bytes) -> bytes:
    """What a user key signs: bound to this session, this user and this key."""
    return (_SIGNATURE_CONTEXT + session_id + bytes([len(user)]) + user.encode("ascii")
            + key_blob)


class AuthRequested(Record):
    """Server: the client asks to log in. The syntax and (for a key) the signature are
    already checked; answer with ``accept_auth()`` or ``reject_auth()``."""

    __slots__ = (  # noqa: RUF023 (field order)
        "user", "method", "password", "public_key", "session_id", "signature")
    user: str
    method: str
    password: bytes | None
    public_key: PublicKey | None
    #: For a key: what it signed over and the signature, so a privileged process that
    #: trusts no one's word (qshd's monitor) can verify it again.
    session_id: bytes
    signature: bytes

    def __init__(self, user: str, method: str, password: bytes | None = None,
                 public_key: PublicKey | None = None, session_id: bytes = b"",
                 signature: bytes = b"") -> None:
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "public_key", public_key)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "signature", signature)

    def __repr__(self) -> str:  # never show a password, even in a debug log
        return f"AuthRequested(user={self.user!r}, method={self.method!r})"


class AuthSucceeded(Record):
    __slots__ = ("user",)
    user: str

    def __init__(self, user: str) -> None:
        object.__setattr__(self, "user", user)


class AuthFailed(Record):
    """Client: the server refused; ``methods`` may still work (another key, a password)."""

    __slots__ = ("methods", "message")  # noqa: RUF023 (field order)
    methods: tuple[str, ...]
    message: str

    def __init__(self, methods: tuple[str, ...], message: str) -> None:
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "message", message)


AuthEvent = AuthRequested | AuthSucceeded | AuthFailed


def _user(name: str) -> str:
    if not 1 <= len(name) <= MAX_USER_NAME:
        raise UsageError("user names are 1 to 32 characters")
    return name


def password_request(user: str, password: bytes) -> bytes:
    if len(password) > MAX_PASSWORD:
        raise UsageError(f"passwords are at most {MAX_PASSWORD} bytes")
    check_user(user)
    return Writer().name(user).name(METHOD_PASSWORD).vbytes(password).getvalue()


def check_user(user: str) -> None:
    """Refuse, at the caller, a name the wire cannot carry (rather than when sending)."""
    _user(user)
    try:
        Writer().name(user)
    except ValueError:  # not printable ASCII (UnicodeEncodeError is a ValueError too)
        raise UsageError(f"user name {user!r} is not printable ASCII") from None


def publickey_request(user: str, key: HostKey, session_id: bytes, rng: Rng) -> bytes:
    blob = key.public.encode()
    signature = key.sign(signed_data(session_id, _user(user), blob), rng)
    return (Writer().name(user).name(METHOD_PUBLICKEY).vbytes(blob).vbytes(signature).getvalue())


class ServerAuth:
    """The server's side: one request at a time, a growing delay, a limit."""

    def __init__(self, session_id: bytes, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 methods: tuple[str, ...] = METHODS) -> None:
        self._session_id = session_id
        self.max_attempts = max_attempts
        #: What a failure tells the client may still work (a server without passwords
        #: must not make qsh prompt for one).
        self.methods = methods
        self.failures = 0
        self.user: str | None = None
        self._pending: AuthRequested | None = None
        #: A failure answer waiting for its delay: (when, message body).
        self.deferred: tuple[float, bytes] | None = None

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def receive(self, msg_type: int, body: memoryview, now: float) -> AuthRequested | None:
        """Parse a request. Returns the event to ask the application about, or None when
        the core already refused it (bad signature) and scheduled the answer."""
        if msg_type != AuthMessage.AUTH_REQUEST:
            raise InvalidRequest(f"client sent auth message 0x{msg_type:02x}")
        if self.authenticated:
            raise InvalidRequest("authentication request after success")
        if self._pending is not None or self.deferred is not None:
            raise InvalidRequest("authentication request before the previous answer")
        r = Reader(body)
        user = r.name(MAX_NAME_LENGTH)
        if len(user) > MAX_USER_NAME:
            raise InvalidInput("user name too long")
        method = r.name()
        if method == METHOD_PASSWORD:
            password = r.vbytes(MAX_PASSWORD)
            r.end()
            self._pending = AuthRequested(user, method, password=password)
            return self._pending
        if method == METHOD_PUBLICKEY:
            blob = r.vbytes(MAX_PUBLIC_BLOB)
            signature = r.vbytes(MAX_SIGNATURE)
            r.end()
            key = PublicKey.decode(blob)
            if not _verifies(key, signed_data(self._session_id, user, blob), signature):
                self._pending = AuthRequested(user, method, public_key=key)
                self.reject(now, "signature does not verify")
                return None
            self._pending = AuthRequested(user, method, public_key=key,
                                          session_id=self._session_id, signature=signature)
            return self._pending
        # An unknown method is a failure, not a protocol error: a newer client may try it.
        r.rest()
        self._pending = AuthRequested(user, method)
        self.reject(now, f"method {method!r} is not supported")
        return None

    def accept(self) -> bytes:
        """The application accepted the pending request: the AUTH_SUCCESS body."""
        if self._pending is None:
            raise UsageError("no authentication request is pending")
        self.user, self._pending = self._pending.user, None
        return b""

    def reject(self, now: float, message: str = "permission denied") -> None:
        """Refuse the pending request; the answer leaves after the growing delay."""
        if self._pending is None:
            raise UsageError("no authentication request is pending")
        self._pending = None
        self.failures += 1
        delay = min(FIRST_FAILURE_DELAY * 2 ** (self.failures - 1), MAX_FAILURE_DELAY)
        body = Writer().names(self.methods).vbytes(cut_utf8(message, MAX_MESSAGE)).getvalue()
        self.deferred = (now + delay, body)

    def due(self, now: float) -> bytes | None:
        """The deferred failure body once its time has come (then the limit applies)."""
        if self.deferred is None or now < self.deferred[0]:
            return None
        body, self.deferred = self.deferred[1], None
        return body

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.max_attempts

    def too_many(self) -> AuthenticationFailure:
        return AuthenticationFailure(f"too many authentication failures ({self.failures})")


def _verifies(key: PublicKey, message: bytes, signature: bytes) -> bool:
    try:
        return key.verify(message, signature)
    except Exception:  # an algorithm this server lacks counts as a bad signature
        return False


class ClientAuth:
    """The client's side: at most one request in flight."""

    def __init__(self) -> None:
        self.user: str | None = None
        self.in_flight: str | None = None
        self.attempted = False

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def holds_channels(self) -> bool:
        """Once a login was tried, channels wait for one to succeed: a server that requires
        login ends the connection on a channel message before it."""
        return self.attempted and not self.authenticated

    def sent(self, user: str) -> None:
        if self.in_flight is not None:
            raise UsageError("an authentication request is already waiting for its answer")
        if self.authenticated:
            raise UsageError("already authenticated")
        self.in_flight = user
        self.attempted = True

    def receive(self, msg_type: int, body: memoryview) -> AuthSucceeded | AuthFailed:
        if self.in_flight is None:
            raise InvalidRequest("authentication answer without a request")
        r = Reader(body)
        if msg_type == AuthMessage.AUTH_SUCCESS:
            r.end()
            self.user, self.in_flight = self.in_flight, None
            return AuthSucceeded(self.user)
        if msg_type == AuthMessage.AUTH_FAILURE:
            methods = r.names()
            message = r.text(MAX_MESSAGE)
            r.end()
            self.in_flight = None
            return AuthFailed(methods, message)
        raise InvalidRequest(f"server sent auth message 0x{msg_type:02x}")
