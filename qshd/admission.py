"""Who may open a connection at all: sshd's MaxStartups, PerSourceMaxStartups and
PerSourcePenalties, decided at accept, before a byte of the protocol is read.

Sans-IO like the protocol core: no sockets, no clock, no tasks. The caller says when a
connection was accepted (:meth:`Admission.admit`), when it logged in
(:meth:`Admission.authenticated`) and when and how it ended (:meth:`Admission.ended`), and
passes the time in as ``now`` (monotonic seconds). That is all the state a listener needs,
so the same object serves today's one-process daemon and a listener that hands each
connection to a process of its own and learns the outcome from the child's exit.

Three defences, checked in sshd's order:

* **Penalties.** A source whose connections ended badly (failed logins, no login attempt,
  LoginGraceTime exceeded, a crash of the code serving it) accumulates penalty time; once
  more than ``min`` is outstanding, its new connections are refused until it runs out. A
  single mistyped password never locks anyone out; a guesser is shut out for up to ``max``.
  The table is bounded (``max-sources4``/``max-sources6``): when full, the entries closest to
  expiry make room (``permissive``), or the whole family is refused (``deny-all``).
* **Random early drop.** Past ``start`` unauthenticated connections, a new one is dropped
  with a probability rising linearly from ``rate`` percent to 100 % at ``full``: a flood
  degrades service gradually instead of hitting a wall, and a legitimate client retrying a
  few times gets through.
* **Per-source limit.** One source (an address, or a network of ``PerSourceNetBlockSize``)
  holds at most ``PerSourceMaxStartups`` unauthenticated connections, so held sockets from
  one place cannot fill the slots everybody else needs.

Every refusal is logged in sshd's words (``drop connection #N from [addr]:port on
[addr]:port ...``, ``... penalty of N seconds for penalty: failed authentication``) so log
watchers written for sshd work unchanged; a flood's lines are rate-limited, with a count of
what was left out.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("qshd")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: sshd's defaults (servconf.c).
DEFAULT_STARTUPS_START = 10
DEFAULT_STARTUPS_RATE = 30
DEFAULT_STARTUPS_FULL = 100
DEFAULT_NETBLOCK4 = 32
DEFAULT_NETBLOCK6 = 128
#: Seconds from accept until the client's first message must have arrived whole. Not an
#: sshd option (its pre-auth read is bounded only by LoginGraceTime); a real client sends
#: its first message at once, a few hundred bytes, so a generous 10 s still frees a held
#: slot twelve times sooner than a 120 s grace.
DEFAULT_FIRST_MESSAGE_TIMEOUT = 10.0

OVERFLOW_PERMISSIVE = "permissive"
OVERFLOW_DENY_ALL = "deny-all"


class Penalty(enum.Enum):
    """How a connection that never logged in ended; each kind has its own duration."""

    CRASH = "crash"
    AUTHFAIL = "authfail"
    NOAUTH = "noauth"
    GRACE_EXCEEDED = "grace-exceeded"

    @property
    def reason(self) -> str:
        """sshd's wording, which watchers match on."""
        return _REASONS[self]


_REASONS = {
    Penalty.CRASH: "penalty: caused crash",
    Penalty.AUTHFAIL: "penalty: failed authentication",
    Penalty.NOAUTH: "penalty: connections without attempting authentication",
    Penalty.GRACE_EXCEEDED: "penalty: exceeded LoginGraceTime",
}


def classify(*, authenticated: bool, attempted: bool, grace_exceeded: bool = False,
             crashed: bool = False) -> Penalty | None:
    """The penalty for a connection's end, as sshd assigns it from a pre-auth child's exit:
    none after a login, else a crash, an exceeded grace, failed attempts, or nothing tried."""
    if authenticated:
        return None
    if crashed:
        return Penalty.CRASH
    if grace_exceeded:
        return Penalty.GRACE_EXCEEDED
    return Penalty.AUTHFAIL if attempted else Penalty.NOAUTH


