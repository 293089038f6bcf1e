"""The QSMP key schedule, SP 800-185 based (the spec's cSHAKE/KMAC family).

Why KMAC256 rather than the spec's bare ``cSHAKE(sec || pkh)``: KMAC takes the shared secret
as a *key*, so the derivation is a PRF keyed by the secret over public inputs, the textbook
construction; and its customization string gives every derived value its own domain. The
spec's inputs are all still there (the secret and the session cookie ``pkh``); we add the
transcript hash so that every negotiated setting is bound into every key.

Each direction gets ``key || iv || chain``: ``key`` and ``iv`` feed the AEAD (nonce = ``iv``
XOR the record sequence number, as TLS 1.3 does), ``chain`` is carried forward into the
next rekey so a new key depends on all previous secrets of that direction.
"""

from __future__ import annotations

import hashlib

from common.crypto import pycryptodome
from common.wire import Record

pycryptodome.load()

from Crypto.Hash import KMAC256  # noqa: E402  (after choosing the backend)

KEY_SIZE = 32
IV_SIZE = 12
CHAIN_SIZE = 32
HASH_SIZE = 32
MAC_KEY_SIZE = 32

LABEL_C2S = b"c2s"
LABEL_S2C = b"s2c"


class DirectionKeys(Record):
    __slots__ = ("key", "iv", "chain")  # noqa: RUF023 (field order)
    key: bytes
    iv: bytes
    chain: bytes

    def __init__(self, key: bytes, iv: bytes, chain: bytes) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "iv", iv)
        object.__setattr__(self, "chain", chain)


def _kmac(key: bytes, data: bytes, custom: bytes, length: int) -> bytes:
    return KMAC256.new(key=key, data=data, mac_len=length, custom=custom).digest()


def session_cookie(session_token: bytes, configuration: bytes, verification_key: bytes) -> bytes:
    """``pkh = H(stok || cfg || pvk)`` (spec 7.1): unique per session and per host key."""
    return hashlib.sha3_256(session_token + configuration + verification_key).digest()


def _split(material: bytes) -> DirectionKeys:
    return DirectionKeys(
        key=material[:KEY_SIZE],
        iv=material[KEY_SIZE : KEY_SIZE + IV_SIZE],
        chain=material[KEY_SIZE + IV_SIZE :],
    )


def derive_direction(
    shared_secret: bytes, cookie: bytes, transcript_hash: bytes, label: bytes
) -> DirectionKeys:
    """Keys for one direction from the KEM secret its *transmitting* host created."""
    material = _kmac(
        shared_secret,
        cookie + transcript_hash,
        b"qsh traffic " + label,
        KEY_SIZE + IV_SIZE + CHAIN_SIZE,
    )
    return _split(material)


def derive_rekey(shared_secret: bytes, chain: bytes, label: bytes) -> DirectionKeys:
    """The next keys of a direction: the fresh KEM secret keys KMAC over the old chain value,
    so the new key needs both, and the old key cannot be recovered from the new."""
    material = _kmac(
        shared_secret, chain, b"qsh rekey " + label, KEY_SIZE + IV_SIZE + CHAIN_SIZE
    )
    return _split(material)


def exchange_mac(mac_key: bytes, transcript_hash: bytes, ciphertext: bytes) -> bytes:
    """``cc = M_mk(cpta)`` (spec 7.6), with the transcript added so the MAC is session-bound."""
    return _kmac(mac_key, transcript_hash + ciphertext, b"qsh exchange mac", HASH_SIZE)


def signed_data(transcript_hash: bytes) -> bytes:
    """What the server's host key signs: a context string, then the transcript hash.
    The context keeps a qsh signature from ever being valid in another protocol."""
    return b"qsh QSMP v1 server signature\x00" + transcript_hash


class Transcript:
    """A running SHA3-256 over handshake packets, in protocol order (not arrival order)."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha3_256()

    def add(self, *parts: bytes | bytearray | memoryview) -> None:
        for part in parts:
            self._hash.update(part)

    def digest(self) -> bytes:
        return self._hash.copy().digest()

    def digest_with(self, *parts: bytes | bytearray | memoryview) -> bytes:
        """The hash as if ``parts`` were appended, without appending them."""
        h = self._hash.copy()
        for part in parts:
            h.update(part)
        return h.digest()
