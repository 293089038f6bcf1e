"""What a client that has not logged in may cost the server (issue 7, items 2 and 7).

* Every handshake packet is bounded by the largest body its message can have with the
  suite in force (not by a 2 MiB ceiling), and refused on its header: the sans-IO cores in
  memory, then a real ``python -m qshd`` on 127.0.0.1.
* Records before login are bounded by the largest message a client sends before login.
* A peer that never reads cannot make the server queue replies without bound: the server
  stops reading instead. A keep-alive flooder (``tests/flooder.py``, its own process,
  its own socket) against a real ``python -m qshd``, with the daemon's RSS read from /proc.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import stop_process, wait_ready
from helpers import (
    CLIENT_SEED,
    NOW,
    SERVER_SEED,
    handshake,
    host_key,
    make_pair,
    pump,
    rng_for,
    split_packets,
    take,
)

from common.accounts.keys import PublicKey
from common.accounts.passwd import PasswdFile
from common.crypto import registry
from common.errors import ErrorCode
from common.protocol.auth import AuthRequested
from common.protocol.connection import Connection, ConnectionTerminated, HandshakeComplete
from common.protocol.handshake import ClientHandshake, ServerHandshake
from common.protocol.mux import ChannelData, ChannelOpenRequest
from common.protocol.negotiation import Offer
from common.wire import HEADER_SIZE, MAX_HANDSHAKE_BODY, Flag, encode_header

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

# The default suite (X-Wing, ML-DSA-65, AES-256-GCM): each handshake body's exact size.
P3_BODY = 4 + 1120            # vbytes(X-Wing ciphertext)
P5_BODY = 4 + 1216 + 32 + 16  # AEAD(vbytes(X-Wing public key) || mac key)
P7_BODY = 16 + 32 + 16        # AEAD(key ID || transcript hash)
P6_BODY = 32 + 4 + 1120       # mac || vbytes(X-Wing ciphertext)


def header(flag: Flag, sequence: int, length: int) -> bytes:
    return encode_header(flag, sequence, length)


def refused_on_header(conn: Connection, head: bytes) -> ConnectionTerminated | None:
    """Feed a header alone (no body): the termination it caused, if any."""
    conn.receive_data(head, NOW)
    events = conn.events_received()
    ends = [e for e in events if isinstance(e, ConnectionTerminated)]
    return ends[0] if ends else None


def server_waiting_for(step: str) -> tuple[Connection, Connection, list[bytes]]:
    """A pair driven until the server waits for P3, P5 or P7; the client's packets."""
    client, server = make_pair()
    client.start(NOW)
    server.start(NOW)
    server.receive_data(take(client), NOW)
    client.receive_data(take(server), NOW)
    p3, p5 = split_packets(take(client))
    if step == "P3":
        return client, server, [p3, p5]
    server.receive_data(p3, NOW)
    if step == "P5":
        return client, server, [p5]
    server.receive_data(p5, NOW)
    client.receive_data(take(server), NOW)
    [p7] = split_packets(take(client))
    return client, server, [p7]


# --------------------------------------------------------------------------- item 7: sizes


@pytest.mark.parametrize(("step", "flag", "sequence", "size"), [
    ("P3", Flag.EXSTART_REQUEST, 1, P3_BODY),
    ("P5", Flag.EXCHANGE_REQUEST, 2, P5_BODY),
    ("P7", Flag.ESTABLISH_REQUEST, 3, P7_BODY),
])
def test_server_refuses_a_handshake_packet_one_byte_over_the_suite_on_its_header(
        step: str, flag: Flag, sequence: int, size: int) -> None:
    _, server, packets = server_waiting_for(step)
    assert len(packets[0]) == HEADER_SIZE + size  # the honest packet has exactly that size
    # Exactly the largest size is not refused on the header...
    _, fresh, _ = server_waiting_for(step)
    assert refused_on_header(fresh, header(flag, sequence, size)) is None
    # ...one byte more is, before a single body byte arrived.
    ended = refused_on_header(server, header(flag, sequence, size + 1))
    assert ended is not None and ended.code == ErrorCode.INVALID_INPUT, ended
    assert not ended.by_peer


def test_server_refuses_a_one_mebibyte_exstart_request() -> None:
    _, server, _ = server_waiting_for("P3")
    ended = refused_on_header(server, header(Flag.EXSTART_REQUEST, 1, MiB))
    assert ended is not None and ended.code == ErrorCode.INVALID_INPUT


