"""The key exchange's messages as bytes: CONNECT_REQUEST and CONNECT_RESPONSE, the small
parsing helpers the other packets share, and the largest body each packet can have with a
given suite. The state machines (common.protocol.handshake) decide *when* a packet may come;
this module alone says what it looks like, so the fuzzers, the test vectors and the bounds
can be read without the machines.
"""

from __future__ import annotations

from common.accounts.keys import MAX_PUBLIC_BLOB
from common.crypto import registry
from common.errors import DecapsulationFailure, InvalidInput, UnknownProtocol
from common.protocol.negotiation import (
    CHAFF_POLICY_SIZE,
    EXT_OBSCURE,
    MAX_PADDING,
    SUPPORTED_VERSIONS,
    ChaffPolicy,
    ObscurePolicy,
    Offer,
    Suite,
    check_chaff_answer,
)
from common.protocol.schedule import HASH_SIZE, MAC_KEY_SIZE
from common.wire import Flag, Reader, Record, Writer

MAGIC = b"QSMP"
KEY_ID_SIZE = 16
TOKEN_SIZE = 32
NO_KEY_ID = bytes(KEY_ID_SIZE)
MAX_EXTENSIONS = 4096
#: The single byte of an exstart response (spec 6.5: the "remote connected" flag).
REMOTE_CONNECTED = int(Flag.REMOTE_CONNECTED)


# --------------------------------------------------------------------------- messages


class ConnectRequest(Record):
    __slots__ = (  # noqa: RUF023 (field order)
        "versions", "key_id", "session_token", "offer", "extensions")
    versions: tuple[int, ...]
    key_id: bytes
    session_token: bytes
    offer: Offer
    extensions: bytes

    def __init__(self, versions: tuple[int, ...], key_id: bytes, session_token: bytes,
                 offer: Offer, extensions: bytes = b"") -> None:
        object.__setattr__(self, "versions", versions)
        object.__setattr__(self, "key_id", key_id)
        object.__setattr__(self, "session_token", session_token)
        object.__setattr__(self, "offer", offer)
        object.__setattr__(self, "extensions", extensions)

    def encode(self) -> bytes:
        w = Writer().fixed(MAGIC).u8(len(self.versions))
        for v in self.versions:
            w.u8(v)
        w.fixed(self.key_id).fixed(self.session_token)
        w.names(self.offer.kems).names(self.offer.signatures).names(self.offer.aeads)
        self.offer.chaff.encode(w)
        extensions = self.extensions
        if self.offer.obscure is not None:  # an extension, so servers without it ignore it
            policy = self.offer.obscure.encoded()
            extensions += Writer().u16(EXT_OBSCURE).u16(len(policy)).fixed(policy).getvalue()
        w.u16(self.offer.padding_max).vbytes(extensions)
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes | memoryview) -> ConnectRequest:
        r = Reader(body)
        if r.fixed(4) != MAGIC:
            raise UnknownProtocol("not a QSMP connect request")
        count = r.u8()
        if not 1 <= count <= 16:
            raise InvalidInput("bad version list")
        versions = tuple(r.u8() for _ in range(count))
        key_id = r.fixed(KEY_ID_SIZE)
        token = r.fixed(TOKEN_SIZE)
        kems, sigs, aeads = r.names(), r.names(), r.names()
        chaff = ChaffPolicy.decode(r)
        padding = r.u16()
        if padding > MAX_PADDING:
            raise InvalidInput(f"padding of {padding} bytes exceeds {MAX_PADDING}")
        extensions = r.vbytes(MAX_EXTENSIONS)
        found = parse_extensions(extensions)
        r.end()
        obscure = None
        if EXT_OBSCURE in found:
            er = Reader(found.pop(EXT_OBSCURE))
            obscure = ObscurePolicy.decode(er)
            er.end()
        return cls(versions, key_id, token,
                   Offer(kems, sigs, aeads, chaff, padding, obscure), extensions)


