"""The QSMP key exchange as two sans-IO state machines.

Flow (QSMP rev 1a section 7, modernised; docs/PROTOCOL.md has every byte)::

    client                                            server
    CONNECT_REQUEST  (offers, kid, stok)       -->
                                               <--    CONNECT_RESPONSE (picks, host key,
                                                        pk_s, Sign(transcript))
    EXSTART_REQUEST  (ct_1 = Encaps(pk_s))     -->    c2s keys from ss_1
    EXCHANGE_REQUEST [c2s](pk_c || mk)         -->    (pipelined: no round trip)
                                               <--    EXSTART_RESPONSE (remote connected)
                                               <--    EXCHANGE_RESPONSE (KMAC_mk(ct_2), ct_2)
    ESTABLISH_REQUEST [c2s](kid || H)          -->    s2c keys from ss_2 = Encaps(pk_c)
    ... application records may follow at once ...
                                               <--    ESTABLISH_RESPONSE [s2c](kid || H)

Each direction is keyed from a KEM secret that its *transmitting* host created: the client
encapsulates to the server's signed ephemeral key for c2s, the server encapsulates to the
client's (encrypted, MAC-bound) ephemeral key for s2c. The transcript hash of every
handshake packet, in protocol order, is signed, fed to both key derivations, to the exchange
MAC and to the establish confirmations.

The machines never touch sockets or clocks: packets come in through :meth:`receive`, go
out through :attr:`outgoing`, and ``now`` is passed in to check deadlines.

Each waiting state accepts one packet, and :meth:`max_body` bounds it by the largest body
that message can have with the suite in force (:func:`handshake_limits`): its KEM's key or
ciphertext size, its signature and host key size, its AEAD's tag. Before the suite is known,
the server's bound is the connect request's 8 KiB and the client's the largest connect
response its own offer allows. A peer cannot make us buffer a body that no honest peer of
this suite could send; it is refused on its header.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from common.accounts.keys import HostSigner, PublicKey
from common.crypto import registry
from common.crypto.rng import SYSTEM_RNG, Rng
from common.crypto.secret import scrub
from common.crypto.suites import KemPrivateKey
from common.errors import (
    EstablishFailure,
    ExstartFailure,
    HashInvalid,
    InvalidInput,
    KeyExpired,
    KeyUnrecognized,
    LocalError,
    QsmpError,
    UnknownProtocol,
    UsageError,
    VerifyFailure,
)
from common.protocol.handshake_messages import (
    REMOTE_CONNECTED,
    TOKEN_SIZE,
    _confirmation,
    connect_response_limit,
)
from common.protocol.handshake_state import _Handler
from common.protocol.negotiation import (
    MAX_PADDING,
    SUPPORTED_VERSIONS,
    Offer,
    ServerPolicy,
    Suite,
    agree_chaff,
    agree_obscure,
    pick,
    pick_version,
)
from common.protocol.record import RecordOpener, RecordSealer
from common.protocol.schedule import (
    HASH_SIZE,
    LABEL_C2S,
    LABEL_S2C,
    MAC_KEY_SIZE,
    derive_direction,
    exchange_mac,
    session_cookie,
    signed_data,
)
from common.wire import (
    MAX_CONNECT_REQUEST_BODY,
    Flag,
    Header,
    Reader,
    Writer,
    encode_header,
)

# isort: split
# re-exported: importers predate the split
from common.protocol.handshake_messages import NO_KEY_ID as NO_KEY_ID
from common.protocol.handshake_messages import ConnectRequest as ConnectRequest
from common.protocol.handshake_messages import ConnectResponse as ConnectResponse
from common.protocol.handshake_messages import handshake_limits as handshake_limits
from common.protocol.handshake_messages import read_kem_ciphertext as read_kem_ciphertext
from common.protocol.handshake_state import Established as Established
from common.protocol.handshake_state import Role as Role
from common.protocol.handshake_state import State as State
from common.protocol.handshake_state import _Handshake as _Handshake

#: Seconds allowed for each step of the exchange.
DEFAULT_STEP_TIMEOUT = 30.0
#: The server's wait for the exstart request may include a person reading a fingerprint
#: (trust on first use); OpenSSH gives a whole login 120 s (LoginGraceTime).
DEFAULT_HOST_KEY_GRACE = 120.0


# The messages, their wire constants and size bounds: common.protocol.handshake_messages.
# The states, the result and the base both machines share: common.protocol.handshake_state.


# --------------------------------------------------------------------------- machines


class ClientHandshake(_Handshake):
    """The initiator. If ``trusted_key`` is None the server's key is unknown (first
    contact): the machine stops in AWAIT_HOST_KEY_DECISION until the application calls
    :meth:`accept_host_key` or :meth:`reject_host_key` (trust on first use)."""

    role = Role.CLIENT

    def __init__(self, offer: Offer, trusted_key: PublicKey | None = None, *,
                 rng: Rng = SYSTEM_RNG, step_timeout: float = DEFAULT_STEP_TIMEOUT) -> None:
        super().__init__(rng, step_timeout)
        # Our own offer must pass the checks the server will apply to it.
        if offer.padding_max > MAX_PADDING:
            raise UsageError(f"padding above {MAX_PADDING} bytes")
        try:
            offer.chaff.validate()
            if offer.obscure is not None:
                offer.obscure.validate()
        except InvalidInput as exc:
            raise UsageError(str(exc)) from None
        for name in offer.kems:
            registry.kem(name)
        for name in offer.signatures:
            registry.signature(name)
        for name in offer.aeads:
            registry.aead(name)
        self.offer = offer
        self.trusted_key = trusted_key
        self.server_key: PublicKey | None = None
        self._token = b""
        self._suite: Suite | None = None
        self._cookie = b""
        self._server_ephemeral = b""
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None
        self._tx_chain = bytearray()
        self._rx_chain = bytearray()
        self._kem_key: KemPrivateKey | None = None
        self._mac_key = b""
        self._exchange_request = b""
        self._connect_response_limit = connect_response_limit(offer.kems, offer.signatures,
                                                              offer.aeads)
        self._limits: dict[Flag, int] = {}

    def start(self, now: float) -> None:
        if self._c.state is not State.START:
            raise UsageError("handshake already started")
        self._token = self._c.rng(TOKEN_SIZE)
        key_id = self.trusted_key.key_id if self.trusted_key else NO_KEY_ID
        request = ConnectRequest(SUPPORTED_VERSIONS, key_id, self._token, self.offer)
        packet = self._send_plain(Flag.CONNECT_REQUEST, request.encode())
        self._c.transcript.add(packet)
        self._arm(State.AWAIT_CONNECT_RESPONSE, now)

    def _limit(self, flag: Flag) -> int:
        if flag is Flag.CONNECT_RESPONSE:
            return self._connect_response_limit
        return self._limits[flag]

    def _table(self) -> dict[State, tuple[Flag, _Handler]]:
        return {
            State.AWAIT_CONNECT_RESPONSE: (Flag.CONNECT_RESPONSE, self._on_connect_response),
            State.AWAIT_EXSTART_RESPONSE: (Flag.EXSTART_RESPONSE, self._on_exstart_response),
            State.AWAIT_EXCHANGE_RESPONSE: (Flag.EXCHANGE_RESPONSE,
                                            self._on_exchange_response),
            State.AWAIT_ESTABLISH_RESPONSE: (Flag.ESTABLISH_RESPONSE,
                                             self._on_establish_response),
        }

    def _on_connect_response(self, _header: Header, header_bytes: bytes, body: memoryview,
                             now: float) -> None:
        response, signed_len = ConnectResponse.decode(body, self.offer)
        try:
            server_key = PublicKey.decode(response.host_key)
        except QsmpError as exc:
            raise InvalidInput(f"malformed host key: {exc}") from None
        if server_key.algorithm != response.suite.signature:
            raise UnknownProtocol("host key algorithm differs from the chosen signature")
        if self.trusted_key is not None and not hmac.compare_digest(
            server_key.encode(), self.trusted_key.encode()
        ):
            raise VerifyFailure("host key does not match the trusted key")
        if server_key.is_expired(now):
            raise KeyExpired("the server's host key has expired")
        # The signature covers everything up to itself, header included.
        signed = self._c.transcript.digest_with(header_bytes, body[:signed_len])
        sig = registry.signature(response.suite.signature)
        if not sig.verify(server_key.verification_key, signed_data(signed), response.signature):
            raise VerifyFailure("host key signature does not verify")
        self._c.transcript.add(header_bytes, body)
        self._suite = response.suite
        self._limits = handshake_limits(response.suite)
        self.server_key = server_key
        self._server_ephemeral = response.ephemeral_key
        self._cookie = session_cookie(
            self._token, response.suite.configuration(), response.host_key
        )
        if self.trusted_key is None:
            self._arm(State.AWAIT_HOST_KEY_DECISION, None)
        else:
            self._send_exstart(now)

    def accept_host_key(self, now: float) -> None:
        """The user (or policy) trusts the key in :attr:`server_key`."""
        if self._c.state is not State.AWAIT_HOST_KEY_DECISION:
            raise UsageError("no host key decision is pending")
        self.trusted_key = self.server_key
        self._send_exstart(now)

    def reject_host_key(self) -> None:
        if self._c.state is not State.AWAIT_HOST_KEY_DECISION:
            raise UsageError("no host key decision is pending")
        raise VerifyFailure("host key not trusted")

    def _send_exstart(self, now: float) -> None:
        suite = self._suite
        assert suite is not None
        kem = registry.kem(suite.kem)
        ciphertext, secret = kem.encapsulate(self._server_ephemeral, self._c.rng)
        packet = self._send_plain(
            Flag.EXSTART_REQUEST, Writer().vbytes(ciphertext).getvalue()
        )
        self._c.transcript.add(packet)
        c2s = derive_direction(secret, self._cookie, self._c.transcript.digest(), LABEL_C2S)
        scrub(secret)  # the KEM's secret is only ever needed for this derivation
        aead = registry.aead(suite.aead)
        self._sealer = RecordSealer(aead, c2s)
        self._tx_chain = c2s.chain
        # Pipelined: the exchange request depends only on keys we already hold.
        self._kem_key = kem.generate(self._c.rng)
        self._mac_key = self._c.rng(MAC_KEY_SIZE)
        plaintext = (Writer().vbytes(self._kem_key.public_bytes()).fixed(self._mac_key)
                     .getvalue())
        # Hashed after the exstart response, in protocol order (see _on_exstart_response).
        self._exchange_request = bytes(
            self._send_sealed(self._sealer, Flag.EXCHANGE_REQUEST, plaintext)
        )
        scrub(plaintext)  # it holds the MAC key
        self._arm(State.AWAIT_EXSTART_RESPONSE, now)

    def _on_exstart_response(self, _header: Header, header_bytes: bytes, body: memoryview,
                             now: float) -> None:
        if bytes(body) != bytes([REMOTE_CONNECTED]):
            raise ExstartFailure("server did not confirm the first channel")
        self._c.transcript.add(header_bytes, body, self._exchange_request)
        self._arm(State.AWAIT_EXCHANGE_RESPONSE, now)

    def _on_exchange_response(self, _header: Header, header_bytes: bytes, body: memoryview,
                              now: float) -> None:
        suite = self._suite
        assert suite is not None and self._kem_key is not None
        kem = registry.kem(suite.kem)
        r = Reader(body)
        mac = r.fixed(HASH_SIZE)
        ciphertext = read_kem_ciphertext(r, kem.ciphertext_size)
        r.end()
        expected = exchange_mac(self._mac_key, self._c.transcript.digest(), ciphertext)
        if not hmac.compare_digest(mac, expected):
            raise HashInvalid("exchange response MAC does not verify")
        secret = self._kem_key.decapsulate(ciphertext)
        self._kem_key = None
        scrub(self._mac_key)
        self._mac_key = b""
        self._c.transcript.add(header_bytes, body)
        th = self._c.transcript.digest()
        s2c = derive_direction(secret, self._cookie, th, LABEL_S2C)
        scrub(secret)
        self._opener = RecordOpener(registry.aead(suite.aead), s2c, self._c.rx_seq)
        self._rx_chain = s2c.chain
        assert self._sealer is not None and self.server_key is not None
        packet = self._send_sealed(
            self._sealer, Flag.ESTABLISH_REQUEST, _confirmation(self.server_key.key_id, th)
        )
        self._c.transcript.add(packet)
        self.session_id = self._c.transcript.digest()
        self._arm(State.AWAIT_ESTABLISH_RESPONSE, now)

    @property
    def suite(self) -> Suite | None:
        """The negotiated suite, once the connect response has been verified."""
        return self._suite

    @property
    def can_send_application_data(self) -> bool:
        """True once the establish request is out: the server is authenticated and our
        transmit key is final, so records may follow it without waiting a round trip."""
        return self._c.state in (State.AWAIT_ESTABLISH_RESPONSE, State.ESTABLISHED)

    @property
    def early_sealer(self) -> RecordSealer:
        assert self._sealer is not None
        self._sealer.sequence = self._c.tx_seq
        return self._sealer

    def note_early_record(self) -> None:
        """The connection sent an application record before establishment finished."""
        self._c.tx_seq += 1

    def _on_establish_response(self, header: Header, header_bytes: bytes, body: memoryview,
                               _now: float) -> None:
        assert self._opener is not None and self._sealer is not None
        assert self.server_key is not None and self._suite is not None
        plaintext = self._opener.open(header, header_bytes, body)
        expected = _confirmation(self.server_key.key_id, self.session_id)
        if not hmac.compare_digest(bytes(plaintext), expected):
            raise EstablishFailure("server key confirmation does not match")
        self._c.transcript.add(header_bytes, body)
        self._sealer.sequence = self._c.tx_seq
        self.result = Established(
            suite=self._suite, sealer=self._sealer, opener=self._opener,
            session_id=self.session_id, host_key=self.server_key,
            tx_chain=self._tx_chain, rx_chain=self._rx_chain,
        )
        self._c.state = State.ESTABLISHED
        self._c.deadline = None


class ServerHandshake(_Handshake):
    """The responder. Holds one host key per signature algorithm it serves."""

    role = Role.SERVER

    def __init__(self, host_keys: Sequence[HostSigner],
                 policy: ServerPolicy | None = None, *, rng: Rng = SYSTEM_RNG,
                 step_timeout: float = DEFAULT_STEP_TIMEOUT,
                 host_key_grace: float = DEFAULT_HOST_KEY_GRACE) -> None:
        super().__init__(rng, step_timeout)
        self.host_key_grace = host_key_grace
        if not host_keys:
            raise UsageError("a server needs at least one host key")
        self.host_keys = tuple(host_keys)
        self.policy = policy or ServerPolicy()
        self.host_key: HostSigner | None = None
        self._suite: Suite | None = None
        self._cookie = b""
        self._kem_key: KemPrivateKey | None = None
        self._opener: RecordOpener | None = None
        self._sealer: RecordSealer | None = None
        self._rx_chain = bytearray()
        self._tx_chain = bytearray()
        self._limits: dict[Flag, int] = {}

    def start(self, now: float) -> None:
        if self._c.state is not State.START:
            raise UsageError("handshake already started")
        self._arm(State.AWAIT_CONNECT_REQUEST, now)

    def _limit(self, flag: Flag) -> int:
        if flag is Flag.CONNECT_REQUEST:
            return MAX_CONNECT_REQUEST_BODY
        return self._limits[flag]

    def _table(self) -> dict[State, tuple[Flag, _Handler]]:
        return {
            State.AWAIT_CONNECT_REQUEST: (Flag.CONNECT_REQUEST, self._on_connect_request),
            State.AWAIT_EXSTART_REQUEST: (Flag.EXSTART_REQUEST, self._on_exstart_request),
            State.AWAIT_EXCHANGE_REQUEST: (Flag.EXCHANGE_REQUEST, self._on_exchange_request),
            State.AWAIT_ESTABLISH_REQUEST: (Flag.ESTABLISH_REQUEST,
                                            self._on_establish_request),
        }

    def _choose_host_key(self, request: ConnectRequest, now: float) -> HostSigner:
        if request.key_id != NO_KEY_ID:
            for key in self.host_keys:
                if hmac.compare_digest(key.public.key_id, request.key_id):
                    allowed = self.policy.signatures
                    if (key.public.algorithm not in request.offer.signatures
                            or (allowed is not None and key.public.algorithm not in allowed)):
                        raise UnknownProtocol("this key's algorithm is not acceptable to both")
                    chosen = key
                    break
            else:
                raise KeyUnrecognized("no host key with the requested key identity")
        else:
            algorithms = tuple(k.public.algorithm for k in self.host_keys)
            name = pick(request.offer.signatures, self.policy.signatures, algorithms,
                        "signature algorithm")
            chosen = next(k for k in self.host_keys if k.public.algorithm == name)
        if chosen.public.is_expired(now):
            raise KeyExpired("the host key has expired")
        return chosen

    def _on_connect_request(self, _header: Header, header_bytes: bytes, body: memoryview,
                            now: float) -> None:
        request = ConnectRequest.decode(body)
        version = pick_version(request.versions)
        host_key = self._choose_host_key(request, now)
        offer = request.offer
        suite = Suite(
            version=version,
            kem=pick(offer.kems, self.policy.kems, registry.available_kems(), "KEM"),
            signature=host_key.public.algorithm,
            aead=pick(offer.aeads, self.policy.aeads, registry.available_aeads(), "cipher"),
            chaff=agree_chaff(offer.chaff, self.policy),
            padding_max=min(offer.padding_max, self.policy.padding_max),
            obscure=agree_obscure(offer.obscure, self.policy),
        )
        self._c.transcript.add(header_bytes, body)
        kem = registry.kem(suite.kem)
        self._kem_key = kem.generate(self._c.rng)
        host_blob = host_key.public.encode()
        unsigned = ConnectResponse(suite, host_blob, self._kem_key.public_bytes(), b"")
        prefix = unsigned.encode_unsigned()
        # The signed header carries the body length, so the signature's size must be known
        # before signing: every scheme we register has fixed-size signatures.
        sig_len = registry.signature(suite.signature).max_signature_size
        body_len = len(prefix) + 4 + sig_len
        header = encode_header(Flag.CONNECT_RESPONSE, self._c.tx_seq, body_len)
        th = self._c.transcript.digest_with(header, prefix)
        signature = host_key.sign(signed_data(th), self._c.rng)
        if len(signature) != sig_len:
            raise LocalError("signature size differs from the scheme's declared size")
        packet = self._send_plain(
            Flag.CONNECT_RESPONSE, prefix + Writer().vbytes(signature).getvalue()
        )
        self._c.transcript.add(packet)
        self.host_key = host_key
        self._suite = suite
        self._limits = handshake_limits(suite)
        self._cookie = session_cookie(request.session_token, suite.configuration(), host_blob)
        self._arm(State.AWAIT_EXSTART_REQUEST, now)
        self._c.deadline = now + max(self._c.step_timeout, self.host_key_grace)

    def _on_exstart_request(self, _header: Header, header_bytes: bytes, body: memoryview,
                            now: float) -> None:
        suite = self._suite
        assert suite is not None and self._kem_key is not None
        kem = registry.kem(suite.kem)
        r = Reader(body)
        ciphertext = read_kem_ciphertext(r, kem.ciphertext_size)
        r.end()
        secret = self._kem_key.decapsulate(ciphertext)
        self._kem_key = None
        self._c.transcript.add(header_bytes, body)
        c2s = derive_direction(secret, self._cookie, self._c.transcript.digest(), LABEL_C2S)
        scrub(secret)
        self._opener = RecordOpener(registry.aead(suite.aead), c2s, self._c.rx_seq)
        self._rx_chain = c2s.chain
        packet = self._send_plain(Flag.EXSTART_RESPONSE, bytes([REMOTE_CONNECTED]))
        self._c.transcript.add(packet)
        self._arm(State.AWAIT_EXCHANGE_REQUEST, now)

    def _on_exchange_request(self, header: Header, header_bytes: bytes, body: memoryview,
                             now: float) -> None:
        suite = self._suite
        assert suite is not None and self._opener is not None
        kem = registry.kem(suite.kem)
        plaintext = self._opener.open(header, header_bytes, body)
        r = Reader(plaintext)
        client_public = r.vbytes(kem.public_key_size)
        mac_key = r.fixed(MAC_KEY_SIZE)
        r.end()
        if len(client_public) != kem.public_key_size:
            raise InvalidInput("client ephemeral key has the wrong size")
        self._c.transcript.add(header_bytes, body)
        ciphertext, secret = kem.encapsulate(client_public, self._c.rng)
        mac = exchange_mac(mac_key, self._c.transcript.digest(), ciphertext)
        packet = self._send_plain(
            Flag.EXCHANGE_RESPONSE, mac + Writer().vbytes(ciphertext).getvalue()
        )
        self._c.transcript.add(packet)
        s2c = derive_direction(secret, self._cookie, self._c.transcript.digest(), LABEL_S2C)
        scrub(secret)
        scrub(mac_key)
        scrub(plaintext)  # it holds the MAC key too
        self._sealer = RecordSealer(registry.aead(suite.aead), s2c)
        self._tx_chain = s2c.chain
        self._arm(State.AWAIT_ESTABLISH_REQUEST, now)

    def _on_establish_request(self, header: Header, header_bytes: bytes, body: memoryview,
                              _now: float) -> None:
        assert self._opener is not None and self._sealer is not None
        assert self.host_key is not None and self._suite is not None
        plaintext = self._opener.open(header, header_bytes, body)
        key_id = self.host_key.public.key_id
        expected = _confirmation(key_id, self._c.transcript.digest())
        if not hmac.compare_digest(bytes(plaintext), expected):
            raise EstablishFailure("client key confirmation does not match")
        self._c.transcript.add(header_bytes, body)
        self.session_id = self._c.transcript.digest()
        packet = self._send_sealed(
            self._sealer, Flag.ESTABLISH_RESPONSE, _confirmation(key_id, self.session_id)
        )
        self._c.transcript.add(packet)
        self.result = Established(
            suite=self._suite, sealer=self._sealer, opener=self._opener,
            session_id=self.session_id, host_key=self.host_key.public,
            tx_chain=self._tx_chain, rx_chain=self._rx_chain,
        )
        self._c.state = State.ESTABLISHED
        self._c.deadline = None
