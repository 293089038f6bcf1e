"""The daemon's settings after the file was read, and what the other parts of qshd derive
from them (per-connection settings after Match, the transport's and admission's settings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from common.accounts.passwd import default_passwd_path
from common.protocol.negotiation import ServerPolicy
from common.protocol.transport import TransportSettings

from ..admission import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    DEFAULT_NETBLOCK4,
    DEFAULT_NETBLOCK6,
    DEFAULT_STARTUPS_FULL,
    DEFAULT_STARTUPS_RATE,
    DEFAULT_STARTUPS_START,
    AdmissionSettings,
    IPNetwork,
    PenaltySettings,
    Startups,
)
from ..tunnels import TunnelPolicy
from .defaults import (
    DEFAULT_AUTHORIZED_KEYS,
    DEFAULT_LOGIN_GRACE,
    DEFAULT_MAX_AUTH_TRIES,
    DEFAULT_PORT,
    PER_SOURCE_UNLIMITED,
    default_dir,
    default_subsystems,
)
from .keywords import _apply, _State
from .match import ConnectionSpec, MatchBlock


@dataclass
class ServerConfig:
    port: int = DEFAULT_PORT
    # Like sshd: a daemon serves every interface unless ListenAddress narrows it.
    listen_addresses: list[str] = field(default_factory=lambda: ["0.0.0.0"])  # noqa: S104
    host_keys: list[Path] = field(default_factory=list)
    kems: tuple[str, ...] | None = None
    signatures: tuple[str, ...] | None = None
    ciphers: tuple[str, ...] | None = None
    allow_chaff: bool = True
    #: ObscureKeystrokeTiming: whether clients may ask for keystroke obfuscation, and the
    #: fastest keystroke clock (so the largest fake-keystroke rate) accepted.
    allow_obscure: bool = True
    obscure_min_interval_ms: int = 10
    step_timeout: float = 30.0
    keepalive_interval: float | None = 300.0
    keepalive_count_max: int = 1
    rekey_bytes: int = 1 << 30
    rekey_interval: float = 3600.0
    #: MaxStartups start:rate:full; ``max_startups`` is ``full``.
    max_startups_begin: int = DEFAULT_STARTUPS_START
    max_startups_rate: int = DEFAULT_STARTUPS_RATE
    max_startups: int = DEFAULT_STARTUPS_FULL
    #: None: half of MaxStartups' start (one source can never push the others into the
    #: random drop); PER_SOURCE_UNLIMITED: sshd's default, no limit.
    per_source_max_startups: int | None = None
    per_source_netblock4: int = DEFAULT_NETBLOCK4
    per_source_netblock6: int = DEFAULT_NETBLOCK6
    penalties: PenaltySettings = field(default_factory=PenaltySettings)
    penalty_exempt: tuple[IPNetwork, ...] = ()
    #: Seconds for a new connection's first message to arrive whole; 0: no such limit.
    first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT
    #: The account the pre-auth process runs as (sshd's privsep user; ``nobody`` when the
    #: named one does not exist, see qshd.8).
    privsep_user: str = "qshd"
    #: LogLevel and SyslogFacility (qshd/loglevel.py); QUIET is the zero-log mode.
    log_level: str = "INFO"
    syslog_facility: str = "AUTH"
    #: None: the default for the daemon's privileges (see :meth:`passwd_path`).
    passwd_file: Path | None = None
    #: Relative paths are taken from the user's home; %h, %u and %% are expanded. A key
    #: listed in any of them logs in.
    authorized_keys_files: tuple[str, ...] = (DEFAULT_AUTHORIZED_KEYS,)
    permit_root_login: str = "no"
    password_authentication: bool = True
    pubkey_authentication: bool = True
    max_auth_tries: int = DEFAULT_MAX_AUTH_TRIES
    login_grace_time: float = DEFAULT_LOGIN_GRACE
    #: Tunnels (qshd/tunnels.py): AllowTcpForwarding, PermitOpen, PermitListen, GatewayPorts.
    tunnel_policy: TunnelPolicy = field(default_factory=TunnelPolicy)
    #: ForceCommand: run instead of whatever the client asks (qshd/policy.py).
    force_command: str | None = None
    permit_tty: bool = True
    #: PermitUserEnvironment: "no", "yes" or a pattern list of variable names.
    permit_user_environment: str = "no"
    #: AcceptEnv: patterns of the variable names a client may set (sshd's usual list).
    accept_env: tuple[str, ...] = ("LANG", "LC_*", "TZ")
    #: Subsystem NAME COMMAND, by name; sftp defaults to OpenSSH's sftp-server if present.
    subsystems: dict[str, str] = field(default_factory=default_subsystems)
    #: ChannelTimeout: idle seconds by channel type (only ``session`` today).
    channel_timeouts: dict[str, float] = field(default_factory=dict)
    #: UnusedConnectionTimeout: seconds a logged-in connection may have no channel; 0: never.
    unused_connection_timeout: float = 0.0
    #: AllowUsers / DenyUsers (``user`` or ``user@address`` patterns), AllowGroups /
    #: DenyGroups; None: no such list.
    allow_users: tuple[str, ...] | None = None
    deny_users: tuple[str, ...] = ()
    allow_groups: tuple[str, ...] | None = None
    deny_groups: tuple[str, ...] = ()
    #: Match blocks, in file order (:meth:`for_connection` applies them).
    matches: list[MatchBlock] = field(default_factory=list)
    #: Keywords given with -o: they win over Match blocks too.
    overridden: frozenset[str] = frozenset()

    def for_connection(self, conn: ConnectionSpec) -> ServerConfig:
        """The configuration for one connection: every Match block that selects it, in
        order, applied over the global settings. In the blocks, as in the file, the first
        value of a keyword wins; a ``-o`` option wins over all of them."""
        effective = dataclasses.replace(self, matches=[], channel_timeouts=dict(
            self.channel_timeouts))
        seen = set(self.overridden)
        for block in self.matches:
            if not block.selects(conn):
                continue
            for where, keyword, values in block.settings:
                if keyword in seen:
                    continue
                seen.add(keyword)
                _apply(effective, keyword, values, where, _State())
        return effective

    def auth_methods(self) -> tuple[str, ...]:
        """What a refused client is told may still work."""
        return tuple(method for method, on in (("publickey", self.pubkey_authentication),
                                               ("password", self.password_authentication))
                     if on)

    def transport_settings(self) -> TransportSettings:
        """Keep-alive and rekey budgets: the same in every process a connection passes
        through (the pre-auth process and the user's process after the handoff)."""
        return TransportSettings(keepalive_interval=self.keepalive_interval,
                                 keepalive_count_max=self.keepalive_count_max,
                                 rekey_bytes=self.rekey_bytes,
                                 rekey_interval=self.rekey_interval)

    def policy(self) -> ServerPolicy:
        return ServerPolicy(kems=self.kems, signatures=self.signatures, aeads=self.ciphers,
                            allow_chaff=self.allow_chaff, allow_obscure=self.allow_obscure,
                            obscure_min_interval_ms=self.obscure_min_interval_ms)

    def startups(self) -> Startups:
        """A ``start`` above ``full`` (set apart) is clamped: no drop before the cap."""
        full = self.max_startups
        return Startups(min(self.max_startups_begin, full), self.max_startups_rate, full)

    def admission_settings(self) -> AdmissionSettings:
        startups = self.startups()
        per_source: int | None
        if self.per_source_max_startups is None:
            per_source = max(1, startups.start // 2)
        elif self.per_source_max_startups == PER_SOURCE_UNLIMITED:
            per_source = None
        else:
            per_source = self.per_source_max_startups
        return AdmissionSettings(startups=startups, per_source=per_source,
                                 netblock4=self.per_source_netblock4,
                                 netblock6=self.per_source_netblock6,
                                 penalties=self.penalties, exempt=self.penalty_exempt)

    def host_key_paths(self) -> list[Path]:
        return self.host_keys or [default_dir() / "host_key"]

    def passwd_path(self) -> Path:
        """Decided late, not at parse time: the default depends on whether we run as root."""
        return self.passwd_file if self.passwd_file is not None else default_passwd_path()
