"""The QSMP handshake, client and server Connections wired back to back in memory.

Most tests use seeded RNGs (tests/helpers.py), so every run sends the same bytes: a
tampered or re-chunked run can be compared with the honest one packet for packet.

Packet indices below are in *wire* order of the honest run (pipelining puts the exchange
request before the exstart response on the wire)::

    0 c2s CONNECT_REQUEST      4 s2c EXSTART_RESPONSE
    1 s2c CONNECT_RESPONSE     5 s2c EXCHANGE_RESPONSE
    2 c2s EXSTART_REQUEST      6 c2s ESTABLISH_REQUEST   (+ early application records)
    3 c2s EXCHANGE_REQUEST     7 s2c ESTABLISH_RESPONSE
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass

import pytest
from helpers import (
    C2S,
    CLIENT_SEED,
    NOW,
    S2C,
    SERVER_SEED,
    Wire,
    cut,
    error_packet_code,
    established_pair,
    flip,
    handshake,
    host_key,
    make_pair,
    pump,
    rng_for,
    split_packets,
    take,
    terminations,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.accounts.keys import HostKey, PublicKey
from common.crypto import registry, suites
from common.crypto.rng import DeterministicRng, Rng
from common.errors import ErrorCode, QsmpError, UsageError
from common.protocol.connection import (
    Connection,
    ConnectionTerminated,
    HandshakeComplete,
    HostKeyUnverified,
)
from common.protocol.handshake import (
    DEFAULT_HOST_KEY_GRACE,
    DEFAULT_STEP_TIMEOUT,
    NO_KEY_ID,
    SUPPORTED_VERSIONS,
    ClientHandshake,
    ConnectRequest,
    ConnectResponse,
    ServerHandshake,
    State,
)
from common.protocol.mux import ChannelData, ChannelOpened, ChannelOpenRequest
from common.protocol.negotiation import (
    CHAFF_OFF,
    EXT_OBSCURE,
    MAX_PADDING,
    ChaffPolicy,
    Offer,
    ServerPolicy,
    Suite,
)
from common.protocol.schedule import Transcript, signed_data
from common.wire import HEADER_SIZE, Flag, Reader, Writer, encode_header, encode_packet

E = ErrorCode
STEP = 30.0
MESSAGES = (
    "connect_request", "connect_response", "exstart_request", "exchange_request",
    "exstart_response", "exchange_response", "establish_request", "establish_response",
)
FLAGS = (
    Flag.CONNECT_REQUEST, Flag.CONNECT_RESPONSE, Flag.EXSTART_REQUEST, Flag.EXCHANGE_REQUEST,
    Flag.EXSTART_RESPONSE, Flag.EXCHANGE_RESPONSE, Flag.ESTABLISH_REQUEST,
    Flag.ESTABLISH_RESPONSE,
)
CONNECT_RESPONSE = 1
ESTABLISH_RESPONSE = 7


@functools.cache
def honest(tofu: bool = False) -> Wire:
    """The untampered seeded handshake (for TOFU, up to the host key decision)."""
    client, server = make_pair(trusted=None if tofu else host_key().public)
    client.start(NOW)
    server.start(NOW)
    wire = pump(client, server, NOW)
    if not tofu:
        assert client.established and server.established
        assert [p[0] for p in wire.packets()] == list(FLAGS)
    return wire


def direction_of(index: int) -> str:
    return C2S if FLAGS[index] in (Flag.CONNECT_REQUEST, Flag.EXSTART_REQUEST,
                                   Flag.EXCHANGE_REQUEST, Flag.ESTABLISH_REQUEST) else S2C


def last_sent(wire: Wire, direction: str) -> bytes | None:
    packets = wire.packets(direction)
    return packets[-1] if packets else None


# --------------------------------------------------------------------------- the happy path


def test_full_handshake_in_memory() -> None:
    client, server = make_pair()
    wire = handshake(client, server)
    ce, se = client.events_received(), server.events_received()
    assert [type(e) for e in ce] == [HandshakeComplete]
    assert [type(e) for e in se] == [HandshakeComplete]
    c_done, s_done = ce[0], se[0]
    assert isinstance(c_done, HandshakeComplete) and isinstance(s_done, HandshakeComplete)
    assert c_done.session_id == s_done.session_id and len(c_done.session_id) == 32
    assert c_done.suite == s_done.suite
    assert c_done.suite == Suite(1, suites.DEFAULT_KEMS[0], suites.DEFAULT_SIGNATURES[0],
                                 suites.DEFAULT_AEADS[0], CHAFF_OFF, 64)
    assert c_done.host_key == s_done.host_key == host_key().public
    assert client.transport is not None and server.transport is not None
    assert client.transport.session_id == server.transport.session_id == c_done.session_id
    assert client.next_timer() is not None  # the rekey timer, nothing from the handshake
    assert [p[0] for p in wire.packets()] == list(FLAGS)
    assert not client.closed and not server.closed


def test_seeded_runs_are_byte_identical_and_unseeded_runs_differ() -> None:
    assert honest().packets() == handshake(*make_pair()).packets()
    a = make_pair(client_seed=None, server_seed=None)
    b = make_pair(client_seed=None, server_seed=None)
    handshake(*a)
    handshake(*b)
    assert a[0].transport is not None and b[0].transport is not None
    assert a[0].transport.session_id != b[0].transport.session_id


def test_application_data_both_ways_after_handshake() -> None:
    client, server = established_pair()
    ch = client.mux.open_channel("session", b"hello")
    pump(client, server)
    (req,) = server.events_received()
    assert isinstance(req, ChannelOpenRequest) and req.payload == b"hello"
    server.mux.accept_channel(req.channel_id, b"ok")
    pump(client, server)
    assert client.events_received() == [ChannelOpened(ch, b"ok")]
    client.mux.send_data(ch, b"ping")
    server.mux.send_data(req.channel_id, b"pong")
    pump(client, server)
    assert server.events_received() == [ChannelData(req.channel_id, b"ping", None)]
    assert client.events_received() == [ChannelData(ch, b"pong", None)]


# --------------------------------------------------------------------------- chunking


def _run_chunked(chunker: object) -> tuple[Connection, Connection, Wire]:
    client, server = make_pair()
    client.start(NOW)
    server.start(NOW)
    wire = pump(client, server, NOW, chunker=chunker)  # type: ignore[arg-type]
    return client, server, wire


def _assert_same_as_honest(client: Connection, server: Connection, wire: Wire) -> None:
    assert client.established and server.established, (client.terminated, server.terminated)
    assert wire.packets() == honest().packets()
    assert client.transport is not None and server.transport is not None
    assert client.transport.session_id == server.transport.session_id


def _split_one(index: int, positions: list[int]) -> object:
    """A chunker that cuts packet ``index`` at ``positions`` and feeds the rest whole."""

    def chunker(first: int, _direction: str, packets: list[bytes]) -> list[bytes]:
        chunks: list[bytes] = []
        for i, packet in enumerate(packets):
            if first + i == index:
                chunks.extend(cut(packet, positions))
            else:
                chunks.append(packet)
        return chunks

    return chunker


@pytest.mark.parametrize("index", range(len(MESSAGES)), ids=MESSAGES)
def test_message_fed_one_byte_at_a_time(index: int) -> None:
    """Feeding a message one byte per call makes the receiver see it cut at every byte
    boundary at once: the outcome must not change."""
    length = len(honest().packets()[index])
    _assert_same_as_honest(*_run_chunked(_split_one(index, list(range(1, length)))))


@pytest.mark.parametrize("index", range(len(MESSAGES)), ids=MESSAGES)
def test_message_split_in_two_at_every_boundary(index: int) -> None:
    """Two pieces, cut at every boundary: all of them for the small messages; for the big
    ones every boundary in and around the header plus the last few (the body in between is
    all the same to the framer, and the byte-at-a-time test covers it)."""
    length = len(honest().packets()[index])
    if length <= 200:
        boundaries = list(range(1, length))
    else:
        boundaries = [*range(1, HEADER_SIZE + 4), *range(length - 3, length)]
    for position in boundaries:
        _assert_same_as_honest(*_run_chunked(_split_one(index, [position])))


def test_whole_handshake_one_byte_at_a_time() -> None:
    def bytewise(_first: int, _direction: str, packets: list[bytes]) -> list[bytes]:
        data = b"".join(packets)
        return [data[i : i + 1] for i in range(len(data))]

    _assert_same_as_honest(*_run_chunked(bytewise))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_chunkings_give_identical_handshakes(data: st.DataObject) -> None:
    def random_cuts(_first: int, _direction: str, packets: list[bytes]) -> list[bytes]:
        blob = b"".join(packets)
        return cut(blob, data.draw(st.lists(st.integers(1, len(blob) - 1), max_size=10)))

    _assert_same_as_honest(*_run_chunked(random_cuts))


# --------------------------------------------------------------------------- tampering

HEADER_CODES = {E.INVALID_INPUT, E.INVALID_REQUEST, E.PACKET_UNSEQUENCED}
#: What may be reported when a body byte of each message is flipped, by whichever side
#: notices first (a forged token or name is only caught by the client's signature check).
BODY_CODES: dict[str, set[ErrorCode]] = {
    "connect_request": {E.UNKNOWN_PROTOCOL, E.INVALID_INPUT, E.KEY_UNRECOGNIZED,
                        E.VERIFY_FAILURE},
    "connect_response": {E.VERIFY_FAILURE, E.INVALID_INPUT, E.UNKNOWN_PROTOCOL},
    # A flipped ciphertext decapsulates (implicit rejection) to another secret; the next
    # sealed message then fails its tag.
    "exstart_request": {E.AUTHENTICATION_FAILURE, E.DECAPSULATION_FAILURE, E.INVALID_INPUT},
    "exchange_request": {E.AUTHENTICATION_FAILURE},
    "exstart_response": {E.EXSTART_FAILURE},
    "exchange_response": {E.HASH_INVALID, E.DECAPSULATION_FAILURE, E.INVALID_INPUT},
    "establish_request": {E.AUTHENTICATION_FAILURE},
    "establish_response": {E.AUTHENTICATION_FAILURE},
}
#: The receiver's step timeout code, for a length grown past what will ever arrive.
TIMEOUT_CODE = {
    "connect_request": E.CONNECT_FAILURE, "connect_response": E.CONNECT_FAILURE,
    "exstart_request": E.EXSTART_FAILURE, "exchange_request": E.EXCHANGE_FAILURE,
    "exstart_response": E.EXSTART_FAILURE, "exchange_response": E.EXCHANGE_FAILURE,
    "establish_request": E.ESTABLISH_FAILURE, "establish_response": E.ESTABLISH_FAILURE,
}


def expected_codes(index: int, position: int, tofu: bool = False) -> set[ErrorCode]:
    name = MESSAGES[index]
    if position == 0:
        return {E.INVALID_INPUT, E.INVALID_REQUEST}  # unknown flag / another message's flag
    if position < 9:
        return {E.PACKET_UNSEQUENCED}
    body = set(BODY_CODES[name])
    if tofu and name == "connect_response":
        body.add(E.KEY_EXPIRED)  # a lowered expiration is seen before the signature check
    if position < HEADER_SIZE:
        # A shorter body misparses or fails its tag; a longer one swallows the next packet,
        # is over the limit, or never completes (then the step times out).
        return body | HEADER_CODES | {TIMEOUT_CODE[name]}
    return body


@dataclass
class Outcome:
    client: Connection
    server: Connection
    wire: Wire
    timed_out: bool


def run_tampered(index: int, position: int, *, mask: int | None = None,
                 tofu: bool = False) -> Outcome:
    client, server = make_pair(trusted=None if tofu else host_key().public)
    client.start(NOW)
    server.start(NOW)

    def transform(i: int, _direction: str, packet: bytes) -> bytes:
        return flip(packet, position, mask) if i == index else packet

    wire = pump(client, server, NOW, transform=transform)
    timed_out = False
    if not (client.closed or server.closed):
        receiver = server if direction_of(index) == C2S else client
        assert receiver.next_timer() == NOW + STEP
        receiver.handle_timer(NOW + STEP)
        pump(client, server, NOW + STEP, wire=wire)
        timed_out = True
    return Outcome(client, server, wire, timed_out)


def check_tampered(index: int, position: int, *, mask: int | None = None,
                   tofu: bool = False) -> str | None:
    """Run one tampered handshake; return a description of what went wrong, or None."""
    original = honest(tofu).packets()[index]
    out = run_tampered(index, position, mask=mask, tofu=tofu)
    where = f"{MESSAGES[index]} byte {position}"
    ce, se = out.client.events_received(), out.server.events_received()
    ct, st_ = terminations(ce), terminations(se)
    forged_flag = flip(original, position, mask)[0] if position == 0 else None
    if forged_flag in (Flag.CONNECTION_TERMINATED, Flag.ERROR_CONDITION):
        # The flag now says "I am closing" / "I failed": in clear, before any key exists,
        # that is indistinguishable from the real thing (as a TCP RST would be). The
        # receiver ends by_peer and stays silent; the sender finds out by its step timeout.
        receiver, terms = (out.server, st_) if direction_of(index) == C2S else (out.client, ct)
        if len(terms) != 1 or not terms[0].by_peer or out.timed_out:
            return f"{where}: forged close/error flag gave {terms}"
        if out.wire.flights[-1].direction == (C2S if receiver is out.client else S2C):
            return f"{where}: the receiver answered a close"
        return None
    if len(ct) != 1 or len(st_) != 1:
        return f"{where}: terminations client={ct} server={st_}"
    if any(isinstance(e, HandshakeComplete) for e in ce) or out.client.established:
        return f"{where}: the client completed a tampered handshake"
    detectors = [(conn, t[0], d) for conn, t, d in ((out.client, ct, C2S),
                                                   (out.server, st_, S2C))
                 if not t[0].by_peer]
    if len(detectors) != 1:
        return f"{where}: expected exactly one side to detect, got client={ct} server={st_}"
    detector, term, direction = detectors[0]
    allowed = expected_codes(index, position, tofu)
    if term.code not in allowed:
        return f"{where}: {term.code.name} ({term.reason}) not in {sorted(c.name for c in allowed)}"
    if out.timed_out:
        old = int.from_bytes(original[9:13], "big")
        new = int.from_bytes(flip(original, position, mask)[9:13], "big")
        if not (9 <= position < HEADER_SIZE and new > old):
            return f"{where}: stalled although the length was not grown"
        if term.code != TIMEOUT_CODE[MESSAGES[index]]:
            return f"{where}: timed out with {term.code.name}"
    sent = last_sent(out.wire, direction)
    if sent is None or error_packet_code(sent) != term.code:
        return f"{where}: detector's last packet is not an error packet with {term.code.name}"
    peer = out.server if detector is out.client else out.client
    peer_term = st_[0] if peer is out.server else ct[0]
    if not peer_term.by_peer:
        return f"{where}: peer did not end by_peer: {peer_term}"
    if peer_term.code != term.code:
        return f"{where}: peer saw {peer_term.code.name}, detector sent {term.code.name}"
    if out.wire.flights[-1].direction != direction:
        return f"{where}: peer answered the error packet"
    return None


def _assert_all_detected(index: int, positions: list[int], **kwargs: object) -> None:
    failures = []
    for position in positions:
        problem = check_tampered(index, position, **kwargs)  # type: ignore[arg-type]
        if problem:
            failures.append(problem)
    assert not failures, f"{len(failures)} of {len(positions)} positions:\n" + "\n".join(
        failures[:15])


FULLY_TAMPERED = [i for i in range(len(MESSAGES)) if i != CONNECT_RESPONSE]


@pytest.mark.parametrize("index", FULLY_TAMPERED, ids=[MESSAGES[i] for i in FULLY_TAMPERED])
def test_every_byte_of_message_tampered(index: int) -> None:
    """Flip one bit (bit ``position % 8``) of every byte of the message, one run each.

    Each run must end the same clean way: exactly one side detects it with a code that
    makes sense for the message and position (a stalled length ends with the step's
    timeout), it sends a 0xFF error packet with that code as its last packet, the peer ends
    with ``by_peer=True`` and the same code and answers nothing, the client never completes,
    and nothing raises. The connect response (~6.6 kB) has its own tests below.
    """
    _assert_all_detected(index, list(range(len(honest().packets()[index]))))


def connect_response_layout(packet: bytes) -> tuple[list[int], list[int]]:
    """Split the connect response's byte positions into (structure, bulk): bulk is the
    verification key, the ephemeral KEM key and the signature; structure is everything
    else (header, suite fields, lengths, the host key blob's magic, id, expiry and name)."""
    body = packet[HEADER_SIZE:]
    r = Reader(body)
    bulk: list[tuple[int, int]] = []

    def pos() -> int:
        return HEADER_SIZE + len(body) - r.remaining

    r.u8()
    r.name()
    r.name()
    r.name()
    ChaffPolicy.decode(r)
    r.u16()
    blob_len = r.u32()
    blob_start = pos()
    blob = Reader(r.fixed(blob_len))
    blob.fixed(4 + 16 + 8)
    blob.name()
    vk_len = blob.u32()
    vk_start = blob_start + blob_len - blob.remaining
    bulk.append((vk_start, vk_start + vk_len))
    eph_len = r.u32()
    bulk.append((pos(), pos() + eph_len))
    r.fixed(eph_len)
    sig_len = r.u32()
    bulk.append((pos(), pos() + sig_len))
    r.fixed(sig_len)
    r.end()
    in_bulk = {p for a, b in bulk for p in range(a, b)}
    structure = [p for p in range(len(packet)) if p not in in_bulk]
    return structure, sorted(in_bulk)


def test_connect_response_layout_is_what_we_think() -> None:
    packet = honest().packets()[CONNECT_RESPONSE]
    structure, bulk = connect_response_layout(packet)
    sig = registry.signature(suites.DEFAULT_SIGNATURES[0])
    kem = registry.kem(suites.DEFAULT_KEMS[0])
    assert len(bulk) == (len(host_key().public.verification_key) + kem.public_key_size
                         + sig.max_signature_size)
    assert len(structure) + len(bulk) == len(packet)
    assert structure[:HEADER_SIZE] == list(range(HEADER_SIZE))


@pytest.mark.parametrize("tofu", [False, True], ids=["trusted", "tofu"])
def test_connect_response_structure_tampered(tofu: bool) -> None:
    """Every byte of the connect response outside the three bulk fields (header, suite,
    chaff, padding, every length, the host key's magic/id/expiry/algorithm), with the key
    trusted (compared first) and on first contact (only the signature protects it)."""
    structure, _ = connect_response_layout(honest(tofu).packets()[CONNECT_RESPONSE])
    _assert_all_detected(CONNECT_RESPONSE, structure, tofu=tofu)


_, _BULK = connect_response_layout(honest().packets()[CONNECT_RESPONSE])


@settings(max_examples=240, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.sampled_from(_BULK), mask=st.integers(1, 255), tofu=st.booleans())
def test_connect_response_bulk_tampered(position: int, mask: int, tofu: bool) -> None:
    """A hypothesis sample (>= 200 runs) of positions and bit masks in the verification
    key, the ephemeral key and the signature: ~6.4k bytes of the connect response are
    bulk, and one handshake per byte would cost more than everything else here. Every
    one of those bytes is under the signature (and the host key under the trust check),
    so a sample suffices to catch a parser or comparison that skips part of them."""
    problem = check_tampered(CONNECT_RESPONSE, position, mask=mask, tofu=tofu)
    assert problem is None, problem


# --------------------------------------------------------------------------- host keys


def _fails_with(client: Connection, server: Connection, code: ErrorCode, detector: str,
                now: float = NOW, server_now: float | None = None) -> None:
    client.start(now)
    server.start(now if server_now is None else server_now)
    wire = pump(client, server, now, server_now=server_now)
    ours, theirs = (client, server) if detector == "client" else (server, client)
    (mine,) = terminations(ours.events_received())
    (peers,) = terminations(theirs.events_received())
    assert mine.code == code and not mine.by_peer, mine
    assert peers.code == code and peers.by_peer, peers
    direction = C2S if detector == "client" else S2C
    sent = last_sent(wire, direction)
    assert sent is not None and error_packet_code(sent) == code
    assert wire.flights[-1].direction == direction  # no answer to the error packet
    assert not client.established and not server.established


def test_wrong_host_key_same_id_is_verify_failure() -> None:
    """An impostor presents a key with the trusted key's ID but another key pair."""
    real = host_key()
    other = host_key(seed=b"impostor")
    impostor = HostKey(PublicKey(real.public.key_id, real.public.expiration, "mldsa65",
                                 other.public.verification_key), other.signing_key)
    _fails_with(*make_pair(host_keys=[impostor], trusted=real.public), E.VERIFY_FAILURE,
                "client")


def test_trusted_key_unknown_to_server_is_key_unrecognized() -> None:
    _fails_with(*make_pair(trusted=host_key(seed=b"some other server").public),
                E.KEY_UNRECOGNIZED, "server")


@pytest.mark.parametrize("tofu", [False, True], ids=["trusted", "tofu"])
def test_expired_host_key_refused_by_server(tofu: bool) -> None:
    expired = host_key(seed=b"expired", born=NOW - 1000, lifetime=1000)
    assert expired.public.is_expired(NOW)
    _fails_with(*make_pair(host_keys=[expired], trusted=None if tofu else expired.public),
                E.KEY_EXPIRED, "server")


@pytest.mark.parametrize("tofu", [False, True], ids=["trusted", "tofu"])
def test_expired_host_key_refused_by_client(tofu: bool) -> None:
    """The server's clock says the key is fine; the client's says it expired."""
    expiring = host_key(seed=b"expiring", born=NOW - 1000, lifetime=1100)
    _fails_with(*make_pair(host_keys=[expiring], trusted=None if tofu else expiring.public),
                E.KEY_EXPIRED, "client", now=NOW + 200, server_now=NOW)


def test_tofu_waits_for_the_decision_then_proceeds() -> None:
    client, server = make_pair(trusted=None)
    client.start(NOW)
    server.start(NOW)
    wire = pump(client, server)
    (event,) = client.events_received()
    assert event == HostKeyUnverified(host_key().public)
    assert len(wire.flights) == 2  # request, response: then nothing until we decide
    assert take(client) == b"" and not client.established and not client.closed
    assert client.handshake.state is State.AWAIT_HOST_KEY_DECISION
    assert client.next_timer() is None  # a human may take their time
    client.handle_timer(NOW + 10 * STEP)
    assert take(client) == b"" and not client.closed
    assert pump(client, server).flights == []
    client.accept_host_key()
    pump(client, server)
    assert client.established and server.established
    assert [type(e) for e in client.events_received()] == [HandshakeComplete]


def test_tofu_reject_is_verify_failure() -> None:
    client, server = make_pair(trusted=None)
    client.start(NOW)
    server.start(NOW)
    pump(client, server)
    client.events_received()
    client.reject_host_key()
    wire = pump(client, server)
    (mine,) = terminations(client.events_received())
    (peers,) = terminations(server.events_received())
    assert (mine.code, mine.by_peer) == (E.VERIFY_FAILURE, False)
    assert (peers.code, peers.by_peer) == (E.VERIFY_FAILURE, True)
    assert [f.direction for f in wire.flights] == [C2S]
    assert error_packet_code(wire.flights[0].packets[0]) == E.VERIFY_FAILURE


def test_host_key_decision_only_when_pending() -> None:
    client, server = make_pair()
    with pytest.raises(UsageError):
        client.accept_host_key()
    with pytest.raises(UsageError):
        server.accept_host_key()
    with pytest.raises(UsageError):
        server.reject_host_key()


def test_tofu_chooses_by_client_preference_among_server_keys() -> None:
    keys = [host_key("mldsa65"), host_key("mldsa87")]
    client, server = make_pair(trusted=None, host_keys=keys,
                               offer=Offer(signatures=("mldsa87", "mldsa65")))
    client.start(NOW)
    server.start(NOW)
    pump(client, server)
    (event,) = client.events_received()
    assert isinstance(event, HostKeyUnverified) and event.host_key == keys[1].public


# --------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("offer", "policy"),
    [
        (Offer(kems=("mlkem1024",)), ServerPolicy(kems=("mlkem768", "mlkem768x25519"))),
        (Offer(aeads=("chacha20poly1305",)), ServerPolicy(aeads=("aes256gcm",))),
        (Offer(signatures=("mldsa87",)), None),  # the server only has an mldsa65 key
    ],
    ids=["kem", "aead", "signature"],
)
def test_no_common_suite_is_unknown_protocol(offer: Offer, policy: ServerPolicy | None) -> None:
    for trusted in (None, host_key().public):
        _fails_with(*make_pair(offer=offer, policy=policy, trusted=trusted),
                    E.UNKNOWN_PROTOCOL, "server")


