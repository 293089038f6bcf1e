"""Known-answer tests: tests/vectors/handshake.json, made by tests/vectors/make_vectors.py.

Three independent checks:

* regeneration: the same seeds, time and script give byte-identical packets (and the whole
  document, keys included, is unchanged);
* replay: each side's recorded packets, fed to a *fresh* core of the other side with that
  side's seed, make it answer with exactly the recorded packets and reach the recorded
  session id, channel and data: the cores accept the file, not just produce it;
* recomputation from the document alone: transcript hashes, the session cookie, KMAC256 key
  derivation and AEAD decryption of every sealed packet are redone here with hashlib,
  pycryptodome's KMAC and cryptography's AEADs, not with common/schedule.py or
  common/record.py, as another implementation would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from Crypto.Hash import KMAC256
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from common.accounts.keys import PublicKey
from common.crypto import registry
from common.crypto.rng import DeterministicRng
from common.protocol.connection import HandshakeComplete
from common.protocol.mux import ChannelData, ChannelOpened, ChannelOpenRequest

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
HEADER = 13
AEADS: dict[str, Callable[[bytes], Any]] = {"aes256gcm": AESGCM,
                                            "chacha20poly1305": ChaCha20Poly1305}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("qsh_make_vectors",
                                                  VECTOR_DIR / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
DOC: dict[str, Any] = json.loads((VECTOR_DIR / "handshake.json").read_text())
PACKETS = DOC["packets"]
REGENERATE = "protocol bytes changed: if intended, run python tests/vectors/make_vectors.py"


def flights(doc: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(direction, concatenated packets) per recorded flight, in wire order."""
    out: list[tuple[str, bytes]] = []
    for p in doc["packets"]:
        if len(out) <= p["flight"]:
            out.append((p["direction"], b""))
        direction, data = out[p["flight"]]
        assert direction == p["direction"]
        out[p["flight"]] = (direction, data + bytes.fromhex(p["hex"]))
    return out


# --------------------------------------------------------------------------- regeneration


def test_regenerated_packets_are_byte_identical() -> None:
    doc = gen.generate()
    assert [(p["direction"], p["hex"]) for p in doc["packets"]] == [
        (p["direction"], p["hex"]) for p in PACKETS], REGENERATE
    assert doc["session_id"] == DOC["session_id"]
    assert gen.render(doc) == (VECTOR_DIR / "handshake.json").read_text(), REGENERATE


def test_document_describes_itself() -> None:
    text = "\n".join(DOC["description"])
    assert "nonce" in text and "protocol order" in text and "make_vectors.py" in text
    inputs = DOC["inputs"]
    assert bytes.fromhex(inputs["client_seed_hex"]) == b"qsh test vector client"
    assert bytes.fromhex(inputs["server_seed_hex"]) == b"qsh test vector server"
    assert inputs["now"] == gen.NOW
    host = PublicKey.decode(bytes.fromhex(inputs["host_key"]["public_hex"]))
    assert host == gen.make_host_key().public
    assert bytes.fromhex(inputs["host_key"]["signing_key_hex"]) == gen.make_host_key().signing_key


