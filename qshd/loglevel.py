"""qshd's LogLevel and SyslogFacility, as sshd's, on Python's logging.

sshd's levels map onto logging's numbers: DEBUG3 < DEBUG2 < DEBUG1 (= DEBUG, logging's
DEBUG) < VERBOSE < INFO < ERROR (logging's WARNING and ERROR: sshd has no separate
warning level) < FATAL (CRITICAL) < QUIET. ``LogLevel QUIET`` is the zero-log mode: nothing
that names a user, an address, a key or a command is written, because every such line is
logged at INFO or below or at ERROR with the connection's tag; only the lines logged at
:data:`NOTICE` (the daemon started, stopped, reloaded, refused a configuration) get
through, and those name nothing but the daemon's own addresses and files.

The level is set on the root logger before the listener forks, so every process of a
connection (the monitor, the pre-auth process, the user's process) inherits it and drops
what it would not show before formatting it.
"""

from __future__ import annotations

import logging
import logging.handlers

__all__ = ["FACILITIES", "LEVELS", "NOTICE", "VERBOSE", "level_number"]

#: sshd's VERBOSE: between INFO and DEBUG1 (key fingerprints of every login attempt).
VERBOSE = 15
#: Start, stop, reload and configuration errors: shown at every level, QUIET included.
NOTICE = 60
_QUIET = NOTICE - 1

#: LogLevel names -> the root logger's level.
LEVELS = {
    "QUIET": _QUIET,
    "FATAL": logging.CRITICAL,
    "ERROR": logging.WARNING,
    "INFO": logging.INFO,
    "VERBOSE": VERBOSE,
    "DEBUG": logging.DEBUG,
    "DEBUG1": logging.DEBUG,
    "DEBUG2": 7,
    "DEBUG3": 5,
}

#: SyslogFacility names -> syslog's facility codes (sshd's list; AUTH is its default).
FACILITIES = {
    "DAEMON": logging.handlers.SysLogHandler.LOG_DAEMON,
    "USER": logging.handlers.SysLogHandler.LOG_USER,
    "AUTH": logging.handlers.SysLogHandler.LOG_AUTH,
    "AUTHPRIV": logging.handlers.SysLogHandler.LOG_AUTHPRIV,
    **{f"LOCAL{n}": getattr(logging.handlers.SysLogHandler, f"LOG_LOCAL{n}")
       for n in range(8)},
}

logging.addLevelName(VERBOSE, "VERBOSE")
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(7, "DEBUG2")
logging.addLevelName(5, "DEBUG3")


def level_number(name: str, debug: int = 0) -> int:
    """The root logger's level for ``LogLevel name``; ``-d`` (DEBUG1), ``-dd``, ``-ddd``
    win over the file, as in sshd."""
    if debug:
        return LEVELS[("DEBUG1", "DEBUG2", "DEBUG3")[min(debug, 3) - 1]]
    return LEVELS[name.upper()]
