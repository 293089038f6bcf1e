"""Fuzz a fresh server connection with whatever a client might send.

To get past the parts no mutation can forge (the client's KEM ciphertexts and AEAD tags
depend on secrets), the input can first replay a prefix of a recorded client flight: the
server's rngs have the recorded seeds, so it answers exactly as in the recording and the
replayed packets walk the real handshake. After the prefix come the next recorded packet with
input-chosen byte patches, then the input's own bytes, in an input-chosen chunking. With the
whole flight replayed, the tail lands on a freshly established session.

With ``sealed`` the harness instead seals the input's bytes with the recorded client keys as
the plaintext of the next encrypted packet (exchange request, establish request, or the
first record), which reaches the parsers behind the AEAD; with ``require_auth`` the first
record can be a login request, answered (accept or reject) as an application would.

Contract under test: ``Connection.receive_data``, ``handle_timer``, ``accept_auth``,
``reject_auth`` (while a request is pending on an open connection) and ``close`` never raise;
failures become one :class:`~common.connection.ConnectionTerminated`, the last event. And with
nothing perturbed, the server's answers to the replayed prefix are the recorded ones.

Input layout: :class:`fuzz.support.HandshakePlan`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.instrument import instrumented

with instrumented(__name__ == "__main__"):
    from common.protocol.auth import AuthRequested
    from common.protocol.connection import Connection
    from fuzz.support import (
        HandshakePlan,
        check_connection,
        chunked,
        drain,
        fire_timer,
        new_server,
        receive,
    )


def TestOneInput(data: bytes) -> None:
    plan = HandshakePlan.parse(data)
    scenario, clock = plan.scenario, plan.clock
    server = new_server(require_auth=plan.require_auth)
    events: list[object] = []
    server.start(clock)
    sent = drain(server, events)
    for packet in scenario.client_flight[: plan.prefix]:
        receive(server, packet, clock)
        sent += drain(server, events)
    if not plan.late and sent != list(scenario.server_flight[: plan.prefix]):
        raise AssertionError(f"{scenario.name}: the server no longer answers the recorded "
                             f"flight as recorded (prefix {plan.prefix})")
    decided = len(events)
    for data_part in plan.inputs(from_client=True):
        for chunk in chunked(data_part, plan.chunk_mode, plan.chunk_param):
            receive(server, chunk, clock)
            drain(server, events)
            decided = _answer_logins(server, plan, events, decided)
    if plan.close:
        server.close("fuzz")
    if plan.eof:
        receive(server, b"", clock)
    if plan.expire:
        fire_timer(server)
    drain(server, events)
    check_connection(server, events)


def _answer_logins(server: Connection, plan: HandshakePlan, events: list[object],
                   decided: int) -> int:
    """Answer login requests as the application would, while the connection is open."""
    for event in events[decided:]:
        if isinstance(event, AuthRequested) and not server.closed:
            if plan.reject:
                server.reject_auth(plan.clock)
            else:
                server.accept_auth()
            drain(server, events)
    return len(events)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
