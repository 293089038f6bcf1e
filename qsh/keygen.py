"""qsh-keygen: make, inspect and print ML-DSA user keys, the way ssh-keygen does.

A user key has the same file format as a host key (common/keys.py): the private file is 0600
and optionally passphrase-encrypted, the ``.pub`` sidecar is one ``qsh-<alg> <base64> comment``
line to append to a server's ``~/.qsh/authorized_keys``.

Habits kept from ssh-keygen: the default file ``~/.qsh/id_<algorithm>``, two passphrase prompts
without echo (empty for none), an ``Overwrite (y/n)?`` question before replacing a key, ``-l``
for a fingerprint and ``-y`` to recover the public line from a private file. Differences, on
purpose: a run with no terminal never prompts and never overwrites -- it needs ``-N`` or
``--no-passphrase`` and refuses an existing file -- so a script cannot hang on a prompt or
destroy a key by accident. Failures are one line ``qsh-keygen: ...`` and exit status 1.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import sys
import time
from pathlib import Path

import click

from common import cli as clirun
from common.accounts import known_hosts
from common.accounts.keys import DEFAULT_ALGORITHM, HostKey, KeyFileError, PublicKey
from common.client.config import DEFAULT_PORT
from common.crypto.suites import DEFAULT_SIGNATURES, LIBOQS_SIGNATURES

PROG = "qsh-keygen"
#: Every signature qsh knows; the SLH-DSA ones work only where liboqs is installed, which is
#: checked once one is asked for (loading liboqs for every run would slow down -l and -y).
ALGORITHMS = (*DEFAULT_SIGNATURES, *LIBOQS_SIGNATURES)
KEY_DIRECTORY_MODE = 0o700


class KeygenError(Exception):
    """A failure reported as one line and exit status 1."""


def default_key_path(algorithm: str) -> Path:
    return Path.home() / ".qsh" / f"id_{algorithm}"


def public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def default_comment() -> str:
    """``user@host`` as ssh-keygen writes it, so an authorized_keys line says whose it is."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return f"{user}@{socket.gethostname()}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@clirun.version_option("qsh-keygen")
@click.option(
    "-t",
    "algorithm",
    type=click.Choice(ALGORITHMS),
    default=DEFAULT_ALGORITHM,
    show_default=True,
    help="Signature algorithm of the new key (the slhdsa-* ones need liboqs).",
)
@click.option(
    "-f",
    "key_file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Key file (default: ~/.qsh/id_<algorithm>); the public key goes to FILE.pub.",
)
@click.option("-N", "passphrase", metavar="PASSPHRASE", default=None,
              help="Passphrase for the new key ('' for none).")
@click.option("-C", "comment", metavar="COMMENT", default=None,
              help="Comment for the public key (default: user@hostname).")
@click.option("-y", "print_public", is_flag=True,
              help="Print the public key line of the private key FILE.")
@click.option("-l", "print_fingerprint", is_flag=True,
              help="Print the fingerprint of FILE (a private key or a .pub).")
@click.option("--no-passphrase", is_flag=True, help="Do not encrypt the new key.")
@click.option("-R", "remove_host", metavar="HOST",
              help="Remove every key of HOST ('name' or '[name]:port') from known_hosts "
                   "(-f names another file than ~/.qsh/known_hosts).")
@click.option("-F", "find_host", metavar="HOST",
              help="Show the known_hosts lines of HOST, with their line numbers.")
@click.option("-H", "hash_hosts", is_flag=True,
              help="Hash the host names in known_hosts (-f names another file); the old "
                   "file is kept as FILE.old.")
