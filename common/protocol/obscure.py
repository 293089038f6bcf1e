"""Keystroke timing and size obfuscation (issue 12; PROTOCOL.md 7.8), sans-IO.

A passive observer of an interactive session sees one small record per keystroke and an
echo right after it: the typing cadence, which is enough to recover passwords typed
inside the session (the classic SSH keystroke-timing attack). Two pieces hide it:

* :class:`KeystrokeClock` (client): while a PTY session is in use, small channel data is
  held and released only on the ticks of a fixed clock; after the last real keystroke the
  clock keeps ticking with fake keystrokes for a random time (so the end of typing is hidden
  as well as its rhythm), or for ever with chaff. The first keystroke after a stopped clock
  starts it (no wait): the clock's phase is then that keystroke, which is all an observer
  already learns from a period of ticks starting.
* :class:`EchoMimic` (server): every keystroke record (real or fake) is owed a reply. A real
  keystroke's echo comes from the user's program and pays the debt; a fake's is paid by the
  protocol layer with a chaff record after a delay drawn from the real echo delays it has
  measured, so the server-to-client direction does not tell which ticks were real either.
  A real keystroke without an echo (a password prompt) is paid the same way after
  ``ECHO_WAIT``.

Both directions pad small records up to a few negotiated size classes
(:func:`class_padding`), so keystrokes, echoes, fakes and keep-alives are one size; bulk
records (larger than the largest class) keep the ordinary random padding and never wait.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from common.protocol.negotiation import ObscurePolicy

#: Held messages beyond which the clock gives up holding (a paste, a flood) and flushes.
MAX_HELD_MESSAGES = 64
MAX_HELD_BYTES = 64 * 1024
#: Echo debts kept at most (a flood of fakes from a broken client is not answered beyond).
MAX_ECHO_DEBTS = 256
#: Measured echo delays kept for drawing fake replies' delays.
ECHO_SAMPLES = 64
#: Fallback fake-echo delays (seconds) until real echoes have been measured.
DEFAULT_ECHO_DELAYS = (0.0004, 0.0006, 0.0008, 0.001, 0.0012)
#: How long a real keystroke waits for its echo before the protocol layer answers it.
ECHO_WAIT = 0.005


def class_padding(plain_len: int, classes: tuple[int, ...]) -> int | None:
    """Padding that brings a plaintext of ``plain_len`` bytes up to its size class, or
    None when it is larger than every class (bulk: ordinary padding)."""
    for size in classes:
        if plain_len <= size:
            return size - plain_len
    return None


class Held:
    """One message waiting for a tick. (A plain slotted class, not a dataclass: building
    one costs ~1 ms at every client start, issue 18; nothing compares them.)"""

    __slots__ = ("head", "inner_type", "payload")

    def __init__(self, inner_type: int, head: bytes, payload: bytes) -> None:
        self.inner_type = inner_type
        self.head = head
        self.payload = payload


class Tick:
    """What one tick sends: the held messages, or one fake keystroke if none."""

    __slots__ = ("fake", "messages")

    def __init__(self, messages: list[Held] | None = None, fake: bool = False) -> None:
        self.messages: list[Held] = [] if messages is None else messages
        self.fake = fake


class KeystrokeClock:
    """The client's fixed clock. ``draw_ms(lo, hi)`` is the injected randomness."""

    def __init__(self, policy: ObscurePolicy, draw_ms: Callable[[int, int], int], *,
                 chaff: bool) -> None:
        self.policy = policy
        self._draw = draw_ms
        self.interval = policy.interval_ms / 1000.0
        #: Chaff: once interactive, the clock never stops (idle looks like typing).
        self.continuous = chaff
        self.interactive = False
        self._held: deque[Held] = deque()
        self._held_bytes = 0
        #: Time of the next tick; None while the clock is stopped. Ticks are computed
        #: from the run's start (``_epoch + n * interval``) so they do not drift.
        self.next_tick: float | None = None
        self._epoch = 0.0
        self._count = 0
        #: Fakes stop after this time unless a keystroke comes first.
        self._fakes_until = 0.0
        #: A message arrived while stopped: start the clock at the next chance (now).
        self._start_pending = False
        self.ticks = 0
        self.fakes = 0

    def set_interactive(self, on: bool, now: float) -> None:
        self.interactive = on
        if on and self.continuous and self.next_tick is None:
            self._start(now)
            self._count = 1
            self.next_tick = now + self.interval
        if not on:
            self.next_tick = None

    def holds(self, plain_len: int) -> bool:
        """Whether a small channel-data message of this size waits for a tick."""
        return (self.interactive and plain_len <= self.policy.size_classes[-1]
                and len(self._held) < MAX_HELD_MESSAGES
                and self._held_bytes + plain_len <= MAX_HELD_BYTES)

    @property
    def has_held(self) -> bool:
        return bool(self._held)

    def hold(self, message: Held, now: float) -> bool:
        """Queue a message. True when the clock was stopped: the caller sends this tick
        now (:meth:`tick`), which starts the clock with its phase at ``now``."""
        self._held.append(message)
        self._held_bytes += len(message.head) + len(message.payload)
        return self.next_tick is None

    def release_all(self) -> list[Held]:
        """Everything held, in order (before a bulk message, which must not overtake)."""
        out = list(self._held)
        self._held.clear()
        self._held_bytes = 0
        return out

    def next_timer(self) -> float | None:
        return self.next_tick

    def tick(self, now: float) -> Tick:
        """One tick at ``now`` (a due tick, or the start of a stopped clock)."""
        result = Tick()
        if self._held:
            result.messages = self.release_all()
            tail = self._draw(self.policy.tail_min_ms, self.policy.tail_max_ms)
            self._fakes_until = now + tail / 1000.0
        elif (self.continuous and self.interactive) or now < self._fakes_until:
            result.fake = True
            self.fakes += 1
        else:
            self.next_tick = None  # the fake period is over: stop until the next keystroke
            return result
        self.ticks += 1
        if self.next_tick is None:
            self._start(now)
        # Stay on the grid; after a late wake-up skip the ticks that were missed.
        self._count = max(self._count + 1, int((now - self._epoch) / self.interval) + 1)
        self.next_tick = self._epoch + self._count * self.interval
        return result

    def _start(self, now: float) -> None:
        self._epoch = now
        self._count = 0


