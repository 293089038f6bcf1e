"""Host patterns as OpenSSH writes them: ``*`` and ``?`` globs, ``!`` negation, and hashed
names (``|1|salt|hash``, HMAC-SHA1 of the name under the salt). One implementation for
known_hosts, the client's ``Host``/``Match`` lines and authorized_keys' ``from=``; a module of
its own so that reading a config file does not load the key code (issue 18).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    # Only * and ? are special; '[' must stay literal for "[host]:port".
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


HASH_MAGIC = "|1|"
_SALT_SIZE = 20
_SHA1_SIZE = 20


def hash_host(name: str, salt: bytes | None = None) -> str:
    """OpenSSH's hashed host name (see the module docstring) for a pattern as we write it."""
    import base64
    import hashlib
    import hmac

    salt = os.urandom(_SALT_SIZE) if salt is None else salt
    digest = hmac.new(salt, name.lower().encode("utf-8"), hashlib.sha1).digest()
    return f"{HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _hashed_match(pattern: str, names: tuple[str, ...]) -> bool:
    """Whether a ``|1|salt|hash`` pattern is one of ``names``; False if malformed."""
    import base64  # only hashed names need these (hashlib loads OpenSSL)
    import hashlib
    import hmac

    parts = pattern[len(HASH_MAGIC):].split("|")
    if len(parts) != 2:
        return False
    try:
        salt = base64.b64decode(parts[0], validate=True)
        digest = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return False
    if len(salt) != _SALT_SIZE or len(digest) != _SHA1_SIZE:
        return False
    return any(hmac.compare_digest(
        hmac.new(salt, name.lower().encode("utf-8"), hashlib.sha1).digest(), digest)
        for name in names)


def patterns_match(patterns: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """OpenSSH semantics: some positive pattern matches a name and no negated one does."""
    positive = False
    for pattern in patterns:
        if pattern.startswith(HASH_MAGIC):
            if _hashed_match(pattern, names):
                positive = True
            continue
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if any(_glob(body).fullmatch(name) for name in names):
            if negated:
                return False
            positive = True
    return positive
