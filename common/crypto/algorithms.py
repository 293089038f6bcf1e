"""The built-in algorithms: ML-KEM, X-Wing, ML-DSA, AES-256-GCM and ChaCha20-Poly1305.

Two libraries back them, each where it won on measurement (``python bench/primitives.py``
re-checks the choice on a new machine):

* cryptography (OpenSSL) does everything on the production path except ML-DSA signing:
  ML-KEM, X25519, both AEADs, ML-DSA key generation and verification. It is imported anyway
  for the AEADs and costs ~7 ms to import.
* pycryptodome signs ML-DSA (about twice as fast as OpenSSL, and it takes the caller's
  randomness, so signatures are reproducible), and does the derandomized ML-KEM
  encapsulation that reproducible runs need (caller-supplied coins, so a
  :class:`~common.rng.DeterministicRng` reproduces test vectors byte for byte). It is also
  faster at ML-KEM and ML-DSA key generation and ML-DSA verification, by 50-90 us each, but
  importing it costs ~30 ms (its CPU feature probe runs a C parser). A one-shot ``qsh``
  would pay that on every run to save a fraction of a millisecond, so it is imported on
  first use only: a client that merely verifies the host signature never loads it.

Every secret comes from the ``rng`` passed in. The one exception is the fast path taken when
that rng *is* :data:`~common.rng.SYSTEM_RNG`: ML-KEM encapsulation then lets OpenSSL draw its
own kernel randomness, because nobody can ask for reproducibility from the system RNG.

Errors from the libraries (``ValueError``, ``InvalidTag``, ``InvalidSignature``) never escape:
peer-supplied garbage becomes :class:`~common.errors.InvalidInput`,
:class:`~common.errors.DecapsulationFailure` or :class:`~common.errors.AuthenticationFailure`,
and a bad signature is simply ``False``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable
from typing import Any, Protocol, cast

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from common.crypto import pycryptodome
from common.crypto.rng import Rng, is_system_rng
from common.crypto.secret import scrub
from common.crypto.suites import Aead, AeadContext, Kem, Registry, Signature
from common.errors import AuthenticationFailure, DecapsulationFailure, InvalidInput, RandomFailure

# Wire names. They go into the negotiation offer and the transcript: never rename one.
MLKEM768 = "mlkem768"
MLKEM1024 = "mlkem1024"
#: X-Wing (draft-connolly-cfrg-xwing-kem): ML-KEM-768 combined with X25519.
MLKEM768X25519 = "mlkem768x25519"
MLDSA65 = "mldsa65"
MLDSA87 = "mldsa87"
AES256GCM = "aes256gcm"
CHACHA20POLY1305 = "chacha20poly1305"

SHARED_SECRET_SIZE = 32

# FIPS 203: the 64-byte seed d || z of ML-KEM.KeyGen_internal, and the 32-byte message m
# of ML-KEM.Encaps_internal.
_MLKEM_SEED_SIZE = 64
_MLKEM_COINS_SIZE = 32
# FIPS 204: the 32-byte seed xi of ML-DSA.KeyGen_internal.
_MLDSA_SEED_SIZE = 32
_MLDSA65_PUBLIC_KEY_SIZE = 1952

_X25519_SIZE = 32
_XWING_SEED_SIZE = 32
_XWING_ENCAPS_RANDOMNESS = _MLKEM_COINS_SIZE + _X25519_SIZE
#: The X-Wing combiner's label: the six ASCII bytes ``\.//^\``.
_XWING_LABEL = b"\\.//^\\"


def _draw(rng: Rng, n: int) -> bytes:
    """A short read would silently weaken a key, so it is a hard local failure."""
    data = rng(n)
    if len(data) != n:
        raise RandomFailure(f"the random generator returned {len(data)} bytes, not {n}")
    return data


# --- ML-KEM (FIPS 203) ---------------------------------------------------------------------


class _CgKemPublicKey(Protocol):
    def encapsulate(self) -> tuple[bytes, bytes]: ...

    def public_bytes_raw(self) -> bytes: ...


class _CgKemPrivateKey(Protocol):
    def decapsulate(self, ciphertext: bytes) -> bytes: ...

    def public_key(self) -> _CgKemPublicKey: ...


def _pc_encaps(param_set: str, public_key: bytes, coins: bytes) -> tuple[bytes, bytes]:
    """Derandomized ML-KEM.Encaps_internal: ``(ciphertext, shared_secret)`` for given coins.

    Only pycryptodome exposes it, through the *private* ``MLKEMKey._encaps(coins)``. The
    dependency pin ``pycryptodome>=4.4,<5`` holds it in place, and
    ``tests/test_algorithms.py`` checks that it still exists, so an upgrade that drops it
    fails loudly instead of breaking the test vectors. Imported here, not at module level,
    because only reproducible runs (tests, vectors) take this path.
    """
    pycryptodome.load()
    from Crypto.PublicKey import MLKEM

    try:
        key = MLKEM.construct(param_set=getattr(MLKEM, param_set), ek=bytes(public_key))
    except ValueError as exc:  # wrong length, or a coefficient fails the modulus check
        raise InvalidInput("invalid ML-KEM public key") from exc
    shared_secret, ciphertext = key._encaps(coins)
    return bytes(ciphertext), bytes(shared_secret)


def require_ciphertext_size(ciphertext: bytes, size: int, algorithm: str) -> None:
    """Decapsulation is only defined for exact-size ciphertexts; report any other size as
    the peer's decapsulation failure rather than let a library pad or reject it its way."""
    if len(ciphertext) != size:
        raise DecapsulationFailure(
            f"{algorithm} ciphertext is {len(ciphertext)} bytes, not {size}"
        )


