"""qcp: file copy over a QSMP session. The copy channel arrives after login (issue 3)."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"help_option_names": ["--help"]})
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.argument("paths", nargs=-1, required=True)
def command(recursive: bool, paths: tuple[str, ...]) -> None:
    """Copy files between hosts over QSMP (not available in this version)."""
    raise click.ClickException("file copy needs login, which this version does not have yet")


def main() -> None:
    try:
        command.main(standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"qcp: {exc.format_message()}", err=True)
        sys.exit(1)
