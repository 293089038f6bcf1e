#!/usr/bin/env python3
"""Regenerate tests/vectors/handshake.json: one complete, reproducible QSMP session.

    python tests/vectors/make_vectors.py          # rewrite handshake.json
    python tests/vectors/make_vectors.py --check  # exit 1 if the file is out of date

A client and a server core run back to back with seeded deterministic RNGs at a fixed time:
the full handshake, then one application exchange each way (the client opens a channel with a
fixed payload, the server accepts it, each side sends fixed data) and the client's clean close.
Every packet is recorded in wire order with its direction.

The per-direction keys are not read out of the cores. They are recomputed here from the
recorded packets with the public building blocks only (the KEM, the key schedule, SHA3), and
the two KEM secrets are found by regenerating each side's ephemeral KEM key from its recorded
RNG draws. The result is checked against what the cores agreed on (the chain values and the
session id they report), then used to decrypt every sealed packet with the plain AEAD from
``cryptography``. So the file also proves that the key schedule in docs/PROTOCOL.md is what
the code does. tests/test_vectors.py re-runs all of this.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import (  # noqa: E402
    AESGCM,
    ChaCha20Poly1305,
)

from common.accounts.keys import HostKey  # noqa: E402
from common.crypto import registry  # noqa: E402
from common.crypto.rng import DeterministicRng  # noqa: E402
from common.protocol.connection import Connection  # noqa: E402
from common.protocol.handshake import (  # noqa: E402
    ClientHandshake,
    ConnectRequest,
    ConnectResponse,
    ServerHandshake,
)
from common.protocol.mux import ChannelData, ChannelOpened, ChannelOpenRequest  # noqa: E402
from common.protocol.negotiation import ChaffPolicy, Offer, Suite  # noqa: E402
from common.protocol.schedule import (  # noqa: E402
    LABEL_C2S,
    LABEL_S2C,
    DirectionKeys,
    derive_direction,
    exchange_mac,
    session_cookie,
    signed_data,
)
from common.wire import HEADER_SIZE, Flag, Reader, decode_header  # noqa: E402

VECTORS = Path(__file__).resolve().parent / "handshake.json"

CLIENT_SEED = b"qsh test vector client"
SERVER_SEED = b"qsh test vector server"
HOST_KEY_SEED = b"qsh test vector host key"
#: 2023-11-14T22:13:20Z. The host key was made a day earlier and is valid for ten years.
NOW = 1_700_000_000.0
HOST_KEY_BORN = NOW - 86_400
HOST_KEY_ALGORITHM = "mldsa65"
#: Pinned here, not taken from the defaults, so the vectors only change with the protocol.
OFFER = Offer(
    kems=("mlkem768x25519", "mlkem768", "mlkem1024"),
    signatures=("mldsa65", "mldsa87"),
    aeads=("aes256gcm", "chacha20poly1305"),
    chaff=ChaffPolicy(),
    padding_max=64,
)
CHANNEL_KIND = "session"
OPEN_PAYLOAD = b"qsh test vector: open"
ACCEPT_PAYLOAD = b"qsh test vector: accepted"
CLIENT_DATA = b"qsh test vector: client to server"
SERVER_DATA = b"qsh test vector: server to client"
CLOSE_REASON = "qsh test vector: done"

C2S, S2C = "c2s", "s2c"
_AEADS: dict[str, Callable[[bytes], Any]] = {
    "aes256gcm": AESGCM,
    "chacha20poly1305": ChaCha20Poly1305,
}
_PROTOCOL_ORDER = (
    Flag.CONNECT_REQUEST, Flag.CONNECT_RESPONSE, Flag.EXSTART_REQUEST, Flag.EXSTART_RESPONSE,
    Flag.EXCHANGE_REQUEST, Flag.EXCHANGE_RESPONSE, Flag.ESTABLISH_REQUEST,
    Flag.ESTABLISH_RESPONSE,
)

DESCRIPTION = [
    "One complete qsh/QSMP v1 session, byte for byte: handshake, a channel open with",
    "payload, one data message each way, and the client's clean close.",
    "",
    "How to use it from another implementation:",
    "1. Parsing/verifying as a client: feed the s2c packets to your client. The connect",
    "   response must verify under inputs.host_key.public_hex (signature over",
    "   signed_data(transcript.signature_hash)). You cannot reproduce the c2s bytes unless",
    "   your randomness replays rng_draws.client in order, but every value you need to",
    "   check the server's messages is recorded.",
    "2. Key schedule: from keys.c2s.shared_secret / keys.s2c.shared_secret, keys.cookie and",
    "   the transcript hashes, KMAC256 (key=shared secret, data=cookie||transcript hash,",
    "   custom='qsh traffic c2s'|'qsh traffic s2c', 76 bytes) must give key(32)||iv(12)||",
    "   chain(32). cookie = SHA3-256(session token || configuration || host key blob).",
    "3. Transcript: SHA3-256 over whole packets (header and body) in protocol order",
    "   (connect request, connect response, exstart request, exstart response, exchange",
    "   request, exchange response, establish request, establish response), which differs",
    "   from wire order because the client pipelines the exchange request. session_id is",
    "   the hash of the first seven (through the establish request).",
    "4. Records: every packet with a 'plaintext_hex' is sealed with the suite's AEAD under",
    "   its direction's key; nonce = iv XOR the header's sequence number (12 bytes, big-",
    "   endian), associated data = the 13-byte header. Decrypt each and compare.",
    "   Application records' plaintext is inner_type u8 | padding length u16 | body | zero",
    "   padding; the sealed handshake messages have no inner header. The establish",
    "   request carries key_id || transcript.client_confirmation_hash, the establish",
    "   response key_id || session_id.",
    "5. Reproducing every byte: seed your RNG so that it returns rng_draws.<side> in",
    "   order (they are SHAKE-256(b'qsh deterministic rng' || seed || counter u64 BE) of",
    "   the requested size, counter starting at 0 per side), run at inputs.now, and",
    "   follow the application script in inputs.application.",
    "Integers are big-endian. All byte strings are lowercase hex.",
    "Regenerate with: python tests/vectors/make_vectors.py",
]


class RecordingRng:
    """A DeterministicRng that remembers every draw, so the generator can find the KEM
    seeds afterwards without looking inside the cores."""

    def __init__(self, seed: bytes) -> None:
        self._inner = DeterministicRng(seed)
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        data = self._inner(n)
        self.draws.append(bytes(bytearray(data)))  # a copy: the cores zero theirs (MAC key)
        return data


def make_host_key() -> HostKey:
    return HostKey.generate(HOST_KEY_ALGORITHM, now=HOST_KEY_BORN,
                            rng=DeterministicRng(HOST_KEY_SEED))


def make_client(rng: Callable[[int], bytes], host: HostKey) -> tuple[Connection, int]:
    client = Connection(ClientHandshake(OFFER, host.public, rng=rng), rng=rng)
    channel = client.mux.open_channel(CHANNEL_KIND, OPEN_PAYLOAD)
    return client, channel


def make_server(rng: Callable[[int], bytes], host: HostKey) -> Connection:
    return Connection(ServerHandshake([host], rng=rng), rng=rng)


@dataclass
class Script:
    """The application on both ends, as reactions to events (run after each flight)."""

    client: Connection | None = None
    server: Connection | None = None
    channel: int = 0
    events: dict[str, list[object]] = field(default_factory=lambda: {C2S: [], S2C: []})

    def react(self, conn: Connection) -> None:
        events = conn.events_received()
        if conn is self.client:
            self.events[S2C].extend(events)
            for event in events:
                if isinstance(event, ChannelOpened):
                    conn.mux.send_data(self.channel, CLIENT_DATA)
                elif isinstance(event, ChannelData):
                    conn.close(CLOSE_REASON)
        else:
            self.events[C2S].extend(events)
            for event in events:
                if isinstance(event, ChannelOpenRequest):
                    conn.mux.accept_channel(event.channel_id, ACCEPT_PAYLOAD)
                elif isinstance(event, ChannelData):
                    conn.mux.send_data(event.channel_id, SERVER_DATA)


def take(conn: Connection) -> bytes:
    return b"".join(bytes(chunk) for chunk in conn.data_to_send())


def split_packets(data: bytes) -> list[bytes]:
    packets = []
    pos = 0
    while pos < len(data):
        header = decode_header(data[pos : pos + HEADER_SIZE], 1 << 32)
        packets.append(data[pos : pos + HEADER_SIZE + header.length])
        pos += HEADER_SIZE + header.length
    return packets


def run_session(client_rng: Callable[[int], bytes], server_rng: Callable[[int], bytes]
                ) -> tuple[list[tuple[str, list[bytes]]], Script]:
    """Both cores back to back; returns the flights (direction, packets) in wire order."""
    host = make_host_key()
    client, channel = make_client(client_rng, host)
    server = make_server(server_rng, host)
    script = Script(client, server, channel)
    client.start(NOW)
    server.start(NOW)
    flights: list[tuple[str, list[bytes]]] = []
    moved = True
    while moved:
        moved = False
        for src, dst, direction in ((client, server, C2S), (server, client, S2C)):
            data = take(src)
            if data:
                moved = True
                flights.append((direction, split_packets(data)))
                dst.receive_data(data, NOW)
                script.react(dst)
    if not (client.closed and server.closed):
        raise RuntimeError("the scripted session did not run to its close")
    return flights, script


# --------------------------------------------------------------------------- recomputation


def sha3(*parts: bytes) -> bytes:
    return hashlib.sha3_256(b"".join(parts)).digest()


def nonce(iv: bytes, sequence: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ sequence).to_bytes(12, "big")


def open_sealed(aead: str, keys: DirectionKeys, packet: bytes) -> bytes:
    header = decode_header(packet[:HEADER_SIZE], 1 << 32)
    impl = _AEADS[aead](keys.key)
    return bytes(impl.decrypt(nonce(keys.iv, header.sequence), packet[HEADER_SIZE:],
                              packet[:HEADER_SIZE]))


def find_kem_seed(kem_name: str, draws: list[bytes], public: bytes) -> int:
    """Index of the draw that, used as the KEM's key generation randomness, gives ``public``."""
    kem = registry.kem(kem_name)
    for i, draw in enumerate(draws):
        try:
            key = kem.generate(lambda n, d=draw: d if n == len(d) else b"")
        except Exception:  # a draw of the wrong size is simply not this one
            continue
        if key.public_bytes() == public:
            return i
    raise RuntimeError("no recorded draw generates the ephemeral key")


