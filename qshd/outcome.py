"""How a connection's process tells the listener what became of its login.

The listener never reads protocol bytes, so it learns two things the cheap way sshd does:
a byte on the connection's *startup pipe* once a user is logged in (the connection stops
counting against MaxStartups and its source's unauthenticated connections), and, for a
connection that never got that far, its process's exit status: which per-source penalty
(:class:`~qshd.admission.Penalty`) it earns. A process killed by a signal, or one that
exits with a status not listed here (an uncaught exception exits 1), counts as a crash.
"""

from __future__ import annotations

import os
import signal

from .admission import Penalty

#: Written to the startup pipe when a login succeeded.
AUTHENTICATED = b"A"

#: Exit statuses of a connection process that ended before a login.
EXIT_NOAUTH = 20        # the client left (or failed the handshake) without a failed login
EXIT_AUTHFAIL = 21      # it tried to log in and failed
EXIT_GRACE = 22         # LoginGraceTime ran out
#: The pre-auth process crashed or broke the monitor protocol (not a client's doing alone,
#: but a client may have caused it: OpenSSH's ``crash`` penalty).
EXIT_CRASH = 71

_BY_STATUS = {0: Penalty.NOAUTH, EXIT_NOAUTH: Penalty.NOAUTH, EXIT_AUTHFAIL: Penalty.AUTHFAIL,
              EXIT_GRACE: Penalty.GRACE_EXCEEDED}


def penalty(status: int) -> Penalty:
    """The penalty of a connection that never logged in, from its ``waitpid`` status."""
    if os.WIFEXITED(status):
        return _BY_STATUS.get(os.WEXITSTATUS(status), Penalty.CRASH)
    return Penalty.CRASH


def describe(status: int) -> str:
    """``exited with status N`` / ``killed by signal SIGSEGV``: for the log."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"killed by signal {name}"
    return f"exited with status {os.WEXITSTATUS(status)}"
