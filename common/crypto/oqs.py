"""Optional algorithms from liboqs: Classic McEliece KEMs and SLH-DSA signatures.

These are QSMP's alternates (a code-based KEM and a hash-based signature, so a break of
lattices alone does not break the channel). No pure-Python-installable library implements
them, so they come from the liboqs C library through liboqs-python, and only when both are
installed: importing this module raises :class:`ImportError` otherwise, which
:func:`common.registry.usable` takes as "not offered".

**No download, ever.** When ``import oqs`` cannot find the shared library, liboqs-python
(0.8 and later) clones liboqs from GitHub and builds it with cmake, after a five-second
countdown printed to stdout. A remote shell must not do that on import, so we first look for
the library exactly where liboqs-python would (``ctypes.util.find_library``, then
``$OQS_INSTALL_PATH`` or ``~/_oqs``, ``lib`` and ``lib64``), and only import ``oqs`` when a
load from there succeeds.

**Not reproducible.** liboqs draws key and encapsulation randomness from its own RNG (the
kernel's). Its only hook for another source, ``OQS_randombytes_custom_algorithm``, is
process-global, so these algorithms ignore the ``rng`` argument, even a
:class:`~common.rng.DeterministicRng`: test vectors use the built-in algorithms.

SLH-DSA here is FIPS 205 ("pure", empty context), under liboqs' ``SLH_DSA_PURE_*`` names.
The round-3 SPHINCS+ that older liboqs releases ship instead is a different algorithm (its
signatures do not verify as SLH-DSA), so it gets its own wire names, ``sphincs-*``, rather
than being passed off as SLH-DSA to a peer whose liboqs has the real one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import io
import logging
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

from common.crypto.algorithms import require_ciphertext_size
from common.crypto.rng import Rng
from common.crypto.secret import scrub
from common.crypto.suites import Kem, Registry, Signature
from common.errors import DecapsulationFailure, InvalidInput, LocalError

# Wire names. Classic McEliece: the round-4 parameter sets without the "f" (fast-keygen)
# variants, whose keys are the same size and whose use would be invisible on the wire.
MCELIECE348864 = "mceliece348864"
MCELIECE460896 = "mceliece460896"
MCELIECE6688128 = "mceliece6688128"
MCELIECE8192128 = "mceliece8192128"

_MCELIECE: dict[str, tuple[str, ...]] = {
    MCELIECE348864: ("Classic-McEliece-348864",),
    MCELIECE460896: ("Classic-McEliece-460896",),
    MCELIECE6688128: ("Classic-McEliece-6688128",),
    MCELIECE8192128: ("Classic-McEliece-8192128",),
}


def _slh_dsa_names() -> dict[str, tuple[str, ...]]:
    names: dict[str, tuple[str, ...]] = {}
    for family, fips in (("sha2", "SHA2"), ("shake", "SHAKE")):
        for level in (128, 192, 256):
            for variant in ("s", "f"):
                wire = f"slhdsa-{family}-{level}{variant}"
                names[wire] = (
                    f"SLH_DSA_PURE_{fips}_{level}{variant.upper()}",  # liboqs >= 0.14
                    f"SLH-DSA-{fips}-{level}{variant}",
                )
    return names


def _sphincs_names() -> dict[str, tuple[str, ...]]:
    names: dict[str, tuple[str, ...]] = {}
    for family, oqs_family in (("sha2", "SHA2"), ("shake", "SHAKE")):
        for level in (128, 192, 256):
            for variant in ("s", "f"):
                wire = f"sphincs-{family}-{level}{variant}-simple"
                names[wire] = (f"SPHINCS+-{oqs_family}-{level}{variant}-simple",)
    return names


#: SLH-DSA (FIPS 205) wire names, e.g. ``slhdsa-sha2-128s``, ``slhdsa-shake-256s``.
SLH_DSA: dict[str, tuple[str, ...]] = _slh_dsa_names()
#: Round-3 SPHINCS+ wire names, e.g. ``sphincs-sha2-128s-simple`` (older liboqs only).
SPHINCS: dict[str, tuple[str, ...]] = _sphincs_names()


def _library_candidates() -> list[str]:
    """Where liboqs-python's ``_load_liboqs`` looks, in its order."""
    candidates = [
        found for name in ("liboqs", "oqs") if (found := ctypes.util.find_library(name))
    ]
    if "OQS_INSTALL_PATH" in os.environ:
        install = Path(os.environ["OQS_INSTALL_PATH"])
    else:
        try:
            install = Path.home() / "_oqs"
        except RuntimeError:  # no home directory: liboqs-python could not look there either
            return candidates
    system = platform.system()
    if system == "Windows":
        candidates += [str(install / "bin" / f) for f in ("oqs.dll", "liboqs.dll")]
    elif system == "Darwin":
        candidates += [str(install / d / "liboqs.dylib") for d in ("lib", "lib64")]
    else:
        candidates += [str(install / d / "liboqs.so") for d in ("lib", "lib64")]
    return candidates