class _MlKemPrivateKey:
    __slots__ = ("_ciphertext_size", "_key", "_public")

    def __init__(self, key: _CgKemPrivateKey, ciphertext_size: int) -> None:
        self._key = key
        self._public = key.public_key().public_bytes_raw()
        self._ciphertext_size = ciphertext_size

    def public_bytes(self) -> bytes:
        return self._public

    def decapsulate(self, ciphertext: bytes) -> bytes:
        # A well-formed but wrong ciphertext yields FIPS 203's implicit-rejection secret,
        # which key confirmation catches; only a wrong length is reported here.
        require_ciphertext_size(ciphertext, self._ciphertext_size, "ML-KEM")
        try:
            return self._key.decapsulate(ciphertext)
        except ValueError as exc:
            raise DecapsulationFailure("invalid ML-KEM ciphertext") from exc


class MlKem:
    """ML-KEM, generated from a seed so a deterministic rng reproduces the key."""

    def __init__(
        self,
        name: str,
        *,
        private_from_seed: Callable[[bytes], _CgKemPrivateKey],
        public_from_bytes: Callable[[bytes], _CgKemPublicKey],
        pc_param_set: str,
        public_key_size: int,
        ciphertext_size: int,
    ) -> None:
        self.name = name
        self.public_key_size = public_key_size
        self.ciphertext_size = ciphertext_size
        self._private_from_seed = private_from_seed
        self._public_from_bytes = public_from_bytes
        self._pc_param_set = pc_param_set

    def generate(self, rng: Rng) -> _MlKemPrivateKey:
        seed = _draw(rng, _MLKEM_SEED_SIZE)
        return _MlKemPrivateKey(self._private_from_seed(seed), self.ciphertext_size)

    def encapsulate(self, public_key: bytes, rng: Rng) -> tuple[bytes, bytes]:
        if len(public_key) != self.public_key_size:
            raise InvalidInput(
                f"{self.name} public key is {len(public_key)} bytes, not {self.public_key_size}"
            )
        if not is_system_rng(rng):
            return _pc_encaps(self._pc_param_set, public_key, _draw(rng, _MLKEM_COINS_SIZE))
        try:
            key = self._public_from_bytes(public_key)
        except ValueError as exc:  # a coefficient fails the FIPS 203 modulus check
            raise InvalidInput(f"invalid {self.name} public key") from exc
        shared_secret, ciphertext = key.encapsulate()
        return ciphertext, shared_secret


# --- X-Wing: ML-KEM-768 + X25519 -----------------------------------------------------------

_XWING_MLKEM_PK = 1184
_XWING_MLKEM_CT = 1088


def _x25519(private: x25519.X25519PrivateKey, public: bytes) -> bytes:
    """X25519, refusing a low-order peer point (OpenSSL's all-zero output check)."""
    return private.exchange(x25519.X25519PublicKey.from_public_bytes(public))


