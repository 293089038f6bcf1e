"""``qsh -G``: the effective configuration, as ``ssh -G`` prints it."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from common.client.config.settings import ClientConfig


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
