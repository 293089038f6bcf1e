"""The client configuration, ``~/.qsh/config``, read the way ssh reads ``~/.ssh/config``.

Users bring their ssh_config habits, so the grammar and the precedence are OpenSSH's
(ssh_config(5)), not an invention of ours::

    # options before the first Host apply to every host
    IdentityFile ~/.qsh/id_%h
    Host db "build box" !bastion      # patterns: * ? and !negation
        HostName %h.internal
        Port=2200
    Host *
        User alice

* For every option the **first** value obtained wins: command-line ``-o`` options first, then
  each matching block in file order. General defaults therefore belong at the end, under
  ``Host *``. IdentityFile is the exception: every value is collected, in that order.
* ``-l``/``user@`` and ``-p`` beat everything (:func:`resolve`'s ``user``/``port``).
* Every value is checked even in blocks that do not match the host being resolved, as ssh
  does, so a typo is reported on the first run and not only when one host is used.
* Errors are one line, ``file:line: message``, raised as :class:`ConfigError`.

Decisions that differ from ssh, and why:

* Host patterns compare case-insensitively (ssh compares the name as typed): host names are
  case-insensitive, and a block that silently stops applying because of ``Web1`` vs ``web1``
  is a security surprise. This also keeps one pattern implementation for known_hosts and
  the config (:func:`common.known_hosts.patterns_match`).
* Every other ssh_config keyword is understood (the tools that run ssh -- Ansible, git,
  rsync -- pass them): the ones that mean something for qsh are implemented; those that
  cannot apply (GSSAPI, X11, agents, OpenSSH algorithm names, ...) are accepted and ignored,
  each with the reason as a ``-v`` line (:attr:`ClientConfig.notes`). Only a word that is no
  ssh keyword at all is an error. ``Match`` (host, originalhost, user, localuser, exec, all,
  final; canonical never holds, as qsh does not canonicalise) and ``Include`` as in ssh,
  judged lazily so that ``Match host`` sees the HostName set before it.
  ``ProxyCommand`` and ``ProxyJump`` (:mod:`common.client.proxy`)
  share one slot, so whichever comes first wins, as in ssh.
* KEMs/Ciphers/Signatures are checked for syntax only. Which algorithms exist depends on the
  machine (liboqs is optional), so availability is judged when the offer is built.
"""

from __future__ import annotations

import os
import re
import stat

from common.accounts.patterns import patterns_match
from common.value_record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from common.channels.tunnel import ForwardSpec

DEFAULT_PORT = 2022
#: ssh's LogLevel names, quietest first, so callers can compare by index and map ``-v``.
#: DEBUG is ssh's alias of DEBUG1 and is reported as DEBUG1.
LOG_LEVELS: tuple[str, ...] = (
    "QUIET", "FATAL", "ERROR", "INFO", "VERBOSE", "DEBUG1", "DEBUG2", "DEBUG3",
)
#: Canonical values; ssh's aliases (true, false, off) are accepted and mapped onto these.
HOST_KEY_CHECKING: tuple[str, ...] = ("ask", "accept-new", "yes", "no")
REQUEST_TTY: tuple[str, ...] = ("auto", "yes", "no", "force")


class ConfigError(Exception):
    """A configuration the user must fix: one line, starting with where it came from."""


def _home() -> str:
    """``~`` (Path.home()'s answer, as a string: pathlib waits until a path is used)."""
    home = os.path.expanduser("~")
    if home.startswith("~"):
        raise ConfigError("cannot determine the home directory")
    return _as_path(home)


def _as_path(text: str) -> str:
    """``str(Path(text))`` without loading pathlib: repeated slashes, ``.`` parts and a
    trailing slash dropped (a leading ``//`` is kept, as POSIX allows it a meaning)."""
    lead = "//" if text.startswith("//") and not text.startswith("///") else (
        "/" if text.startswith("/") else "")
    return lead + "/".join(p for p in text.split("/") if p and p != ".") or "."


