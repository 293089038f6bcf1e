"""What one logged-in connection may do: qshd_config (after its Match blocks) narrowed by the
options of the authorized_keys line that let the user in.

Decided once, in the user's process (:mod:`qshd.postauth`), from the configuration it was
forked with and the key options the monitor handed over with the login; the user cannot
alter that process or look into it (it is not dumpable, :func:`qshd.privsep.not_dumpable`).

The most restrictive reading wins, always: a key option can take away what the
configuration allows and never add to it. ``ForceCommand`` wins over a key's ``command=``
(as in sshd); ``no-pty`` and ``PermitTTY no`` each refuse a terminal; a key's
``permitopen``/``permitlisten`` narrow PermitOpen/PermitListen (both must allow a
destination); ``no-port-forwarding`` refuses every tunnel. A forced command also refuses
the ``copy`` channel (qcp), which would otherwise read and write files without running
any command: sshd's forced command likewise replaces its sftp subsystem.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass

from common.accounts.key_options import KeyOptions, OptionError, parse_options
from common.forward.listen import is_loopback_bind

from .config import ServerConfig
from .tunnels import Pattern, TunnelPolicy, parse_patterns


@dataclass(frozen=True)
class SessionPolicy:
    """What a ``session`` (and a ``copy``) channel of this connection may do."""

    #: Run instead of any shell or command the client asks for; its request goes in
    #: QSH_ORIGINAL_COMMAND.
    force_command: str | None = None
    permit_tty: bool = True
    #: Variables from the key's environment= options (PermitUserEnvironment allowing).
    environment: tuple[tuple[str, str], ...] = ()
    #: Seconds a session may pass without data either way before it is closed; 0: never.
    idle_timeout: float = 0.0
    #: AcceptEnv: the names of the variables a client may set with "env".
    accept_env: tuple[str, ...] = ("LANG", "LC_*", "TZ")
    #: Subsystem NAME COMMAND.
    subsystems: tuple[tuple[str, str], ...] = ()

    def accepts_env(self, name: str) -> bool:
        """A variable name of the usual shape that AcceptEnv lists (``!`` excludes)."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return False
        accepted = False
        for pattern in self.accept_env:
            if fnmatch.fnmatchcase(name, pattern.lstrip("!")):
                if pattern.startswith("!"):
                    return False
                accepted = True
        return accepted

    @property
    def allows_copy(self) -> bool:
        return self.force_command is None


@dataclass(frozen=True)
class KeyTunnelPolicy(TunnelPolicy):
    """A TunnelPolicy further narrowed by a key's permitopen= / permitlisten=."""

    key_open: tuple[Pattern, ...] | None = None
    key_listen: tuple[Pattern, ...] | None = None

    def local_refusal(self, host: str, port: int) -> str | None:
        reason = super().local_refusal(host, port)
        if reason is not None or self.key_open is None or not host:
            return reason
        if not any(fnmatch.fnmatchcase(host.lower(), h) and p in ("*", str(port))
                   for h, p in self.key_open):
            return f"{host}:{port} is not permitted (the key's permitopen)"
        return None

    def remote_refusal(self, address: str, port: int) -> str | None:
        reason = super().remote_refusal(address, port)
        if reason is not None or self.key_listen is None:
            return reason
        bind = self.listen_address(address)
        name = bind or "localhost"
        if not any((fnmatch.fnmatchcase(name.lower(), h)
                    or (h == "localhost" and is_loopback_bind(bind)))
                   and p in ("*", str(port)) for h, p in self.key_listen):
            return f"listening on {name}:{port} is not permitted (the key's permitlisten)"
        return None


def key_options(text: str) -> KeyOptions:
    """The handed-over options, parsed again. The monitor accepted them, so a failure here
    is a bug: refuse everything rather than run unrestricted."""
    try:
        return parse_options(text) if text else KeyOptions()
    except OptionError:
        return KeyOptions(command="false", pty=False, port_forwarding=False, text=text)


def tunnel_policy(config: ServerConfig, options: KeyOptions) -> TunnelPolicy:
    policy = config.tunnel_policy
    if not options.port_forwarding:
        return dataclasses.replace(policy, allow="no")
    if not options.permit_open and not options.permit_listen:
        return policy
    try:
        key_open = (parse_patterns(" ".join(options.permit_open), host_optional=False)
                    if options.permit_open else None)
        key_listen = (parse_patterns(" ".join(options.permit_listen), host_optional=True)
                      if options.permit_listen else None)
    except ValueError:
        return dataclasses.replace(policy, allow="no")
    return KeyTunnelPolicy(allow=policy.allow, permit_open=policy.permit_open,
                           permit_listen=policy.permit_listen,
                           gateway_ports=policy.gateway_ports,
                           key_open=key_open, key_listen=key_listen)


def session_policy(config: ServerConfig, options: KeyOptions) -> SessionPolicy:
    permitted = config.permit_user_environment
    environment = tuple((name, value) for name, value in options.environment
                        if _env_permitted(permitted, name))
    return SessionPolicy(
        force_command=config.force_command if config.force_command is not None
        else options.command,
        permit_tty=config.permit_tty and options.pty,
        environment=environment,
        idle_timeout=config.channel_timeouts.get("session", 0.0),
        accept_env=config.accept_env,
        subsystems=tuple(config.subsystems.items()),
    )


def _env_permitted(permit: str, name: str) -> bool:
    """PermitUserEnvironment: ``no``, ``yes``, or a pattern list of names (as sshd 7.8+)."""
    if permit == "no":
        return False
    if permit == "yes":
        return True
    allowed = False
    for pattern in re.split(r"[,\s]+", permit):
        negated = pattern.startswith("!")
        if pattern and fnmatch.fnmatchcase(name, pattern.lstrip("!")):
            if negated:
                return False
            allowed = True
    return allowed
