"""``Match`` blocks: their criteria, which connection a block selects, and ``qshd -T -C``'s
description of a connection."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from .grammar import ConfigError


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