def test_unsupported_version_is_unknown_protocol() -> None:
    server = make_pair()[1]
    server.start(NOW)
    request = ConnectRequest((max(SUPPORTED_VERSIONS) + 1,), NO_KEY_ID, bytes(32), Offer())
    server.receive_data(encode_packet(Flag.CONNECT_REQUEST, 0, request.encode()), NOW)
    (term,) = terminations(server.events_received())
    assert (term.code, term.by_peer) == (E.UNKNOWN_PROTOCOL, False)
    assert error_packet_code(take(server)) == E.UNKNOWN_PROTOCOL


def test_server_takes_the_clients_first_choice_it_allows() -> None:
    offer = Offer(kems=("mlkem1024", "mlkem768", "mlkem768x25519"),
                  aeads=("chacha20poly1305", "aes256gcm"))
    client, server = make_pair(offer=offer, policy=ServerPolicy(kems=("mlkem768",
                                                                      "mlkem768x25519")))
    handshake(client, server)
    assert client.transport is not None
    assert client.transport.suite.kem == "mlkem768"
    assert client.transport.suite.aead == "chacha20poly1305"


def _suite_combinations() -> list[tuple[str, str, str]]:
    """All of them when there are few (built-in only: 12); with liboqs the product is 196
    handshakes (125 s) that add no case to every algorithm beside the first of the others."""
    kems, sigs, aeads = (registry.available_kems(), registry.available_signatures(),
                         registry.available_aeads())
    product = list(itertools.product(kems, sigs, aeads))
    if len(product) <= 32:
        return product
    return sorted({*((k, sigs[0], aeads[0]) for k in kems),
                   *((kems[0], s, aeads[0]) for s in sigs),
                   *((kems[-1], sigs[-1], a) for a in aeads)})