def _local_user() -> str:
    """getpass.getuser()'s answer (the login variables, then the password database),
    without loading getpass and, through it, termios and warnings."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if user := os.environ.get(name):
            return user
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise ConfigError("cannot determine the local user name") from None


def default_config_path() -> str:
    return os.path.join(_home(), ".qsh", "config")


def default_known_hosts() -> Path:
    from pathlib import Path

    return Path(_home(), ".qsh", "known_hosts")


def default_identity_files() -> list[Path]:
    from pathlib import Path

    qsh_dir = Path(_home(), ".qsh")
    return [qsh_dir / "id_mldsa65", qsh_dir / "id_mldsa87"]


class ClientConfig:
    """Everything qsh needs to reach one host, after all sources are merged.

    ``host`` is the name as typed (what Host blocks matched); ``hostname`` is where to
    connect (HostName, or ``host``). ``None`` algorithm lists mean "the defaults this
    machine supports", which only the offer builder can know.

    Built with keywords, one per field below; compared, shown and copied
    (:meth:`replace`) field by field, as a dataclass would be. Not a dataclass: building
    one at import loads ``dataclasses`` and ``inspect`` (~8 ms), and a run over a shared
    connection (qsh/entry.py) costs little more than that in all (issue 18).
    """

    host: str
    hostname: str = ""
    port: int = DEFAULT_PORT
    user: str
    # identity_files: list[Path] (a property, below)
    kems: tuple[str, ...] | None = None
    ciphers: tuple[str, ...] | None = None
    signatures: tuple[str, ...] | None = None
    chaff: bool = False
    #: ObscureKeystrokeTiming: the keystroke clock in milliseconds; 0 is "no".
    obscure_keystroke_timing: int = 20
    strict_host_key_checking: str = "ask"
    # known_hosts: Path (a property, below)
    connect_timeout: float = 30.0
    #: Seconds between keepalive probes; 0 disables them.
    server_alive_interval: float = 0.0
    request_tty: str = "auto"
    log_level: str = "INFO"
    #: Tunnels (LocalForward, RemoteForward, DynamicForward; -T/-L, -R, -D), in order.
    forwards: list[ForwardSpec]
    #: None: yes when a tunnel was asked for on the command line, no otherwise.
    exit_on_forward_failure: bool | None = None
    #: AddressFamily (-4, -6): "any", "inet" or "inet6".
    address_family: str = "any"
    #: Seconds qsh waits, after forwarding SIGINT/TERM/HUP, for the remote command to end.
    signal_timeout: float = 2.0
    #: HashKnownHosts: new known_hosts lines get a hashed host name.
    hash_known_hosts: bool = False
    #: BatchMode: never ask anything (no passwords, passphrases or host key questions).
    batch_mode: bool = False
    password_authentication: bool = True
    pubkey_authentication: bool = True
    #: PreferredAuthentications: the methods qsh may use, None: all.
    preferred_authentications: tuple[str, ...] | None = None
    number_of_password_prompts: int = 3
    #: ServerAliveCountMax: keep-alive intervals without an answer before giving up.
    server_alive_count_max: int = 3
    #: ConnectionAttempts: TCP connects tried, one second apart, before giving up.
    connection_attempts: int = 1
    #: SendEnv: patterns of local variables to send (``-pattern`` removes).
    send_env: list[str]
    #: SetEnv: NAME=VALUE pairs sent with every session.
    set_env: list[tuple[str, str]]
    compression: bool = False
    #: RemoteCommand: run when the command line gives none.
    remote_command: str | None = None
    #: SessionType: "default", "none" (-N) or "subsystem" (-s).
    session_type: str = "default"
    #: StdinNull (-n): stdin from /dev/null.
    stdin_null: bool = False
    #: ForkAfterAuthentication (-f).
    fork_after_authentication: bool = False
    #: ClearAllForwardings: drop every tunnel of the config and the command line.
    clear_all_forwardings: bool = False
    #: EscapeChar (-e): "~" or "none".
    escape_char: str = "~"
    #: BindAddress (-b): the local address connections are made from.
    bind_address: str | None = None
    #: ProxyCommand: a shell command whose stdin/stdout carry the connection (%-tokens
    #: unexpanded); ProxyJump (-J): ``[user@]host[:port],...``. At most one is set.
    proxy_command: str | None = None
    proxy_jump: str | None = None
    #: HostKeyAlias: the name host keys are looked up and recorded under (no port), in
    #: place of HostName and port.
    host_key_alias: str | None = None
    #: -F as given (None: the default file), for the jump hosts' own qsh. Where the
    #: settings came from, not a setting: left out of comparisons.
    # config_file: Path | None (a property, below)
    #: Connection sharing (qsh.1 CONNECTION SHARING): yes, no, auto, ask or autoask.
    control_master: str = "no"
    #: The control socket, tokens expanded; None: no sharing (ControlPath none).
    control_path: str | None = None
    #: Seconds the master stays after its last client; 0: for ever; None: it does not.
    control_persist: float | None = None
    #: "-v" lines: the keywords accepted but without effect in qsh, and why.
    notes: list[str]

    def __init__(self, host: str, **values: Any) -> None:
        unknown = values.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"ClientConfig() got unexpected keyword arguments {sorted(unknown)}")
        #: The path fields as given (strings or Paths; None: the default), made Paths when
        #: first read.
        self._identity_files: list[Any] | None = None
        self._known_hosts: Any = None
        self._config_file: Any = None
        self.host = host
        for name, default in _DEFAULT_FACTORIES.items():
            if name not in values:
                setattr(self, name, default())
        for name, value in values.items():
            setattr(self, name, value)
        if not self.hostname:
            self.hostname = host

    # The path fields are made Paths when first read: a run that reads none (over a shared
    # connection) does not load pathlib (~3 ms with urllib.parse, which it imports).

    @property
    def identity_files(self) -> list[Path]:
        from pathlib import Path

        if self._identity_files is None:
            self._identity_files = default_identity_files()
        elif not all(isinstance(f, Path) for f in self._identity_files):
            self._identity_files = [Path(f) for f in self._identity_files]
        return self._identity_files

    @identity_files.setter
    def identity_files(self, value: Sequence[str | os.PathLike[str]]) -> None:
        self._identity_files = list(value)

    @property
    def known_hosts(self) -> Path:
        from pathlib import Path

        if not isinstance(self._known_hosts, Path):
            self._known_hosts = (default_known_hosts() if self._known_hosts is None
                                 else Path(self._known_hosts))
        return self._known_hosts

    @known_hosts.setter
    def known_hosts(self, value: str | os.PathLike[str]) -> None:
        self._known_hosts = value

    @property
    def config_file(self) -> Path | None:
        """-F as given (None: the default file), for the jump hosts' own qsh. Where the
        settings came from, not a setting: left out of comparisons."""
        from pathlib import Path

        if self._config_file is not None and not isinstance(self._config_file, Path):
            self._config_file = Path(self._config_file)
        return self._config_file

    @config_file.setter
    def config_file(self, value: str | os.PathLike[str] | None) -> None:
        self._config_file = value

    def _compared(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _FIELDS if name != "config_file")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, ClientConfig)
        return self._compared() == other._compared()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"ClientConfig({shown})"

    def replace(self, **changes: Any) -> ClientConfig:
        """A copy with ``changes`` applied (``dataclasses.replace``; lists are shared)."""
        return ClientConfig(**{**{name: getattr(self, name) for name in _FIELDS}, **changes})


#: The fields (for repr and comparisons): those declared, then the path properties.
#: config_file, where the settings came from and not a setting, is left out of comparisons.
_FIELDS: tuple[str, ...] = (*ClientConfig.__annotations__,
                            "identity_files", "known_hosts", "config_file")
_FIELD_SET = frozenset(_FIELDS)
#: The fields whose default is made anew for each config (mutable, or read from the system;
#: the paths' when first read).
_DEFAULT_FACTORIES: dict[str, Callable[[], object]] = {
    "user": _local_user, "forwards": list, "send_env": list, "set_env": list, "notes": list,
}


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


# --- Values -----------------------------------------------------------------------------

_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ALGORITHM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]*")
_ALGORITHM_PATTERN = re.compile(r"[A-Za-z0-9*?][A-Za-z0-9@._+*?-]*")
_PATH_TOKENS = "%dhnpru"
#: ControlPath's: the path tokens, and %C (a hash of %l%h%p%r), %i (uid), %l/%L (this host).
_CONTROL_TOKENS = _PATH_TOKENS + "CiLl"


def _one(keyword: str, args: list[str]) -> str:
    if len(args) != 1:
        raise ValueError(f"{keyword} takes one value, got {len(args)}")
    if not args[0]:
        raise ValueError(f"empty value for {keyword}")
    return args[0]


def _choice(keyword: str, arg: str, aliases: Mapping[str, str]) -> str:
    value = aliases.get(arg.lower())
    if value is None:
        names = ", ".join(dict.fromkeys(aliases.values()))
        raise ValueError(f"bad {keyword} value {arg!r} (one of {names})")
    return value


def _flag(keyword: str, arg: str) -> bool:
    return _choice(keyword, arg, {"yes": "yes", "no": "no", "true": "yes", "false": "no"}) == "yes"


def _obscure_timing(arg: str) -> int:
    """ObscureKeystrokeTiming as ssh_config has it: yes (20 ms), no, or interval:N (ms)."""
    lowered = arg.lower()
    if lowered in ("yes", "true"):
        return 20
    if lowered in ("no", "false"):
        return 0
    match = re.fullmatch(r"interval:([0-9]{1,4})", lowered)
    if match is None or not 5 <= int(match.group(1)) <= 1000:
        raise ValueError(f"bad ObscureKeystrokeTiming {arg!r} (yes, no or interval:5..1000)")
    return int(match.group(1))


def _seconds(keyword: str, arg: str) -> float:
    """ssh's time format ("90", "1m30s", "2h") plus plain decimals ("2.5"), which tests and
    impatient scripts want."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", arg):
        return float(arg)
    parts = re.findall(r"([0-9]+)([smhdwSMHDW]?)", arg)
    if not parts or "".join(n + u for n, u in parts) != arg:
        raise ValueError(f"bad {keyword} time {arg!r} (seconds, or like 1m30s)")
    return float(sum(int(n) * _TIME_UNITS[u.lower()] for n, u in parts))


