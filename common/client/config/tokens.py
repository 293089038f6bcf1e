"""ssh's %-tokens: which a keyword allows (checked when its line is read), how a path's
``~`` and tokens are expanded once the host is resolved, and ControlPath's own (%C, %i,
%l, %L). Their values for the host being resolved come from
:meth:`common.client.config.match._Context.tokens`."""

from __future__ import annotations

import os
import re

from common.client.config.settings import ConfigError, _as_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from collections.abc import Mapping


_PATH_TOKENS = "%dhnpru"
#: ControlPath's: the path tokens, and %C (a hash of %l%h%p%r), %i (uid), %l/%L (this host).
_CONTROL_TOKENS = _PATH_TOKENS + "CiLl"


def _check_tokens(keyword: str, arg: str, allowed: str) -> str:
    """Reject unknown %-tokens when the line is read, where the file and line are known,
    rather than when the host is resolved."""
    for match in re.finditer(r"%(.?)", arg):
        token = match.group(1)
        if not token:
            raise ValueError(f"{keyword}: '%' at the end of {arg!r} (write %% for a percent)")
        if token not in allowed:
            raise ValueError(f"{keyword}: unknown token %{token} in {arg!r}")
    return arg


def _expand_path(value: str, tokens: Mapping[str, str], home: str, origin: str) -> str:
    """ssh's order: ``~`` first, then %-tokens, so a token's value is never re-expanded."""
    if value == "~" or value.startswith("~/"):
        value = home + value[1:]
    elif value.startswith("~"):
        head, sep, tail = value.partition("/")
        expanded = os.path.expanduser(head)
        if expanded == head:
            raise ConfigError(f"{origin}: unknown user in {head!r}")
        value = expanded + sep + tail
    return _as_path(re.sub(r"%(.)", lambda m: tokens[m.group(1)], value))


def _control_tokens(tokens: Mapping[str, str]) -> dict[str, str]:
    """ControlPath's own tokens. %C is ssh's: the SHA-1 of %l%h%p%r in hex, so one socket
    per destination whatever alias reached it, in a name of fixed length. (A name, not a
    secret: the interpreter's built-in SHA-1, which costs nothing to import, unlike
    hashlib's OpenSSL -- this runs on every command over a shared connection.)"""
    try:
        from _sha1 import sha1  # type: ignore[import-not-found]
    except ImportError:  # an interpreter built without it
        from hashlib import sha1
    local = os.uname().nodename
    digest = sha1((local + tokens["h"] + tokens["p"] + tokens["r"]).encode()  # noqa: S324
                  ).hexdigest()
    return {"C": digest, "i": str(os.getuid()), "l": local, "L": local.split(".")[0]}