def test_rng_draws_are_the_documented_stream() -> None:
    for side, seed in (("client", gen.CLIENT_SEED), ("server", gen.SERVER_SEED)):
        rng = DeterministicRng(seed)
        for draw in DOC["rng_draws"][side]:
            assert rng(draw["size"]).hex() == draw["hex"]
            shake = hashlib.shake_256(b"qsh deterministic rng" + seed
                                      + draw["index"].to_bytes(8, "big"))
            assert shake.digest(draw["size"]).hex() == draw["hex"]


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("side", ["client", "server"])
def test_fresh_core_accepts_recorded_peer_packets(side: str) -> None:
    """Feed the other side's recorded flights to a fresh core seeded like the original:
    every flight it sends must be the recorded one, byte for byte."""
    host = gen.make_host_key()
    if side == "client":
        conn, channel = gen.make_client(DeterministicRng(gen.CLIENT_SEED), host)
        script = gen.Script(client=conn, channel=channel)
        mine = "c2s"
    else:
        conn = gen.make_server(DeterministicRng(gen.SERVER_SEED), host)
        script = gen.Script(server=conn)
        mine = "s2c"
    conn.start(gen.NOW)
    for index, (direction, data) in enumerate(flights(DOC)):
        if direction == mine:
            assert gen.take(conn) == data, f"flight {index} differs"
        else:
            assert not conn.closed, conn.terminated
            conn.receive_data(data, gen.NOW)
            script.react(conn)
    assert gen.take(conn) == b""
    got = script.events["s2c" if side == "client" else "c2s"]
    (done,) = [e for e in got if isinstance(e, HandshakeComplete)]
    assert done.session_id.hex() == DOC["session_id"]
    assert done.suite.kem == DOC["suite"]["kem"] and done.suite.aead == DOC["suite"]["aead"]
    if side == "client":
        assert ChannelOpened(script.channel, gen.ACCEPT_PAYLOAD) in got
        assert ChannelData(script.channel, gen.SERVER_DATA, None) in got
    else:
        (req,) = [e for e in got if isinstance(e, ChannelOpenRequest)]
        assert (req.kind, req.payload) == (gen.CHANNEL_KIND, gen.OPEN_PAYLOAD)
        assert ChannelData(req.channel_id, gen.CLIENT_DATA, None) in got
    # The session ends with the client's clean close.
    assert conn.terminated is not None and conn.terminated.code == 0
    assert conn.terminated.by_peer == (side == "server")


def test_a_tampered_vector_packet_is_refused_by_the_replaying_core() -> None:
    """The replay check has teeth: one flipped byte in the server's last handshake
    message and the fresh client refuses it."""
    host = gen.make_host_key()
    conn, _ = gen.make_client(DeterministicRng(gen.CLIENT_SEED), host)
    conn.start(gen.NOW)
    for direction, data in flights(DOC):
        if direction == "c2s":
            gen.take(conn)
            continue
        if data[0] == 0x0A:  # the establish response leads its flight
            data = data[:20] + bytes([data[20] ^ 1]) + data[21:]
        conn.receive_data(data, gen.NOW)
        if conn.closed:
            break
    assert conn.terminated is not None and conn.terminated.code == 0x01  # AUTHENTICATION


# --------------------------------------------------------------------------- recomputation


def sha3(*parts: bytes) -> bytes:
    return hashlib.sha3_256(b"".join(parts)).digest()


def kmac(key: bytes, data: bytes, custom: bytes, n: int) -> bytes:
    return KMAC256.new(key=key, data=data, mac_len=n, custom=custom).digest()


def packet(name: str) -> bytes:
    (p,) = [p for p in PACKETS if p["name"] == name]
    return bytes.fromhex(p["hex"])


def test_sequence_numbers_count_each_direction_from_zero() -> None:
    for direction in ("c2s", "s2c"):
        seqs = [p["sequence"] for p in PACKETS if p["direction"] == direction]
        assert seqs == list(range(len(seqs)))
    for p in PACKETS:
        raw = bytes.fromhex(p["hex"])
        assert int(p["flag"], 16) == raw[0] and len(raw) == HEADER + p["length"]
        assert int.from_bytes(raw[1:9], "big") == p["sequence"]
        assert int.from_bytes(raw[9:13], "big") == p["length"]


def test_transcript_and_session_id_recompute() -> None:
    order = ["CONNECT_REQUEST", "CONNECT_RESPONSE", "EXSTART_REQUEST", "EXSTART_RESPONSE",
             "EXCHANGE_REQUEST", "EXCHANGE_RESPONSE", "ESTABLISH_REQUEST", "ESTABLISH_RESPONSE"]
    p = [packet(n) for n in order]
    t = DOC["transcript"]
    assert sha3(*p[:3]).hex() == t["c2s_key_hash"]
    assert sha3(*p[:5]).hex() == t["exchange_mac_hash"]
    assert sha3(*p[:6]).hex() == t["s2c_key_hash"] == t["client_confirmation_hash"]
    assert sha3(*p[:7]).hex() == t["server_confirmation_hash"] == DOC["session_id"]