def test_client_bounds_the_server_packets_by_offer_and_suite() -> None:
    client, server = make_pair()
    client.start(NOW)
    server.start(NOW)
    # P2: the suite is not known yet, only the offer: 1 MiB is far above any offered suite.
    ended = refused_on_header(client, header(Flag.CONNECT_RESPONSE, 0, MiB))
    assert ended is not None and ended.code == ErrorCode.INVALID_INPUT
    # P6, after a real P2 and P4: the chosen KEM's ciphertext decides.
    client, server = make_pair()
    client.start(NOW)
    server.start(NOW)
    server.receive_data(take(client), NOW)
    client.receive_data(take(server), NOW)
    server.receive_data(take(client), NOW)
    p4, p6 = split_packets(take(server))
    assert len(p6) == HEADER_SIZE + P6_BODY
    client.receive_data(p4, NOW)
    ended = refused_on_header(client, header(Flag.EXCHANGE_RESPONSE, 2, P6_BODY + 1))
    assert ended is not None and ended.code == ErrorCode.INVALID_INPUT


def test_every_suite_handshakes_with_packets_exactly_at_their_bounds() -> None:
    """Legitimate handshakes of every available KEM, signature and AEAD still pass, and
    every packet after P1 is exactly as large as its computed bound (McEliece and SLH-DSA
    appear only with liboqs), which stays under the absolute ceiling."""
    from common.protocol.handshake import handshake_limits

    # Each bound is a sum of per-algorithm sizes, so every algorithm beside the defaults, and
    # the largest KEM with the largest signature, cover them; the full product (196 handshakes
    # with liboqs, SLH-DSA "s" signing up to a second) adds no case and took 150 s.
    kems, sigs, aeads = (registry.available_kems(), registry.available_signatures(),
                         registry.available_aeads())
    combinations = {*((k, sigs[0], aeads[0]) for k in kems),
                    *((kems[0], s, aeads[0]) for s in sigs),
                    *((kems[0], sigs[0], a) for a in aeads),
                    (max(kems, key=lambda k: registry.kem(k).public_key_size),  # the ceiling
                     max(sigs, key=lambda s: registry.signature(s).max_signature_size),
                     aeads[0])}
    if len(kems) * len(sigs) * len(aeads) <= 32:  # built-in only: all 12
        combinations = {(k, s, a) for k in kems for s in sigs for a in aeads}
    for kem, sig, aead in sorted(combinations):
        offer = Offer(kems=(kem,), signatures=(sig,), aeads=(aead,))
        client, server = make_pair(offer=offer, host_keys=(host_key(sig),))
        wire = handshake(client, server)
        assert client.transport is not None
        suite = client.transport.suite
        assert (suite.kem, suite.signature, suite.aead) == (kem, sig, aead)
        limits = handshake_limits(suite)
        assert max(limits.values()) <= MAX_HANDSHAKE_BODY, (kem, sig, limits)
        for packet in wire.packets():
            if packet[0] in limits:
                assert len(packet) - HEADER_SIZE == limits[Flag(packet[0])], (
                    kem, sig, aead, Flag(packet[0]))


# --------------------------------------------------------------------------- records before login


def login_pair() -> tuple[Connection, Connection]:
    key = host_key()
    client = Connection(ClientHandshake(Offer(), key.public, rng=rng_for(CLIENT_SEED)),
                        rng=rng_for(CLIENT_SEED))
    server = Connection(ServerHandshake((key,), rng=rng_for(SERVER_SEED)),
                        rng=rng_for(SERVER_SEED), require_auth=True)
    client.start(NOW)
    server.start(NOW)
    pump(client, server, NOW)
    assert client.established and server.established
    server.events_received()
    client.events_received()
    return client, server


def test_a_one_mebibyte_record_before_login_is_refused_on_its_header() -> None:
    _, server = login_pair()
    assert server.transport is not None
    seq = server.transport.opener.sequence
    ended = refused_on_header(server, header(Flag.ENCRYPTED_MESSAGE, seq, MiB))
    assert ended is not None and ended.code == ErrorCode.INVALID_INPUT, ended


def test_records_before_login_are_bounded_by_the_largest_login_message() -> None:
    from common.protocol.connection import max_preauth_record_body

    _, server = login_pair()
    assert server.transport is not None
    limit = max_preauth_record_body(server.transport.suite)
    # A login request with the largest key blob and signature, padding and tag: ~128 KiB.
    assert 128 * 1024 < limit < 132 * 1024
    seq = server.transport.opener.sequence
    assert refused_on_header(server, header(Flag.ENCRYPTED_MESSAGE, seq, limit)) is None
    _, server = login_pair()
    ended = refused_on_header(server, header(Flag.ENCRYPTED_MESSAGE, seq, limit + 1))
    assert ended is not None and ended.code == ErrorCode.INVALID_INPUT


