"""Trust on first use: the client's record of which public key each server presented.

``~/.qsh/known_hosts`` follows OpenSSH's format so users can read and edit it with the habits
they have::

    # comment
    <patterns> qsh-<algorithm> <base64 PublicKey blob> [comment]

``patterns`` is a comma-separated list. A server on the default port (2022) is written as its
bare host name; on any other port as ``[host]:port`` (IPv6 literals too: ``[::1]:2222``).
Lookups try ``[host]:port`` always and the bare name too when the port is the default, so a
hand-written ``[::1]:2022`` still matches. Patterns may use ``*`` and ``?`` wildcards and a
leading ``!`` to negate, as in OpenSSH. Host names compare case-insensitively.

Decisions, and why:

* A key matches only if the *whole* PublicKey is identical (key ID, expiration, algorithm,
  verification key). The key ID alone is chosen by the server and proves nothing.
* A host may have several lines (key rotation, several algorithms). Any matching key is a
  ``match``; if the host is known but none matches, that is a ``mismatch``, also when the
  presented key uses a different algorithm. OpenSSH treats a new key type as "unknown", which
  lets an attacker who can steer negotiation turn a known host back into a first contact; we
  prefer a loud failure. The client should offer the algorithms it already knows for that
  host first (:attr:`LookupResult.algorithms`).
* Expiry is not judged here: the handshake checks ``is_expired(now)`` for every key.
* Comments, blank lines and lines we cannot parse (``@cert-authority``/``@revoked`` markers,
  other tools' key types) are kept byte for byte when the file is rewritten and otherwise
  ignored.
* Hashed host names (``HashKnownHosts``, ``qsh-keygen -H``) are OpenSSH's own format,
  ``|1|base64(salt)|base64(HMAC-SHA1(salt, name))``, a 20-byte random salt per line, so a
  file stays readable by ``ssh-keygen -F`` and lines can be moved between the two tools.
  SHA-1 is kept on purpose: as an HMAC key'd by a random salt it is a PRF whose strength
  here does not rest on collision resistance, and hashing only hides the names from a casual
  reader of the file (a guessed name is checked in a microsecond whatever the hash); a hash
  of our own would buy no security and lose that compatibility. The name hashed is the one
  we would write (``name`` or ``[name]:port``, lower case); a hashed line names one host.
* Writes re-read the file, apply the change and replace the file atomically (0600), so an
  edit made by the user since we loaded it is not lost and a crash never truncates the file.
  Two qsh processes adding a host at the same instant can still lose one of the two lines;
  the loser simply asks again next time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from common.accounts.keys import KeyFileError, PublicKey, atomic_write
from common.accounts.patterns import HASH_MAGIC, hash_host, patterns_match
from common.errors import InvalidInput
from common.wire import Record

#: qsh's default port, used only as the default of ``default_port`` parameters: the
#: canonical constant belongs to the configuration layer, which passes its own value.
_DEFAULT_PORT = 2022
KNOWN_HOSTS_MODE = 0o600
DIRECTORY_MODE = 0o700
#: known_hosts files are user-edited and can be long, but not this long.
MAX_KNOWN_HOSTS_FILE = 64 * 1024 * 1024

Status = Literal["unknown", "match", "mismatch"]
_Edit = Callable[[list[str]], list[str]]


def default_path() -> Path:
    return Path(os.path.expanduser("~")) / ".qsh" / "known_hosts"


def _normalise_host(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.lower()


def host_pattern(host: str, port: int, default_port: int = _DEFAULT_PORT) -> str:
    """The pattern we write for a host: bare on the default port, ``[host]:port`` otherwise."""
    name = _normalise_host(host)
    if not name or any(c.isspace() or c in ",*?!#@[]" for c in name):
        raise ValueError(f"cannot record host name {host!r} in known_hosts")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return name if port == default_port else f"[{name}]:{port}"


def _host_names(host: str, port: int, default_port: int) -> tuple[str, ...]:
    """Every spelling a line may use for this host: bracketed always, bare on the default."""
    name = _normalise_host(host)
    bracketed = f"[{name}]:{port}"
    return (bracketed, name) if port == default_port else (bracketed,)


class Entry(Record):
    """One usable known_hosts line. ``line_number`` is 1-based, for messages to the user
    ("offending key in ~/.qsh/known_hosts:7")."""

    __slots__ = ("patterns", "key", "comment", "line_number")  # noqa: RUF023 (field order)
    patterns: tuple[str, ...]
    key: PublicKey
    comment: str
    line_number: int

    def __init__(self, patterns: tuple[str, ...], key: PublicKey, comment: str,
                 line_number: int) -> None:
        object.__setattr__(self, "patterns", patterns)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "comment", comment)
        object.__setattr__(self, "line_number", line_number)

    def matches_host(self, names: tuple[str, ...]) -> bool:
        return patterns_match(self.patterns, names)


class LookupResult(Record):
    __slots__ = ("status", "matching", "conflicting")  # noqa: RUF023 (field order)
    status: Status
    #: Entries for this host whose key is the one asked about (all of the host's entries
    #: when no key was given).
    matching: tuple[Entry, ...]
    #: Entries for this host with some other key: what a "mismatch" shows the user.
    conflicting: tuple[Entry, ...]

    def __init__(self, status: Status, matching: tuple[Entry, ...],
                 conflicting: tuple[Entry, ...]) -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "matching", matching)
        object.__setattr__(self, "conflicting", conflicting)

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.matching + self.conflicting

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Signature algorithms already trusted for the host, in file order, to offer first."""
        return tuple(dict.fromkeys(e.key.algorithm for e in self.entries))


