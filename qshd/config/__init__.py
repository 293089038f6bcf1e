"""``qshd_config``: OpenSSH-style ``Keyword value`` lines; the first value of a keyword wins.

Only what the daemon implements today is accepted: an unknown keyword or a bad value is an
error with its line number, so a typo never silently weakens a configuration (sshd ignores
some of these; we would rather refuse to start than run with a policy nobody meant).

One job a module, lowest first: :mod:`.grammar` (a line into keyword and values, Include),
:mod:`.defaults`, :mod:`.values` (each keyword's value checked), :mod:`.match` (Match
blocks), :mod:`.keywords` (one setting applied), :mod:`.settings` (:class:`ServerConfig`),
:mod:`.loader` (a file and ``-o`` options into a ServerConfig), :mod:`.printing`
(``qshd -T``). The names below are the package's interface; import them from here.
"""

from __future__ import annotations

from .defaults import (
    DEFAULT_AUTHORIZED_KEYS,
    DEFAULT_LOGIN_GRACE,
    DEFAULT_MAX_AUTH_TRIES,
    DEFAULT_PORT,
    PER_SOURCE_UNLIMITED,
    PERMIT_ROOT_VALUES,
    SFTP_SERVERS,
    default_dir,
    default_subsystems,
)
from .grammar import (
    INCLUDE_BEGIN,
    INCLUDE_END,
    MAX_INCLUDE_DEPTH,
    MULTI_VALUED,
    REPEATABLE,
    ConfigError,
    raw_rest,
    read_file,
    split_line,
)
from .loader import load, parse, parse_lines
from .match import MATCH_CRITERIA, MATCH_KEYWORDS, ConnectionSpec, MatchBlock, connection_spec
from .printing import dump
from .settings import ServerConfig
from .values import expand_tokens

__all__ = [
    "DEFAULT_AUTHORIZED_KEYS",
    "DEFAULT_LOGIN_GRACE",
    "DEFAULT_MAX_AUTH_TRIES",
    "DEFAULT_PORT",
    "INCLUDE_BEGIN",
    "INCLUDE_END",
    "MATCH_CRITERIA",
    "MATCH_KEYWORDS",
    "MAX_INCLUDE_DEPTH",
    "MULTI_VALUED",
    "PERMIT_ROOT_VALUES",
    "PER_SOURCE_UNLIMITED",
    "REPEATABLE",
    "SFTP_SERVERS",
    "ConfigError",
    "ConnectionSpec",
    "MatchBlock",
    "ServerConfig",
    "connection_spec",
    "default_dir",
    "default_subsystems",
    "dump",
    "expand_tokens",
    "load",
    "parse",
    "parse_lines",
    "raw_rest",
    "read_file",
    "split_line",
]
