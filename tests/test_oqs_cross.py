"""OpenSSL (cryptography, the production path) and liboqs check each other's FIPS 203 and
FIPS 204: keys from one used by the other, both ways, and FIPS 203's implicit rejection
giving the same secret in both for the same corrupted ciphertext.

Neither library exposes ML-DSA's deterministic variant (both sign hedged, with fresh
randomness), so only hedged signatures are crossed; both take FIPS 204 context strings, so
those are crossed too. The liboqs release tarball does not ship the NIST ACVP vector files
(only the script that fetches them), so none are replayed here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from test_oqs import _liboqs_or_skip

ML_KEM: dict[str, tuple[str, Callable[[bytes], Any], Callable[[bytes], Any]]] = {
    "768": ("ML-KEM-768", mlkem.MLKEM768PrivateKey.from_seed_bytes,
            mlkem.MLKEM768PublicKey.from_public_bytes),
    "1024": ("ML-KEM-1024", mlkem.MLKEM1024PrivateKey.from_seed_bytes,
             mlkem.MLKEM1024PublicKey.from_public_bytes),
}
ML_DSA: dict[str, tuple[str, Callable[[bytes], Any], Callable[[bytes], Any]]] = {
    "65": ("ML-DSA-65", mldsa.MLDSA65PrivateKey.from_seed_bytes,
           mldsa.MLDSA65PublicKey.from_public_bytes),
    "87": ("ML-DSA-87", mldsa.MLDSA87PrivateKey.from_seed_bytes,
           mldsa.MLDSA87PublicKey.from_public_bytes),
}


@pytest.fixture(scope="module")
def oqs() -> Any:
    return _liboqs_or_skip()


@pytest.mark.parametrize("level", sorted(ML_KEM))
def test_mlkem_liboqs_keys_openssl_encapsulates(oqs: Any, level: str) -> None:
    alg, _, public_from_bytes = ML_KEM[level]
    with oqs.KeyEncapsulation(alg) as receiver:
        public = receiver.generate_keypair()
        secret, ciphertext = public_from_bytes(public).encapsulate()
        assert receiver.decap_secret(ciphertext) == secret


@pytest.mark.parametrize("level", sorted(ML_KEM))
def test_mlkem_openssl_keys_liboqs_encapsulates(oqs: Any, level: str) -> None:
    alg, private_from_seed, _ = ML_KEM[level]
    receiver = private_from_seed(secrets.token_bytes(64))
    with oqs.KeyEncapsulation(alg) as sender:
        ciphertext, secret = sender.encap_secret(receiver.public_key().public_bytes_raw())
    assert receiver.decapsulate(ciphertext) == secret


@pytest.mark.parametrize("level", sorted(ML_KEM))
def test_mlkem_same_seed_same_keys_and_same_implicit_rejection(oqs: Any, level: str) -> None:
    """From one 64-byte seed (d || z) both derive the same encapsulation key, and a corrupted
    ciphertext decapsulates to the same pseudorandom secret J(z || c) in both (FIPS 203's
    implicit rejection), not an error and not the sender's secret."""
    alg, private_from_seed, _ = ML_KEM[level]
    seed = secrets.token_bytes(64)
    ours = private_from_seed(seed)
    with oqs.KeyEncapsulation(alg) as theirs:
        public = theirs.generate_keypair_seed(seed)
        assert public == ours.public_key().public_bytes_raw()
        secret, ciphertext = ours.public_key().encapsulate()
        for position in (0, len(ciphertext) // 2, len(ciphertext) - 1):
            corrupted = bytearray(ciphertext)
            corrupted[position] ^= 0x01
            rejected = theirs.decap_secret(bytes(corrupted))
            assert rejected == ours.decapsulate(bytes(corrupted))
            assert rejected != secret and len(rejected) == 32
        assert theirs.decap_secret(ciphertext) == ours.decapsulate(ciphertext) == secret


@pytest.mark.parametrize("level", sorted(ML_DSA))
@pytest.mark.parametrize("context", [b"", b"qsh cross-check"])
def test_mldsa_liboqs_signs_openssl_verifies(oqs: Any, level: str, context: bytes) -> None:
    alg, _, public_from_bytes = ML_DSA[level]
    message = secrets.token_bytes(100)
    with oqs.Signature(alg) as signer:
        public = signer.generate_keypair()
        signature = (signer.sign_with_ctx_str(message, context) if context
                     else signer.sign(message))
    key = public_from_bytes(public)
    key.verify(signature, message, context or None)
    with pytest.raises(InvalidSignature):
        key.verify(signature, message + b"!", context or None)
    with pytest.raises(InvalidSignature):
        key.verify(signature, message, b"another context")


@pytest.mark.parametrize("level", sorted(ML_DSA))
@pytest.mark.parametrize("context", [b"", b"qsh cross-check"])
def test_mldsa_openssl_signs_liboqs_verifies(oqs: Any, level: str, context: bytes) -> None:
    alg, private_from_seed, _ = ML_DSA[level]
    message = secrets.token_bytes(100)
    key = private_from_seed(secrets.token_bytes(32))
    public = key.public_key().public_bytes_raw()
    signature = key.sign(message, context or None)
    again = key.sign(message, context or None)
    assert again != signature  # hedged: fresh randomness in every signature
    with oqs.Signature(alg) as verifier:
        for sig in (signature, again):
            assert verifier.verify_with_ctx_str(message, sig, context, public)
        assert not verifier.verify_with_ctx_str(message + b"!", signature, context, public)
        assert not verifier.verify_with_ctx_str(message, signature, b"other", public)
        if not context:
            assert verifier.verify(message, signature, public)
