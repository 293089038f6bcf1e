"""``Host`` and ``Match`` conditions: a ``Match`` line's criteria, and how a block's
conditions are judged when the block is reached (:class:`_Context`), so that ``Match host``
sees the HostName set before it, as in ssh."""

from __future__ import annotations

import re

from common.accounts.patterns import patterns_match
from common.client.config.settings import ConfigError, _home, _local_user
from common.value_record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from collections.abc import Callable


#: Match criteria that take an argument, and those that stand alone.
_MATCH_WITH_ARGUMENT = frozenset({"host", "originalhost", "user", "localuser", "exec"})
_MATCH_ALONE = frozenset({"all", "canonical", "final"})


#: Seconds a ``Match exec`` command may run before the configuration is refused.
MATCH_EXEC_TIMEOUT = 30.0


class _Criterion(Record):
    __slots__ = ("name", "negate", "argument", "origin")  # noqa: RUF023 (field order)
    name: str
    negate: bool
    argument: str
    origin: str

    def __init__(self, name: str, negate: bool, argument: str, origin: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "negate", negate)
        object.__setattr__(self, "argument", argument)
        object.__setattr__(self, "origin", origin)


class _Condition(Record):
    """One ``Host`` line's patterns, or one ``Match`` line's criteria (all must hold)."""

    __slots__ = ("patterns", "criteria")  # noqa: RUF023 (field order)
    patterns: tuple[str, ...]
    criteria: tuple[_Criterion, ...]

    def __init__(self, patterns: tuple[str, ...] = (),
                 criteria: tuple[_Criterion, ...] = ()) -> None:
        object.__setattr__(self, "patterns", patterns)
        object.__setattr__(self, "criteria", criteria)


class _Context:
    """What a condition is judged against when its block is reached: ``Match host`` sees
    the HostName and ``Match user`` the User set by the lines before it, as in ssh, so the
    resolver hands in callables that read its progress so far."""

    def __init__(self, original: str, hostname: Callable[[], str], user: Callable[[], str],
                 port: Callable[[], int]) -> None:
        self.original = original
        self.hostname = hostname
        self.user = user
        self.port = port

    def holds(self, condition: _Condition) -> bool:
        if condition.patterns:
            return patterns_match(condition.patterns, (self.original,))
        return all(self._criterion(c) != c.negate for c in condition.criteria)

    def _criterion(self, c: _Criterion) -> bool:
        if c.name in ("all", "final"):
            return True  # one pass, which is also the final one
        if c.name == "canonical":
            return False  # qsh does not canonicalise host names
        patterns = tuple(c.argument.split(","))
        if c.name == "host":
            return patterns_match(patterns, (self.hostname(),))
        if c.name == "originalhost":
            return patterns_match(patterns, (self.original,))
        if c.name == "user":
            return patterns_match(patterns, (self.user(),))
        if c.name == "localuser":
            return patterns_match(patterns, (_local_user(),))
        return self._exec(c)

    def tokens(self) -> dict[str, str]:
        """ssh's %-tokens as they stand: for Match exec while reading, for the paths after."""
        return {"%": "%", "d": _home(), "h": self.hostname(), "n": self.original,
                "p": str(self.port()), "r": self.user(), "u": _local_user()}

    def _exec(self, c: _Criterion) -> bool:
        import subprocess  # only a Match exec line needs it

        tokens = self.tokens()
        command = re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), c.argument)
        try:
            # stdout to stderr: qsh's own stdout may be a protocol stream (git, rsync).
            done = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                  stdout=2, timeout=MATCH_EXEC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{c.origin}: Match exec did not finish in "
                              f"{MATCH_EXEC_TIMEOUT:g} s") from None
        except OSError as exc:
            raise ConfigError(f"{c.origin}: Match exec: {exc.strerror}") from None
        return done.returncode == 0


def _parse_match(words: list[str], origin: str) -> _Condition:
    """A ``Match`` line's words (as the parser split them) into its criteria."""
    if not words:
        raise ConfigError(f"{origin}: Match needs a criterion")
    criteria: list[_Criterion] = []
    i = 0
    while i < len(words):
        word = words[i]
        negate = word.startswith("!")
        name = word.removeprefix("!").lower()
        if name in _MATCH_ALONE:
            if name == "all" and any(w.removeprefix("!").lower() not in _MATCH_ALONE
                                     for w in words):
                raise ConfigError(f"{origin}: Match all cannot be combined with other criteria")
            criteria.append(_Criterion(name, negate, "", origin))
            i += 1
        elif name in _MATCH_WITH_ARGUMENT:
            if i + 1 >= len(words):
                raise ConfigError(f"{origin}: Match {name} needs an argument")
            criteria.append(_Criterion(name, negate, words[i + 1], origin))
            i += 2
        else:
            raise ConfigError(f"{origin}: unknown Match criterion {name}")
    return _Condition(criteria=tuple(criteria))