class EchoMimic:
    """The server's replies: one record per received keystroke record, real or fake."""

    def __init__(self, draw_index: Callable[[int], int]) -> None:
        self._draw = draw_index
        #: (deadline, received_at, real) per keystroke not yet answered, oldest first.
        self._debts: deque[tuple[float, float, bool]] = deque()
        #: Real echo delays measured (receipt of a keystroke to its echo leaving).
        self._delays: deque[float] = deque(maxlen=ECHO_SAMPLES)
        self.fake_replies = 0

    def received(self, now: float, *, real: bool) -> None:
        if len(self._debts) >= MAX_ECHO_DEBTS:
            return
        if real:
            deadline = now + ECHO_WAIT
        else:
            delays = self._delays or DEFAULT_ECHO_DELAYS
            deadline = now + delays[self._draw(len(delays))]
        # Deadlines stay in arrival order: a fake is never answered before an older debt.
        if self._debts and deadline < self._debts[-1][0]:
            deadline = self._debts[-1][0]
        self._debts.append((deadline, now, real))

    def sent_small(self, now: float) -> None:
        """A small record went out (a real echo): it pays the oldest real debt."""
        for i, (_deadline, received, real) in enumerate(self._debts):
            if real:
                del self._debts[i]
                self._delays.append(max(now - received, 0.0))
                return

    def next_timer(self) -> float | None:
        return self._debts[0][0] if self._debts else None

    def due(self, now: float) -> int:
        """How many chaff replies to send now."""
        count = 0
        while self._debts and self._debts[0][0] <= now:
            self._debts.popleft()
            count += 1
        self.fake_replies += count
        return count