class ConnectResponse(Record):
    __slots__ = ("suite", "host_key", "ephemeral_key", "signature")  # noqa: RUF023 (field order)
    suite: Suite
    host_key: bytes  # PublicKey blob
    ephemeral_key: bytes
    signature: bytes

    def __init__(self, suite: Suite, host_key: bytes, ephemeral_key: bytes,
                 signature: bytes) -> None:
        object.__setattr__(self, "suite", suite)
        object.__setattr__(self, "host_key", host_key)
        object.__setattr__(self, "ephemeral_key", ephemeral_key)
        object.__setattr__(self, "signature", signature)

    def encode_unsigned(self) -> bytes:
        s = self.suite
        w = Writer().u8(s.version).name(s.kem).name(s.signature).name(s.aead)
        s.chaff.encode(w)
        w.u16(s.padding_max).vbytes(self.host_key).vbytes(self.ephemeral_key)
        return w.getvalue()

    def encode(self) -> bytes:
        return self.encode_unsigned() + Writer().vbytes(self.signature).getvalue()

    @classmethod
    def decode(cls, body: bytes | memoryview, offer: Offer) -> tuple[ConnectResponse, int]:
        """Return the message and the length of its signed prefix."""
        r = Reader(body)
        version = r.u8()
        if version not in SUPPORTED_VERSIONS:
            raise UnknownProtocol(f"server chose unsupported version {version}")
        kem_name, sig_name, aead_name = r.name(), r.name(), r.name()
        if (kem_name not in offer.kems or sig_name not in offer.signatures
                or aead_name not in offer.aeads):
            raise UnknownProtocol("server chose an algorithm we did not offer")
        chaff = ChaffPolicy.decode(r)
        check_chaff_answer(offer.chaff, chaff)
        padding = r.u16()
        if padding > offer.padding_max:
            raise InvalidInput("server chose more padding than offered")
        host_key = r.vbytes(MAX_PUBLIC_BLOB)
        kem = registry.kem(kem_name)
        ephemeral = r.vbytes(kem.public_key_size)
        if len(ephemeral) != kem.public_key_size:
            raise InvalidInput("ephemeral key has the wrong size")
        signed_len = len(body) - r.remaining
        signature = r.vbytes(registry.signature(sig_name).max_signature_size)
        r.end()
        suite = Suite(version, kem_name, sig_name, aead_name, chaff, padding)
        return cls(suite, host_key, ephemeral, signature), signed_len


def read_kem_ciphertext(r: Reader, size: int) -> bytes:
    """A length-prefixed KEM ciphertext of exactly ``size`` bytes; any other size is one
    failure, reported as a decapsulation failure."""
    if r.u32() != size:
        raise DecapsulationFailure("KEM ciphertext has the wrong size")
    return r.fixed(size)


def parse_extensions(blob: bytes) -> dict[int, bytes]:
    """Extensions: ``u16 type | u16 length | data`` entries. None are defined in version 1;
    unknown types are ignored (so later versions can add some), duplicates are refused."""
    r = Reader(blob)
    found: dict[int, bytes] = {}
    while r.remaining:
        kind, length = r.u16(), r.u16()
        if kind in found:
            raise InvalidInput(f"extension {kind} appears twice")
        found[kind] = r.fixed(length)
    return found


def _confirmation(key_id: bytes, transcript_hash: bytes) -> bytes:
    return key_id + transcript_hash


# --------------------------------------------------------------------------- size bounds


def _host_key_blob_size(signature: str) -> int:
    """A host key blob of this algorithm (keys.PublicKey): magic, key ID, expiration,
    name, and a verification key of the scheme's size (any other size cannot verify)."""
    key_size = registry.signature(signature).public_key_size
    return 4 + KEY_ID_SIZE + 8 + 1 + len(signature) + 4 + key_size


def connect_response_limit(kems: tuple[str, ...], signatures: tuple[str, ...],
                           aeads: tuple[str, ...]) -> int:
    """The largest CONNECT_RESPONSE body a server can send when it picks from these names:
    the client's bound for P2, before it knows the server's choice. Each field takes its
    largest candidate, so this is an upper bound on every combination."""
    names = sum(1 + max(map(len, group)) for group in (kems, signatures, aeads))
    return (1 + names + CHAFF_POLICY_SIZE + 2
            + 4 + max(map(_host_key_blob_size, signatures))
            + 4 + max(registry.kem(k).public_key_size for k in kems)
            + 4 + max(registry.signature(s).max_signature_size for s in signatures))


def handshake_limits(suite: Suite) -> dict[Flag, int]:
    """The largest body each handshake packet after P1 can have with ``suite``. With one
    suite every field has a single size (a host key of any other size cannot verify), so
    these are the honest packets' exact sizes."""
    kem = registry.kem(suite.kem)
    tag = registry.aead(suite.aead).tag_size
    confirmation = KEY_ID_SIZE + HASH_SIZE + tag
    return {
        Flag.CONNECT_RESPONSE: connect_response_limit((suite.kem,), (suite.signature,),
                                                      (suite.aead,)),
        Flag.EXSTART_REQUEST: 4 + kem.ciphertext_size,
        Flag.EXSTART_RESPONSE: 1,
        Flag.EXCHANGE_REQUEST: 4 + kem.public_key_size + MAC_KEY_SIZE + tag,
        Flag.EXCHANGE_RESPONSE: HASH_SIZE + 4 + kem.ciphertext_size,
        Flag.ESTABLISH_REQUEST: confirmation,
        Flag.ESTABLISH_RESPONSE: confirmation,
    }