@dataclass(frozen=True, slots=True)
class Startups:
    """MaxStartups ``start:rate:full``: no drop below ``start`` unauthenticated
    connections, all dropped at ``full``, ``rate`` percent at ``start`` rising linearly."""

    start: int = DEFAULT_STARTUPS_START
    rate: int = DEFAULT_STARTUPS_RATE
    full: int = DEFAULT_STARTUPS_FULL

    def __post_init__(self) -> None:
        if not (1 <= self.start <= self.full and 1 <= self.rate <= 100):
            raise ValueError(f"invalid MaxStartups {self.start}:{self.rate}:{self.full}")

    def drop_percent(self, startups: int) -> int:
        """The chance, in whole percent, that a new connection is dropped while
        ``startups`` connections are waiting to log in."""
        if startups < self.start:
            return 0
        if startups >= self.full:
            return 100
        span = self.full - self.start
        return self.rate + (100 - self.rate) * (startups - self.start) // span

    def drop(self, startups: int, random_below: Callable[[int], int]) -> bool:
        """Roll the dice (only when the outcome is not certain)."""
        percent = self.drop_percent(startups)
        return percent >= 100 or (percent > 0 and random_below(100) < percent)


@dataclass(frozen=True, slots=True)
class PenaltySettings:
    """PerSourcePenalties. Durations in seconds; 0 disables that kind."""

    enabled: bool = True
    crash: float = 90.0
    authfail: float = 5.0
    noauth: float = 1.0
    grace_exceeded: float = 10.0
    min: float = 15.0
    max: float = 600.0
    max_sources4: int = 65536
    max_sources6: int = 65536
    overflow4: str = OVERFLOW_PERMISSIVE
    overflow6: str = OVERFLOW_PERMISSIVE

    def duration(self, kind: Penalty) -> float:
        return {Penalty.CRASH: self.crash, Penalty.AUTHFAIL: self.authfail,
                Penalty.NOAUTH: self.noauth,
                Penalty.GRACE_EXCEEDED: self.grace_exceeded}[kind]


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    startups: Startups = field(default_factory=Startups)
    #: Unauthenticated connections one source may hold; None: no limit.
    per_source: int | None = DEFAULT_STARTUPS_START // 2
    netblock4: int = DEFAULT_NETBLOCK4
    netblock6: int = DEFAULT_NETBLOCK6
    penalties: PenaltySettings = field(default_factory=PenaltySettings)
    #: Sources never penalised (PerSourcePenaltyExemptList).
    exempt: tuple[IPNetwork, ...] = ()


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted connection, as :meth:`Admission.admit` returned it."""

    address: str
    port: int
    #: The source it counts against (its network of PerSourceNetBlockSize), if parseable.
    source: IPNetwork | None
    #: Still holds an unauthenticated slot.
    counted: bool = True
    authenticated: bool = False
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """A connection dropped at accept; ``reason`` ends the log line."""

    reason: str
    startups: int


@dataclass(slots=True)
class _Entry:
    expiry: float
    active: bool
    reason: str
    #: Bumped whenever ``expiry`` changes, so stale heap items can be told apart.
    version: int = 0


class _LogBudget:
    """At most ``burst`` lines at once and ``per_second`` after that; what is left out is
    counted and reported with the next line let through."""

    def __init__(self, burst: float = 20.0, per_second: float = 1.0) -> None:
        self.burst = burst
        self.per_second = per_second
        self._tokens = burst
        self._last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from getpeername as one source: IPv4-mapped IPv6 (a dual-stack socket)
    counts as the IPv4 address, and an IPv6 scope is dropped. None if it is not IP."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _PenaltyTable:
    """One address family's penalties: a dict by source and a heap by expiry (with lazy
    deletion), so expiring and evicting cost a logarithm, not a scan."""

    def __init__(self, family: str, max_sources: int, overflow: str) -> None:
        self.family = family
        self.max_sources = max_sources
        self.overflow = overflow
        self.entries: dict[IPNetwork, _Entry] = {}
        self._heap: list[tuple[float, int, int, IPNetwork]] = []
        self._tie = 0

    def _push(self, source: IPNetwork, entry: _Entry) -> None:
        self._tie += 1
        heapq.heappush(self._heap, (entry.expiry, self._tie, entry.version, source))
        if len(self._heap) > 4 * len(self.entries) + 64:  # too many stale items: rebuild
            self._heap = [(e.expiry, self._tie + i, e.version, s)
                          for i, (s, e) in enumerate(self.entries.items(), 1)]
            self._tie += len(self._heap)
            heapq.heapify(self._heap)

    def _pop_soonest(self) -> tuple[IPNetwork, _Entry] | None:
        while self._heap:
            _expiry, _tie, version, source = heapq.heappop(self._heap)
            entry = self.entries.get(source)
            if entry is not None and entry.version == version:
                return source, entry
        return None

    def expire(self, now: float) -> None:
        while self._heap:
            expiry, _tie, version, source = self._heap[0]
            entry = self.entries.get(source)
            if entry is None or entry.version != version:
                heapq.heappop(self._heap)
                continue
            if expiry > now:
                return
            heapq.heappop(self._heap)
            del self.entries[source]

    def full(self) -> bool:
        return len(self.entries) >= self.max_sources

    def add(self, source: IPNetwork, seconds: float, reason: str, settings: PenaltySettings,
            now: float) -> None:
        label = f"{source.network_address}/{source.prefixlen}"
        entry = self.entries.get(source)
        if entry is None:
            if self.full() and self.overflow == OVERFLOW_DENY_ALL:
                log.info("srclimit_penalise: %s penalty table full, cannot penalise %s for %s",
                         self.family, label, reason)
                return
            entry = _Entry(now + seconds, seconds > settings.min, reason)
            self.entries[source] = entry
            self._push(source, entry)
            log.log(logging.INFO if entry.active else logging.DEBUG,
                    "srclimit_penalise: %s: new %s %s penalty of %.3f seconds for %s",
                    self.family, label, "active" if entry.active else "deferred", seconds,
                    reason)
            while len(self.entries) > self.max_sources:  # permissive: the soonest go
                soonest = self._pop_soonest()
                if soonest is None:
                    break
                log.debug("srclimit_penalise: %s overflow, removing %s", self.family,
                          soonest[0])
                del self.entries[soonest[0]]
            return
        entry.expiry = min(entry.expiry + seconds, now + settings.max)
        entry.reason = reason
        entry.version += 1
        self._push(source, entry)
        if not entry.active and entry.expiry - now > settings.min:
            entry.active = True
            log.info("srclimit_penalise: %s: activating %s penalty of %.3f seconds for %s",
                     label, self.family, entry.expiry - now, reason)

    def refusal(self, source: IPNetwork) -> str | None:
        entry = self.entries.get(source)
        return entry.reason if entry is not None and entry.active else None


class Admission:
    """The admission state of one listener (all its listening sockets together).

    ``random_below(n)`` returns a uniform integer in ``[0, n)``; tests pass a seeded or
    scripted one.
    """

    def __init__(self, settings: AdmissionSettings | None = None, *,
                 random_below: Callable[[int], int] = secrets.randbelow) -> None:
        self.settings = settings or AdmissionSettings()
        self._random_below = random_below
        #: Connections admitted and not yet logged in or ended (sshd's "startups").
        self.startups = 0
        self._per_source: Counter[IPNetwork] = Counter()
        p = self.settings.penalties
        self._tables = {4: _PenaltyTable("ipv4", p.max_sources4, p.overflow4),
                        6: _PenaltyTable("ipv6", p.max_sources6, p.overflow6)}
        self._budgets = {"penalty": _LogBudget(), "startups": _LogBudget()}

    # -- sources

    def source(self, address: str) -> IPNetwork | None:
        """The network ``address`` is counted and penalised as (PerSourceNetBlockSize)."""
        ip = parse_address(address)
        if ip is None:
            return None
        bits = self.settings.netblock4 if ip.version == 4 else self.settings.netblock6
        return ipaddress.ip_network(f"{ip}/{bits}", strict=False)

    def exempt(self, address: str) -> bool:
        ip = parse_address(address)
        return ip is not None and any(ip in net for net in self.settings.exempt
                                      if net.version == ip.version)

    def unauthenticated_from(self, address: str) -> int:
        source = self.source(address)
        return 0 if source is None else self._per_source[source]

    # -- the three decisions

    def penalised(self, address: str, now: float) -> str | None:
        """Why connections from ``address`` are refused now, or None if they are not."""
        penalties = self.settings.penalties
        if not penalties.enabled or self.exempt(address):
            return None
        source = self.source(address)
        if source is None:
            return None
        table = self._tables[source.version]
        table.expire(now)
        if table.full() and table.overflow == OVERFLOW_DENY_ALL:
            return "too many penalised addresses"
        return table.refusal(source)

    def admit(self, address: str, port: int, local_address: str, local_port: int,
              now: float) -> Ticket | Refused:
        """Decide on a connection just accepted from ``address``:``port`` on our
        ``local_address``:``local_port``. A :class:`Ticket` takes an unauthenticated slot
        until :meth:`authenticated` or :meth:`ended`; a refusal is logged here."""
        startups = self.startups
        reason = self.penalised(address, now)
        budget = "penalty"
        if reason is None:
            budget = "startups"
            source = self.source(address)
            limit = self.settings.per_source
            if self.settings.startups.drop(startups, self._random_below):
                reason = "past MaxStartups"
            elif limit is not None and source is not None and self._per_source[source] >= limit:
                reason = "past PerSourceMaxStartups"
            else:
                self.startups += 1
                if source is not None:
                    self._per_source[source] += 1
                return Ticket(address, port, source)
        self._log_drop(budget, now, "drop connection #%d from [%s]:%d on [%s]:%d %s",
                       startups, address, port, local_address, local_port, reason)
        return Refused(reason, startups)

    def _log_drop(self, budget_name: str, now: float, message: str, *args: object) -> None:
        budget = self._budgets[budget_name]
        if not budget.allow(now):
            log.debug(message, *args)
            return
        log.info(message, *args)
        if budget.suppressed:
            what = "PerSourcePenalties" if budget_name == "penalty" else "MaxStartups"
            log.info("%s logging rate-limited: additional %d connections dropped", what,
                     budget.suppressed)
            budget.suppressed = 0

    # -- what became of an admitted connection

    def _release(self, ticket: Ticket) -> None:
        if not ticket.counted:
            return
        ticket.counted = False
        self.startups -= 1
        if ticket.source is not None:
            self._per_source[ticket.source] -= 1
            if self._per_source[ticket.source] <= 0:
                del self._per_source[ticket.source]

    def authenticated(self, ticket: Ticket) -> None:
        """The connection logged in: it no longer counts, and its end is never penalised."""
        ticket.authenticated = True
        self._release(ticket)

    def ended(self, ticket: Ticket, penalty: Penalty | None, now: float) -> None:
        """The connection is over; ``penalty`` (see :func:`classify`) is applied to its
        source unless it had logged in. A second call for a ticket does nothing."""
        if ticket.finished:
            return
        ticket.finished = True
        self._release(ticket)
        if penalty is not None and not ticket.authenticated:
            self.penalise(ticket.address, penalty, now)

    def penalise(self, address: str, kind: Penalty, now: float) -> None:
        penalties = self.settings.penalties
        seconds = penalties.duration(kind)
        if not penalties.enabled or seconds <= 0:
            return
        if self.exempt(address):
            log.debug("srclimit_penalise: address %s is exempt", address)
            return
        source = self.source(address)
        if source is None:
            return
        table = self._tables[source.version]
        table.expire(now)
        table.add(source, seconds, kind.reason, penalties, now)

    def penalties(self, now: float) -> dict[IPNetwork, tuple[float, bool, str]]:
        """Every penalty still running: seconds left, whether it is enforced, the reason
        (for diagnostics and tests)."""
        out: dict[IPNetwork, tuple[float, bool, str]] = {}
        for table in self._tables.values():
            table.expire(now)
            for source, entry in table.entries.items():
                out[source] = (entry.expiry - now, entry.active, entry.reason)
        return out