def parse_line(line: str, line_number: int = 0) -> Entry | None:
    """An Entry for a usable line; None for comments, blank lines and anything malformed."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    parts = stripped.split(None, 1)
    if len(parts) != 2 or parts[0].startswith("@"):
        return None
    if parts[0].startswith("|") and (not parts[0].startswith(HASH_MAGIC) or "," in parts[0]):
        return None  # another hash format, or a list around a hashed name: not ours
    patterns = tuple(p for p in parts[0].split(",") if p)
    if not patterns:
        return None
    try:
        key, comment = PublicKey.parse_line(parts[1])
    except InvalidInput:
        return None
    return Entry(patterns, key, comment, line_number)


def format_line(pattern: str, key: PublicKey, comment: str = "") -> str:
    return f"{pattern} {key.openssh_line(comment)}"


class KnownHosts:
    """An in-memory view of one known_hosts file; writes go straight back to disk."""

    def __init__(self, path: str | os.PathLike[str], lines: list[str] | None = None) -> None:
        self.path = Path(path)
        self._lines: list[str] = list(lines or [])
        self._entries = self._parse(self._lines)

    @staticmethod
    def _parse(lines: list[str]) -> list[Entry]:
        entries = []
        for number, line in enumerate(lines, start=1):
            entry = parse_line(line, number)
            if entry is not None:
                entries.append(entry)
        return entries

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnownHosts:
        """A missing file is an empty one: every host is unknown until first contact."""
        return cls(path, _read_lines(Path(path)))

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(self._lines)

    def lookup(
        self,
        host: str,
        port: int,
        key: PublicKey | None = None,
        *,
        default_port: int = _DEFAULT_PORT,
    ) -> LookupResult:
        """What the file says about ``host:port``, and about ``key`` if one is given.

        Without a key the question is only "is this host known?": "match" with all of its
        entries in ``matching``, or "unknown".
        """
        names = _host_names(host, port, default_port)
        matching: list[Entry] = []
        conflicting: list[Entry] = []
        for entry in self._entries:
            if not entry.matches_host(names):
                continue
            if key is None or entry.key.matches(key):
                matching.append(entry)
            else:
                conflicting.append(entry)
        status: Status
        if matching:
            status = "match"
        elif conflicting:
            status = "mismatch"
        else:
            status = "unknown"
        return LookupResult(status, tuple(matching), tuple(conflicting))

    def check(
        self, host: str, port: int, key: PublicKey, *, default_port: int = _DEFAULT_PORT
    ) -> Status:
        return self.lookup(host, port, key, default_port=default_port).status

    def add(
        self,
        host: str,
        port: int,
        key: PublicKey,
        *,
        comment: str = "",
        default_port: int = _DEFAULT_PORT,
        hashed: bool = False,
    ) -> None:
        """Trust ``key`` for the host: append one line and rewrite the file atomically.
        Adding a key the file already trusts for this host changes nothing. ``hashed``
        writes the host name hashed (HashKnownHosts)."""
        pattern = host_pattern(host, port, default_port)
        line = format_line(hash_host(pattern) if hashed else pattern, key, comment)
        names = _host_names(host, port, default_port)
        self._rewrite(lambda lines: _with_key(lines, names, key, line))

    def remove(self, host: str, port: int, *, default_port: int = _DEFAULT_PORT) -> int:
        """Forget every key for the host (the fix after a legitimate key change); return the
        number of lines changed.

        Only this host's names are taken out of a multi-host line, so other hosts sharing it
        stay trusted. A line that names the host only through a wildcard cannot be narrowed
        and is dropped whole.
        """
        names = _host_names(host, port, default_port)
        changed = 0

        def edit(lines: list[str]) -> list[str]:
            nonlocal changed
            out, changed = _without_host(lines, names)
            return out

        self._rewrite(edit)
        return changed

    def replace(
        self,
        host: str,
        port: int,
        key: PublicKey,
        *,
        comment: str = "",
        default_port: int = _DEFAULT_PORT,
    ) -> None:
        """Remove the host's old keys and trust ``key`` instead, in one atomic write, so a
        crash cannot leave the host with no key (which would turn it back into a first
        contact)."""
        line = format_line(host_pattern(host, port, default_port), key, comment)
        names = _host_names(host, port, default_port)
        self._rewrite(lambda lines: [*_without_host(lines, names)[0], line])

    def hash_all(self) -> tuple[int, int]:
        """``qsh-keygen -H``: every plain host name becomes a hashed line of its own (same
        key and comment). Wildcard and negated patterns cannot be hashed and stay as they
        are. Returns (lines hashed, lines left with patterns that cannot be hashed)."""
        hashed = kept = 0

        def edit(lines: list[str]) -> list[str]:
            nonlocal hashed, kept
            out: list[str] = []
            for number, line in enumerate(lines, start=1):
                entry = parse_line(line, number)
                if entry is None or entry.patterns[0].startswith(HASH_MAGIC):
                    out.append(line)
                    continue
                if any(c in p for p in entry.patterns for c in "*?!"):
                    kept += 1
                    out.append(line)
                    continue
                hashed += 1
                out += [format_line(hash_host(p), entry.key, entry.comment)
                        for p in entry.patterns]
            return out

        self._rewrite(edit)
        return hashed, kept

    def _rewrite(self, edit: _Edit) -> None:
        # Re-read first: the user (or another qsh) may have changed the file since load().
        current = _read_lines(self.path)
        lines = edit(current)
        if lines != current:
            _ensure_directory(self.path.parent)
            text = "".join(line + "\n" for line in lines)
            atomic_write(self.path, text.encode("utf-8", "surrogateescape"), KNOWN_HOSTS_MODE)
        self._lines = lines
        self._entries = self._parse(lines)


def _with_key(lines: list[str], names: tuple[str, ...], key: PublicKey, line: str) -> list[str]:
    for number, existing in enumerate(lines, start=1):
        entry = parse_line(existing, number)
        if entry is not None and entry.matches_host(names) and entry.key.matches(key):
            return lines
    return [*lines, line]


def _without_host(lines: list[str], names: tuple[str, ...]) -> tuple[list[str], int]:
    lowered = {n.lower() for n in names}
    out: list[str] = []
    changed = 0
    for number, line in enumerate(lines, start=1):
        entry = parse_line(line, number)
        if entry is None or not entry.matches_host(names):
            out.append(line)
            continue
        changed += 1
        rest = tuple(p for p in entry.patterns if p.lower() not in lowered)
        if any(not p.startswith("!") for p in rest) and not patterns_match(rest, names):
            out.append(format_line(",".join(rest), entry.key, entry.comment))
    return out, changed


def _read_lines(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KNOWN_HOSTS_FILE + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_KNOWN_HOSTS_FILE:
        raise KeyFileError(f"{path}: file too large")
    # surrogateescape: a stray non-UTF-8 byte in someone's comment survives a rewrite.
    return data.decode("utf-8", "surrogateescape").splitlines()


def _ensure_directory(directory: Path) -> None:
    """Create ``~/.qsh`` private (0700) on first use, as ssh does for ``~/.ssh``."""
    if directory.is_dir():
        return
    try:
        os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
        os.chmod(directory, DIRECTORY_MODE)
    except OSError as exc:
        raise KeyFileError(f"cannot create {directory}: {exc.strerror}") from exc
