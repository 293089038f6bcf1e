"""``qshd -T``: the effective configuration as ``keyword value`` lines."""

from __future__ import annotations

from .defaults import PER_SOURCE_UNLIMITED
from .settings import ServerConfig


def _g(number: float) -> str:
    return f"{number:g}"


def _patterns_text(patterns: tuple[tuple[str, str], ...] | None) -> str:
    if patterns is None:
        return "any"
    if not patterns:
        return "none"
    return " ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in patterns)


def dump(config: ServerConfig) -> list[str]:
    """``qshd -T``: every keyword with its effective value, one ``keyword value`` line each
    (lower case, as sshd -T prints them), in a stable order."""
    p = config.penalties
    tunnels = config.tunnel_policy
    per_source = config.per_source_max_startups
    lines = [f"port {config.port}"]
    lines += [f"listenaddress {address}" for address in config.listen_addresses]
    lines += [f"hostkey {path}" for path in config.host_key_paths()]
    lines += [
        f"kems {','.join(config.kems) if config.kems else 'default'}",
        f"signatures {','.join(config.signatures) if config.signatures else 'default'}",
        f"ciphers {','.join(config.ciphers) if config.ciphers else 'default'}",
        f"allowchaff {'yes' if config.allow_chaff else 'no'}",
        "obscurekeystroketiming " + ("no" if not config.allow_obscure
                                     else f"interval:{config.obscure_min_interval_ms}"),
        f"handshaketimeout {_g(config.step_timeout)}",
        f"keepaliveinterval {_g(config.keepalive_interval or 0)}",
        f"clientaliveinterval {_g(config.keepalive_interval or 0)}",  # sshd -T's name
        f"clientalivecountmax {config.keepalive_count_max}",
        f"rekeybytes {config.rekey_bytes}",
        f"rekeyinterval {_g(config.rekey_interval)}",
        f"maxstartups {config.max_startups_begin}:{config.max_startups_rate}:"
        f"{config.max_startups}",
        "persourcemaxstartups " + ("none" if per_source == PER_SOURCE_UNLIMITED else
                                   "default" if per_source is None else str(per_source)),
        f"persourcenetblocksize {config.per_source_netblock4}:{config.per_source_netblock6}",
        "persourcepenalties " + (
            f"crash:{_g(p.crash)} authfail:{_g(p.authfail)} noauth:{_g(p.noauth)} "
            f"grace-exceeded:{_g(p.grace_exceeded)} min:{_g(p.min)} max:{_g(p.max)} "
            f"max-sources4:{p.max_sources4} max-sources6:{p.max_sources6} "
            f"overflow:{p.overflow4} overflow6:{p.overflow6}" if p.enabled else "no"),
        "persourcepenaltyexemptlist "
        + (",".join(str(n) for n in config.penalty_exempt) or "none"),
        f"firstmessagetimeout {_g(config.first_message_timeout)}",
        f"privsepuser {config.privsep_user}",
        f"loglevel {config.log_level}",
        f"syslogfacility {config.syslog_facility}",
        f"passwdfile {config.passwd_path()}",
        f"authorizedkeysfile {' '.join(config.authorized_keys_files)}",
        f"permitrootlogin {config.permit_root_login}",
        f"passwordauthentication {'yes' if config.password_authentication else 'no'}",
        f"pubkeyauthentication {'yes' if config.pubkey_authentication else 'no'}",
        f"maxauthtries {config.max_auth_tries}",
        f"logingracetime {_g(config.login_grace_time)}",
        f"allowtcpforwarding {tunnels.allow}",
        f"permitopen {_patterns_text(tunnels.permit_open)}",
        f"permitlisten {_patterns_text(tunnels.permit_listen)}",
        f"gatewayports {tunnels.gateway_ports}",
        f"forcecommand {config.force_command if config.force_command is not None else 'none'}",
        f"permittty {'yes' if config.permit_tty else 'no'}",
        f"permituserenvironment {config.permit_user_environment}",
        "channeltimeout " + (" ".join(f"{kind}={_g(seconds)}" for kind, seconds
                                      in sorted(config.channel_timeouts.items())) or "none"),
        "unusedconnectiontimeout " + (_g(config.unused_connection_timeout)
                                      if config.unused_connection_timeout else "none"),
        f"acceptenv {' '.join(config.accept_env) or 'none'}",
        *(f"subsystem {name} {command}" for name, command in config.subsystems.items()),
    ]
    for keyword, values in (("allowusers", config.allow_users),
                            ("denyusers", config.deny_users),
                            ("allowgroups", config.allow_groups),
                            ("denygroups", config.deny_groups)):
        if values:
            lines.append(f"{keyword} {' '.join(values)}")
    return lines