SUITE_COMBINATIONS = _suite_combinations()


@pytest.mark.parametrize(("kem", "sig", "aead"), SUITE_COMBINATIONS,
                         ids=["-".join(c) for c in SUITE_COMBINATIONS])
def test_every_registered_suite_establishes(kem: str, sig: str, aead: str) -> None:
    keys = [host_key(name) for name in registry.available_signatures()]
    client, server = make_pair(offer=Offer(kems=(kem,), signatures=(sig,), aeads=(aead,)),
                               host_keys=keys, trusted=host_key(sig).public)
    ch = client.mux.open_channel("session", b"early")
    handshake(client, server)
    c_done = client.events_received()[0]
    assert isinstance(c_done, HandshakeComplete)
    assert (c_done.suite.kem, c_done.suite.signature, c_done.suite.aead) == (kem, sig, aead)
    s_events = server.events_received()
    assert isinstance(s_events[0], HandshakeComplete) and s_events[0].suite == c_done.suite
    assert s_events[0].session_id == c_done.session_id
    assert isinstance(s_events[1], ChannelOpenRequest)
    server.mux.accept_channel(s_events[1].channel_id)
    server.mux.send_data(s_events[1].channel_id, b"output")
    pump(client, server)
    assert client.events_received() == [ChannelOpened(ch, b""), ChannelData(ch, b"output", None)]


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("cut_at", "side", "code"),
    [
        (0, "server", E.CONNECT_FAILURE),    # no connect request ever arrives
        (0, "client", E.CONNECT_FAILURE),    # no connect response
        (1, "server", E.EXSTART_FAILURE),    # response lost: no exstart request
        (2, "client", E.EXSTART_FAILURE),    # exstart/exchange lost: no exstart response
        (3, "server", E.EXCHANGE_FAILURE),   # exchange request lost
        (5, "client", E.EXCHANGE_FAILURE),   # exchange response lost
        (5, "server", E.ESTABLISH_FAILURE),  # ... so no establish request either
        (6, "server", E.ESTABLISH_FAILURE),  # establish request lost
        (6, "client", E.ESTABLISH_FAILURE),  # so no establish response
    ],
)
def test_step_timeout(cut_at: int, side: str, code: ErrorCode) -> None:
    """The wire goes dead from packet ``cut_at`` on; the side waiting reports its phase's
    code when its timer fires, sends it as an error packet, and the peer ends by_peer."""
    client, server = make_pair(step_timeout=STEP)
    client.start(NOW)
    server.start(NOW)
    pump(client, server, NOW, transform=lambda i, _d, p: p if i < cut_at else b"")
    me, peer = (client, server) if side == "client" else (server, client)
    assert not me.closed
    assert me.next_timer() == NOW + STEP
    me.handle_timer(NOW + STEP - 0.001)
    assert not me.closed and take(me) == b""
    me.handle_timer(NOW + STEP)
    (term,) = terminations(me.events_received())
    assert (term.code, term.by_peer) == (code, False)
    assert me.next_timer() is None
    sent = take(me)
    assert error_packet_code(sent) == code and len(sent) == HEADER_SIZE + 1
    if not peer.closed:
        peer.receive_data(sent, NOW + STEP)
        (peer_term,) = terminations(peer.events_received())
        assert (peer_term.code, peer_term.by_peer) == (code, True)
        assert take(peer) == b""


