"""The handshake a handed-over connection has: none, a stand-in that says it is established.

On its own because it belongs to the hand-over (``Connection.from_handoff``), not to the
connection's state machine, and it needs the handshake's base class, which the handoff
state's codec (``handoff.py``) has no business importing.
"""

from __future__ import annotations

from typing import Any

from common.crypto.rng import Rng
from common.errors import UsageError
from common.protocol.handshake_state import Role, State, _Handshake
from common.wire import Flag


class _HandedOver(_Handshake):
    """Stands in for the handshake of a connection taken over from another process
    (:meth:`Connection.from_handoff`): that handshake happened there, so nothing is left to
    do here; the transport is up from the start and the handshake is never consulted."""

    role = Role.SERVER

    def __init__(self, session_id: bytes, rng: Rng) -> None:
        super().__init__(rng, 0.0)
        self.session_id = session_id
        self._c.state = State.ESTABLISHED

    def start(self, now: float) -> None:
        """Nothing to start: the connection already runs."""

    def _limit(self, flag: Flag) -> int:
        raise UsageError("a handed-over connection has no handshake")

    def _table(self) -> dict[State, tuple[Flag, Any]]:
        return {}
