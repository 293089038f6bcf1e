"""The file grammar: a line into its keyword and values, ``Include`` expanded.

The grammar is sshd_config's: ``Keyword value``, ``Keyword=value`` or ``Keyword = value``;
keywords in any case; ``#`` starts a comment at the start of a line or at the start of a
word (``Port 22 # ssh's`` is a comment after the value); ``"double quotes"`` keep spaces in
one value. Keywords that take several values (AuthorizedKeysFile, PerSourcePenalties,
PermitOpen, PermitListen) take them separated by spaces, comma lists forgive a space after a
comma; any other keyword takes exactly one value, and a second is an error rather than
silently part of the first.
"""

from __future__ import annotations

import glob
from pathlib import Path


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the file and line."""


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
