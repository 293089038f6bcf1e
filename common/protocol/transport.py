"""The established channel: encrypted records with an encrypted inner type.

Every record after the handshake has the outer flag ENCRYPTED_MESSAGE, so data, chaff,
keep-alives, rekeys and shutdowns look alike on the wire (hkexsh sent its chaff marker in
clear, which defeated the chaff). The plaintext of a record is::

    inner_type u8 | padding_length u16 | body | padding_length zero bytes

Inner types 0x01-0x1F belong to this module; 0x20 and up are handed to the layer above
(channel multiplexing, authentication).

Rekey (secure-channels seed, QSMP's "each direction keyed by its transmitter"): when a
direction's byte or time budget runs out, its *sender* asks the receiver for a fresh KEM
public key, encapsulates to it, sends the ciphertext as the last record under the old key
and switches; the receiver decapsulates and switches after that record. Sequence numbers
restart at zero under the new key; the old key and chain value are zeroed, and the KEM
secret once the new keys are derived.

A requested rekey has a hard limit (the budget protects the *sender's* confidentiality, so
the sender enforces it): a legitimate peer answers on reading the request, within one round
trip, and in one round trip we can send no more than the flow-control windows it granted
(8 MiB a channel by default). So after the request the old key carries at most
max(rekey_bytes, REKEY_GRACE_BYTES) more application bytes; the message that would pass
that ends the connection with KEY_EXPIRED. Time is bounded without cutting anyone: once the
request is REKEY_GRACE_TIME old, application messages wait for the new key (OpenSSH holds
all data during a key exchange; we hold only once the peer is late), so a peer suspended
with Ctrl-Z finds its session intact. What waits counts against the same byte limit, which
also bounds the memory. Control records (keep-alive, chaff, the rekey itself) still use
the old key: they carry no user data. The receiving side sets no limit on a peer that never
rekeys its own direction: that budget guards the peer's confidentiality, not ours.
"""

from __future__ import annotations

from enum import IntEnum

from common.crypto import registry
from common.crypto.rng import Rng
from common.crypto.secret import scrub
from common.crypto.suites import KemPrivateKey
from common.errors import (
    BadKeepAlive,
    ErrorCode,
    InvalidInput,
    InvalidRequest,
    KeepAliveExpired,
    KeyExpired,
    RemoteReportedError,
    UsageError,
)
from common.protocol.handshake import Established, Role, read_kem_ciphertext
from common.protocol.negotiation import ObscurePolicy, Suite, check_obscure_answer
from common.protocol.obscure import EchoMimic, Held, KeystrokeClock, class_padding
from common.protocol.record import RecordOpener, RecordSealer
from common.protocol.schedule import LABEL_C2S, LABEL_S2C, DirectionKeys, derive_rekey, wipe
from common.wire import MAX_RECORD_PAYLOAD, Flag, Header, Reader, Record, Writer, cut_utf8

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing
if TYPE_CHECKING:
    # qshd's alone (loaded by common.aio.server): a client never hands a connection over.
    from common.protocol.handoff import TransportState

INNER_HEADER_SIZE = 3
MAX_REASON = 1024
#: A rekey public key travels in pieces of at most this size, so KEMs whose keys exceed one
#: record (Classic McEliece 8192128: 1.36 MB) can rekey too.
REKEY_FRAGMENT = 512 * 1024
#: Application bytes the old key may still carry once a rekey is requested, at least (see
#: the module docstring): 32 full default windows in flight at the moment of the request.
REKEY_GRACE_BYTES = 256 * 1024 * 1024
#: Seconds after the request from which application messages wait for the new key.
REKEY_GRACE_TIME = 60.0


def shutdown_reason(text: str) -> bytes:
    """A reason cut to MAX_REASON *bytes* on a character boundary (the receiver's bound)."""
    return cut_utf8(text, MAX_REASON)


class InnerType(IntEnum):
    CHAFF = 0x01
    KEEPALIVE_REQUEST = 0x02
    KEEPALIVE_RESPONSE = 0x03
    REKEY_REQUEST = 0x04
    REKEY_OFFER = 0x05
    REKEY = 0x06
    SHUTDOWN = 0x07
    ERROR = 0x08
    #: Server to client, once, first: the agreed keystroke obfuscation (PROTOCOL.md 7.8).
    OBSCURE = 0x09
    #: Client to server: a fake keystroke on the clock; answered with echo-shaped chaff.
    FAKE_KEYSTROKE = 0x0A