def test_server_allows_a_host_key_decision_its_grace_time() -> None:
    """After its connect response the server waits up to the host-key grace (default 120 s,
    OpenSSH's LoginGraceTime), not one 30 s step: the client may be a person comparing a
    fingerprint. Every other step keeps the step timeout."""
    client = Connection(ClientHandshake(Offer(), None, rng=rng_for(CLIENT_SEED)),
                        rng=rng_for(CLIENT_SEED))
    server = Connection(ServerHandshake((host_key(),), rng=rng_for(SERVER_SEED)),
                        rng=rng_for(SERVER_SEED))
    client.start(NOW)
    server.start(NOW)
    assert server.next_timer() == NOW + DEFAULT_STEP_TIMEOUT
    pump(client, server, NOW)
    assert any(isinstance(e, HostKeyUnverified) for e in client.events_received())
    assert client.next_timer() is None  # the client waits for its user
    assert server.next_timer() == NOW + DEFAULT_HOST_KEY_GRACE
    server.handle_timer(NOW + DEFAULT_HOST_KEY_GRACE - 1)
    assert not server.closed
    client.accept_host_key()
    pump(client, server, NOW + DEFAULT_HOST_KEY_GRACE - 1)
    assert client.established and server.established


# --------------------------------------------------------------------------- error packets


