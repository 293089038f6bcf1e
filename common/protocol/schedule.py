"""The QSMP key schedule, SP 800-185 based (the spec's cSHAKE/KMAC family).

Why KMAC256 rather than the spec's bare ``cSHAKE(sec || pkh)``: KMAC takes the shared secret
as a *key*, so the derivation is a PRF keyed by the secret over public inputs, the textbook
construction; and its customization string gives every derived value its own domain. The
spec's inputs are all still there (the secret and the session cookie ``pkh``); we add the
transcript hash so that every negotiated setting is bound into every key.

Each direction gets ``key || iv || chain``: ``key`` and ``iv`` feed the AEAD (nonce = ``iv``
XOR the record sequence number, as TLS 1.3 does), ``chain`` is carried forward into the
next rekey so a new key depends on all previous secrets of that direction.

Secrets in memory (SECURITY.md): KMAC runs here on pycryptodome's Keccak core directly,
not through ``KMAC256``, so that the secret key, the padded key block and the output only
ever sit in buffers of ours (bytearrays, zeroed by :func:`wipe`) and in Keccak's state,
which is zeroed before it is freed. ``KMAC256.new`` copies the key into three ``bytes``
objects and returns the output as ``bytes``, none of which can be wiped. The derived
``key`` and ``chain`` are bytearrays: the record layer zeroes a key when it is replaced,
the transport a chain once the next one is derived.
"""

from __future__ import annotations

import ctypes
import hashlib

from common.crypto import pycryptodome
from common.wire import Record

pycryptodome.load()

# After choosing the backend. The same Keccak code KMAC256 uses (tests/test_vectors.py and
# test_secrets.py check the result against KMAC256 itself).
from Crypto.Hash.keccak import _raw_keccak_lib  # noqa: E402
from Crypto.Util._raw_api import (  # noqa: E402
    VoidPointer,
    c_size_t,
    c_ubyte,
    c_uint8_ptr,
)

Buffer = bytes | bytearray | memoryview

KEY_SIZE = 32
IV_SIZE = 12
CHAIN_SIZE = 32
HASH_SIZE = 32
MAC_KEY_SIZE = 32

LABEL_C2S = b"c2s"
LABEL_S2C = b"s2c"


class DirectionKeys(Record):
    """One direction's keys. ``key`` and ``chain`` are ours to zero (:func:`wipe`)."""

    __slots__ = ("key", "iv", "chain")  # noqa: RUF023 (field order)
    key: bytearray
    iv: bytes
    chain: bytearray

    @classmethod
    def of(cls, key: Buffer, iv: Buffer, chain: Buffer) -> DirectionKeys:
        """Keys from elsewhere (a handoff), copied into buffers of ours."""
        return cls(bytearray(key), bytes(iv), bytearray(chain))

    def wipe(self) -> None:
        wipe(self.key)
        wipe(self.chain)

    def __init__(self, key: bytearray, iv: bytes, chain: bytearray) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "iv", iv)
        object.__setattr__(self, "chain", chain)


def wipe(buffer: bytearray) -> None:
    """Zero ``buffer`` in place (it keeps its length)."""
    ctypes.memset((ctypes.c_char * len(buffer)).from_buffer(buffer), 0, len(buffer))


_RATE = 136  # cSHAKE256: 1600 - 2 * 256 bits
_CSHAKE_PADDING = 0x04


def _left_encode(x: int) -> bytes:
    n = max(1, (x.bit_length() + 7) // 8)
    return bytes((n,)) + x.to_bytes(n, "big")


def _right_encode(x: int) -> bytes:
    n = max(1, (x.bit_length() + 7) // 8)
    return x.to_bytes(n, "big") + bytes((n,))


def _encode_string(x: bytes) -> bytes:
    return _left_encode(8 * len(x)) + x


def _bytepad(x: bytes) -> bytes:
    padded = _left_encode(_RATE) + x
    return padded + bytes(-len(padded) % _RATE)


def _kmac(key: Buffer, data: Buffer, custom: bytes, length: int) -> bytearray:
    """KMAC256 (SP 800-185) of ``data`` under ``key``: ``length`` bytes, in a bytearray.
    The key is read in place into a padded block of ours, zeroed after absorbing; Keccak's
    state is zeroed (``keccak_reset``) before it is freed."""
    key_view = memoryview(key).cast("B")
    if len(key_view) < 32:
        raise ValueError("a KMAC256 key is at least 32 bytes")  # as KMAC256.new says
    head = _left_encode(_RATE) + _left_encode(8 * len(key_view))
    block = bytearray(-(-(len(head) + len(key_view)) // _RATE) * _RATE)
    out = bytearray(length)
    state = VoidPointer()
    if _raw_keccak_lib.keccak_init(state.address_of(), c_size_t(2 * 32), c_ubyte(24)):
        raise ValueError("Keccak state could not be made")
    try:
        block[:len(head)] = head
        block[len(head):len(head) + len(key_view)] = key_view
        trailer = _right_encode(8 * length)
        for part in (_bytepad(_encode_string(b"KMAC") + _encode_string(custom)), block,
                     data, trailer):
            if _raw_keccak_lib.keccak_absorb(state.get(), c_uint8_ptr(part),
                                             c_size_t(len(part))):
                raise ValueError("Keccak absorb failed")
        if _raw_keccak_lib.keccak_squeeze(state.get(), c_uint8_ptr(out), c_size_t(length),
                                          c_ubyte(_CSHAKE_PADDING)):
            raise ValueError("Keccak squeeze failed")
    finally:
        wipe(block)
        _raw_keccak_lib.keccak_reset(state.get())
        _raw_keccak_lib.keccak_destroy(state.get())
    return out


def session_cookie(session_token: bytes, configuration: bytes, verification_key: bytes) -> bytes:
    """``pkh = H(stok || cfg || pvk)`` (spec 7.1): unique per session and per host key."""
    return hashlib.sha3_256(session_token + configuration + verification_key).digest()


def _split(material: bytearray) -> DirectionKeys:
    keys = DirectionKeys(
        key=material[:KEY_SIZE],
        iv=bytes(material[KEY_SIZE : KEY_SIZE + IV_SIZE]),
        chain=material[KEY_SIZE + IV_SIZE :],
    )
    wipe(material)
    return keys


def derive_direction(
    shared_secret: Buffer, cookie: bytes, transcript_hash: bytes, label: bytes
) -> DirectionKeys:
    """Keys for one direction from the KEM secret its *transmitting* host created."""
    material = _kmac(
        shared_secret,
        cookie + transcript_hash,
        b"qsh traffic " + label,
        KEY_SIZE + IV_SIZE + CHAIN_SIZE,
    )
    return _split(material)


def derive_rekey(shared_secret: Buffer, chain: Buffer, label: bytes) -> DirectionKeys:
    """The next keys of a direction: the fresh KEM secret keys KMAC over the old chain value,
    so the new key needs both, and the old key cannot be recovered from the new."""
    material = _kmac(
        shared_secret, chain, b"qsh rekey " + label, KEY_SIZE + IV_SIZE + CHAIN_SIZE
    )
    return _split(material)


def exchange_mac(mac_key: Buffer, transcript_hash: bytes, ciphertext: bytes) -> bytes:
    """``cc = M_mk(cpta)`` (spec 7.6), with the transcript added so the MAC is session-bound."""
    return bytes(_kmac(mac_key, transcript_hash + ciphertext, b"qsh exchange mac", HASH_SIZE))


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
