"""``qshd_config``: OpenSSH-style ``Keyword value`` lines; the first value of a keyword wins.

The grammar is sshd_config's: ``Keyword value``, ``Keyword=value`` or ``Keyword = value``;
keywords in any case; ``#`` starts a comment at the start of a line or at the start of a
word (``Port 22 # ssh's`` is a comment after the value); ``"double quotes"`` keep spaces in
one value. Keywords that take several values (AuthorizedKeysFile, PerSourcePenalties,
PermitOpen, PermitListen) take them separated by spaces, comma lists forgive a space after a
comma; any other keyword takes exactly one value, and a second is an error rather than
silently part of the first.

Only what the daemon implements today is accepted: an unknown keyword or a bad value is an
error with its line number, so a typo never silently weakens a configuration (sshd ignores
some of these; we would rather refuse to start than run with a policy nobody meant).
"""

from __future__ import annotations

import dataclasses
import glob
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.accounts.passwd import InvalidUserName, check_user_name, default_passwd_path
from common.crypto import registry
from common.protocol.negotiation import (
    MAX_OBSCURE_INTERVAL_MS,
    MIN_OBSCURE_INTERVAL_MS,
    ServerPolicy,
)
from common.protocol.transport import TransportSettings

from .admission import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    DEFAULT_NETBLOCK4,
    DEFAULT_NETBLOCK6,
    DEFAULT_STARTUPS_FULL,
    DEFAULT_STARTUPS_RATE,
    DEFAULT_STARTUPS_START,
    OVERFLOW_DENY_ALL,
    OVERFLOW_PERMISSIVE,
    AdmissionSettings,
    IPNetwork,
    PenaltySettings,
    Startups,
)
from .loglevel import FACILITIES, LEVELS
from .tunnels import ALLOW_VALUES, GATEWAY_VALUES, TunnelPolicy, parse_patterns

DEFAULT_PORT = 2022
DEFAULT_AUTHORIZED_KEYS = ".qsh/authorized_keys"
DEFAULT_MAX_AUTH_TRIES = 6
DEFAULT_LOGIN_GRACE = 120.0
#: PermitRootLogin values, as in sshd_config.
PERMIT_ROOT_VALUES = ("no", "prohibit-password", "yes")
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
#: ``PerSourceMaxStartups none``.
PER_SOURCE_UNLIMITED = 0
#: PerSourcePenalties durations: seconds, as sshd's names them.
_PENALTY_TIMES = {"crash": "crash", "authfail": "authfail", "noauth": "noauth",
                  "grace-exceeded": "grace_exceeded", "min": "min", "max": "max"}
