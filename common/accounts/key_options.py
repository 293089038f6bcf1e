"""The options in front of a key in ``authorized_keys``, read as sshd reads them.

A line is ``[options] qsh-<alg> <base64> [comment]``. The options field is everything up to
the first space outside double quotes: comma-separated, names in any case, values in
double quotes (``\\"`` is a quote inside one), e.g.::

    restrict,pty,from="10.0.0.0/8,!10.0.0.66",command="/usr/local/bin/backup" qsh-mldsa65 AAAA...

What each option means is sshd's (authorized_keys(5) in qshd.8 and qshd_config.5); what is
decided here is only the grammar and which options exist. An option we do not implement
refuses the whole line (:class:`OptionError`), as sshd refuses a line it cannot parse: a
key whose restriction is silently dropped would be a key with more rights than its owner
gave it. The exceptions are ``no-agent-forwarding``, ``no-X11-forwarding`` and
``no-user-rc``, which forbid what qsh does not have and so are satisfied by definition;
they are accepted so that keys restricted the pre-``restrict`` way keep working.

Errors never quote the line: the file may be a link to something its reader could read and
the log's readers could not. They name the option only when it is one of ours.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
import time
from dataclasses import dataclass

from common.accounts.patterns import patterns_match

#: Far beyond any real options field (sshd has no limit but its line length).
MAX_OPTIONS = 8192
#: Values of permitopen / permitlisten / environment / from per line.
MAX_REPEATED = 64

#: Options that forbid what qsh does not offer at all: nothing to enforce.
_NOTHING_TO_FORBID = frozenset({"no-agent-forwarding", "no-x11-forwarding", "no-user-rc"})
_FLAGS = frozenset({"restrict", "pty", "no-pty", "port-forwarding", "no-port-forwarding"})
_VALUED = frozenset({"command", "from", "permitopen", "permitlisten", "expiry-time",
                     "environment"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPIRY = re.compile(r"(\d{8})(\d{4}(\d{2})?)?([Zz])?")


class OptionError(ValueError):
    """The options field cannot be honoured: the line is refused. The message is safe to
    log (it never holds the line's text)."""


@dataclass(frozen=True)
class KeyOptions:
    """What a key line allows; the defaults are a line without options."""

    #: The forced command (``command=``), run instead of whatever the client asks.
    command: str | None = None
    #: ``from=`` patterns (addresses, wildcards, CIDR, ``!`` negation); None: any source.
    sources: tuple[str, ...] | None = None
    pty: bool = True
    port_forwarding: bool = True
    #: ``permitopen=`` / ``permitlisten=`` values as written; empty: no narrowing.
    permit_open: tuple[str, ...] = ()
    permit_listen: tuple[str, ...] = ()
    #: ``expiry-time=``, seconds since the epoch; None: no expiry.
    expires: float | None = None
    #: ``environment=`` ``NAME=value`` pairs, in file order.
    environment: tuple[tuple[str, str], ...] = ()
    #: The options field as written: what the monitor hands to the user's process, which
    #: parses it again rather than trusting a second encoding of the same thing.
    text: str = ""

    @property
    def restricted(self) -> bool:
        """Whether anything is narrower than a plain key line."""
        return self != KeyOptions(text=self.text)

    def refusal(self, address: str, now: float) -> str | None:
        """Why this line does not admit a login from ``address`` at ``now``, or None."""
        if self.expires is not None and now >= self.expires:
            return "the key's expiry-time has passed"
        if self.sources is not None and not address_matches(address, self.sources):
            return f"from= does not allow {address}"
        return None


def split_options(line: str, key_prefix: str) -> tuple[str, str]:
    """``(options field, key part)`` of a stripped authorized_keys line: no options when
    the first word already is a key type (it starts with ``key_prefix``)."""
    if line.startswith(key_prefix):
        return "", line
    quoted = False
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\" and quoted and i + 1 < len(line):
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char in " \t" and not quoted:
            return line[:i], line[i:].lstrip(" \t")
        i += 1
    raise OptionError("no key after the options" if not quoted else "unbalanced quotes")


def parse_options(text: str) -> KeyOptions:
    """The options field (see the module docstring); raises :class:`OptionError`."""
    if len(text) > MAX_OPTIONS:
        raise OptionError("options field too long")
    values: dict[str, list[str]] = {name: [] for name in _VALUED}
    flags: list[str] = []
    for name, value in _items(text):
        if name in _NOTHING_TO_FORBID and value is None:
            continue
        if name in _FLAGS and value is None:
            flags.append(name)
        elif name in _VALUED and value is not None:
            if len(values[name]) >= MAX_REPEATED:
                raise OptionError(f"too many {name} options")
            values[name].append(value)
        else:
            raise OptionError("unsupported or malformed key option")
    # restrict first, whatever its place; then each explicit flag, the last one winning.
    pty = forwarding = "restrict" not in flags
    for flag in flags:
        if flag in ("pty", "no-pty"):
            pty = flag == "pty"
        elif flag in ("port-forwarding", "no-port-forwarding"):
            forwarding = flag == "port-forwarding"
    for name in ("command", "from", "expiry-time"):
        if len(values[name]) > 1:
            raise OptionError(f"{name} given twice")
    command = values["command"][0] if values["command"] else None
    sources = None
    if values["from"]:
        sources = tuple(p.strip() for p in values["from"][0].split(","))
        if not all(sources):
            raise OptionError("from= has an empty pattern")
    for spec in values["permitopen"]:
        _check_endpoint(spec, host_optional=False, what="permitopen")
    for spec in values["permitlisten"]:
        _check_endpoint(spec, host_optional=True, what="permitlisten")
    environment = []
    for item in values["environment"]:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name) or "\x00" in value:
            raise OptionError("environment= is not NAME=value")
        environment.append((name, value))
    expires = _expiry(values["expiry-time"][0]) if values["expiry-time"] else None
    return KeyOptions(command=command, sources=sources, pty=pty, port_forwarding=forwarding,
                      permit_open=tuple(values["permitopen"]),
                      permit_listen=tuple(values["permitlisten"]), expires=expires,
                      environment=tuple(environment), text=text)


