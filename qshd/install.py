"""``qshd --install-service``: qshd as a system service, with this installation's own paths.

A ``pip install`` puts ``qshd`` wherever the environment lives (``/opt/qsh/.venv/bin/qshd``,
say), so a unit file that names ``/usr/local/bin/qshd`` fails on most machines; and a fresh
machine has no ``/etc/qsh`` for the unit's ``qshd -t`` to check. This puts in place:

* the systemd unit ``/etc/systemd/system/qshd.service`` (or, without systemd, the SysV script
  ``/etc/init.d/qshd``) from ``initrc/``, naming the ``qshd`` it was run as. It is ours, so it
  is rewritten on every run: running it again after moving the install fixes the paths;
* ``/etc/qsh/`` with the commented sample ``qshd_config`` (every keyword at its default), a
  host key and an empty passwd file (0600), each only if it is not there yet: an
  administrator's configuration, key and passwords are never replaced;
* the privilege-separation account (``PrivsepUser``, default ``qshd``);
* the man pages, under ``/usr/local/share/man``.

``--root DIR`` puts every file under DIR (as a package build's DESTDIR: the files still name
the final paths) and leaves the system's accounts alone, for packaging and for tests.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common.accounts.keys import DEFAULT_ALGORITHM, HostKey, atomic_write

from .config import DEFAULT_PORT

#: The path the files in initrc/ name, replaced by the real one.
TEMPLATE_DAEMON = "/usr/local/bin/qshd"
MAN_SECTIONS = {".1": "man1", ".5": "man5", ".8": "man8"}


class InstallError(Exception):
    """Why the service could not be installed: one line."""


def _source_tree() -> Path:
    return Path(__file__).resolve().parents[1]


def _find(kind: str) -> Path:
    """``initrc`` or ``man``: where pip put them (the package's data files), else the source
    tree this module runs from (an editable install, or a checkout)."""
    for base in (Path(sys.prefix) / "share" / "qsh" / kind, _source_tree() / kind):
        if base.is_dir():
            return base
    raise InstallError(f"cannot find the {kind} files of this installation")


def daemon_path() -> Path:
    """The ``qshd`` command of this installation: beside the interpreter (a venv's bin/),
    else the first on PATH."""
    beside = Path(sys.executable).parent / "qshd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("qshd")
    if found is None:
        raise InstallError("cannot find the qshd command of this installation "
                           "(install the package first, e.g. pip install .)")
    return Path(found).absolute()


def default_init() -> str:
    """systemd where it runs (or at least is installed), else SysV init."""
    if Path("/run/systemd/system").is_dir() or shutil.which("systemctl"):
        return "systemd"
    return "sysv"


def install(root: Path = Path("/"), init: str | None = None, daemon: Path | None = None,
            say: Callable[[str], None] = print) -> Path:
    """Put the service in place under ``root``; return the unit or script written."""
    init = init or default_init()
    if init not in ("systemd", "sysv"):
        raise InstallError(f"unknown init system {init!r} (systemd or sysv)")
    daemon = daemon or daemon_path()
    initrc = _find("initrc")
    etc = root / "etc" / "qsh"
    etc.mkdir(mode=0o755, parents=True, exist_ok=True)
    _install_config(initrc / "qshd_config", etc / "qshd_config", say)
    _install_host_key(etc / "host_key", say)
    passwd = etc / "passwd"
    if passwd.exists():
        say(f"kept {passwd}")
    else:
        atomic_write(passwd, b"", 0o600)
        say(f"created {passwd} (empty: add passwords with qpasswd -u USER)")
    if init == "systemd":
        unit = root / "etc" / "systemd" / "system" / "qshd.service"
        _install_template(initrc / "qshd.service", unit, daemon, 0o644)
    else:
        unit = root / "etc" / "init.d" / "qshd"
        _install_template(initrc / "qshd.init", unit, daemon, 0o755)
    say(f"wrote {unit} (qshd is {daemon})")
    _install_man_pages(root / "usr" / "local" / "share" / "man", say)
    if root == Path("/"):
        from .privsep import PrivsepError, ensure_privsep_user

        try:
            account = ensure_privsep_user()
        except PrivsepError as exc:
            raise InstallError(str(exc)) from None
        say(f"privilege separation user {account.name} (uid {account.uid}) is in place")
        if init == "systemd":
            say("now: systemctl daemon-reload && systemctl enable --now qshd")
        else:
            say("now: update-rc.d qshd defaults && service qshd start")
        say(f"qshd listens on port {DEFAULT_PORT}; logs go to the journal or syslog")
    return unit


def _install_config(sample: Path, target: Path, say: Callable[[str], None]) -> None:
    if target.exists():
        say(f"kept {target}")
        return
    atomic_write(target, sample.read_bytes(), 0o644)
    say(f"created {target} (every keyword at its default, commented)")


def _install_host_key(path: Path, say: Callable[[str], None]) -> None:
    if path.exists():
        say(f"kept {path}")
        return
    key = HostKey.generate(DEFAULT_ALGORITHM, now=time.time())
    key.save(path)
    key.save_public(path.with_name(path.name + ".pub"))
    say(f"created {path}: {key.public.fingerprint()}")


def _install_template(template: Path, target: Path, daemon: Path, mode: int) -> None:
    text = template.read_text()
    if TEMPLATE_DAEMON not in text:
        raise InstallError(f"{template} does not name {TEMPLATE_DAEMON}")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic_write(target, text.replace(TEMPLATE_DAEMON, str(daemon)).encode(), mode)


def _install_man_pages(man: Path, say: Callable[[str], None]) -> None:
    pages = sorted(p for p in _find_man_pages() if p.suffix in MAN_SECTIONS)
    for page in pages:
        directory = man / MAN_SECTIONS[page.suffix]
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(directory / page.name, page.read_bytes(), 0o644)
    say(f"installed {len(pages)} man pages under {man}")


def _find_man_pages() -> list[Path]:
    """The pages wherever pip put them (share/man/manN/) or the source tree's man/."""
    installed = Path(sys.prefix) / "share" / "man"
    found = [p for section in MAN_SECTIONS.values() for p in (installed / section).glob("q*")
             if p.name.split(".")[0] in _OUR_PAGES]
    if found:
        return found
    return list((_source_tree() / "man").glob("*.[158]"))


_OUR_PAGES = frozenset({"qsh", "qshd", "qcp", "qpasswd", "qsh-keygen", "qshd_config",
                        "qsh_config"})
