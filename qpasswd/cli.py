"""qpasswd: manage qshd's own bcrypt passwd file (common/passwd.py).

Interactive use prompts twice without echo, as passwd(1) does. Scripts pipe the password in:
when standard input is not a terminal, ``--stdin`` is implied and exactly one line is read, so
``printf '%s\\n' "$pw" | qpasswd -u alice`` works and nothing ever appears on a command line
(where ``ps`` would show it). The password is never printed or logged.

Every failure is one line ``qpasswd: ...`` on stderr and exit status 1, usage errors included;
success is 0. File problems surface before the password is asked for, so nobody types a
password only to learn that the file is malformed.
"""

from __future__ import annotations

import getpass
import pwd
import sys
from pathlib import Path

import click

from common import cli as clirun
from common.accounts.passwd import (
    DEFAULT_COST,
    MAX_COST,
    MAX_PASSWORD,
    MIN_COST,
    PasswdError,
    PasswdFile,
    check_password,
    check_user_name,
    default_passwd_path,
)

PROG = "qpasswd"
#: Longer than any password we accept, so an overlong line is reported as too long rather
#: than read without bound.
_MAX_STDIN_LINE = 4 * MAX_PASSWORD


class QpasswdError(Exception):
    """A failure reported as one line and exit status 1."""


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@clirun.version_option("qpasswd")
@click.option("-u", "user", metavar="USER", default=None, help="Add USER or change their password.")
@click.option("-d", "delete", metavar="USER", default=None, help="Delete USER.")
@click.option("-l", "list_users", is_flag=True, help="List the users, one per line.")
@click.option(
    "-f",
    "passwd_file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The passwd file (default: /etc/qsh/passwd as root, else ~/.qsh/passwd).",
)
@click.option(
    "-c",
    "cost",
    metavar="COST",
    type=click.IntRange(MIN_COST, MAX_COST),
    default=DEFAULT_COST,
    show_default=True,
    help=f"bcrypt cost ({MIN_COST}..{MAX_COST}); each step doubles the work.",
)
@click.option(
    "--stdin",
    "from_stdin",
    is_flag=True,
    help="Read the password as one line from standard input (implied without a terminal).",
)
def command(
    user: str | None,
    delete: str | None,
    list_users: bool,
    passwd_file: Path | None,
    cost: int,
    from_stdin: bool,
) -> None:
    """Manage the passwd file qshd checks password logins against."""
    actions = sum((user is not None, delete is not None, list_users))
    if actions != 1:
        raise click.UsageError("give exactly one of -u USER, -d USER or -l")
    path = passwd_file if passwd_file is not None else default_passwd_path()
    passwd = PasswdFile(path)
    if list_users:
        passwd.load(must_exist=True)
        for name in passwd.users():
            click.echo(name)
    elif delete is not None:
        if not passwd.delete(delete):
            raise QpasswdError(f"no user {delete!r} in {path}")
        click.echo(f"deleted user {delete} from {path}")
    elif user is not None:
        _set_password(passwd, user, cost, from_stdin)


def _set_password(passwd: PasswdFile, user: str, cost: int, from_stdin: bool) -> None:
    check_user_name(user)
    passwd.load()  # a malformed or too-open file fails now, before anyone types a password
    try:
        passwd.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise QpasswdError(f"cannot create {passwd.path.parent}: {exc.strerror}") from exc
    password = _read_new_password(from_stdin)
    added = passwd.set_password(user, password, cost)
    verb = "added user" if added else "changed the password of"
    click.echo(f"{verb} {user} in {passwd.path}")
    _warn_without_account(user)


def _warn_without_account(user: str) -> None:
    """qshd maps a login to the system account of the same name; a name without one can
    never log in, which is worth saying now rather than at the first failed login."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        click.echo(
            f"{PROG}: warning: there is no system account {user!r}; qshd will refuse its logins",
            err=True,
        )


def _read_new_password(from_stdin: bool) -> bytes:
    stdin = sys.stdin
    if stdin is None:
        raise QpasswdError("no standard input to read the password from")
    if from_stdin or not stdin.isatty():
        line = stdin.buffer.readline(_MAX_STDIN_LINE)
        if not line:
            raise QpasswdError("no password on standard input")
        password = line.removesuffix(b"\n").removesuffix(b"\r")
    else:
        # getpass talks to /dev/tty with echo off, so the password never reaches the screen.
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Retype new password: ")
        if first != second:
            raise QpasswdError("passwords do not match; password not changed")
        password = first.encode("utf-8")
    check_password(password)
    return password


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: every failure is one line and exit status 1."""
    clirun.run(command, PROG, argv, errors=(PasswdError, QpasswdError),
               interrupted="interrupted; nothing changed")


if __name__ == "__main__":  # pragma: no cover - ``python -m qpasswd.cli``
    main()