#: First inner type that belongs to the layers above the transport.
FIRST_UPPER_TYPE = 0x20
#: Channel data and extended data (mux.MuxMessage): what a keystroke and its echo are.
DATA_TYPES = (0x24, 0x25)


class TransportSettings(Record):
    __slots__ = (  # noqa: RUF023 (field order)
        "keepalive_interval", "keepalive_count_max", "rekey_bytes", "rekey_interval",
        "rekey_grace_bytes", "rekey_grace_time")
    #: Seconds between keep-alive requests we send; None = only answer the peer's.
    keepalive_interval: float | None
    #: Intervals a request may stay unanswered before the peer is given up (ssh's
    #: ServerAliveCountMax); 1: at the first interval that finds it unanswered.
    keepalive_count_max: int
    #: Rekey a direction after this many bytes sent under one key...
    rekey_bytes: int
    #: ...or this many seconds, whichever comes first.
    rekey_interval: float
    #: Once requested, the old key carries at most max(rekey_bytes, this) more bytes.
    rekey_grace_bytes: int
    #: Once requested this long ago, application messages wait for the new key.
    rekey_grace_time: float

    def __init__(self, keepalive_interval: float | None = None, keepalive_count_max: int = 1,
                 rekey_bytes: int = 1 << 30, rekey_interval: float = 3600.0,
                 rekey_grace_bytes: int = REKEY_GRACE_BYTES,
                 rekey_grace_time: float = REKEY_GRACE_TIME) -> None:
        object.__setattr__(self, "keepalive_interval", keepalive_interval)
        object.__setattr__(self, "keepalive_count_max", keepalive_count_max)
        object.__setattr__(self, "rekey_bytes", rekey_bytes)
        object.__setattr__(self, "rekey_interval", rekey_interval)
        object.__setattr__(self, "rekey_grace_bytes", rekey_grace_bytes)
        object.__setattr__(self, "rekey_grace_time", rekey_grace_time)


