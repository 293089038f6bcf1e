"""What qsh needs to reach one host (:class:`ClientConfig`), the defaults it falls back on
(the home directory, the local user, the default files), and :class:`ConfigError`, the
one error of the configuration."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
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


def wants_pty(request_tty: str, *, command: str | None, stdin_is_tty: bool,
              force: bool) -> bool:
    """ssh's rule for ``RequestTTY``: a pty for an interactive login on a terminal; ``-t``
    (and RequestTTY force) always; RequestTTY yes when stdin is a terminal; no never. Here,
    with the setting, because a session logged in by itself (qsh/session.py) and one over a
    shared connection (common/client/mux_client.py) decide alike."""
    if force or request_tty == "force":
        return True
    if request_tty == "no":
        return False
    if request_tty == "yes":
        return stdin_is_tty
    return command is None and stdin_is_tty
