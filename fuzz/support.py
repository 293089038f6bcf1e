"""What every harness shares: an input cursor, chunkings, and one deterministic world.

The world is built once per process, at import: two host keys and a handful of real
handshakes between a client and a server whose random generators are
:class:`~common.rng.DeterministicRng` instances with fixed seeds. Because the core draws every
random byte from the rng it is given, a *fresh* client or server built with the same seeds
(:func:`new_client`, :func:`new_server`) sends exactly the bytes recorded here, so a recorded
flight replayed into a fresh peer walks the real handshake, signature and MACs included.
That is how the handshake harnesses get past the signature and the exchange MAC, which no
mutation could forge, and still cost one handshake per input at most.

Inputs are parsed with :class:`Cursor` rather than atheris' FuzzedDataProvider so that seeds
can be written by hand (``fuzz/make_corpus.py``) and read in a hex dump: every field is a
byte or a big-endian u16 taken from the front, and reading past the end yields zeros.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from common.accounts.keys import HostKey, PublicKey
from common.crypto.registry import aead
from common.crypto.rng import DeterministicRng
from common.protocol import handshake as handshake_module
from common.protocol.connection import Connection, ConnectionTerminated, HandshakeComplete
from common.protocol.handshake import ClientHandshake, Established, Role, ServerHandshake
from common.protocol.mux import ChannelOpenRequest
from common.protocol.negotiation import ChaffPolicy, Offer, Suite
from common.protocol.record import RecordOpener, RecordSealer
from common.protocol.schedule import LABEL_C2S, LABEL_S2C, DirectionKeys
from common.protocol.transport import Transport, TransportSettings
from common.wire import HEADER_SIZE, Flag, decode_header

#: Host keys are made at KEY_TIME and live ten years; handshakes run at NOW.
KEY_TIME = 1_000_000_000.0
NOW = KEY_TIME + 100.0
#: Long after every host key expired.
LATE = KEY_TIME + 20 * 365 * 24 * 3600.0

CLIENT_HANDSHAKE_SEED = b"qsh fuzz client handshake"
CLIENT_CONNECTION_SEED = b"qsh fuzz client connection"
SERVER_HANDSHAKE_SEED = b"qsh fuzz server handshake"
SERVER_CONNECTION_SEED = b"qsh fuzz server connection"

#: Handshake packets per side: connect, exstart, exchange, establish.
FLIGHT_PACKETS = 4
#: Both directions' first record after the handshake carries this sequence number.
FIRST_RECORD_SEQUENCE = FLIGHT_PACKETS


class Cursor:
    """Reads a fuzz input front to back; past the end every read yields zeros / nothing."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def u8(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def u16(self) -> int:
        return (self.u8() << 8) | self.u8()

    def take(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def rest(self) -> bytes:
        return self.take(self.remaining)


# --------------------------------------------------------------------------- chunkings

#: ``chunked(data, mode, param)`` modes.
WHOLE, BYTEWISE, FIXED, VARIED = range(4)
#: Each receive_data call costs the same whatever its size, so a long message cut into
#: single bytes would cost a thousand inputs' worth; past this many chunks the pieces grow.
MAX_CHUNKS = 128


def chunked(data: bytes, mode: int, param: int, max_chunks: int = MAX_CHUNKS
            ) -> Iterator[bytes]:
    """Split ``data`` the way a socket might: whole, a byte at a time, in fixed steps of
    ``param + 1`` bytes, or in varied sizes from a small generator seeded by ``param``.
    Every mode yields all of ``data`` in at most about ``max_chunks`` non-empty chunks (so
    "a byte at a time" means it only for short data)."""
    mode %= 4
    if not data:
        return
    floor = -(-len(data) // max_chunks)  # smallest piece that keeps the count bounded
    if mode == WHOLE:
        yield data
    elif mode in (BYTEWISE, FIXED):
        step = max(1 if mode == BYTEWISE else param + 1, floor)
        for i in range(0, len(data), step):
            yield data[i : i + step]
    else:
        state = param | 1
        pos = 0
        while pos < len(data):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            # Mostly small pieces (header splits), sometimes large ones.
            size = 1 + (state >> 16) % (13 if state & 1 else 2048)
            size = max(size, floor) if pos else size  # the first piece may split a header
            yield data[pos : pos + size]
            pos += size


# --------------------------------------------------------------------------- the world

HOST_KEY_65 = HostKey.generate("mldsa65", now=KEY_TIME,
                               rng=DeterministicRng(b"qsh fuzz host key mldsa65"))
HOST_KEY_87 = HostKey.generate("mldsa87", now=KEY_TIME,
                               rng=DeterministicRng(b"qsh fuzz host key mldsa87"))
HOST_KEYS = (HOST_KEY_65, HOST_KEY_87)
#: Same algorithm as HOST_KEY_65, different key: what a client that trusts the wrong
#: key holds.
STRANGER_KEY = HostKey.generate("mldsa65", now=KEY_TIME,
                                rng=DeterministicRng(b"qsh fuzz stranger key")).public


@dataclass(frozen=True)
class Scenario:
    """One recorded session: what the client offered and trusted, every handshake packet,
    the first records each side sent afterwards, and the traffic keys (so a harness can
    rebuild either end of the established session without paying for a handshake)."""

    name: str
    offer: Offer
    trusted: PublicKey | None
    client_flight: tuple[bytes, ...]
    server_flight: tuple[bytes, ...]
    client_records: tuple[bytes, ...]
    server_records: tuple[bytes, ...]
    suite: Suite
    session_id: bytes
    host_key: PublicKey
    c2s: DirectionKeys
    s2c: DirectionKeys


_OFFERS: tuple[tuple[str, Offer, PublicKey | None], ...] = (
    ("default-trusted", Offer(), HOST_KEY_65.public),
    ("default-tofu", Offer(), None),
    ("mlkem768-chacha-mldsa87-chaff",
     Offer(kems=("mlkem768",), signatures=("mldsa87",), aeads=("chacha20poly1305",),
           chaff=ChaffPolicy(True, 100, 1000, 16, 128), padding_max=200),
     HOST_KEY_87.public),
    ("mlkem1024-nopad-tofu",
     Offer(kems=("mlkem1024", "mlkem768"), signatures=("mldsa65", "mldsa87"),
           aeads=("aes256gcm",), padding_max=0),
     None),
)


def new_client(offer: Offer, trusted: PublicKey | None,
               settings: TransportSettings | None = None) -> Connection:
    """A client that, started at NOW, sends exactly the recorded client flight."""
    hs = ClientHandshake(offer, trusted, rng=DeterministicRng(CLIENT_HANDSHAKE_SEED))
    return Connection(hs, settings=settings, rng=DeterministicRng(CLIENT_CONNECTION_SEED))


def new_server(settings: TransportSettings | None = None, *,
               require_auth: bool = False) -> Connection:
    """A server that answers the recorded client flights with the recorded server flights."""
    hs = ServerHandshake(HOST_KEYS, rng=DeterministicRng(SERVER_HANDSHAKE_SEED))
    return Connection(hs, settings=settings, rng=DeterministicRng(SERVER_CONNECTION_SEED),
                      require_auth=require_auth)


def _record(name: str, offer: Offer, trusted: PublicKey | None) -> Scenario:
    keys: dict[bytes, DirectionKeys] = {}
    real_derive = handshake_module.derive_direction

    def capture(secret: bytes, cookie: bytes, th: bytes, label: bytes) -> DirectionKeys:
        derived = real_derive(secret, cookie, th, label)
        keys.setdefault(label, derived)
        return derived

    client, server = new_client(offer, trusted), new_server()
    flights: dict[str, list[bytes]] = {"client": [], "server": []}
    # Setup only: watch which keys the handshake derives; restored before any fuzzing.
    handshake_module.derive_direction = capture  # type: ignore[assignment]
    try:
        client.start(NOW)
        server.start(NOW)
        _pump(client, server, flights)
        if trusted is None:
            client.accept_host_key()
            _pump(client, server, flights)
    finally:
        handshake_module.derive_direction = real_derive
    if not (client.established and server.established):
        raise RuntimeError(f"scenario {name}: the recorded handshake did not complete")
    client_flight, server_flight = flights["client"], flights["server"]
    if len(client_flight) != FLIGHT_PACKETS or len(server_flight) != FLIGHT_PACKETS:
        raise RuntimeError(f"scenario {name}: unexpected flight shape")
    assert client.transport is not None and server.transport is not None
    suite, session_id = server.transport.suite, server.transport.session_id
    host_key = next(e.host_key for e in server.events_received()
                    if isinstance(e, HandshakeComplete))

    # A little application traffic each way: records valid right after the handshake.
    flights = {"client": [], "server": []}
    channel = client.mux.open_channel("session", b"term=xterm")
    client.mux.send_data(channel, b"echo hello\n")
    _pump(client, server, flights)
    opened = [e for e in server.events_received() if isinstance(e, ChannelOpenRequest)]
    server.mux.accept_channel(opened[0].channel_id, b"")
    _pump(client, server, flights)
    client.mux.send_request(channel, "pty-req", b"\x00\x50\x00\x18")
    client.mux.send_eof(channel)
    _pump(client, server, flights)
    return Scenario(
        name=name, offer=offer, trusted=trusted,
        client_flight=tuple(client_flight), server_flight=tuple(server_flight),
        client_records=tuple(flights["client"]), server_records=tuple(flights["server"]),
        suite=suite, session_id=session_id, host_key=host_key,
        c2s=keys[LABEL_C2S], s2c=keys[LABEL_S2C],
    )


def _pump(client: Connection, server: Connection, flights: dict[str, list[bytes]]) -> None:
    moved = True
    while moved:
        moved = False
        for side, a, b in (("client", client, server), ("server", server, client)):
            for chunk in a.data_to_send():
                moved = True
                flights[side].append(bytes(chunk))
                b.receive_data(chunk, NOW)


SCENARIOS: tuple[Scenario, ...] = tuple(_record(*spec) for spec in _OFFERS)


def established(scenario: Scenario, role: Role, settings: TransportSettings
                ) -> tuple[Connection, Transport]:
    """Rebuild the session of ``scenario`` just after its handshake, cheaply.

    Returns a Connection playing ``role`` and a bare Transport playing its peer. Both hold
    the recorded traffic keys at the recorded sequence numbers and fresh rngs with the
    recorded seeds, so the recorded ``client_records`` open on a rebuilt server (and
    ``server_records`` on a rebuilt client). The Connection is wired the way its own
    ``_after_handshake_step`` wires it; only the handshake itself is skipped, which the
    handshake harnesses cover.
    """
    suite = scenario.suite
    cipher = aead(suite.aead)
    if role is Role.SERVER:
        conn = new_server(settings)
        conn_tx, conn_rx = scenario.s2c, scenario.c2s
        conn_seed, peer_seed = SERVER_CONNECTION_SEED, CLIENT_CONNECTION_SEED
        peer_role = Role.CLIENT
    else:
        conn = new_client(scenario.offer, scenario.trusted, settings)
        conn_tx, conn_rx = scenario.c2s, scenario.s2c
        conn_seed, peer_seed = CLIENT_CONNECTION_SEED, SERVER_CONNECTION_SEED
        peer_role = Role.SERVER

    def ends(tx: DirectionKeys, rx: DirectionKeys) -> Established:
        # Copies: a rekey zeroes the keys and chains it replaces, and these are reused.
        tx = DirectionKeys.of(tx.key, tx.iv, tx.chain)
        rx = DirectionKeys.of(rx.key, rx.iv, rx.chain)
        return Established(
            suite=suite,
            sealer=RecordSealer(cipher, tx, FIRST_RECORD_SEQUENCE),
            opener=RecordOpener(cipher, rx, FIRST_RECORD_SEQUENCE),
            session_id=scenario.session_id, host_key=scenario.host_key,
            tx_chain=tx.chain, rx_chain=rx.chain,
        )

    # A fresh rng with the connection's seed: what the connection would have handed its
    # transport, since nothing draws from it before the handshake ends.
    conn.transport = Transport(ends(conn_tx, conn_rx), role, settings,
                               DeterministicRng(conn_seed), NOW)
    peer = Transport(ends(conn_rx, conn_tx), peer_role, settings,
                     DeterministicRng(peer_seed), NOW)
    return conn, peer


# --------------------------------------------------------------------------- checks


def check_connection(conn: Connection, events: list[object]) -> None:
    """Post-conditions that hold however a connection was abused: at most one
    ConnectionTerminated, it is the last event, and it matches ``conn.terminated``."""
    ends = [i for i, e in enumerate(events) if isinstance(e, ConnectionTerminated)]
    if conn.terminated is None:
        if ends:
            raise AssertionError("ConnectionTerminated emitted but the connection is open")
        return
    if len(ends) != 1 or ends[0] != len(events) - 1:
        raise AssertionError(f"termination events at {ends} of {len(events)}")
    if events[-1] is not conn.terminated:
        raise AssertionError("the termination event is not conn.terminated")
    if conn.next_timer() is not None:
        raise AssertionError("a terminated connection still asks for a timer")


def receive(conn: Connection, data: bytes, now: float) -> None:
    """Hand ``data`` over as the asyncio adapter does: a view of its receive buffer, which
    it overwrites with the next read as soon as the call returns. So afterwards nothing may
    still refer to that buffer (checked: a bytearray cannot grow while a view of it lives)."""
    if not data:
        conn.receive_data(b"", now)
        return
    buffer = bytearray(data)
    view = memoryview(buffer)
    conn.receive_data(view, now)
    view.release()
    buffer[:] = b"\xa5" * len(buffer)
    try:
        buffer.append(0)
    except BufferError:
        raise AssertionError("the connection still holds a view of the caller's buffer "
                             "after receive_data returned") from None


def fire_timer(conn: Connection) -> None:
    """Call handle_timer exactly at the deadline the connection asked for, if any."""
    deadline = conn.next_timer()
    if deadline is not None:
        conn.handle_timer(deadline)


def drain(conn: Connection, events: list[object]) -> list[bytes]:
    """Collect output and events, as the adapter would after every call."""
    out = [bytes(chunk) for chunk in conn.data_to_send()]
    events.extend(conn.events_received())
    return out



# --------------------------------------------------------------------------- handshakes


@dataclass(frozen=True)
class HandshakePlan:
    """How a handshake harness drives its connection; parsed from the front of the input.

    ``prefix`` recorded packets are replayed first (whole, so each walks the real
    handshake). Then, if ``sealed`` and the next recorded packet travels encrypted (or the
    whole flight was replayed), ``tail`` is the *plaintext* of that packet (of the first
    record after the handshake), sealed by the harness with the recorded keys: that is how
    the parsers behind the AEAD (exchange request, key confirmations, the first records) get
    fuzzed. Otherwise the next recorded packet with ``patches`` (offset, xor) applied, if
    any, then ``tail`` as raw bytes; all in the chosen chunking.

    ``late`` runs everything on a clock past every host key's expiry; ``close`` calls
    close() at the end, ``eof`` then closes the stream, and ``expire`` fires the next timer.
    Client only: ``reject`` (refuse the key on first use), ``stranger`` (trust another key),
    ``early`` (open a channel and send data at once, so records follow the establish
    request), ``login`` (ask for password authentication at once). Server only:
    ``require_auth``, and ``reject`` refuses a login instead of accepting it.
    """

    scenario: Scenario
    prefix: int
    eof: bool
    expire: bool
    late: bool
    reject: bool
    stranger: bool
    chunk_mode: int
    sealed: bool
    chunk_param: int
    early: bool
    login: bool
    require_auth: bool
    close: bool
    patches: tuple[tuple[int, int], ...]
    tail: bytes

    @classmethod
    def parse(cls, data: bytes) -> HandshakePlan:
        cur = Cursor(data)
        scenario = SCENARIOS[cur.u8() % len(SCENARIOS)]
        prefix = cur.u8() % (FLIGHT_PACKETS + 1)
        flags = cur.u8()
        chunk_param = cur.u8()
        more = cur.u8()
        patches = tuple((cur.u16(), cur.u8()) for _ in range(cur.u8() % 16))
        return cls(
            scenario=scenario, prefix=prefix, eof=bool(flags & 0x01),
            expire=bool(flags & 0x02), late=bool(flags & 0x04), reject=bool(flags & 0x08),
            stranger=bool(flags & 0x10), chunk_mode=(flags >> 5) & 3,
            sealed=bool(flags & 0x80), chunk_param=chunk_param, early=bool(more & 0x01),
            login=bool(more & 0x02), require_auth=bool(more & 0x04), close=bool(more & 0x08),
            patches=patches, tail=cur.rest(),
        )

    @property
    def clock(self) -> float:
        return LATE if self.late else NOW

    def inputs(self, from_client: bool) -> tuple[bytes, ...]:
        """What to feed after the replayed prefix of the client's (or server's) flight."""
        if self.sealed:
            packet = seal_recorded(self.scenario, from_client, self.prefix, self.tail)
            if packet is not None:
                return (packet,)
        flight = self.scenario.client_flight if from_client else self.scenario.server_flight
        return self.patched(flight), self.tail

    def patched(self, flight: tuple[bytes, ...]) -> bytes:
        """The recorded packet after the prefix, with the patches applied; empty when
        there are no patches or no packet left."""
        if not self.patches or self.prefix >= len(flight):
            return b""
        packet = bytearray(flight[self.prefix])
        for offset, xor in self.patches:
            packet[offset % len(packet)] ^= xor or 0xFF
        return bytes(packet)


#: Recorded handshake packets that travel sealed.
_SEALED_FLAGS = frozenset((Flag.EXCHANGE_REQUEST, Flag.ESTABLISH_REQUEST,
                           Flag.ESTABLISH_RESPONSE))


def seal_recorded(scenario: Scenario, from_client: bool, index: int,
                  plaintext: bytes) -> bytes | None:
    """Packet ``index`` of the client's (or server's) recorded flight with ``plaintext``
    instead of its own, sealed with the recorded keys at its sequence number; at
    ``index == FLIGHT_PACKETS``, the first record after the handshake. None when that
    packet travels in clear."""
    flight = scenario.client_flight if from_client else scenario.server_flight
    if index < len(flight):
        flag = flight[index][0]
        if flag not in _SEALED_FLAGS:
            return None
    else:
        flag = Flag.ENCRYPTED_MESSAGE
    keys = scenario.c2s if from_client else scenario.s2c
    return bytes(RecordSealer(aead(scenario.suite.aead), keys, index).seal(flag, plaintext))


def open_recorded(scenario: Scenario, from_client: bool, index: int) -> bytes:
    """The plaintext of a sealed packet of a recorded flight (for writing seeds)."""
    packet = (scenario.client_flight if from_client else scenario.server_flight)[index]
    keys = scenario.c2s if from_client else scenario.s2c
    header = decode_header(packet[:HEADER_SIZE], len(packet))
    opener = RecordOpener(aead(scenario.suite.aead), keys, index)
    return bytes(opener.open(header, packet[:HEADER_SIZE], packet[HEADER_SIZE:]))


def encode_plan(scenario: int, prefix: int, *, flags: int = 0, chunk_param: int = 0,
                more: int = 0, patches: tuple[tuple[int, int], ...] = (),
                tail: bytes = b"") -> bytes:
    """The inverse of :meth:`HandshakePlan.parse`, for writing seeds."""
    head = bytes((scenario, prefix, flags, chunk_param, more, len(patches)))
    body = b"".join(offset.to_bytes(2, "big") + bytes((xor,)) for offset, xor in patches)
    return head + body + tail
