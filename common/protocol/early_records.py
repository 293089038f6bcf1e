"""Early records: what a client seals between its establish request and the server's
establish response, under the handshake's c2s key, to save a round trip.

On its own because it borrows the handshake's sealer and sequence, not the transport's: a
reviewer of nonce use reads this seam apart from the connection that decides when to use it.
"""

from __future__ import annotations

from common.crypto.rng import Rng
from common.protocol.handshake import ClientHandshake
from common.protocol.transport import Randomness, seal_message


class _EarlySender:
    """Seals application records on the client between its establish request and the
    server's establish response, with the handshake's c2s sealer and sequence."""

    def __init__(self, handshake: ClientHandshake, rng: Rng, padding_max: int) -> None:
        self._hs = handshake
        self._random = Randomness(rng)
        self._padding_max = padding_max

    def seal(self, inner_type: int, head: bytes, payload: bytes | memoryview = b"") -> bytearray:
        record = seal_message(self._hs.early_sealer, self._random, self._padding_max,
                              inner_type, head, payload)
        self._hs.note_early_record()
        return record