def command(
    algorithm: str,
    key_file: Path | None,
    passphrase: str | None,
    comment: str | None,
    print_public: bool,
    print_fingerprint: bool,
    no_passphrase: bool,
    remove_host: str | None,
    find_host: str | None,
    hash_hosts: bool,
) -> None:
    """Generate a qsh user key pair, or show an existing key's fingerprint or public line;
    find or remove a host's keys in known_hosts."""
    if sum(bool(x) for x in (print_public, print_fingerprint, remove_host, find_host,
                             hash_hosts)) > 1:
        raise click.UsageError("-y, -l, -R, -F and -H cannot be used together")
    if hash_hosts:
        _hash_hosts(key_file if key_file is not None else known_hosts.default_path())
        return
    if remove_host is not None or find_host is not None:
        known = key_file if key_file is not None else known_hosts.default_path()
        if remove_host is not None:
            _remove_host(known, remove_host)
        else:
            _find_host(known, find_host or "")
        return
    if passphrase is not None and no_passphrase:
        raise click.UsageError("-N and --no-passphrase cannot be used together")
    path = key_file if key_file is not None else default_key_path(algorithm)
    if print_fingerprint:
        key, found_comment = _read_public(path)
        click.echo(_describe(key, found_comment))
    elif print_public:
        if not _is_private_key_file(path):
            raise KeygenError(f"{path} is not a private key file (-y reads a private key)")
        # Like ssh-keygen -y, refuse a private file that others can read.
        key = HostKey.load_public_part(path)
        shown = comment if comment is not None else _sidecar_comment(path, key)
        click.echo(key.openssh_line(shown))
    else:
        _generate(algorithm, path, key_file is None, passphrase, no_passphrase,
                  comment if comment is not None else default_comment())


