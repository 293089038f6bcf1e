"""qsh: a post-quantum remote shell.

The Python API lives in :mod:`qsh.api`; ``connect``, ``RunResult`` and ``ProcessError`` are
re-exported here but imported on first use, so ``python -m qsh`` (the command line) does not
pay for asyncio and the session code before it knows it needs them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from typing import Any

    from .api import ProcessError, RunResult, connect

__all__ = ["ProcessError", "RunResult", "connect"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
