"""The one place that fills the algorithm registry.

Types live in :mod:`common.crypto.suites`; the implementations in
:mod:`common.crypto.algorithms` (always present) and :mod:`common.crypto.oqs` (liboqs,
optional) import only those types, and this module imports them: imports run one way.

liboqs is loaded only when something needs more than the built-in algorithms: a name that
is not built in (``kem``, ``has_kem``, ...), or the whole list (``available_kems``, ``qsh -Q``,
qshd's configuration). Loading it costs 100-250 ms of CPU (liboqs-python looks for the
library with ``ctypes.util.find_library``, which runs gcc and ldconfig, and reads package
metadata), and a client whose offer is the default one (all built in) never needs it.
"""

from __future__ import annotations

import importlib.util
import sys

from common.crypto.suites import Aead, Kem, Registry, Signature

_registry: Registry | None = None
_builtin: Registry | None = None
#: Why liboqs is not in use (its ImportError), or None when it is.
_liboqs_missing: str | None = None
_liboqs_version = ""

OPENSSL = "OpenSSL (cryptography)"
#: Which library serves each built-in algorithm: the one place this choice is written down
#: (common.crypto.algorithms gives the measurements behind it). Everything else in the
#: registry comes from liboqs.
BUILTIN_PROVIDERS: dict[str, str] = {
    "mlkem768": OPENSSL,
    "mlkem1024": OPENSSL,
    "mlkem768x25519": f"{OPENSSL}, ML-KEM-768 + X25519",
    "mldsa65": f"{OPENSSL} for keys and verifying, pycryptodome for signing",
    "mldsa87": f"{OPENSSL} for keys and verifying, pycryptodome for signing",
    "aes256gcm": OPENSSL,
    "chacha20poly1305": OPENSSL,
}


def builtin() -> Registry:
    """The built-in algorithms alone: what needs no liboqs."""
    global _builtin
    if _builtin is None:
        from common.crypto import algorithms

        reg = Registry(kems={}, signatures={}, aeads={})
        algorithms.register(reg)
        _builtin = reg
    return _builtin


def usable() -> Registry:
    """All algorithms usable on this machine (built-in, plus liboqs ones when present)."""
    global _registry, _liboqs_missing, _liboqs_version
    if _registry is None:
        own = builtin()
        reg = Registry(kems=dict(own.kems), signatures=dict(own.signatures),
                       aeads=dict(own.aeads))
        try:
            if "oqs" not in sys.modules and importlib.util.find_spec("oqs") is None:
                # Said before loading our wrapper (ctypes.util, platform, logging): most
                # machines have no liboqs-python, and every client run asks.
                raise ImportError("liboqs-python is not installed")
            from common.crypto import oqs as algorithms_oqs
        except ImportError as exc:
            _liboqs_missing = str(exc)
        else:
            algorithms_oqs.register(reg)
            _liboqs_version = algorithms_oqs.liboqs_version()
        _registry = reg
    return _registry


def provider(name: str) -> str:
    """The library that serves the usable algorithm ``name``, as ``qsh -Q`` shows it."""
    usable()
    return BUILTIN_PROVIDERS.get(name) or f"liboqs {_liboqs_version}".rstrip()


def liboqs_missing() -> str | None:
    """Why liboqs is not in use on this machine (None: it is)."""
    usable()
    return _liboqs_missing


def kem(name: str) -> Kem:
    found = builtin().kems.get(name)
    return found if found is not None else usable().kems[name]


def signature(name: str) -> Signature:
    found = builtin().signatures.get(name)
    return found if found is not None else usable().signatures[name]


def aead(name: str) -> Aead:
    found = builtin().aeads.get(name)
    return found if found is not None else usable().aeads[name]


def has_kem(name: str) -> bool:
    """Whether ``name`` is usable here; liboqs is looked at only for a name not built in."""
    return name in builtin().kems or name in usable().kems


def has_signature(name: str) -> bool:
    return name in builtin().signatures or name in usable().signatures


def has_aead(name: str) -> bool:
    return name in builtin().aeads or name in usable().aeads


def available_kems() -> tuple[str, ...]:
    return tuple(usable().kems)


def available_signatures() -> tuple[str, ...]:
    return tuple(usable().signatures)


def available_aeads() -> tuple[str, ...]:
    return tuple(usable().aeads)


_QUERY_KINDS = {"kem": "kem", "sig": "sig", "signature": "sig", "key": "sig",
                "cipher": "cipher", "aead": "cipher"}


def query(kind: str) -> tuple[str, str]:
    """``qsh -Q kind`` as ``ssh -Q`` does it: one usable algorithm a line, here with the
    library that serves it; and a note naming what liboqs would add, when it is missing
    (empty otherwise). Raises ValueError for an unknown kind."""
    from common.crypto.suites import LIBOQS_KEMS, LIBOQS_SIGNATURES

    which = _QUERY_KINDS.get(kind.lower())
    if which is None:
        raise ValueError(f"unknown query {kind!r}: kem, sig or cipher")
    names, optional = {
        "kem": (available_kems(), LIBOQS_KEMS),
        "sig": (available_signatures(), LIBOQS_SIGNATURES),
        "cipher": (available_aeads(), ()),
    }[which]
    width = max(len(name) for name in names)
    listing = "".join(f"{name:<{width}}  {provider(name)}\n" for name in names)
    missing = [name for name in optional if name not in names]
    note = ""
    if missing:
        note = (f"not available without liboqs ({liboqs_missing()}): "
                f"{' '.join(missing)}\n")
    return listing, note
