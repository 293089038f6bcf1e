"""Fuzz a client connection, after ``start()``, with whatever a server might answer.

As in the server harness, the input can first replay a prefix of a recorded server flight
(the client's rngs have the recorded seeds, so its connect request and its later messages are
the recorded ones and the server's signature, MAC and confirmation still verify), then the
next recorded packet with byte patches, then its own bytes in any chunking; or, ``sealed``,
its bytes as the plaintext of the establish response (or of the first record), sealed with
the recorded server keys. The input also chooses the client's trust: the scenario's (a known
key, or trust on first use, accepting or rejecting the offered key as the input says) or a
stranger's key; and whether the application opens a channel, sends data and asks for a
password login at once (so records follow the establish request), and closes at the end.

Contract under test: ``Connection.receive_data``, ``accept_host_key``, ``reject_host_key``
(called only while a decision is pending on an open connection, as an adapter must),
``close`` and ``handle_timer`` never raise; failures become one
:class:`~common.connection.ConnectionTerminated`, the last event. With nothing perturbed the
client's messages are the recorded ones.

Input layout: :class:`fuzz.support.HandshakePlan`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.instrument import instrumented

with instrumented(__name__ == "__main__"):
    from common.protocol.connection import Connection, HostKeyUnverified
    from fuzz.support import (
        STRANGER_KEY,
        HandshakePlan,
        check_connection,
        chunked,
        drain,
        fire_timer,
        new_client,
        receive,
    )

#: Client packets sent once the first ``prefix`` server packets were answered.
_CLIENT_PACKETS_AFTER = (1, 3, 3, 4, 4)


class _Client:
    def __init__(self, plan: HandshakePlan) -> None:
        trusted = STRANGER_KEY if plan.stranger else plan.scenario.trusted
        self.plan = plan
        self.conn: Connection = new_client(plan.scenario.offer, trusted)
        self.events: list[object] = []
        self.sent: list[bytes] = []
        self._decided = 0

    def collect(self) -> None:
        """Drain, and answer a host key question the way an adapter does: only while the
        connection is still open (an event batch can hold the question and the end)."""
        self.sent += drain(self.conn, self.events)
        while self._decided < len(self.events):
            event = self.events[self._decided]
            self._decided += 1
            if isinstance(event, HostKeyUnverified) and not self.conn.closed:
                if self.plan.reject:
                    self.conn.reject_host_key()
                else:
                    self.conn.accept_host_key()
                self.sent += drain(self.conn, self.events)

    def receive(self, data: bytes) -> None:
        receive(self.conn, data, self.plan.clock)
        self.collect()


def TestOneInput(data: bytes) -> None:
    plan = HandshakePlan.parse(data)
    scenario, clock = plan.scenario, plan.clock
    client = _Client(plan)
    conn = client.conn
    conn.start(clock)
    if plan.login:
        conn.authenticate_password("fuzz", b"hunter2")
    if plan.early:
        channel = conn.mux.open_channel("session", b"")
        conn.mux.send_request(channel, "exec", b"true")
        conn.mux.send_data(channel, b"early data")
    client.collect()
    for packet in scenario.server_flight[: plan.prefix]:
        client.receive(packet)
    if not (plan.late or plan.reject or plan.stranger or plan.early or plan.login):
        expected = list(scenario.client_flight[: _CLIENT_PACKETS_AFTER[plan.prefix]])
        if client.sent != expected:
            raise AssertionError(f"{scenario.name}: the client no longer sends the recorded "
                                 f"flight (prefix {plan.prefix})")
    for data_part in plan.inputs(from_client=False):
        for chunk in chunked(data_part, plan.chunk_mode, plan.chunk_param):
            client.receive(chunk)
    if plan.close:
        conn.close("fuzz")
    if plan.eof:
        client.receive(b"")
    if plan.expire:
        fire_timer(conn)
    client.collect()
    check_connection(conn, client.events)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
