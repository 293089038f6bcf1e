"""The algorithm providers: round trips, reproducibility, error mapping, and interop with the
other library, so that choosing the faster implementation never changes a byte on the wire."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from Crypto.PublicKey import MLDSA, MLKEM, Hybrid
from Crypto.Signature import mldsa as pc_mldsa
from cryptography.hazmat.primitives.asymmetric import mldsa as cg_mldsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from common.crypto import algorithms
from common.crypto.rng import SYSTEM_RNG, DeterministicRng, Rng
from common.crypto.suites import Aead, Kem, Registry, Signature
from common.errors import (
    AuthenticationFailure,
    DecapsulationFailure,
    InvalidInput,
    RandomFailure,
)

OQS_SKIP_REASON = "liboqs C library not installed: Classic McEliece and SLH-DSA are not offered"


def _builtin() -> Registry:
    reg = Registry(kems={}, signatures={}, aeads={})
    algorithms.register(reg)
    return reg


REG = _builtin()
KEMS = sorted(REG.kems)
SIGS = sorted(REG.signatures)
AEADS = sorted(REG.aeads)


def kem(name: str) -> Kem:
    return REG.kems[name]


def sig(name: str) -> Signature:
    return REG.signatures[name]


def aead(name: str) -> Aead:
    return REG.aeads[name]


def fixed_rng(*chunks: bytes) -> Rng:
    """Hands out exactly the given byte strings, in order, and fails on any other read."""
    queue = list(chunks)

    def rng(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, f"asked for {n} bytes, next chunk is {len(chunk)}"
        return chunk

    return rng


RNGS = pytest.mark.parametrize(
    "make_rng", [lambda: SYSTEM_RNG, lambda: DeterministicRng(b"test")], ids=["system", "det"]
)


# --- registry ------------------------------------------------------------------------------


def test_wire_names_and_sizes() -> None:
    assert KEMS == ["mlkem1024", "mlkem768", "mlkem768x25519"]
    assert SIGS == ["mldsa65", "mldsa87"]
    assert AEADS == ["aes256gcm", "chacha20poly1305"]
    sizes = {n: (kem(n).public_key_size, kem(n).ciphertext_size) for n in KEMS}
    assert sizes == {
        "mlkem768": (1184, 1088),
        "mlkem1024": (1568, 1568),
        "mlkem768x25519": (1216, 1120),
    }
    assert {n: (sig(n).public_key_size, sig(n).max_signature_size) for n in SIGS} == {
        "mldsa65": (1952, 3309),
        "mldsa87": (2592, 4627),
    }
    for name in AEADS:
        assert (aead(name).key_size, aead(name).nonce_size, aead(name).tag_size) == (32, 12, 16)
    for name in KEMS + SIGS + AEADS:
        obj: Any = {**REG.kems, **REG.signatures, **REG.aeads}[name]
        assert obj.name == name


def test_production_path_never_imports_pycryptodome() -> None:
    """Importing pycryptodome costs ~30 ms (bench/primitives.py), paid by every one-shot
    client. Key exchange and host-key verification under SYSTEM_RNG must not load it."""
    code = """if True:
        import sys
        from common.crypto import registry
        from common.crypto.rng import SYSTEM_RNG
        for name in registry.available_kems():
            kem = registry.kem(name)
            private = kem.generate(SYSTEM_RNG)
            ciphertext, secret = kem.encapsulate(private.public_bytes(), SYSTEM_RNG)
            assert private.decapsulate(ciphertext) == secret
        for name in registry.available_signatures():
            sig = registry.signature(name)
            _, public = sig.generate(SYSTEM_RNG)
            assert not sig.verify(public, b"m", bytes(sig.max_signature_size))
        ctx = registry.aead("aes256gcm").new(bytes(32))
        assert ctx.decrypt(bytes(12), ctx.encrypt(bytes(12), b"x", b""), b"") == b"x"
        loaded = sorted(m for m in sys.modules if m == "Crypto" or m.startswith("Crypto."))
        assert not loaded, loaded
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_short_rng_is_a_random_failure() -> None:
    with pytest.raises(RandomFailure):
        kem("mlkem768").generate(lambda n: b"\x00" * (n - 1))