def _xwing_combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """The combined secret; the two partial secrets (fresh objects from the libraries,
    ours alone) and the hashed input that holds them are zeroed."""
    data = ss_m + ss_x + ct_x + pk_x + _XWING_LABEL
    secret = hashlib.sha3_256(data).digest()
    for part in (data, ss_m, ss_x):
        scrub(part)
    return secret


class _XWingPrivateKey:
    __slots__ = ("_mlkem", "_pk_x", "_public", "_x25519")

    def __init__(self, seed: bytes) -> None:
        expanded = hashlib.shake_256(seed).digest(_MLKEM_SEED_SIZE + _X25519_SIZE)
        seed_m, seed_x = expanded[:_MLKEM_SEED_SIZE], expanded[_MLKEM_SEED_SIZE:]
        self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed_m)
        self._x25519 = x25519.X25519PrivateKey.from_private_bytes(seed_x)
        for part in (expanded, seed_m, seed_x):  # OpenSSL holds the keys now
            scrub(part)
        self._pk_x = self._x25519.public_key().public_bytes_raw()
        self._public = self._mlkem.public_key().public_bytes_raw() + self._pk_x

    def public_bytes(self) -> bytes:
        return self._public

    def decapsulate(self, ciphertext: bytes) -> bytes:
        require_ciphertext_size(ciphertext, _XWING_MLKEM_CT + _X25519_SIZE, "X-Wing")
        ct_m = ciphertext[:_XWING_MLKEM_CT]
        ct_x = bytes(ciphertext[_XWING_MLKEM_CT:])
        try:
            ss_m = self._mlkem.decapsulate(ct_m)
            ss_x = _x25519(self._x25519, ct_x)
        except ValueError as exc:
            raise DecapsulationFailure("invalid X-Wing ciphertext") from exc
        return _xwing_combine(ss_m, ss_x, ct_x, self._pk_x)


class XWing:
    """X-Wing, composed from cryptography's ML-KEM-768 and X25519 plus hashlib.

    Byte-identical to pycryptodome's ``Hybrid.MLKEM768_X25519`` (the tests check both
    directions) but 2-2.5x faster to encapsulate and decapsulate: pycryptodome does X25519
    in generic ECC code, ~3x slower than OpenSSL's.
    """

    name = MLKEM768X25519
    public_key_size = _XWING_MLKEM_PK + _X25519_SIZE
    ciphertext_size = _XWING_MLKEM_CT + _X25519_SIZE

    def generate(self, rng: Rng) -> _XWingPrivateKey:
        return _XWingPrivateKey(_draw(rng, _XWING_SEED_SIZE))

    def encapsulate(self, public_key: bytes, rng: Rng) -> tuple[bytes, bytes]:
        if len(public_key) != self.public_key_size:
            raise InvalidInput(
                f"X-Wing public key is {len(public_key)} bytes, not {self.public_key_size}"
            )
        pk_m = bytes(public_key[:_XWING_MLKEM_PK])
        pk_x = bytes(public_key[_XWING_MLKEM_PK:])
        if is_system_rng(rng):
            try:
                ss_m, ct_m = mlkem.MLKEM768PublicKey.from_public_bytes(pk_m).encapsulate()
            except ValueError as exc:
                raise InvalidInput("invalid X-Wing public key (ML-KEM part)") from exc
            ephemeral_seed = _draw(rng, _X25519_SIZE)
        else:
            eseed = _draw(rng, _XWING_ENCAPS_RANDOMNESS)
            ct_m, ss_m = _pc_encaps("ML_KEM_768", pk_m, eseed[:_MLKEM_COINS_SIZE])
            ephemeral_seed = eseed[_MLKEM_COINS_SIZE:]
        ephemeral = x25519.X25519PrivateKey.from_private_bytes(ephemeral_seed)
        ct_x = ephemeral.public_key().public_bytes_raw()
        try:
            ss_x = _x25519(ephemeral, pk_x)
        except ValueError as exc:
            raise InvalidInput("invalid X-Wing public key (low-order X25519 point)") from exc
        return ct_m + ct_x, _xwing_combine(ss_m, ss_x, ct_x, pk_x)


# --- ML-DSA (FIPS 204) ---------------------------------------------------------------------


class _CgDsaPublicKey(Protocol):
    def verify(self, signature: bytes, data: bytes) -> None: ...


