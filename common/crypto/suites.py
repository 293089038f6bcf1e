"""The algorithm registry: KEMs, signatures and AEADs behind small interfaces.

Connection code only ever sees these Protocols and looks algorithms up by their wire name,
so adding an algorithm touches no handshake or transport code. Implementations live in
:mod:`common.algorithms` (cryptography + pycryptodome, always present) and
:mod:`common.algorithms_oqs` (liboqs, optional). Which library backs each primitive was
chosen by measurement; see ``bench/primitives.py`` and docs/PROTOCOL.md.
"""

from __future__ import annotations

from typing import Protocol

from common.crypto.rng import Rng
from common.wire import Record


class KemPrivateKey(Protocol):
    def public_bytes(self) -> bytes: ...

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Return the 32-byte shared secret; raise DecapsulationFailure on a malformed
        ciphertext (ML-KEM's implicit rejection still returns a value for a well-formed
        but wrong one, which key confirmation then catches)."""
        ...


class Kem(Protocol):
    name: str
    public_key_size: int
    ciphertext_size: int

    def generate(self, rng: Rng) -> KemPrivateKey: ...

    def encapsulate(self, public_key: bytes, rng: Rng) -> tuple[bytes, bytes]:
        """Return ``(ciphertext, shared_secret)``; raise InvalidInput on a bad public key."""
        ...


class Signature(Protocol):
    name: str
    public_key_size: int
    #: A signature's size. The handshake signs a header that contains the message length,
    #: so only fixed-size schemes can be registered (ML-DSA and SLH-DSA are).
    max_signature_size: int

    def generate(self, rng: Rng) -> tuple[bytes, bytes]:
        """Return ``(signing_key, verification_key)`` as raw bytes."""
        ...

    def sign(self, signing_key: bytes, message: bytes, rng: Rng) -> bytes: ...

    def verify(self, verification_key: bytes, message: bytes, signature: bytes) -> bool:
        """True only for a valid signature; never raises on malformed input."""
        ...


class AeadContext(Protocol):
    """One keyed AEAD instance, reused for every record under that key."""

    def encrypt_into(self, nonce: bytes, data: object, aad: bytes, out: object) -> None: ...

    def decrypt_into(self, nonce: bytes, data: object, aad: bytes, out: object) -> None:
        """Raise :class:`common.errors.AuthenticationFailure` when the tag does not verify."""
        ...

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes | memoryview, aad: bytes) -> bytes: ...


class Aead(Protocol):
    name: str
    key_size: int
    nonce_size: int
    tag_size: int

    def new(self, key: bytes | bytearray) -> AeadContext: ...


class Registry(Record):
    __slots__ = ("kems", "signatures", "aeads")  # noqa: RUF023 (field order)
    kems: dict[str, Kem]
    signatures: dict[str, Signature]
    aeads: dict[str, Aead]

    def __init__(self, kems: dict[str, Kem], signatures: dict[str, Signature],
                 aeads: dict[str, Aead]) -> None:
        object.__setattr__(self, "kems", kems)
        object.__setattr__(self, "signatures", signatures)
        object.__setattr__(self, "aeads", aeads)


#: Preference order, strongest-default first. Names are the wire names.
DEFAULT_KEMS: tuple[str, ...] = ("mlkem768x25519", "mlkem768", "mlkem1024")
DEFAULT_SIGNATURES: tuple[str, ...] = ("mldsa65", "mldsa87")
DEFAULT_AEADS: tuple[str, ...] = ("aes256gcm", "chacha20poly1305")
#: The hash family of the QSMP "protocol string"; fixed in this revision.
HASH_NAME = "sha3-256"
#: What only liboqs provides (common.crypto.oqs registers them when it is installed): named
#: here, without liboqs, so that qsh-keygen and ``qsh -Q`` can say what its absence withholds.
LIBOQS_KEMS: tuple[str, ...] = (
    "mceliece348864", "mceliece460896", "mceliece6688128", "mceliece8192128")
LIBOQS_SIGNATURES: tuple[str, ...] = tuple(
    f"slhdsa-{family}-{level}{variant}"
    for family in ("sha2", "shake") for level in (128, 192, 256) for variant in "sf")
