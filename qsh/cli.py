"""qsh: the client's command line, with ssh's habits.

``qsh [-46fhNqtVv] [-p PORT] [-l USER] [-i KEY]... [-F CONFIG] [-o OPT=VAL]... [-E LOGFILE]
[-T|-L [bind:]port:host:hostport]... [-R [bind:]port:host:hostport]... [-D [bind:]port]...
[user@]host [command...]``

Exit status: the remote command's; 128+N when a signal killed it; 255 when qsh itself
fails, with one line ``qsh: ...`` on stderr. Click would exit 1 or 2 on a usage error, so it
runs with ``standalone_mode=False`` and every failure is mapped here.

Startup time matters (every ``qsh host true`` pays it): this module imports only click;
asyncio, the crypto and the session code load once the arguments are known to be good.
What a run does once parsed is :func:`qsh.run.run`, which :mod:`qsh.entry` calls without
click for the plain runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from common.cli import EXIT_FAILURE, leave, no_core_dumps, sanitise_std_fds, version_option

from . import run
from .argv import hoist_options, ssh_dash_T

USAGE = ("usage: qsh [-46AaCfGgKkMNnqstVvXxYy] [-B bind_interface] [-b bind_address] "
         "[-c cipher_spec] [-D [bind:]port] [-E log_file] [-e escape_char] [-F config] "
         "[-i identity] [-J destination] [-L|-T [bind:]port:host:hostport] [-l user] "
         "[-m mac_spec] [-O ctl_cmd] [-o option] [-p port] [-Q query] "
         "[-R [bind:]port:host:hostport] [-S ctl_path] [-W host:port] [user@]host [command ...]")

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
def command(**params: Any) -> int:
    """Log in to DESTINATION ([user@]host) and run a shell, or COMMAND, over QSMP."""
    # The parameters are qsh.run.run's, by the names the options above give them.
    try:
        return run.run(**params, echo=click.echo)
    except run.UsageError as exc:
        raise click.UsageError(str(exc)) from None
    except run.Failure as exc:
        raise click.ClickException(str(exc)) from None


def remote_command(words: tuple[str, ...]) -> str | None:
    """:func:`qsh.run.remote_command`, its complaint a click usage error."""
    try:
        return run.remote_command(words)
    except run.UsageError as exc:
        raise click.UsageError(str(exc)) from None


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
    leave(status)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