class Shutdown(Exception):
    """The peer closed the session cleanly (or reported an error, see ``code``)."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Randomness:
    """Small random numbers (padding, chaff timing) from a pooled draw of the injected rng,
    so a data record costs no extra system call."""

    __slots__ = ("_pool", "_pos", "_rng")

    def __init__(self, rng: Rng) -> None:
        self._rng = rng
        self._pool = b""
        self._pos = 0

    def below(self, bound: int) -> int:
        """Uniform-enough integer in [0, bound) for traffic shaping (not for keys)."""
        if bound <= 1:
            return 0
        if self._pos + 4 > len(self._pool):
            self._pool = self._rng(512)
            self._pos = 0
        value = int.from_bytes(self._pool[self._pos : self._pos + 4], "big")
        self._pos += 4
        return value % bound

    def between(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)


def seal_message(sealer: RecordSealer, random: Randomness, padding_max: int,
                 inner_type: int, head: bytes, payload: bytes | memoryview,
                 pad: int | None = None) -> bytearray:
    """One message into one record, with one copy of the payload (into the record).
    ``pad``: exact padding (a size class); None draws it up to ``padding_max``."""
    if len(head) + len(payload) > MAX_RECORD_PAYLOAD:
        raise InvalidInput("message larger than a record")
    if pad is None:
        pad = random.below(padding_max + 1) if padding_max else 0
    return sealer.seal_parts(Flag.ENCRYPTED_MESSAGE,
                             (bytes((inner_type, pad >> 8, pad & 0xFF)), head, payload, bytes(pad)))


class Transport:
    """Record protection and the channel-level control messages, after the handshake."""

    def __init__(self, established: Established, role: Role, settings: TransportSettings,
                 rng: Rng, now: float) -> None:
        self._setup(established.suite, established.session_id, established.sealer,
                    established.opener, established.tx_chain, established.rx_chain,
                    role, settings, rng, now)
        if role is Role.SERVER and self.suite.obscure is not None:
            # Tells the client the offer was taken (a server without it sends nothing).
            self.send(InnerType.OBSCURE, self.suite.obscure.encoded())

    def _setup(self, suite: Suite, session_id: bytes, sealer: RecordSealer,
               opener: RecordOpener, tx_chain: bytearray, rx_chain: bytearray, role: Role,
               settings: TransportSettings, rng: Rng, now: float) -> None:
        self.suite = suite
        self.session_id = session_id
        self._role = role
        self._settings = settings
        self._rng = rng
        self._random = Randomness(rng)
        self._kem = registry.kem(self.suite.kem)
        self._aead = registry.aead(self.suite.aead)
        self.sealer: RecordSealer = sealer
        self.opener: RecordOpener = opener
        self._tx_label = LABEL_C2S if role is Role.CLIENT else LABEL_S2C
        self._rx_label = LABEL_S2C if role is Role.CLIENT else LABEL_C2S
        self._tx_chain = tx_chain
        self._rx_chain = rx_chain
        self._now = now
        self._tx_key_since = now
        self._rekey_requested = False
        self._requested_at = now
        #: Application bytes sealed under the old key since the request, or waiting.
        self._after_request = 0
        self._waiting: list[tuple[int, bytes, bytes]] = []
        self._budget_used = 0
        self._offer_parts = bytearray()
        self._rekey_offer: KemPrivateKey | None = None
        self.rekeys_sent = 0
        self.rekeys_received = 0
        self._padding_max = self.suite.padding_max
        self._keepalive_due = (
            now + settings.keepalive_interval if settings.keepalive_interval else None
        )
        self._keepalive_token: bytes | None = None
        self._keepalive_missed = 0
        chaff = self.suite.chaff
        obscure = self.suite.obscure
        # With keystroke obfuscation the server's chaff is its echo-shaped replies, and the
        # client's the clock's fakes once interactive (see handle_timer).
        self._chaff_due = (now + self._chaff_delay()
                           if chaff.enabled and obscure is None else None)
        #: Client: what we offered, to check the server's OBSCURE record against.
        self.obscure_offer: ObscurePolicy | None = None
        self._interactive = False
        self._clock: KeystrokeClock | None = None
        self._mimic: EchoMimic | None = None
        self._classes: tuple[int, ...] = ()
        self._pad_limit = self._padding_max
        if obscure is not None and role is Role.SERVER:
            self._use_classes(obscure)
            self._mimic = EchoMimic(self._random.below)
        self.outgoing: list[bytes | bytearray] = []
        self.closed = False

    # ------------------------------------------------------------------ handoff

    @property
    def rekey_in_progress(self) -> bool:
        """A rekey of either direction has started and not finished: ours is requested
        (or its offer is arriving), or we made an offer for the peer's and wait for it."""
        return self._rekey_requested or bool(self._offer_parts) or self._rekey_offer is not None

    def export_state(self, now: float) -> TransportState:
        """Where this transport stands, for :meth:`restore` in another process. Times
        become delays and ages relative to ``now``. The caller makes sure no rekey is in
        progress (a half-done KEM exchange is not carried) and stops using this object."""
        if self.rekey_in_progress:
            raise UsageError("a rekey is in progress")
        from common.protocol.handoff import DirectionState, TransportState

        tx_key, tx_iv = self.sealer.key_material()
        rx_key, rx_iv = self.opener.key_material()
        return TransportState(
            suite=self.suite, session_id=self.session_id,
            # bytes copies for the handoff message (this process stops using the keys).
            tx=DirectionState(bytes(tx_key), tx_iv, bytes(self._tx_chain),
                              self.sealer.sequence, self.sealer.bytes_sealed),
            rx=DirectionState(bytes(rx_key), rx_iv, bytes(self._rx_chain),
                              self.opener.sequence, self.opener.bytes_opened),
            tx_key_age=max(now - self._tx_key_since, 0.0),
            budget_used=self._budget_used,
            rekeys_sent=self.rekeys_sent, rekeys_received=self.rekeys_received,
            keepalive_due_in=(None if self._keepalive_due is None
                              else max(self._keepalive_due - now, 0.0)),
            keepalive_token=self._keepalive_token,
            chaff_due_in=None if self._chaff_due is None else max(self._chaff_due - now, 0.0),
        )

    @classmethod
    def restore(cls, state: TransportState, role: Role, settings: TransportSettings,
                rng: Rng, now: float) -> Transport:
        """The transport :meth:`export_state` described, carrying on at ``now`` on this
        process's clock. ``settings`` are this process's: a keep-alive interval shorter
        than the carried delay brings the next request forward, none stops sending them
        (an outstanding request is still matched with its answer)."""
        aead = registry.aead(state.suite.aead)
        tx = DirectionKeys.of(state.tx.key, state.tx.iv, state.tx.chain)
        rx = DirectionKeys.of(state.rx.key, state.rx.iv, state.rx.chain)
        sealer = RecordSealer(aead, tx, state.tx.sequence)
        sealer.bytes_sealed = state.tx.byte_count
        opener = RecordOpener(aead, rx, state.rx.sequence)
        opener.bytes_opened = state.rx.byte_count
        transport = cls.__new__(cls)
        transport._setup(state.suite, state.session_id, sealer, opener, tx.chain,
                         rx.chain, role, settings, rng, now)
        transport._tx_key_since = now - state.tx_key_age
        transport._budget_used = state.budget_used
        transport.rekeys_sent = state.rekeys_sent
        transport.rekeys_received = state.rekeys_received
        interval = settings.keepalive_interval
        if not interval:
            transport._keepalive_due = None
        elif state.keepalive_due_in is not None:
            transport._keepalive_due = now + min(state.keepalive_due_in, interval)
        transport._keepalive_token = state.keepalive_token
        if state.chaff_due_in is not None and transport._chaff_due is not None:
            transport._chaff_due = now + state.chaff_due_in
        return transport

    # ------------------------------------------------------------------ sending

    def _use_classes(self, policy: ObscurePolicy) -> None:
        self._classes = policy.size_classes
        self._pad_limit = max(self._padding_max, policy.size_classes[-1])

    def set_interactive(self, on: bool) -> None:
        """Client: an interactive (PTY) session is in use, or no longer: the keystroke
        clock runs only then (bulk and non-PTY sessions never wait)."""
        self._interactive = on
        if self._clock is not None:
            self._clock.set_interactive(on, self._now)

    @property
    def keystroke_clock(self) -> KeystrokeClock | None:
        return self._clock

    @property
    def echo_mimic(self) -> EchoMimic | None:
        return self._mimic

    def send(self, inner_type: int, head: bytes, payload: bytes | memoryview = b"") -> None:
        if self.closed:
            return
        clock = self._clock
        if clock is not None and inner_type >= FIRST_UPPER_TYPE:
            size = INNER_HEADER_SIZE + len(head) + len(payload)
            if inner_type in DATA_TYPES and clock.holds(size):
                if clock.hold(Held(inner_type, head, bytes(payload)), self._now):
                    self._tick(self._now)
                return
            for held in clock.release_all():  # nothing overtakes what waits for a tick
                self._emit(held.inner_type, held.head, held.payload)
        self._emit(inner_type, head, payload)

    def _tick(self, now: float) -> None:
        assert self._clock is not None
        tick = self._clock.tick(now)
        for held in tick.messages:
            self._emit(held.inner_type, held.head, held.payload)
        if tick.fake:
            self._emit(InnerType.FAKE_KEYSTROKE, b"")

    def _emit(self, inner_type: int, head: bytes, payload: bytes | memoryview = b"") -> None:
        if self.closed:
            return
        if inner_type >= FIRST_UPPER_TYPE and self._rekey_requested and self._rekey_limit(
                inner_type, head, payload):
            return
        pad = None
        if self._classes:
            pad = class_padding(INNER_HEADER_SIZE + len(head) + len(payload), self._classes)
            if (pad is not None and self._mimic is not None and inner_type in DATA_TYPES):
                self._mimic.sent_small(self._now)
        self.outgoing.append(seal_message(self.sealer, self._random, self._padding_max,
                                          inner_type, head, payload, pad))
        if inner_type >= FIRST_UPPER_TYPE:
            # Only application bytes spend the budget: rekey offers of a big KEM (McEliece:
            # 1.36 MB) would otherwise exhaust it themselves and rekey forever.
            self._budget_used += len(head) + len(payload)
            if not self._rekey_requested and self._budget_used >= self._settings.rekey_bytes:
                self.request_rekey()

    def _rekey_limit(self, inner_type: int, head: bytes, payload: bytes | memoryview) -> bool:
        """Our rekey is requested and unanswered: raise KeyExpired past the byte limit, or
        keep the message for the new key (True) once the request is overdue."""
        settings = self._settings
        self._after_request += len(head) + len(payload)
        if self._after_request > max(settings.rekey_bytes, settings.rekey_grace_bytes):
            self._waiting.clear()
            raise KeyExpired("the peer did not answer a rekey request: old key's limit "
                             "reached")
        if self._waiting or self._now >= self._requested_at + settings.rekey_grace_time:
            self._waiting.append((inner_type, head, bytes(payload)))
            return True
        return False

    def request_rekey(self) -> None:
        """Start a rekey of our transmit direction (also used by tests and by timers)."""
        if self._rekey_requested or self.closed:
            return
        self._rekey_requested = True
        self._requested_at = self._now
        self._after_request = 0
        self.send(InnerType.REKEY_REQUEST, b"")

    def shutdown(self, reason: str = "") -> None:
        if not self.closed:
            self.send(InnerType.SHUTDOWN, Writer().vbytes(shutdown_reason(reason)).getvalue())
            self.closed = True

    def send_error(self, code: ErrorCode, reason: str = "") -> None:
        if not self.closed:
            self.send(InnerType.ERROR, Writer().u8(code).vbytes(shutdown_reason(reason)).getvalue())
            self.closed = True

    # ------------------------------------------------------------------ receiving

    def open(self, header: Header, header_bytes: memoryview, body: memoryview
             ) -> tuple[int, memoryview] | None:
        """Decrypt one record. Returns an upper-layer message, or None when the record was
        transport business (chaff, keep-alive, rekey). Raises Shutdown on a clean close."""
        if header.flag != Flag.ENCRYPTED_MESSAGE:
            raise InvalidRequest(f"unexpected packet flag 0x{header.flag:02x} in session")
        plaintext = self.opener.open_in_place(header, header_bytes, body)
        if len(plaintext) < INNER_HEADER_SIZE:
            raise InvalidInput("record too short for its inner header")
        inner_type = plaintext[0]
        # A buffer of its own (never reused): the mux passes channel data up as views of
        # it, without a copy.
        pad = (plaintext[1] << 8) | plaintext[2]
        end = len(plaintext) - pad
        if pad > self._pad_limit or end < INNER_HEADER_SIZE:
            raise InvalidInput("record padding exceeds the agreed maximum")
        message = memoryview(plaintext)[INNER_HEADER_SIZE:end]
        if inner_type >= FIRST_UPPER_TYPE:
            if (self._mimic is not None and inner_type in DATA_TYPES
                    and len(plaintext) <= self._classes[-1]):
                self._mimic.received(self._now, real=True)  # a keystroke: owed an echo
            return inner_type, message
        self._control(inner_type, message)
        return None

    def _control(self, inner_type: int, body: memoryview) -> None:
        if inner_type == InnerType.CHAFF:
            return
        r = Reader(body)
        if inner_type == InnerType.FAKE_KEYSTROKE:
            r.end()
            if self._mimic is None:
                raise InvalidRequest("fake keystroke without keystroke obfuscation")
            self._mimic.received(self._now, real=False)
            return
        if inner_type == InnerType.OBSCURE:
            policy = ObscurePolicy.decode(r)
            r.end()
            if self._role is not Role.CLIENT or self._clock is not None:
                raise InvalidRequest("unexpected keystroke obfuscation record")
            check_obscure_answer(self.obscure_offer, policy)
            self._use_classes(policy)
            self._clock = KeystrokeClock(policy, self._random.between,
                                         chaff=self.suite.chaff.enabled)
            self._clock.set_interactive(self._interactive, self._now)
            return
        if inner_type == InnerType.KEEPALIVE_REQUEST:
            token = r.fixed(8)
            r.end()
            self.send(InnerType.KEEPALIVE_RESPONSE, token)
        elif inner_type == InnerType.KEEPALIVE_RESPONSE:
            token = r.fixed(8)
            r.end()
            if self._keepalive_token is None or token != self._keepalive_token:
                raise BadKeepAlive("keep-alive answer does not match the request")
            self._keepalive_token = None
            self._keepalive_missed = 0
        elif inner_type == InnerType.REKEY_REQUEST:
            r.end()
            if self._rekey_offer is not None:
                raise InvalidRequest("rekey requested while one is in progress")
            self._rekey_offer = self._kem.generate(self._rng)
            public = self._rekey_offer.public_bytes()
            for start in range(0, len(public), REKEY_FRAGMENT):
                chunk = public[start : start + REKEY_FRAGMENT]
                self.send(InnerType.REKEY_OFFER, Writer().vbytes(chunk).getvalue())
        elif inner_type == InnerType.REKEY_OFFER:
            if not self._rekey_requested:
                raise InvalidRequest("rekey offer without a request")
            room = self._kem.public_key_size - len(self._offer_parts)
            self._offer_parts += r.vbytes(min(room, REKEY_FRAGMENT))
            r.end()
            if len(self._offer_parts) == self._kem.public_key_size:
                public, self._offer_parts = bytes(self._offer_parts), bytearray()
                self._finish_tx_rekey(public)
        elif inner_type == InnerType.REKEY:
            ciphertext = read_kem_ciphertext(r, self._kem.ciphertext_size)
            r.end()
            self._finish_rx_rekey(ciphertext)
        elif inner_type == InnerType.SHUTDOWN:
            reason = r.text(MAX_REASON)
            r.end()
            self.closed = True
            raise Shutdown(ErrorCode.NONE, reason)
        elif inner_type == InnerType.ERROR:
            code = ErrorCode.from_wire(r.u8())
            reason = r.text(MAX_REASON)
            r.end()
            self.closed = True
            raise RemoteReportedError(code, f"peer reported: {code.description}: {reason}")
        else:
            raise InvalidRequest(f"unknown inner record type 0x{inner_type:02x}")

    def _finish_tx_rekey(self, public: bytes) -> None:
        if len(public) != self._kem.public_key_size:
            raise InvalidInput("rekey public key has the wrong size")
        ciphertext, secret = self._kem.encapsulate(public, self._rng)
        # The last record under the old key carries the ciphertext.
        self.send(InnerType.REKEY, Writer().vbytes(ciphertext).getvalue())
        keys = derive_rekey(secret, self._tx_chain, self._tx_label)
        scrub(secret)
        wipe(self._tx_chain)  # the old chain: the new keys cannot lead back to it
        self.sealer.wipe()
        self.sealer = RecordSealer(self._aead, keys)
        self._tx_chain = keys.chain
        self._rekey_requested = False
        self._tx_key_since = self._now
        self._budget_used = 0
        self.rekeys_sent += 1
        waiting, self._waiting = self._waiting, []
        for message in waiting:  # in order, under the new key
            self._emit(*message)

    def _finish_rx_rekey(self, ciphertext: bytes) -> None:
        if self._rekey_offer is None:
            raise InvalidRequest("rekey without an offer")
        secret = self._rekey_offer.decapsulate(ciphertext)
        self._rekey_offer = None
        keys = derive_rekey(secret, self._rx_chain, self._rx_label)
        scrub(secret)
        wipe(self._rx_chain)
        self.opener.wipe()
        self.opener = RecordOpener(self._aead, keys)
        self._rx_chain = keys.chain
        self.rekeys_received += 1

    # ------------------------------------------------------------------ timers

    def _chaff_delay(self) -> float:
        chaff = self.suite.chaff
        return self._random.between(chaff.interval_min_ms, chaff.interval_max_ms) / 1000.0

    def next_timer(self) -> float | None:
        candidates = [t for t in (self._keepalive_due, self._chaff_due) if t is not None]
        if self._clock is not None and (tick := self._clock.next_timer()) is not None:
            candidates.append(tick)
        if self._mimic is not None and (reply := self._mimic.next_timer()) is not None:
            candidates.append(reply)
        if not self._rekey_requested:
            candidates.append(self._tx_key_since + self._settings.rekey_interval)
        return min(candidates) if candidates else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.closed:
            return
        if self._keepalive_due is not None and now >= self._keepalive_due:
            if self._keepalive_token is not None:
                # Still the one request outstanding: no second one (its answer would not
                # match), only the count of intervals it has gone unanswered.
                self._keepalive_missed += 1
                if self._keepalive_missed >= self._settings.keepalive_count_max:
                    raise KeepAliveExpired("peer did not answer the keep-alive")
            else:
                self._keepalive_token = self._rng(8)
                self.send(InnerType.KEEPALIVE_REQUEST, self._keepalive_token)
            interval = self._settings.keepalive_interval
            assert interval is not None
            self._keepalive_due = now + interval
        clock = self._clock
        if clock is not None and clock.next_tick is not None and now >= clock.next_tick:
            self._tick(now)
        if self._mimic is not None:
            for _ in range(self._mimic.due(now)):
                self._emit(InnerType.CHAFF, b"")
        if self._chaff_due is not None and now >= self._chaff_due:
            # An interactive session's chaff is the clock's (same sizes, same timing).
            if clock is None or not clock.interactive:
                chaff = self.suite.chaff
                size = self._random.between(chaff.size_min, chaff.size_max)
                self.send(InnerType.CHAFF, bytes(size))
            self._chaff_due = now + self._chaff_delay()
        if (not self._rekey_requested
                and now >= self._tx_key_since + self._settings.rekey_interval):
            self.request_rekey()

    def note_time(self, now: float) -> None:
        """Record the latest time seen, for stamping key installation."""
        self._now = now