@pytest.mark.parametrize("stage", range(4))
@pytest.mark.parametrize(("body", "code"), [
    (bytes([E.KEY_EXPIRED]), E.KEY_EXPIRED),
    (bytes([E.UNKNOWN_PROTOCOL]), E.UNKNOWN_PROTOCOL),
    (b"\x99", E.INVALID_INPUT),  # a code we do not know
    (b"", E.INVALID_INPUT),      # no code at all
])
def test_peer_error_packet_ends_us_without_reply(stage: int, body: bytes,
                                                 code: ErrorCode) -> None:
    """At each point of the handshake, an error packet from the peer ends our side with
    by_peer=True and that code, and we send nothing back."""
    client, server = make_pair()
    client.start(NOW)
    server.start(NOW)
    # stage 0: nothing delivered; 1: request delivered; 2: response too; 3: exstart and
    # exchange requests too.
    pump(client, server, NOW, transform=lambda i, _d, p: p if i < stage else b"")
    take(client)
    take(server)
    victim, sender = (client, server) if stage in (1, 3) else (server, client)
    victim.events_received()
    seq = sender.handshake.tx_seq
    victim.receive_data(encode_packet(Flag.ERROR_CONDITION, seq, body), NOW)
    (term,) = terminations(victim.events_received())
    assert (term.code, term.by_peer) == (code, True)
    assert take(victim) == b""
    victim.handle_timer(NOW + 1000)
    victim.receive_data(b"more", NOW)
    assert take(victim) == b"" and victim.events_received() == []


