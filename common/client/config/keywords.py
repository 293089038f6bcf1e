"""The keyword table: every keyword qsh understands, the :class:`ClientConfig` field it
sets and how its value is checked (:data:`_KEYWORDS`), and the ssh keywords accepted and
ignored, each with its reason (:data:`IGNORED_KEYWORDS`). A value is checked when its line
is read, whichever host it is for; a bad one raises ``ValueError``, which the parser
reports with the file and line."""

from __future__ import annotations

import re

from common.accounts.patterns import patterns_match
from common.client.config.settings import HOST_KEY_CHECKING, LOG_LEVELS, REQUEST_TTY
from common.client.config.tokens import _CONTROL_TOKENS, _PATH_TOKENS, _check_tokens
from common.value_record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from common.channels.tunnel import ForwardSpec


# --- Values -----------------------------------------------------------------------------

_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ALGORITHM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]*")
_ALGORITHM_PATTERN = re.compile(r"[A-Za-z0-9*?][A-Za-z0-9@._+*?-]*")


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
