"""Shared helpers for tests that drive the sans-IO core in memory.

Two :class:`~common.connection.Connection` objects are wired back to back with no sockets:
:func:`pump` shuttles bytes until both sides are quiet and returns what crossed the "wire" as
*flights* (everything one side sent before the other answered), so tests can count round
trips, inspect every packet, or tamper with one on the way (``transform``).

Keys are expensive next to everything else here, so :func:`host_key` caches one per
(algorithm, seed): a module asks for the same key as often as it likes and pays once.

Everything is reproducible when seeds are given: a seeded pair sends byte-identical packets
on every run, which is what the split, tamper and vector tests rely on.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from common.accounts.keys import HostKey, PublicKey
from common.crypto.rng import SYSTEM_RNG, DeterministicRng, Rng
from common.protocol.connection import Connection, ConnectionTerminated
from common.protocol.handshake import ClientHandshake, ServerHandshake
from common.protocol.negotiation import Offer, ServerPolicy
from common.protocol.transport import TransportSettings
from common.wire import HEADER_SIZE, Flag, decode_header

#: A fixed clock for every test: 2001-09-09, far from any key expiry.
NOW = 1_000_000_000.0
#: Host keys made by :func:`host_key` are valid from here for ten years.
KEY_BIRTH = NOW - 86_400
CLIENT_SEED = b"qsh test client"
SERVER_SEED = b"qsh test server"
C2S = "c2s"
S2C = "s2c"

#: "trust the server's real key": the default for :func:`make_pair`'s ``trusted``.
TRUST_SERVER = object()


@functools.cache
def host_key(algorithm: str = "mldsa65", seed: bytes = b"qsh test host key",
             lifetime: int = 10 * 365 * 24 * 3600, born: float = KEY_BIRTH) -> HostKey:
    """A deterministic host key, generated once per process for each argument set."""
    return HostKey.generate(algorithm, now=born, lifetime=lifetime,
                            rng=DeterministicRng(seed + algorithm.encode()))


def rng_for(seed: bytes | None) -> Rng:
    return SYSTEM_RNG if seed is None else DeterministicRng(seed)


def make_pair(
    *,
    offer: Offer | None = None,
    trusted: PublicKey | object | None = TRUST_SERVER,
    host_keys: Iterable[HostKey] | None = None,
    policy: ServerPolicy | None = None,
    client_settings: TransportSettings | None = None,
    server_settings: TransportSettings | None = None,
    client_seed: bytes | None = CLIENT_SEED,
    server_seed: bytes | None = SERVER_SEED,
    step_timeout: float = 30.0,
    host_key_grace: float | None = None,
) -> tuple[Connection, Connection]:
    """A client and a server Connection, not started. ``trusted=None`` is first contact
    (TOFU); by default the client trusts the first host key. Seeds of None use the system
    RNG; by default both sides are seeded, so the run is reproducible. The server's
    host-key grace defaults to ``step_timeout`` here, so every step has the same deadline
    (the production default, longer, has its own test)."""
    keys = tuple(host_keys) if host_keys is not None else (host_key(),)
    trusted_key = keys[0].public if trusted is TRUST_SERVER else trusted
    assert trusted_key is None or isinstance(trusted_key, PublicKey)
    c_rng = rng_for(client_seed)
    s_rng = rng_for(server_seed)
    client = Connection(
        ClientHandshake(offer or Offer(), trusted_key, rng=c_rng, step_timeout=step_timeout),
        settings=client_settings, rng=c_rng,
    )
    server = Connection(
        ServerHandshake(keys, policy, rng=s_rng, step_timeout=step_timeout,
                        host_key_grace=step_timeout if host_key_grace is None
                        else host_key_grace),
        settings=server_settings, rng=s_rng,
    )
    return client, server


def split_packets(data: bytes) -> list[bytes]:
    """Cut a byte stream into whole packets by their headers (no limit checks)."""
    packets = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= HEADER_SIZE, "trailing partial header"
        header = decode_header(data[pos : pos + HEADER_SIZE], max_body=1 << 32)
        end = pos + HEADER_SIZE + header.length
        assert end <= len(data), "trailing partial packet"
        packets.append(data[pos:end])
        pos = end
    return packets


def take(conn: Connection) -> bytes:
    """Everything ``conn`` wants to send, as one bytes object."""
    return b"".join(bytes(chunk) for chunk in conn.data_to_send())


@dataclass
class Flight:
    """What one side sent in one go: ``direction`` is "c2s" or "s2c"."""

    direction: str
    packets: list[bytes]

    @property
    def flags(self) -> list[int]:
        return [p[0] for p in self.packets]


#: (index of the packet over the whole run, direction, packet) -> the bytes to deliver.
Transform = Callable[[int, str, bytes], bytes]
#: (index of the flight's first packet, direction, delivered packets) -> the chunks to feed,
#: one ``receive_data`` call each. Their concatenation must be the packets' concatenation.
Chunker = Callable[[int, str, list[bytes]], list[bytes]]


def cut(data: bytes, positions: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (sorted, deduplicated, empty pieces kept out)."""
    bounds = [0, *sorted(set(positions)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@dataclass
class Wire:
    """Every flight pumped between two connections, as sent (before any ``transform``)."""

    flights: list[Flight] = field(default_factory=list)
    delivered: int = 0

    def packets(self, direction: str | None = None) -> list[bytes]:
        return [p for f in self.flights if direction in (None, f.direction) for p in f.packets]


def pump(client: Connection, server: Connection, now: float = NOW, *,
         wire: Wire | None = None, transform: Transform | None = None,
         chunker: Chunker | None = None, server_now: float | None = None,
         on_receive: Callable[[Connection], None] | None = None,
         max_flights: int = 10_000) -> Wire:
    """Move bytes both ways until neither side has anything to send.

    Each flight is handed over in one ``receive_data`` call. ``transform`` may replace any
    packet on its way (the packets it sees are the honest ones, numbered over the whole
    run of this ``wire``); what it returns is delivered instead, so it can tamper, drop
    (return b"") or inject. ``chunker`` decides how the delivered bytes are split into
    ``receive_data`` calls. ``server_now`` lets the two clocks differ. ``on_receive(conn)``
    runs after each flight is delivered to ``conn``: the application's reaction (read events,
    answer), so what it queues goes out in that side's next flight.
    """
    wire = wire if wire is not None else Wire()
    s_now = now if server_now is None else server_now
    for _ in range(max_flights):
        moved = False
        for src, dst, direction, t in ((client, server, C2S, s_now),
                                       (server, client, S2C, now)):
            data = take(src)
            if not data:
                continue
            moved = True
            packets = split_packets(data)
            wire.flights.append(Flight(direction, packets))
            first = wire.delivered
            wire.delivered += len(packets)
            delivered = packets
            if transform is not None:
                delivered = [transform(first + i, direction, p) for i, p in enumerate(packets)]
            if chunker is None:
                chunks = [b"".join(delivered)]
            else:
                chunks = chunker(first, direction, delivered)
                assert b"".join(chunks) == b"".join(delivered), "chunker changed the bytes"
            for chunk in chunks:
                if chunk:
                    dst.receive_data(chunk, t)
            if on_receive is not None:
                on_receive(dst)
        if not moved:
            return wire
    raise AssertionError("pump did not settle")


def handshake(client: Connection, server: Connection, now: float = NOW) -> Wire:
    """Start both sides and run the handshake to completion; assert it completed."""
    client.start(now)
    server.start(now)
    wire = pump(client, server, now)
    assert client.established and server.established, (client.terminated, server.terminated)
    return wire


def established_pair(**kwargs: object) -> tuple[Connection, Connection]:
    """A finished handshake with its events drained."""
    client, server = make_pair(**kwargs)  # type: ignore[arg-type]
    handshake(client, server)
    client.events_received()
    server.events_received()
    return client, server


def terminations(events: Iterable[object]) -> list[ConnectionTerminated]:
    return [e for e in events if isinstance(e, ConnectionTerminated)]


def error_packet_code(packet: bytes) -> int | None:
    """The code of a plaintext handshake error packet (flag 0xFF), else None."""
    if packet[0] != Flag.ERROR_CONDITION:
        return None
    header = decode_header(packet[:HEADER_SIZE], max_body=1 << 32)
    assert header.length == len(packet) - HEADER_SIZE
    return packet[HEADER_SIZE] if header.length else None


def flip(packet: bytes, position: int, mask: int | None = None) -> bytes:
    """``packet`` with one bit of byte ``position`` flipped (bit ``position % 8`` unless a
    ``mask`` is given), so consecutive positions exercise every bit."""
    mask = (1 << (position % 8)) if mask is None else mask
    out = bytearray(packet)
    out[position] ^= mask
    return bytes(out)