# --- KEMs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEMS)
@pytest.mark.parametrize("gen_det", [False, True], ids=["gen-system", "gen-det"])
@pytest.mark.parametrize("enc_det", [False, True], ids=["enc-system", "enc-det"])
def test_kem_round_trip_across_paths(name: str, gen_det: bool, enc_det: bool) -> None:
    """The fast path (SYSTEM_RNG) and the reproducible path interoperate both ways."""
    k = kem(name)
    private = k.generate(DeterministicRng(b"g") if gen_det else SYSTEM_RNG)
    public = private.public_bytes()
    assert len(public) == k.public_key_size
    ciphertext, secret = k.encapsulate(public, DeterministicRng(b"e") if enc_det else SYSTEM_RNG)
    assert len(ciphertext) == k.ciphertext_size
    assert len(secret) == 32
    assert private.decapsulate(ciphertext) == secret


@pytest.mark.parametrize("name", KEMS)
def test_kem_deterministic_under_deterministic_rng(name: str) -> None:
    def run(seed: bytes) -> tuple[bytes, bytes, bytes]:
        rng = DeterministicRng(seed)
        public = kem(name).generate(rng).public_bytes()
        return (public, *kem(name).encapsulate(public, rng))

    assert run(b"one") == run(b"one")
    a, b = run(b"one"), run(b"two")
    assert all(x != y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", KEMS)
def test_kem_system_rng_is_randomized(name: str) -> None:
    public = kem(name).generate(SYSTEM_RNG).public_bytes()
    assert kem(name).encapsulate(public, SYSTEM_RNG) != kem(name).encapsulate(public, SYSTEM_RNG)
    assert kem(name).generate(SYSTEM_RNG).public_bytes() != public


@pytest.mark.parametrize("name", KEMS)
@pytest.mark.parametrize("where", [0, 500, -1])
def test_kem_implicit_rejection(name: str, where: int) -> None:
    """FIPS 203: a well-formed but wrong ciphertext gives an unrelated secret, silently.
    (For X-Wing, the last byte is in the X25519 part: any point changes the secret.)"""
    private = kem(name).generate(DeterministicRng(b"k"))
    ciphertext, secret = kem(name).encapsulate(private.public_bytes(), DeterministicRng(b"e"))
    tampered = bytearray(ciphertext)
    tampered[where] ^= 0x01
    other = private.decapsulate(bytes(tampered))
    assert len(other) == 32
    assert other != secret
    assert private.decapsulate(bytes(tampered)) == other  # deterministic rejection value


@pytest.mark.parametrize("name", KEMS)
@RNGS
def test_kem_bad_public_key_length(name: str, make_rng: Callable[[], Rng]) -> None:
    size = kem(name).public_key_size
    for bad in (b"", b"\x00" * (size - 1), b"\x00" * (size + 1)):
        with pytest.raises(InvalidInput):
            kem(name).encapsulate(bad, make_rng())


@pytest.mark.parametrize("name", KEMS)
@RNGS
def test_kem_public_key_failing_modulus_check(name: str, make_rng: Callable[[], Rng]) -> None:
    """All-0xff encodes coefficients >= q: FIPS 203's modulus check rejects it in both
    libraries, and both paths report InvalidInput, never ValueError."""
    bad = b"\xff" * kem(name).public_key_size
    with pytest.raises(InvalidInput):
        kem(name).encapsulate(bad, make_rng())


@pytest.mark.parametrize("name", KEMS)
def test_kem_bad_ciphertext_length(name: str) -> None:
    private = kem(name).generate(SYSTEM_RNG)
    size = kem(name).ciphertext_size
    for bad in (b"", b"\x00" * (size - 1), b"\x00" * (size + 1)):
        with pytest.raises(DecapsulationFailure):
            private.decapsulate(bad)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(KEMS), data=st.binary(max_size=1700))
def test_kem_decapsulate_arbitrary_bytes(name: str, data: bytes) -> None:
    private = kem(name).generate(DeterministicRng(b"fixed"))
    try:
        secret = private.decapsulate(data)
    except DecapsulationFailure:
        assert len(data) != kem(name).ciphertext_size or name == "mlkem768x25519"
    else:
        assert len(secret) == 32


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(KEMS), det=st.booleans(), data=st.binary(max_size=1700))
def test_kem_encapsulate_arbitrary_public_key(name: str, det: bool, data: bytes) -> None:
    rng = DeterministicRng(b"e") if det else SYSTEM_RNG
    try:
        ciphertext, secret = kem(name).encapsulate(data, rng)
    except InvalidInput:
        return
    assert len(data) == kem(name).public_key_size
    assert (len(ciphertext), len(secret)) == (kem(name).ciphertext_size, 32)


