"""qpasswd: manage qshd's own bcrypt passwd file (arrives with login, issue 3)."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"help_option_names": ["--help"]})
@click.option("-u", "user", default=None, help="Add or change USER's password.")
@click.option("-d", "delete", default=None, help="Delete USER.")
@click.option("-l", "list_users", is_flag=True, help="List users.")
@click.option("-f", "passwd_file", default=None, help="The passwd file.")
def command(user: str | None, delete: str | None, list_users: bool,
            passwd_file: str | None) -> None:
    """Manage qshd's passwd file (not available in this version)."""
    raise click.ClickException("password login is not available in this version yet")


def main() -> None:
    try:
        command.main(standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"qpasswd: {exc.format_message()}", err=True)
        sys.exit(1)
