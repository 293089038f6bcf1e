"""Fuzz user authentication (common/auth.py): the server's request parser and the client's
answer parser, interleaved with the application's decisions and the passing of time.

Contract under test: ``ServerAuth.receive`` and ``ClientAuth.receive`` return an event (or
None) or raise a :class:`~common.errors.QsmpError` subclass, after which the connection is
torn down and the run stops; the application calls raise nothing but
:class:`~common.errors.UsageError` when made out of order. And what one side sends, the other
must accept: every answer the server produces parses on a client that asked.

Input: byte 0 picks the side (even: server, odd: client); then operations until the input
runs out. Server: op < 0xC0 is a message (type 0x40 + op % 16, length u8 or 0xFF then u16,
body); 0xC0 and up is accept / reject / time passing. Client: op < 0xC0 is an answer of type
0x40 + op % 16; 0xC0 and up is "send a request".
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.instrument import instrumented

with instrumented(__name__ == "__main__"):
    from common.errors import QsmpError, UsageError
    from common.protocol.auth import (
        AuthFailed,
        AuthMessage,
        AuthRequested,
        AuthSucceeded,
        ClientAuth,
        ServerAuth,
    )
    from fuzz.support import NOW, SCENARIOS, Cursor

#: The session the user-key signatures in the seeds were made for.
SESSION_ID = SCENARIOS[0].session_id
_MAX_OPS = 64


def _message(op: int, cur: Cursor) -> tuple[int, bytes]:
    n = cur.u8()
    if n == 0xFF:
        n = cur.u16()
    return AuthMessage.AUTH_REQUEST + op % 16, cur.take(n)


def _client_accepts(msg_type: int, body: bytes) -> None:
    """A server answer must parse on a client that is waiting for one."""
    client = ClientAuth()
    client.sent("fuzz")
    event = client.receive(msg_type, memoryview(body))
    expected = AuthSucceeded if msg_type == AuthMessage.AUTH_SUCCESS else AuthFailed
    if not isinstance(event, expected):
        raise AssertionError(f"server answer 0x{msg_type:02x} parsed as {event!r}")


def _server(cur: Cursor) -> None:
    server = ServerAuth(SESSION_ID, max_attempts=1 + cur.u8() % 8)
    now = NOW
    pending = False
    for _ in range(_MAX_OPS):
        if not cur.remaining:
            return
        op = cur.u8()
        if op < 0xC0:
            msg_type, body = _message(op, cur)
            try:
                event = server.receive(msg_type, memoryview(body), now)
            except QsmpError:
                return  # the connection would answer with an error and close
            if event is not None:
                if not isinstance(event, AuthRequested) or event.user is None:
                    raise AssertionError(f"unexpected auth event {event!r}")
                pending = True
            continue
        action = op % 3
        with contextlib.suppress(UsageError):
            if action == 0:
                _client_accepts(AuthMessage.AUTH_SUCCESS, server.accept())
                pending = False
            elif action == 1:
                server.reject(now, "denied")
                pending = False
        if action == 2 or not pending:
            now += cur.u8() / 16.0
            answer = server.due(now)
            if answer is not None:
                _client_accepts(AuthMessage.AUTH_FAILURE, answer)
                if server.exhausted:
                    return  # the connection ends here with server.too_many()


def _client(cur: Cursor) -> None:
    client = ClientAuth()
    for _ in range(_MAX_OPS):
        if not cur.remaining:
            return
        op = cur.u8()
        if op >= 0xC0:
            with contextlib.suppress(UsageError):
                client.sent("user")
            continue
        msg_type, body = _message(op, cur)
        try:
            event = client.receive(msg_type, memoryview(body))
        except QsmpError:
            return
        if not isinstance(event, AuthSucceeded | AuthFailed):
            raise AssertionError(f"unexpected auth event {event!r}")


def TestOneInput(data: bytes) -> None:
    cur = Cursor(data)
    if cur.u8() % 2 == 0:
        _server(cur)
    else:
        _client(cur)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
