"""One way for our small command-line tools (qpasswd, qsh-keygen) to end: click runs without its
own error handling, and every failure becomes one line ``prog: message`` and exit status 1."""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(prog: str, message: str) -> NoReturn:
    # Only our own messages reach here; none of them contains a password or a key.
    click.echo(f"{prog}: {message}", err=True)
    sys.exit(1)


def run(command: click.Command, prog: str, argv: list[str] | None, *,
        errors: tuple[type[BaseException], ...], interrupted: str) -> NoReturn:
    """Run ``command``; ``errors`` are the exceptions whose text is the one-line message."""
    try:
        status = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.UsageError as exc:
        fail(prog, f"{exc.format_message()} (see {prog} --help)")
    except click.ClickException as exc:
        fail(prog, exc.format_message())
    except click.Abort:
        fail(prog, interrupted)
    except OSError as exc:
        fail(prog, exc.strerror or str(exc))
    except errors as exc:
        fail(prog, str(exc))
    sys.exit(status if isinstance(status, int) else 0)