# ML-KEM against the other library.


@pytest.mark.parametrize(
    ("name", "param_set"), [("mlkem768", MLKEM.ML_KEM_768), ("mlkem1024", MLKEM.ML_KEM_1024)]
)
def test_mlkem_matches_pycryptodome(name: str, param_set: Any) -> None:
    seed, coins = os.urandom(64), os.urandom(32)
    private = kem(name).generate(fixed_rng(seed))
    theirs = MLKEM.construct(param_set=param_set, seed=seed)
    assert private.public_bytes() == theirs.ek
    ciphertext, secret = kem(name).encapsulate(private.public_bytes(), fixed_rng(coins))
    assert theirs._encaps(coins) == (secret, ciphertext)
    assert theirs._decaps(ciphertext) == secret
    fast_ct, fast_secret = kem(name).encapsulate(private.public_bytes(), SYSTEM_RNG)
    assert theirs._decaps(fast_ct) == fast_secret


def test_pycryptodome_private_encaps_still_exists() -> None:
    """Our reproducible encapsulation depends on pycryptodome's *private* ``_encaps``
    (pinned by ``pycryptodome>=4.4,<5``). If an upgrade removes or changes it, fail here,
    by name, rather than as a baffling test-vector mismatch."""
    assert callable(getattr(MLKEM.MLKEMKey, "_encaps", None))
    assert callable(getattr(Hybrid.HybridKey, "_encaps", None))
    key = MLKEM.construct(param_set=MLKEM.ML_KEM_768, seed=b"\x01" * 64)
    secret, ciphertext = key._encaps(b"\x02" * 32)  # order: (shared secret, ciphertext)
    assert (len(secret), len(ciphertext)) == (32, 1088)
    assert key._encaps(b"\x02" * 32) == (secret, ciphertext)


# X-Wing against pycryptodome's Hybrid.MLKEM768_X25519.


def _their_xwing(seed: bytes | None = None, pk: bytes | None = None) -> Any:
    return Hybrid._construct(param_set=Hybrid.MLKEM768_X25519, seed=seed, pk=pk)


def test_xwing_matches_pycryptodome() -> None:
    xwing = kem("mlkem768x25519")
    for _ in range(3):
        seed, randomness = os.urandom(32), os.urandom(64)
        ours = xwing.generate(fixed_rng(seed))
        theirs = _their_xwing(seed=seed)
        assert ours.public_bytes() == theirs._pk
        # Same randomness: identical ciphertext and secret.
        ciphertext, secret = xwing.encapsulate(ours.public_bytes(), fixed_rng(randomness))
        their_secret, their_ct = _their_xwing(pk=ours.public_bytes())._encaps(randomness)
        assert (ciphertext, secret) == (their_ct, their_secret)
        # Each decapsulates the other's (fast-path) ciphertexts.
        fast_ct, fast_secret = xwing.encapsulate(ours.public_bytes(), SYSTEM_RNG)
        assert theirs._decaps(fast_ct) == fast_secret
        their_secret, their_ct = theirs._encaps()
        assert ours.decapsulate(their_ct) == their_secret


