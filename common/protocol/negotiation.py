"""What the client offers and what the server picks (seed notes item 19; hkexsh's
connect-time settings). Pure data plus the pick rule: the client lists algorithms in its
order of preference, the server takes the first one it also allows, and both hash the
messages that carried this into the transcript, so a man in the middle cannot downgrade it.
"""

from __future__ import annotations

from itertools import pairwise

from common.crypto import suites
from common.errors import InvalidInput, UnknownProtocol
from common.wire import Reader, Record, Writer

#: Protocol versions this implementation speaks, newest first.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

#: Chaff bounds: tiny intervals or huge packets would turn chaff into a flood.
MIN_CHAFF_INTERVAL_MS = 10
MAX_CHAFF_INTERVAL_MS = 3_600_000
MAX_CHAFF_SIZE = 16384
#: Padding per record; with the inner header and tag it stays inside wire.MAX_RECORD_BODY.
MAX_PADDING = 2048


class ChaffPolicy(Record):
    """Chaff: encrypted dummy records sent at random intervals with random sizes, so an
    observer cannot tell idle from active (typing) sessions. Off unless both ends want it."""

    __slots__ = (  # noqa: RUF023 (field order)
        "enabled", "interval_min_ms", "interval_max_ms", "size_min", "size_max")
    enabled: bool
    interval_min_ms: int
    interval_max_ms: int
    size_min: int
    size_max: int

    def __init__(self, enabled: bool = False, interval_min_ms: int = 100,
                 interval_max_ms: int = 1000, size_min: int = 16, size_max: int = 512) -> None:
        object.__setattr__(self, "enabled", enabled)
        object.__setattr__(self, "interval_min_ms", interval_min_ms)
        object.__setattr__(self, "interval_max_ms", interval_max_ms)
        object.__setattr__(self, "size_min", size_min)
        object.__setattr__(self, "size_max", size_max)

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


#: Keystroke obfuscation bounds (PROTOCOL.md 7.8): a clock faster than this is a flood,
#: a fake period longer than this is chaff by another name.
MIN_OBSCURE_INTERVAL_MS = 5
MAX_OBSCURE_INTERVAL_MS = 1000
MAX_OBSCURE_TAIL_MS = 60_000
MAX_SIZE_CLASSES = 4
MIN_SIZE_CLASS = 16
MAX_SIZE_CLASS = 4096
#: ConnectRequest extension that offers keystroke obfuscation (handshake_messages.parse_extensions).
EXT_OBSCURE = 1


class ObscurePolicy(Record):
    """Keystroke timing and size obfuscation: the client's clock period, how long fake
    keystrokes follow the last real one, and the size classes small records are padded to
    (plaintext bytes: inner header, body and padding)."""

    __slots__ = (  # noqa: RUF023 (field order)
        "interval_ms", "tail_min_ms", "tail_max_ms", "size_classes")
    interval_ms: int
    tail_min_ms: int
    tail_max_ms: int
    size_classes: tuple[int, ...]

    def __init__(self, interval_ms: int = 20, tail_min_ms: int = 1000, tail_max_ms: int = 3000,
                 size_classes: tuple[int, ...] = (64, 256, 1024)) -> None:
        object.__setattr__(self, "interval_ms", interval_ms)
        object.__setattr__(self, "tail_min_ms", tail_min_ms)
        object.__setattr__(self, "tail_max_ms", tail_max_ms)
        object.__setattr__(self, "size_classes", size_classes)

    def encode(self, w: Writer) -> None:
        w.u16(self.interval_ms).u32(self.tail_min_ms).u32(self.tail_max_ms)
        w.u8(len(self.size_classes))
        for size in self.size_classes:
            w.u16(size)

    def encoded(self) -> bytes:
        w = Writer()
        self.encode(w)
        return w.getvalue()

    @classmethod
    def decode(cls, r: Reader) -> ObscurePolicy:
        interval, tail_min, tail_max, count = r.u16(), r.u32(), r.u32(), r.u8()
        if not 1 <= count <= MAX_SIZE_CLASSES:
            raise InvalidInput("bad number of size classes")
        policy = cls(interval, tail_min, tail_max, tuple(r.u16() for _ in range(count)))
        policy.validate()
        return policy

    def validate(self) -> None:
        if not MIN_OBSCURE_INTERVAL_MS <= self.interval_ms <= MAX_OBSCURE_INTERVAL_MS:
            raise InvalidInput("keystroke clock interval out of range")
        if not 0 <= self.tail_min_ms <= self.tail_max_ms <= MAX_OBSCURE_TAIL_MS:
            raise InvalidInput("fake keystroke period out of range")
        classes = self.size_classes
        if (not 1 <= len(classes) <= MAX_SIZE_CLASSES
                or any(not MIN_SIZE_CLASS <= c <= MAX_SIZE_CLASS for c in classes)
                or any(a >= b for a, b in pairwise(classes))):
            raise InvalidInput("bad size classes")

    def wire_size(self, tag_size: int = 16) -> int:
        """Bytes on the wire of one smallest-class record (header, plaintext, tag)."""
        return 13 + self.size_classes[0] + tag_size
#: Encoded size of a ChaffPolicy: boolean, two u32 intervals, two u16 sizes.
CHAFF_POLICY_SIZE = 1 + 4 + 4 + 2 + 2


