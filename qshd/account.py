"""A system account as qshd looks it up (``pwd``, the account's groups).

Its own module because every process role needs it, and most need nothing else of the
login decision: the connection's monitor and the in-process server look the account up to
decide a login; the user's process (qshd.postauth) and the channels it serves
(qshd.sessions) look it up again to run as that user.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from common.accounts.passwd import InvalidUserName, check_user_name

#: Used when an account has no shell, as login(1) does.
DEFAULT_SHELL = "/bin/sh"


@dataclass(frozen=True, slots=True)
class Account:
    """A system account as a session needs it; looked up afresh for each login and each
    session, so an edit of /etc/passwd or /etc/group applies from the next one on."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> Account | None:
        """None for a name that is not a valid portable login name or has no account."""
        try:
            check_user_name(name)
            entry = pwd.getpwnam(name)
        except (InvalidUserName, KeyError):
            return None
        try:
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except OSError:
            groups = (entry.pw_gid,)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/",
                   entry.pw_shell or DEFAULT_SHELL, groups)