def _liboqs_loadable() -> bool:
    for candidate in _library_candidates():
        try:
            ctypes.CDLL(candidate)
        except OSError:
            continue
        return True
    return False


class _Discard(io.TextIOBase):
    """A text stream that swallows what is written to it."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def _import_oqs() -> Any:
    if "oqs" not in sys.modules and importlib.util.find_spec("oqs") is None:
        raise ImportError("liboqs-python is not installed")
    if not _liboqs_loadable():
        raise ImportError("the liboqs C library is not installed")
    # liboqs-python logs "liboqs-python faulthandler is disabled" on import, through a handler
    # on the sys.stdout of that moment (no setting turns it off): through qsh that line would
    # be the first of every command's output. Its logger is muted and kept from the root
    # logger, and the import sees a sys.stdout/stderr that swallows, so the handler it keeps
    # writes nowhere even if a logging configuration later re-enables that logger.
    logger = logging.getLogger("oqs.oqs")
    logger.disabled = True
    logger.propagate = False
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(_Discard()),
              contextlib.redirect_stderr(_Discard())):
            # liboqs-python warns when its version differs from the C library's minor one.
            warnings.simplefilter("ignore")
            import oqs
    except Exception as exc:
        raise ImportError(f"liboqs-python failed to load liboqs: {exc}") from exc
    except SystemExit as exc:  # its "Could not load liboqs shared library"
        raise ImportError(f"liboqs-python failed to load liboqs: {exc}") from exc
    return oqs


_oqs: Any = _import_oqs()


def _enabled(kind: str) -> frozenset[str]:
    # get_enabled_kem_mechanisms since 0.7; get_enabled_KEM_mechanisms before.
    for attr in (f"get_enabled_{kind}_mechanisms", f"get_enabled_{kind.upper()}_mechanisms"):
        getter = getattr(_oqs, attr, None)
        if getter is not None:
            return frozenset(str(name) for name in getter())
    return frozenset()


def _pick(enabled: frozenset[str], candidates: tuple[str, ...]) -> str | None:
    return next((name for name in candidates if name in enabled), None)


# --- KEMs ----------------------------------------------------------------------------------


class _OqsKemPrivateKey:
    __slots__ = ("_alg", "_ciphertext_size", "_public", "_secret")

    def __init__(self, alg: str, public: bytes, secret: bytes, ciphertext_size: int) -> None:
        self._alg = alg
        self._public = public
        self._secret = secret
        self._ciphertext_size = ciphertext_size

    def public_bytes(self) -> bytes:
        return self._public

    def __del__(self) -> None:
        # The exported private key is a fresh object of ours (an ephemeral key: used for
        # one handshake or one rekey, then dropped).
        scrub(self._secret)

    def decapsulate(self, ciphertext: bytes) -> bytes:
        # Checked here: liboqs-python zero-pads a short buffer and rejects a long one with
        # a ValueError, and liboqs itself trusts the length.
        require_ciphertext_size(ciphertext, self._ciphertext_size, self._alg)
        try:
            with _oqs.KeyEncapsulation(self._alg, secret_key=self._secret) as kem:
                secret = kem.decap_secret(bytes(ciphertext))
        except Exception as exc:
            raise DecapsulationFailure(f"{self._alg} decapsulation failed") from exc
        # Releases before 0.10 return 0 instead of raising.
        if not isinstance(secret, bytes) or not secret:
            raise DecapsulationFailure(f"{self._alg} decapsulation failed")
        return secret


class OqsKem:
    """A liboqs KEM. Sizes come from liboqs itself, so they match the build in use."""

    def __init__(self, name: str, alg: str) -> None:
        self.name = name
        self._alg = alg
        with _oqs.KeyEncapsulation(alg) as kem:
            details = kem.details
        self.public_key_size = int(details["length_public_key"])
        self.ciphertext_size = int(details["length_ciphertext"])

    def generate(self, rng: Rng) -> _OqsKemPrivateKey:
        """Uses liboqs' RNG, not ``rng`` (see the module docstring)."""
        try:
            with _oqs.KeyEncapsulation(self._alg) as kem:
                public = kem.generate_keypair()
                secret = kem.export_secret_key()
        except Exception as exc:
            raise LocalError(f"{self._alg} key generation failed") from exc
        if not isinstance(public, bytes) or not isinstance(secret, bytes) or not public:
            raise LocalError(f"{self._alg} key generation failed")
        return _OqsKemPrivateKey(self._alg, public, secret, self.ciphertext_size)

    def encapsulate(self, public_key: bytes, rng: Rng) -> tuple[bytes, bytes]:
        """Uses liboqs' RNG, not ``rng`` (see the module docstring)."""
        if len(public_key) != self.public_key_size:
            raise InvalidInput(
                f"{self.name} public key is {len(public_key)} bytes, not {self.public_key_size}"
            )
        try:
            with _oqs.KeyEncapsulation(self._alg) as kem:
                ciphertext, secret = kem.encap_secret(bytes(public_key))
        except Exception as exc:
            raise InvalidInput(f"{self.name} encapsulation failed") from exc
        if not isinstance(ciphertext, bytes) or not isinstance(secret, bytes) or not secret:
            raise InvalidInput(f"{self.name} encapsulation failed")
        return ciphertext, secret