def test_xwing_combiner_layout() -> None:
    """SHA3-256(ss_M || ss_X || ct_X || pk_X || label): recomputed from the parts."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    seed, randomness = os.urandom(32), os.urandom(64)
    private = kem("mlkem768x25519").generate(fixed_rng(seed))
    public = private.public_bytes()
    ciphertext, secret = kem("mlkem768x25519").encapsulate(public, fixed_rng(randomness))
    ss_m, ct_m = MLKEM.construct(param_set=MLKEM.ML_KEM_768, ek=public[:1184])._encaps(
        randomness[:32]
    )
    eph = x25519.X25519PrivateKey.from_private_bytes(randomness[32:])
    ct_x = eph.public_key().public_bytes_raw()
    ss_x = eph.exchange(x25519.X25519PublicKey.from_public_bytes(public[1184:]))
    assert ciphertext == ct_m + ct_x
    assert secret == hashlib.sha3_256(ss_m + ss_x + ct_x + public[1184:] + b"\\.//^\\").digest()
    assert len(b"\\.//^\\") == 6


# Low-order X25519 points: u = 0 and u = 1 give an all-zero shared secret.
LOW_ORDER = [b"\x00" * 32, b"\x01" + b"\x00" * 31]


@pytest.mark.parametrize("point", LOW_ORDER)
@RNGS
def test_xwing_rejects_low_order_public_point(point: bytes, make_rng: Callable[[], Rng]) -> None:
    public = kem("mlkem768x25519").generate(SYSTEM_RNG).public_bytes()
    with pytest.raises(InvalidInput):
        kem("mlkem768x25519").encapsulate(public[:1184] + point, make_rng())


@pytest.mark.parametrize("point", LOW_ORDER)
def test_xwing_rejects_low_order_ciphertext_point(point: bytes) -> None:
    private = kem("mlkem768x25519").generate(SYSTEM_RNG)
    ciphertext, _ = kem("mlkem768x25519").encapsulate(private.public_bytes(), SYSTEM_RNG)
    with pytest.raises(DecapsulationFailure):
        private.decapsulate(ciphertext[:1088] + point)


# --- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGS)
@RNGS
def test_signature_round_trip(name: str, make_rng: Callable[[], Rng]) -> None:
    rng = make_rng()
    signing, verification = sig(name).generate(rng)
    assert (len(signing), len(verification)) == (32, sig(name).public_key_size)
    signature = sig(name).sign(signing, b"transcript", rng)
    assert len(signature) == sig(name).max_signature_size
    assert sig(name).verify(verification, b"transcript", signature)
    assert not sig(name).verify(verification, b"transcripT", signature)
    other = sig(name).generate(SYSTEM_RNG)[1]
    assert not sig(name).verify(other, b"transcript", signature)


@pytest.mark.parametrize("name", SIGS)
def test_signature_deterministic_under_deterministic_rng(name: str) -> None:
    def run(seed: bytes) -> tuple[bytes, bytes, bytes]:
        rng = DeterministicRng(seed)
        signing, verification = sig(name).generate(rng)
        return signing, verification, sig(name).sign(signing, b"m", rng)

    assert run(b"one") == run(b"one")
    assert run(b"one")[2] != run(b"two")[2]


@pytest.mark.parametrize("name", SIGS)
def test_signature_is_hedged(name: str) -> None:
    """Same key and message, different rnd: different signatures, all valid."""
    signing, verification = sig(name).generate(SYSTEM_RNG)
    a = sig(name).sign(signing, b"m", SYSTEM_RNG)
    b = sig(name).sign(signing, b"m", SYSTEM_RNG)
    assert a != b
    assert sig(name).verify(verification, b"m", a)
    assert sig(name).verify(verification, b"m", b)


@pytest.mark.parametrize("name", SIGS)
def test_signature_malformed_inputs(name: str) -> None:
    s = sig(name)
    signing, verification = s.generate(SYSTEM_RNG)
    signature = s.sign(signing, b"m", SYSTEM_RNG)
    assert not s.verify(verification[:-1], b"m", signature)
    assert not s.verify(verification + b"\x00", b"m", signature)
    assert not s.verify(b"", b"m", signature)
    assert not s.verify(verification, b"m", signature[:-1])
    assert not s.verify(verification, b"m", signature + b"\x00")
    assert not s.verify(verification, b"m", b"")
    assert not s.verify(b"\xff" * s.public_key_size, b"m", signature)
    assert not s.verify(verification, b"m", b"\xff" * s.max_signature_size)
    for bad in (b"", signing[:-1], signing + b"\x00"):
        with pytest.raises(InvalidInput):
            s.sign(bad, b"m", SYSTEM_RNG)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(SIGS),
    key=st.binary(max_size=2600),
    signature=st.binary(max_size=4700),
    pad=st.booleans(),
)
def test_verify_never_raises(name: str, key: bytes, signature: bytes, pad: bool) -> None:
    s = sig(name)
    if pad:  # right sizes, random content: exercises the libraries' own parsing
        key = (key * s.public_key_size)[: s.public_key_size] or b"\x00" * s.public_key_size
        signature = (signature * s.max_signature_size)[: s.max_signature_size] or (
            b"\x00" * s.max_signature_size
        )
    assert s.verify(key, b"m", signature) is False


@pytest.mark.parametrize(
    ("name", "cg_private", "cg_public", "pc_param"),
    [
        ("mldsa65", cg_mldsa.MLDSA65PrivateKey, cg_mldsa.MLDSA65PublicKey, MLDSA.ML_DSA_65),
        ("mldsa87", cg_mldsa.MLDSA87PrivateKey, cg_mldsa.MLDSA87PublicKey, MLDSA.ML_DSA_87),
    ],
)
def test_mldsa_interop(name: str, cg_private: Any, cg_public: Any, pc_param: Any) -> None:
    """Keys from the seed agree across both libraries, and each verifies the other's
    signatures (we sign with pycryptodome and verify with cryptography)."""
    signing, verification = sig(name).generate(SYSTEM_RNG)
    assert MLDSA.construct(param_set=pc_param, seed=signing).pk == verification
    theirs = cg_private.from_seed_bytes(signing)
    assert theirs.public_key().public_bytes_raw() == verification
    ours = sig(name).sign(signing, b"hello", SYSTEM_RNG)
    cg_public.from_public_bytes(verification).verify(ours, b"hello")  # raises if invalid
    pc_mldsa.new(MLDSA.construct(param_set=pc_param, pk=verification)).verify(b"hello", ours)
    assert sig(name).verify(verification, b"hello", theirs.sign(b"hello"))


def test_mldsa_signing_key_cache_is_used() -> None:
    signing, _ = sig("mldsa65").generate(SYSTEM_RNG)
    sig("mldsa65").sign(signing, b"a", SYSTEM_RNG)
    before = algorithms._pc_signing_key.cache_info().hits
    sig("mldsa65").sign(signing, b"b", SYSTEM_RNG)
    assert algorithms._pc_signing_key.cache_info().hits == before + 1


# --- AEADs ---------------------------------------------------------------------------------

CG_AEADS: dict[str, Callable[[bytes], Any]] = {
    "aes256gcm": AESGCM,
    "chacha20poly1305": ChaCha20Poly1305,
}


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(AEADS),
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    data=st.binary(max_size=2000),
    aad=st.binary(max_size=32),
)
def test_aead_round_trip(name: str, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> None:
    ctx = aead(name).new(key)
    sealed = ctx.encrypt(nonce, data, aad)
    assert sealed == CG_AEADS[name](key).encrypt(nonce, data, aad)
    assert len(sealed) == len(data) + 16
    assert ctx.decrypt(nonce, sealed, aad) == data
    out = bytearray(len(data) + 16)
    ctx.encrypt_into(nonce, memoryview(data), aad, memoryview(out))
    assert bytes(out) == sealed
    plain = bytearray(len(data))
    ctx.decrypt_into(nonce, memoryview(out), aad, plain)
    assert plain == data


@pytest.mark.parametrize("name", AEADS)
def test_aead_tamper_is_authentication_failure(name: str) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(12), b"header"
    ctx = aead(name).new(key)
    sealed = ctx.encrypt(nonce, b"secret data", aad)
    cases = [
        (nonce, bytes([sealed[0] ^ 1]) + sealed[1:], aad),  # ciphertext
        (nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad),  # tag
        (nonce, sealed, aad + b"!"),  # associated data
        (bytes(12), sealed, aad),  # nonce
        (nonce, sealed[:15], aad),  # shorter than a tag
        (nonce, b"", aad),
    ]
    for n, data, a in cases:
        with pytest.raises(AuthenticationFailure):
            ctx.decrypt(n, data, a)
        with pytest.raises(AuthenticationFailure):
            ctx.decrypt_into(n, data, a, bytearray(max(len(data) - 16, 0)))
    with pytest.raises(AuthenticationFailure):
        aead(name).new(os.urandom(32)).decrypt(nonce, sealed, aad)


@pytest.mark.parametrize("name", AEADS)
def test_aead_bad_key_size(name: str) -> None:
    for bad in (b"", b"\x00" * 16, b"\x00" * 24, b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(InvalidInput):
            aead(name).new(bad)


def test_aes256gcm_known_answer() -> None:
    """NIST GCM spec test cases 13 and 14 (256-bit all-zero key and IV)."""
    ctx = aead("aes256gcm").new(bytes(32))
    assert ctx.encrypt(bytes(12), b"", b"").hex() == "530f8afbc74536b9a963b4f1c4cb738b"
    assert ctx.encrypt(bytes(12), bytes(16), b"").hex() == (
        "cea7403d4d606b6e074ec5d3baf39d18" "d0d1c8a799996bf0265b98b5d48ab919"
    )


def test_chacha20poly1305_known_answer() -> None:
    """RFC 8439, section 2.8.2."""
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    sealed = aead("chacha20poly1305").new(key).encrypt(nonce, plaintext, aad)
    assert sealed[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert sealed[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"


# --- liboqs --------------------------------------------------------------------------------


def _forget_oqs_module() -> None:
    """Undo an import of common.algorithms_oqs made against a fake, so that nothing later
    in the session (registry.usable()) picks up the fake's algorithms."""
    sys.modules.pop("common.crypto.oqs", None)
    import common.crypto

    # The package keeps the submodule as an attribute: "from common.crypto import oqs" would
    # hand the fake-bound module to every later test.
    if "oqs" in vars(common.crypto):
        delattr(common.crypto, "oqs")


