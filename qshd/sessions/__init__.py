"""The channels of a logged-in user on the server, session channels foremost.

One job a module: :mod:`.serve` (each channel the user opens to what serves its kind),
:mod:`.session` (a ``session`` channel: a login shell, a command or a subsystem, with or
without a PTY), :mod:`.process` (the session's program as a process: started, watched,
signalled only while it is ours, reaped), :mod:`.terminal` (the PTY's window size and
controlling terminal, and who hears of the terminal). The names below are the package's
interface; import them from here.
"""

from __future__ import annotations

from .process import session_pids
from .serve import serve_channel
from .session import HANGUP_GRACE, Session
from .terminal import TerminalAccounting

__all__ = ["HANGUP_GRACE", "Session", "TerminalAccounting", "serve_channel", "session_pids"]
