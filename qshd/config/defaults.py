"""What the daemon does with no configuration: the defaults that several parts of the
configuration share (the settings, the keyword parser, ``qshd -T``)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PORT = 2022
DEFAULT_AUTHORIZED_KEYS = ".qsh/authorized_keys"
DEFAULT_MAX_AUTH_TRIES = 6
DEFAULT_LOGIN_GRACE = 120.0
#: PermitRootLogin values, as in sshd_config.
PERMIT_ROOT_VALUES = ("no", "prohibit-password", "yes")


#: ``PerSourceMaxStartups none``.
PER_SOURCE_UNLIMITED = 0


#: Where Debian, Fedora and Arch put OpenSSH's sftp-server.
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/lib/ssh/sftp-server", "/usr/libexec/sftp-server")


def default_subsystems() -> dict[str, str]:
    found = next((path for path in SFTP_SERVERS if os.access(path, os.X_OK)), None)
    return {"sftp": found} if found is not None else {}


def default_dir() -> Path:
    """Root daemons live in /etc/qsh, per-user daemons in ~/.qsh (OpenSSH's habit)."""
    return Path("/etc/qsh") if os.geteuid() == 0 else Path.home() / ".qsh"
