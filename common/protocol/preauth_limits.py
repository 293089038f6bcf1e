"""What a server allows a client that has not logged in yet: how long it may take to log
in, and how large a record it may send meanwhile.

On their own because the record bound is arithmetic over other layers' limits (login
requests, KEM sizes, chaff, padding, the AEAD's tag): a reviewer of the pre-auth memory
budget checks it here in one place, apart from the connection that applies it.
"""

from __future__ import annotations

from common.accounts.keys import MAX_PUBLIC_BLOB
from common.crypto import registry
from common.protocol.auth import MAX_PASSWORD, MAX_SIGNATURE, MAX_USER_NAME
from common.protocol.negotiation import Suite
from common.protocol.transport import INNER_HEADER_SIZE, MAX_REASON, REKEY_FRAGMENT
from common.wire import MAX_NAME_LENGTH, MAX_RECORD_BODY

#: Seconds from a server connection's start to a successful login (OpenSSH's default).
DEFAULT_LOGIN_GRACE = 120.0

#: The largest AUTH_REQUEST: user name, method name, then a key blob and a signature
#: (a password is far smaller).
MAX_AUTH_REQUEST = ((1 + MAX_USER_NAME) + (1 + MAX_NAME_LENGTH)
                    + max(4 + MAX_PASSWORD, 4 + MAX_PUBLIC_BLOB + 4 + MAX_SIGNATURE))


def max_preauth_record_body(suite: Suite) -> int:
    """The largest record a client sends a server that requires login before it has
    logged in: a login request, or transport business (keep-alive, chaff within the agreed
    size, a rekey offer fragment or ciphertext, a shutdown or error), with the agreed
    padding and the AEAD's tag. About 128 KiB for every suite without McEliece: a client
    that has not logged in cannot make us buffer a 1 MiB record."""
    kem = registry.kem(suite.kem)
    message = max(
        MAX_AUTH_REQUEST,
        4 + min(kem.public_key_size, REKEY_FRAGMENT),
        4 + kem.ciphertext_size,
        suite.chaff.size_max if suite.chaff.enabled else 0,
        1 + 4 + MAX_REASON,
    )
    tag = registry.aead(suite.aead).tag_size
    return min(INNER_HEADER_SIZE + message + suite.padding_max + tag, MAX_RECORD_BODY)