def test_connect_response_signature_verifies() -> None:
    host = PublicKey.decode(bytes.fromhex(DOC["inputs"]["host_key"]["public_hex"]))
    cresp = packet("CONNECT_RESPONSE")
    sig_len = int.from_bytes(cresp[-3309 - 4 : -3309], "big")
    assert sig_len == 3309 == registry.signature("mldsa65").max_signature_size
    signed = sha3(packet("CONNECT_REQUEST"), cresp[: -(sig_len + 4)])
    assert signed.hex() == DOC["transcript"]["signature_hash"]
    message = b"qsh QSMP v1 server signature\x00" + signed
    assert host.verify(message, cresp[-sig_len:])
    assert not host.verify(message[:-1] + bytes([message[-1] ^ 1]), cresp[-sig_len:])


def test_keys_recompute_from_the_shared_secrets() -> None:
    creq = packet("CONNECT_REQUEST")
    body = creq[HEADER:]
    assert body[:4] == b"QSMP"
    versions = body[4]
    token = body[5 + versions + 16 : 5 + versions + 16 + 32]
    configuration = DOC["suite"]["configuration"].encode()
    host_blob = bytes.fromhex(DOC["inputs"]["host_key"]["public_hex"])
    cookie = sha3(token, configuration, host_blob)
    keys = DOC["keys"]
    assert cookie.hex() == keys["cookie"]
    for label, th in (("c2s", DOC["transcript"]["c2s_key_hash"]),
                      ("s2c", DOC["transcript"]["s2c_key_hash"])):
        material = kmac(bytes.fromhex(keys[label]["shared_secret"]),
                        cookie + bytes.fromhex(th), b"qsh traffic " + label.encode(), 76)
        assert material[:32].hex() == keys[label]["key"]
        assert material[32:44].hex() == keys[label]["iv"]
        assert material[44:].hex() == keys[label]["chain"]


def test_every_sealed_packet_decrypts_with_the_recorded_keys() -> None:
    aead = AEADS[DOC["suite"]["aead"]]
    sealed = [p for p in PACKETS if "plaintext_hex" in p]
    assert {p["name"] for p in sealed} == {"EXCHANGE_REQUEST", "ESTABLISH_REQUEST",
                                           "ESTABLISH_RESPONSE", "ENCRYPTED_MESSAGE"}
    inner_types = []
    for p in sealed:
        keys = DOC["keys"][p["direction"]]
        raw = bytes.fromhex(p["hex"])
        nonce = (int(keys["iv"], 16) ^ p["sequence"]).to_bytes(12, "big")
        plain = aead(bytes.fromhex(keys["key"])).decrypt(nonce, raw[HEADER:], raw[:HEADER])
        assert plain.hex() == p["plaintext_hex"]
        if p["name"] == "ENCRYPTED_MESSAGE":
            pad = int.from_bytes(plain[1:3], "big")
            assert pad == p["padding"] and plain[len(plain) - pad :] == bytes(pad)
            inner_types.append(plain[0])
        else:
            key_id = bytes.fromhex(DOC["inputs"]["host_key"]["key_id_hex"])
            if p["name"] == "ESTABLISH_REQUEST":
                th = DOC["transcript"]["client_confirmation_hash"]
                assert plain == key_id + bytes.fromhex(th)
            elif p["name"] == "ESTABLISH_RESPONSE":
                th = DOC["transcript"]["server_confirmation_hash"]
                assert plain == key_id + bytes.fromhex(th)
    # channel open, open confirm, data each way, then the client's shutdown.
    assert inner_types == [0x20, 0x21, 0x24, 0x24, 0x07]
    plaintexts = b"".join(bytes.fromhex(p["plaintext_hex"]) for p in sealed)
    for fixed in (gen.OPEN_PAYLOAD, gen.ACCEPT_PAYLOAD, gen.CLIENT_DATA, gen.SERVER_DATA):
        assert fixed in plaintexts
        assert all(fixed not in bytes.fromhex(p["hex"]) for p in PACKETS)
