"""qsh: the client's command line.

Today it opens a QSMP session, checks the host key against known_hosts (trust on first use,
``StrictHostKeyChecking`` ask / accept-new / yes), reports what was negotiated and closes.
Login, shells and commands arrive with issue 3. Exit status follows ssh: 255 for qsh's own
failures, each with one line on stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

EXIT_FAILURE = 255
DEFAULT_PORT = 2022
_HOST_CHECK_MODES = ("ask", "accept-new", "yes", "no")


class QshError(Exception):
    """A failure of qsh itself: printed as one line, exit status 255."""


@dataclass
class ClientOptions:
    host: str
    port: int = DEFAULT_PORT
    user: str | None = None
    strict_host_key_checking: str = "ask"
    known_hosts: Path = field(default_factory=lambda: Path.home() / ".qsh" / "known_hosts")
    kems: tuple[str, ...] | None = None
    ciphers: tuple[str, ...] | None = None
    chaff: bool = False
    connect_timeout: float = 30.0
    verbose: int = 0


def _split_destination(destination: str) -> tuple[str | None, str]:
    user, sep, host = destination.rpartition("@")
    return (user if sep else None), host


def _apply_option(opts: ClientOptions, option: str) -> None:
    key, sep, value = option.partition("=")
    if not sep:
        key, _, value = option.partition(" ")
    key, value = key.strip().lower(), value.strip()
    if key == "stricthostkeychecking":
        if value.lower() not in _HOST_CHECK_MODES:
            raise QshError(f"StrictHostKeyChecking must be one of {', '.join(_HOST_CHECK_MODES)}")
        opts.strict_host_key_checking = value.lower()
    elif key == "userknownhostsfile":
        opts.known_hosts = Path(value).expanduser()
    elif key == "port":
        opts.port = int(value)
    elif key == "kems":
        opts.kems = tuple(v for v in value.split(",") if v)
    elif key == "ciphers":
        opts.ciphers = tuple(v for v in value.split(",") if v)
    elif key == "chaff":
        opts.chaff = value.lower() == "yes"
    elif key == "connecttimeout":
        opts.connect_timeout = float(value)
    else:
        raise QshError(f"unsupported option {key!r}")


def _ask_tty(question: str) -> str:
    """Ask on the controlling terminal, as ssh does, so piped stdin is left alone. No
    terminal (a script, a daemon) means no answer, which callers treat as "no"."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return ""
    try:
        os.write(fd, question.encode())
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            answer += chunk
        return answer.decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


@click.command(context_settings={"help_option_names": ["--help"],
                                 "ignore_unknown_options": True})
@click.option("-p", "port", type=int, default=None, help="Port (default 2022).")
@click.option("-l", "login", default=None, help="User to log in as.")
@click.option("-o", "options", multiple=True, help="Option=value, as in ssh_config.")
@click.option("-v", "verbose", count=True, help="Verbose; repeat for more.")
@click.argument("destination")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def command(port: int | None, login: str | None, options: tuple[str, ...], verbose: int,
            destination: str, command: tuple[str, ...]) -> None:
    """Connect to DESTINATION ([user@]host) over QSMP."""
    user, host = _split_destination(destination)
    opts = ClientOptions(host=host, user=login or user, verbose=verbose)
    for option in options:
        _apply_option(opts, option)
    if port is not None:
        opts.port = port
    if command:
        raise QshError("remote commands need login, which this version does not have yet")
    from .session import run_session

    asyncio.run(run_session(opts, _ask_tty))


def main() -> None:
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_FAILURE)
    except click.ClickException as exc:
        click.echo(f"qsh: {exc.format_message()}", err=True)
        sys.exit(EXIT_FAILURE)
    except QshError as exc:
        click.echo(f"qsh: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(EXIT_FAILURE)
    sys.exit(0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