def test_eof_during_handshake_is_channel_down_without_reply() -> None:
    client, _server = make_pair()
    client.start(NOW)
    client.receive_data(b"", NOW)
    (term,) = terminations(client.events_received())
    assert (term.code, term.by_peer) == (E.CHANNEL_DOWN, True)
    assert take(client) != b""  # the connect request queued before the EOF
    assert take(client) == b""


def test_established_peer_accepts_handshake_error_packet() -> None:
    """The server is established once it sends its establish response; if the client then
    rejects that response (here: a flipped tag byte) it can only answer with a plaintext
    error packet. The established server must take it as the end of the connection, as it
    would have one packet earlier, and not answer it."""
    client, server = make_pair()
    client.start(NOW)
    server.start(NOW)
    last = len(honest().packets()[ESTABLISH_RESPONSE]) - 1
    wire = pump(client, server, NOW,
                transform=lambda i, _d, p: flip(p, last) if i == ESTABLISH_RESPONSE else p)
    (c_term,) = terminations(client.events_received())
    assert (c_term.code, c_term.by_peer) == (E.AUTHENTICATION_FAILURE, False)
    (s_term,) = terminations(server.events_received())
    assert (s_term.code, s_term.by_peer) == (E.AUTHENTICATION_FAILURE, True)
    assert wire.flights[-1].direction == C2S  # the server did not answer