def _port(arg: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", arg) or not 1 <= int(arg) <= 65535:
        raise ValueError(f"bad port {arg!r} (1-65535)")
    return int(arg)


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


def _algorithms(keyword: str, arg: str, kind: str) -> tuple[str, ...]:
    """A comma-separated preference list. As in ssh, a leading ``+`` appends to the
    defaults, ``^`` puts the names first, and ``-`` removes names (wildcards allowed)."""
    from common.crypto import suites  # only a file that names algorithms loads the registry

    defaults: tuple[str, ...] = getattr(suites, kind)
    modifier = arg[0] if arg[0] in "+-^" else ""
    names = arg[len(modifier):].split(",")
    syntax = _ALGORITHM_PATTERN if modifier == "-" else _ALGORITHM_NAME
    for name in names:
        if not syntax.fullmatch(name):
            raise ValueError(f"bad {keyword} list {arg!r}: {name!r} is not an algorithm name")
    if modifier == "+":
        names = [*defaults, *names]
    elif modifier == "^":
        names = [*names, *defaults]
    elif modifier == "-":
        names = [d for d in defaults if not patterns_match(tuple(names), (d,))]
        if not names:
            raise ValueError(f"{keyword} {arg!r} removes every algorithm")
    return tuple(dict.fromkeys(names))


def _log_level(arg: str) -> str:
    level = arg.upper()
    level = "DEBUG1" if level == "DEBUG" else level
    if level not in LOG_LEVELS:
        raise ValueError(f"bad LogLevel {arg!r} (one of {', '.join(LOG_LEVELS)}, DEBUG)")
    return level


def _positive(keyword: str, value: float) -> float:
    if value <= 0:
        raise ValueError(f"{keyword} must be more than 0 seconds")
    return value


class _Keyword(Record):
    __slots__ = ("name", "attr", "parse", "multiple", "raw")  # noqa: RUF023 (field order)
    name: str
    #: Field of ClientConfig this keyword sets.
    attr: str
    parse: Callable[[list[str]], object]
    #: Collect every value instead of keeping the first.
    multiple: bool
    #: The value is the rest of the line as written (ProxyCommand: a shell command, whose
    #: quotes are the shell's), handed to ``parse`` as one argument.
    raw: bool

    def __init__(self, name: str, attr: str, parse: Callable[[list[str]], object],
                 multiple: bool = False, raw: bool = False) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "attr", attr)
        object.__setattr__(self, "parse", parse)
        object.__setattr__(self, "multiple", multiple)
        object.__setattr__(self, "raw", raw)


