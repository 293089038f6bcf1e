"""The value of each keyword: checked and converted, or a ConfigError naming the line."""

from __future__ import annotations

import dataclasses
import ipaddress

from common.protocol.negotiation import (
    MAX_OBSCURE_INTERVAL_MS,
    MIN_OBSCURE_INTERVAL_MS,
)

from ..admission import (
    OVERFLOW_DENY_ALL,
    OVERFLOW_PERMISSIVE,
    IPNetwork,
    PenaltySettings,
)
from ..tunnels import ALLOW_VALUES, GATEWAY_VALUES, TunnelPolicy, parse_patterns
from .grammar import ConfigError

_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


#: PerSourcePenalties durations: seconds, as sshd's names them.
_PENALTY_TIMES = {"crash": "crash", "authfail": "authfail", "noauth": "noauth",
                  "grace-exceeded": "grace_exceeded", "min": "min", "max": "max"}
_PENALTY_COUNTS = {"max-sources4": "max_sources4", "max-sources6": "max_sources6"}
_PENALTY_OVERFLOW = {"overflow": "overflow4", "overflow6": "overflow6"}


def _names(value: str, available: tuple[str, ...], line: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ConfigError(f"{line}: unsupported algorithm(s) {', '.join(unknown) or '(none)'}; "
                          f"available: {', '.join(available)}")
    return names


def _boolean(value: str, line: str) -> bool:
    lowered = value.lower()
    if lowered not in ("yes", "no"):
        raise ConfigError(f"{line}: expected yes or no, got {value!r}")
    return lowered == "yes"


def _number(value: str, line: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{line}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{line}: {value} is outside {low:g}..{high:g}")
    return number


def _obscure(value: str, line: str) -> tuple[bool, int]:
    """``yes`` (the fastest clock accepted: 10 ms), ``no``, or ``interval:N``: clients'
    keystroke clocks no faster than N ms (5..1000), as the client keyword reads."""
    lowered = value.lower()
    if lowered in ("yes", "no"):
        return lowered == "yes", 10
    if lowered.startswith("interval:"):
        return True, _integer(lowered.removeprefix("interval:"), line, MIN_OBSCURE_INTERVAL_MS,
                              MAX_OBSCURE_INTERVAL_MS)
    raise ConfigError(f"{line}: expected yes, no or interval:N, got {value!r}")


def expand_tokens(template: str, user: str, home: str) -> str:
    """sshd's tokens in a per-user path: %h (home), %u (user name), %% (a percent sign).
    An unknown token is an error rather than a literal, so a typo cannot point every user
    at one shared file."""
    out: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        letter = template[i + 1 : i + 2]
        expansions = {"h": home, "u": user, "%": "%"}
        if letter not in expansions:
            raise ValueError(f"unknown token %{letter} (use %h, %u or %%)")
        out.append(expansions[letter])
        i += 2
    return "".join(out)


def _seconds(value: str, line: str, low: float, high: float) -> float:
    """sshd's time format for the common cases: ``120``, ``90s``, ``2m``, ``1h``."""
    lowered = value.lower()
    unit = lowered[-1:] if lowered[-1:] in _TIME_UNITS else ""
    number = lowered[: len(lowered) - len(unit)]
    try:
        seconds = float(number) * _TIME_UNITS[unit]
    except ValueError:
        raise ConfigError(f"{line}: expected seconds (e.g. 120, 90s, 2m), got {value!r}") from None
    if not low <= seconds <= high:
        raise ConfigError(f"{line}: {value} is outside {low:g}..{high:g} seconds")
    return seconds


def _choice(value: str, choices: tuple[str, ...], line: str) -> str:
    lowered = value.lower()
    if lowered not in choices:
        raise ConfigError(f"{line}: expected one of {', '.join(choices)}, got {value!r}")
    return lowered


def _integer(value: str, line: str, low: int, high: int) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise ConfigError(f"{line}: expected a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{line}: {value} is outside {low}..{high}")
    return number


def _max_startups(value: str, line: str) -> tuple[int, int, int]:
    """sshd's ``start:rate:full``, or one number (a hard cap: no random early drop)."""
    parts = value.split(":")
    if len(parts) not in (1, 3):
        raise ConfigError(f"{line}: MaxStartups: expected start:rate:full or a number, "
                          f"got {value!r}")
    numbers = [_integer(p, line, 1, 100000) for p in parts]
    if len(numbers) == 1:
        return numbers[0], 100, numbers[0]
    start, rate, full = numbers
    if start > full or rate > 100:
        raise ConfigError(f"{line}: MaxStartups: start must not exceed full and rate must be "
                          f"1..100, got {value!r}")
    return start, rate, full


def _netblock(value: str, line: str) -> tuple[int, int | None]:
    v4, _, v6 = value.partition(":")
    return _integer(v4, line, 0, 32), (_integer(v6, line, 0, 128) if v6 else None)


def _networks(value: str, line: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in value.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{line}: expected addresses or networks (a.b.c.d/n), "
                              f"got {item.strip()!r}") from None
    return tuple(networks)


def _penalties(value: str, line: str, current: PenaltySettings,
               given: set[str]) -> PenaltySettings:
    """One PerSourcePenalties line: ``yes``/``no`` alone, or ``name:value`` items. As in
    sshd the keyword may be repeated, and each item's first value wins."""
    changes: dict[str, object] = {}
    items = value.split()
    for item in items:
        lowered = item.lower()
        setting: bool | float | str
        if lowered in ("yes", "no"):
            if len(items) > 1:
                raise ConfigError(f"{line}: PerSourcePenalties {item} must appear alone")
            name, setting = "enabled", lowered == "yes"
        else:
            name, sep, text = lowered.partition(":")
            if not sep or not text:
                raise ConfigError(f"{line}: PerSourcePenalties: expected name:value, "
                                  f"got {item!r}")
            if name in _PENALTY_TIMES:
                setting = _seconds(text, line, 0, 30 * 86400)
                name = _PENALTY_TIMES[name]
            elif name in _PENALTY_COUNTS:
                setting = _integer(text, line, 1, 1 << 24)
                name = _PENALTY_COUNTS[name]
            elif name in _PENALTY_OVERFLOW:
                setting = _choice(text, (OVERFLOW_DENY_ALL, OVERFLOW_PERMISSIVE), line)
                name = _PENALTY_OVERFLOW[name]
            else:
                raise ConfigError(f"{line}: PerSourcePenalties: unsupported item {item!r} "
                                  "(crash, authfail, noauth, grace-exceeded, min, max, "
                                  "max-sources4, max-sources6, overflow, overflow6)")
            if "enabled" not in given:  # naming a penalty turns them on, as in sshd
                changes.setdefault("enabled", True)
        if name not in given:
            given.add(name)
            changes[name] = setting
    if "enabled" in changes:
        given.add("enabled")
    return dataclasses.replace(current, **changes)  # type: ignore[arg-type]


_TUNNEL_KEYWORDS = ("allowtcpforwarding", "permitopen", "permitlisten", "gatewayports")


def _tunnel_option(policy: TunnelPolicy, keyword: str, value: str, line: str) -> TunnelPolicy:
    if keyword == "allowtcpforwarding":
        choice = value.lower()
        return dataclasses.replace(policy, allow=_choice(
            "yes" if choice == "all" else choice, ALLOW_VALUES, line))
    if keyword == "gatewayports":
        return dataclasses.replace(policy, gateway_ports=_choice(value.lower(), GATEWAY_VALUES,
                                                                 line))
    try:
        patterns = parse_patterns(value, host_optional=keyword == "permitlisten")
    except ValueError as exc:
        raise ConfigError(f"{line}: {keyword}: {exc}") from None
    if keyword == "permitopen":
        return dataclasses.replace(policy, permit_open=patterns)
    return dataclasses.replace(policy, permit_listen=patterns)


def _channel_timeouts(values: list[str], where: str) -> dict[str, float]:
    """sshd's ``type=interval`` list; ``none``. Only the ``session`` type is implemented
    (the other channel types of sshd are tunnels, whose sockets have time-outs of their
    own)."""
    if [v.lower() for v in values] == ["none"]:
        return {}
    timeouts: dict[str, float] = {}
    for item in values:
        kind, sep, interval = item.partition("=")
        if not sep:
            raise ConfigError(f"{where}: ChannelTimeout: expected type=interval, got {item!r}")
        if kind.lower() != "session":
            raise ConfigError(f"{where}: ChannelTimeout: unsupported channel type {kind!r} "
                              "(session)")
        timeouts["session"] = _seconds(interval, where, 0, 30 * 86400)
    return timeouts


def _name_patterns(values: list[str], where: str, *, users: bool = True
                   ) -> tuple[str, ...]:
    for pattern in values:
        if not pattern or any(c.isspace() or c == "\x00" for c in pattern):
            raise ConfigError(f"{where}: bad pattern {pattern!r}")
        if "@" in pattern:
            user, _, host = pattern.partition("@")
            if not users or not user or not host:
                expected = "user or user@address" if users else "a group name pattern"
                raise ConfigError(f"{where}: expected {expected}, got {pattern!r}")
    return tuple(values)
