"""Reading a configuration: the file (Includes expanded) and ``-o`` options, line by line
into a :class:`~qshd.config.ServerConfig` (first value wins; Match blocks kept for later)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .defaults import default_dir
from .grammar import (
    INCLUDE_BEGIN,
    INCLUDE_END,
    MULTI_VALUED,
    REPEATABLE,
    ConfigError,
    raw_rest,
    read_file,
    split_line,
)
from .keywords import _apply, _State
from .match import MATCH_KEYWORDS, MatchBlock, _match_criteria
from .settings import ServerConfig


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