@pytest.fixture
def isolated_oqs_import() -> Iterator[None]:
    _forget_oqs_module()
    yield
    _forget_oqs_module()


@pytest.fixture
def oqs_registry() -> Registry:
    try:
        from common.crypto import oqs as algorithms_oqs
    except ImportError:
        pytest.skip(OQS_SKIP_REASON)
    reg = Registry(kems={}, signatures={}, aeads={})
    algorithms_oqs.register(reg)
    return reg


def test_oqs_mceliece_round_trip(oqs_registry: Registry) -> None:
    if "mceliece348864" not in oqs_registry.kems:
        pytest.skip("this liboqs build does not enable Classic-McEliece-348864")
    k = oqs_registry.kems["mceliece348864"]
    private = k.generate(SYSTEM_RNG)
    ciphertext, secret = k.encapsulate(private.public_bytes(), SYSTEM_RNG)
    assert private.decapsulate(ciphertext) == secret
    with pytest.raises(DecapsulationFailure):
        private.decapsulate(ciphertext[:-1])
    with pytest.raises(InvalidInput):
        k.encapsulate(private.public_bytes()[:-1], SYSTEM_RNG)


def test_oqs_slhdsa_round_trip(oqs_registry: Registry) -> None:
    names = [n for n in ("slhdsa-sha2-128f", "slhdsa-sha2-128s") if n in oqs_registry.signatures]
    if not names:
        pytest.skip("this liboqs build does not enable SLH-DSA-SHA2-128")
    s = oqs_registry.signatures[names[0]]
    signing, verification = s.generate(SYSTEM_RNG)
    signature = s.sign(signing, b"m", SYSTEM_RNG)
    assert s.verify(verification, b"m", signature)
    assert not s.verify(verification, b"x", signature)
    assert not s.verify(verification[:-1], b"m", signature)
    assert not s.verify(verification, b"m", signature + b"\x00")


