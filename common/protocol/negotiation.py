"""What the client offers and what the server picks (seed notes item 19; hkexsh's
connect-time settings). Pure data plus the pick rule: the client lists algorithms in its
order of preference, the server takes the first one it also allows, and both hash the
messages that carried this into the transcript, so a man in the middle cannot downgrade it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.crypto import suites
from common.errors import InvalidInput, UnknownProtocol
from common.wire import Reader, Writer

#: Protocol versions this implementation speaks, newest first.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

#: Chaff bounds: tiny intervals or huge packets would turn chaff into a flood.
MIN_CHAFF_INTERVAL_MS = 10
MAX_CHAFF_INTERVAL_MS = 3_600_000
MAX_CHAFF_SIZE = 16384
#: Padding per record; with the inner header and tag it stays inside wire.MAX_RECORD_BODY.
MAX_PADDING = 2048


@dataclass(frozen=True, slots=True)
class ChaffPolicy:
    """Chaff: encrypted dummy records sent at random intervals with random sizes, so an
    observer cannot tell idle from active (typing) sessions. Off unless both ends want it."""

    enabled: bool = False
    interval_min_ms: int = 100
    interval_max_ms: int = 1000
    size_min: int = 16
    size_max: int = 512

    def encode(self, w: Writer) -> None:
        w.boolean(self.enabled).u32(self.interval_min_ms).u32(self.interval_max_ms)
        w.u16(self.size_min).u16(self.size_max)

    @classmethod
    def decode(cls, r: Reader) -> ChaffPolicy:
        policy = cls(r.boolean(), r.u32(), r.u32(), r.u16(), r.u16())
        policy.validate()
        return policy

    def validate(self) -> None:
        if not self.enabled:
            return
        if not (
            MIN_CHAFF_INTERVAL_MS <= self.interval_min_ms <= self.interval_max_ms
            <= MAX_CHAFF_INTERVAL_MS
        ):
            raise InvalidInput("chaff interval out of range")
        if not 0 <= self.size_min <= self.size_max <= MAX_CHAFF_SIZE:
            raise InvalidInput("chaff size out of range")


CHAFF_OFF = ChaffPolicy()
#: Encoded size of a ChaffPolicy: boolean, two u32 intervals, two u16 sizes.
CHAFF_POLICY_SIZE = 1 + 4 + 4 + 2 + 2


@dataclass(frozen=True, slots=True)
class Offer:
    """The client's connect-time proposal, in preference order."""

    kems: tuple[str, ...] = suites.DEFAULT_KEMS
    signatures: tuple[str, ...] = suites.DEFAULT_SIGNATURES
    aeads: tuple[str, ...] = suites.DEFAULT_AEADS
    chaff: ChaffPolicy = CHAFF_OFF
    padding_max: int = 64


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    """What the server allows. ``None`` lists mean "everything this machine supports"."""

    kems: tuple[str, ...] | None = None
    signatures: tuple[str, ...] | None = None
    aeads: tuple[str, ...] | None = None
    allow_chaff: bool = True
    chaff_min_interval_ms: int = 50
    chaff_max_size: int = 4096
    padding_max: int = 256


@dataclass(frozen=True, slots=True)
class Suite:
    """The negotiated settings of one session."""

    version: int
    kem: str
    signature: str
    aead: str
    chaff: ChaffPolicy
    padding_max: int

    def configuration(self) -> bytes:
        """The QSMP "protocol string" (spec 5.1): signature, KEM, hash, cipher."""
        return (
            f"qsmp{self.version}:{self.signature}:{self.kem}:{suites.HASH_NAME}:{self.aead}"
        ).encode("ascii")


def pick(offered: tuple[str, ...], allowed: tuple[str, ...] | None,
         available: tuple[str, ...], what: str) -> str:
    """First of the client's names that the server allows and has."""
    usable = set(available if allowed is None else (a for a in allowed if a in available))
    for name in offered:
        if name in usable:
            return name
    raise UnknownProtocol(f"no {what} in common")


def pick_version(offered: tuple[int, ...]) -> int:
    for version in SUPPORTED_VERSIONS:
        if version in offered:
            return version
    raise UnknownProtocol("no protocol version in common")


def check_chaff_answer(requested: ChaffPolicy, answer: ChaffPolicy) -> None:
    """The client's check of the server's pick: chaff only if asked for, never more often
    or larger than asked (the server may only make it sparser or smaller)."""
    if not answer.enabled:
        return
    if not requested.enabled:
        raise UnknownProtocol("server turned on chaff that was not requested")
    if (answer.interval_min_ms < requested.interval_min_ms
            or answer.size_max > requested.size_max):
        raise UnknownProtocol("server's chaff policy exceeds the request")


def agree_chaff(requested: ChaffPolicy, policy: ServerPolicy) -> ChaffPolicy:
    """Honour the client's chaff request within the server's bounds, or turn it off."""
    if not requested.enabled or not policy.allow_chaff:
        return CHAFF_OFF
    lo = max(requested.interval_min_ms, policy.chaff_min_interval_ms)
    hi = max(lo, requested.interval_max_ms)
    size_max = min(requested.size_max, policy.chaff_max_size)
    size_min = min(requested.size_min, size_max)
    return ChaffPolicy(True, lo, hi, size_min, size_max)