def _generate(algorithm: str, path: Path, default_location: bool, passphrase: str | None,
              no_passphrase: bool, comment: str) -> None:
    if "\n" in comment or "\r" in comment:
        raise KeygenError("a key comment cannot contain a line break")
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if default_location:
        try:
            path.parent.mkdir(mode=KEY_DIRECTORY_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeygenError(f"cannot create {path.parent}: {exc.strerror}") from exc
    if path.exists() or path.is_symlink():
        _confirm_overwrite(path, interactive)
    if algorithm in LIBOQS_SIGNATURES:
        from common.crypto import registry

        if algorithm not in registry.available_signatures():
            raise KeygenError(f"{algorithm} needs liboqs, which is not usable here "
                              f"({registry.liboqs_missing()}); see README, liboqs")
    secret = _new_passphrase(passphrase, no_passphrase, interactive)
    key = HostKey.generate(algorithm, now=time.time())
    key.save(path, secret)
    key.save_public(public_path(path), comment)
    click.echo(f"Your identification has been saved in {path}")
    click.echo(f"Your public key has been saved in {public_path(path)}")
    click.echo("The key fingerprint is:")
    click.echo(_describe(key.public, comment))


def _confirm_overwrite(path: Path, interactive: bool) -> None:
    """Replacing a key may lock its owner out of every server that trusts it: only a person
    at a terminal may say yes."""
    if not interactive:
        raise KeygenError(f"{path} already exists; not overwriting it without a terminal to ask")
    click.echo(f"{path} already exists.")
    click.echo("Overwrite (y/n)? ", nl=False)
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise KeygenError(f"{path} not overwritten")


def _new_passphrase(passphrase: str | None, no_passphrase: bool, interactive: bool) -> bytes | None:
    if no_passphrase:
        return None
    if passphrase is None:
        if not interactive:
            raise KeygenError("no terminal to ask for a passphrase: give -N or --no-passphrase")
        passphrase = getpass.getpass("Enter passphrase (empty for no passphrase): ")
        if getpass.getpass("Enter same passphrase again: ") != passphrase:
            raise KeygenError("passphrases do not match; no key written")
    return passphrase.encode("utf-8") or None


def _is_private_key_file(path: Path) -> bool:
    """Private and public files are told apart by content rather than by name, since
    nothing forces a ``.pub`` suffix on either."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise KeygenError(f"cannot read {path}: {exc.strerror}") from exc
    return head.lstrip().startswith(b"-----BEGIN ")


def _read_public(path: Path) -> tuple[PublicKey, str]:
    """The public half of a private key file or of a ``.pub`` file, plus its comment."""
    if _is_private_key_file(path):
        # Only the public half is used, so a loosely protected file can still be identified.
        key = HostKey.load_public_part(path, check_mode=False)
        return key, _sidecar_comment(path, key)
    return PublicKey.load(path)


def _sidecar_comment(path: Path, key: PublicKey) -> str:
    """The private file stores no comment; borrow the ``.pub`` one when it is the same key."""
    try:
        sidecar, comment = PublicKey.load(public_path(path))
    except KeyFileError:
        return ""
    return comment if sidecar.matches(key) else ""


def _host_and_port(text: str) -> tuple[str, int]:
    """``name`` (qsh's default port) or ``[name]:port``, as known_hosts writes them."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})", text)
    if match is not None:
        return match.group(1), int(match.group(2))
    if not text or text.startswith("["):
        raise KeygenError(f"{text!r} is not a host name or [host]:port")
    return text, DEFAULT_PORT


def _host_entries(path: Path, host: str) -> tuple[known_hosts.KnownHosts, str, int,
                                                  tuple[known_hosts.Entry, ...]]:
    name, port = _host_and_port(host)
    try:
        known = known_hosts.KnownHosts.load(path)
        found = known.lookup(name, port, default_port=DEFAULT_PORT).entries
    except ValueError as exc:
        raise KeygenError(str(exc)) from None
    return known, name, port, tuple(sorted(found, key=lambda e: e.line_number))


def _find_host(path: Path, host: str) -> None:
    """ssh-keygen -F: each line with its number; exit status 1 when there is none."""
    known, _name, _port, found = _host_entries(path, host)
    if not found:
        raise KeygenError(f"host {host} not found in {path}")
    lines = known.lines
    for entry in found:
        click.echo(f"# Host {host} found: line {entry.line_number}")
        click.echo(lines[entry.line_number - 1])


def _keep_old(path: Path) -> Path:
    backup = path.with_name(path.name + ".old")
    try:
        backup.unlink(missing_ok=True)
        os.link(path, backup)
    except OSError as exc:
        raise KeygenError(f"cannot keep a copy of {path} as {backup}: {exc.strerror}") from None
    return backup


def _hash_hosts(path: Path) -> None:
    """ssh-keygen -H: plain names hashed, the old file kept as ``FILE.old`` (it holds the
    names in clear: delete it once the new file works)."""
    if not path.exists():
        raise KeygenError(f"{path} does not exist")
    backup = _keep_old(path)
    hashed, kept = known_hosts.KnownHosts.load(path).hash_all()
    if kept:
        click.echo(f"{kept} line(s) with wildcards or negation left unhashed", err=True)
    click.echo(f"{path} updated: {hashed} line(s) hashed.")
    click.echo(f"Original contents retained as {backup}")
    click.echo(f"WARNING: {backup} contains unhashed entries")


def _remove_host(path: Path, host: str) -> None:
    """ssh-keygen -R: the lines named, the file rewritten atomically, the old contents kept
    beside it as ``FILE.old`` (a key removed by mistake can be put back)."""
    known, name, port, found = _host_entries(path, host)
    if not found:
        click.echo(f"Host {host} not found in {path}")
        return
    backup = _keep_old(path)
    for entry in found:
        click.echo(f"# Host {host} found: line {entry.line_number}")
    known.remove(name, port, default_port=DEFAULT_PORT)
    click.echo(f"{path} updated.")
    click.echo(f"Original contents retained as {backup}")


def _describe(key: PublicKey, comment: str) -> str:
    parts = [key.fingerprint(), comment.strip(), f"({key.algorithm})"]
    return " ".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: every failure is one line and exit status 1."""
    clirun.run(command, PROG, argv, errors=(KeyFileError, KeygenError, ValueError),
               interrupted="interrupted; no key written")


if __name__ == "__main__":
    main()
