"""The ``qsh`` command's body, without click: from the parsed command line to the exit status.

Two callers, one behaviour: :mod:`qsh.cli` (click, for the full grammar, help and usage
errors) and :mod:`qsh.entry` (ssh's grammar alone, for the plain runs, which then skip
click's import: ~6-40 ms of CPU at every start, issue 18). A complaint about the command
line is :class:`UsageError`, any other failure before a connection :class:`Failure`; the
callers report them (qsh.cli as click did: one ``qsh: ...`` line, the usage line after a
usage error, exit 255).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common.cli import EXIT_FAILURE, LOG_LEVEL_VERBOSITY, QUIET_LEVELS, stdin_from_null

from .argv import split_destination

if TYPE_CHECKING:
    from common.client.config import ClientConfig



class UsageError(Exception):
    """The command line is wrong: reported with the usage line."""


class Failure(Exception):
    """The run cannot start (a bad configuration, a log file that cannot be opened)."""


#: ssh's flags that cannot apply to qsh: accepted, and said so under -v.
IGNORED_FLAGS = {
    "a": "-a: agent forwarding is off (qsh uses no agent)",
    "A": "-A: ignored (qsh uses no agent, so there is none to forward)",
    "x": "-x: X11 forwarding is off (qsh does not forward X11)",
    "X": "-X: ignored (qsh does not forward X11)",
    "Y": "-Y: ignored (qsh does not forward X11)",
    "k": "-k: GSSAPI delegation is off (qsh has no GSSAPI)",
    "K": "-K: ignored (qsh has no GSSAPI)",
    "g": "-g: ignored (write the bind address in the tunnel: -L 0.0.0.0:port:host:port)",
    "y": "-y: ignored (qsh logs to stderr, or the -E file)",
}
#: ssh's options with a value that cannot apply to qsh.
IGNORED_VALUES = {
    "B": "-B {}: ignored (use -b with the interface's address)",
    "m": "-m {}: ignored (qsh's ciphers are AEADs: no separate MAC)",
    "P": "-P {}: ignored (no effect in qsh)",
    "I": "-I {}: ignored (qsh has no PKCS#11 keys)",
}
#: ssh's options qsh refuses, with why.
REFUSED_VALUES = {
    "w": "-w: tun/tap forwarding is not supported",
}


def remote_command(words: tuple[str, ...]) -> str | None:
    """ssh joins the command's words with spaces and the remote shell parses the result,
    so ``qsh host ls '*.txt'`` globs remotely. None means "no command": a login shell."""
    if not words:
        return None
    command = " ".join(words)
    from common.channels.session import MAX_COMMAND

    if len(command.encode("utf-8", "surrogateescape")) > MAX_COMMAND:
        raise UsageError(f"the command is longer than {MAX_COMMAND} bytes")
    return command


def run(quiet: bool, inet4: bool, inet6: bool, log_file: str | None,
        port: int | None, login: str | None, identities: tuple[str, ...],
        config_file: str | None, options: tuple[str, ...], verbose: int,
        force_tty: bool, local_forwards: tuple[str, ...], remote_forwards: tuple[str, ...],
        dynamic_forwards: tuple[str, ...], no_command: bool, background: bool,
        print_config: bool, compression: bool, stdin_null: bool, subsystem: bool,
        bind_address: str | None, cipher_spec: str | None, escape_char: str | None,
        jump: str | None, stdio_forward: str | None,
        master: int, control_path: str | None, control_command: str | None,
        destination: str, command: tuple[str, ...], *, echo: Callable[[str], None] = print,
        **ignored: object) -> int:
    """Log in to DESTINATION ([user@]host) and run a shell, or COMMAND, over QSMP: the exit
    status. ``echo`` prints -G's output (click.echo under qsh.cli, as before)."""
    from common.client.config import ConfigError, dump, resolve

    notes: list[str] = []
    for name, value in ignored.items():
        letter = name[-1]
        if value and name.startswith("ignored_"):
            notes.append(IGNORED_FLAGS[letter])
        elif value is not None and name.startswith("value_"):
            if letter in REFUSED_VALUES:
                raise UsageError(REFUSED_VALUES[letter])
            notes.append(IGNORED_VALUES[letter].format(value))
    # Flags that are options in the config: before -o, as ssh gives them precedence.
    extra = [f"{keyword}={value}" for keyword, value in (
        ("Compression", "yes" if compression else None),
        ("SessionType", "subsystem" if subsystem else None), ("BindAddress", bind_address),
        ("Ciphers", cipher_spec), ("EscapeChar", escape_char), ("ProxyJump", jump),
        ("ControlMaster", {0: None, 1: "yes"}.get(master, "ask")),
        ("ControlPath", control_path)) if value is not None]
    user, host = split_destination(destination)
    try:
        cfg = resolve(host, path=Path(config_file) if config_file is not None else None,
                      options=[*extra, *options], user=login or user, port=port,
                      identity_files=identities)
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    cfg.notes[:0] = notes
    if print_config:
        echo("\n".join(dump(cfg)))
        return 0
    stdio: tuple[str, int] | None = None
    if stdio_forward is not None:  # ssh -W: no session, no pty, no tunnels, no -f
        from common.client.proxy import split_host_port

        if command or local_forwards or remote_forwards or dynamic_forwards or background:
            raise UsageError("-W takes no command, tunnel or -f")
        try:
            stdio_host, stdio_port = split_host_port(stdio_forward, "-W")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if stdio_port is None:
            raise UsageError(f"-W {stdio_forward}: host:port expected")
        stdio, cfg.forwards = (stdio_host, stdio_port), []
    stdin_null = stdin_null or cfg.stdin_null
    background = background or cfg.fork_after_authentication
    no_command = no_command or cfg.session_type == "none"
    if not command and cfg.remote_command is not None:
        command = (cfg.remote_command,)
    if cfg.session_type == "subsystem" and len(command) != 1:
        raise UsageError("-s takes one subsystem name, as the command")
    given = []
    if local_forwards or remote_forwards or dynamic_forwards:  # (a run without loads none)
        from common.channels.tunnel import parse_forward

        try:
            given = [parse_forward(kind, text) for kind, texts in (
                ("local", local_forwards), ("remote", remote_forwards),
                ("dynamic", dynamic_forwards)) for text in texts]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    # Command-line tunnels first, then the config's (ssh adds both); ExitOnForwardFailure
    # defaults to yes when the command line asked for a tunnel.
    cfg.forwards = [] if cfg.clear_all_forwardings else [*given, *cfg.forwards]
    if cfg.exit_on_forward_failure is None:
        cfg.exit_on_forward_failure = bool(given)
    if no_command and command:
        raise UsageError("-N takes no command")
    if inet4 or inet6:  # the last of -4 and -6 wins in ssh; both is a contradiction here
        if inet4 and inet6:
            raise UsageError("-4 and -6 cannot be used together")
        cfg.address_family = "inet" if inet4 else "inet6"
    if quiet:
        cfg.log_level = "QUIET"
    log_fd = 2
    if log_file is not None:
        try:
            log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
        except OSError as exc:
            raise Failure(f"cannot open {log_file}: {exc.strerror}") from None
    if stdin_null:
        stdin_from_null()
    verbosity = max(verbose, LOG_LEVEL_VERBOSITY.get(cfg.log_level, 0))
    if control_command is not None or cfg.control_path is not None:
        alone = bool(no_command or background or cfg.forwards or stdio)
        shared = _shared(cfg, control_command, remote_command(command), force_tty=force_tty,
                         quiet=cfg.log_level in QUIET_LEVELS, alone=alone, verbosity=verbosity,
                         forwards=[(spec.kind, spec.text) for spec in given])
        if shared is not None:
            return shared
    return _run(cfg, remote_command(command), force_tty, verbosity,
                quiet=cfg.log_level in QUIET_LEVELS, no_command=no_command,
                background=background, log_fd=log_fd, stdio=stdio)