class _CgDsaPrivateKey(Protocol):
    def public_key(self) -> _CgDsaPublicKeyRaw: ...


class _CgDsaPublicKeyRaw(Protocol):
    def public_bytes_raw(self) -> bytes: ...


@functools.lru_cache(maxsize=8)
def _pc_signing_key(param_set: str, seed: bytes) -> Any:
    """pycryptodome re-runs ML-DSA key expansion in ``construct`` (~86 us for ML-DSA-65,
    a quarter of a signature), so a host key is expanded once, not once per handshake.
    Public keys are not cached: cryptography parses one in ~7 us."""
    pycryptodome.load()
    from Crypto.PublicKey import MLDSA

    return MLDSA.construct(param_set=getattr(MLDSA, param_set), seed=seed)


def preload_ml_dsa(signing: bool) -> None:
    """Load now what the first ML-DSA verification (and, with ``signing``, the first
    signature) would load when it runs: cryptography's backend module, which its public key
    parser imports to check support (~3 ms), and pycryptodome's ML-DSA (~3 ms). A client
    calls this while the server computes its answer to the first flight, so that the
    verification of the host's signature, and the login's own, run without the wait. The
    parse of a dummy key does OpenSSL's own first-use work for ML-DSA (~1 ms)."""
    import cryptography.hazmat.backends.openssl.backend  # noqa: F401

    with contextlib.suppress(Exception):  # a warm-up: whatever it meets, the real use says
        mldsa.MLDSA65PublicKey.from_public_bytes(bytes(_MLDSA65_PUBLIC_KEY_SIZE))

    if signing:
        pycryptodome.load()
        import Crypto.PublicKey.MLDSA
        import Crypto.Signature.mldsa  # noqa: F401


class MlDsa:
    """ML-DSA with the 32-byte seed as the signing key (what FIPS 204 and RFC 9881 call the
    seed format: the smallest, and the expanded key is always re-derivable from it)."""

    def __init__(
        self,
        name: str,
        *,
        private_from_seed: Callable[[bytes], _CgDsaPrivateKey],
        public_from_bytes: Callable[[bytes], _CgDsaPublicKey],
        pc_param_set: str,
        public_key_size: int,
        signature_size: int,
    ) -> None:
        self.name = name
        self.public_key_size = public_key_size
        self.max_signature_size = signature_size
        self._private_from_seed = private_from_seed
        self._public_from_bytes = public_from_bytes
        self._pc_param_set = pc_param_set

    def generate(self, rng: Rng) -> tuple[bytes, bytes]:
        seed = _draw(rng, _MLDSA_SEED_SIZE)
        public = self._private_from_seed(seed).public_key().public_bytes_raw()
        return seed, public

    def sign(self, signing_key: bytes, message: bytes, rng: Rng) -> bytes:
        """Hedged signing: the 32-byte ``rnd`` of FIPS 204 comes from ``rng``, so a
        deterministic rng reproduces the signature and a broken one still cannot leak the
        key (the signature also depends on the secret seed)."""
        if len(signing_key) != _MLDSA_SEED_SIZE:
            raise InvalidInput(
                f"{self.name} signing key is {len(signing_key)} bytes, not {_MLDSA_SEED_SIZE}"
            )
        pycryptodome.load()
        from Crypto.Signature import mldsa as pc_mldsa

        key = _pc_signing_key(self._pc_param_set, bytes(signing_key))
        return bytes(pc_mldsa.new(key, randfunc=rng).sign(bytes(message)))

    def verify(self, verification_key: bytes, message: bytes, signature: bytes) -> bool:
        if (
            len(verification_key) != self.public_key_size
            or len(signature) != self.max_signature_size
        ):
            return False
        try:
            self._public_from_bytes(verification_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


# --- AEADs ---------------------------------------------------------------------------------

_EncryptInto = Callable[[bytes, object, bytes, object], None]
_Encrypt = Callable[[bytes, bytes, bytes], bytes]
_Decrypt = Callable[[bytes, bytes | memoryview, bytes], bytes]


class _CgAead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes | memoryview,
                associated_data: bytes | None) -> bytes: ...

    def encrypt_into(
        self, nonce: bytes, data: bytes, associated_data: bytes | None, buf: bytearray
    ) -> int: ...

    def decrypt_into(
        self, nonce: bytes, data: bytes, associated_data: bytes | None, buf: bytearray
    ) -> int: ...