class _Tripwire(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"oqs.{name} was used although liboqs is missing")


def test_oqs_missing_library_stops_before_liboqs_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, isolated_oqs_import: None
) -> None:
    """Imported without its C library, liboqs-python git-clones and builds liboqs. Our module
    must raise ImportError (registry: "not offered") before ``import oqs`` runs."""
    monkeypatch.setitem(sys.modules, "oqs", _Tripwire("oqs"))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))  # an empty install directory
    with pytest.raises(ImportError, match="liboqs C library is not installed"):
        importlib.import_module("common.crypto.oqs")


def _fake_oqs() -> types.ModuleType:
    """liboqs-python's documented surface (KeyEncapsulation, Signature, details, the
    enabled-mechanism lists) over toy, insecure algorithms: it runs our adapter's code on
    machines without liboqs."""

    def h(*parts: bytes, n: int) -> bytes:
        return hashlib.shake_256(b"".join(parts)).digest(n)

    def xor(a: bytes, b: bytes) -> bytes:
        return bytes(x ^ y for x, y in zip(a, b, strict=True))

    class Mechanism:
        enabled: tuple[str, ...] = ()

        def __init__(self, alg: str, secret_key: bytes | None = None) -> None:
            if alg not in self.enabled:
                raise RuntimeError(f"{alg} is not supported by OQS")
            self.secret_key = secret_key

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def export_secret_key(self) -> bytes | None:
            return self.secret_key

    class KeyEncapsulation(Mechanism):
        enabled = ("Classic-McEliece-348864", "ML-KEM-768")
        details = {
            "length_public_key": 64,
            "length_secret_key": 32,
            "length_ciphertext": 32,
            "length_shared_secret": 32,
        }

        def generate_keypair(self) -> bytes:
            self.secret_key = os.urandom(32)
            return h(b"pk", self.secret_key, n=64)

        def encap_secret(self, public_key: bytes) -> tuple[bytes, bytes]:
            m = os.urandom(32)
            return xor(m, h(b"mask", public_key, n=32)), h(b"ss", m, public_key, n=32)

        def decap_secret(self, ciphertext: bytes) -> bytes:
            assert self.secret_key is not None
            public_key = h(b"pk", self.secret_key, n=64)
            m = xor(ciphertext, h(b"mask", public_key, n=32))
            return h(b"ss", m, public_key, n=32)

    class Signature(Mechanism):
        enabled = ("SLH_DSA_PURE_SHA2_128S", "SPHINCS+-SHAKE-256s-simple", "ML-DSA-65")
        details = {"length_public_key": 32, "length_secret_key": 64, "length_signature": 48}

        def generate_keypair(self) -> bytes:
            self.secret_key = os.urandom(64)
            return h(b"pk", self.secret_key, n=32)

        def sign(self, message: bytes) -> bytes:
            assert self.secret_key is not None
            return h(h(b"pk", self.secret_key, n=32), message, n=48)

        def verify(self, message: bytes, signature: bytes, public_key: bytes) -> bool:
            if message == b"explode":
                raise RuntimeError("liboqs failure")
            return signature == h(public_key, message, n=48)

    fake = types.ModuleType("oqs")
    fake.KeyEncapsulation = KeyEncapsulation  # type: ignore[attr-defined]
    fake.Signature = Signature  # type: ignore[attr-defined]
    fake.get_enabled_kem_mechanisms = lambda: KeyEncapsulation.enabled  # type: ignore[attr-defined]
    fake.get_enabled_sig_mechanisms = lambda: Signature.enabled  # type: ignore[attr-defined]
    return fake


