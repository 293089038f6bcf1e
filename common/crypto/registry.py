"""The one place that fills the algorithm registry.

Types live in :mod:`common.crypto.suites`; the implementations in
:mod:`common.crypto.algorithms` (always present) and :mod:`common.crypto.oqs` (liboqs,
optional) import only those types, and this module imports them: imports run one way,
and the liboqs import is attempted once, on first use, not at start-up.
"""

from __future__ import annotations

from common.crypto.suites import Aead, Kem, Registry, Signature

_registry: Registry | None = None


def usable() -> Registry:
    """All algorithms usable on this machine (built-in, plus liboqs ones when present)."""
    global _registry
    if _registry is None:
        from common.crypto import algorithms

        reg = Registry(kems={}, signatures={}, aeads={})
        algorithms.register(reg)
        try:
            from common.crypto import oqs as algorithms_oqs
        except ImportError:
            pass
        else:
            algorithms_oqs.register(reg)
        _registry = reg
    return _registry


def kem(name: str) -> Kem:
    return usable().kems[name]


def signature(name: str) -> Signature:
    return usable().signatures[name]


def aead(name: str) -> Aead:
    return usable().aeads[name]


def available_kems() -> tuple[str, ...]:
    return tuple(usable().kems)


def available_signatures() -> tuple[str, ...]:
    return tuple(usable().signatures)


def available_aeads() -> tuple[str, ...]:
    return tuple(usable().aeads)