def _items(text: str) -> list[tuple[str, str | None]]:
    """``name`` or ``name="value"`` items, comma-separated."""
    items: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        start = i
        while i < n and text[i] not in ',="':
            i += 1
        name = text[start:i].lower()
        if not name:
            raise OptionError("empty key option")
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            if i >= n or text[i] != '"':
                raise OptionError("a key option's value must be in double quotes")
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] == '"':
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                raise OptionError("unbalanced quotes")
            i += 1
            value = "".join(chars)
        elif i < n and text[i] == '"':
            raise OptionError("a quote inside a key option's name")
        items.append((name, value))
        if i < n:
            if text[i] != ",":
                raise OptionError("key options must be separated by commas")
            i += 1
            if i >= n:
                raise OptionError("a comma at the end of the options")
    return items


def _check_endpoint(spec: str, *, host_optional: bool, what: str) -> None:
    if spec.startswith("["):
        end = spec.find("]")
        ok = end > 1 and spec[end + 1:end + 2] == ":"
        port = spec[end + 2:]
    elif ":" in spec:
        host, _, port = spec.rpartition(":")
        ok = bool(host)
    else:
        ok, port = host_optional, spec
    if not ok or not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
        raise OptionError(f"{what}= is not {'[host:]port' if host_optional else 'host:port'}")


def _expiry(value: str) -> float:
    """``YYYYMMDD[HHMM[SS]]``, local time, or UTC with a trailing ``Z`` (as sshd)."""
    match = _EXPIRY.fullmatch(value.strip())
    if match is None:
        raise OptionError("expiry-time= is not YYYYMMDD[HHMM[SS]][Z]")
    digits = match.group(1) + (match.group(2) or "0000")
    if len(digits) == 12:
        digits += "00"
    try:
        parsed = time.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        raise OptionError("expiry-time= is not a valid date") from None
    if match.group(4):
        return float(calendar.timegm(parsed))
    return time.mktime(parsed)


def address_matches(address: str, patterns: tuple[str, ...]) -> bool:
    """sshd's from= and Match Address: some positive pattern matches and no ``!`` one
    does; a pattern is a wildcard (``192.168.1.*``) or a network (``10.0.0.0/8``). An
    IPv4-mapped IPv6 address is compared as the IPv4 address it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        text = str(ip)
    except ValueError:
        return False
    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if "/" in body:
            try:
                hit = ip in ipaddress.ip_network(body, strict=False)
            except (ValueError, TypeError):
                hit = False
        else:
            hit = patterns_match((body,), (text,))
        if hit:
            if negated:
                return False
            positive = True
    return positive
