"""One QSMP connection, sans-IO: handshake, then transport, with the channel mux on top.

The whole protocol runs through five calls, as in h11/aioquic/websockets:

* ``receive_data(data, now)`` -- bytes from the socket (``b""`` for EOF);
* ``data_to_send()`` -- bytes for the socket, as a list for ``writelines``;
* ``events_received()`` -- what happened, as frozen dataclasses;
* ``next_timer()`` / ``handle_timer(now)`` -- deadlines, keep-alives, chaff, rekeys.

Any protocol failure ends the connection the same way: the error code is sent to the peer
(in clear during the handshake, encrypted after it), a :class:`ConnectionTerminated` event
is emitted, and every later call is a no-op. Nothing here raises into the caller for a
peer's misbehaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from common.accounts.keys import HostKey
from common.crypto.rng import SYSTEM_RNG, Rng
from common.errors import (
    AuthenticationFailure,
    ErrorCode,
    InvalidInput,
    InvalidRequest,
    QsmpError,
    RemoteReportedError,
    UsageError,
)
from common.protocol.auth import (
    DEFAULT_MAX_ATTEMPTS,
    FIRST_AUTH_TYPE,
    LAST_AUTH_TYPE,
    METHODS,
    AuthMessage,
    ClientAuth,
    ServerAuth,
    check_user,
    password_request,
    publickey_request,
)
from common.protocol.early_records import _EarlySender
from common.protocol.handoff_handshake import _HandedOver
from common.protocol.handshake import ClientHandshake, Role, ServerHandshake, State
from common.protocol.mux import Mux, OutgoingMessage
from common.protocol.transport import (
    InnerType,
    Shutdown,
    Transport,
    TransportSettings,
    shutdown_reason,
)
from common.wire import (
    MAX_RECORD_BODY,
    Flag,
    FrameBuffer,
    Writer,
    encode_packet,
)

# isort: split
# re-exported: importers predate the split
from common.protocol.connection_events import ConnectionTerminated as ConnectionTerminated
from common.protocol.connection_events import HandshakeComplete as HandshakeComplete
from common.protocol.connection_events import HostKeyUnverified as HostKeyUnverified
from common.protocol.connection_events import not_qsmp as not_qsmp
from common.protocol.preauth_limits import DEFAULT_LOGIN_GRACE as DEFAULT_LOGIN_GRACE
from common.protocol.preauth_limits import max_preauth_record_body as max_preauth_record_body

log = logging.getLogger("qsh.connection")


class Connection:
    """Drive with bytes and time; read events and bytes back."""

    def __init__(self, handshake: ClientHandshake | ServerHandshake | _HandedOver, *,
                 settings: TransportSettings | None = None, rng: Rng = SYSTEM_RNG,
                 window: int | None = None, max_packet: int | None = None,
                 require_auth: bool = False, max_auth_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 login_grace: float = DEFAULT_LOGIN_GRACE,
                 auth_methods: tuple[str, ...] = METHODS) -> None:
        """``require_auth`` (server): no channel until a user is authenticated, at most
        ``max_auth_attempts`` failures, and all of it within ``login_grace`` seconds of
        the connection's start (OpenSSH's LoginGraceTime)."""
        self.handshake = handshake
        self.role = handshake.role
        self.settings = settings or TransportSettings()
        self._rng = rng
        mux_args: dict[str, Any] = {}
        if window is not None:
            mux_args["window"] = window
        if max_packet is not None:
            mux_args["max_packet"] = max_packet
        self.mux = Mux(is_client=self.role is Role.CLIENT, **mux_args)
        self.transport: Transport | None = None
        #: The bound on a received record, once the transport is up (smaller before login).
        self._record_limit = MAX_RECORD_BODY
        self._frames = FrameBuffer()
        self._out: list[bytes | bytearray | memoryview] = []
        self._events: list[object] = []
        self.terminated: ConnectionTerminated | None = None
        self._early: _EarlySender | None = None
        self._now = 0.0
        self._require_auth = require_auth and handshake.role is Role.SERVER
        self._max_auth_attempts = max_auth_attempts
        self._login_deadline: float | None = None
        self._login_grace = login_grace
        self._server_auth: ServerAuth | None = None
        self._client_auth = ClientAuth()
        self._auth_methods = auth_methods
        self._interactive = False
        #: Client: builds the request body once the session ID exists.
        self._auth_request: Callable[[bytes], bytes] | None = None

    # ------------------------------------------------------------------ driving

    def start(self, now: float) -> None:
        self._now = now
        if self._require_auth:
            self._login_deadline = now + self._login_grace
        self._guard(lambda: self.handshake.start(now))
        self._out.extend(self.handshake.take_outgoing())

    @property
    def established(self) -> bool:
        return self.transport is not None

    @property
    def closed(self) -> bool:
        return self.terminated is not None

    @property
    def pre_auth(self) -> bool:
        """True until the peer is admitted: during the handshake and, on a server that
        requires login, until a login succeeded. The I/O layer keeps such a connection
        on a small memory budget."""
        if self.transport is None:
            return True
        return self._server_auth is not None and not self._server_auth.authenticated

    def note_time(self, now: float) -> None:
        """The time, before the application's writes are taken: the keystroke clock
        starts at the first keystroke and echo replies are timed from it."""
        self._now = now
        if self.transport is not None:
            self.transport.note_time(now)

    def set_interactive(self, on: bool) -> None:
        """Client: a PTY session is in use (keystroke obfuscation runs only then)."""
        self._interactive = on
        if self.transport is not None:
            self.transport.set_interactive(on)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        if self.terminated is not None:
            return
        self._now = now
        if not data:
            self._terminate(ErrorCode.CHANNEL_DOWN, "connection closed by peer", by_peer=True,
                            notify=False)
            return
        if self.transport is not None:
            self.transport.note_time(now)
        self._frames.feed(data)
        try:
            self._guard(self._process)
        finally:
            # The input is borrowed (aio reuses its receive buffer): keep what is unread.
            self._frames.compact()

    def _process(self) -> None:
        while self.terminated is None:
            limit = self._record_limit if self.transport else self.handshake.max_body()
            try:
                packet = self._frames.next_packet(limit)
            except InvalidInput:
                if self.handshake.state is State.AWAIT_CONNECT_RESPONSE:
                    raise InvalidInput(not_qsmp(self._frames.unread())) from None
                raise
            if packet is None:
                return
            header, header_bytes, body = packet
            if header.flag in _PLAINTEXT_ENDINGS:
                _plaintext_ending(header.flag, body, established=self.transport is not None)
            if self.transport is None:
                self.handshake.receive(header, header_bytes, body, self._now)
                self._after_handshake_step()
            else:
                message = self.transport.open(header, header_bytes, body)
                if message is not None:
                    self._dispatch(*message)

    def _dispatch(self, msg_type: int, body: memoryview) -> None:
        """An upper-layer message: authentication (0x40-0x4F) or the channel mux."""
        if FIRST_AUTH_TYPE <= msg_type <= LAST_AUTH_TYPE:
            if self.role is Role.CLIENT:
                self._events.append(self._client_auth.receive(msg_type, body))
            elif self._server_auth is None:
                raise InvalidRequest("this server does not use authentication")
            elif (event := self._server_auth.receive(msg_type, body, self._now)) is not None:
                self._events.append(event)
            return
        if self._server_auth is not None and not self._server_auth.authenticated:
            raise InvalidRequest("channel message before authentication")
        self._events.extend(self.mux.handle_message(msg_type, body))

    def _after_handshake_step(self) -> None:
        hs = self.handshake
        self._out.extend(hs.take_outgoing())
        if isinstance(hs, ClientHandshake) and hs.state is State.AWAIT_HOST_KEY_DECISION:
            assert hs.server_key is not None
            self._events.append(HostKeyUnverified(hs.server_key))
        if hs.result is not None and self.transport is None:
            result = hs.result
            self.transport = Transport(result, self.role, self.settings, self._rng, self._now)
            if isinstance(hs, ClientHandshake):
                self.transport.obscure_offer = hs.offer.obscure
                self.transport.set_interactive(self._interactive)
            if self._require_auth:
                self._server_auth = ServerAuth(result.session_id,
                                               max_attempts=self._max_auth_attempts,
                                               methods=self._auth_methods)
                self._record_limit = max_preauth_record_body(result.suite)
            self._events.append(HandshakeComplete(result.suite, result.session_id,
                                                  result.host_key))

    # client TOFU decision ------------------------------------------------

    def accept_host_key(self) -> None:
        hs = self.handshake
        if not isinstance(hs, ClientHandshake):
            raise UsageError("only a client decides on host keys")
        if self.terminated is not None:
            return  # the decision came after the end (both events arrived in one batch)
        self._guard(lambda: hs.accept_host_key(self._now))
        self._guard(self._after_handshake_step)

    def reject_host_key(self) -> None:
        hs = self.handshake
        if not isinstance(hs, ClientHandshake):
            raise UsageError("only a client decides on host keys")
        if self.terminated is not None:
            return
        self._guard(hs.reject_host_key)

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> list[bytes | bytearray | memoryview]:
        self._flush_mux()
        self._collect_transport()
        out, self._out = self._out, []
        return out

    def _flush_mux(self) -> None:
        """Send what the layers above have queued: an authentication request first, then
        channel traffic (held back while the client's authentication is unanswered)."""
        if self.terminated is not None or not self._can_send_application():
            return
        messages: list[OutgoingMessage] = []
        if self._auth_request is not None:
            body = self._auth_request(self.handshake.session_id)
            self._auth_request = None
            messages.append(OutgoingMessage(AuthMessage.AUTH_REQUEST, body))
        if not self._client_auth.holds_channels:
            messages.extend(self.mux.take_outgoing())
        if not messages:
            return
        transport = self.transport
        if transport is not None:
            try:
                for msg in messages:
                    transport.send(msg.msg_type, msg.head, msg.payload)
            except QsmpError as exc:
                self._fail(exc)
            self._collect_transport()
            return
        # Client, after its establish request and before the server's response: records
        # may follow at once under the final c2s key (saves a round trip).
        early = self._early_sender()
        for msg in messages:
            self._out.append(early.seal(msg.msg_type, msg.head, msg.payload))

    def _early_sender(self) -> _EarlySender:
        if self._early is None:
            hs = self.handshake
            assert isinstance(hs, ClientHandshake) and hs.suite is not None
            self._early = _EarlySender(hs, self._rng, hs.suite.padding_max)
        return self._early

    def _can_send_application(self) -> bool:
        if self.transport is not None:
            return True
        hs = self.handshake
        return isinstance(hs, ClientHandshake) and hs.can_send_application_data

    def events_received(self) -> list[object]:
        self._flush_mux()
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        if self.terminated is not None:
            return None
        candidates = [self._login_deadline]
        if self.transport is None:
            candidates.append(self.handshake.deadline)
        else:
            candidates.append(self.transport.next_timer())
            if self._server_auth is not None and self._server_auth.deferred is not None:
                candidates.append(self._server_auth.deferred[0])
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.terminated is not None:
            return
        self._now = now
        if self.transport is None:
            self._guard(lambda: self.handshake.check_deadline(now))
        else:
            transport = self.transport
            self._guard(lambda: transport.handle_timer(now))
            self._guard(self._answer_deferred_auth)
            self._collect_transport()
        if (self._login_deadline is not None and now >= self._login_deadline
                and self.terminated is None):
            self._fail(AuthenticationFailure("login grace time exceeded"))

    def _answer_deferred_auth(self) -> None:
        auth, transport = self._server_auth, self.transport
        if auth is None or transport is None:
            return
        body = auth.due(self._now)
        if body is None:
            return
        transport.send(AuthMessage.AUTH_FAILURE, body)
        if auth.exhausted:
            raise auth.too_many()

    # ------------------------------------------------------------------ authentication

    def authenticate_password(self, user: str, password: bytes) -> None:
        """Client: log in with a password; the answer is an AuthSucceeded/AuthFailed event.
        May be called before the handshake ends: it leaves right behind the establish
        request, and channel traffic waits for the answer."""
        password_request(user, password)  # validate now, at the caller
        self._client_auth.sent(user)
        self._auth_request = lambda _session_id: password_request(user, password)

    def authenticate_publickey(self, user: str, key: HostKey) -> None:
        """Client: log in with a user key; it signs the session ID, so it waits for it."""
        check_user(user)
        self._client_auth.sent(user)
        self._auth_request = lambda session_id: publickey_request(user, key, session_id,
                                                                  self._rng)

    @property
    def authenticated_user(self) -> str | None:
        if self.role is Role.CLIENT:
            return self._client_auth.user
        return self._server_auth.user if self._server_auth is not None else None

    def accept_auth(self) -> None:
        """Server: the pending AuthRequested is good."""
        auth, transport = self._server_auth, self.transport
        if auth is None or transport is None:
            raise UsageError("no authentication is in progress")
        if self.terminated is not None:
            return
        transport.send(AuthMessage.AUTH_SUCCESS, auth.accept())
        self._login_deadline = None
        self._record_limit = MAX_RECORD_BODY
        self._collect_transport()

    def reject_auth(self, now: float, message: str = "permission denied") -> None:
        """Server: refuse the pending AuthRequested; the answer leaves after the growing
        delay (see next_timer), and the last allowed failure ends the connection."""
        auth = self._server_auth
        if auth is None:
            raise UsageError("no authentication is in progress")
        if self.terminated is not None:
            return
        self._now = max(self._now, now)
        auth.reject(now, message)

    def _collect_transport(self) -> None:
        if self.transport is not None and self.transport.outgoing:
            self._out.extend(self.transport.outgoing)
            self.transport.outgoing = []

    # ------------------------------------------------------------------ closing

    def close(self, reason: str = "") -> None:
        """A clean shutdown: tell the peer, then stop."""
        if self.terminated is not None:
            return
        self._flush_mux()
        if self.transport is not None:
            self.transport.shutdown(reason)
            self._collect_transport()
        elif self._can_send_application():
            # The server may already be established: say goodbye under the c2s key, so it
            # sees an authenticated shutdown rather than a bare plaintext close.
            self._out.append(self._early_sender().seal(
                InnerType.SHUTDOWN, Writer().vbytes(shutdown_reason(reason)).getvalue()))
        else:
            self._out.append(encode_packet(Flag.CONNECTION_TERMINATED, self.handshake.tx_seq,
                                           b""))
        self._terminate(ErrorCode.NONE, reason or "closed", by_peer=False, notify=False)

    def request_rekey(self) -> None:
        if self.transport is None:
            raise UsageError("rekey before the handshake finished")
        if self.terminated is not None:
            return
        self.transport.request_rekey()
        self._collect_transport()

    # ------------------------------------------------------------------ handoff

    def check_handoff(self, *, accepting: bool = False) -> None:
        """Raise :class:`UsageError` saying why :meth:`export_handoff` would refuse now.
        With ``accepting``, as if :meth:`accept_auth` were called first: the I/O layer
        asks this before it accepts a login it means to hand over, so that a refusal
        can still be a refused login rather than an accepted one on a dead connection."""
        if self.role is not Role.SERVER:
            raise UsageError("only a server connection is handed over")
        if self.terminated is not None:
            raise UsageError("the connection is over")
        transport, auth = self.transport, self._server_auth
        if transport is None:
            raise UsageError("the handshake has not finished")
        if auth is None:
            raise UsageError("this connection has no login to hand over")
        if accepting:
            if auth.authenticated:
                raise UsageError("the user is already authenticated")
        elif not auth.authenticated:
            raise UsageError("the user is not authenticated")
        if transport.rekey_in_progress:
            raise UsageError("a rekey is in progress")
        if not self.mux.idle:
            raise UsageError("channels or channel messages exist")
        if not accepting and (self._out or transport.outgoing):
            raise UsageError("output not taken yet (call data_to_send first)")

    def export_handoff(self, now: float | None = None) -> bytes:
        """Server, right after :meth:`accept_auth` and :meth:`data_to_send`: the state
        another process gives :meth:`from_handoff` to carry this connection on over the
        same socket (see :mod:`common.protocol.handoff`). Ages are taken at ``now`` (by default
        the latest time this connection was given).

        This connection is spent afterwards: its keys are wiped and every later call is
        a no-op, without a :class:`ConnectionTerminated` event (nothing ended; the
        connection moved). Two processes sealing under one key and sequence number
        would reuse AEAD nonces, so there is no way back. Refused (:class:`UsageError`)
        unless the login succeeded and everything is quiet: no rekey in either
        direction, no channel, nothing queued for the socket."""
        # Loaded here, not at import: only qshd hands connections over (common.aio.server
        # loads the module before a process sandboxes itself), and a client saves ~3 ms.
        from common.protocol.handoff import HandoffState
        from common.protocol.handoff import encode as encode_handoff

        self.check_handoff()
        transport, auth = self.transport, self._server_auth
        assert transport is not None and auth is not None and auth.user is not None
        at = self._now if now is None else now
        state = HandoffState(transport=transport.export_state(at), user=auth.user,
                             pending_input=self._frames.unread())
        data = encode_handoff(state)
        transport.closed = True
        transport.sealer.wipe()
        transport.opener.wipe()
        self._frames = FrameBuffer()
        self._login_deadline = None
        self.terminated = ConnectionTerminated(ErrorCode.NONE, "handed over to another process",
                                               by_peer=False)
        return data

    @classmethod
    def from_handoff(cls, state: bytes | bytearray | memoryview, *, now: float,
                     settings: TransportSettings | None = None, rng: Rng = SYSTEM_RNG,
                     window: int | None = None, max_packet: int | None = None,
                     user: str | None = None) -> Connection:
        """The server connection :meth:`export_handoff` described, established and logged
        in, carrying on at ``now`` (this process's clock): feed it the same socket's
        bytes. Channels, keep-alives, chaff and rekeys in both directions work as before;
        ``settings``, ``window`` and ``max_packet`` are this process's.

        The state comes from a process that parsed the network before login, so it is
        checked like wire input (:class:`~common.protocol.handoff.HandoffError` on anything
        malformed), and ``user``, when given, must be the user in it: the privileged side
        that approved the login passes the name it approved, so a subverted pre-auth
        process cannot hand over a login as somebody else."""
        from common.protocol.handoff import HandoffError
        from common.protocol.handoff import decode as decode_handoff

        decoded = decode_handoff(state)
        if user is not None and decoded.user != user:
            raise HandoffError("the handed-over login is not the approved user")
        ts = decoded.transport
        conn = cls(_HandedOver(ts.session_id, rng), settings=settings, rng=rng, window=window,
                   max_packet=max_packet)
        conn._now = now
        conn.transport = Transport.restore(ts, Role.SERVER, conn.settings, rng, now)
        auth = ServerAuth(ts.session_id, methods=conn._auth_methods)
        auth.user = decoded.user
        conn._server_auth = auth
        if decoded.pending_input:
            conn._frames.feed(decoded.pending_input)
            conn._frames.compact()  # keep our own copy; nothing in it is whole yet
        return conn

    # ------------------------------------------------------------------ failure

    def _guard(self, step: Any) -> None:
        """Run one step; turn any protocol failure into an error packet and teardown."""
        try:
            step()
        except Shutdown as exc:
            self._collect_transport()
            self._terminate(exc.code, exc.reason or "closed by peer", by_peer=True,
                            notify=False)
        except RemoteReportedError as exc:
            self._terminate(exc.code, exc.message, by_peer=True, notify=False)
        except QsmpError as exc:
            self._fail(exc)
        else:
            self._collect_transport()

    def _fail(self, exc: QsmpError) -> None:
        log.debug("connection failed: %s (code 0x%02x)", exc.message, exc.code)
        if self.transport is None:
            self.handshake.fail()
        self._terminate(exc.code, exc.message, by_peer=False, notify=True)

    def _terminate(self, code: ErrorCode, reason: str, *, by_peer: bool, notify: bool) -> None:
        if self.terminated is not None:
            return
        if notify and code != ErrorCode.NONE:
            if self.transport is not None:
                self._collect_transport()
                self.transport.send_error(code, reason)
                self._collect_transport()
            else:
                self._out.append(encode_packet(Flag.ERROR_CONDITION, self.handshake.tx_seq,
                                               bytes([code])))
        if self.transport is not None:
            self.transport.closed = True  # nothing is sealed after the end
        self.terminated = ConnectionTerminated(code, reason, by_peer)
        self._events.append(self.terminated)


#: A peer that fails before it has its keys (or before it knows ours are in place: the
#: server is established one flight before the client) can only say so in clear. These are
#: honoured in every state: they are no more forgeable than the TCP reset they precede.
_PLAINTEXT_ENDINGS = frozenset((Flag.ERROR_CONDITION, Flag.CONNECTION_TERMINATED))


def _plaintext_ending(flag: int, body: memoryview, *, established: bool) -> None:
    if flag == Flag.CONNECTION_TERMINATED:
        if established:
            # Once keys are up, a clean close is an encrypted SHUTDOWN; a bare one could be
            # anyone's, so it ends the session as a dropped channel, not a finished one.
            raise RemoteReportedError(ErrorCode.CHANNEL_DOWN, "unauthenticated close")
        raise Shutdown(ErrorCode.NONE, "closed by peer")
    code = ErrorCode.from_wire(body[0]) if len(body) == 1 else ErrorCode.INVALID_INPUT
    if code == ErrorCode.NONE:
        code = ErrorCode.INVALID_INPUT  # an "error" without one is itself malformed
    raise RemoteReportedError(code)


__all__ = [
    "Connection",
    "ConnectionTerminated",
    "HandshakeComplete",
    "HostKeyUnverified",
]