def test_close_during_handshake_ends_peer_cleanly() -> None:
    client, server = make_pair()
    client.start(NOW)
    server.start(NOW)
    pump(client, server, NOW, transform=lambda i, _d, p: p if i < 1 else b"")
    client.close("changed my mind")
    wire = pump(client, server)
    (c_term,) = terminations(client.events_received())
    assert (c_term.code, c_term.by_peer) == (E.NONE, False)
    assert [p[0] for p in wire.packets(C2S)] == [Flag.CONNECTION_TERMINATED]
    (s_term,) = terminations(server.events_received())
    assert (s_term.code, s_term.by_peer) == (E.NONE, True)
    assert wire.packets(S2C) == []


# --------------------------------------------------------------------------- round trips


def test_client_sends_application_data_after_two_round_trips() -> None:
    """Flights: request | response | exstart+exchange | exstart resp+exchange resp |
    establish request + application data | establish response (+ the server's answer).
    The client's first command leaves with its third flight: two round trips after TCP's."""
    client, server = make_pair()
    ch = client.mux.open_channel("session", b"exec: true")
    client.mux.send_data(ch, b"stdin")  # waits for the confirmation, not for the handshake

    def server_app(conn: Connection) -> None:
        if conn is server:
            for event in server.events_received():
                if isinstance(event, ChannelOpenRequest):
                    server.mux.accept_channel(event.channel_id)
                    server.mux.send_data(event.channel_id, b"output")

    client.start(NOW)
    server.start(NOW)
    wire = pump(client, server, NOW, on_receive=server_app)
    assert [f.direction for f in wire.flights[:6]] == [C2S, S2C] * 3
    c2s = [f.flags for f in wire.flights if f.direction == C2S]
    s2c = [f.flags for f in wire.flights if f.direction == S2C]
    assert c2s[:3] == [[Flag.CONNECT_REQUEST], [Flag.EXSTART_REQUEST, Flag.EXCHANGE_REQUEST],
                       [Flag.ESTABLISH_REQUEST, Flag.ENCRYPTED_MESSAGE]]
    assert s2c[:2] == [[Flag.CONNECT_RESPONSE], [Flag.EXSTART_RESPONSE, Flag.EXCHANGE_RESPONSE]]
    first_app_flight = next(i for i, flags in enumerate(c2s) if Flag.ENCRYPTED_MESSAGE in flags)
    round_trips = first_app_flight  # each earlier client flight waited for one server flight
    assert round_trips == 2
    # The server's answer (confirmation + output) rides with its establish response.
    assert s2c[2][0] == Flag.ESTABLISH_RESPONSE and Flag.ENCRYPTED_MESSAGE in s2c[2]
    assert ChannelData(ch, b"output", None) in client.events_received()


# --------------------------------------------------------------------------- client checks


def rogue_connect_response(request: bytes, suite: Suite, key: HostKey, rng: Rng) -> bytes:
    """A correctly signed connect response carrying whatever ``suite`` we like: what a
    server that ignores its own negotiation rules would send."""
    transcript = Transcript()
    transcript.add(request)
    ephemeral = registry.kem(suite.kem).generate(rng).public_bytes()
    unsigned = ConnectResponse(suite, key.public.encode(), ephemeral, b"").encode_unsigned()
    sig_len = registry.signature(suite.signature).max_signature_size
    header = encode_header(Flag.CONNECT_RESPONSE, 0, len(unsigned) + 4 + sig_len)
    signature = key.sign(signed_data(transcript.digest_with(header, unsigned)), rng)
    return header + unsigned + Writer().vbytes(signature).getvalue()