def test_oqs_adapter_against_fake_liboqs(
    monkeypatch: pytest.MonkeyPatch, isolated_oqs_import: None
) -> None:
    fake = _fake_oqs()
    monkeypatch.setitem(sys.modules, "oqs", fake)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "liboqs.so.fake")
    monkeypatch.setattr(ctypes, "CDLL", lambda path: object())
    module: Any = importlib.import_module("common.crypto.oqs")
    reg = Registry(kems={}, signatures={}, aeads={})
    module.register(reg)
    # Only our names; ML-KEM/ML-DSA stay with the built-in provider.
    assert set(reg.kems) == {"mceliece348864"}
    assert set(reg.signatures) == {"slhdsa-sha2-128s", "sphincs-shake-256s-simple"}

    k = reg.kems["mceliece348864"]
    assert (k.public_key_size, k.ciphertext_size) == (64, 32)
    private = k.generate(DeterministicRng(b"ignored"))
    ciphertext, secret = k.encapsulate(private.public_bytes(), SYSTEM_RNG)
    assert private.decapsulate(ciphertext) == secret
    with pytest.raises(DecapsulationFailure):
        private.decapsulate(ciphertext + b"\x00")
    with pytest.raises(InvalidInput):
        k.encapsulate(private.public_bytes()[:-1], SYSTEM_RNG)
    monkeypatch.setattr(fake.KeyEncapsulation, "decap_secret", lambda self, ct: 0)  # < 0.10
    with pytest.raises(DecapsulationFailure):
        private.decapsulate(ciphertext)

    s = reg.signatures["slhdsa-sha2-128s"]
    assert (s.public_key_size, s.max_signature_size) == (32, 48)
    signing, verification = s.generate(SYSTEM_RNG)
    signature = s.sign(signing, b"m", SYSTEM_RNG)
    assert s.verify(verification, b"m", signature)
    assert not s.verify(verification, b"n", signature)
    assert not s.verify(verification, b"explode", signature)  # a liboqs error is just False
    assert not s.verify(verification[:-1], b"m", signature)
    assert not s.verify(verification, b"m", signature + b"\x00")
    assert not s.verify(verification, b"m", b"")
    with pytest.raises(InvalidInput):
        s.sign(signing[:-1], b"m", SYSTEM_RNG)