def _shared(cfg: ClientConfig, control_command: str | None, remote: str | None, *,
            force_tty: bool, quiet: bool, alone: bool, verbosity: int,
            forwards: list[tuple[str, str]]) -> int | None:
    """Connection sharing's client side: ``-O`` to the master, or this run's session over
    the master's connection. The exit code, or None to log in as usual. Imports nothing
    of the protocol stack (common/client/mux_client.py says why)."""
    from common.client import mux_client

    if control_command is not None:
        if cfg.control_path is None:
            raise Failure(f'no ControlPath for "-O {control_command}"')
        return mux_client.control_command(cfg.control_path, control_command,
                                          forwards=forwards)
    if cfg.control_path is None or cfg.control_master in ("yes", "ask") or alone:
        return None  # -N, -f and tunnels log in themselves
    return mux_client.shared_session(cfg, remote, force_tty=force_tty, quiet=quiet,
                                     verbose=verbosity > 0)


def _run(cfg: ClientConfig, remote: str | None, force_tty: bool, verbosity: int, *,
         quiet: bool, no_command: bool = False, background: bool = False,
         log_fd: int = 2, stdio: tuple[str, int] | None = None) -> int:
    from common.client import dial

    dial.start(cfg)  # the server forks its processes while we import (dial.py)
    # Before the first secret (a key file, a password) and the first byte from the network:
    # no ptrace, the wipe at exit. Not earlier: it loads ctypes (common/cli.py no_core_dumps).
    from common.crypto.secret import harden_process

    harden_process()
    from common.client import connect, terminal

    from . import session

    connect.setup_logging(verbosity, log_fd)
    # BatchMode: nobody to ask, so no password, passphrase or host key question.
    ui = connect.Ui(verbosity, quiet=quiet,
                    prompter=None if cfg.batch_mode else terminal.TtyPrompter())
    ui.log_fd = log_fd
    for note in cfg.notes:
        ui.note(1, note)
    if stdio is not None:  # -W
        from .stdio import forward_stdio

        main = forward_stdio(cfg, ui, *stdio)
    else:
        main = session.run_client(cfg, ui, command=remote, force_tty=force_tty,
                                  no_command=no_command, background=background, quiet=quiet)
    status = connect.run_program(main, ui, verbosity)
    return EXIT_FAILURE if status is None else status