def _client_reaction(offer: Offer, suite: Suite) -> ConnectionTerminated | None:
    client = make_pair(offer=offer)[0]
    client.start(NOW)
    request = take(client)
    client.receive_data(rogue_connect_response(request, suite, host_key(),
                                               DeterministicRng(b"rogue")), NOW)
    terms = terminations(client.events_received())
    if not terms:
        assert [p[0] for p in split_packets(take(client))] == [Flag.EXSTART_REQUEST,
                                                               Flag.EXCHANGE_REQUEST]
        return None
    assert error_packet_code(take(client)) == terms[0].code
    return terms[0]


HONEST_SUITE = Suite(1, "mlkem768x25519", "mldsa65", "aes256gcm", CHAFF_OFF, 64)


def test_rogue_server_helper_is_sound() -> None:
    assert _client_reaction(Offer(), HONEST_SUITE) is None


@pytest.mark.parametrize(("change", "code"), [
    ({"kem": "mlkem1024"}, E.UNKNOWN_PROTOCOL),
    ({"aead": "chacha20poly1305"}, E.UNKNOWN_PROTOCOL),
    ({"padding_max": 65}, E.INVALID_INPUT),
    ({"version": 2}, E.UNKNOWN_PROTOCOL),
])
def test_client_refuses_a_choice_it_did_not_offer(change: dict[str, object],
                                                  code: ErrorCode) -> None:
    offer = Offer(kems=("mlkem768x25519",), aeads=("aes256gcm",), padding_max=64)
    term = _client_reaction(offer, HONEST_SUITE.replace(**change))
    assert term is not None and term.code == code


@pytest.mark.parametrize(("asked", "answer"), [
    (CHAFF_OFF, ChaffPolicy(True, 10, 10, 16384, 16384)),       # not asked for at all
    (ChaffPolicy(True, 1000, 2000, 16, 64), ChaffPolicy(True, 10, 2000, 16, 64)),  # faster
    (ChaffPolicy(True, 1000, 2000, 16, 64), ChaffPolicy(True, 1000, 2000, 16, 4096)),  # bigger
], ids=["unasked", "more-often", "larger"])
def test_client_refuses_chaff_beyond_its_request(asked: ChaffPolicy,
                                                 answer: ChaffPolicy) -> None:
    """Otherwise a server could make the client upload 16 KiB every 10 ms."""
    term = _client_reaction(Offer(chaff=asked), HONEST_SUITE.replace(chaff=answer))
    assert term is not None and term.code in (E.INVALID_INPUT, E.UNKNOWN_PROTOCOL)


def test_client_accepts_chaff_sparser_and_smaller_than_asked() -> None:
    asked = ChaffPolicy(True, 100, 200, 16, 512)
    answer = ChaffPolicy(True, 500, 500, 16, 100)
    assert _client_reaction(Offer(chaff=asked),
                            HONEST_SUITE.replace(chaff=answer)) is None


# --------------------------------------------------------------------------- decoders


@settings(max_examples=150)
@given(body=st.binary(max_size=300))
def test_connect_request_decoder_on_garbage(body: bytes) -> None:
    with contextlib.suppress(QsmpError):
        ConnectRequest.decode(body)


@settings(max_examples=150)
@given(body=st.binary(max_size=300))
def test_connect_response_decoder_on_garbage(body: bytes) -> None:
    with contextlib.suppress(QsmpError):
        ConnectResponse.decode(body, Offer())


# Extensions this version does not know (the one it knows, EXT_OBSCURE, is decoded into the
# offer and has tests of its own).
extension_blobs = st.dictionaries(st.integers(0, 0xFFFF).filter(lambda k: k != EXT_OBSCURE),
                                  st.binary(max_size=20), max_size=4).map(
    lambda d: b"".join(Writer().u16(k).u16(len(v)).fixed(v).getvalue() for k, v in d.items()))


@given(kems=st.lists(st.sampled_from(registry.available_kems()), min_size=1, max_size=3),
       padding=st.integers(0, MAX_PADDING), token=st.binary(min_size=32, max_size=32),
       key_id=st.binary(min_size=16, max_size=16), ext=extension_blobs,
       chaff=st.booleans())
def test_connect_request_round_trip(kems: list[str], padding: int, token: bytes,
                                    key_id: bytes, ext: bytes, chaff: bool) -> None:
    offer = Offer(kems=tuple(kems), chaff=ChaffPolicy(chaff), padding_max=padding)
    request = ConnectRequest(SUPPORTED_VERSIONS, key_id, token, offer, ext)
    assert ConnectRequest.decode(request.encode()) == request


@pytest.mark.parametrize(("padding", "ext"), [
    (MAX_PADDING + 1, b""),                                       # padding over the bound
    (0, b"\x00\x01\x00\x00" * 2),                                 # duplicate extension
    (0, b"\x00\x01\x00\x05ab"),                                  # truncated extension
])
def test_connect_request_bounds(padding: int, ext: bytes) -> None:
    request = ConnectRequest(SUPPORTED_VERSIONS, NO_KEY_ID, bytes(32),
                             Offer(padding_max=padding), ext)
    with pytest.raises(QsmpError):
        ConnectRequest.decode(request.encode())


def test_server_handshake_needs_a_key() -> None:
    with pytest.raises(UsageError):
        ServerHandshake([])
    client, _server = make_pair()
    client.start(NOW)
    with pytest.raises(UsageError):
        client.handshake.start(NOW)
