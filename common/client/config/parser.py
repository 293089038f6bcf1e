"""The file's grammar, as OpenSSH's: a line into its keyword and words (quotes,
backslashes, ``#`` comments, ``Keyword=value``), ``Host``/``Match`` lines opening blocks,
``Include``; the file read safely; ``-o`` options read as a file's lines are. Each line's
value is checked here (:data:`common.client.config.keywords._KEYWORDS`), whichever host its
block is for."""

from __future__ import annotations

import os
import re
import stat

from common.client.config.keywords import _KEYWORDS, _Keyword
from common.client.config.match import _Condition, _parse_match
from common.client.config.settings import ConfigError, _home
from common.value_record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from pathlib import Path

    from common.client.config.match import _Context


# --- Lexing -----------------------------------------------------------------------------

_BACKSLASH_ESCAPABLE = "\\\"'"


def _split_args(text: str, origin: str) -> list[str]:
    """Split like OpenSSH's argv_split: "..." and '...' quote, backslash escapes quotes,
    backslash and (unquoted) a space, and ``#`` at the start of a word ends the line. So
    ``Port 22 # note`` has a comment while ``IdentityFile ~/k#1`` keeps its ``#``."""
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        word: list[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n and (
                text[i + 1] in _BACKSLASH_ESCAPABLE or (not quote and text[i + 1] == " ")
            ):
                word.append(text[i + 1])
                i += 2
                continue
            if not quote and c in " \t":
                break
            if not quote and c in "\"'":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                word.append(c)
            i += 1
        if quote:
            raise ConfigError(f"{origin}: unterminated quote")
        args.append("".join(word))
    return args


def _split_keyword(line: str) -> tuple[str, str] | None:
    """``Keyword value``, ``Keyword=value`` or ``Keyword = value``: the keyword ends at
    whitespace or ``=``, and one ``=`` may separate it from the value (ssh's strdelim)."""
    line = line.strip(" \t\r\n\f\v")
    if not line or line.startswith("#"):
        return None
    match = re.match(r"([^\s=]*)\s*=?\s*", line)
    assert match is not None  # the pattern matches every string
    return match.group(1), line[match.end():]


# --- Parsing ----------------------------------------------------------------------------


class _Setting(Record):
    __slots__ = ("keyword", "value", "text", "origin")  # noqa: RUF023 (field order)
    keyword: _Keyword
    value: object
    #: The argument as written, unquoted (what parse_option reports).
    text: str
    #: "file:line" or "-o ...", for errors found only when the host is known.
    origin: str

    def __init__(self, keyword: _Keyword, value: object, text: str, origin: str) -> None:
        object.__setattr__(self, "keyword", keyword)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "origin", origin)


#: Include files within Include files, at most (ssh's limit too).
INCLUDE_DEPTH = 16


class _Block:
    __slots__ = ("conditions", "settings")

    def __init__(self, conditions: tuple[_Condition, ...] = ()) -> None:
        #: Every condition must hold (an Include inside a Host block adds the block's);
        #: none for the options before the first Host or Match line.
        self.conditions = conditions
        self.settings: list[_Setting] = []

    def applies(self, context: _Context) -> bool:
        return all(context.holds(condition) for condition in self.conditions)


def _parse_setting(keyword: str, rest: str, origin: str) -> _Setting:
    spec = _KEYWORDS.get(keyword.lower())
    if spec is None:
        raise ConfigError(f"{origin}: unknown keyword {keyword}")
    args = [rest.strip()] if spec.raw and rest.strip() else _split_args(rest, origin)
    if not args:
        raise ConfigError(f"{origin}: missing value for {spec.name}")
    try:
        value = spec.parse(args)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return _Setting(spec, value, " ".join(args), origin)


def _include(rest: str, origin: str, conditions: tuple[_Condition, ...], depth: int
             ) -> list[_Block]:
    """The blocks of the files an ``Include`` names (globs, sorted; relative names are in
    ~/.qsh), each under the conditions of the block the line is in."""
    import glob  # only an Include line needs it

    if depth >= INCLUDE_DEPTH:
        raise ConfigError(f"{origin}: Include nested too deeply")
    names = _split_args(rest, origin)
    if not names:
        raise ConfigError(f"{origin}: missing value for Include")
    blocks: list[_Block] = []
    for name in names:
        if name.startswith("~"):
            name = _home() + name[1:] if name == "~" or name.startswith("~/") \
                else os.path.expanduser(name)
        pattern = name if os.path.isabs(name) else os.path.join(_home(), ".qsh", name)
        for path in sorted(glob.glob(pattern)):
            text = _read(path, explicit=False)
            if text is not None:
                blocks += _parse_file(text, path, conditions, depth + 1)
    return blocks


def _parse_file(text: str, filename: str, conditions: tuple[_Condition, ...] = (),
                depth: int = 0) -> list[_Block]:
    blocks = [_Block(conditions)]
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        origin = f"{filename}:{number}"
        split = _split_keyword(line)
        if split is None:
            continue
        keyword, rest = split
        if not keyword:
            raise ConfigError(f"{origin}: missing keyword before '='")
        lowered = keyword.lower()
        if lowered == "host":
            patterns = _split_args(rest, origin)
            if not patterns:
                raise ConfigError(f"{origin}: Host needs at least one pattern")
            if any(p in ("", "!") for p in patterns):
                raise ConfigError(f"{origin}: empty Host pattern")
            blocks.append(_Block((*conditions, _Condition(patterns=tuple(patterns)))))
        elif lowered == "match":
            blocks.append(_Block((*conditions,
                                  _parse_match(_split_args(rest, origin), origin))))
        elif lowered == "include":
            current = blocks[-1].conditions
            blocks += _include(rest, origin, current, depth)
            blocks.append(_Block(current))  # the rest of the block the Include was in
        else:
            blocks[-1].settings.append(_parse_setting(keyword, rest, origin))
    return blocks


def _parse_option(text: str) -> _Setting:
    origin = f"-o {text!r}"
    split = _split_keyword(text)
    if split is None or not split[0]:
        raise ConfigError(f"{origin}: expected Keyword=value")
    keyword, rest = split
    if keyword.lower() in ("host", "match", "include"):
        raise ConfigError(f"{origin}: {keyword} is not allowed as a command-line option")
    return _parse_setting(keyword, rest, origin)


def parse_option(text: str) -> tuple[str, str]:
    """Check one ``-o`` option as the config file would, so a typo fails before connecting.

    Returns ``(Keyword, value)``: the keyword in its canonical spelling, the value unquoted.
    Host cannot be given with ``-o``, as in ssh.
    """
    setting = _parse_option(text)
    return setting.keyword.name, setting.text


def _quote(arg: str) -> str:
    """Quote ``arg`` so that :func:`_split_args` gives it back unchanged."""
    return '"' + re.sub(r'(["\\\\])', r"\\\1", arg) + '"'


def _read(path: str | Path, *, explicit: bool) -> str | None:
    """The file's text; None when the default file is absent. Like ssh, the default file
    is refused when others could have written it: it decides which host we connect to and
    which key files we use."""
    try:
        # O_NONBLOCK: a FIFO put there must not hang qsh in open(); it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        reason = "is a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ConfigError(f"{path}: {reason}")
    os.set_blocking(fd, True)
    with open(fd, "rb") as f:
        if not explicit:
            st = os.fstat(f.fileno())
            if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o022:
                raise ConfigError(f"{path}: bad owner or permissions (chmod go-w)")
        try:
            data = f.read()
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