def recompute(packets: list[tuple[str, bytes]], suite: Suite, client_draws: list[bytes],
              server_draws: list[bytes]) -> dict[str, Any]:
    by_flag = {p[0]: p for _, p in packets if p[0] in _PROTOCOL_ORDER}
    creq, cresp, xs_req, xs_resp, xc_req, xc_resp, est_req, _est_resp = (
        by_flag[f] for f in _PROTOCOL_ORDER)
    request = ConnectRequest.decode(creq[HEADER_SIZE:])
    response, signed_len = ConnectResponse.decode(cresp[HEADER_SIZE:], request.offer)
    kem = registry.kem(suite.kem)
    cookie = session_cookie(request.session_token, suite.configuration(), response.host_key)

    server_seed_index = find_kem_seed(suite.kem, server_draws, response.ephemeral_key)
    server_kem = kem.generate(lambda n: server_draws[server_seed_index])
    ct1 = Reader(xs_req[HEADER_SIZE:]).vbytes(kem.ciphertext_size)
    ss1 = server_kem.decapsulate(ct1)
    th_c2s = sha3(creq, cresp, xs_req)
    c2s = derive_direction(ss1, cookie, th_c2s, LABEL_C2S)

    exchange_plain = Reader(open_sealed(suite.aead, c2s, xc_req))
    client_public = exchange_plain.vbytes(kem.public_key_size)
    mac_key = exchange_plain.fixed(32)
    exchange_plain.end()
    client_seed_index = find_kem_seed(suite.kem, client_draws, client_public)
    client_kem = kem.generate(lambda n: client_draws[client_seed_index])
    r = Reader(xc_resp[HEADER_SIZE:])
    mac = r.fixed(32)
    ct2 = r.vbytes(kem.ciphertext_size)
    th_mac = sha3(creq, cresp, xs_req, xs_resp, xc_req)
    if exchange_mac(mac_key, th_mac, ct2) != mac:
        raise RuntimeError("exchange MAC does not recompute")
    ss2 = client_kem.decapsulate(ct2)
    th_s2c = sha3(creq, cresp, xs_req, xs_resp, xc_req, xc_resp)
    s2c = derive_direction(ss2, cookie, th_s2c, LABEL_S2C)
    # The session id is the transcript through the establish request: the client knows it
    # when it sends that request (pipelined data may be bound to it); the server's
    # confirmation in the establish response is key_id || session id.
    session_id = sha3(creq, cresp, xs_req, xs_resp, xc_req, xc_resp, est_req)
    signature_hash = sha3(creq, cresp[: HEADER_SIZE + signed_len])
    if not registry.signature(suite.signature).verify(
            make_host_key().public.verification_key, signed_data(signature_hash),
            response.signature):
        raise RuntimeError("the connect response signature does not verify")

    # Label the draws whose use can be shown by redoing the operation with them.
    labels: dict[str, dict[int, str]] = {
        C2S: {client_seed_index: "client ephemeral KEM key generation"},
        S2C: {server_seed_index: "server ephemeral KEM key generation"},
    }
    host = make_host_key()
    for i, draw in enumerate(client_draws):
        if draw == request.session_token:
            labels[C2S][i] = "session token"
        elif draw == mac_key:
            labels[C2S][i] = "exchange MAC key"
        elif _encapsulates(kem.encapsulate, response.ephemeral_key, draw, ct1):
            labels[C2S][i] = "encapsulation randomness (c2s secret)"
    for i, draw in enumerate(server_draws):
        if _encapsulates(kem.encapsulate, client_public, draw, ct2):
            labels[S2C][i] = "encapsulation randomness (s2c secret)"
        elif len(draw) == 32 and host.sign(signed_data(signature_hash),
                                           lambda n, d=draw: d) == response.signature:
            labels[S2C][i] = "hedged signing randomness (connect response)"
    for side in (C2S, S2C):
        draws = client_draws if side == C2S else server_draws
        for i, draw in enumerate(draws):
            if i not in labels[side] and len(draw) == 512:
                labels[side][i] = "traffic shaping pool (padding lengths)"
    return {
        "c2s": c2s, "s2c": s2c, "ss1": ss1, "ss2": ss2, "cookie": cookie,
        "session_id": session_id, "labels": labels,
        "transcript": {
            "signature_hash": signature_hash.hex(),
            "c2s_key_hash": th_c2s.hex(),
            "exchange_mac_hash": th_mac.hex(),
            "s2c_key_hash": th_s2c.hex(),
            "client_confirmation_hash": th_s2c.hex(),
            "server_confirmation_hash": session_id.hex(),
        },
    }