class Offer(Record):
    """The client's connect-time proposal, in preference order."""

    __slots__ = (  # noqa: RUF023 (field order)
        "kems", "signatures", "aeads", "chaff", "padding_max", "obscure")
    kems: tuple[str, ...]
    signatures: tuple[str, ...]
    aeads: tuple[str, ...]
    chaff: ChaffPolicy
    padding_max: int
    #: Keystroke obfuscation asked for (sent as extension EXT_OBSCURE); None: not offered.
    obscure: ObscurePolicy | None

    def __init__(self, kems: tuple[str, ...] = suites.DEFAULT_KEMS,
                 signatures: tuple[str, ...] = suites.DEFAULT_SIGNATURES,
                 aeads: tuple[str, ...] = suites.DEFAULT_AEADS, chaff: ChaffPolicy = CHAFF_OFF,
                 padding_max: int = 64, obscure: ObscurePolicy | None = None) -> None:
        object.__setattr__(self, "kems", kems)
        object.__setattr__(self, "signatures", signatures)
        object.__setattr__(self, "aeads", aeads)
        object.__setattr__(self, "chaff", chaff)
        object.__setattr__(self, "padding_max", padding_max)
        object.__setattr__(self, "obscure", obscure)


class ServerPolicy(Record):
    """What the server allows. ``None`` lists mean "everything this machine supports"."""

    __slots__ = (  # noqa: RUF023 (field order)
        "kems", "signatures", "aeads", "allow_chaff", "chaff_min_interval_ms", "chaff_max_size",
        "padding_max", "allow_obscure", "obscure_min_interval_ms", "obscure_max_tail_ms")
    kems: tuple[str, ...] | None
    signatures: tuple[str, ...] | None
    aeads: tuple[str, ...] | None
    allow_chaff: bool
    chaff_min_interval_ms: int
    chaff_max_size: int
    padding_max: int
    allow_obscure: bool
    #: The fastest keystroke clock (and so the largest chaff rate) the server accepts.
    obscure_min_interval_ms: int
    obscure_max_tail_ms: int

    def __init__(self, kems: tuple[str, ...] | None = None,
                 signatures: tuple[str, ...] | None = None, aeads: tuple[str, ...] | None = None,
                 allow_chaff: bool = True, chaff_min_interval_ms: int = 50,
                 chaff_max_size: int = 4096, padding_max: int = 256, allow_obscure: bool = True,
                 obscure_min_interval_ms: int = 10, obscure_max_tail_ms: int = 10_000) -> None:
        object.__setattr__(self, "kems", kems)
        object.__setattr__(self, "signatures", signatures)
        object.__setattr__(self, "aeads", aeads)
        object.__setattr__(self, "allow_chaff", allow_chaff)
        object.__setattr__(self, "chaff_min_interval_ms", chaff_min_interval_ms)
        object.__setattr__(self, "chaff_max_size", chaff_max_size)
        object.__setattr__(self, "padding_max", padding_max)
        object.__setattr__(self, "allow_obscure", allow_obscure)
        object.__setattr__(self, "obscure_min_interval_ms", obscure_min_interval_ms)
        object.__setattr__(self, "obscure_max_tail_ms", obscure_max_tail_ms)


class Suite(Record):
    """The negotiated settings of one session."""

    __slots__ = (  # noqa: RUF023 (field order)
        "version", "kem", "signature", "aead", "chaff", "padding_max", "obscure")
    version: int
    kem: str
    signature: str
    aead: str
    chaff: ChaffPolicy
    padding_max: int
    #: Agreed keystroke obfuscation (server side from the handshake; the client learns it
    #: from the server's OBSCURE record, see transport); None: off.
    obscure: ObscurePolicy | None

    def __init__(self, version: int, kem: str, signature: str, aead: str, chaff: ChaffPolicy,
                 padding_max: int, obscure: ObscurePolicy | None = None) -> None:
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "kem", kem)
        object.__setattr__(self, "signature", signature)
        object.__setattr__(self, "aead", aead)
        object.__setattr__(self, "chaff", chaff)
        object.__setattr__(self, "padding_max", padding_max)
        object.__setattr__(self, "obscure", obscure)


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


def agree_obscure(requested: ObscurePolicy | None, policy: ServerPolicy
                  ) -> ObscurePolicy | None:
    """The client's obfuscation request within the server's bounds (a slower clock, a
    shorter fake period), or off."""
    if requested is None or not policy.allow_obscure:
        return None
    interval = min(max(requested.interval_ms, policy.obscure_min_interval_ms),
                   MAX_OBSCURE_INTERVAL_MS)
    tail_max = min(requested.tail_max_ms, policy.obscure_max_tail_ms)
    return ObscurePolicy(interval, min(requested.tail_min_ms, tail_max), tail_max,
                         requested.size_classes)


def check_obscure_answer(requested: ObscurePolicy | None, answer: ObscurePolicy) -> None:
    """The client's check of the server's OBSCURE record: only if offered, never faster,
    longer or with other size classes than asked."""
    if requested is None:
        raise UnknownProtocol("server turned on keystroke obfuscation that was not offered")
    if (answer.interval_ms < requested.interval_ms
            or answer.tail_max_ms > requested.tail_max_ms
            or answer.tail_min_ms > requested.tail_min_ms
            or answer.size_classes != requested.size_classes):
        raise UnknownProtocol("server's keystroke obfuscation exceeds the request")
