"""The keyword table: one setting applied onto a :class:`~qshd.config.ServerConfig`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.accounts.passwd import InvalidUserName, check_user_name
from common.crypto import registry

from ..loglevel import FACILITIES, LEVELS
from .defaults import PER_SOURCE_UNLIMITED, PERMIT_ROOT_VALUES, default_subsystems
from .grammar import ConfigError
from .values import (
    _TUNNEL_KEYWORDS,
    _boolean,
    _channel_timeouts,
    _choice,
    _integer,
    _max_startups,
    _name_patterns,
    _names,
    _netblock,
    _networks,
    _number,
    _obscure,
    _penalties,
    _seconds,
    _tunnel_option,
    expand_tokens,
)

if TYPE_CHECKING:
    from .settings import ServerConfig


@dataclass
class _State:
    """What the keywords that may be repeated carry from one line to the next."""

    penalty_items: set[str] = field(default_factory=set)
    listen_given: bool = False
    accept_env_given: bool = False


def _apply(config: ServerConfig, keyword: str, values: list[str], where: str,
           state: _State) -> None:
    """One setting onto ``config``; raises ConfigError for a bad value or keyword."""
    value = " ".join(values)
    if keyword == "port":
        config.port = int(_number(value, where, 1, 65535))
    elif keyword == "listenaddress":
        if not state.listen_given:
            config.listen_addresses = []
            state.listen_given = True
        config.listen_addresses.append(value)
    elif keyword == "hostkey":
        config.host_keys.append(Path(value).expanduser())
    elif keyword == "kems":
        config.kems = _names(value, registry.available_kems(), where)
    elif keyword == "signatures":
        config.signatures = _names(value, registry.available_signatures(), where)
    elif keyword == "ciphers":
        config.ciphers = _names(value, registry.available_aeads(), where)
    elif keyword == "allowchaff":
        config.allow_chaff = _boolean(value, where)
    elif keyword == "obscurekeystroketiming":
        config.allow_obscure, config.obscure_min_interval_ms = _obscure(value, where)
    elif keyword == "handshaketimeout":
        config.step_timeout = _number(value, where, 1, 600)
    elif keyword == "keepaliveinterval":
        config.keepalive_interval = _number(value, where, 1, 86400)
    elif keyword == "clientaliveinterval":  # sshd's name; 0 turns the keep-alive off
        config.keepalive_interval = _number(value, where, 0, 86400) or None
    elif keyword == "clientalivecountmax":
        config.keepalive_count_max = int(_number(value, where, 1, 1000))
    elif keyword == "rekeybytes":
        config.rekey_bytes = int(_number(value, where, 1 << 20, 1 << 40))
    elif keyword == "rekeyinterval":
        config.rekey_interval = _number(value, where, 10, 86400)
    elif keyword == "maxstartups":
        (config.max_startups_begin, config.max_startups_rate,
         config.max_startups) = _max_startups(value, where)
    elif keyword == "persourcemaxstartups":
        config.per_source_max_startups = (
            PER_SOURCE_UNLIMITED if value.lower() == "none"
            else _integer(value, where, 1, 100000))
    elif keyword == "persourcenetblocksize":
        v4, v6 = _netblock(value, where)
        config.per_source_netblock4 = v4
        if v6 is not None:
            config.per_source_netblock6 = v6
    elif keyword == "persourcepenalties":
        config.penalties = _penalties(value, where, config.penalties, state.penalty_items)
    elif keyword == "persourcepenaltyexemptlist":
        config.penalty_exempt = _networks(value, where)
    elif keyword == "firstmessagetimeout":
        config.first_message_timeout = _seconds(value, where, 0, 3600)
    elif keyword == "privsepuser":
        try:
            check_user_name(value)
        except InvalidUserName:
            raise ConfigError(f"{where}: PrivsepUser {value!r} is not a user name") from None
        config.privsep_user = value
    elif keyword == "loglevel":
        config.log_level = _choice(value, tuple(n.lower() for n in LEVELS), where).upper()
    elif keyword == "syslogfacility":
        config.syslog_facility = _choice(value, tuple(n.lower() for n in FACILITIES),
                                         where).upper()
    elif keyword == "passwdfile":
        config.passwd_file = Path(value).expanduser()
    elif keyword == "authorizedkeysfile":
        for template in values:
            if "\x00" in template or not template:
                raise ConfigError(f"{where}: AuthorizedKeysFile: an empty path or a NUL")
            try:
                expand_tokens(template, "user", "/home/user")
            except ValueError as exc:
                raise ConfigError(f"{where}: AuthorizedKeysFile: {exc}") from None
        config.authorized_keys_files = tuple(values)
    elif keyword == "permitrootlogin":
        choice = value.lower()
        if choice == "without-password":  # sshd's old name for prohibit-password
            choice = "prohibit-password"
        config.permit_root_login = _choice(choice, PERMIT_ROOT_VALUES, where)
    elif keyword == "passwordauthentication":
        config.password_authentication = _boolean(value, where)
    elif keyword == "pubkeyauthentication":
        config.pubkey_authentication = _boolean(value, where)
    elif keyword == "maxauthtries":
        config.max_auth_tries = _integer(value, where, 1, 100)
    elif keyword == "logingracetime":
        config.login_grace_time = _seconds(value, where, 1, 86400)
    elif keyword in _TUNNEL_KEYWORDS:
        config.tunnel_policy = _tunnel_option(config.tunnel_policy, keyword, value, where)
    elif keyword == "forcecommand":
        config.force_command = None if value.lower() == "none" else value
    elif keyword == "permittty":
        config.permit_tty = _boolean(value, where)
    elif keyword == "permituserenvironment":
        lowered = value.lower()
        config.permit_user_environment = lowered if lowered in ("yes", "no") else value
    elif keyword == "channeltimeout":
        config.channel_timeouts = _channel_timeouts(values, where)
    elif keyword == "acceptenv":
        for pattern in values:
            if not re.fullmatch(r"!?[A-Za-z0-9_*?]+", pattern):
                raise ConfigError(f"{where}: AcceptEnv: bad pattern {pattern!r}")
        # The first line replaces the default list; later ones add to it.
        config.accept_env = ((*config.accept_env, *values) if state.accept_env_given
                             else tuple(values))
        state.accept_env_given = True
    elif keyword == "subsystem":
        if len(values) < 2 or not re.fullmatch(r"[A-Za-z0-9@._-]{1,64}", values[0]):
            raise ConfigError(f"{where}: Subsystem takes a name and a command")
        command = " ".join(values[1:])
        if command == "internal-sftp":  # sshd's built-in: the system's sftp-server here
            command = default_subsystems().get("sftp", "internal-sftp")
        config.subsystems.setdefault(values[0], command)
    elif keyword == "unusedconnectiontimeout":
        config.unused_connection_timeout = (
            0.0 if value.lower() == "none" else _seconds(value, where, 0, 30 * 86400))
    elif keyword == "allowusers":
        config.allow_users = (*(config.allow_users or ()), *_name_patterns(values, where))
    elif keyword == "denyusers":
        config.deny_users = (*config.deny_users, *_name_patterns(values, where))
    elif keyword == "allowgroups":
        config.allow_groups = (*(config.allow_groups or ()),
                               *_name_patterns(values, where, users=False))
    elif keyword == "denygroups":
        config.deny_groups = (*config.deny_groups, *_name_patterns(values, where, users=False))
    else:
        raise ConfigError(f"{where}: unknown keyword {keyword!r}")