def _forward(keyword: str, kind: str) -> Callable[[list[str]], object]:
    """ssh_config's forms: ``LocalForward [bind:]port host:hostport`` (two words; one word
    with colons is accepted too) and ``DynamicForward [bind:]port``."""
    def parse(args: list[str]) -> ForwardSpec:
        from common.channels.tunnel import parse_forward  # only a file with tunnels needs it

        if kind == "dynamic" or len(args) == 1:
            text = _one(keyword, args)
        elif len(args) == 2:
            text = f"{args[0]}:{args[1]}"
        else:
            raise ValueError(f"{keyword} takes [bind:]port host:hostport")
        return parse_forward(kind, text)
    return parse


def _single(keyword: str, convert: Callable[[str], object]) -> Callable[[list[str]], object]:
    return lambda args: convert(_one(keyword, args))


def _count(keyword: str, low: int, high: int) -> Callable[[list[str]], object]:
    def parse(args: list[str]) -> int:
        arg = _one(keyword, args)
        if not re.fullmatch(r"[0-9]{1,6}", arg) or not low <= int(arg) <= high:
            raise ValueError(f"bad {keyword} {arg!r} ({low}-{high})")
        return int(arg)
    return parse


#: PreferredAuthentications: ssh's method names qsh has. keyboard-interactive is how ssh
#: asks for a password on most servers, so it stands for qsh's password prompt.
AUTH_METHODS = {"publickey": "publickey", "password": "password",
                "keyboard-interactive": "password"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _preferred(args: list[str]) -> tuple[str, ...]:
    names = ",".join(args).split(",")
    if any(not re.fullmatch(r"[a-z0-9@.-]+", n) for n in names):
        raise ValueError(f"bad PreferredAuthentications list {','.join(args)!r}")
    return tuple(dict.fromkeys(AUTH_METHODS[n] for n in names if n in AUTH_METHODS))


def _send_env(args: list[str]) -> list[str]:
    for pattern in args:
        if not re.fullmatch(r"-?[A-Za-z0-9_*?]+", pattern):
            raise ValueError(f"bad SendEnv pattern {pattern!r}")
    return args


def _set_env(args: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ValueError(f"bad SetEnv {arg!r} (NAME=VALUE)")
        pairs.append((name, value))
    return pairs


def _escape_char(arg: str) -> str:
    if arg not in ("~", "none"):
        raise ValueError(f"EscapeChar {arg!r}: qsh's escape character is ~ (or none)")
    return arg


def _host_key_alias(arg: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,255}", arg):
        raise ValueError(f"bad HostKeyAlias {arg!r} (a host name)")
    return arg


def _proxy_command(args: list[str]) -> tuple[str, str | None]:
    command = args[0]
    if command.lower() == "none":
        return "command", None
    return "command", _check_tokens("ProxyCommand", command, "%hnpr")


def _proxy_jump(args: list[str]) -> tuple[str, str | None]:
    text = _one("ProxyJump", args)
    if text.lower() == "none":
        return "jump", None
    from common.client.proxy import parse_jump  # only files that use it pay for it

    return "jump", ",".join(str(hop) for hop in parse_jump(text))


def _control_persist(arg: str) -> float | None:
    """ControlPersist: yes (0, for ever), no (None), or a time."""
    lowered = arg.lower()
    if lowered in ("yes", "true"):
        return 0.0
    if lowered in ("no", "false"):
        return None
    return _seconds("ControlPersist", arg)


_KEYWORDS: dict[str, _Keyword] = {
    k.name.lower(): k
    for k in (
        _Keyword("HostName", "hostname",
                 _single("HostName", lambda a: _check_tokens("HostName", a, "%h"))),
        _Keyword("Port", "port", _single("Port", _port)),
        _Keyword("User", "user", _single("User", str)),
        _Keyword("IdentityFile", "identity_files",
                 _single("IdentityFile", lambda a: _check_tokens("IdentityFile", a, _PATH_TOKENS)),
                 multiple=True),
        _Keyword("KEMs", "kems",
                 _single("KEMs", lambda a: _algorithms("KEMs", a, "DEFAULT_KEMS"))),
        _Keyword("Ciphers", "ciphers",
                 _single("Ciphers", lambda a: _algorithms("Ciphers", a, "DEFAULT_AEADS"))),
        _Keyword("Signatures", "signatures",
                 _single("Signatures",
                         lambda a: _algorithms("Signatures", a, "DEFAULT_SIGNATURES"))),
        _Keyword("Chaff", "chaff", _single("Chaff", lambda a: _flag("Chaff", a))),
        _Keyword("ObscureKeystrokeTiming", "obscure_keystroke_timing",
                 _single("ObscureKeystrokeTiming", _obscure_timing)),
        _Keyword("StrictHostKeyChecking", "strict_host_key_checking",
                 _single("StrictHostKeyChecking", lambda a: _choice(
                     "StrictHostKeyChecking", a,
                     {**{m: m for m in HOST_KEY_CHECKING},
                      "true": "yes", "false": "no", "off": "no"}))),
        _Keyword("UserKnownHostsFile", "known_hosts",
                 _single("UserKnownHostsFile",
                         lambda a: _check_tokens("UserKnownHostsFile", a, _PATH_TOKENS))),
        _Keyword("ConnectTimeout", "connect_timeout",
                 _single("ConnectTimeout", lambda a: _positive(
                     "ConnectTimeout", _seconds("ConnectTimeout", a)))),
        _Keyword("ServerAliveInterval", "server_alive_interval",
                 _single("ServerAliveInterval", lambda a: _seconds("ServerAliveInterval", a))),
        _Keyword("RequestTTY", "request_tty",
                 _single("RequestTTY", lambda a: _choice(
                     "RequestTTY", a,
                     {**{m: m for m in REQUEST_TTY}, "true": "yes", "false": "no"}))),
        _Keyword("LogLevel", "log_level", _single("LogLevel", _log_level)),
        _Keyword("LocalForward", "forwards", _forward("LocalForward", "local"), multiple=True),
        _Keyword("RemoteForward", "forwards", _forward("RemoteForward", "remote"),
                 multiple=True),
        _Keyword("DynamicForward", "forwards", _forward("DynamicForward", "dynamic"),
                 multiple=True),
        _Keyword("AddressFamily", "address_family",
                 _single("AddressFamily", lambda a: _choice(
                     "AddressFamily", a, {"any": "any", "inet": "inet", "inet6": "inet6"}))),
        _Keyword("ExitOnForwardFailure", "exit_on_forward_failure",
                 _single("ExitOnForwardFailure", lambda a: _flag("ExitOnForwardFailure", a))),
        _Keyword("HashKnownHosts", "hash_known_hosts",
                 _single("HashKnownHosts", lambda a: _flag("HashKnownHosts", a))),
        _Keyword("SignalTimeout", "signal_timeout",
                 _single("SignalTimeout", lambda a: _positive(
                     "SignalTimeout", _seconds("SignalTimeout", a)))),
        _Keyword("BatchMode", "batch_mode", _single("BatchMode", lambda a: _flag("BatchMode", a))),
        _Keyword("PasswordAuthentication", "password_authentication",
                 _single("PasswordAuthentication",
                         lambda a: _flag("PasswordAuthentication", a))),
        _Keyword("PubkeyAuthentication", "pubkey_authentication",
                 _single("PubkeyAuthentication", lambda a: _choice(
                     "PubkeyAuthentication", a, {"yes": "yes", "no": "no", "true": "yes",
                                                 "false": "no", "unbound": "yes",
                                                 "host-bound": "yes"}) == "yes")),
        _Keyword("PreferredAuthentications", "preferred_authentications", _preferred),
        _Keyword("NumberOfPasswordPrompts", "number_of_password_prompts",
                 _count("NumberOfPasswordPrompts", 0, 100)),
        _Keyword("ServerAliveCountMax", "server_alive_count_max",
                 _count("ServerAliveCountMax", 1, 1000)),
        _Keyword("ConnectionAttempts", "connection_attempts",
                 _count("ConnectionAttempts", 1, 100)),
        _Keyword("SendEnv", "send_env", _send_env, multiple=True),
        _Keyword("SetEnv", "set_env", _set_env),
        _Keyword("Compression", "compression",
                 _single("Compression", lambda a: _flag("Compression", a))),
        _Keyword("RemoteCommand", "remote_command",  # sftp and scp pass "none"
                 lambda a: None if " ".join(a).lower() == "none" else " ".join(a)),
        _Keyword("SessionType", "session_type",
                 _single("SessionType", lambda a: _choice(
                     "SessionType", a,
                     {"default": "default", "none": "none", "subsystem": "subsystem"}))),
        _Keyword("StdinNull", "stdin_null", _single("StdinNull", lambda a: _flag("StdinNull", a))),
        _Keyword("ForkAfterAuthentication", "fork_after_authentication",
                 _single("ForkAfterAuthentication",
                         lambda a: _flag("ForkAfterAuthentication", a))),
        _Keyword("ClearAllForwardings", "clear_all_forwardings",
                 _single("ClearAllForwardings", lambda a: _flag("ClearAllForwardings", a))),
        _Keyword("BindAddress", "bind_address", _single("BindAddress", str)),
        _Keyword("EscapeChar", "escape_char", _single("EscapeChar", _escape_char)),
        _Keyword("ProxyCommand", "proxy", _proxy_command, raw=True),
        _Keyword("ProxyJump", "proxy", _proxy_jump),
        _Keyword("HostKeyAlias", "host_key_alias",
                 _single("HostKeyAlias", _host_key_alias)),
        _Keyword("ControlMaster", "control_master",
                 _single("ControlMaster", lambda a: _choice(
                     "ControlMaster", a,
                     {"yes": "yes", "no": "no", "auto": "auto", "ask": "ask",
                      "autoask": "autoask", "true": "yes", "false": "no"}))),
        _Keyword("ControlPath", "control_path",
                 _single("ControlPath", lambda a: _check_tokens("ControlPath", a,
                                                                _CONTROL_TOKENS))),
        _Keyword("ControlPersist", "control_persist",
                 _single("ControlPersist", _control_persist)),
    )
}

#: ssh_config keywords that cannot apply to qsh, with why; accepted with any value and
#: reported under -v. (Tools pass them: Ansible's defaults alone bring four.)
IGNORED_KEYWORDS: dict[str, str] = {
    **dict.fromkeys(("GSSAPIAuthentication", "GSSAPIDelegateCredentials",
                     "GSSAPIKeyExchange", "GSSAPITrustDns", "GSSAPIClientIdentity",
                     "GSSAPIServerIdentity", "GSSAPIRenewalForcesRekey"),
                    "qsh has no GSSAPI (Kerberos) login"),
    **dict.fromkeys(("HostbasedAuthentication", "HostbasedAcceptedAlgorithms",
                     "HostbasedKeyTypes", "EnableSSHKeysign"),
                    "qsh has no host-based login"),
    **dict.fromkeys(("KbdInteractiveAuthentication", "KbdInteractiveDevices",
                     "ChallengeResponseAuthentication"),
                    "qsh asks for passwords itself (no keyboard-interactive devices)"),
    **dict.fromkeys(("ForwardX11", "ForwardX11Timeout", "ForwardX11Trusted",
                     "XAuthLocation"), "qsh does not forward X11"),
    **dict.fromkeys(("ForwardAgent", "AddKeysToAgent", "IdentityAgent", "IdentitiesOnly"),
                    "qsh uses no agent: only identity files are tried"),
    **dict.fromkeys(("KexAlgorithms", "HostKeyAlgorithms", "MACs",
                     "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes",
                     "CASignatureAlgorithms", "RequiredRSASize", "FingerprintHash"),
                    "OpenSSH algorithm names: qsh's are KEMs, Signatures and Ciphers"),
    **dict.fromkeys(("UpdateHostKeys", "VerifyHostKeyDNS", "CheckHostIP",
                     "GlobalKnownHostsFile", "KnownHostsCommand", "RevokedHostKeys",
                     "NoHostAuthenticationForLocalhost", "VisualHostKey"),
                    "host keys are checked against UserKnownHostsFile only"),
    **dict.fromkeys(("CertificateFile", "PKCS11Provider", "SecurityKeyProvider"),
                    "qsh has no certificates or hardware keys"),
    **dict.fromkeys(("CanonicalDomains", "CanonicalizeFallbackLocal", "CanonicalizeHostname",
                     "CanonicalizeMaxDots", "CanonicalizePermittedCNAMEs"),
                    "host names are used as given (no canonicalization)"),
    **dict.fromkeys(("Tunnel", "TunnelDevice"), "qsh has no tun/tap forwarding"),
    **dict.fromkeys(("LocalCommand", "PermitLocalCommand"), "qsh runs no local command"),
    **dict.fromkeys(("StreamLocalBindMask", "StreamLocalBindUnlink", "PermitRemoteOpen"),
                    "qsh's tunnels are TCP only"),
    **dict.fromkeys(("TCPKeepAlive", "IPQoS", "BindInterface",
                     "ProxyUseFdpass", "UseRoaming", "Protocol", "Cipher", "Tag",
                     "SyslogFacility", "LogVerbose", "ChannelTimeout", "RekeyLimit",
                     "GatewayPorts", "EnableEscapeCommandline", "IgnoreUnknown",
                     "UsePrivilegedPort", "RSAAuthentication", "RhostsRSAAuthentication"),
                    "no effect in qsh"),
}
for _name in IGNORED_KEYWORDS:
    _KEYWORDS[_name.lower()] = _Keyword(_name, "", lambda a: None)


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


#: Match criteria that take an argument, and those that stand alone.
_MATCH_WITH_ARGUMENT = frozenset({"host", "originalhost", "user", "localuser", "exec"})
_MATCH_ALONE = frozenset({"all", "canonical", "final"})
#: Include files within Include files, at most (ssh's limit too).
INCLUDE_DEPTH = 16
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


def _parse_match(rest: str, origin: str) -> _Condition:
    words = _split_args(rest, origin)
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
            blocks.append(_Block((*conditions, _parse_match(rest, origin))))
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


# --- Resolving --------------------------------------------------------------------------


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


def _settings_for(context: _Context, options: Sequence[str], path: str | Path | None
                  ) -> Iterator[_Setting]:
    """In order: each block's conditions judged when it is reached (lazily, so that the
    settings already taken are what ``Match host``/``user`` see)."""
    yield from (_parse_option(text) for text in options)
    if path is not None and str(path) == "none":  # ssh -F none: no file at all
        return
    explicit = path is not None
    path = path if path is not None else default_config_path()
    text = _read(path, explicit=explicit)
    if text is None:
        return
    for block in _parse_file(text, str(path)):
        if block.applies(context):
            yield from block.settings


def resolve(
    host: str,
    *,
    path: str | Path | None = None,
    options: Sequence[str] = (),
    user: str | None = None,
    port: int | None = None,
    identity_files: Sequence[str | os.PathLike[str]] = (),
) -> ClientConfig:
    """Merge ``-o`` options, the config file and the explicit arguments for ``host``.

    ``path`` is ``-F`` (must exist; ``none`` reads no file); without it ``~/.qsh/config``
    is read if present. ``user``/``port`` come from ``-l``/``user@``/``-p`` and win over
    everything. ``identity_files`` are ``-i`` keys: tried before any IdentityFile, and
    ``~``/tokens are expanded in them too, as ssh does.
    """
    if not host:
        raise ConfigError("empty host name")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"bad port {port} (1-65535)")
    if user == "":
        raise ConfigError("empty user name")
    if path is not None:
        path = _as_path(os.fspath(path))  # as a Path would have it (-F ./none is none)

    first: dict[str, _Setting] = {}
    collected = [
        _parse_setting("IdentityFile", _quote(os.fspath(p)), f"-i {os.fspath(p)!r}")
        for p in identity_files
    ]
    forwards: list[Any] = []  # parse_forward's ForwardSpecs (ClientConfig.forwards)
    notes: list[str] = []
    send_env: list[str] = []
    def hostname_so_far() -> str:
        if "hostname" not in first:
            return host
        return re.sub(r"%(.)", lambda m: host if m.group(1) == "h" else "%",
                      str(first["hostname"].value))

    def user_so_far() -> str:
        return user if user is not None else str(first["user"].value) if "user" in first \
            else _local_user()

    def port_so_far() -> int:
        if port is not None:
            return port
        value = first["port"].value if "port" in first else DEFAULT_PORT
        assert isinstance(value, int)
        return value

    context = _Context(host, hostname_so_far, user_so_far, port_so_far)
    for setting in _settings_for(context, options, path):
        name = setting.keyword.name
        if name in IGNORED_KEYWORDS:
            note = f"{name} {setting.text}: ignored ({IGNORED_KEYWORDS[name]})"
            if note not in notes:
                notes.append(note)
        elif not setting.keyword.attr:
            continue
        elif name == "SendEnv":
            assert isinstance(setting.value, list)
            send_env.extend(setting.value)
        elif setting.keyword.attr == "forwards":
            forwards.append(setting.value)
        elif setting.keyword.multiple:
            collected.append(setting)
        else:
            first.setdefault(setting.keyword.attr, setting)
    values: dict[str, Any] = {attr: setting.value for attr, setting in first.items()}

    hostname = hostname_so_far()  # every line read: these are the final values
    values.pop("hostname", None)
    values["user"], values["port"] = user_so_far(), port_so_far()
    kind, proxy = values.pop("proxy", (None, None))
    if proxy is not None:
        values["proxy_command" if kind == "command" else "proxy_jump"] = proxy
    if path is not None:
        values["config_file"] = path

    home = _home()
    tokens = context.tokens()
    if "known_hosts" in values:
        values["known_hosts"] = _expand_path(
            str(values["known_hosts"]), tokens, home, first["known_hosts"].origin)
    if collected:
        files = [_expand_path(str(s.value), tokens, home, s.origin) for s in collected]
        values["identity_files"] = list(dict.fromkeys(files))
    if forwards:
        values["forwards"] = forwards
    if "control_path" in values:
        control = str(values["control_path"])
        values["control_path"] = None if control.lower() == "none" else _expand_path(
            control, {**tokens, **_control_tokens(tokens)}, home, first["control_path"].origin)
    if values.get("compression"):
        notes.append("Compression yes: ignored (qsh sends records uncompressed: compressing "
                     "before encrypting lets an observer learn about the plaintext from "
                     "record sizes)")
    patterns: list[str] = []
    for pattern in send_env:  # ssh: "-NAME" removes what earlier lines added
        if pattern.startswith("-"):
            patterns = [p for p in patterns if not patterns_match((pattern[1:],), (p,))]
        else:
            patterns.append(pattern)
    values["send_env"] = patterns
    values["notes"] = notes
    return ClientConfig(host=host, hostname=hostname, **values)


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


def environment_to_send(cfg: ClientConfig, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """SendEnv's matching local variables, then SetEnv's pairs, as "env" requests."""
    sent = [(name, value) for name, value in environ.items()
            if _ENV_NAME.fullmatch(name) and any(
                re.fullmatch(re.escape(p).replace(r"\*", ".*").replace(r"\?", "."), name)
                for p in cfg.send_env)]
    return sent + list(cfg.set_env)


def dump(cfg: ClientConfig) -> list[str]:
    """``qsh -G``: the effective configuration, one lower-case ``keyword value`` per line,
    as ``ssh -G`` prints it."""
    def yn(flag: bool | None) -> str:
        return "yes" if flag else "no"

    def algorithms(names: tuple[str, ...] | None) -> str:
        return ",".join(names) if names else "default"

    lines = [
        f"host {cfg.host}", f"hostname {cfg.hostname}", f"port {cfg.port}", f"user {cfg.user}",
        *(f"identityfile {path}" for path in cfg.identity_files),
        f"kems {algorithms(cfg.kems)}", f"ciphers {algorithms(cfg.ciphers)}",
        f"signatures {algorithms(cfg.signatures)}",
        f"chaff {yn(cfg.chaff)}",
        "obscurekeystroketiming " + (f"interval:{cfg.obscure_keystroke_timing}"
                                     if cfg.obscure_keystroke_timing else "no"),
        f"stricthostkeychecking {cfg.strict_host_key_checking}",
        f"userknownhostsfile {cfg.known_hosts}",
        f"hashknownhosts {yn(cfg.hash_known_hosts)}",
        f"connecttimeout {cfg.connect_timeout:g}",
        f"connectionattempts {cfg.connection_attempts}",
        f"serveraliveinterval {cfg.server_alive_interval:g}",
        f"serveralivecountmax {cfg.server_alive_count_max}",
        f"requesttty {cfg.request_tty}",
        f"loglevel {cfg.log_level}",
        f"addressfamily {cfg.address_family}",
        f"exitonforwardfailure {yn(cfg.exit_on_forward_failure)}",
        f"signaltimeout {cfg.signal_timeout:g}",
        f"batchmode {yn(cfg.batch_mode)}",
        f"passwordauthentication {yn(cfg.password_authentication)}",
        f"pubkeyauthentication {yn(cfg.pubkey_authentication)}",
        "preferredauthentications " + ",".join(
            cfg.preferred_authentications if cfg.preferred_authentications is not None
            else ("publickey", "password")),
        f"numberofpasswordprompts {cfg.number_of_password_prompts}",
        f"compression {yn(cfg.compression)}",
        f"sessiontype {cfg.session_type}",
        f"stdinnull {yn(cfg.stdin_null)}",
        f"forkafterauthentication {yn(cfg.fork_after_authentication)}",
        f"clearallforwardings {yn(cfg.clear_all_forwardings)}",
        f"escapechar {cfg.escape_char}",
    ]
    if cfg.bind_address is not None:
        lines.append(f"bindaddress {cfg.bind_address}")
    if cfg.remote_command is not None:
        lines.append(f"remotecommand {cfg.remote_command}")
    if cfg.proxy_command is not None:
        lines.append(f"proxycommand {cfg.proxy_command}")
    if cfg.proxy_jump is not None:
        lines.append(f"proxyjump {cfg.proxy_jump}")
    if cfg.host_key_alias is not None:
        lines.append(f"hostkeyalias {cfg.host_key_alias}")
    lines.append(f"controlmaster {cfg.control_master}")
    lines.append(f"controlpath {cfg.control_path or 'none'}")
    lines.append("controlpersist " + ("no" if cfg.control_persist is None else
                                      "yes" if cfg.control_persist == 0 else
                                      f"{cfg.control_persist:g}"))
    lines += [f"sendenv {pattern}" for pattern in cfg.send_env]
    lines += [f"setenv {name}={value}" for name, value in cfg.set_env]
    for spec in cfg.forwards:
        keyword = {"local": "localforward", "remote": "remoteforward",
                   "dynamic": "dynamicforward"}[spec.kind]
        lines.append(f"{keyword} {spec.text}")
    return lines
