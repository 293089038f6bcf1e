"""qsh: the client's command line, with ssh's habits.

``qsh [-46fhNqtVv] [-p PORT] [-l USER] [-i KEY]... [-F CONFIG] [-o OPT=VAL]... [-E LOGFILE]
[-T|-L [bind:]port:host:hostport]... [-R [bind:]port:host:hostport]... [-D [bind:]port]...
[user@]host [command...]``

Exit status: the remote command's; 128+N when a signal killed it; 255 when qsh itself
fails, with one line ``qsh: ...`` on stderr. Click would exit 1 or 2 on a usage error, so it
runs with ``standalone_mode=False`` and every failure is mapped here.

Startup time matters (every ``qsh host true`` pays it): this module imports only click;
asyncio, the crypto and the session code load once the arguments are known to be good.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from common.cli import (
    LOG_LEVEL_VERBOSITY,
    QUIET_LEVELS,
    no_core_dumps,
    sanitise_std_fds,
    stdin_from_null,
    version_option,
)

from .argv import hoist_options, split_destination, ssh_dash_T

if TYPE_CHECKING:
    from common.client.config import ClientConfig

EXIT_FAILURE = 255


USAGE = ("usage: qsh [-46AaCfGgKkMNnqstVvXxYy] [-B bind_interface] [-b bind_address] "
         "[-c cipher_spec] [-D [bind:]port] [-E log_file] [-e escape_char] [-F config] "
         "[-i identity] [-J destination] [-L|-T [bind:]port:host:hostport] [-l user] "
         "[-m mac_spec] [-O ctl_cmd] [-o option] [-p port] [-Q query] "
         "[-R [bind:]port:host:hostport] [-S ctl_path] [-W host:port] [user@]host [command ...]")

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
        raise click.UsageError(f"the command is longer than {MAX_COMMAND} bytes")
    return command


def _query(ctx: click.Context, _param: click.Parameter, kind: str | None) -> None:
    """-Q kem|sig|cipher: what this machine offers and which library serves each."""
    if kind is None or ctx.resilient_parsing:
        return
    from common.crypto import registry

    try:
        listing, note = registry.query(kind)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, _param) from None
    click.echo(listing, nl=False)
    click.echo(note, nl=False, err=True)
    ctx.exit(0)


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "allow_interspersed_args": False})
@version_option("qsh")
@click.option("-Q", "query", metavar="kem|sig|cipher", is_eager=True, expose_value=False,
              callback=_query, help="List the usable algorithms of a kind, and their library.")
@click.option("-q", "quiet", is_flag=True, help="Quiet: no warnings or diagnostics.")
@click.option("-4", "inet4", is_flag=True, help="IPv4 addresses only.")
@click.option("-6", "inet6", is_flag=True, help="IPv6 addresses only.")
@click.option("-E", "log_file", default=None, metavar="LOGFILE",
              help="Append qsh's own messages (warnings, -v output) to LOGFILE, not stderr.")
@click.option("-p", "port", type=int, default=None, metavar="PORT",
              help="Port to connect to (default 2022).")
@click.option("-l", "login", default=None, metavar="USER", help="User to log in as.")
@click.option("-i", "identities", multiple=True, metavar="KEY",
              help="Identity (private key) file; repeatable, tried in order.")
@click.option("-F", "config_file", default=None, metavar="CONFIG",
              help="Configuration file (default ~/.qsh/config; 'none' for none).")
@click.option("-o", "options", multiple=True, metavar="OPT=VAL",
              help="Option as in the configuration file; repeatable.")
@click.option("-v", "verbose", count=True, help="Verbose; repeat for more (up to -vvv).")
@click.option("-t", "force_tty", is_flag=True,
              help="Request a pseudo-terminal even with a command or without a local one.")
@click.option("-T", "-L", "local_forwards", multiple=True, metavar="[BIND:]PORT:HOST:HOSTPORT",
              help="Tunnel: listen on local PORT, connect to HOST:HOSTPORT from the server.")
@click.option("-R", "remote_forwards", multiple=True, metavar="[BIND:]PORT:HOST:HOSTPORT",
              help="Reverse tunnel: the server listens on PORT, qsh connects to HOST:HOSTPORT.")
@click.option("-D", "dynamic_forwards", multiple=True, metavar="[BIND:]PORT",
              help="SOCKS5/4a proxy on local PORT, connecting from the server.")
@click.option("-N", "no_command", is_flag=True, help="No shell or command: tunnels only.")
@click.option("-f", "background", is_flag=True,
              help="Go to the background after login and tunnel set-up.")
@click.option("-G", "print_config", is_flag=True,
              help="Print the effective configuration for the host (as ssh -G) and exit.")
@click.option("-C", "compression", is_flag=True,
              help="Accepted for ssh's sake; qsh does not compress (see qsh_config(5)).")
@click.option("-n", "stdin_null", is_flag=True, help="Read stdin from /dev/null.")
@click.option("-s", "subsystem", is_flag=True,
              help="COMMAND names a subsystem of the server (as sftp) to start.")
@click.option("-b", "bind_address", default=None, metavar="ADDRESS",
              help="Connect from this local address.")
@click.option("-c", "cipher_spec", default=None, metavar="CIPHERS",
              help="Ciphers, as -o Ciphers=CIPHERS.")
@click.option("-e", "escape_char", default=None, metavar="CHAR",
              help="Escape character: ~ or none.")
@click.option("-a", "ignored_a", is_flag=True, hidden=True)
@click.option("-A", "ignored_A", is_flag=True, hidden=True)
@click.option("-x", "ignored_x", is_flag=True, hidden=True)
@click.option("-X", "ignored_X", is_flag=True, hidden=True)
@click.option("-Y", "ignored_Y", is_flag=True, hidden=True)
@click.option("-k", "ignored_k", is_flag=True, hidden=True)
@click.option("-K", "ignored_K", is_flag=True, hidden=True)
@click.option("-g", "ignored_g", is_flag=True, hidden=True)
@click.option("-y", "ignored_y", is_flag=True, hidden=True)
@click.option("-M", "master", count=True,
              help="Be the master of connection sharing (-MM: ask; see ControlMaster).")
@click.option("-S", "control_path", default=None, metavar="CTL_PATH",
              help="The control socket of connection sharing, as -o ControlPath.")
@click.option("-O", "control_command", default=None, metavar="CTL_CMD",
              help="Ask the master: check, exit, stop, or forward/cancel the -L/-R/-D given.")
@click.option("-B", "value_B", default=None, hidden=True)
@click.option("-m", "value_m", default=None, hidden=True)
@click.option("-P", "value_P", default=None, hidden=True)
@click.option("-I", "value_I", default=None, hidden=True)
@click.option("-w", "value_w", default=None, hidden=True)
@click.option("-J", "jump", default=None, metavar="[USER@]HOST[:PORT][,...]",
              help="Reach the host through these jump hosts, in order (ProxyJump).")
@click.option("-W", "stdio_forward", default=None, metavar="HOST:PORT",
              help="Forward stdin and stdout to HOST:PORT from the server; no session.")
@click.argument("destination")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def command(quiet: bool, inet4: bool, inet6: bool, log_file: str | None,
            port: int | None, login: str | None, identities: tuple[str, ...],
            config_file: str | None, options: tuple[str, ...], verbose: int,
            force_tty: bool, local_forwards: tuple[str, ...], remote_forwards: tuple[str, ...],
            dynamic_forwards: tuple[str, ...], no_command: bool, background: bool,
            print_config: bool, compression: bool, stdin_null: bool, subsystem: bool,
            bind_address: str | None, cipher_spec: str | None, escape_char: str | None,
            jump: str | None, stdio_forward: str | None,
            master: int, control_path: str | None, control_command: str | None,
            destination: str, command: tuple[str, ...], **ignored: object) -> int:
    """Log in to DESTINATION ([user@]host) and run a shell, or COMMAND, over QSMP."""
    from common.channels.tunnel import parse_forward
    from common.client.config import ConfigError, dump, resolve

    notes: list[str] = []
    for name, value in ignored.items():
        letter = name[-1]
        if value and name.startswith("ignored_"):
            notes.append(IGNORED_FLAGS[letter])
        elif value is not None and name.startswith("value_"):
            if letter in REFUSED_VALUES:
                raise click.UsageError(REFUSED_VALUES[letter])
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
        raise click.ClickException(str(exc)) from None
    cfg.notes[:0] = notes
    if print_config:
        click.echo("\n".join(dump(cfg)))
        return 0
    stdio: tuple[str, int] | None = None
    if stdio_forward is not None:  # ssh -W: no session, no pty, no tunnels, no -f
        from common.client.proxy import split_host_port

        if command or local_forwards or remote_forwards or dynamic_forwards or background:
            raise click.UsageError("-W takes no command, tunnel or -f")
        try:
            stdio_host, stdio_port = split_host_port(stdio_forward, "-W")
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if stdio_port is None:
            raise click.UsageError(f"-W {stdio_forward}: host:port expected")
        stdio, cfg.forwards = (stdio_host, stdio_port), []
    stdin_null = stdin_null or cfg.stdin_null
    background = background or cfg.fork_after_authentication
    no_command = no_command or cfg.session_type == "none"
    if not command and cfg.remote_command is not None:
        command = (cfg.remote_command,)
    if cfg.session_type == "subsystem" and len(command) != 1:
        raise click.UsageError("-s takes one subsystem name, as the command")
    try:
        given = [parse_forward(kind, text) for kind, texts in (
            ("local", local_forwards), ("remote", remote_forwards),
            ("dynamic", dynamic_forwards)) for text in texts]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    # Command-line tunnels first, then the config's (ssh adds both); ExitOnForwardFailure
    # defaults to yes when the command line asked for a tunnel.
    cfg.forwards = [] if cfg.clear_all_forwardings else [*given, *cfg.forwards]
    if cfg.exit_on_forward_failure is None:
        cfg.exit_on_forward_failure = bool(given)
    if no_command and command:
        raise click.UsageError("-N takes no command")
    if inet4 or inet6:  # the last of -4 and -6 wins in ssh; both is a contradiction here
        if inet4 and inet6:
            raise click.UsageError("-4 and -6 cannot be used together")
        cfg.address_family = "inet" if inet4 else "inet6"
    if quiet:
        cfg.log_level = "QUIET"
    log_fd = 2
    if log_file is not None:
        try:
            log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
        except OSError as exc:
            raise click.ClickException(f"cannot open {log_file}: {exc.strerror}") from None
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
            raise click.ClickException(f'no ControlPath for "-O {control_command}"')
        return mux_client.control_command(cfg.control_path, control_command,
                                          forwards=forwards)
    if cfg.control_path is None or cfg.control_master in ("yes", "ask") or alone:
        return None  # -N, -f and tunnels log in themselves
    return mux_client.shared_session(cfg, remote, force_tty=force_tty, quiet=quiet,
                                     verbose=verbosity > 0)


def _run(cfg: ClientConfig, remote: str | None, force_tty: bool, verbosity: int, *,
         quiet: bool, no_command: bool = False, background: bool = False,
         log_fd: int = 2, stdio: tuple[str, int] | None = None) -> int:
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


def main(argv: list[str] | None = None) -> None:
    no_core_dumps()  # first; the rest of the hardening comes before the first secret
    sanitise_std_fds()
    args = hoist_options(ssh_dash_T(list(sys.argv[1:] if argv is None else argv)))
    try:
        status = command.main(args, prog_name="qsh", standalone_mode=False)
    except click.exceptions.Abort:
        status = EXIT_FAILURE
    except click.UsageError as exc:  # as ssh: the complaint, then the usage line
        click.echo(f"qsh: {exc.format_message()}\n{USAGE}", err=True)
        status = EXIT_FAILURE
    except click.ClickException as exc:
        click.echo(f"qsh: {exc.format_message()}", err=True)
        status = EXIT_FAILURE
    except KeyboardInterrupt:
        status = EXIT_FAILURE
    if not isinstance(status, int):  # --help returns None
        status = 0
    # Everything left is garbage the process is about to drop: keep interpreter shutdown
    # from walking it all (12-56 ms of a `qsh host true`); atexit handlers still run.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