def _encapsulates(encapsulate: Callable[..., tuple[bytes, bytes]], public: bytes,
                  draw: bytes, ciphertext: bytes) -> bool:
    try:
        return encapsulate(public, lambda n: draw if n == len(draw) else b"")[0] == ciphertext
    except Exception:  # the wrong size for this KEM's randomness
        return False


def _keys_json(keys: DirectionKeys, secret: bytes, by: str) -> dict[str, str]:
    return {"shared_secret": secret.hex(), "encapsulated_by": by, "key": keys.key.hex(),
            "iv": keys.iv.hex(), "chain": keys.chain.hex()}


def _draws_json(draws: list[bytes], labels: dict[int, str]) -> list[dict[str, Any]]:
    return [{"index": i, "size": len(d), "hex": d.hex(), "use": labels.get(i, "")}
            for i, d in enumerate(draws)]


def generate() -> dict[str, Any]:
    """Run the session and build the vector document (pure: no files touched)."""
    client_rng, server_rng = RecordingRng(CLIENT_SEED), RecordingRng(SERVER_SEED)
    flights, script = run_session(client_rng, server_rng)
    assert script.client is not None and script.server is not None
    client_hs, server_hs = script.client.handshake.result, script.server.handshake.result
    if client_hs is None or server_hs is None:
        raise RuntimeError("the handshake did not complete")
    suite = client_hs.suite
    packets = [(direction, p) for direction, flight in flights for p in flight]
    derived = recompute(packets, suite, client_rng.draws, server_rng.draws)
    c2s, s2c = derived["c2s"], derived["s2c"]
    # What the cores agreed on, through their public results only.
    if (c2s.chain, s2c.chain) != (client_hs.tx_chain, client_hs.rx_chain) or (
            (c2s.chain, s2c.chain) != (server_hs.rx_chain, server_hs.tx_chain)):
        raise RuntimeError("recomputed keys differ from the cores' chain values")
    if derived["session_id"] != client_hs.session_id or (
            client_hs.session_id != server_hs.session_id):
        raise RuntimeError("recomputed session id differs from the cores'")

    records = []
    for flight_index, (direction, flight) in enumerate(flights):
        for packet in flight:
            header = decode_header(packet[:HEADER_SIZE], 1 << 32)
            entry: dict[str, Any] = {
                "index": len(records), "flight": flight_index, "direction": direction,
                "flag": f"0x{header.flag:02x}", "name": Flag(header.flag).name,
                "sequence": header.sequence, "length": header.length, "hex": packet.hex(),
            }
            if header.flag in (Flag.EXCHANGE_REQUEST, Flag.ESTABLISH_REQUEST,
                               Flag.ESTABLISH_RESPONSE, Flag.ENCRYPTED_MESSAGE):
                keys = c2s if direction == C2S else s2c
                plain = open_sealed(suite.aead, keys, packet)
                entry["plaintext_hex"] = plain.hex()
                if header.flag == Flag.ENCRYPTED_MESSAGE:
                    entry["inner_type"] = f"0x{plain[0]:02x}"
                    entry["padding"] = int.from_bytes(plain[1:3], "big")
            records.append(entry)

    host = make_host_key()
    labels = derived["labels"]
    return {
        "description": DESCRIPTION,
        "protocol": "QSMP v1 as implemented by qsh (docs/PROTOCOL.md)",
        "inputs": {
            "now": NOW,
            "client_seed_hex": CLIENT_SEED.hex(),
            "server_seed_hex": SERVER_SEED.hex(),
            "host_key_seed_hex": HOST_KEY_SEED.hex(),
            "rng": "DeterministicRng: draw k of n bytes = SHAKE-256(b'qsh deterministic rng'"
                   " || seed || k as u64 big-endian), n bytes",
            "offer": {
                "kems": list(OFFER.kems), "signatures": list(OFFER.signatures),
                "aeads": list(OFFER.aeads), "padding_max": OFFER.padding_max,
                "chaff": {"enabled": OFFER.chaff.enabled,
                          "interval_min_ms": OFFER.chaff.interval_min_ms,
                          "interval_max_ms": OFFER.chaff.interval_max_ms,
                          "size_min": OFFER.chaff.size_min, "size_max": OFFER.chaff.size_max},
            },
            "server_policy": "defaults (common.negotiation.ServerPolicy())",
            "host_key": {
                "algorithm": host.public.algorithm,
                "key_id_hex": host.public.key_id.hex(),
                "expiration": host.public.expiration,
                "verification_key_hex": host.public.verification_key.hex(),
                "public_hex": host.public.encode().hex(),
                "signing_key_hex": host.signing_key.hex(),
                "born": HOST_KEY_BORN,
            },
            "application": {
                "client_opens": {"kind": CHANNEL_KIND, "payload_hex": OPEN_PAYLOAD.hex(),
                                 "when": "before start(); sent with the establish request"},
                "server_accepts_with_hex": ACCEPT_PAYLOAD.hex(),
                "client_sends_on_open_hex": CLIENT_DATA.hex(),
                "server_answers_data_with_hex": SERVER_DATA.hex(),
                "client_closes_on_data": CLOSE_REASON,
            },
        },
        "suite": {
            "version": suite.version, "kem": suite.kem, "signature": suite.signature,
            "aead": suite.aead, "padding_max": suite.padding_max,
            "chaff_enabled": suite.chaff.enabled,
            "configuration": suite.configuration().decode("ascii"),
        },
        "packets": records,
        "transcript": derived["transcript"],
        "session_id": derived["session_id"].hex(),
        "keys": {
            "cookie": derived["cookie"].hex(),
            "c2s": _keys_json(c2s, derived["ss1"], "client, to the server's signed ephemeral key"),
            "s2c": _keys_json(s2c, derived["ss2"], "server, to the client's ephemeral key"),
        },
        "rng_draws": {
            "client": _draws_json(client_rng.draws, labels[C2S]),
            "server": _draws_json(server_rng.draws, labels[S2C]),
        },
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it")
    parser.add_argument("--output", type=Path, default=VECTORS)
    args = parser.parse_args(argv)
    text = render(generate())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
