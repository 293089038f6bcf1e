"""Randomness is injected into the core, never fetched by it.

Production code uses :data:`SYSTEM_RNG` (the kernel CSPRNG through :mod:`secrets`). Tests
and the published test vectors use :class:`DeterministicRng`, so one seed reproduces a whole
handshake byte for byte. Algorithm providers can ask :func:`is_system_rng` to choose a faster
implementation that draws its own kernel randomness when no reproducibility is wanted.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from common.errors import RandomFailure

Rng = Callable[[int], bytes]


def _system_rng(n: int) -> bytes:
    data = secrets.token_bytes(n)
    if len(data) != n:
        raise RandomFailure("the system random generator returned too few bytes")
    return data


SYSTEM_RNG: Rng = _system_rng


def is_system_rng(rng: Rng) -> bool:
    return rng is SYSTEM_RNG


class DeterministicRng:
    """A SHAKE-256 stream keyed by a seed. For tests and test vectors only: never for keys
    that protect anything."""

    def __init__(self, seed: bytes) -> None:
        self._seed = bytes(seed)
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        block = hashlib.shake_256(
            b"qsh deterministic rng" + self._seed + self._counter.to_bytes(8, "big")
        ).digest(n)
        self._counter += 1
        return block