_PENALTY_COUNTS = {"max-sources4": "max_sources4", "max-sources6": "max_sources6"}
_PENALTY_OVERFLOW = {"overflow": "overflow4", "overflow6": "overflow6"}


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the file and line."""


@dataclass(frozen=True)
class ConnectionSpec:
    """What a Match block may test: the user (and the names of their groups), the client's
    address, and the address and port it connected to (sshd -T -C's user=, addr=, lport=)."""

    user: str = ""
    groups: tuple[str, ...] = ()
    address: str = ""
    local_address: str = ""
    local_port: int = 0


#: Match criteria and the keywords a Match block may hold: what is decided per connection
#: after the client is known (login methods and policy, the session, tunnels, time-outs).
MATCH_CRITERIA = ("all", "user", "group", "address", "localaddress", "localport")
MATCH_KEYWORDS = frozenset({
    "allowtcpforwarding", "permitopen", "permitlisten", "gatewayports", "forcecommand",
    "permittty", "passwordauthentication", "pubkeyauthentication", "permitrootlogin",
    "authorizedkeysfile", "channeltimeout", "unusedconnectiontimeout",
})


@dataclass
class MatchBlock:
    """``Match`` criteria and the settings below them (checked when read)."""

    criteria: list[tuple[str, tuple[str, ...]]]
    settings: list[tuple[str, str, list[str]]] = field(default_factory=list)
    where: str = ""

    def selects(self, conn: ConnectionSpec) -> bool:
        from common.accounts.key_options import address_matches
        from common.accounts.patterns import patterns_match

        for kind, patterns in self.criteria:
            if kind == "all":
                continue
            if kind == "user":
                ok = bool(conn.user) and _case_match(patterns, (conn.user,))
            elif kind == "group":
                ok = bool(conn.groups) and _case_match(patterns, conn.groups)
            elif kind == "address":
                ok = bool(conn.address) and address_matches(conn.address, patterns)
            elif kind == "localaddress":
                ok = bool(conn.local_address) and address_matches(conn.local_address, patterns)
            else:
                ok = patterns_match(patterns, (str(conn.local_port),))
            if not ok:
                return False
        return True


def _case_match(patterns: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """User and group names compare as written (sshd's match_pattern_list for them)."""
    import fnmatch

    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if any(fnmatch.fnmatchcase(name, body) for name in names):
            if negated:
                return False
            positive = True
    return positive


def _match_criteria(values: list[str], where: str) -> list[tuple[str, tuple[str, ...]]]:
    criteria: list[tuple[str, tuple[str, ...]]] = []
    i = 0
    while i < len(values):
        kind = values[i].lower()
        if kind not in MATCH_CRITERIA:
            raise ConfigError(f"{where}: Match: unsupported criterion {values[i]!r} "
                              "(use All, User, Group, Address, LocalAddress, LocalPort)")
        if kind == "all":
            if len(values) != 1:
                raise ConfigError(f"{where}: Match All must appear alone")
            return [("all", ())]
        if i + 1 >= len(values):
            raise ConfigError(f"{where}: Match {values[i]} needs a pattern list")
        patterns = tuple(p.strip() for p in values[i + 1].split(",") if p.strip())
        if not patterns:
            raise ConfigError(f"{where}: Match {values[i]} needs a pattern list")
        if kind == "localport":
            for pattern in patterns:
                body = pattern.lstrip("!")
                if not (body.isdigit() and 1 <= int(body) <= 65535):
                    raise ConfigError(f"{where}: Match LocalPort: {pattern!r} is not a port")
        criteria.append((kind, patterns))
        i += 2
    if not criteria:
        raise ConfigError(f"{where}: Match needs criteria")
    return criteria


#: Where Debian, Fedora and Arch put OpenSSH's sftp-server.
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/lib/ssh/sftp-server", "/usr/libexec/sftp-server")


def default_subsystems() -> dict[str, str]:
    found = next((path for path in SFTP_SERVERS if os.access(path, os.X_OK)), None)
    return {"sftp": found} if found is not None else {}


def default_dir() -> Path:
    """Root daemons live in /etc/qsh, per-user daemons in ~/.qsh (OpenSSH's habit)."""
    return Path("/etc/qsh") if os.geteuid() == 0 else Path.home() / ".qsh"


@dataclass
class ServerConfig:
    port: int = DEFAULT_PORT
    # Like sshd: a daemon serves every interface unless ListenAddress narrows it.
    listen_addresses: list[str] = field(default_factory=lambda: ["0.0.0.0"])  # noqa: S104
    host_keys: list[Path] = field(default_factory=list)
    kems: tuple[str, ...] | None = None
    signatures: tuple[str, ...] | None = None
    ciphers: tuple[str, ...] | None = None
    allow_chaff: bool = True
    #: ObscureKeystrokeTiming: whether clients may ask for keystroke obfuscation, and the
    #: fastest keystroke clock (so the largest fake-keystroke rate) accepted.
    allow_obscure: bool = True
    obscure_min_interval_ms: int = 10
    step_timeout: float = 30.0
    keepalive_interval: float | None = 300.0
    keepalive_count_max: int = 1
    rekey_bytes: int = 1 << 30
    rekey_interval: float = 3600.0
    #: MaxStartups start:rate:full; ``max_startups`` is ``full``.
    max_startups_begin: int = DEFAULT_STARTUPS_START
    max_startups_rate: int = DEFAULT_STARTUPS_RATE
    max_startups: int = DEFAULT_STARTUPS_FULL
    #: None: half of MaxStartups' start (one source can never push the others into the
    #: random drop); PER_SOURCE_UNLIMITED: sshd's default, no limit.
    per_source_max_startups: int | None = None
    per_source_netblock4: int = DEFAULT_NETBLOCK4
    per_source_netblock6: int = DEFAULT_NETBLOCK6
    penalties: PenaltySettings = field(default_factory=PenaltySettings)
    penalty_exempt: tuple[IPNetwork, ...] = ()
    #: Seconds for a new connection's first message to arrive whole; 0: no such limit.
    first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT
    #: The account the pre-auth process runs as (sshd's privsep user; ``nobody`` when the
    #: named one does not exist, see qshd.8).
    privsep_user: str = "qshd"
    #: LogLevel and SyslogFacility (qshd/loglevel.py); QUIET is the zero-log mode.
    log_level: str = "INFO"
    syslog_facility: str = "AUTH"
    #: None: the default for the daemon's privileges (see :meth:`passwd_path`).
    passwd_file: Path | None = None
    #: Relative paths are taken from the user's home; %h, %u and %% are expanded. A key
    #: listed in any of them logs in.
    authorized_keys_files: tuple[str, ...] = (DEFAULT_AUTHORIZED_KEYS,)
    permit_root_login: str = "no"
    password_authentication: bool = True
    pubkey_authentication: bool = True
    max_auth_tries: int = DEFAULT_MAX_AUTH_TRIES
    login_grace_time: float = DEFAULT_LOGIN_GRACE
    #: Tunnels (qshd/tunnels.py): AllowTcpForwarding, PermitOpen, PermitListen, GatewayPorts.
    tunnel_policy: TunnelPolicy = field(default_factory=TunnelPolicy)
    #: ForceCommand: run instead of whatever the client asks (qshd/policy.py).
    force_command: str | None = None
    permit_tty: bool = True
    #: PermitUserEnvironment: "no", "yes" or a pattern list of variable names.
    permit_user_environment: str = "no"
    #: AcceptEnv: patterns of the variable names a client may set (sshd's usual list).
    accept_env: tuple[str, ...] = ("LANG", "LC_*", "TZ")
    #: Subsystem NAME COMMAND, by name; sftp defaults to OpenSSH's sftp-server if present.
    subsystems: dict[str, str] = field(default_factory=default_subsystems)
    #: ChannelTimeout: idle seconds by channel type (only ``session`` today).
    channel_timeouts: dict[str, float] = field(default_factory=dict)
    #: UnusedConnectionTimeout: seconds a logged-in connection may have no channel; 0: never.
    unused_connection_timeout: float = 0.0
    #: AllowUsers / DenyUsers (``user`` or ``user@address`` patterns), AllowGroups /
    #: DenyGroups; None: no such list.
    allow_users: tuple[str, ...] | None = None
    deny_users: tuple[str, ...] = ()
    allow_groups: tuple[str, ...] | None = None
    deny_groups: tuple[str, ...] = ()
    #: Match blocks, in file order (:meth:`for_connection` applies them).
    matches: list[MatchBlock] = field(default_factory=list)
    #: Keywords given with -o: they win over Match blocks too.
    overridden: frozenset[str] = frozenset()

    def for_connection(self, conn: ConnectionSpec) -> ServerConfig:
        """The configuration for one connection: every Match block that selects it, in
        order, applied over the global settings. In the blocks, as in the file, the first
        value of a keyword wins; a ``-o`` option wins over all of them."""
        effective = dataclasses.replace(self, matches=[], channel_timeouts=dict(
            self.channel_timeouts))
        seen = set(self.overridden)
        for block in self.matches:
            if not block.selects(conn):
                continue
            for where, keyword, values in block.settings:
                if keyword in seen:
                    continue
                seen.add(keyword)
                _apply(effective, keyword, values, where, _State())
        return effective

    def auth_methods(self) -> tuple[str, ...]:
        """What a refused client is told may still work."""
        return tuple(method for method, on in (("publickey", self.pubkey_authentication),
                                               ("password", self.password_authentication))
                     if on)

    def transport_settings(self) -> TransportSettings:
        """Keep-alive and rekey budgets: the same in every process a connection passes
        through (the pre-auth process and the user's process after the handoff)."""
        return TransportSettings(keepalive_interval=self.keepalive_interval,
                                 keepalive_count_max=self.keepalive_count_max,
                                 rekey_bytes=self.rekey_bytes,
                                 rekey_interval=self.rekey_interval)

    def policy(self) -> ServerPolicy:
        return ServerPolicy(kems=self.kems, signatures=self.signatures, aeads=self.ciphers,
                            allow_chaff=self.allow_chaff, allow_obscure=self.allow_obscure,
                            obscure_min_interval_ms=self.obscure_min_interval_ms)

    def startups(self) -> Startups:
        """A ``start`` above ``full`` (set apart) is clamped: no drop before the cap."""
        full = self.max_startups
        return Startups(min(self.max_startups_begin, full), self.max_startups_rate, full)

    def admission_settings(self) -> AdmissionSettings:
        startups = self.startups()
        per_source: int | None
        if self.per_source_max_startups is None:
            per_source = max(1, startups.start // 2)
        elif self.per_source_max_startups == PER_SOURCE_UNLIMITED:
            per_source = None
        else:
            per_source = self.per_source_max_startups
        return AdmissionSettings(startups=startups, per_source=per_source,
                                 netblock4=self.per_source_netblock4,
                                 netblock6=self.per_source_netblock6,
                                 penalties=self.penalties, exempt=self.penalty_exempt)

    def host_key_paths(self) -> list[Path]:
        return self.host_keys or [default_dir() / "host_key"]

    def passwd_path(self) -> Path:
        """Decided late, not at parse time: the default depends on whether we run as root."""
        return self.passwd_file if self.passwd_file is not None else default_passwd_path()


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


#: Keywords whose line holds several values, separated by spaces; and the comma lists,
#: where a space after a comma is forgiven.
MULTI_VALUED = frozenset({"authorizedkeysfile", "persourcepenalties", "permitopen",
                          "permitlisten", "kems", "signatures", "ciphers",
                          "persourcepenaltyexemptlist", "forcecommand", "channeltimeout",
                          "allowusers", "denyusers", "allowgroups", "denygroups",
                          "permituserenvironment", "acceptenv", "subsystem"})


def split_line(line: str, where: str) -> tuple[str, list[str]] | None:
    """``(keyword, values)`` of one line as sshd_config reads it; None for a blank line or
    a comment. Values are unquoted; a word that starts with ``#`` ends the line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    cut = len(text)
    for i, char in enumerate(text):
        if char.isspace() or char == "=":
            cut = i
            break
    keyword, rest = text[:cut], text[cut:].lstrip()
    if rest.startswith("="):  # "Keyword=value", "Keyword = value"
        rest = rest[1:].lstrip()
    values: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i].isspace():
            i += 1
            continue
        if rest[i] == "#":
            break
        word: list[str] = []
        while i < len(rest) and not rest[i].isspace():
            if rest[i] == '"':
                end = rest.find('"', i + 1)
                if end < 0:
                    raise ConfigError(f"{where}: unbalanced quotes")
                word.append(rest[i + 1 : end])
                i = end + 1
            else:
                word.append(rest[i])
                i += 1
        values.append("".join(word))
    return keyword.lower(), values


def parse(text: str, source: str = "qshd_config") -> ServerConfig:
    return parse_lines((f"{source}:{number}", line)
                       for number, line in enumerate(text.splitlines(), 1))


def parse_lines(lines: Iterable[tuple[str, str]]) -> ServerConfig:
    """The configuration from ``(where, line)`` pairs, ``where`` naming each line in
    messages (file and line number, or the ``-o`` option it came from). ``Include`` must
    have been expanded (:func:`with_includes`); a ``Match`` line starts a block that lasts
    until the next one or the end, whose settings :meth:`ServerConfig.for_connection`
    applies."""
    config = ServerConfig()
    seen: set[str] = set()
    state = _State()
    overridden: set[str] = set()
    block: MatchBlock | None = None
    outer: list[MatchBlock | None] = []
    for where, line in lines:
        if line == INCLUDE_BEGIN:
            outer.append(block)
            continue
        if line == INCLUDE_END:
            block = outer.pop() if outer else None
            continue
        split = split_line(line, where)
        if split is None:
            continue
        keyword, values = split
        if keyword == "include":
            raise ConfigError(f"{where}: Include is read only in a configuration file")
        if keyword == "match":
            block = MatchBlock(_match_criteria(values, where), where=where)
            config.matches.append(block)
            continue
        if not values or values == [""]:
            raise ConfigError(f"{where}: {keyword} needs a value")
        if len(values) > 1 and keyword not in MULTI_VALUED:
            raise ConfigError(f"{where}: {keyword} takes one value; "
                              f"{' '.join(values[1:])!r} is one too many "
                              '(quote a value that contains spaces: "...")')
        if keyword == "forcecommand":  # the rest of the line as written, as sshd takes it
            values = [raw_rest(line)]
        if keyword == "subsystem" and not any(k == "subsystem" for k in seen):
            config.subsystems = {}  # the file's Subsystem lines replace the defaults
            seen.add("subsystem")
        if block is not None:
            _apply(ServerConfig(), keyword, values, where, _State())  # checked now
            if keyword not in MATCH_KEYWORDS:
                raise ConfigError(f"{where}: {keyword} is not allowed in a Match block")
            block.settings.append((where, keyword, values))
            continue
        repeatable = keyword in REPEATABLE
        if keyword in seen and not repeatable:
            # First value wins, as in sshd_config; a later one is still checked, so that a
            # mistake in it is found by -t before it becomes the first (an edit, Include).
            _apply(ServerConfig(), keyword, values, where, _State())
            continue
        seen.add(keyword)
        if where.startswith("-o "):
            overridden.add(keyword)
        _apply(config, keyword, values, where, state)
    config.overridden = frozenset(overridden)
    return config


@dataclass
class _State:
    """What the keywords that may be repeated carry from one line to the next."""

    penalty_items: set[str] = field(default_factory=set)
    listen_given: bool = False
    accept_env_given: bool = False


#: Keywords whose every line counts (the others: the first one wins).
REPEATABLE = frozenset({"listenaddress", "hostkey", "persourcepenalties", "allowusers",
                        "denyusers", "allowgroups", "denygroups", "acceptenv", "subsystem"})


def raw_rest(line: str) -> str:
    """What follows the keyword (and its ``=``), as written: ForceCommand's command."""
    text = line.strip()
    cut = len(text)
    for i, char in enumerate(text):
        if char.isspace() or char == "=":
            cut = i
            break
    rest = text[cut:].lstrip()
    if rest.startswith("="):
        rest = rest[1:].lstrip()
    return rest


def _apply(config: ServerConfig, keyword: str, values: list[str], where: str,
           state: _State) -> None:
    """One setting onto ``config``; raises ConfigError for a bad value or keyword."""
    value = " ".join(values)
    if keyword == "port":
        config.port = int(_number(value, where, 1, 65535))
    elif keyword == "listenaddress":
        if not state.listen_given:
            config.listen_addresses = []
            state.listen_given = True
        config.listen_addresses.append(value)
    elif keyword == "hostkey":
        config.host_keys.append(Path(value).expanduser())
    elif keyword == "kems":
        config.kems = _names(value, registry.available_kems(), where)
    elif keyword == "signatures":
        config.signatures = _names(value, registry.available_signatures(), where)
    elif keyword == "ciphers":
        config.ciphers = _names(value, registry.available_aeads(), where)
    elif keyword == "allowchaff":
        config.allow_chaff = _boolean(value, where)
    elif keyword == "obscurekeystroketiming":
        config.allow_obscure, config.obscure_min_interval_ms = _obscure(value, where)
    elif keyword == "handshaketimeout":
        config.step_timeout = _number(value, where, 1, 600)
    elif keyword == "keepaliveinterval":
        config.keepalive_interval = _number(value, where, 1, 86400)
    elif keyword == "clientaliveinterval":  # sshd's name; 0 turns the keep-alive off
        config.keepalive_interval = _number(value, where, 0, 86400) or None
    elif keyword == "clientalivecountmax":
        config.keepalive_count_max = int(_number(value, where, 1, 1000))
    elif keyword == "rekeybytes":
        config.rekey_bytes = int(_number(value, where, 1 << 20, 1 << 40))
    elif keyword == "rekeyinterval":
        config.rekey_interval = _number(value, where, 10, 86400)
    elif keyword == "maxstartups":
        (config.max_startups_begin, config.max_startups_rate,
         config.max_startups) = _max_startups(value, where)
    elif keyword == "persourcemaxstartups":
        config.per_source_max_startups = (
            PER_SOURCE_UNLIMITED if value.lower() == "none"
            else _integer(value, where, 1, 100000))
    elif keyword == "persourcenetblocksize":
        v4, v6 = _netblock(value, where)
        config.per_source_netblock4 = v4
        if v6 is not None:
            config.per_source_netblock6 = v6
    elif keyword == "persourcepenalties":
        config.penalties = _penalties(value, where, config.penalties, state.penalty_items)
    elif keyword == "persourcepenaltyexemptlist":
        config.penalty_exempt = _networks(value, where)
    elif keyword == "firstmessagetimeout":
        config.first_message_timeout = _seconds(value, where, 0, 3600)
    elif keyword == "privsepuser":
        try:
            check_user_name(value)
        except InvalidUserName:
            raise ConfigError(f"{where}: PrivsepUser {value!r} is not a user name") from None
        config.privsep_user = value
    elif keyword == "loglevel":
        config.log_level = _choice(value, tuple(n.lower() for n in LEVELS), where).upper()
    elif keyword == "syslogfacility":
        config.syslog_facility = _choice(value, tuple(n.lower() for n in FACILITIES),
                                         where).upper()
    elif keyword == "passwdfile":
        config.passwd_file = Path(value).expanduser()
    elif keyword == "authorizedkeysfile":
        for template in values:
            if "\x00" in template or not template:
                raise ConfigError(f"{where}: AuthorizedKeysFile: an empty path or a NUL")
            try:
                expand_tokens(template, "user", "/home/user")
            except ValueError as exc:
                raise ConfigError(f"{where}: AuthorizedKeysFile: {exc}") from None
        config.authorized_keys_files = tuple(values)
    elif keyword == "permitrootlogin":
        choice = value.lower()
        if choice == "without-password":  # sshd's old name for prohibit-password
            choice = "prohibit-password"
        config.permit_root_login = _choice(choice, PERMIT_ROOT_VALUES, where)
    elif keyword == "passwordauthentication":
        config.password_authentication = _boolean(value, where)
    elif keyword == "pubkeyauthentication":
        config.pubkey_authentication = _boolean(value, where)
    elif keyword == "maxauthtries":
        config.max_auth_tries = _integer(value, where, 1, 100)
    elif keyword == "logingracetime":
        config.login_grace_time = _seconds(value, where, 1, 86400)
    elif keyword in _TUNNEL_KEYWORDS:
        config.tunnel_policy = _tunnel_option(config.tunnel_policy, keyword, value, where)
    elif keyword == "forcecommand":
        config.force_command = None if value.lower() == "none" else value
    elif keyword == "permittty":
        config.permit_tty = _boolean(value, where)
    elif keyword == "permituserenvironment":
        lowered = value.lower()
        config.permit_user_environment = lowered if lowered in ("yes", "no") else value
    elif keyword == "channeltimeout":
        config.channel_timeouts = _channel_timeouts(values, where)
    elif keyword == "acceptenv":
        for pattern in values:
            if not re.fullmatch(r"!?[A-Za-z0-9_*?]+", pattern):
                raise ConfigError(f"{where}: AcceptEnv: bad pattern {pattern!r}")
        # The first line replaces the default list; later ones add to it.
        config.accept_env = ((*config.accept_env, *values) if state.accept_env_given
                             else tuple(values))
        state.accept_env_given = True
    elif keyword == "subsystem":
        if len(values) < 2 or not re.fullmatch(r"[A-Za-z0-9@._-]{1,64}", values[0]):
            raise ConfigError(f"{where}: Subsystem takes a name and a command")
        command = " ".join(values[1:])
        if command == "internal-sftp":  # sshd's built-in: the system's sftp-server here
            command = default_subsystems().get("sftp", "internal-sftp")
        config.subsystems.setdefault(values[0], command)
    elif keyword == "unusedconnectiontimeout":
        config.unused_connection_timeout = (
            0.0 if value.lower() == "none" else _seconds(value, where, 0, 30 * 86400))
    elif keyword == "allowusers":
        config.allow_users = (*(config.allow_users or ()), *_name_patterns(values, where))
    elif keyword == "denyusers":
        config.deny_users = (*config.deny_users, *_name_patterns(values, where))
    elif keyword == "allowgroups":
        config.allow_groups = (*(config.allow_groups or ()),
                               *_name_patterns(values, where, users=False))
    elif keyword == "denygroups":
        config.deny_groups = (*config.deny_groups, *_name_patterns(values, where, users=False))
    else:
        raise ConfigError(f"{where}: unknown keyword {keyword!r}")


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


def load(path: Path | None, overrides: tuple[str, ...] = ()) -> ServerConfig:
    """Read the file; a missing default file means defaults, a missing named file is an error.

    ``overrides`` are ``Keyword=value`` options from the command line (sshd's ``-o``); they
    are read first, so they win over the file (and over its Match blocks).
    """
    lines = [(f"-o {option!r}", option) for option in overrides]
    if path is None:
        default = default_dir() / "qshd_config"
        path = default if default.exists() else None
    if path is not None:
        lines += read_file(path, path.parent)
    return parse_lines(lines)


#: Around an included file's lines: a Match block that file starts ends with the file
#: (what follows the Include is in the block, or not, as before it).
INCLUDE_BEGIN, INCLUDE_END = "\x00include", "\x00end"
#: Include inside Include inside ...: as deep as sshd allows.
MAX_INCLUDE_DEPTH = 16


def read_file(path: Path, base: Path, depth: int = 0) -> list[tuple[str, str]]:
    """The ``(where, line)`` pairs of a configuration file with every ``Include`` replaced
    by the lines of the files it names: paths or globs, relative ones taken from ``base``
    (the main file's directory), each glob's files in lexical order; a glob that matches
    nothing adds nothing, a file that does not exist is an error. Lines keep their own file
    and line number, so a mistake in an included file is reported where it is."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    lines: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        split = split_line(line, where)
        if split is None or split[0] != "include":
            lines.append((where, line))
            continue
        if not split[1] or split[1] == [""]:
            raise ConfigError(f"{where}: include needs a value")
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError(f"{where}: Include nested more than {MAX_INCLUDE_DEPTH} deep")
        for pattern in split[1]:
            target = Path(pattern).expanduser()
            if not target.is_absolute():
                target = base / target
            if glob.has_magic(str(target)):
                found = sorted(glob.glob(str(target)))
            elif target.exists():
                found = [str(target)]
            else:
                raise ConfigError(f"{where}: Include {pattern}: no such file")
            for name in found:
                lines.append((where, INCLUDE_BEGIN))
                lines += read_file(Path(name), base, depth + 1)
                lines.append((where, INCLUDE_END))
    return lines


def _g(number: float) -> str:
    return f"{number:g}"


def _patterns_text(patterns: tuple[tuple[str, str], ...] | None) -> str:
    if patterns is None:
        return "any"
    if not patterns:
        return "none"
    return " ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in patterns)


def dump(config: ServerConfig) -> list[str]:
    """``qshd -T``: every keyword with its effective value, one ``keyword value`` line each
    (lower case, as sshd -T prints them), in a stable order."""
    p = config.penalties
    tunnels = config.tunnel_policy
    per_source = config.per_source_max_startups
    lines = [f"port {config.port}"]
    lines += [f"listenaddress {address}" for address in config.listen_addresses]
    lines += [f"hostkey {path}" for path in config.host_key_paths()]
    lines += [
        f"kems {','.join(config.kems) if config.kems else 'default'}",
        f"signatures {','.join(config.signatures) if config.signatures else 'default'}",
        f"ciphers {','.join(config.ciphers) if config.ciphers else 'default'}",
        f"allowchaff {'yes' if config.allow_chaff else 'no'}",
        "obscurekeystroketiming " + ("no" if not config.allow_obscure
                                     else f"interval:{config.obscure_min_interval_ms}"),
        f"handshaketimeout {_g(config.step_timeout)}",
        f"keepaliveinterval {_g(config.keepalive_interval or 0)}",
        f"clientaliveinterval {_g(config.keepalive_interval or 0)}",  # sshd -T's name
        f"clientalivecountmax {config.keepalive_count_max}",
        f"rekeybytes {config.rekey_bytes}",
        f"rekeyinterval {_g(config.rekey_interval)}",
        f"maxstartups {config.max_startups_begin}:{config.max_startups_rate}:"
        f"{config.max_startups}",
        "persourcemaxstartups " + ("none" if per_source == PER_SOURCE_UNLIMITED else
                                   "default" if per_source is None else str(per_source)),
        f"persourcenetblocksize {config.per_source_netblock4}:{config.per_source_netblock6}",
        "persourcepenalties " + (
            f"crash:{_g(p.crash)} authfail:{_g(p.authfail)} noauth:{_g(p.noauth)} "
            f"grace-exceeded:{_g(p.grace_exceeded)} min:{_g(p.min)} max:{_g(p.max)} "
            f"max-sources4:{p.max_sources4} max-sources6:{p.max_sources6} "
            f"overflow:{p.overflow4} overflow6:{p.overflow6}" if p.enabled else "no"),
        "persourcepenaltyexemptlist "
        + (",".join(str(n) for n in config.penalty_exempt) or "none"),
        f"firstmessagetimeout {_g(config.first_message_timeout)}",
        f"privsepuser {config.privsep_user}",
        f"loglevel {config.log_level}",
        f"syslogfacility {config.syslog_facility}",
        f"passwdfile {config.passwd_path()}",
        f"authorizedkeysfile {' '.join(config.authorized_keys_files)}",
        f"permitrootlogin {config.permit_root_login}",
        f"passwordauthentication {'yes' if config.password_authentication else 'no'}",
        f"pubkeyauthentication {'yes' if config.pubkey_authentication else 'no'}",
        f"maxauthtries {config.max_auth_tries}",
        f"logingracetime {_g(config.login_grace_time)}",
        f"allowtcpforwarding {tunnels.allow}",
        f"permitopen {_patterns_text(tunnels.permit_open)}",
        f"permitlisten {_patterns_text(tunnels.permit_listen)}",
        f"gatewayports {tunnels.gateway_ports}",
        f"forcecommand {config.force_command if config.force_command is not None else 'none'}",
        f"permittty {'yes' if config.permit_tty else 'no'}",
        f"permituserenvironment {config.permit_user_environment}",
        "channeltimeout " + (" ".join(f"{kind}={_g(seconds)}" for kind, seconds
                                      in sorted(config.channel_timeouts.items())) or "none"),
        "unusedconnectiontimeout " + (_g(config.unused_connection_timeout)
                                      if config.unused_connection_timeout else "none"),
        f"acceptenv {' '.join(config.accept_env) or 'none'}",
        *(f"subsystem {name} {command}" for name, command in config.subsystems.items()),
    ]
    for keyword, values in (("allowusers", config.allow_users),
                            ("denyusers", config.deny_users),
                            ("allowgroups", config.allow_groups),
                            ("denygroups", config.deny_groups)):
        if values:
            lines.append(f"{keyword} {' '.join(values)}")
    return lines


def connection_spec(text: str) -> ConnectionSpec:
    """``qshd -T -C user=...,addr=...,lport=...[,laddr=...,group=...]``: the connection to
    apply the Match blocks for (groups default to the user's, if the account exists)."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("user", "addr", "lport", "laddr", "group"):
            raise ConfigError(f"-C: unknown field {name!r} (user=, addr=, lport=, laddr=, "
                              "group=)")
        fields[name] = value.strip()
    port = 0
    if "lport" in fields:
        if not fields["lport"].isdigit() or not 0 < int(fields["lport"]) < 65536:
            raise ConfigError(f"-C: lport={fields['lport']} is not a port")
        port = int(fields["lport"])
    if "addr" in fields:
        try:
            ipaddress.ip_address(fields["addr"])
        except ValueError:
            raise ConfigError(f"-C: addr={fields['addr']} is not an address") from None
    user = fields.get("user", "")
    groups: tuple[str, ...] = tuple(g for g in fields.get("group", "").split(":") if g)
    if user and not groups:
        import grp
        import pwd

        try:
            entry = pwd.getpwnam(user)
            ids = os.getgrouplist(user, entry.pw_gid)
            groups = tuple(grp.getgrgid(gid).gr_name for gid in ids)
        except (KeyError, OSError):
            groups = ()
    return ConnectionSpec(user, groups, fields.get("addr", ""), fields.get("laddr", ""), port)