class _AeadContext:
    """The encrypt side is cryptography's own bound methods (no Python frame per record);
    the decrypt side adds one frame, only to turn ``InvalidTag`` into our error.

    Nonce length is not re-checked per record: the transport builds every nonce from its
    sequence number (always 12 bytes), and a peer cannot influence it.
    """

    __slots__ = ("_decrypt", "_decrypt_into", "encrypt", "encrypt_into")

    def __init__(self, impl: _CgAead) -> None:
        self.encrypt_into = cast(_EncryptInto, impl.encrypt_into)
        self.encrypt = cast(_Encrypt, impl.encrypt)
        self._decrypt_into = cast(_EncryptInto, impl.decrypt_into)
        self._decrypt = cast(_Decrypt, impl.decrypt)

    def decrypt_into(self, nonce: bytes, data: object, aad: bytes, out: object) -> None:
        try:
            self._decrypt_into(nonce, data, aad, out)
        except InvalidTag:
            raise AuthenticationFailure("record authentication failed") from None

    def decrypt(self, nonce: bytes, data: bytes | memoryview, aad: bytes) -> bytes:
        try:
            return self._decrypt(nonce, data, aad)
        except InvalidTag:
            raise AuthenticationFailure("record authentication failed") from None


class CgAead:
    """A 256-bit-key AEAD from cryptography (OpenSSL): 12-byte nonce, 16-byte tag."""

    key_size = 32
    nonce_size = 12
    tag_size = 16

    def __init__(self, name: str, factory: Callable[[bytes], _CgAead]) -> None:
        self.name = name
        self._factory = factory

    def new(self, key: bytes | bytearray) -> AeadContext:
        # AESGCM would also take a 16- or 24-byte key; the wire name promises 256 bits.
        if len(key) != self.key_size:
            raise InvalidInput(f"{self.name} key is {len(key)} bytes, not {self.key_size}")
        # Handed over as it is, bytearray included: cryptography copies the key into
        # OpenSSL's context and keeps no reference, so the caller can zero its buffer.
        return _AeadContext(self._factory(key))  # type: ignore[arg-type]


# --- registration --------------------------------------------------------------------------


def register(reg: Registry) -> None:
    """Add the built-in algorithms to ``reg`` (called once from :func:`registry.usable`)."""
    kems: tuple[Kem, ...] = (
        MlKem(
            MLKEM768,
            private_from_seed=mlkem.MLKEM768PrivateKey.from_seed_bytes,
            public_from_bytes=mlkem.MLKEM768PublicKey.from_public_bytes,
            pc_param_set="ML_KEM_768",
            public_key_size=1184,
            ciphertext_size=1088,
        ),
        MlKem(
            MLKEM1024,
            private_from_seed=mlkem.MLKEM1024PrivateKey.from_seed_bytes,
            public_from_bytes=mlkem.MLKEM1024PublicKey.from_public_bytes,
            pc_param_set="ML_KEM_1024",
            public_key_size=1568,
            ciphertext_size=1568,
        ),
        XWing(),
    )
    signatures: tuple[Signature, ...] = (
        MlDsa(
            MLDSA65,
            private_from_seed=mldsa.MLDSA65PrivateKey.from_seed_bytes,
            public_from_bytes=mldsa.MLDSA65PublicKey.from_public_bytes,
            pc_param_set="ML_DSA_65",
            public_key_size=_MLDSA65_PUBLIC_KEY_SIZE,
            signature_size=3309,
        ),
        MlDsa(
            MLDSA87,
            private_from_seed=mldsa.MLDSA87PrivateKey.from_seed_bytes,
            public_from_bytes=mldsa.MLDSA87PublicKey.from_public_bytes,
            pc_param_set="ML_DSA_87",
            public_key_size=2592,
            signature_size=4627,
        ),
    )
    aeads: tuple[Aead, ...] = (
        CgAead(AES256GCM, AESGCM),
        CgAead(CHACHA20POLY1305, ChaCha20Poly1305),
    )
    for kem in kems:
        reg.kems[kem.name] = kem
    for sig in signatures:
        reg.signatures[sig.name] = sig
    for aead in aeads:
        reg.aeads[aead.name] = aead