def test_after_login_full_size_records_flow_again() -> None:
    client, server = login_pair()
    client.authenticate_password("alice", b"pw")
    server.receive_data(take(client), NOW)
    assert any(isinstance(e, AuthRequested) for e in server.events_received())
    server.accept_auth()
    client.receive_data(take(server), NOW)
    client.events_received()
    channel = client.mux.open_channel("session")
    server.receive_data(take(client), NOW)
    [request] = [e for e in server.events_received() if isinstance(e, ChannelOpenRequest)]
    server.mux.accept_channel(request.channel_id)
    client.receive_data(take(server), NOW)
    client.events_received()
    data = bytes(range(256)) * 2048  # 512 KiB: two full 256 KiB records
    client.mux.send_data(channel, data)
    wire = take(client)
    assert max(len(p) for p in split_packets(wire)) > 200 * 1024
    server.receive_data(wire, NOW)
    got = b"".join(bytes(e.data) for e in server.events_received()
                   if isinstance(e, ChannelData))
    assert got == data and server.terminated is None


# --------------------------------------------------------------------------- a real qshd


@dataclass
class Qshd:
    process: subprocess.Popen[bytes]
    port: int
    host_key: PublicKey
    key_file: Path
    log: Path

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def qshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Qshd]:
    directory = tmp_path_factory.mktemp("qshd")
    passwd = directory / "passwd"
    PasswdFile(passwd).set_password("nobody", b"not used here", cost=4)
    cfg = directory / "qshd_config"
    cfg.write_text(f"PasswdFile {passwd}\nListenAddress 127.0.0.1\n")
    ready = directory / "ready"
    log = directory / "qshd.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-f", str(cfg),
             "-h", str(directory / "host_key"), "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=ROOT)
    try:
        port = wait_ready(process, ready, log)
        key_file = directory / "host_key.pub"
        yield Qshd(process, port, PublicKey.load(key_file)[0], key_file, log)
    finally:
        stop_process(process)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text


def test_qshd_refuses_an_oversized_exstart_request_at_once(qshd: Qshd) -> None:
    """A raw client sends P1, gets P2, then announces a 1 MiB P3 and sends 4 KiB of it:
    the daemon answers with an INVALID_INPUT error packet instead of waiting for the rest."""
    core = Connection(ClientHandshake(Offer(), qshd.host_key))
    core.start(time.time())
    with socket.create_connection(("127.0.0.1", qshd.port), timeout=10) as sock:
        sock.sendall(b"".join(bytes(b) for b in core.data_to_send()))
        while core.handshake.suite is None:
            core.receive_data(sock.recv(65536), time.time())
            assert core.terminated is None
        sock.sendall(header(Flag.EXSTART_REQUEST, 1, MiB) + bytes(4096))
        sock.settimeout(3)
        answer = b""
        try:
            while len(answer) < HEADER_SIZE + 1:
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pytest.fail("the daemon waited for the rest of a 1 MiB exstart request")
    assert answer[:1] == bytes([Flag.ERROR_CONDITION])
    assert answer[HEADER_SIZE] == ErrorCode.INVALID_INPUT


def test_keepalive_flood_before_login_does_not_grow_qshd(qshd: Qshd) -> None:
    """Issue 7 item 2: a client that finished the handshake, never logs in, sends
    keep-alive requests as fast as it can and never reads. Before the fix qshd queued every
    answer (about 14 MiB/s here, 53 -> 562 MiB in 20 s in the report); now it stops reading
    once a small pre-login budget of replies is waiting."""
    flooder = subprocess.Popen(
        [PYTHON, str(ROOT / "tests" / "flooder.py"), str(qshd.port), str(qshd.key_file), "5"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert flooder.stdout is not None
        assert flooder.stdout.readline().strip() == "established"
        base = qshd.rss_mib()
        peak = base
        while flooder.poll() is None:
            peak = max(peak, qshd.rss_mib())
            time.sleep(0.1)
        summary = flooder.stdout.read().strip()
    finally:
        if flooder.poll() is None:
            flooder.kill()
        flooder.wait()
    growth = peak - base
    print(f"qshd RSS {base:.1f} MiB -> peak {peak:.1f} MiB under the flood; {summary}")
    assert growth < 30, f"qshd grew by {growth:.1f} MiB under a pre-login keep-alive flood"
    # The daemon still serves: a fresh handshake completes.
    core = Connection(ClientHandshake(Offer(), qshd.host_key))
    core.start(time.time())
    with socket.create_connection(("127.0.0.1", qshd.port), timeout=10) as sock:
        sock.sendall(b"".join(bytes(b) for b in core.data_to_send()))
        while not core.established:
            data = sock.recv(65536)
            assert data, "qshd closed a fresh connection"
            core.receive_data(data, time.time())
            sock.sendall(b"".join(bytes(b) for b in core.data_to_send()))
        assert any(isinstance(e, HandshakeComplete) for e in core.events_received())
