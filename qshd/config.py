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
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.accounts.passwd import InvalidUserName, check_user_name, default_passwd_path
from common.crypto import registry
from common.protocol.negotiation import ServerPolicy
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
    step_timeout: float = 30.0
    keepalive_interval: float = 300.0
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

    def auth_methods(self) -> tuple[str, ...]:
        """What a refused client is told may still work."""
        return tuple(method for method, on in (("publickey", self.pubkey_authentication),
                                               ("password", self.password_authentication))
                     if on)

    def transport_settings(self) -> TransportSettings:
        """Keep-alive and rekey budgets: the same in every process a connection passes
        through (the pre-auth process and the user's process after the handoff)."""
        return TransportSettings(keepalive_interval=self.keepalive_interval,
                                 rekey_bytes=self.rekey_bytes,
                                 rekey_interval=self.rekey_interval)

    def policy(self) -> ServerPolicy:
        return ServerPolicy(kems=self.kems, signatures=self.signatures, aeads=self.ciphers,
                            allow_chaff=self.allow_chaff)

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
                          "persourcepenaltyexemptlist"})


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
    messages (file and line number, or the ``-o`` option it came from)."""
    config = ServerConfig()
    seen: set[str] = set()
    penalty_items: set[str] = set()
    listen_given = False
    for where, line in lines:
        split = split_line(line, where)
        if split is None:
            continue
        keyword, values = split
        if not values or values == [""]:
            raise ConfigError(f"{where}: {keyword} needs a value")
        if len(values) > 1 and keyword not in MULTI_VALUED:
            raise ConfigError(f"{where}: {keyword} takes one value; "
                              f"{' '.join(values[1:])!r} is one too many "
                              '(quote a value that contains spaces: "...")')
        value = " ".join(values)
        repeatable = keyword in ("listenaddress", "hostkey", "persourcepenalties")
        if keyword in seen and not repeatable:
            continue  # first value wins, as in sshd_config
        seen.add(keyword)
        if keyword == "port":
            config.port = int(_number(value, where, 1, 65535))
        elif keyword == "listenaddress":
            if not listen_given:
                config.listen_addresses = []
                listen_given = True
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
        elif keyword == "handshaketimeout":
            config.step_timeout = _number(value, where, 1, 600)
        elif keyword == "keepaliveinterval":
            config.keepalive_interval = _number(value, where, 1, 86400)
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
            config.penalties = _penalties(value, where, config.penalties, penalty_items)
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
        else:
            raise ConfigError(f"{where}: unknown keyword {keyword!r}")
    return config


def load(path: Path | None, overrides: tuple[str, ...] = ()) -> ServerConfig:
    """Read the file; a missing default file means defaults, a missing named file is an error.

    ``overrides`` are ``Keyword=value`` options from the command line (sshd's ``-o``); they
    are read first, so they win over the file.
    """
    lines = [(f"-o {option!r}", option) for option in overrides]
    if path is None:
        default = default_dir() / "qshd_config"
        path = default if default.exists() else None
    if path is not None:
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        lines += [(f"{path}:{number}", line)
                  for number, line in enumerate(text.splitlines(), 1)]
    return parse_lines(lines)