# --- signatures ----------------------------------------------------------------------------


class OqsSignature:
    """A liboqs signature. The signing key is liboqs' own secret-key encoding."""

    def __init__(self, name: str, alg: str) -> None:
        self.name = name
        self._alg = alg
        with _oqs.Signature(alg) as sig:
            details = sig.details
        self.public_key_size = int(details["length_public_key"])
        self.max_signature_size = int(details["length_signature"])
        self._secret_key_size = int(details["length_secret_key"])

    def generate(self, rng: Rng) -> tuple[bytes, bytes]:
        """Uses liboqs' RNG, not ``rng`` (see the module docstring)."""
        try:
            with _oqs.Signature(self._alg) as sig:
                public = sig.generate_keypair()
                secret = sig.export_secret_key()
        except Exception as exc:
            raise LocalError(f"{self._alg} key generation failed") from exc
        if not isinstance(public, bytes) or not isinstance(secret, bytes) or not public:
            raise LocalError(f"{self._alg} key generation failed")
        return secret, public

    def sign(self, signing_key: bytes, message: bytes, rng: Rng) -> bytes:
        """Uses liboqs' RNG for SLH-DSA's optional randomizer, not ``rng``."""
        if len(signing_key) != self._secret_key_size:
            raise InvalidInput(
                f"{self.name} signing key is {len(signing_key)} bytes, "
                f"not {self._secret_key_size}"
            )
        try:
            with _oqs.Signature(self._alg, secret_key=bytes(signing_key)) as sig:
                signature = sig.sign(bytes(message))
        except Exception as exc:
            raise LocalError(f"{self._alg} signing failed") from exc
        if not isinstance(signature, bytes) or not signature:
            raise LocalError(f"{self._alg} signing failed")
        return signature

    def verify(self, verification_key: bytes, message: bytes, signature: bytes) -> bool:
        if (
            len(verification_key) != self.public_key_size
            or not 0 < len(signature) <= self.max_signature_size
        ):
            return False
        try:
            with _oqs.Signature(self._alg) as sig:
                return bool(
                    sig.verify(bytes(message), bytes(signature), bytes(verification_key))
                )
        except Exception:
            return False


def liboqs_version() -> str:
    """The liboqs C library's version, e.g. ``0.16.0``."""
    getter = getattr(_oqs, "oqs_version", None)
    return str(getter()) if getter is not None else ""


# --- registration --------------------------------------------------------------------------


def register(reg: Registry) -> None:
    """Add whichever of our liboqs algorithms this liboqs build enables."""
    enabled_kems = _enabled("kem")
    for name, candidates in _MCELIECE.items():
        alg = _pick(enabled_kems, candidates)
        if alg is not None:
            kem: Kem = OqsKem(name, alg)
            reg.kems[name] = kem
    enabled_sigs = _enabled("sig")
    for table in (SLH_DSA, SPHINCS):
        for name, candidates in table.items():
            alg = _pick(enabled_sigs, candidates)
            if alg is not None:
                sig: Signature = OqsSignature(name, alg)
                reg.signatures[name] = sig
